"""ChunkSender: the life of one chunk, driven directly with a scripted client.

The client, journal and rate limit are fakes that write into one shared event log, so a
test can check the order of things (acquire, mark in flight, send, settle) as well as
the outcome each target ends with. Sleeps are recorded and return at once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import msgspec
import pytest

from proactive_async._client import ApiResponse, AsyncClient
from proactive_async._errors import (
    AuthenticationError,
    BadRequestError,
    CircuitOpenError,
    ConnectError,
    NameResolutionError,
    RateLimitError,
    ReadTimeout,
    ServerError,
    ServiceUnavailableError,
    UnprocessableEntityError,
)
from proactive_async._models import Conversation, Message, ProactiveConversationRequest
from proactive_async._planner import Chunk, PlannedTarget
from proactive_async._records import Outcome, OutcomeError, OutcomeStatus
from proactive_async._report import CampaignSummary, LatencySample
from proactive_async._retry import RetryPolicy, Sleep
from proactive_async._sender import (
    ABORTED,
    MAX_THROTTLES,
    ChunkSender,
    is_resendable,
    make_outcome,
)
from proactive_async.journal import INTERRUPTED, Journal, JournalEntry
from proactive_async.ratelimit import RateLimitBackend

TEMPLATE = ProactiveConversationRequest(channel_id=1, bot_id=2, conversation_template_id=3)
# No jitter: every backoff is exact (0.5 s, then 1 s, ...).
POLICY = RetryPolicy(max_attempts=5, deadline=None, backoff_initial=0.5, jitter=0.0)

Event = tuple[Any, ...]
Reply = ApiResponse[list[Conversation]] | BaseException
Handler = Callable[[dict[str, Any]], Reply]


def phone(index: int) -> str:
    return f"+5511{910000000 + index}"


def targets(*lines: int) -> list[PlannedTarget]:
    """Recipient targets whose number follows from their line."""
    return [PlannedTarget(line=line, recipient=phone(line)) for line in lines]


def chunk(*lines: int, variables: dict[str, Any] | None = None) -> Chunk:
    return Chunk(variables=variables, targets=targets(*lines))


def conversation(conversation_id: int, to: str) -> Conversation:
    return Conversation(id=conversation_id, messages=[Message(to=to)])


def answer(*conversations: Conversation) -> ApiResponse[list[Conversation]]:
    return ApiResponse(list(conversations), 201, {}, 0.01, 1)


def answer_each(body: dict[str, Any]) -> ApiResponse[list[Conversation]]:
    """A success naming every recipient of the body, conversation id 1000 + its line."""
    return answer(*(conversation(1000 + int(to[-3:]), to) for to in body.get("recipient", [])))


# -- fakes -------------------------------------------------------------------------------


class Hang:
    """A scripted reply: the call never returns (until it is cancelled)."""

    def __init__(self) -> None:
        self.entered = asyncio.Event()


class FakeClient:
    """``send_once`` replies from a script: a reply, an error to raise, or a handler."""

    def __init__(self, log: list[Event], script: Sequence[Reply | Handler | Hang]) -> None:
        self.log = log
        self.script = list(script)
        self.bodies: list[dict[str, Any]] = []

    @property
    def calls(self) -> int:
        return len(self.bodies)

    async def send_once(self, body: bytes, *, attempt: int = 1) -> ApiResponse[list[Conversation]]:
        decoded: dict[str, Any] = msgspec.json.decode(body)
        self.bodies.append(decoded)
        self.log.append(("send", attempt, tuple(decoded.get("recipient", ()))))
        if not self.script:
            raise LookupError("the client was called more often than scripted")
        step = self.script[0] if len(self.script) == 1 and callable(self.script[0]) else None
        item = step if step is not None else self.script.pop(0)
        if isinstance(item, Hang):
            item.entered.set()
            await asyncio.Event().wait()
            raise AssertionError("unreachable")
        reply = item(decoded) if callable(item) else item
        if isinstance(reply, BaseException):
            raise reply
        return reply


class FakeJournal:
    """Records mark_in_flight / record / release, in order, into the shared log."""

    resumed = False

    def __init__(self, log: list[Event]) -> None:
        self.log = log
        self.recorded: list[Outcome] = []

    async def lookup(self, lines: Sequence[int]) -> dict[int, JournalEntry]:
        return {}

    async def mark_in_flight(self, lines: Sequence[int]) -> None:
        self.log.append(("mark", tuple(lines)))

    async def still_in_flight(self, lines: Sequence[int]) -> None:
        self.log.append(("check", tuple(lines)))

    async def release(self, lines: Sequence[int]) -> None:
        self.log.append(("release", tuple(lines)))

    async def record(self, outcomes: Sequence[Outcome]) -> None:
        self.recorded.extend(outcomes)
        self.log.append(("record", tuple(o.line for o in outcomes)))

    async def flush(self) -> None:
        pass

    async def aclose(self) -> None:
        pass

    def events(self, name: str) -> list[Event]:
        return [e for e in self.log if e[0] == name]


class FakeClock:
    """Monotonic seconds that only move when told (or when slept)."""

    def __init__(self) -> None:
        self.now = 100.0
        self.sleeps: list[float] = []
        self.on_sleep: Callable[[], None] | None = None

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float, /) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        if self.on_sleep is not None:
            self.on_sleep()


class FakeRateLimit:
    """Records what it is told; ``acquire`` can move the clock (time spent waiting)."""

    def __init__(self, log: list[Event], clock: FakeClock, acquire_takes: float = 0.0) -> None:
        self.log = log
        self.clock = clock
        self.acquire_takes = acquire_takes
        self.shared_pause = True  # False: the limit takes a 429 for noise
        self.closed: asyncio.Event | None = None  # set: acquire waits until it is set
        self.paused = asyncio.Event()  # an acquire is waiting for ``closed``

    async def acquire(self, weight: float = 1.0) -> None:
        self.clock.now += self.acquire_takes
        self.log.append(("acquire", weight))
        if self.closed is not None:  # a long shared pause
            self.paused.set()
            await self.closed.wait()

    async def on_success(self, weight: float) -> None:
        self.log.append(("on_success", weight))

    async def on_throttle(self, weight: float, retry_after: float | None) -> bool:
        self.log.append(("on_throttle", weight, retry_after))
        return self.shared_pause

    async def on_busy(self, seconds: float) -> None:
        self.log.append(("on_busy", seconds))

    async def aclose(self) -> None:
        pass

    @property
    def rate(self) -> float | None:
        return None


@dataclass
class Harness:
    log: list[Event]
    client: FakeClient
    journal: FakeJournal
    limit: FakeRateLimit | None
    clock: FakeClock
    sender: ChunkSender
    outcomes: list[Outcome] = field(default_factory=list)

    def named(self, *names: str) -> list[Event]:
        return [e for e in self.log if e[0] in names]

    def by_line(self) -> dict[int, Outcome]:
        return {o.line: o for o in self.outcomes}


def make(
    *script: Reply | Handler | Hang,
    retry: RetryPolicy = POLICY,
    rate_limit: bool = True,
    acquire_takes: float = 0.0,
    latency: LatencySample | None = None,
    sleep: Sleep | None = None,
) -> Harness:
    log: list[Event] = []
    clock = FakeClock()
    client = FakeClient(log, script)
    journal = FakeJournal(log)
    limit = FakeRateLimit(log, clock, acquire_takes) if rate_limit else None
    outcomes: list[Outcome] = []

    async def collect(outcome: Outcome, /) -> None:
        outcomes.append(outcome)
        log.append(("outcome", outcome.line, outcome.status))

    sender = ChunkSender(
        cast(AsyncClient, client),
        TEMPLATE,
        retry=retry,
        rate_limit=limit,
        journal=journal,
        on_outcome=collect,
        latency=latency,
        clock=clock,
        sleep=sleep or clock.sleep,
    )
    return Harness(log, client, journal, limit, clock, sender, outcomes)


def assert_one_outcome_each(outcomes: Sequence[Outcome], sent: Sequence[PlannedTarget]) -> None:
    lines = [o.line for o in outcomes]
    assert sorted(lines) == sorted(t.line for t in sent), "each target exactly one outcome"


# -- the fakes keep to the protocols -----------------------------------------------------


def test_the_fakes_satisfy_the_journal_and_rate_limit_protocols() -> None:
    h = make()
    assert isinstance(h.journal, Journal)
    assert isinstance(h.limit, RateLimitBackend)


# -- order and success -------------------------------------------------------------------


async def test_lines_are_marked_in_flight_after_acquire_and_before_the_call() -> None:
    h = make(answer_each)
    await h.sender.send(chunk(1, 2))
    assert [e[0] for e in h.log] == [
        "acquire",
        "mark",
        "send",
        "on_success",
        "record",
        "outcome",
        "outcome",
    ]
    assert h.log[0] == ("acquire", 2.0)
    assert h.log[1] == ("mark", (1, 2))


async def test_the_body_carries_the_template_the_targets_and_the_chunks_variables() -> None:
    h = make(answer_each)
    h.sender.template = msgspec.structs.replace(TEMPLATE, content_variables={"a": 1, "b": 1})
    mixed = Chunk(
        variables={"b": 2},
        targets=[PlannedTarget(line=1, recipient=phone(1)), PlannedTarget(line=2, contact_id=77)],
    )
    await h.sender.send(mixed)
    (body,) = h.client.bodies
    assert body["channelId"] == 1 and body["botId"] == 2 and body["conversationTemplateId"] == 3
    assert body["recipient"] == [phone(1)]
    assert body["contactIds"] == [77]
    assert body["contentVariables"] == {"a": 1, "b": 2}
    assert h.named("acquire") == [("acquire", 2.0)]


async def test_an_empty_variable_falls_back_to_the_templates_value() -> None:
    """A blank CSV cell is not sent as "": the template's (the CLI's --var) value is."""
    h = make(answer_each)
    h.sender.template = msgspec.structs.replace(
        TEMPLATE, content_variables={"city": "Lisbon", "name": "friend"}
    )
    blank = Chunk(
        variables={"city": "", "name": "Ana", "extra": ""},
        targets=[PlannedTarget(line=1, recipient=phone(1))],
    )
    await h.sender.send(blank)
    (body,) = h.client.bodies
    assert body["contentVariables"] == {"city": "Lisbon", "name": "Ana", "extra": ""}


async def test_a_success_sends_each_target_with_the_conversation_that_names_its_number() -> None:
    latency = LatencySample()
    # The answer lists the conversations in the other order: matched by number, not position.
    h = make(answer(conversation(502, phone(2)), conversation(501, phone(1))), latency=latency)
    sent = targets(1, 2)
    await h.sender.send(Chunk(variables=None, targets=sent))
    assert_one_outcome_each(h.outcomes, sent)
    by_line = h.by_line()
    assert by_line[1].status is OutcomeStatus.SENT and by_line[1].conversation_ids == [501]
    assert by_line[2].status is OutcomeStatus.SENT and by_line[2].conversation_ids == [502]
    assert by_line[1].recipient == phone(1) and by_line[1].attempts == 1
    assert h.named("on_success") == [("on_success", 2.0)]
    assert [o.line for o in h.journal.recorded] == [1, 2]
    assert latency.percentile(50) is not None


async def test_a_success_naming_other_numbers_leaves_the_targets_unknown_unmatched() -> None:
    h = make(answer(conversation(900, "+5521988887777")))
    sent = targets(1, 2)
    await h.sender.send(Chunk(variables=None, targets=sent))
    assert_one_outcome_each(h.outcomes, sent)
    for outcome in h.outcomes:
        assert outcome.status is OutcomeStatus.UNKNOWN
        assert outcome.error is not None and outcome.error.kind == "unmatched"
        assert outcome.conversation_ids == [900]  # kept, to check with the vendor (issue 18)
    assert [o.line for o in h.journal.recorded] == [1, 2]  # durable: never resent


async def test_a_partial_answer_sends_the_named_target_and_leaves_the_other_unknown() -> None:
    h = make(answer(conversation(501, phone(1))))
    sent = targets(1, 2)
    await h.sender.send(Chunk(variables=None, targets=sent))
    assert_one_outcome_each(h.outcomes, sent)
    assert h.by_line()[1].status is OutcomeStatus.SENT
    assert h.by_line()[2].status is OutcomeStatus.UNKNOWN


# -- 429 and 503 -------------------------------------------------------------------------


async def test_a_429_tells_the_rate_limit_its_weight_and_retry_after_then_retries() -> None:
    h = make(RateLimitError("slow down", status=429, retry_after=1.5), answer_each)
    sent = targets(1, 2, 3)
    await h.sender.send(Chunk(variables=None, targets=sent))
    assert_one_outcome_each(h.outcomes, sent)
    assert all(o.status is OutcomeStatus.SENT and o.attempts == 2 for o in h.outcomes)
    assert h.named("acquire", "on_throttle", "send", "mark") == [
        ("acquire", 3.0),
        ("mark", (1, 2, 3)),
        ("send", 1, (phone(1), phone(2), phone(3))),
        ("on_throttle", 3.0, 1.5),
        ("acquire", 3.0),
        ("send", 2, (phone(1), phone(2), phone(3))),
    ]
    # The wait is the rate limit's shared pause, not a sleep of the sender's own.
    assert h.clock.sleeps == []


async def test_429s_do_not_use_up_the_policys_attempts() -> None:
    throttled = RateLimitError("slow down", status=429, retry_after=0.1)
    h = make(
        throttled,
        throttled,
        ConnectError("refused"),
        answer_each,
        retry=RetryPolicy(max_attempts=2, deadline=None, backoff_initial=0.5, jitter=0.0),
    )
    sent = targets(1)
    await h.sender.send(Chunk(variables=None, targets=sent))
    # Two 429s and one connect error: the connect error is the policy's first failure.
    assert_one_outcome_each(h.outcomes, sent)
    assert h.outcomes[0].status is OutcomeStatus.SENT
    assert h.outcomes[0].attempts == 4
    assert h.client.calls == 4


async def test_a_429_the_limit_takes_for_noise_is_waited_by_its_chunk_alone() -> None:
    h = make(RateLimitError("429", status=429, retry_after=0.7), answer_each)
    assert h.limit is not None
    h.limit.shared_pause = False
    await h.sender.send(chunk(1))
    assert h.clock.sleeps == [0.7]  # nobody else paused: this chunk waits its Retry-After
    assert h.outcomes[0].status is OutcomeStatus.SENT


async def test_a_retry_after_above_the_cap_fails_the_chunk_and_pauses_nobody() -> None:
    policy = RetryPolicy(max_retry_after=10.0, deadline=None, jitter=0.0)
    h = make(RateLimitError("go away", status=429, retry_after=60.0), retry=policy)
    sent = targets(1, 2)
    await h.sender.send(Chunk(variables=None, targets=sent))
    assert_one_outcome_each(h.outcomes, sent)
    for outcome in h.outcomes:
        assert outcome.status is OutcomeStatus.FAILED
        assert outcome.error is not None
        assert (outcome.error.kind, outcome.error.status) == ("RateLimitError", 429)
    assert h.named("on_throttle", "on_busy") == []
    assert h.client.calls == 1
    assert h.clock.sleeps == []
    assert h.sender.aborted is None
    assert [o.line for o in h.journal.recorded] == [1, 2]


async def test_max_throttles_429s_with_none_accepted_stop_the_run_however_fast() -> None:
    """Retry-After: 0 with no pacing: 100 quick 429s, not 120 s of them, stop the run."""
    h = make(lambda body: RateLimitError("slow down", status=429, retry_after=0.0))
    sent = targets(1)
    await h.sender.send(Chunk(variables=None, targets=sent))
    assert_one_outcome_each(h.outcomes, sent)
    assert h.client.calls == MAX_THROTTLES  # the clock never moved
    assert h.sender.summary.throttled == MAX_THROTTLES
    abort = h.sender.aborted
    assert isinstance(abort, CircuitOpenError) and abort.reason == "throttled"
    assert "100 times for one call" in abort.message
    outcome = h.outcomes[0]
    assert outcome.status is OutcomeStatus.FAILED and outcome.error is not None
    assert outcome.error.kind == ABORTED  # unsent, for a resume
    assert h.journal.events("record") == []


async def test_a_chunk_meeting_max_throttles_while_others_are_accepted_ends_failed() -> None:
    calls = 0

    def first_accepted_then_429(body: dict[str, Any]) -> Reply:
        nonlocal calls
        calls += 1
        if calls == 1:
            return answer_each(body)
        return RateLimitError("slow down", status=429, retry_after=0.0)

    h = make(first_accepted_then_429)
    await h.sender.send(chunk(1))
    await h.sender.send(chunk(2))
    assert h.by_line()[1].status is OutcomeStatus.SENT
    failed = h.by_line()[2]
    assert failed.status is OutcomeStatus.FAILED and failed.error is not None
    assert failed.error.kind == "RateLimitError" and is_resendable(failed)
    assert h.sender.aborted is None


async def test_429s_with_no_call_accepted_for_max_retry_after_abort_the_sender() -> None:
    policy = RetryPolicy(max_retry_after=10.0, deadline=None, jitter=0.0)
    # Each acquire takes 6 s (the shared pause): the third 429 is 12 s after the first.
    h = make(
        lambda body: RateLimitError("slow down", status=429, retry_after=1.0),
        retry=policy,
        acquire_takes=6.0,
    )
    sent = targets(1, 2)
    await h.sender.send(Chunk(variables=None, targets=sent))
    assert h.client.calls == 3
    abort = h.sender.aborted
    assert isinstance(abort, CircuitOpenError) and abort.reason == "throttled"
    assert isinstance(abort.cause, RateLimitError) and abort.fatal
    assert h.sender.summary.aborted is not None
    assert_one_outcome_each(h.outcomes, sent)
    assert all(o.status is OutcomeStatus.FAILED for o in h.outcomes)
    # Certainly not processed: left unfinished in the journal for a resume.
    assert h.journal.events("record") == []
    assert h.journal.events("release") == [("release", (1, 2))]


async def test_a_503_tells_the_rate_limit_it_is_busy_and_retries() -> None:
    h = make(ServiceUnavailableError("busy", status=503, retry_after=3.0), answer_each)
    sent = targets(1, 2)
    await h.sender.send(Chunk(variables=None, targets=sent))
    assert_one_outcome_each(h.outcomes, sent)
    assert all(o.status is OutcomeStatus.SENT and o.attempts == 2 for o in h.outcomes)
    assert h.named("on_busy", "on_throttle") == [("on_busy", 3.0)]
    assert h.clock.sleeps == []  # the shared pause waits, not the sender
    assert h.named("mark") == [("mark", (1, 2))]


async def test_a_503_without_retry_after_pauses_for_the_policys_backoff() -> None:
    h = make(ServiceUnavailableError("busy", status=503), answer_each)
    await h.sender.send(chunk(1))
    assert h.named("on_busy") == [("on_busy", 0.5)]
    assert h.outcomes[0].status is OutcomeStatus.SENT


# -- other failures ----------------------------------------------------------------------


async def test_a_connect_error_is_retried_after_a_backoff_and_the_chunk_is_sent() -> None:
    h = make(ConnectError("refused"), answer_each)
    sent = targets(1, 2)
    await h.sender.send(Chunk(variables=None, targets=sent))
    assert_one_outcome_each(h.outcomes, sent)
    assert all(o.status is OutcomeStatus.SENT and o.attempts == 2 for o in h.outcomes)
    assert h.clock.sleeps == [0.5]
    assert h.named("on_throttle", "on_busy") == []
    # Marked once, before the first attempt; the retry needs no second mark.
    assert [e[0] for e in h.named("acquire", "mark", "send")] == [
        "acquire",
        "mark",
        "send",
        "acquire",
        "send",
    ]


async def test_the_summary_shows_the_failing_attempt_with_the_wait_decided_until_one_succeeds() -> (
    None
):
    seen: list[tuple[str, int, float | None] | None] = []

    def refuse_then_answer(body: dict[str, Any]) -> Reply:
        failure = h.sender.summary.last_failure
        seen.append(None if failure is None else (failure.kind, failure.count, failure.wait))
        return ConnectError("refused") if len(seen) < 3 else answer_each(body)

    h = make(refuse_then_answer)
    await h.sender.send(chunk(1))
    # What a live display read before each attempt: the sender's own backoffs, counted.
    assert seen == [None, ("ConnectError", 1, 0.5), ("ConnectError", 2, 1.0)]
    assert h.sender.summary.last_failure is None  # it succeeded: nothing is failing now
    h = make(AuthenticationError("no", status=401))
    await h.sender.send(chunk(2))
    failure = h.sender.summary.last_failure
    assert failure is not None and failure.status == 401 and failure.wait is None


async def test_connect_errors_past_the_attempt_budget_fail_the_chunk() -> None:
    policy = RetryPolicy(max_attempts=3, deadline=None, backoff_initial=0.5, jitter=0.0)
    h = make(lambda body: ConnectError("refused"), retry=policy)
    sent = targets(1, 2)
    await h.sender.send(Chunk(variables=None, targets=sent))
    assert h.client.calls == 3
    assert h.clock.sleeps == [0.5, 1.0]
    assert_one_outcome_each(h.outcomes, sent)
    assert all(o.status is OutcomeStatus.FAILED and o.attempts == 3 for o in h.outcomes)
    assert [o.line for o in h.journal.recorded] == [1, 2]


async def test_a_500_is_unknown_and_never_retried_by_default() -> None:
    h = make(ServerError("boom", status=500), answer_each)
    sent = targets(1, 2)
    await h.sender.send(Chunk(variables=None, targets=sent))
    assert h.client.calls == 1
    assert_one_outcome_each(h.outcomes, sent)
    for outcome in h.outcomes:
        assert outcome.status is OutcomeStatus.UNKNOWN
        assert outcome.error is not None
        assert (outcome.error.kind, outcome.error.status) == ("ServerError", 500)
    assert [o.line for o in h.journal.recorded] == [1, 2]


async def test_a_500_is_retried_when_the_policy_retries_ambiguous_failures() -> None:
    policy = RetryPolicy(retry_ambiguous=True, deadline=None, backoff_initial=0.5, jitter=0.0)
    h = make(ServerError("boom", status=500), answer_each, retry=policy)
    sent = targets(1, 2)
    await h.sender.send(Chunk(variables=None, targets=sent))
    assert h.client.calls == 2
    assert h.clock.sleeps == [0.5]
    assert_one_outcome_each(h.outcomes, sent)
    assert all(o.status is OutcomeStatus.SENT for o in h.outcomes)


async def test_a_400_after_a_retried_ambiguous_failure_is_unknown_and_not_bisected() -> None:
    """The 500 may have created the conversations: the 400 does not make them 'failed'."""
    policy = RetryPolicy(retry_ambiguous=True, deadline=None, backoff_initial=0.5, jitter=0.0)
    h = make(
        ServerError("boom", status=500),
        BadRequestError("already started", status=400),
        answer_each,
        retry=policy,
    )
    sent = targets(1, 2)
    await h.sender.send(Chunk(variables=None, targets=sent))
    assert h.client.calls == 2  # no half is sent again
    assert_one_outcome_each(h.outcomes, sent)
    assert all(o.status is OutcomeStatus.UNKNOWN for o in h.outcomes)


async def test_a_400_bisects_until_the_bad_target_alone_fails() -> None:
    bad = phone(3)

    def reply(body: dict[str, Any]) -> Reply:
        if bad in body["recipient"]:
            return BadRequestError("invalid recipient", status=400)
        return answer_each(body)

    h = make(reply)
    sent = targets(1, 2, 3, 4)
    await h.sender.send(Chunk(variables=None, targets=sent))
    assert_one_outcome_each(h.outcomes, sent)
    by_line = h.by_line()
    assert by_line[3].status is OutcomeStatus.FAILED
    assert by_line[3].error is not None
    assert (by_line[3].error.kind, by_line[3].error.status) == ("BadRequestError", 400)
    for line in (1, 2, 4):
        assert by_line[line].status is OutcomeStatus.SENT
        assert by_line[line].conversation_ids == [1000 + line]
    assert [e[2] for e in h.named("send")] == [
        (phone(1), phone(2), phone(3), phone(4)),
        (phone(1), phone(2)),
        (phone(3), phone(4)),
        (phone(3),),
        (phone(4),),
    ]
    assert [e[1] for e in h.named("acquire")] == [4.0, 2.0, 2.0, 1.0, 1.0]
    # Every half is marked in flight before its own call.
    assert [e[0] for e in h.named("mark", "send")] == ["mark", "send"] * 5
    assert h.sender.summary.retries == 0  # a half is a new chunk, not a retry


async def test_a_400_for_one_target_fails_it_without_a_retry() -> None:
    h = make(BadRequestError("invalid", status=400), answer_each)
    await h.sender.send(chunk(7))
    assert h.client.calls == 1
    assert h.outcomes[0].status is OutcomeStatus.FAILED


# -- abort, stop, cancellation, bugs -----------------------------------------------------


async def test_a_401_aborts_fails_the_chunk_unrecorded_and_sends_nothing_more() -> None:
    h = make(AuthenticationError("bad token", status=401), answer_each)
    first = targets(1, 2)
    await h.sender.send(Chunk(variables=None, targets=first))
    assert isinstance(h.sender.aborted, AuthenticationError)
    assert (
        h.sender.summary.aborted is not None and "AuthenticationError" in h.sender.summary.aborted
    )
    assert_one_outcome_each(h.outcomes, first)
    for outcome in h.outcomes:
        assert outcome.status is OutcomeStatus.FAILED
        assert outcome.error is not None
        assert (outcome.error.kind, outcome.error.status) == ("AuthenticationError", 401)
    assert h.journal.events("release") == [("release", (1, 2))]
    assert h.journal.events("record") == []

    h.outcomes.clear()
    second = targets(3, 4)
    await h.sender.send(Chunk(variables=None, targets=second))
    assert h.client.calls == 1  # no new call
    assert h.named("acquire") == [("acquire", 2.0)]  # nor waits for the rate limit
    assert_one_outcome_each(h.outcomes, second)
    for outcome in h.outcomes:
        assert outcome.status is OutcomeStatus.FAILED
        assert outcome.error is not None and outcome.error.kind == ABORTED
    assert h.journal.events("release") == [("release", (1, 2)), ("release", (3, 4))]
    assert h.journal.events("record") == []  # still unfinished: a resume sends them


async def test_stop_before_the_first_attempt_makes_no_call_no_mark_and_no_outcome() -> None:
    h = make(answer_each)
    h.sender.stop()
    assert h.sender.stopping
    await h.sender.send(chunk(1, 2))
    assert h.client.calls == 0
    assert h.named("mark", "record", "release") == []
    assert h.outcomes == []


async def test_stop_during_a_backoff_after_an_unprocessed_attempt_leaves_the_chunk_unsent() -> None:
    h = make(ConnectError("refused"), answer_each)
    h.clock.on_sleep = h.sender.stop
    await h.sender.send(chunk(1, 2))
    assert h.client.calls == 1
    assert h.outcomes == []
    assert h.journal.events("release") == [("release", (1, 2))]
    assert h.journal.events("record") == []
    assert h.sender.summary.pending == 2


async def test_stop_during_a_backoff_after_an_ambiguous_attempt_leaves_the_chunk_unknown() -> None:
    policy = RetryPolicy(retry_ambiguous=True, deadline=None, backoff_initial=0.5, jitter=0.0)
    h = make(ServerError("boom", status=500), answer_each, retry=policy)
    h.clock.on_sleep = h.sender.stop
    sent = targets(1, 2)
    await h.sender.send(Chunk(variables=None, targets=sent))
    assert h.client.calls == 1
    assert_one_outcome_each(h.outcomes, sent)
    assert all(o.status is OutcomeStatus.UNKNOWN and o.error == INTERRUPTED for o in h.outcomes)
    assert [o.line for o in h.journal.recorded] == [1, 2]


async def test_cancelled_during_the_call_every_target_is_unknown_and_the_cancel_propagates() -> (
    None
):
    hang = Hang()
    h = make(hang)
    sent = targets(1, 2, 3)
    task = asyncio.create_task(h.sender.send(Chunk(variables=None, targets=sent)))
    await hang.entered.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert_one_outcome_each(h.outcomes, sent)
    assert all(o.status is OutcomeStatus.UNKNOWN and o.error == INTERRUPTED for o in h.outcomes)
    assert [o.line for o in h.journal.recorded] == [1, 2, 3]  # durable: never resent


async def test_an_unexpected_exception_in_the_call_leaves_every_target_unknown(
    caplog: pytest.LogCaptureFixture,
) -> None:
    h = make(RuntimeError("a bug"), answer_each)
    sent = targets(1, 2)
    with caplog.at_level(logging.ERROR, logger="proactive_async"):
        await h.sender.send(Chunk(variables=None, targets=sent))
    assert h.client.calls == 1  # the call may have gone out: never retried
    assert_one_outcome_each(h.outcomes, sent)
    for outcome in h.outcomes:
        assert outcome.status is OutcomeStatus.UNKNOWN
        assert outcome.error is not None
        assert (outcome.error.kind, outcome.error.message) == ("RuntimeError", "a bug")
    assert [o.line for o in h.journal.recorded] == [1, 2]
    assert "unexpected error" in caplog.text


# -- counters and no rate limit -----------------------------------------------------------


async def test_the_summary_counts_calls_retries_and_throttles() -> None:
    summary = CampaignSummary()
    h = make(
        RateLimitError("slow down", status=429, retry_after=0.1),
        ConnectError("refused"),
        answer_each,
    )
    h.sender.summary = summary
    await h.sender.send(chunk(1, 2))
    await h.sender.send(chunk(3))
    assert (summary.calls, summary.retries, summary.throttled) == (4, 2, 1)
    assert summary.pending == 0 and summary.aborted is None


async def test_without_a_rate_limit_every_wait_is_the_senders_own_sleep() -> None:
    h = make(
        RateLimitError("slow down", status=429, retry_after=2.0),
        ConnectError("refused"),
        ServiceUnavailableError("busy", status=503),
        answer_each,
        rate_limit=False,
    )
    sent = targets(1, 2)
    await h.sender.send(Chunk(variables=None, targets=sent))
    # The 429's Retry-After, then backoff(1) and backoff(2): the 429 used no attempt.
    assert h.clock.sleeps == [2.0, 0.5, 1.0]
    assert_one_outcome_each(h.outcomes, sent)
    assert all(o.status is OutcomeStatus.SENT and o.attempts == 4 for o in h.outcomes)
    assert h.named("mark") == [("mark", (1, 2))]


async def test_without_a_journal_the_outcomes_still_reach_the_callback() -> None:
    h = make(answer_each)
    h.sender.journal = None
    sent = targets(1, 2)
    await h.sender.send(Chunk(variables=None, targets=sent))
    assert_one_outcome_each(h.outcomes, sent)
    assert h.named("mark", "record", "release") == []


def test_make_outcome_copies_the_target_and_defaults_to_no_conversations() -> None:
    target = PlannedTarget(line=9, contact_id=44, raw="x")
    outcome = make_outcome(target, OutcomeStatus.FAILED, attempts=2)
    assert (outcome.line, outcome.recipient, outcome.contact_id) == (9, None, 44)
    assert outcome.conversation_ids == []
    assert outcome.attempts == 2
    assert outcome.error is None


# -- the breaker: runs that cannot succeed stop (issue 18) ---------------------------------


def breaker_policy(**fields: Any) -> RetryPolicy:
    return RetryPolicy(**{"max_attempts": 50, "deadline": None, "jitter": 0.0, **fields})


async def test_attempts_that_all_fail_to_connect_for_the_limit_stop_the_run() -> None:
    h = make(
        lambda body: ConnectError("refused"), retry=breaker_policy(stop_unreachable_after=10.0)
    )
    await h.sender.send(chunk(1, 2))
    # Failures at 0, 0.5, 1.5, 3.5, 7.5 and 15.5 s: the last is past 10 s.
    assert h.client.calls == 6
    abort = h.sender.aborted
    assert isinstance(abort, CircuitOpenError) and abort.fatal
    assert abort.reason == "unreachable" and isinstance(abort.cause, ConnectError)
    assert "no call reached the server for 16 s" in abort.message
    assert {o.error.kind for o in h.outcomes if o.error} == {ABORTED}
    assert all(o.status is OutcomeStatus.FAILED for o in h.outcomes)
    assert h.journal.events("record") == []  # unfinished: a plain resume sends them
    await h.sender.send(chunk(3))
    assert h.client.calls == 6  # dispatch stopped


async def test_a_call_that_succeeds_closes_the_unreachable_window() -> None:
    refused = ConnectError("refused")
    script = [refused] * 5 + [answer_each] + [refused] * 5 + [answer_each]
    h = make(*script, retry=breaker_policy(stop_unreachable_after=10.0))
    await h.sender.send(chunk(1))  # 5 failures over 7.5 s, then sent at 15.5 s
    h.client.script = [refused] * 5 + [answer_each]
    await h.sender.send(chunk(2))  # another 15.5 s, but the window began again
    assert h.sender.aborted is None
    assert [o.status for o in h.outcomes] == [OutcomeStatus.SENT] * 2


async def test_an_answer_of_any_kind_closes_the_unreachable_window() -> None:
    refused = ConnectError("refused")
    busy = ServiceUnavailableError("busy", status=503)
    # Refused at 0, 0.5, 1.5, 2.5 and 3.5 s, a 503 at 4.5, refused from 5.5 to 8.5: the
    # window began again at 5.5.
    h = make(
        *([refused] * 5 + [busy] + [refused] * 4 + [answer_each]),
        retry=breaker_policy(stop_unreachable_after=5.0, backoff_max=1.0),
        rate_limit=False,
    )
    await h.sender.send(chunk(1))
    assert h.sender.aborted is None and h.outcomes[0].status is OutcomeStatus.SENT


async def test_ambiguous_failures_with_no_success_stop_the_run_after_the_limit() -> None:
    h = make(
        lambda body: ServerError("HTTP 500", status=500),
        retry=breaker_policy(stop_ambiguous_after=3),
    )
    for line in (1, 2, 3, 4, 5):
        await h.sender.send(chunk(line))
    assert h.client.calls == 3
    abort = h.sender.aborted
    assert isinstance(abort, CircuitOpenError) and abort.reason == "ambiguous"
    assert abort.message.startswith("3 calls failed after the server may have processed them")
    by_line = h.by_line()
    assert [by_line[line].status for line in (1, 2, 3)] == [OutcomeStatus.UNKNOWN] * 3
    assert h.journal.events("record") == [("record", (line,)) for line in (1, 2, 3)]
    for line in (4, 5):
        error = by_line[line].error
        assert by_line[line].status is OutcomeStatus.FAILED and error and error.kind == ABORTED


async def test_a_success_resets_the_count_of_ambiguous_failures() -> None:
    h = make(
        ServerError("HTTP 500", status=500),
        ReadTimeout("no answer"),
        answer_each,
        ServerError("HTTP 500", status=500),
        ReadTimeout("no answer"),
        answer_each,
        retry=breaker_policy(stop_ambiguous_after=3),
    )
    for line in range(1, 7):
        await h.sender.send(chunk(line))
    assert h.sender.aborted is None and h.client.calls == 6


async def test_failures_that_were_not_processed_do_not_count_as_ambiguous() -> None:
    h = make(
        lambda body: UnprocessableEntityError("invalid", status=422),
        retry=breaker_policy(stop_ambiguous_after=2),
    )
    for line in range(1, 6):
        await h.sender.send(chunk(line))
    assert h.sender.aborted is None and h.client.calls == 5


async def test_a_breaker_limit_of_none_never_trips() -> None:
    h = make(
        lambda body: ServerError("HTTP 500", status=500),
        retry=breaker_policy(stop_ambiguous_after=None, stop_unreachable_after=None),
    )
    for line in range(1, 101):
        await h.sender.send(chunk(line))
    assert h.sender.aborted is None and h.client.calls == 100


async def test_a_name_that_does_not_resolve_is_fatal_at_once_and_not_retried() -> None:
    h = make(NameResolutionError("the host name 'nohost.invalid' does not resolve"))
    await h.sender.send(chunk(1, 2))
    await h.sender.send(chunk(3))
    assert h.client.calls == 1
    assert isinstance(h.sender.aborted, NameResolutionError)
    assert {o.error.kind for o in h.outcomes if o.error} == {"NameResolutionError", ABORTED}
    assert h.journal.events("record") == []


async def test_an_abort_ends_the_backoff_of_chunks_waiting_to_retry_at_once() -> None:
    refused = asyncio.Event()

    def script(body: dict[str, Any]) -> Reply:
        if body["recipient"] == [phone(1)]:
            refused.set()
            return ConnectError("refused")
        return AuthenticationError("bad token", status=401)

    async def an_hour(seconds: float, /) -> None:
        await asyncio.sleep(3600)

    h = make(script, sleep=an_hour)
    waiting = asyncio.create_task(h.sender.send(chunk(1)))
    await refused.wait()
    await asyncio.wait_for(h.sender.send(chunk(2)), 5)
    await asyncio.wait_for(waiting, 5)  # not an hour
    error = h.by_line()[1].error
    assert h.by_line()[1].status is OutcomeStatus.FAILED and error and error.kind == ABORTED
    assert h.client.calls == 2


async def test_an_abort_ends_a_wait_for_the_rate_limit_at_once() -> None:
    h = make(AuthenticationError("bad token", status=401))
    assert h.limit is not None
    h.limit.closed = asyncio.Event()  # a pause that lasts until it is set
    paused = asyncio.create_task(h.sender.send(chunk(5)))
    await h.limit.paused.wait()
    h.limit.closed = None  # the next acquire passes
    await asyncio.wait_for(h.sender.send(chunk(1)), 5)  # meets the 401: aborts
    await asyncio.wait_for(paused, 5)
    error = h.by_line()[5].error
    assert error is not None and error.kind == ABORTED and h.client.calls == 1


async def test_a_cancellation_from_outside_still_cancels_a_waiting_chunk() -> None:
    async def an_hour(seconds: float, /) -> None:
        await asyncio.sleep(3600)

    refused = asyncio.Event()

    def script(body: dict[str, Any]) -> Reply:
        refused.set()
        return ConnectError("refused")

    h = make(script, sleep=an_hour)
    waiting = asyncio.create_task(h.sender.send(chunk(1)))
    await refused.wait()
    await asyncio.sleep(0)  # into its backoff
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert h.journal.events("release") == [("release", (1,))]


@pytest.mark.parametrize(
    ("kind", "resendable"),
    [
        (ABORTED, True),
        ("ConnectError", True),
        ("ConnectTimeout", True),
        ("NameResolutionError", True),
        ("CircuitOpenError", True),
        ("RateLimitError", True),
        ("ServiceUnavailableError", True),
        ("AuthenticationError", True),
        ("NotFoundError", True),
        ("BadRequestError", False),
        ("UnprocessableEntityError", False),
        ("ConflictError", False),
        ("HTTPStatusError", False),
    ],
)
def test_which_failed_records_a_resume_may_send_again(kind: str, resendable: bool) -> None:
    outcome = make_outcome(
        targets(1)[0], OutcomeStatus.FAILED, error=OutcomeError(kind=kind, message="x")
    )
    assert is_resendable(outcome) is resendable
    unknown = make_outcome(
        targets(1)[0], OutcomeStatus.UNKNOWN, error=OutcomeError(kind=kind, message="x")
    )
    assert not is_resendable(unknown)  # may have been created: never by this flag


async def test_stop_wakes_chunks_waiting_on_the_rate_limit_and_sends_nothing() -> None:
    """A Ctrl-C with nothing in flight, every chunk waiting out a long pause (or a Redis
    that is away): stop() returns them at once, unsent and unmarked, for a resume."""
    h = make()
    assert h.limit is not None
    h.limit.closed = asyncio.Event()  # the pause never ends by itself
    sending = asyncio.create_task(h.sender.send(chunk(1, 2)))
    await h.limit.paused.wait()
    h.sender.stop()
    await asyncio.wait_for(sending, 1)
    assert h.outcomes == [] and h.named("mark", "send") == []
    assert h.sender.summary.pending == 0  # never marked: nothing to release either


# -- a fenced journal: the fence before each retry is a read ---------------------------


class FencedJournal(FakeJournal):
    """A fenced journal (a distributed slice's): it marks what it holds; ``held`` says
    whether its marks are still its own (False: the lease lost, the campaign cancelled)."""

    def __init__(self, log: list[Event]) -> None:
        super().__init__(log)
        self.held = True

    async def mark_in_flight(self, lines: Sequence[int]) -> set[int]:  # type: ignore[override]
        self.log.append(("mark", tuple(lines)))
        return set(lines) if self.held else set()

    async def still_in_flight(self, lines: Sequence[int]) -> set[int]:  # type: ignore[override]
        self.log.append(("check", tuple(lines)))
        return set(lines) if self.held else set()


def fenced(
    *script: Reply | Handler | Hang, retry: RetryPolicy = POLICY
) -> tuple[Harness, FencedJournal]:
    h = make(*script, retry=retry)
    journal = FencedJournal(h.log)
    h.sender.journal = journal
    return h, journal


async def test_a_fenced_chunk_checks_its_fence_before_each_retry_by_a_read_not_a_mark() -> None:
    """429s, then an answer: one mark (a write) before the first attempt, and before each
    retry only the read-only check; the chunk ends sent."""
    throttled = RateLimitError("slow down", status=429, retry_after=0.1)
    h, _ = fenced(throttled, throttled, answer_each)
    await h.sender.send(chunk(1, 2))
    assert h.named("mark", "check", "send") == [
        ("mark", (1, 2)),
        ("send", 1, (phone(1), phone(2))),
        ("check", (1, 2)),
        ("send", 2, (phone(1), phone(2))),
        ("check", (1, 2)),
        ("send", 3, (phone(1), phone(2))),
    ]
    assert [o.status for o in h.outcomes] == [OutcomeStatus.SENT] * 2


async def test_a_fence_lost_between_attempts_makes_no_new_call() -> None:
    """Cancelled (or its lease lost) while it waits to retry a 429: the check finds the
    lines no longer its own, no call is made, and the never-processed lines are released."""
    throttled = RateLimitError("slow down", status=429, retry_after=0.1)
    h, journal = fenced(throttled, answer_each)
    assert h.limit is not None

    def lose() -> None:
        journal.held = False

    h.clock.on_sleep = lose
    h.limit.shared_pause = False  # the chunk sleeps out the 429 itself
    await h.sender.send(chunk(1, 2))
    assert h.client.calls == 1
    assert h.named("mark", "check", "release") == [
        ("mark", (1, 2)),
        ("check", (1, 2)),
        ("release", (1, 2)),
    ]
    assert h.outcomes == [] and h.sender.summary.pending == 2


async def test_a_fence_lost_after_a_call_that_may_have_been_processed_ends_unknown() -> None:
    """A timeout (it may have been processed), then the fence is gone: no new call, and
    the records end unknown, never failed."""
    ambiguous = RetryPolicy(backoff_initial=0.5, jitter=0.0, retry_ambiguous=True)
    h, journal = fenced(ReadTimeout("timed out"), answer_each, retry=ambiguous)

    def lose() -> None:
        journal.held = False

    h.clock.on_sleep = lose
    await h.sender.send(chunk(1, 2))
    assert h.client.calls == 1 and h.named("mark") == [("mark", (1, 2))]
    assert [o.status for o in h.outcomes] == [OutcomeStatus.UNKNOWN] * 2
    assert all(o.error == INTERRUPTED for o in h.outcomes)
