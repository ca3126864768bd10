"""Sending one chunk until each of its targets has its outcome.

The unit a campaign's planner drives in one process, and a task-queue job drives for one
stored chunk: it knows nothing of readers, queues or workers. What it talks to is a
``RateLimitBackend`` (local or shared), a ``Journal`` (any backend) and a callback that
receives each final outcome.

The order of things for one chunk is what keeps the no-duplicate promise: wait for the
rate limit (and any shared pause), *then* mark the chunk's lines in flight in the journal
(durably), *then* send. A later run, or a redelivered job, resends a line only when its
journal row says it was never in flight, or when the caller asks for unknowns to be resent.

A fatal answer (401, 403, a TLS failure, a host name that does not resolve:
``ProactiveError.fatal``) aborts the sender at once, and so does its breaker when no call
can succeed (``CircuitOpenError``): every attempt failing to connect for
``RetryPolicy.stop_unreachable_after`` seconds, ``stop_ambiguous_after`` failures that may
have been processed with no success, or 429s with no call accepted for
``max_retry_after`` seconds. Then no new call is made, waits for a retry or the rate limit
end at once, and every target not yet sent ends ``failed`` (kind ``aborted``) but stays
unfinished in the journal, so that a later run sends it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Final, Protocol

from msgspec import UNSET

from ._breaker import ABORTED, Breaker, is_resendable, resendable_kind
from ._client import AsyncClient
from ._errors import (
    BadRequestError,
    CircuitOpenError,
    ProactiveError,
    RateLimitError,
)
from ._hooks import RetryDetails, RetryHook, ThrottleDetails, ThrottleHook, safe_hook
from ._matching import match_answer
from ._models import Conversation, ProactiveConversationRequest, build_request, encode_request
from ._planner import Chunk, PlannedTarget
from ._records import Outcome, OutcomeError, OutcomeStatus
from ._report import CampaignSummary, LatencySample
from ._retry import RetryPolicy, Sleep
from ._telemetry import telemetry_of
from .journal import INTERRUPTED, Journal
from .ratelimit import RateLimitBackend, report_failure, unnamed_throttle_wait

__all__ = [
    "ABORTED",
    "MAX_THROTTLES",
    "ChunkSender",
    "OutcomeSink",
    "is_resendable",
    "resendable_kind",
]

_log = logging.getLogger("proactive_async")

MAX_THROTTLES: Final = 100
"""429s one chunk may meet before it ends ``failed`` (each waits out the shared pause); if
no call was accepted meanwhile, the run stops (429s without end, however fast they came)."""
_UNMATCHED: Final = "unmatched"
"""``OutcomeError.kind`` of a target a successful answer did not prove sent (``match_answer``)."""


class OutcomeSink(Protocol):
    """Receives each final outcome, after the journal has it."""

    async def __call__(self, outcome: Outcome, /) -> None: ...


class ChunkSender:
    """Sends chunks: paced, fenced by the journal, retried by the policy, each target settled.

    Usage::

        sender = ChunkSender(client, template, retry=RetryPolicy(max_attempts=8),
                             rate_limit=RateLimit(), journal=journal, on_outcome=collect)
        await sender.send(chunk)      # every target ends with one outcome, or stays unsent

    A target ends with exactly one outcome passed to ``on_outcome``, except when a stop
    comes before any of its chunk's attempts could have been processed: then it is left
    unsent (released in the journal, counted in ``summary.pending``) for a later run.

    Parameters:
        client: the client whose ``send_once`` makes each attempt.
        template: every request field but the targets.
        retry: the policy asked about every failure (``RetryPolicy.next_wait``).
        rate_limit: paces each attempt and hears of 429s and 503s; None: no pacing.
        journal: the fence and the durable outcomes; None: nothing is durable.
        on_outcome: awaited with each final outcome.
        on_retry, on_throttle: told of each retry (``RetryHook``) and each 429
            (``ThrottleHook``): plain functions; one that raises is logged, not raised.
        summary: where the call counters go (``calls``, ``retries``, ``throttled``,
            ``pending``); a new one when not given.
        latency: a sample of successful calls' latencies; None: not measured.
        clock, sleep: monotonic seconds and an awaitable sleep for backoff waits.
        guard: asked right before every attempt whether this sender may still send (a
            distributed slice's lease); False stops the sender, and the chunk is not sent.
    """

    def __init__(
        self,
        client: AsyncClient,
        template: ProactiveConversationRequest,
        *,
        retry: RetryPolicy,
        rate_limit: RateLimitBackend | None = None,
        journal: Journal | None = None,
        on_outcome: OutcomeSink | None = None,
        on_retry: RetryHook | None = None,
        on_throttle: ThrottleHook | None = None,
        summary: CampaignSummary | None = None,
        latency: LatencySample | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Sleep = asyncio.sleep,
        guard: Callable[[], bool] | None = None,
    ) -> None:
        self.client = client
        self.template = template
        self.retry = retry
        self.rate_limit = rate_limit
        self.journal = journal
        self.summary = summary if summary is not None else CampaignSummary()
        self._on_outcome = on_outcome
        self._on_retry = safe_hook(on_retry, "on_retry")
        self._on_throttle = safe_hook(on_throttle, "on_throttle")
        self._latency = latency
        self._clock = clock
        self._sleep = sleep
        self._stopping = False
        self._abort: ProactiveError | None = None
        self._breaker = Breaker(clock)
        # Tasks waiting out a backoff or the rate limit -> whether an abort woke them.
        self._waiting: dict[asyncio.Task[Any], bool] = {}
        self._guard = guard
        self.telemetry = telemetry_of(client)
        """The client's spans and metrics: a span per chunk, targets counted by outcome."""

    @property
    def aborted(self) -> ProactiveError | None:
        """The error that aborted this sender (fatal, or its breaker's), if one did."""
        return self._abort

    @property
    def stopping(self) -> bool:
        return self._stopping

    def stop(self) -> None:
        """Make no new attempt; a chunk waiting for its first attempt is left unsent, and
        chunks waiting out a backoff or the rate limit stop waiting now (a Ctrl-C with
        nothing in flight does not wait for a pause, or for a Redis that is away)."""
        self._stopping = True
        self._wake_waiters()

    async def send(self, chunk: Chunk) -> None:
        """Send ``chunk`` until every target in it has its outcome (or is left unsent)."""
        if self._abort is not None:
            await self._settle_aborted(chunk.targets)
            return
        observed = self.telemetry.recording()
        sending = self._dispatch(chunk.targets, chunk.variables)
        await (sending if observed is None else observed.chunk(sending, len(chunk.targets)))

    # -- one chunk -------------------------------------------------------------------

    def _encode(self, targets: Sequence[PlannedTarget], variables: dict[str, Any] | None) -> bytes:
        recipients = [t.recipient for t in targets if t.recipient is not None]
        contacts = [t.contact_id for t in targets if t.contact_id is not None]
        fields: dict[str, Any] = {
            "recipient": recipients or UNSET,
            "contact_ids": contacts or UNSET,
        }
        if variables:
            fields["content_variables"] = merge_variables(
                self.template.content_variables, variables
            )
        return encode_request(build_request(self.template, fields))

    async def _dispatch(
        self, targets: Sequence[PlannedTarget], variables: dict[str, Any] | None
    ) -> None:
        body = self._encode(targets, variables)
        weight = float(len(targets))
        attempt = 0
        throttles = 0
        sent_once = False
        fenced = False
        first_try = 0.0
        backoff = 0.0
        while True:
            try:
                # The rate limit (and its shared pause) before every attempt; a backoff first.
                if backoff > 0:
                    await self._wait(self._sleep(backoff))
                if self.rate_limit is not None:
                    await self._wait(self.rate_limit.acquire(weight))
            except asyncio.CancelledError:
                # Cancelled past the grace period while waiting to retry: the records still
                # get their outcome, in the report and the journal.
                if attempt > 0:
                    await self._interrupt(targets, attempt, sent_once)
                raise
            except ProactiveError as exc:
                if not exc.fatal:
                    raise
                # The rate limit cannot pace at all (a shared limit's Redis answered with
                # an error): the run stops as for a 401.
                self._note_failure(exc, attempt, None)
                self._abort_with(exc)
                await self._settle_aborted(targets, attempt, sent_once)
                return
            if self._stopping:
                # A chunk waiting on the rate limit when stop() came is not sent. Before a
                # first attempt it was never marked in flight, so it stays unsent.
                if attempt > 0:
                    await self._interrupt(targets, attempt, sent_once)
                return
            if self._abort is not None:
                await self._settle_aborted(targets, attempt, sent_once)
                return
            if attempt == 0:
                first_try = self._clock()
                if self.journal is not None:
                    kept, fenced = await self._mark(targets)
                    if not kept:
                        return  # another owner's now, or the campaign was cancelled
                    if len(kept) < len(targets):
                        targets, body = kept, self._encode(kept, variables)
                        weight = float(len(kept))
            elif fenced and not await self._still_held(targets):
                # Before a retry, the fence again (read, not written): a campaign cancelled
                # (or a lease lost) since the first attempt makes no new call.
                await self._interrupt(targets, attempt, sent_once)
                return
            if self._guard is not None and not self._guard():
                # The fence is gone (a lease lost while frozen, cut off): send nothing more.
                self.stop()
                await self._interrupt(targets, attempt, sent_once)
                return
            attempt += 1
            self.summary.calls += 1
            if attempt > 1:
                self.summary.retries += 1
            try:
                started = time.perf_counter()
                response = await self.client.send_once(body, attempt=attempt)
            except asyncio.CancelledError:
                await self._settle(targets, OutcomeStatus.UNKNOWN, attempt, None, INTERRUPTED)
                raise
            except BadRequestError as exc:
                self._note_failure(exc, attempt, None)
                if sent_once:
                    # An earlier attempt may have been processed (a retried ambiguous
                    # failure): not "certainly not created", and no half is sent again.
                    await self._settle(targets, OutcomeStatus.UNKNOWN, attempt, exc)
                elif len(targets) > 1:
                    await self._bisect(targets, variables)
                else:
                    await self._settle(targets, OutcomeStatus.FAILED, attempt, exc)
                return
            except ProactiveError as exc:
                sent_once = sent_once or exc.may_have_been_processed
                if isinstance(exc, RateLimitError):
                    throttles += 1
                wait, shared = await self._on_failure(
                    exc, attempt - throttles, throttles, weight, self._clock() - first_try
                )
                self._note_failure(exc, attempt, wait)
                if wait is None and self._abort is not None and not sent_once:
                    # Certainly not processed, and the run stops: a resume sends them.
                    if exc.fatal:  # this chunk met a fatal answer itself: it says so
                        await self._settle(
                            targets, OutcomeStatus.FAILED, attempt, exc, durable=False
                        )
                    else:
                        await self._settle_aborted(targets, attempt)
                    return
                if wait is None:
                    status = OutcomeStatus.UNKNOWN if sent_once else OutcomeStatus.FAILED
                    await self._settle(targets, status, attempt, exc)
                    return
                if self._on_retry is not None:
                    elapsed = self._clock() - first_try
                    self._on_retry(
                        RetryDetails(error=exc, attempt=attempt, wait=wait, elapsed=elapsed)
                    )
                # A shared pause (a 429 or 503 told to the rate limit) is waited in acquire.
                backoff = 0.0 if shared else wait
                continue
            except Exception as exc:  # a bug must not lose records: they may have been sent
                _log.exception("unexpected error while sending a chunk")
                error = OutcomeError(kind=type(exc).__name__, message=str(exc))
                await self._settle(targets, OutcomeStatus.UNKNOWN, attempt, None, error)
                return
            if self._latency is not None:
                self._latency.add(time.perf_counter() - started)
            self._breaker.succeeded()
            self.summary.last_failure = None  # nothing is failing now, for the display
            if self.rate_limit is not None:
                await self.rate_limit.on_success(weight)
            await self._settle_response(targets, response.value, attempt)
            return

    async def _mark(self, targets: Sequence[PlannedTarget]) -> tuple[Sequence[PlannedTarget], bool]:
        """Mark the targets in flight: the ones the journal marked, and whether it is a
        fenced journal (one that may refuse some: they are not this sender's to send)."""
        assert self.journal is not None
        marked = await self.journal.mark_in_flight([t.line for t in targets])
        if marked is None:
            return targets, False
        if len(marked) == len(targets):
            return targets, True
        return [t for t in targets if t.line in marked], True

    async def _still_held(self, targets: Sequence[PlannedTarget]) -> bool:
        """Are the targets, marked before the first attempt, all still this sender's?"""
        assert self.journal is not None
        held = await self.journal.still_in_flight([t.line for t in targets])
        return held is None or len(held) >= len(targets)

    def _note_failure(self, exc: ProactiveError, attempt: int, wait: float | None) -> None:
        """Log a failed attempt and keep it in the summary, where a live display says why
        nothing is being sent (``wait``: seconds until the next attempt; None: no more)."""
        _log.info("attempt %d failed: %s: %s", attempt, exc.kind, exc.message)
        self.summary.note_failed_attempt(
            exc.kind, getattr(exc, "status", None), exc.message, at=time.monotonic(), wait=wait
        )

    async def _on_failure(
        self, exc: ProactiveError, attempt: int, throttles: int, weight: float, elapsed: float
    ) -> tuple[float | None, bool]:
        """Tell the rate limit; the wait before the next attempt (None: stop), and whether
        that wait is a pause every sender shares (then ``acquire`` waits it out).

        ``attempt`` counts the attempts that were not throttled: a 429 is the rate
        limit's business and does not use the policy's attempts (up to MAX_THROTTLES a
        chunk while other calls are accepted). Everything else is the policy's one
        decision (``RetryPolicy.next_wait``), once the breaker has said the run goes on.
        """
        policy = self.retry
        if exc.fatal:
            self._abort_with(exc)
            return None, False
        throttled = isinstance(exc, RateLimitError)
        if throttled:
            self.summary.throttled += 1
            if self._on_throttle is not None and isinstance(exc, RateLimitError):
                self._on_throttle(ThrottleDetails(error=exc, retry_after=exc.retry_after))
        tripped = self._breaker.failed(exc, policy)
        if tripped is not None:
            self._abort_with(tripped)
            return None, False
        shared = False
        limit = self.rate_limit
        if limit is not None:
            shared = await report_failure(limit, exc, weight, policy, max(1, attempt))
        if not throttled:
            return policy.next_wait(exc, max(1, attempt), elapsed), shared
        retry_after = getattr(exc, "retry_after", None)
        if retry_after is not None and retry_after > policy.max_retry_after:
            return None, False  # nobody waits that long: this chunk ends failed
        if throttles >= MAX_THROTTLES:
            if not self._breaker.accepted_within(elapsed):
                # None accepted either: 429s without end, however fast they came.
                self._abort_with(self._breaker.throttled_out(exc, throttles))
            return None, False  # others are accepted, this one never: it ends failed
        if retry_after is not None:
            return retry_after, shared
        if limit is not None:
            return unnamed_throttle_wait(weight, limit.rate), shared
        return policy.backoff(throttles), shared

    def _abort_with(self, exc: ProactiveError) -> None:
        if self._abort is not None:
            return
        self._abort = exc
        self.summary.aborted = f"{exc.kind}: {exc.message}"
        _log.error("campaign aborted: %s", self.summary.aborted)
        # Chunks waiting to retry, or for the rate limit (a pause may last minutes), are
        # settled now rather than when their wait ends.
        self._wake_waiters()

    def _wake_waiters(self) -> None:
        current = asyncio.current_task()
        for task, woken in self._waiting.items():
            if task is not current and not woken:
                self._waiting[task] = True
                task.cancel()

    async def _wait(self, waiting: Awaitable[None]) -> None:
        """Wait out a backoff or the rate limit, unless the sender is aborted or stopped
        (then return early: the caller finds ``aborted`` or ``stopping`` set)."""
        task = asyncio.current_task()
        if self._abort is not None or self._stopping or task is None:
            if self._abort is None and not self._stopping:
                await waiting
            elif asyncio.iscoroutine(waiting):
                waiting.close()
            return
        self._waiting[task] = False
        try:
            await waiting
        except asyncio.CancelledError:
            # Ours only when nobody else cancelled the task too (a Ctrl-C, a task group).
            if not self._waiting[task] or task.uncancel() > 0:
                raise
        finally:
            del self._waiting[task]

    async def _bisect(
        self, targets: Sequence[PlannedTarget], variables: dict[str, Any] | None
    ) -> None:
        """A 400 for several targets: send each half apart to isolate the bad ones."""
        middle = len(targets) // 2
        await self._dispatch(targets[:middle], variables)
        await self._dispatch(targets[middle:], variables)

    # -- outcomes ----------------------------------------------------------------------

    async def _interrupt(
        self, targets: Sequence[PlannedTarget], attempts: int, sent_once: bool
    ) -> None:
        """Stopped between attempts: unknown if one may have been processed, else unsent."""
        if sent_once:
            await self._settle(targets, OutcomeStatus.UNKNOWN, attempts, None, INTERRUPTED)
            return
        # Only certainly-unprocessed attempts: no outcome, so that a resume sends them.
        if self.journal is not None:
            await self.journal.release([t.line for t in targets])
        self.summary.pending += len(targets)

    async def _settle_aborted(
        self, targets: Sequence[PlannedTarget], attempts: int = 0, sent_once: bool = False
    ) -> None:
        """The run was aborted before this chunk's (next) attempt."""
        if sent_once:
            await self._settle(targets, OutcomeStatus.UNKNOWN, attempts, None, INTERRUPTED)
            return
        abort = self._abort
        assert abort is not None
        why = (
            f"{abort.kind} ({abort.cause.kind})"
            if isinstance(abort, CircuitOpenError)
            else abort.kind
        )
        error = OutcomeError(
            kind=ABORTED,
            message=f"not sent: the campaign stopped after {why}; a resume with the same "
            "journal sends it",
        )
        await self._settle(targets, OutcomeStatus.FAILED, attempts, None, error, durable=False)

    async def _settle_response(
        self, targets: Sequence[PlannedTarget], conversations: list[Conversation], attempts: int
    ) -> None:
        """``sent`` where the answer proves it; else ``unknown`` with the reason, carrying the
        conversations that proved nobody's (``match_answer``)."""
        match = match_answer(targets, conversations)
        outcomes: list[Outcome] = []
        errors: dict[str, OutcomeError] = {}  # one per reason: a chunk shares a few at most
        for target in targets:
            ids = match.sent.get(target.line)
            if ids:
                sent = make_outcome(
                    target, OutcomeStatus.SENT, attempts=attempts, conversation_ids=ids
                )
                outcomes.append(sent)
                continue
            reason = match.reasons.get(target.line, "the answer did not prove this target sent")
            error = errors.get(reason)
            if error is None:
                error = errors[reason] = OutcomeError(kind=_UNMATCHED, message=reason)
            outcomes.append(
                make_outcome(
                    target,
                    OutcomeStatus.UNKNOWN,
                    attempts=attempts,
                    conversation_ids=match.unclaimed,
                    error=error,
                )
            )
        if match.unclaimed and not errors:
            _log.warning(
                "an answer held %d conversation(s) beyond its call's targets: ids %s",
                len(match.unclaimed),
                match.unclaimed,
            )
        await self._emit(outcomes)

    async def _settle(
        self,
        targets: Sequence[PlannedTarget],
        status: OutcomeStatus,
        attempts: int,
        exc: ProactiveError | None,
        error: OutcomeError | None = None,
        *,
        durable: bool = True,
    ) -> None:
        """One outcome per target; ``durable=False``: left unfinished in the journal."""
        if error is None and exc is not None:
            error = OutcomeError(
                kind=exc.kind,
                message=exc.message,
                status=getattr(exc, "status", None),
                trace_id=exc.trace_id,
            )
        if not durable and self.journal is not None:
            await self.journal.release([t.line for t in targets])
        outcomes = [make_outcome(t, status, attempts=attempts, error=error) for t in targets]
        await self._emit(outcomes, durable=durable)

    async def _emit(self, outcomes: list[Outcome], *, durable: bool = True) -> None:
        if self.journal is not None and durable:
            await self.journal.record(outcomes)
        self.telemetry.settled(outcomes)
        if self._on_outcome is not None:
            for outcome in outcomes:
                await self._on_outcome(outcome)


def merge_variables(defaults: dict[str, Any] | Any, own: dict[str, Any]) -> dict[str, Any]:
    """A record's content variables over the template's: the record's win, except an empty
    value (a blank CSV cell), which falls back to the template's value for that name."""
    if not isinstance(defaults, dict) or not defaults:
        return own
    merged = dict(defaults)
    for name, value in own.items():
        if value != "" or name not in defaults:
            merged[name] = value
    return merged


def make_outcome(
    target: PlannedTarget,
    status: OutcomeStatus,
    *,
    attempts: int = 0,
    conversation_ids: list[int] | None = None,
    error: OutcomeError | None = None,
) -> Outcome:
    """The outcome of one planned target."""
    return Outcome(
        line=target.line,
        status=status,
        recipient=target.recipient,
        contact_id=target.contact_id,
        conversation_ids=list(conversation_ids) if conversation_ids else [],
        attempts=attempts,
        error=error,
    )
