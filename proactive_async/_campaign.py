"""Running a campaign: planned chunks dispatched under limits, one outcome per record.

The order of things for one chunk is what keeps the no-duplicate promise:
wait for the shared cooldown and the rate limiter, *then* mark the chunk's lines in flight
in the journal (durably), *then* send. A record can only be resent by a later run when
its journal row says it was never in flight, or when the caller asks for unknowns to be
resent.

A fatal answer (401, 403, a TLS failure: ``ProactiveError.fatal``) aborts the campaign at
once, and so do 429s with no call accepted for ``RetryPolicy.max_retry_after`` seconds: no
new call is made, every record not yet sent ends ``failed`` (kind ``aborted``) in the report
but stays unfinished in the journal, so that a later run sends it. ``run()`` then raises the
fatal error.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import re
import time
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Sequence
from typing import Any, Final

import msgspec
from msgspec import UNSET

from ._client import AsyncClient
from ._errors import BadRequestError, ProactiveError, RateLimitError, ServiceUnavailableError
from ._input import aiter_records, fingerprint_file, read_records
from ._journal import INTERRUPTED as _INTERRUPTED
from ._journal import CampaignIdentity, Journal
from ._limits import AdaptiveRate, Cooldown, RateLimiter
from ._models import Conversation, ProactiveConversationRequest, build_request, encode_request
from ._planner import Chunk, PlannedTarget, Planner, PlannerConfig
from ._records import Outcome, OutcomeError, OutcomeStatus, Record
from ._report import CampaignSummary, LatencySample, ReportWriter
from ._retry import RetryPolicy, Sleep

__all__ = ["Campaign"]

_log = logging.getLogger("proactive_async")
_DONE: Final = object()


class Campaign:
    """One request template sent to a stream of targets, with one outcome per input record.

    Usage::

        async with AsyncClient(base_url=URL, token=TOKEN) as client:
            campaign = Campaign(
                client,
                template=ProactiveConversationRequest(channel_id=1, bot_id=2,
                                                      conversation_template_id=3),
                targets="recipients.csv", default_region="BR",
                journal="campaign.db", report="report.jsonl",
            )
            async for outcome in campaign:     # or: summary = await campaign.run()
                ...

    Parameters:
        template: every request field but the targets (``recipient``/``contact_ids``
            must be unset); its ``content_variables`` are merged under each record's own.
        targets: a CSV/JSONL path, or any iterable / async iterable of phone strings,
            contact ids (int), ``Target``s, mappings or ``Record``s.
        chunk_size: targets per call, at most. concurrency: calls in flight, at most.
        rate: targets per second (a token bucket of ``burst`` targets); calls_per_second:
            an optional second bucket counting calls.
        adaptive: find the rate the server accepts (AIMD on 429); on by default when no
            ``rate`` is given, and bounded by ``rate`` when both are.
        retry: the campaign's RetryPolicy; default: safe failures only, 8 attempts.
            ``RetryPolicy(retry_ambiguous=True)`` resends ambiguous failures (duplicates
            possible).
        default_region, dedupe, allow_repeats_with_different_variables: planning.
        allow_vanity_numbers: read letters in a number as keypad digits (``1-800-FLOWERS``);
            off by default, so such numbers end ``rejected``.
        multiline_values: accept a CSV quoted value spanning several lines; off by
            default, so such a record ends ``rejected`` (a stray quote must not merge
            other people's rows into one message).
        journal: a SQLite path that makes the campaign resumable after a crash.
        resend_unknown: on resume, resend records that ended ``unknown`` or were in
            flight at the crash (duplicates possible).
        report: a JSONL path, one line per input record.
        grace_period: seconds in-flight calls get to finish once the campaign is stopped.
        clock, sleep: monotonic seconds and an awaitable sleep for every wait of the
            campaign (limiters, cooldown, backoff); injectable so tests need no real waits.
    """

    def __init__(
        self,
        client: AsyncClient,
        *,
        template: ProactiveConversationRequest,
        targets: str | os.PathLike[str] | Iterable[object] | AsyncIterable[object],
        chunk_size: int = 50,
        concurrency: int = 16,
        rate: float | None = None,
        calls_per_second: float | None = None,
        burst: float | None = None,
        adaptive: bool | None = None,
        retry: RetryPolicy | None = None,
        default_region: str | None = None,
        dedupe: bool = True,
        allow_repeats_with_different_variables: bool = False,
        allow_vanity_numbers: bool = False,
        multiline_values: bool = False,
        journal: str | os.PathLike[str] | None = None,
        report: str | os.PathLike[str] | None = None,
        resend_unknown: bool = False,
        grace_period: float = 30.0,
        flush_after: float = 0.05,
        clock: Callable[[], float] = time.monotonic,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        if template.recipient is not UNSET or template.contact_ids is not UNSET:
            raise ValueError("the template must not set recipient or contact_ids: give targets")
        if chunk_size < 1 or concurrency < 1:
            raise ValueError("chunk_size and concurrency must be at least 1")
        self.client = client
        self.template = template
        self.targets = targets
        self.concurrency = concurrency
        self.retry = retry if retry is not None else RetryPolicy(max_attempts=8, deadline=None)
        self.journal_path = journal
        self.report_path = report
        self.resend_unknown = resend_unknown
        self.grace_period = grace_period
        self.planner_config = PlannerConfig(
            default_region=default_region,
            chunk_size=chunk_size,
            dedupe=dedupe,
            allow_repeats_with_different_variables=allow_repeats_with_different_variables,
            allow_vanity_numbers=allow_vanity_numbers,
            flush_after=flush_after,
        )
        self.multiline_values = multiline_values
        self.summary = CampaignSummary()
        self.total: int | None = _count_records(targets)
        self._clock = clock
        self._sleep = sleep
        timing: dict[str, Any] = {"clock": clock, "sleep": sleep}
        self._limiter = RateLimiter(rate, burst, **timing) if rate else None
        self._call_limiter = RateLimiter(calls_per_second, **timing) if calls_per_second else None
        self._adaptive: AdaptiveRate | None = None
        if adaptive if adaptive is not None else rate is None:
            if self._limiter is None:
                self._limiter = RateLimiter(_ADAPTIVE_START, burst, **timing)
            self._adaptive = AdaptiveRate(self._limiter, ceiling=rate, clock=clock)
        self._cooldown = Cooldown(**timing)
        self._latency = LatencySample()
        self._journal: Journal | None = None
        self._resuming = False
        self._report: ReportWriter | None = None
        self._sink: asyncio.Queue[object] | None = None
        self._stopping = False
        self._feeder: asyncio.Task[None] | None = None
        self._started: float | None = None
        self._abort: ProactiveError | None = None
        self._throttled_since: float | None = None
        _check_report_path(report, targets, journal)

    # -- public control ------------------------------------------------------------

    async def run(self) -> CampaignSummary:
        """Run to the end (or until cancelled) and return the summary."""
        await self._run()
        return self.summary

    def __aiter__(self) -> AsyncIterator[Outcome]:
        return self._iterate()

    def stop(self) -> None:
        """Stop dispatching new calls; calls in flight finish and are recorded."""
        self._stopping = True
        if self._feeder is not None and not self._feeder.done():
            self._feeder.cancel()  # wakes it wherever it waits; it then releases the workers

    def flush_report(self) -> None:
        """Write the report lines buffered so far (for an exit that cannot wait)."""
        if self._report is not None:
            self._report.flush()

    @property
    def aborted(self) -> ProactiveError | None:
        """The error that aborted the campaign (fatal, or 429s without end), if one did."""
        return self._abort

    @property
    def rate(self) -> float | None:
        """The current targets-per-second limit (it moves in adaptive mode)."""
        return self._limiter.rate if self._limiter is not None else None

    async def _iterate(self) -> AsyncIterator[Outcome]:
        sink: asyncio.Queue[object] = asyncio.Queue(maxsize=4096)
        self._sink = sink
        runner = asyncio.create_task(self._run())
        runner.add_done_callback(lambda _: sink.put_nowait(_DONE) if not sink.full() else None)
        try:
            while True:
                if runner.done() and sink.empty():
                    break
                item = await sink.get()
                if item is _DONE:
                    if runner.done() and sink.empty():
                        break
                    continue
                assert isinstance(item, Outcome)
                yield item
            await runner
        finally:
            if not runner.done():
                # The consumer is gone: stop forwarding, and free dispatchers blocked on a
                # full queue so that the wind-down is not held up by nobody reading.
                self._sink = None
                while not sink.empty():
                    sink.get_nowait()
                runner.cancel()
                await asyncio.gather(runner, return_exceptions=True)

    # -- the run -------------------------------------------------------------------

    async def _run(self) -> None:
        self._started = self._clock()
        try:
            await self._open()
            queue: asyncio.Queue[Chunk | None] = asyncio.Queue(maxsize=self.concurrency)
            feeder = self._feeder = asyncio.create_task(self._feed(queue))
            workers = [asyncio.create_task(self._work(queue)) for _ in range(self.concurrency)]
            try:
                await _first_failure([feeder, *workers])
            except asyncio.CancelledError:
                self.summary.interrupted = True
                await self._wind_down(feeder, workers)
                raise
            except BaseException:
                for task in (feeder, *workers):
                    task.cancel()
                await asyncio.gather(feeder, *workers, return_exceptions=True)
                raise
            if self._stopping:
                self.summary.interrupted = True
        finally:
            await asyncio.shield(self._close())
        if self._abort is not None and self._abort.fatal:
            raise self._abort

    async def _open(self) -> None:
        if self._limiter is not None and self._adaptive is None:
            # Start with an empty bucket: a campaign has no idle time to make up for, and a
            # full one would let rate + burst through in the first second.
            self._limiter.drain()
        # The journal first: a refused resume must leave the earlier report untouched.
        if self.journal_path is not None:
            # Hashing a large input file takes a while: not on the event loop.
            identity = await asyncio.to_thread(self.identity)
            self._journal = await Journal.open(
                self.journal_path, identity, secrets=self.client.secrets
            )
            self._resuming = self._journal.resumed
        if self.report_path is not None:
            self._report = ReportWriter(self.report_path)

    def identity(self) -> CampaignIdentity:
        """What a journal checks on resume: template, input fingerprint, planning options."""
        config = self.planner_config
        options: dict[str, object] = {
            "default_region": config.default_region,
            "dedupe": config.dedupe,
            "allow_repeats_with_different_variables": config.allow_repeats_with_different_variables,
        }
        # Named only when on, so journals written before these options existed still resume.
        if config.allow_vanity_numbers:
            options["allow_vanity_numbers"] = True
        if self.multiline_values:
            options["multiline_values"] = True
        return CampaignIdentity.build(
            msgspec.to_builtins(self.template),
            input_fingerprint=_fingerprint(self.targets),
            options=options,
        )

    async def _close(self) -> None:
        summary = self.summary
        if self._started is not None:
            summary.elapsed = self._clock() - self._started
        summary.latency_p50 = self._latency.percentile(50)
        summary.latency_p95 = self._latency.percentile(95)
        summary.latency_p99 = self._latency.percentile(99)
        if self._report is not None:
            self._report.close()
        if self._journal is not None:
            await self._journal.aclose()

    async def _wind_down(
        self, feeder: asyncio.Task[None], workers: list[asyncio.Task[None]]
    ) -> None:
        """Stop reading, let calls in flight finish within the grace period, record them."""
        self.stop()
        await asyncio.gather(feeder, return_exceptions=True)
        try:
            _, pending = await asyncio.wait(workers, timeout=self.grace_period)
        except asyncio.CancelledError:
            pending = {w for w in workers if not w.done()}
        for worker in pending:
            worker.cancel()
        await asyncio.gather(*workers, return_exceptions=True)

    # -- reading and planning ----------------------------------------------------------

    async def _feed(self, queue: asyncio.Queue[Chunk | None]) -> None:
        try:
            await self._plan_into(queue)
        except asyncio.CancelledError:
            if not self._stopping:
                raise
            # stop(): chunks not yet taken were never sent; the journal still has them pending.
            while not queue.empty():
                queue.get_nowait()
        for _ in range(self.concurrency):
            await queue.put(None)

    async def _plan_into(self, queue: asyncio.Queue[Chunk | None]) -> None:
        planner = Planner(self.planner_config)
        async with contextlib.aclosing(planner.plan(self._records())) as plan:
            async for item in plan:
                if self._stopping:
                    break
                if isinstance(item, Outcome):
                    await self._settle_planned(item)
                    continue
                targets = await self._unfinished(item.targets) if self._resuming else item.targets
                if targets and self._abort is not None:
                    await self._settle_aborted(targets)
                elif targets:
                    await queue.put(Chunk(variables=item.variables, targets=list(targets)))

    def _records(self) -> AsyncIterator[Record]:
        source = self.targets
        if isinstance(source, str | os.PathLike):
            return _file_records(source, multiline=self.multiline_values)
        return aiter_records(source)

    async def _settle_planned(self, outcome: Outcome) -> None:
        """A rejected or duplicate record: reported as planned (or as the journal has it)."""
        if self._resuming and self._journal is not None:
            entry = (await self._journal.lookup([outcome.line])).get(outcome.line)
            if entry is not None and entry.outcome is not None:
                await self._emit(entry.outcome, resumed=True)
                return
        await self._emit(outcome)

    async def _unfinished(self, targets: Sequence[PlannedTarget]) -> list[PlannedTarget]:
        """Drop targets an earlier run finished (reporting its outcome again)."""
        assert self._journal is not None
        known = await self._journal.lookup([t.line for t in targets])
        if not known:
            return list(targets)
        keep: list[PlannedTarget] = []
        for target in targets:
            entry = known.get(target.line)
            if entry is None:
                keep.append(target)
            elif entry.outcome is None or entry.outcome.status is OutcomeStatus.UNKNOWN:
                if self.resend_unknown:
                    keep.append(target)
                elif entry.outcome is None:
                    await self._emit(_outcome(target, OutcomeStatus.UNKNOWN, error=_INTERRUPTED))
                else:
                    await self._emit(entry.outcome, resumed=True)
            else:
                await self._emit(entry.outcome, resumed=True)
        return keep

    # -- dispatch ------------------------------------------------------------------

    async def _work(self, queue: asyncio.Queue[Chunk | None]) -> None:
        while True:
            chunk = await queue.get()
            if chunk is None or self._stopping:
                return
            if self._abort is not None:
                await self._settle_aborted(chunk.targets)
                continue
            await self._dispatch(chunk.targets, chunk.variables)

    def _encode(self, targets: Sequence[PlannedTarget], variables: dict[str, Any] | None) -> bytes:
        recipients = [t.recipient for t in targets if t.recipient is not None]
        contacts = [t.contact_id for t in targets if t.contact_id is not None]
        fields: dict[str, Any] = {
            "recipient": recipients or UNSET,
            "contact_ids": contacts or UNSET,
        }
        if variables:
            base = self.template.content_variables
            fields["content_variables"] = {**base, **variables} if base else variables
        return encode_request(build_request(self.template, fields))

    async def _dispatch(
        self, targets: Sequence[PlannedTarget], variables: dict[str, Any] | None
    ) -> None:
        """Send one chunk until it ends; every target in it gets its outcome here."""
        body = self._encode(targets, variables)
        weight = float(len(targets))
        attempt = 0
        throttles = 0
        sent_once = False
        first_try = 0.0
        backoff = 0.0
        while True:
            try:
                await self._pace(weight, backoff)
            except asyncio.CancelledError:
                # Cancelled past the grace period while waiting to retry: the records still
                # get their outcome, in the report and the journal.
                if attempt > 0:
                    await self._interrupt(targets, attempt, sent_once)
                raise
            if self._stopping:
                # A chunk waiting on the limiter or cooldown when stop() came is not sent.
                # Before a first attempt it was never marked in flight, so, like the chunks
                # still queued, it stays unsent for a resume.
                if attempt > 0:
                    await self._interrupt(targets, attempt, sent_once)
                return
            if self._abort is not None:
                await self._settle_aborted(targets, attempt, sent_once)
                return
            if attempt == 0:
                first_try = self._clock()
                if self._journal is not None:
                    await self._journal.mark_in_flight([t.line for t in targets])
            attempt += 1
            self.summary.calls += 1
            if attempt > 1:
                self.summary.retries += 1
            try:
                started = time.perf_counter()
                response = await self.client.send_once(body, attempt=attempt)
            except asyncio.CancelledError:
                await self._settle(targets, OutcomeStatus.UNKNOWN, attempt, None, _INTERRUPTED)
                raise
            except BadRequestError as exc:
                if len(targets) > 1:
                    await self._bisect(targets, variables)
                else:
                    await self._settle(targets, OutcomeStatus.FAILED, attempt, exc)
                return
            except ProactiveError as exc:
                sent_once = sent_once or exc.may_have_been_processed
                if isinstance(exc, RateLimitError):
                    throttles += 1
                wait = self._on_failure(
                    exc, attempt - throttles, throttles, weight, self._clock() - first_try
                )
                if wait is None and self._abort is not None and not sent_once:
                    # Certainly not processed, and the campaign stops: a resume sends them.
                    await self._settle(targets, OutcomeStatus.FAILED, attempt, exc, durable=False)
                    return
                if wait is None:
                    status = OutcomeStatus.UNKNOWN if sent_once else OutcomeStatus.FAILED
                    await self._settle(targets, status, attempt, exc)
                    return
                # A 429/503 paused every dispatcher (the cooldown) instead.
                limited = isinstance(exc, RateLimitError | ServiceUnavailableError)
                backoff = 0.0 if limited else wait
                continue
            except Exception as exc:  # a bug must not lose records: they may have been sent
                _log.exception("unexpected error while sending a chunk")
                error = OutcomeError(kind=type(exc).__name__, message=str(exc))
                await self._settle(targets, OutcomeStatus.UNKNOWN, attempt, None, error)
                return
            self._latency.add(time.perf_counter() - started)
            self._throttled_since = None
            if self._adaptive is not None:
                self._adaptive.on_success(weight)
            await self._settle_response(targets, response.value, attempt)
            return

    async def _pace(self, weight: float, backoff: float) -> None:
        """Wait out a backoff, the shared cooldown and the limiters before an attempt."""
        if backoff > 0:
            await self._sleep(backoff)
        await self._cooldown.wait()
        if self._limiter is not None:
            await self._limiter.acquire(weight)
        if self._call_limiter is not None:
            await self._call_limiter.acquire(1.0)

    async def _interrupt(
        self, targets: Sequence[PlannedTarget], attempts: int, sent_once: bool
    ) -> None:
        """Stopped between attempts: unknown if one may have been processed, else pending."""
        if sent_once:
            await self._settle(targets, OutcomeStatus.UNKNOWN, attempts, None, _INTERRUPTED)
            return
        # Only certainly-unprocessed attempts: no outcome, so that a resume sends them.
        if self._journal is not None:
            await self._journal.release([t.line for t in targets])
        self.summary.pending += len(targets)

    async def _settle_aborted(
        self, targets: Sequence[PlannedTarget], attempts: int = 0, sent_once: bool = False
    ) -> None:
        """The campaign was aborted before this chunk's (next) attempt."""
        if sent_once:
            await self._settle(targets, OutcomeStatus.UNKNOWN, attempts, None, _INTERRUPTED)
            return
        assert self._abort is not None
        error = OutcomeError(
            kind=ABORTED,
            message=f"not sent: the campaign stopped after {self._abort.kind}; a resume with "
            "the same journal sends it",
        )
        await self._settle(targets, OutcomeStatus.FAILED, attempts, None, error, durable=False)

    def _on_failure(
        self, exc: ProactiveError, attempt: int, throttles: int, weight: float, elapsed: float
    ) -> float | None:
        """Feed the limiters; the wait before the next attempt, or None to stop.

        ``attempt`` counts the attempts that were not throttled: a 429 is the limiter's
        business and does not use the policy's attempts (up to MAX_THROTTLES a chunk).
        Everything else is the policy's one decision (``RetryPolicy.next_wait``).
        """
        policy = self.retry
        if exc.fatal:
            self._abort_with(exc)
            return None
        if isinstance(exc, RateLimitError):
            self.summary.throttled += 1
            if self._throttled_too_long(exc):
                return None
            if exc.retry_after is not None and exc.retry_after > policy.max_retry_after:
                return None  # nobody waits that long: this chunk ends failed, its wait in the error
            wait = exc.retry_after
            if wait is None:
                wait = self._unnamed_throttle_wait(weight)
            if self._adaptive is not None:
                self._adaptive.on_throttle(wait)
            self._cooldown.pause(wait)
            return wait if throttles < MAX_THROTTLES else None
        next_wait = policy.next_wait(exc, max(1, attempt), elapsed)
        if isinstance(exc, ServiceUnavailableError) and (
            exc.retry_after is None or exc.retry_after <= policy.max_retry_after
        ):
            # The server is busy for everyone: every dispatcher waits, not only this one.
            self._cooldown.pause(policy.wait_for(exc, max(1, attempt)))
            return 0.0 if next_wait is not None else None
        return next_wait

    def _abort_with(self, exc: ProactiveError) -> None:
        if self._abort is None:
            self._abort = exc
            self.summary.aborted = f"{exc.kind}: {exc.message}"
            _log.error("campaign aborted: %s", self.summary.aborted)

    def _throttled_too_long(self, exc: RateLimitError) -> bool:
        """429s and no accepted call for ``max_retry_after`` seconds: abort the campaign."""
        now = self._clock()
        if self._throttled_since is None:
            self._throttled_since = now
            return False
        if now - self._throttled_since < self.retry.max_retry_after:
            return False
        self._abort_with(exc)
        return True

    def _unnamed_throttle_wait(self, weight: float) -> float:
        """The shared pause for a 429 that names no wait (nginx ``limit_req`` sends none).

        Such a server refuses what passes its rate *now*; the time for a couple of chunks'
        worth of tokens at the (lowered) rate is enough, where a backoff of seconds would
        idle every dispatcher and waste the server's capacity.
        """
        rate = self._limiter.rate if self._limiter is not None else 0.0
        if rate <= 0 or math.isinf(rate):
            return _THROTTLE_WAIT_MAX
        return min(_THROTTLE_WAIT_MAX, max(_THROTTLE_WAIT_MIN, 2 * weight / rate))

    async def _bisect(
        self, targets: Sequence[PlannedTarget], variables: dict[str, Any] | None
    ) -> None:
        """A 400 for several targets: send each half apart to isolate the bad ones."""
        middle = len(targets) // 2
        await self._dispatch(targets[:middle], variables)
        await self._dispatch(targets[middle:], variables)

    # -- outcomes ------------------------------------------------------------------

    async def _settle_response(
        self, targets: Sequence[PlannedTarget], conversations: list[Conversation], attempts: int
    ) -> None:
        matched = match_conversations(targets, conversations)
        for target in targets:
            ids = matched.get(target.line)
            if ids:
                self.summary.targets_sent += 1
                await self._emit(
                    _outcome(target, OutcomeStatus.SENT, attempts=attempts, conversation_ids=ids)
                )
            else:
                error = OutcomeError(
                    kind="unmatched",
                    message="the call succeeded but no conversation in the answer is this target's",
                )
                await self._emit(
                    _outcome(target, OutcomeStatus.UNKNOWN, attempts=attempts, error=error)
                )

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
        """Emit one outcome per target; ``durable=False``: unfinished in the journal."""
        if error is None and exc is not None:
            error = OutcomeError(
                kind=exc.kind,
                message=exc.message,
                status=getattr(exc, "status", None),
            )
        if not durable and self._journal is not None:
            await self._journal.release([t.line for t in targets])
        for target in targets:
            outcome = _outcome(target, status, attempts=attempts, error=error)
            await self._emit(outcome, durable=durable)

    async def _emit(self, outcome: Outcome, *, resumed: bool = False, durable: bool = True) -> None:
        summary = self.summary
        summary.counts[outcome.status] += 1
        summary.records += 1
        if resumed:
            summary.resumed += 1
        if self._report is not None:
            self._report.write(outcome)
        if self._journal is not None and durable and not resumed:
            await self._journal.record([outcome])
        if self._sink is not None:
            await self._sink.put(outcome)


_ADAPTIVE_START: Final = 1_000_000.0
"""Targets/s an adaptive campaign with no rate starts at: no limit until the first 429."""
ABORTED: Final = "aborted"
"""``OutcomeError.kind`` of a record not sent because the campaign was aborted."""
MAX_THROTTLES: Final = 100
_THROTTLE_WAIT_MIN: Final = 0.01
_THROTTLE_WAIT_MAX: Final = 0.25
"""429s one chunk may meet before it ends ``failed`` (each waits out the shared cooldown)."""


def _outcome(
    target: PlannedTarget,
    status: OutcomeStatus,
    *,
    attempts: int = 0,
    conversation_ids: list[int] | None = None,
    error: OutcomeError | None = None,
) -> Outcome:
    return Outcome(
        line=target.line,
        status=status,
        recipient=target.recipient,
        contact_id=target.contact_id,
        conversation_ids=conversation_ids or [],
        attempts=attempts,
        error=error,
    )


def match_conversations(
    targets: Sequence[PlannedTarget], conversations: list[Conversation]
) -> dict[int, list[int]]:
    """Conversation ids per target line.

    A recipient is ``sent`` only by a conversation that names its number (``messages[].to``,
    in any format: the same digits, or a national form that fits exactly one recipient of
    the chunk). Contacts, whose number the answer does not show, take the conversations
    left over, in order. Whatever is left (a conversation for another number, or none at
    all) matches nobody: those targets end ``unknown``, never ``sent``.
    """
    by_digits: dict[str, list[PlannedTarget]] = {}
    for target in targets:
        if target.recipient is not None:
            by_digits.setdefault(_digits(target.recipient), []).append(target)
    ids: dict[int, list[int]] = {}
    leftovers: list[Conversation] = []
    for conversation in conversations:
        owner = _first_unmatched(by_digits, conversation, ids)
        if owner is None:
            leftovers.append(conversation)
        else:
            ids[owner.line] = [conversation.id]
    if leftovers and by_digits:
        leftovers = _match_national_forms(by_digits, leftovers, ids)
    if leftovers:
        contacts = [t for t in targets if t.contact_id is not None and t.line not in ids]
        for target, conversation in zip(contacts, leftovers, strict=False):
            ids[target.line] = [conversation.id]
    return ids


def _first_unmatched(
    by_digits: dict[str, list[PlannedTarget]], conversation: Conversation, ids: dict[int, list[int]]
) -> PlannedTarget | None:
    for to in conversation.recipients:
        for target in by_digits.get(_digits(to), ()):
            if target.line not in ids:
                return target
    return None


def _match_national_forms(
    by_digits: dict[str, list[PlannedTarget]],
    conversations: list[Conversation],
    ids: dict[int, list[int]],
) -> list[Conversation]:
    """Match ``to``s written without (or with another form of) the country code; the rest."""
    left: list[Conversation] = []
    for conversation in conversations:
        owner = None
        for to in conversation.recipients:
            owner = _sole_suffix_match(by_digits, _digits(to), ids)
            if owner is not None:
                break
        if owner is None:
            left.append(conversation)
        else:
            ids[owner.line] = [conversation.id]
    return left


def _sole_suffix_match(
    by_digits: dict[str, list[PlannedTarget]], to: str, ids: dict[int, list[int]]
) -> PlannedTarget | None:
    """The one waiting recipient whose number ends with ``to`` (or the reverse), if exactly one."""
    to = to.lstrip("0")  # a trunk or international prefix: 0xx, 00xx
    if len(to) < _MIN_NATIONAL_DIGITS:
        return None
    found: list[PlannedTarget] = []
    for digits, waiting in by_digits.items():
        if digits.endswith(to) or to.endswith(digits):
            found.extend(t for t in waiting if t.line not in ids)
    return found[0] if len(found) == 1 else None


_MIN_NATIONAL_DIGITS: Final = 8
_NON_DIGITS: Final = re.compile(r"\D+")


def _digits(text: str) -> str:
    if text[:1] == "+" and text[1:].isdigit():  # E.164, the common case
        return text[1:]
    return text if text.isdigit() else _NON_DIGITS.sub("", text)


async def _first_failure(tasks: list[asyncio.Task[None]]) -> None:
    """Wait for every task; raise the first error as soon as one fails."""
    done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
    for task in done:
        if not task.cancelled() and task.exception() is not None:
            raise task.exception()  # type: ignore[misc]
    if pending:  # pragma: no cover - FIRST_EXCEPTION returns early only on an error
        await asyncio.gather(*pending)


async def _file_records(path: str | os.PathLike[str], *, multiline: bool) -> AsyncIterator[Record]:
    for index, record in enumerate(read_records(path, multiline=multiline)):
        yield record
        if index & 255 == 255:
            await asyncio.sleep(0)  # reading is synchronous: let the dispatchers run


def _check_report_path(
    report: str | os.PathLike[str] | None,
    targets: object,
    journal: str | os.PathLike[str] | None,
) -> None:
    """Refuse, before anything is opened, a report that would overwrite the input or journal."""
    if report is None:
        return
    guarded: list[tuple[str, str]] = []
    if isinstance(targets, str | os.PathLike):
        guarded.append(("the targets file", os.fspath(targets)))
    if journal is not None:
        base = os.fspath(journal)
        guarded += [("the journal", base)]
        guarded += [("a journal side file", base + side) for side in _JOURNAL_SIDE_FILES]
    for what, path in guarded:
        if _same_file(os.fspath(report), path):
            raise ValueError(f"the report path {os.fspath(report)!r} is {what} ({path!r})")


_JOURNAL_SIDE_FILES: Final = ("-wal", "-shm", "-journal")


def _same_file(a: str, b: str) -> bool:
    """The same file, through symbolic links and hard links (either may not exist yet)."""
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _fingerprint(source: object) -> str:
    if isinstance(source, str | os.PathLike):
        return fingerprint_file(source)
    return ""


def _count_records(source: object) -> int | None:
    """Records in a targets file (lines, header and blank lines aside), for progress; else None."""
    if not isinstance(source, str | os.PathLike):
        return len(source) if isinstance(source, list | tuple) else None
    try:
        with open(source, "rb") as handle:
            lines = 0
            last = b"\n"
            while block := handle.read(1 << 20):
                lines += block.count(b"\n")
                last = block[-1:]
    except OSError:
        return None
    if last != b"\n":
        lines += 1
    is_csv = not os.fspath(source).lower().endswith((".jsonl", ".ndjson"))
    return max(0, lines - 1) if is_csv else lines
