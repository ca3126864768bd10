"""Campaign planning: records -> rejections, duplicates, and chunks of targets to send.

The planner turns each ``Record`` into exactly one of: an ``Outcome`` ``rejected`` (it
could not be read, or its target is invalid), an ``Outcome`` ``duplicate`` (its target
already appeared on an earlier line), or a place in one ``Chunk``: up to ``chunk_size``
targets that share equal ``contentVariables``, sent in one call.

Planning is deterministic for the same input and config (the same rejections and the same
``duplicate_of``), so a resumed campaign can replay its input through a new planner and
skip what its journal already finished. Which targets share a chunk is not deterministic:
it depends on timing.

Memory stays flat for any input size but the dedupe set: at most ``max_open_groups x
chunk_size`` targets are held, and the dedupe set is an open-addressing table of 12-byte
slots (``DedupeTable``, 15-23 bytes a target) instead of a ``set[str]`` (~100).
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import AsyncGenerator, AsyncIterable, Callable
from dataclasses import dataclass
from typing import Any, Final

import msgspec

from ._dedupe import DedupeTable
from ._models import INT32_MAX
from ._records import Outcome, OutcomeError, OutcomeStatus, Record

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "REJECT_INVALID_INPUT",
    "REJECT_INVALID_PHONE",
    "Chunk",
    "DedupeTable",
    "PlannedTarget",
    "Planner",
    "PlannerConfig",
    "PlannerStats",
]

REJECT_INVALID_INPUT: Final = "invalid_input"
"""``OutcomeError.kind`` of a record that could not be read or names no usable target."""
REJECT_INVALID_PHONE: Final = "invalid_phone"
"""``OutcomeError.kind`` of a recipient that is not a valid phone number."""

# Contact keys carry this bit; phone keys (E.164 digits, < 10**17 < 2**57) never do.
_CONTACT_TAG: Final = 1 << 62
# Records read ahead of the planner: enough to amortise task switches, small to bound memory.
_QUEUE_SIZE: Final = 256
DEFAULT_CHUNK_SIZE: Final = 50
"""Targets per call unless told otherwise (a campaign's and the planner's default)."""


@dataclass(frozen=True)
class PlannerConfig:
    """How records become chunks.

    Usage::

        PlannerConfig(default_region="BR", chunk_size=50)

    Parameters:
        default_region: ISO region ("BR") in which a number without ``+country`` is read;
            ``None`` requires every number to carry its country code.
        chunk_size: the most targets in one call.
        dedupe: report a repeated target ``duplicate`` instead of sending it again.
        allow_repeats_with_different_variables: with ``dedupe``, a repeated target is sent
            again when its content variables differ (same target and variables: duplicate).
        flush_after: seconds a partly filled group waits for more targets before it is sent.
        max_open_groups: distinct-variables groups held at once; beyond it the oldest is sent.
        allow_vanity_numbers: read the letters of a number as keypad digits
            ("+1-800-FLOWERS"); by default a number with letters is rejected. A number with
            an extension is rejected either way.
    """

    default_region: str | None = None
    chunk_size: int = DEFAULT_CHUNK_SIZE
    dedupe: bool = True
    allow_repeats_with_different_variables: bool = False
    flush_after: float = 0.05
    max_open_groups: int = 64
    allow_vanity_numbers: bool = False

    def __post_init__(self) -> None:
        if self.default_region is not None and not _is_known_region(self.default_region):
            raise ValueError(f"default_region {self.default_region!r} is not a known region")
        if self.chunk_size < 1:
            raise ValueError(f"chunk_size must be at least 1, not {self.chunk_size}")
        if self.max_open_groups < 1:
            raise ValueError(f"max_open_groups must be at least 1, not {self.max_open_groups}")
        if not self.flush_after >= 0:
            raise ValueError(f"flush_after must be >= 0 seconds, not {self.flush_after}")


class PlannedTarget(msgspec.Struct, kw_only=True, frozen=True, gc=False):
    """One valid, first-seen target of a chunk.

    ``recipient`` is the E.164 number and ``raw`` the recipient as read; a contact target
    has ``contact_id`` and neither.
    """

    line: int
    recipient: str | None = None
    contact_id: int | None = None
    raw: str | None = None


class Chunk(msgspec.Struct, kw_only=True):
    """Targets sent in one call: all share ``variables`` (``None``: no content variables)."""

    variables: dict[str, Any] | None
    targets: list[PlannedTarget]


@dataclass
class PlannerStats:
    """Counts of one ``Planner.plan`` run so far."""

    records: int = 0
    rejected: int = 0
    duplicates: int = 0
    chunks: int = 0
    targets: int = 0


def _variables_key(key: int, encoded_variables: bytes) -> int:
    """A 64-bit hash of a target key and its variables (0 is kept for empty slots)."""
    digest = hashlib.blake2b(
        key.to_bytes(8, "little", signed=True) + encoded_variables, digest_size=8
    ).digest()
    return int.from_bytes(digest, "little", signed=True) or 1


_encode_variables = msgspec.json.Encoder(order="deterministic").encode


class _Group:
    """Targets waiting to be sent with one set of variables, and when they must go."""

    __slots__ = ("deadline", "targets", "variables")

    def __init__(self, variables: dict[str, Any] | None, deadline: float) -> None:
        self.variables = variables
        self.targets: list[PlannedTarget] = []
        self.deadline = deadline


class _Rejection(Exception):
    """A record's target cannot be planned: the error kind and message of its outcome."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


class _PlanState:
    """The synchronous core of one ``plan`` run: dedupe table and open groups."""

    def __init__(
        self,
        config: PlannerConfig,
        stats: PlannerStats,
        clock: Callable[[], float],
        expected: int | None = None,
    ) -> None:
        self._config = config
        self._stats = stats
        self._clock = clock
        # With repeats by variables the table's key is a hash, checked by the exact key.
        self._table = (
            DedupeTable.sized_for(expected, checked=config.allow_repeats_with_different_variables)
            if config.dedupe
            else None
        )
        # phonenumbers and its metadata load with the first plan, not with the package.
        from ._phone import normalize_phone

        self._normalize = normalize_phone
        # Insertion order is opening order, so the first group is the oldest and due first.
        self._groups: dict[bytes, _Group] = {}

    def next_deadline(self) -> float | None:
        for group in self._groups.values():
            return group.deadline
        return None

    def take(self, record: Record, out: list[Outcome | Chunk]) -> None:
        """Plan one record, appending what it yields (an outcome or up to two chunks)."""
        self._stats.records += 1
        try:
            key, target, variables, encoded = self._resolve(record)
        except _Rejection as rejection:
            self._stats.rejected += 1
            out.append(_rejected(record, rejection.kind, rejection.message))
            return
        if self._table is not None:
            if self._config.allow_repeats_with_different_variables:
                first = self._table.insert(_variables_key(key, encoded), record.line, key)
            else:
                first = self._table.insert(key, record.line)
            if first is not None:
                self._stats.duplicates += 1
                out.append(_duplicate(target, first))
                return
        self._add(target, variables, encoded, out)

    def flush_due(self, out: list[Outcome | Chunk]) -> None:
        if not self._groups:
            return
        now = self._clock()
        while self._groups:
            encoded, group = next(iter(self._groups.items()))
            if group.deadline > now:
                return
            out.append(self._close(encoded))

    def flush_all(self, out: list[Outcome | Chunk]) -> None:
        while self._groups:
            out.append(self._close(next(iter(self._groups))))

    def _resolve(self, record: Record) -> tuple[int, PlannedTarget, dict[str, Any] | None, bytes]:
        if record.error is not None:
            raise _Rejection(REJECT_INVALID_INPUT, record.error)
        recipient, contact_id = record.recipient, record.contact_id
        if recipient is not None and contact_id is not None:
            raise _Rejection(
                REJECT_INVALID_INPUT,
                "both recipient and contactId are set; a record names one target",
            )
        if contact_id is not None:
            key = _contact_key(contact_id)
            target = PlannedTarget(line=record.line, contact_id=contact_id)
        elif recipient is not None:
            e164 = _checked_phone(recipient, self._config, self._normalize)
            key = int(e164[1:])
            target = PlannedTarget(line=record.line, recipient=e164, raw=recipient)
        else:
            raise _Rejection(REJECT_INVALID_INPUT, "neither recipient nor contactId is set")
        variables, encoded = _encoded_variables(record.variables)
        return key, target, variables, encoded

    def _add(
        self,
        target: PlannedTarget,
        variables: dict[str, Any] | None,
        encoded: bytes,
        out: list[Outcome | Chunk],
    ) -> None:
        group = self._groups.get(encoded)
        if group is None and self._config.chunk_size == 1:
            # A chunk of one never waits in a group (and no group is ever open to close).
            self._stats.chunks += 1
            self._stats.targets += 1
            out.append(Chunk(variables=variables, targets=[target]))
            return
        if group is None:
            if len(self._groups) >= self._config.max_open_groups:
                out.append(self._close(next(iter(self._groups))))
            group = _Group(variables, self._clock() + self._config.flush_after)
            self._groups[encoded] = group
        group.targets.append(target)
        if len(group.targets) >= self._config.chunk_size:
            out.append(self._close(encoded))

    def _close(self, encoded: bytes) -> Chunk:
        group = self._groups.pop(encoded)
        self._stats.chunks += 1
        self._stats.targets += len(group.targets)
        return Chunk(variables=group.variables, targets=group.targets)


def _contact_key(contact_id: object) -> int:
    if (
        not isinstance(contact_id, int)
        or isinstance(contact_id, bool)
        or not 1 <= contact_id <= INT32_MAX
    ):
        raise _Rejection(
            REJECT_INVALID_INPUT,
            f"contactId {contact_id!r} is not a positive 32-bit integer",
        )
    return _CONTACT_TAG | contact_id


def _is_known_region(region: str) -> bool:
    import phonenumbers

    return region in phonenumbers.SUPPORTED_REGIONS


def _checked_phone(
    recipient: object, config: PlannerConfig, normalize_phone: Callable[..., str]
) -> str:
    if not isinstance(recipient, str):
        raise _Rejection(
            REJECT_INVALID_INPUT,
            f"recipient must be a string, not {type(recipient).__name__}",
        )
    try:
        return normalize_phone(
            recipient, config.default_region, allow_vanity_numbers=config.allow_vanity_numbers
        )
    except ValueError as exc:
        raise _Rejection(REJECT_INVALID_PHONE, str(exc)) from None


def _encoded_variables(variables: object) -> tuple[dict[str, Any] | None, bytes]:
    """The variables to send (``{}`` counts as none) and their canonical JSON for grouping."""
    if variables is None:
        return None, b""
    if not isinstance(variables, dict):
        raise _Rejection(
            REJECT_INVALID_INPUT,
            f"contentVariables must be a mapping, not {type(variables).__name__}",
        )
    if not variables:
        return None, b""
    try:
        return variables, _encode_variables(variables)
    except (TypeError, ValueError, OverflowError) as exc:
        raise _Rejection(
            REJECT_INVALID_INPUT, f"contentVariables cannot be sent as JSON: {exc}"
        ) from None


def _rejected(record: Record, kind: str, message: str) -> Outcome:
    recipient = record.recipient if isinstance(record.recipient, str) else None
    contact_id = record.contact_id
    if not isinstance(contact_id, int) or isinstance(contact_id, bool):
        contact_id = None
    return Outcome(
        line=record.line,
        status=OutcomeStatus.REJECTED,
        recipient=recipient,
        contact_id=contact_id,
        error=OutcomeError(kind=kind, message=message),
    )


def _duplicate(target: PlannedTarget, first_line: int) -> Outcome:
    return Outcome(
        line=target.line,
        status=OutcomeStatus.DUPLICATE,
        recipient=target.recipient,
        contact_id=target.contact_id,
        duplicate_of=first_line,
    )


class _End:
    """The feeder's last queue item: the source ended, or failed with ``error``."""

    __slots__ = ("error",)

    def __init__(self, error: BaseException | None) -> None:
        self.error = error


class Planner:
    """Plans a stream of records into rejections, duplicates and chunks to send.

    Usage::

        planner = Planner(PlannerConfig(default_region="BR"))
        async for item in planner.plan(aiter_records(read_records("targets.csv"))):
            if isinstance(item, Chunk): ...   # send it
            else: ...                         # an Outcome: record it

    Parameters:
        config: a ``PlannerConfig``.
        clock: monotonic seconds, for the ``flush_after`` window (injectable for tests).

    A planner runs one ``plan`` at a time; ``stats`` counts the current or last run.
    """

    def __init__(
        self, config: PlannerConfig, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.config = config
        self.stats = PlannerStats()
        self._clock = clock

    async def plan(
        self, records: AsyncIterable[Record], *, expected: int | None = None
    ) -> AsyncGenerator[Outcome | Chunk, None]:
        """Yield one ``Outcome`` per rejected or duplicate record, and ``Chunk``\\ s of the rest.

        ``expected``: about how many records ``records`` holds, when known (the dedupe
        table is then sized once, up front, instead of growing).

        Every record is accounted exactly once. A group waiting ``flush_after`` seconds is
        yielded even while the source is stalled; at the end every open group is yielded.
        The source is read ahead by at most a few hundred records (backpressure; none at a
        chunk size of 1, where it is read as records are planned). An error
        raised by the source is raised here, without flushing the open groups.
        """
        self.stats = PlannerStats()
        state = _PlanState(self.config, self.stats, self._clock, expected)
        out: list[Outcome | Chunk] = []
        if self.config.chunk_size == 1:
            # No group ever opens (a chunk of one is yielded at once), so nothing falls due
            # while the source stalls: it is read here, without a feeder task and a queue
            # to hand each record through.
            async for record in records:
                state.take(record, out)
                for result in out:
                    yield result
                out.clear()
            return
        queue: asyncio.Queue[Record | _End] = asyncio.Queue(maxsize=_QUEUE_SIZE)
        feeder = asyncio.get_running_loop().create_task(_feed(records, queue))
        try:
            while True:
                try:
                    item: Record | _End | None = queue.get_nowait()
                except asyncio.QueueEmpty:
                    item = await self._next(queue, state)
                if isinstance(item, _End):
                    if item.error is not None:
                        raise item.error
                    break
                if item is not None:
                    state.take(item, out)
                state.flush_due(out)
                if out:
                    for result in out:
                        yield result
                    out.clear()
            state.flush_all(out)
            for result in out:
                yield result
        finally:
            feeder.cancel()
            # wait() rather than await: a cancellation of this task must not be swallowed.
            await asyncio.wait([feeder])

    async def _next(
        self, queue: asyncio.Queue[Record | _End], state: _PlanState
    ) -> Record | _End | None:
        """The next queued item (the queue was empty), or ``None`` when the oldest open group
        fell due first."""
        deadline = state.next_deadline()
        if deadline is None:
            return await queue.get()
        wait = deadline - self._clock()
        if wait <= 0:
            return None
        try:
            async with asyncio.timeout(wait):
                return await queue.get()
        except TimeoutError:
            return None


async def _feed(records: AsyncIterable[Record], queue: asyncio.Queue[Record | _End]) -> None:
    """Move the source into the bounded queue; its end or error goes in last."""
    try:
        async for record in records:
            try:
                queue.put_nowait(record)
            except asyncio.QueueFull:
                await queue.put(record)
    except Exception as exc:
        await queue.put(_End(exc))
        return
    await queue.put(_End(None))
