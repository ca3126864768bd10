"""The campaign planner: rejection, dedupe, grouping, flushing (phone numbers: test_phone)."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proactive_async import _planner as planner_module
from proactive_async._errors import InputError
from proactive_async._input import aiter_records, read_csv
from proactive_async._planner import (
    REJECT_INVALID_INPUT,
    REJECT_INVALID_PHONE,
    Chunk,
    DedupeTable,
    PlannedTarget,
    Planner,
    PlannerConfig,
)
from proactive_async._records import Outcome, OutcomeError, OutcomeStatus, Record


async def records_of(items: Iterable[Record]) -> AsyncIterator[Record]:
    for record in items:
        yield record


async def run(
    planner: Planner, records: Iterable[Record]
) -> tuple[list[Outcome], list[Chunk], list[Outcome | Chunk]]:
    everything = [item async for item in planner.plan(records_of(records))]
    outcomes = [item for item in everything if isinstance(item, Outcome)]
    chunks = [item for item in everything if isinstance(item, Chunk)]
    return outcomes, chunks, everything


def phone(line: int, recipient: str, variables: dict[str, Any] | None = None) -> Record:
    return Record(line=line, recipient=recipient, variables=variables)


def contact(line: int, contact_id: int, variables: dict[str, Any] | None = None) -> Record:
    return Record(line=line, contact_id=contact_id, variables=variables)


class FrozenClock:
    """A clock that moves only when the test moves it."""

    def __init__(self) -> None:
        self.now = 100.0
        self.called = asyncio.Event()  # set once the planner has read the clock

    def __call__(self) -> float:
        self.called.set()
        return self.now


# --- rejection ---------------------------------------------------------------------


async def test_record_with_read_error_is_rejected_as_invalid_input() -> None:
    outcomes, chunks, _ = await run(
        Planner(PlannerConfig()),
        [Record(line=1, recipient="+551", error="row has 1 fields, the header has 2")],
    )
    assert chunks == []
    assert outcomes == [
        Outcome(
            line=1,
            status=OutcomeStatus.REJECTED,
            recipient="+551",
            error=OutcomeError(
                kind=REJECT_INVALID_INPUT, message="row has 1 fields, the header has 2"
            ),
        )
    ]


async def test_invalid_number_is_rejected_with_the_reason() -> None:
    outcomes, _, _ = await run(Planner(PlannerConfig(default_region="BR")), [phone(1, "12345")])
    (outcome,) = outcomes
    assert outcome.status is OutcomeStatus.REJECTED
    assert outcome.recipient == "12345"
    assert outcome.error == OutcomeError(
        kind=REJECT_INVALID_PHONE, message="phone number '12345' is not a valid BR number"
    )


async def test_vanity_and_extension_numbers_are_rejected_unless_vanity_is_allowed() -> None:
    records = [phone(1, "+1-800-FLOWERS"), phone(2, "+55 11 98765-4321 ext. 12")]
    outcomes, chunks, _ = await run(Planner(PlannerConfig()), records)
    assert chunks == []
    assert [(o.line, o.status, o.error) for o in outcomes] == [
        (
            1,
            OutcomeStatus.REJECTED,
            OutcomeError(
                kind=REJECT_INVALID_PHONE,
                message="phone number '+1-800-FLOWERS' has letters; write it in digits, or "
                "allow vanity numbers to read letters as keypad digits",
            ),
        ),
        (
            2,
            OutcomeStatus.REJECTED,
            OutcomeError(
                kind=REJECT_INVALID_PHONE,
                message="phone number '+55 11 98765-4321 ext. 12' has an extension, which "
                "cannot be sent; write the number without it",
            ),
        ),
    ]
    assert PlannerConfig().allow_vanity_numbers is False
    outcomes, chunks, _ = await run(Planner(PlannerConfig(allow_vanity_numbers=True)), records)
    assert [(o.line, o.status) for o in outcomes] == [(2, OutcomeStatus.REJECTED)]
    assert [t for c in chunks for t in c.targets] == [
        PlannedTarget(line=1, recipient="+18003569377", raw="+1-800-FLOWERS")
    ]


@pytest.mark.parametrize(
    ("record", "message"),
    [
        (Record(line=1, recipient="+5511987654321", contact_id=3), "both recipient and"),
        (Record(line=1), "neither recipient nor contactId is set"),
        (Record(line=1, contact_id=0), "contactId 0 is not a positive 32-bit integer"),
        (Record(line=1, contact_id=2**31), "is not a positive 32-bit integer"),
        (Record(line=1, contact_id=True), "contactId True is not a positive"),
        (Record(line=1, recipient=5511), "recipient must be a string, not int"),  # type: ignore[arg-type]
        (contact(1, 5, {"x": object()}), "contentVariables cannot be sent as JSON"),
        (Record(line=1, contact_id=5, variables=[1]), "contentVariables must be a mapping"),  # type: ignore[arg-type]
    ],
)
async def test_unusable_record_is_rejected_as_invalid_input(record: Record, message: str) -> None:
    outcomes, chunks, _ = await run(Planner(PlannerConfig()), [record])
    assert chunks == []
    (outcome,) = outcomes
    assert outcome.status is OutcomeStatus.REJECTED
    assert outcome.error is not None and outcome.error.kind == REJECT_INVALID_INPUT
    assert message in outcome.error.message


# --- dedupe ------------------------------------------------------------------------


async def test_repeat_of_a_number_in_another_format_names_the_first_line() -> None:
    planner = Planner(PlannerConfig(default_region="BR"))
    outcomes, chunks, _ = await run(
        planner,
        [
            phone(1, "(11) 98765-4321"),
            phone(2, "bad"),
            phone(3, "+55 11 98765 4321"),
            contact(4, 7),
            contact(5, 7),
            phone(6, "+5511987654321", {"other": "vars"}),
        ],
    )
    duplicates = [o for o in outcomes if o.status is OutcomeStatus.DUPLICATE]
    assert [(o.line, o.duplicate_of, o.recipient, o.contact_id) for o in duplicates] == [
        (3, 1, "+5511987654321", None),
        (5, 4, None, 7),
        (6, 1, "+5511987654321", None),
    ]
    assert sorted(t.line for c in chunks for t in c.targets) == [1, 4]
    assert planner.stats.duplicates == 3 and planner.stats.rejected == 1


async def test_phone_and_contact_id_with_the_same_digits_do_not_collide() -> None:
    outcomes, chunks, _ = await run(
        Planner(PlannerConfig()), [phone(1, "+29051234"), contact(2, 29051234)]
    )
    assert outcomes == []
    assert sorted(t.line for c in chunks for t in c.targets) == [1, 2]


async def test_dedupe_off_sends_every_repeat() -> None:
    outcomes, chunks, _ = await run(
        Planner(PlannerConfig(dedupe=False)), [contact(1, 7), contact(2, 7)]
    )
    assert outcomes == []
    assert [t.line for c in chunks for t in c.targets] == [1, 2]


async def test_repeats_with_different_variables_are_sent_when_allowed() -> None:
    config = PlannerConfig(allow_repeats_with_different_variables=True, chunk_size=10)
    outcomes, chunks, _ = await run(
        Planner(config),
        [
            contact(1, 7, {"a": 1, "b": 2}),
            contact(2, 7, {"a": 2}),
            contact(3, 7, {"b": 2, "a": 1}),  # same variables, other key order
            contact(4, 7),
            contact(5, 7, {}),  # empty variables are no variables
        ],
    )
    assert [(o.line, o.status, o.duplicate_of) for o in outcomes] == [
        (3, OutcomeStatus.DUPLICATE, 1),
        (5, OutcomeStatus.DUPLICATE, 4),
    ]
    assert sorted(t.line for c in chunks for t in c.targets) == [1, 2, 4]


# --- grouping and flushing ---------------------------------------------------------


async def test_targets_are_grouped_by_equal_variables_up_to_chunk_size() -> None:
    planner = Planner(PlannerConfig(chunk_size=3, default_region="BR"))
    records = [contact(n, n, {"v": "A"}) for n in range(1, 8)]
    records += [contact(n, n, {"v": "B"}) for n in range(8, 11)]
    records.append(phone(11, "11 98765-4321"))
    records.append(contact(12, 12, {}))
    _, chunks, _ = await run(planner, records)
    by_variables = sorted((str(c.variables), [t.line for t in c.targets]) for c in chunks)
    assert by_variables == [
        ("None", [11, 12]),
        ("{'v': 'A'}", [1, 2, 3]),
        ("{'v': 'A'}", [4, 5, 6]),
        ("{'v': 'A'}", [7]),
        ("{'v': 'B'}", [8, 9, 10]),
    ]
    assert planner.stats.chunks == 5 and planner.stats.targets == 12


async def test_planned_target_keeps_e164_and_raw_recipient() -> None:
    _, chunks, _ = await run(
        Planner(PlannerConfig(default_region="BR")), [phone(1, " (11) 98765-4321"), contact(2, 9)]
    )
    assert chunks[0].targets == [
        PlannedTarget(line=1, recipient="+5511987654321", raw=" (11) 98765-4321"),
        PlannedTarget(line=2, contact_id=9),
    ]


async def test_full_group_is_yielded_before_the_input_ends() -> None:
    consumed = asyncio.Event()

    async def source() -> AsyncIterator[Record]:
        yield contact(1, 1)
        yield contact(2, 2)
        await consumed.wait()  # stalls until the chunk has come out
        yield contact(3, 3)

    planner = Planner(PlannerConfig(chunk_size=2, flush_after=3600))
    seen: list[list[int]] = []
    async with asyncio.timeout(5):
        async for item in planner.plan(source()):
            assert isinstance(item, Chunk)
            seen.append([t.line for t in item.targets])
            consumed.set()
    assert seen == [[1, 2], [3]]


async def test_partial_group_is_flushed_after_the_window_while_the_source_stalls() -> None:
    consumed = asyncio.Event()

    async def stalled_source() -> AsyncIterator[Record]:
        yield contact(1, 1)
        await consumed.wait()  # never resumes unless the planner flushes on its own
        yield contact(2, 2)

    planner = Planner(PlannerConfig(chunk_size=50, flush_after=0.01))
    seen: list[list[int]] = []
    async with asyncio.timeout(5):
        async for item in planner.plan(stalled_source()):
            assert isinstance(item, Chunk)
            seen.append([t.line for t in item.targets])
            consumed.set()
    assert seen == [[1], [2]]


async def test_group_is_flushed_when_the_injected_clock_passes_its_deadline() -> None:
    """Group A is sent as soon as the clock passes its window, while the input goes on."""
    clock = FrozenClock()
    planner = Planner(PlannerConfig(flush_after=3600), clock=clock)
    chunk_seen = asyncio.Event()

    async def source() -> AsyncIterator[Record]:
        yield contact(1, 1, {"v": "A"})
        await clock.called.wait()  # the planner read the clock: it opened group A
        clock.now += 4000
        yield contact(2, 2, {"v": "B"})
        await chunk_seen.wait()  # stalls until a chunk has come out

    seen: list[tuple[list[int], object]] = []
    async with asyncio.timeout(5):
        async for item in planner.plan(source()):
            assert isinstance(item, Chunk)
            seen.append(([t.line for t in item.targets], item.variables))
            chunk_seen.set()
    assert seen == [([1], {"v": "A"}), ([2], {"v": "B"})]


async def test_oldest_group_is_flushed_beyond_max_open_groups() -> None:
    planner = Planner(PlannerConfig(max_open_groups=2, flush_after=3600), clock=FrozenClock())
    records = [
        contact(1, 1, {"v": 1}),
        contact(2, 2, {"v": 2}),
        contact(3, 3, {"v": 3}),  # a third group: group 1 goes
        contact(4, 4, {"v": 1}),  # group 1 opens again: group 2 goes
    ]
    _, chunks, _ = await run(planner, records)
    assert [([t.line for t in c.targets], c.variables) for c in chunks] == [
        ([1], {"v": 1}),
        ([2], {"v": 2}),
        ([3], {"v": 3}),
        ([4], {"v": 1}),
    ]


async def test_planner_reads_ahead_only_a_bounded_number_of_records() -> None:
    produced = 0

    async def long_source() -> AsyncIterator[Record]:
        nonlocal produced
        while produced < 10_000:
            produced += 1
            yield contact(produced, produced)

    planner = Planner(PlannerConfig(chunk_size=1))
    plan = planner.plan(long_source())
    first = await anext(plan)
    for _ in range(20):
        await asyncio.sleep(0)  # let the reader run as far as it can
    assert isinstance(first, Chunk)
    assert produced < 300
    await plan.aclose()


async def test_source_error_is_raised_from_plan() -> None:
    async def failing() -> AsyncIterator[Record]:
        yield contact(1, 1)
        raise OSError("disk gone")

    planner = Planner(PlannerConfig())
    with pytest.raises(OSError, match="disk gone"):
        async for _ in planner.plan(failing()):
            pass


async def test_input_error_of_a_file_source_is_raised_from_plan(tmp_path: Path) -> None:
    planner = Planner(PlannerConfig())
    with pytest.raises(InputError, match=r"missing\.csv: cannot open"):
        async for _ in planner.plan(aiter_records(read_csv(tmp_path / "missing.csv"))):
            pass


async def test_plan_over_a_csv_file_accounts_for_every_row(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text("recipient,name\n(11) 98765-4321,Ana\n+5511987654321,Bia\n123,Caio\n+551\n")
    planner = Planner(PlannerConfig(default_region="BR"))
    outcomes, chunks, _ = await run_source(planner, aiter_records(read_csv(path)))
    assert [(o.line, o.status) for o in outcomes] == [
        (2, OutcomeStatus.DUPLICATE),
        (3, OutcomeStatus.REJECTED),
        (4, OutcomeStatus.REJECTED),
    ]
    assert [(c.variables, [t.line for t in c.targets]) for c in chunks] == [({"name": "Ana"}, [1])]


async def run_source(
    planner: Planner, source: AsyncIterator[Record]
) -> tuple[list[Outcome], list[Chunk], list[Outcome | Chunk]]:
    everything = [item async for item in planner.plan(source)]
    return (
        [i for i in everything if isinstance(i, Outcome)],
        [i for i in everything if isinstance(i, Chunk)],
        everything,
    )


async def test_plan_can_run_again_with_fresh_state() -> None:
    planner = Planner(PlannerConfig())
    first, _, _ = await run(planner, [contact(1, 7), contact(2, 7)])
    second, _, _ = await run(planner, [contact(1, 7), contact(2, 7)])
    assert first == second and len(first) == 1
    assert planner.stats.records == 2


def test_config_rejects_bad_values() -> None:
    with pytest.raises(ValueError, match="default_region 'XX' is not a known region"):
        PlannerConfig(default_region="XX")
    with pytest.raises(ValueError, match="chunk_size must be at least 1"):
        PlannerConfig(chunk_size=0)
    with pytest.raises(ValueError, match="max_open_groups must be at least 1"):
        PlannerConfig(max_open_groups=0)
    with pytest.raises(ValueError, match="flush_after must be >= 0"):
        PlannerConfig(flush_after=-1)


# --- every record exactly once (property) ------------------------------------------

_PHONES = ["+5511987654321", "(11) 98765-4321", "+12025550123", "123", "+29051234", "x"]
_VARIABLES: list[dict[str, Any] | None] = [None, {}, {"a": 1}, {"a": 2}, {"b": "x", "a": 1}]

_record_specs = st.lists(
    st.tuples(
        st.sampled_from(["phone", "contact", "error", "both"]),
        st.sampled_from(_PHONES),
        st.sampled_from([1, 2, 29051234, 0]),
        st.sampled_from(range(len(_VARIABLES))),
    ),
    max_size=40,
)


def build_records(specs: list[tuple[str, str, int, int]]) -> list[Record]:
    records = []
    for line, (kind, number, contact_id, variables_index) in enumerate(specs, start=1):
        variables = _VARIABLES[variables_index]
        record = Record(line=line, variables=dict(variables) if variables is not None else None)
        if kind in ("phone", "both"):
            record.recipient = number
        if kind in ("contact", "both"):
            record.contact_id = contact_id
        if kind == "error":
            record.error = "broken"
        records.append(record)
    return records


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    specs=_record_specs,
    chunk_size=st.integers(1, 4),
    max_open_groups=st.integers(1, 3),
    dedupe=st.booleans(),
    repeats=st.booleans(),
)
def test_every_record_is_accounted_exactly_once_and_deterministically(
    specs: list[tuple[str, str, int, int]],
    chunk_size: int,
    max_open_groups: int,
    dedupe: bool,
    repeats: bool,
) -> None:
    config = PlannerConfig(
        default_region="BR",
        chunk_size=chunk_size,
        max_open_groups=max_open_groups,
        dedupe=dedupe,
        allow_repeats_with_different_variables=repeats,
    )
    records = build_records(specs)
    outcomes, chunks, _ = asyncio.run(run(Planner(config), records))
    planned = [t for c in chunks for t in c.targets]
    lines = sorted([o.line for o in outcomes] + [t.line for t in planned])
    assert lines == list(range(1, len(records) + 1))
    assert all(1 <= len(c.targets) <= chunk_size for c in chunks)
    planned_lines = {t.line for t in planned}
    for outcome in outcomes:
        if outcome.status is OutcomeStatus.DUPLICATE:
            assert outcome.duplicate_of in planned_lines
            assert outcome.duplicate_of is not None and outcome.duplicate_of < outcome.line
    for chunk in chunks:
        variables = [records[t.line - 1].variables or None for t in chunk.targets]
        assert all(v == (chunk.variables or None) for v in variables)
    again, _, _ = asyncio.run(run(Planner(config), records))
    assert sorted(again, key=lambda o: o.line) == sorted(outcomes, key=lambda o: o.line)


# --- DedupeTable -------------------------------------------------------------------


def test_dedupe_table_returns_the_first_line_of_a_repeat() -> None:
    table = DedupeTable()
    assert table.insert(5511987654321, 1) is None
    assert table.insert(-42, 2) is None
    assert table.insert(5511987654321, 3) == 1
    assert table.insert(-42, 4) == 2
    assert len(table) == 2


def test_dedupe_table_rejects_the_empty_marker_key() -> None:
    with pytest.raises(ValueError, match="0 marks an empty slot"):
        DedupeTable().insert(0, 1)


def test_dedupe_table_grows_and_keeps_every_entry() -> None:
    table = DedupeTable(capacity=16)
    keys = [n * 7919 + 1 for n in range(20_000)]
    for line, key in enumerate(keys, start=1):
        assert table.insert(key, line) is None
    assert len(table) == 20_000
    assert len(table) <= table.capacity * 0.8
    assert table.nbytes == table.capacity * 12
    for line, key in enumerate(keys, start=1):
        assert table.insert(key, line + 10**6) == line
    assert len(table) == 20_000


def test_dedupe_table_holds_at_most_24_bytes_an_entry_once_grown() -> None:
    table = DedupeTable()
    for line in range(1, 200_001):
        table.insert(5511900000000 + 7 * line, line)
        if line % 10_000 == 0:
            assert table.nbytes <= 24 * line


def test_dedupe_table_sized_for_its_entries_takes_them_without_growing() -> None:
    table = DedupeTable.sized_for(20_000)
    capacity = table.capacity
    for line in range(1, 20_001):
        assert table.insert(5511910000000 + line, line) is None
    assert table.capacity == capacity
    assert table.nbytes <= 17 * 20_000
    assert table.insert(5511910000001, 99) == 1
    # A huge count is not held up front: past the limit the table grows as entries come.
    assert DedupeTable.sized_for(10**9).capacity == DedupeTable.sized_for(1 << 20).capacity
    assert DedupeTable.sized_for(None).capacity == DedupeTable().capacity


async def test_plan_finds_the_same_duplicates_with_the_record_count_known() -> None:
    """``expected`` sizes the dedupe table only: the same outcomes, right or wrong count."""
    records = [Record(line=n, recipient=f"+55119100000{n % 37:02d}") for n in range(1, 200)]
    planned = []
    for expected in (None, 3, len(records), 10**7):
        planner = Planner(PlannerConfig(default_region="BR", chunk_size=1))
        items = [item async for item in planner.plan(records_of(records), expected=expected)]
        planned.append(items)
        assert planner.stats.duplicates == len(records) - 37
    assert all(items == planned[0] for items in planned)


def test_dedupe_table_resolves_colliding_slots_and_wraps_around() -> None:
    table = DedupeTable(capacity=16)
    segment, last_slot = 0, table.segment_capacity(0) - 1
    # Keys whose home is the segment's last slot: they probe past its end to slot 0, 1, ...
    colliding = [k for k in range(1, 1_000_000) if table.home(k) == (segment, last_slot)][:5]
    assert len(colliding) == 5
    for line, key in enumerate(colliding, start=1):
        assert table.insert(key, line) is None
    for line, key in enumerate(colliding, start=1):
        assert table.insert(key, 99) == line
    assert len(table) == 5


def test_checked_dedupe_table_keeps_equal_keys_with_different_checks_apart() -> None:
    """A key is a hash in a checked table: equal hashes of different numbers are two entries."""
    table = DedupeTable(capacity=16, checked=True)
    assert table.insert(77, 1, 5511900000001) is None
    assert table.insert(77, 2, 5511900000002) is None  # a hash collision: not a duplicate
    assert table.insert(77, 3, 5511900000001) == 1
    assert table.insert(77, 4, 5511900000002) == 2
    assert len(table) == 2
    for line in range(5, 2_000):  # grown many times over, the colliding entries stay apart
        assert table.insert(77 if line % 2 else line, line, line) is None
    assert table.insert(77, 9_999, 5511900000002) == 2
    assert table.nbytes == table.capacity * 20


def test_colliding_variables_hashes_never_make_two_numbers_duplicates(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With repeats by variables the table's key is a 64-bit hash; forced to collide (a
    one-value hash), different numbers are still all sent and only true repeats are
    duplicates."""
    monkeypatch.setattr(planner_module, "_variables_key", lambda key, encoded: 1)
    config = PlannerConfig(default_region="BR", allow_repeats_with_different_variables=True)
    records = [
        phone(1, "+55 11 98765-4321", {"name": "Ana"}),
        phone(2, "+55 11 98765-4322", {"name": "Ana"}),
        phone(3, "+55 11 98765-4321", {"name": "Bia"}),
        phone(4, "+55 11 98765-4322", {"name": "Ana"}),
        contact(5, 42, {"name": "Ana"}),
        contact(6, 42, {"name": "Ana"}),
    ]
    outcomes, chunks, _ = asyncio.run(run(Planner(config), records))
    sent = sorted(t.line for c in chunks for t in c.targets)
    # The hash cannot tell the variables apart either, so line 3 is a duplicate of line 1:
    # what a collision may cost is a repeat of a number with other variables, never a number.
    assert sent == [1, 2, 5]
    assert {(o.line, o.duplicate_of) for o in outcomes} == {(3, 1), (4, 2), (6, 5)}


def test_the_variables_hash_is_stable_across_processes() -> None:
    """hashlib, not hash(): a resumed campaign replays its input and gets the same keys."""
    assert planner_module._variables_key(5511987654321, b'{"a":1}') == int.from_bytes(
        hashlib.blake2b((5511987654321).to_bytes(8, "little") + b'{"a":1}', digest_size=8).digest(),
        "little",
        signed=True,
    )
