"""Running a campaign in one process: read, plan, send chunk by chunk, one outcome per record.

The campaign owns the reading, the planning, the report and the journal's replay; the
life of one chunk is the ``ChunkSender``'s (``_sender.py``), which a task-queue job drives
the same way for one stored chunk.

Concurrency is structured (anyio task groups and cancel scopes, on asyncio since aiohttp
ties us to it): one task group holds the feeder (reading and planning into a bounded
memory stream) and ``concurrency`` workers (each taking a chunk and sending it). A
failing task cancels the others and its error is raised. ``stop()`` cancels the feeder's
scope: chunks not yet taken stay unsent for a resume, chunks in flight finish. A
cancellation from outside (Ctrl-C, a worker shutting down) does the same, then gives the
calls in flight ``grace_period`` seconds (a shielded scope with ``move_on_after``) before
they are cancelled and recorded ``unknown``. Blocking work (hashing the input file) runs
in ``anyio.to_thread``. Iteration (``async for outcome in campaign``) runs the campaign as
one task it owns, since an async generator must not hold a task group across its yields.

A fatal answer (401, 403, a TLS failure, a host name that does not resolve) or the
sender's breaker (``CircuitOpenError``: nothing reachable, calls that may have been
processed failing with no success, 429s without end) abort the campaign: no new call is
made, every record not yet sent ends ``failed`` (kind ``aborted``) in the report but stays
unfinished in the journal, so that a later run sends it. ``run()`` then raises the error.
A resume with ``resend_failed`` also sends the records that ended ``failed`` for a cause
that may have passed (``is_resendable``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import time
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, Final

import msgspec
from msgspec import UNSET

from ._client import AsyncClient
from ._errors import ProactiveError
from ._hooks import OutcomeHook, RetryHook, ThrottleHook, safe_hook
from ._input import (
    aiter_records,
    count_records,
    fingerprint_file,
    read_records,
)
from ._models import ProactiveConversationRequest
from ._options import CampaignOptions
from ._planner import Chunk, PlannedTarget, Planner, PlannerConfig
from ._records import Outcome, OutcomeStatus, Record
from ._report import CampaignSummary, LatencySample, ReportWriter
from ._retry import Sleep
from ._sender import ABORTED, MAX_THROTTLES, ChunkSender, is_resendable, make_outcome
from .journal import INTERRUPTED, CampaignIdentity, Journal, journal_files, open_journal
from .ratelimit import RateLimit, RateLimitBackend

if TYPE_CHECKING:
    # anyio is imported when a campaign runs: importing the package (``--help``) need not.
    import anyio
    from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

__all__ = ["ABORTED", "MAX_THROTTLES", "Campaign", "campaign_identity", "file_records"]

_DONE: Final = object()
_SINK_SIZE: Final = 4096  # outcomes ``async for`` has not taken yet before senders wait


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
        options: a :class:`CampaignOptions`; any of its fields may also be given as a
            keyword (``chunk_size=100``), which overrides it.
        rate_limit: a rate limit to share (with other campaigns, or a client's single
            calls); default: the client's ``rate_limit``, else a ``RateLimit`` built from
            the options' ``rate``, ``burst``, ``calls_per_second`` and ``adaptive``.
        journal: where the campaign's durable state goes, a path (``campaign.db``) or URL;
            it makes the campaign resumable after a crash.
        report: a JSONL path, one line per input record.
        on_outcome: called with each record's final outcome (an ``OutcomeHook``), as
            ``async for`` yields them: outcomes replayed from the journal on a resume too,
            unless ``on_replayed`` is given.
        on_replayed: called, instead of ``on_outcome``, with each outcome a resume replays
            from the journal (an earlier run's; ``summary.resumed`` counts them), so that
            ``on_outcome`` sees only this run's.
        on_retry: called when a failed attempt will be retried, with a ``RetryDetails``
            (the error, the attempt's number, the wait, the time since the first attempt;
            a ``RetryHook``); a retried 429 too.
        on_throttle: called with each 429, with a ``ThrottleDetails`` (the error and its
            ``Retry-After``; a ``ThrottleHook``).
            Each is a plain function (an ``async def`` is refused: it would never be
            awaited), run on the event loop: keep it quick. One that raises is logged and
            never costs a record.
        clock, sleep: monotonic seconds and an awaitable sleep for every wait of the
            campaign (rate limit, pauses, backoff); injectable so tests need no real waits.
    """

    def __init__(
        self,
        client: AsyncClient,
        *,
        template: ProactiveConversationRequest,
        targets: str | os.PathLike[str] | Iterable[object] | AsyncIterable[object],
        options: CampaignOptions | None = None,
        rate_limit: RateLimitBackend | None = None,
        journal: str | os.PathLike[str] | None = None,
        report: str | os.PathLike[str] | None = None,
        on_outcome: OutcomeHook | None = None,
        on_replayed: OutcomeHook | None = None,
        on_retry: RetryHook | None = None,
        on_throttle: ThrottleHook | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Sleep = asyncio.sleep,
        **overrides: Any,
    ) -> None:
        if template.recipient is not UNSET or template.contact_ids is not UNSET:
            raise ValueError("the template must not set recipient or contact_ids: give targets")
        options = options if options is not None else _DEFAULT_OPTIONS
        if overrides:
            options = _with_overrides(options, overrides)
        self.options = options
        self.planner_config: PlannerConfig = options.planner
        self.client = client
        self.template = template
        self.targets = targets
        self.journal_path = journal
        self.report_path = report
        self.summary: CampaignSummary = CampaignSummary()
        self.total: int | None = count_records(targets, options.recipient_column)
        self._clock = clock
        self._own_limit = False
        self.rate_limit: RateLimitBackend = self._choose_rate_limit(rate_limit, clock, sleep)
        self._latency = LatencySample()
        self._journal: Journal | None = None
        self._resuming = False
        self._report: ReportWriter | None = None
        self._sink: asyncio.Queue[object] | None = None
        self._feed_scope: anyio.CancelScope | None = None
        self._started: float | None = None
        self._outcome_hook = safe_hook(on_outcome, "on_outcome")
        self._replay_hook = safe_hook(on_replayed, "on_replayed") or self._outcome_hook
        self._sender = ChunkSender(
            client,
            template,
            retry=options.retry,
            rate_limit=self.rate_limit,
            on_outcome=self._tally,
            on_retry=on_retry,
            on_throttle=on_throttle,
            summary=self.summary,
            latency=self._latency,
            clock=clock,
            sleep=sleep,
        )
        _check_report_path(report, targets, journal)

    def _choose_rate_limit(
        self, given: RateLimitBackend | None, clock: Callable[[], float], sleep: Sleep
    ) -> RateLimitBackend:
        options = self.options
        pacing = (options.rate, options.burst, options.calls_per_second, options.adaptive)
        if given is not None and any(value is not None for value in pacing):
            raise ValueError("give either rate_limit or rate/burst/calls_per_second/adaptive")
        if given is not None:
            return given
        if self.client.rate_limit is not None and all(value is None for value in pacing):
            return self.client.rate_limit
        self._own_limit = True
        return RateLimit(
            options.rate,
            burst=options.burst,
            calls_per_second=options.calls_per_second,
            adaptive=options.adaptive,
            tuning=options.tuning,
            clock=clock,
            sleep=sleep,
        )

    def __repr__(self) -> str:
        """What it sends, to what, how far it got and how fast: never the token."""
        template = self.template
        parts = [
            f"{name}={value!r}"
            for name in ("channel_id", "bot_id", "conversation_template_id")
            if (value := getattr(template, name)) is not UNSET
        ]
        parts.append(f"targets={_describe_targets(self.targets)}")
        summary = self.summary
        total = f"/{self.total}" if self.total is not None else ""
        parts.append(f"records={summary.records}{total}")
        parts += [f"{s.value}={summary.counts[s]}" for s in OutcomeStatus if summary.counts[s]]
        if summary.calls:
            parts.append(f"calls={summary.calls}")
        if summary.retries:
            parts.append(f"retries={summary.retries}")
        if summary.throttled:
            parts.append(f"throttled={summary.throttled}")
        rate = self.rate
        # Readable at any size: 1,000,000/s, not 1e+06/s; 0.5/s stays 0.5/s.
        shown = f"{rate:,.2f}".rstrip("0").rstrip(".") if rate is not None else ""
        parts.append(f"rate={shown}/s" if rate is not None else "rate=unlimited")
        if self.aborted is not None:
            parts.append(f"aborted={self.aborted.kind!r}")
        return f"Campaign({', '.join(parts)})"

    # -- public control ------------------------------------------------------------

    async def run(self) -> CampaignSummary:
        """Run to the end (or until cancelled) and return the summary."""
        await self._run()
        return self.summary

    def __aiter__(self) -> AsyncIterator[Outcome]:
        return self._iterate()

    def stop(self) -> None:
        """Stop dispatching new calls; calls in flight finish and are recorded."""
        self._sender.stop()
        if self._feed_scope is not None:
            self._feed_scope.cancel()  # wakes the feeder wherever it waits

    def flush_report(self) -> None:
        """Write the report lines buffered so far (for an exit that cannot wait)."""
        if self._report is not None:
            self._report.flush()

    @property
    def aborted(self) -> ProactiveError | None:
        """The error that aborted the campaign (fatal, or ``CircuitOpenError``), if one did."""
        return self._sender.aborted

    @property
    def rate(self) -> float | None:
        """The current targets-per-second limit (it moves in adaptive mode)."""
        return self.rate_limit.rate

    async def _iterate(self) -> AsyncIterator[Outcome]:
        sink: asyncio.Queue[object] = asyncio.Queue(maxsize=_SINK_SIZE)
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
                # The consumer is gone: stop forwarding, and free senders blocked on a
                # full queue so that the wind-down is not held up by nobody reading.
                self._sink = None
                while not sink.empty():
                    sink.get_nowait()
                runner.cancel()
                await asyncio.gather(runner, return_exceptions=True)

    # -- the run -------------------------------------------------------------------

    async def _run(self) -> None:
        observed = self._sender.telemetry.recording()
        running = self._run_untraced()
        await (
            running if observed is None else observed.campaign(running, self.template, self.summary)
        )

    async def _run_untraced(self) -> None:
        import anyio

        self._started = self._clock()
        try:
            await self._open()
            await self._dispatch_all()
            if self._sender.stopping:
                self.summary.interrupted = True
        finally:
            with anyio.CancelScope(shield=True):
                await self._close()
        abort = self._sender.aborted
        if abort is not None and abort.fatal:
            raise abort

    async def _dispatch_all(self) -> None:
        """The feeder and the workers in one task group; the grace period on cancellation."""
        import anyio

        concurrency = self.options.concurrency
        send, receive = anyio.create_memory_object_stream[Chunk](concurrency)
        workers_done = anyio.Event()
        workers_left = concurrency

        async def work(chunks: MemoryObjectReceiveStream[Chunk]) -> None:
            nonlocal workers_left
            try:
                await self._work(chunks)
            finally:
                workers_left -= 1
                if workers_left == 0:
                    workers_done.set()

        try:
            async with anyio.create_task_group() as group:
                group.start_soon(self._feed, send)
                with receive:
                    for _ in range(concurrency):
                        group.start_soon(work, receive.clone())
                try:
                    await workers_done.wait()
                except anyio.get_cancelled_exc_class():
                    await self._wind_down(workers_done)
                    raise
        except BaseExceptionGroup as group_error:
            raise _first_error(group_error) from None

    async def _wind_down(self, workers_done: anyio.Event) -> None:
        """Cancelled: no new calls; calls in flight get the grace period, then are cancelled."""
        import anyio

        self.summary.interrupted = True
        self.stop()
        with anyio.CancelScope(shield=True), anyio.move_on_after(self.options.grace_period):
            await workers_done.wait()

    async def _open(self) -> None:
        if self._own_limit and isinstance(self.rate_limit, RateLimit):
            # Start with an empty bucket: a campaign has no idle time to make up for, and a
            # full one would let rate + burst through in the first second.
            self.rate_limit.start_empty()
        # The journal first: a refused resume must leave the earlier report untouched.
        if self.journal_path is not None:
            # Hashing a large input file takes a while: not on the event loop.
            import anyio.to_thread

            identity = await anyio.to_thread.run_sync(self.identity)
            self._journal = await open_journal(
                self.journal_path, identity, secrets=self.client.secrets
            )
            self._resuming = self._journal.resumed
            self._sender.journal = self._journal
        if self.report_path is not None:
            self._report = ReportWriter(self.report_path)

    def identity(self) -> CampaignIdentity:
        """What a journal checks on resume: template, input fingerprint, planning options."""
        return campaign_identity(self.template, self.targets, self.options)

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

    # -- reading and planning ----------------------------------------------------------

    async def _feed(self, chunks: MemoryObjectSendStream[Chunk]) -> None:
        """Plan into the stream until the input ends, or until stop() cancels this scope."""
        import anyio

        with chunks, anyio.CancelScope() as self._feed_scope:
            if self._sender.stopping:
                self._feed_scope.cancel()
            # Every worker left (stopping): what was not taken stays unsent.
            with contextlib.suppress(anyio.BrokenResourceError):
                await self._plan_into(chunks)

    async def _plan_into(self, chunks: MemoryObjectSendStream[Chunk]) -> None:
        import anyio

        planner = Planner(self.planner_config)
        records = self._records()
        async with contextlib.aclosing(planner.plan(records, expected=self.total)) as plan:
            async for item in plan:
                if isinstance(item, Outcome):
                    await self._settle_planned(item)
                    continue
                if self._resuming:
                    targets = await self._unfinished(item.targets)
                    if not targets:
                        continue
                    item = Chunk(variables=item.variables, targets=targets)
                try:
                    # Without the checkpoint of send(): a feeder that never finds the stream
                    # full still yields to the workers whenever the planner reads ahead.
                    chunks.send_nowait(item)
                except anyio.WouldBlock:
                    await chunks.send(item)

    def _records(self) -> AsyncIterator[Record]:
        source = self.targets
        if isinstance(source, str | os.PathLike):
            return file_records(
                source,
                multiline=self.options.multiline_values,
                recipient_column=self.options.recipient_column,
            )
        return aiter_records(source)

    async def _settle_planned(self, outcome: Outcome) -> None:
        """A rejected or duplicate record: reported as planned (or as the journal has it)."""
        if self._resuming and self._journal is not None:
            entry = (await self._journal.lookup([outcome.line])).get(outcome.line)
            if entry is not None and entry.outcome is not None:
                await self._tally(entry.outcome, resumed=True)
                return
        if self._journal is not None:
            await self._journal.record([outcome])
        self._sender.telemetry.settled([outcome])
        await self._tally(outcome)

    async def _unfinished(self, targets: Sequence[PlannedTarget]) -> list[PlannedTarget]:
        """Drop targets an earlier run finished (reporting its outcome again)."""
        assert self._journal is not None
        known = await self._journal.lookup([t.line for t in targets])
        if not known:
            return list(targets)
        keep: list[PlannedTarget] = []
        resend_failed = self.options.resend_failed
        for target in targets:
            entry = known.get(target.line)
            if entry is None or (
                resend_failed and entry.outcome is not None and is_resendable(entry.outcome)
            ):
                keep.append(target)
            elif entry.outcome is None or entry.outcome.status is OutcomeStatus.UNKNOWN:
                if self.options.resend_unknown:
                    keep.append(target)
                elif entry.outcome is None:
                    outcome = make_outcome(target, OutcomeStatus.UNKNOWN, error=INTERRUPTED)
                    await self._journal.record([outcome])
                    self._sender.telemetry.settled([outcome])
                    await self._tally(outcome)
                else:
                    await self._tally(entry.outcome, resumed=True)
            else:
                await self._tally(entry.outcome, resumed=True)
        return keep

    # -- sending and outcomes --------------------------------------------------------------

    async def _work(self, chunks: MemoryObjectReceiveStream[Chunk]) -> None:
        import anyio

        with chunks:
            while True:
                try:
                    # A chunk waiting in the stream is taken without the checkpoint of
                    # receive(): each send is an await on the network anyway.
                    chunk = chunks.receive_nowait()
                except anyio.WouldBlock:
                    try:
                        chunk = await chunks.receive()
                    except anyio.EndOfStream:
                        return
                except anyio.EndOfStream:
                    return
                if self._sender.stopping:
                    return  # taken but never marked in flight: unsent, for a resume
                await self._sender.send(chunk)

    async def _tally(self, outcome: Outcome, *, resumed: bool = False) -> None:
        """Count, report and forward one final outcome (the journal already has it);
        ``resumed``: replayed from the journal, an earlier run's."""
        self.summary.note_outcome(outcome, resumed=resumed)
        if self._report is not None:
            self._report.write(outcome)
        if self._sink is not None:
            await self._sink.put(outcome)
        hook = self._replay_hook if resumed else self._outcome_hook
        if hook is not None:
            hook(outcome)


_DEFAULT_OPTIONS: Final = CampaignOptions()


def campaign_identity(
    template: ProactiveConversationRequest, targets: object, options: CampaignOptions
) -> CampaignIdentity:
    """A campaign's identity: its template, its input's fingerprint, its planning options."""
    return CampaignIdentity.build(
        msgspec.to_builtins(template),
        input_fingerprint=_fingerprint(targets),
        options=options.identity_options(),
    )


def _with_overrides(options: CampaignOptions, overrides: dict[str, Any]) -> CampaignOptions:
    names = {field.name for field in dataclasses.fields(CampaignOptions)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise TypeError(f"Campaign() got unexpected keyword arguments: {', '.join(unknown)}")
    return dataclasses.replace(options, **overrides)


def _first_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The first error of a task group (a failing task cancels the rest: one cause)."""
    error: BaseException = group
    while isinstance(error, BaseExceptionGroup):
        error = error.exceptions[0]
    return error


async def file_records(
    path: str | os.PathLike[str], *, multiline: bool, recipient_column: str | None = None
) -> AsyncIterator[Record]:
    reading = read_records(path, multiline=multiline, recipient_column=recipient_column)
    for index, record in enumerate(reading):
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
        files = journal_files(journal)  # none for a database
        guarded += [("the journal" if f == files[0] else "a journal side file", f) for f in files]
    for what, path in guarded:
        if _same_file(os.fspath(report), path):
            raise ValueError(f"the report path {os.fspath(report)!r} is {what} ({path!r})")


def _same_file(a: str, b: str) -> bool:
    """The same file, through symbolic links and hard links (either may not exist yet)."""
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _describe_targets(source: object) -> str:
    """A path as itself; an iterable as its type (and length, when it has one)."""
    if isinstance(source, str | os.PathLike):
        return repr(os.fspath(source))
    kind = type(source).__name__
    try:
        return f"<{kind} of {len(source)}>"  # type: ignore[arg-type]
    except TypeError:
        return f"<{kind}>"


def _fingerprint(source: object) -> str:
    if isinstance(source, str | os.PathLike):
        return fingerprint_file(source)
    return ""
