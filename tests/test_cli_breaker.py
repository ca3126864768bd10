"""Runs that cannot succeed stop (issue 18 §1), through the real CLI against real local servers.

Each scenario ends like a fatal answer: exit 2 within the stated time, one line naming the
cause and what to do, every record not sent ``failed`` (kind ``aborted``) and left unsent in
the journal; a resume once the cause is fixed sends them (``--resend-failed`` for records
whose own attempts ran out first). A healthy run with the usual faults never trips.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest
from _distributed_checks import worker_faults
from aiohttp import web
from test_cli import TOKEN, ThreadedSimulator, phones, write_csv
from test_cli_hardening import campaign, run_cli
from test_cli_operator import refused_url

from proactive_async import (
    AsyncClient,
    Campaign,
    CircuitOpenError,
    Outcome,
    OutcomeStatus,
    ProactiveConversationRequest,
)
from proactive_async.simulator import Faults, Simulator, SimulatorConfig

ERROR = "proactive-async: error:"


class Always:
    """A server that answers every call ``status``, with ``Retry-After: retry_after`` if given."""

    def __init__(self, status: int, retry_after: str | None = None) -> None:
        self.status = status
        self.retry_after = retry_after
        self.calls = 0
        self.url = ""
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=asyncio.run, args=(self._serve(),), daemon=True)

    async def _answer(self, request: web.Request) -> web.Response:
        await request.read()
        self.calls += 1
        headers = {} if self.retry_after is None else {"Retry-After": self.retry_after}
        return web.json_response({"title": "no"}, status=self.status, headers=headers)

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        app = web.Application()
        app.router.add_post("/{tail:.*}", self._answer)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        host, port = runner.addresses[0][:2]
        self.url = f"http://{host}:{port}"
        self._ready.set()
        await self._stop.wait()
        await runner.cleanup()

    def __enter__(self) -> Always:
        self._thread.start()
        assert self._ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._loop is not None and self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)


@pytest.fixture
def sim() -> Iterator[ThreadedSimulator]:
    with ThreadedSimulator(SimulatorConfig(token=TOKEN)) as server:
        yield server


def report(targets: Path) -> list[Outcome]:
    decoder = msgspec.json.Decoder(Outcome)
    lines = targets.with_name(f"{targets.stem}.report.jsonl").read_bytes().splitlines()
    return [decoder.decode(line) for line in lines if line.strip()]


def kinds(outcomes: list[Outcome]) -> Counter[str]:
    return Counter(f"{o.status}/{o.error.kind if o.error else '-'}" for o in outcomes)


def one_error_line(stderr: str) -> str:
    """The run's one line on stderr saying why it stopped (and no traceback)."""
    assert "Traceback" not in stderr
    errors = [line for line in stderr.splitlines() if line.startswith(ERROR)]
    assert len(errors) == 1, stderr
    return errors[0]


def timed(*args: str, cwd: Path) -> tuple[float, str, int, str]:
    started = time.monotonic()
    done = run_cli(*args, cwd=cwd)
    return time.monotonic() - started, done.stdout, done.returncode, done.stderr


def resume_sends_the_rest(
    targets: Path, sim: ThreadedSimulator, journal: Path, *extra: str
) -> list[Outcome]:
    """A resume against a working server: every record ends sent, none sent twice."""
    before = sim.audit.total_processed
    done = run_cli(
        *campaign(targets, sim.url, "--journal", str(journal), *extra), cwd=targets.parent
    )
    assert done.returncode == 0, done.stderr
    outcomes = report(targets)
    assert {o.status for o in outcomes} == {OutcomeStatus.SENT}
    assert not sim.audit.duplicates()
    assert sim.audit.total_processed - before > 0
    return outcomes


# -- nothing listening ---------------------------------------------------------------------


def test_nothing_listening_stops_after_the_limit_and_a_resume_sends_every_record(
    tmp_path: Path, sim: ThreadedSimulator
) -> None:
    targets = write_csv(tmp_path / "r.csv", [f"{p},Ana" for p in phones(300)])
    journal = tmp_path / "j.db"
    args = campaign(targets, refused_url(), "--journal", str(journal), "--chunk-size", "10")
    elapsed, _, code, stderr = timed(*args, "--stop-unreachable-after", "3", cwd=tmp_path)
    line = one_error_line(stderr)
    assert code == 2
    assert elapsed < 3 + 4.5 + 5  # the limit, one backoff past it, the process's start
    assert "no call reached the server for" in line and "failed to connect" in line
    assert "--base-url" in line and "resume with the same --journal" in line
    assert "--resend-failed" not in line  # nothing spent its attempts: all unsent
    outcomes = report(targets)
    assert len(outcomes) == 300 and kinds(outcomes) == {"failed/aborted": 300}
    assert len(resume_sends_the_rest(targets, sim, journal)) == 300
    assert sim.audit.total_processed == 300


@pytest.mark.slow
def test_nothing_listening_stops_after_about_a_minute_with_the_defaults(tmp_path: Path) -> None:
    """The default (60 s) is shorter than a chunk's 8 attempts take: every record unsent."""
    targets = write_csv(tmp_path / "r.csv", [f"{p},Ana" for p in phones(300)])
    args = campaign(targets, refused_url(), "--journal", str(tmp_path / "j.db"))
    elapsed, _, code, stderr = timed(*args, cwd=tmp_path)
    line = one_error_line(stderr)
    assert code == 2 and 60 <= elapsed < 60 + 4 + 10, elapsed
    assert "no call reached the server for 6" in line
    assert kinds(report(targets)) == {"failed/aborted": 300}


def test_records_whose_attempts_ran_out_first_are_resent_with_resend_failed(
    tmp_path: Path, sim: ThreadedSimulator
) -> None:
    targets = write_csv(tmp_path / "r.csv", [f"{p},Ana" for p in phones(300)])
    journal = tmp_path / "j.db"
    args = campaign(targets, refused_url(), "--journal", str(journal), "--chunk-size", "10")
    # Two attempts a chunk, two chunks at a time: chunks end failed every half second
    # until the breaker stops the run.
    args += ["--concurrency", "2", "--max-attempts", "2", "--stop-unreachable-after", "3"]
    _, _, code, stderr = timed(*args, cwd=tmp_path)
    line = one_error_line(stderr)
    first = kinds(report(targets))
    spent = first["failed/ConnectError"]
    assert code == 2 and spent and first["failed/aborted"] == 300 - spent, first
    assert f"--resend-failed for the {spent}" in line

    # A plain resume sends the unsent records only: the failed ones stay failed.
    done = run_cli(*campaign(targets, sim.url, "--journal", str(journal)), cwd=tmp_path)
    assert done.returncode == 1, done.stderr
    assert kinds(report(targets)) == {"sent/-": 300 - spent, "failed/ConnectError": spent}
    assert "--resend-failed" in done.stderr
    assert sim.audit.total_processed == 300 - spent

    resume_sends_the_rest(targets, sim, journal, "--resend-failed")
    assert sim.audit.total_processed == 300  # each record once


def test_resend_failed_does_not_resend_records_the_server_refused(
    tmp_path: Path, sim: ThreadedSimulator
) -> None:
    """A 400 would be refused again: --resend-failed leaves it failed."""
    targets = write_csv(tmp_path / "r.csv", [f"{p},Ana" for p in phones(3)])
    journal = tmp_path / "j.db"
    with Always(400) as server:
        done = run_cli(*campaign(targets, server.url, "--journal", str(journal)), cwd=tmp_path)
    assert done.returncode == 1 and kinds(report(targets)) == {"failed/BadRequestError": 3}
    assert "--resend-failed" not in done.stderr
    again = campaign(targets, sim.url, "--journal", str(journal), "--resend-failed")
    done = run_cli(*again, cwd=tmp_path)
    assert done.returncode == 1 and kinds(report(targets)) == {"failed/BadRequestError": 3}
    assert sim.audit.total_processed == 0


# -- a name that does not resolve ----------------------------------------------------------


def test_a_host_name_that_does_not_resolve_stops_at_once_and_is_not_retried(
    tmp_path: Path, sim: ThreadedSimulator
) -> None:
    targets = write_csv(tmp_path / "r.csv", [f"{p},Ana" for p in phones(300)])
    journal = tmp_path / "j.db"
    args = campaign(targets, "http://nohost.invalid:8080", "--journal", str(journal))
    elapsed, stdout, code, stderr = timed(*args, "--json-summary", cwd=tmp_path)
    line = one_error_line(stderr)
    assert code == 2 and elapsed < 10
    assert "'nohost.invalid' does not resolve" in line and "--base-url" in line
    summary = msgspec.json.decode(stdout)
    assert summary["retries"] == 0  # never retried, per call or otherwise
    outcomes = report(targets)
    assert len(outcomes) == 300 and {o.status for o in outcomes} == {OutcomeStatus.FAILED}
    assert set(kinds(outcomes)) <= {"failed/aborted", "failed/NameResolutionError"}
    assert len(resume_sends_the_rest(targets, sim, journal)) == 300


# -- a server that processes every call and answers 500 --------------------------------------


def test_a_server_answering_500_after_processing_is_called_about_50_times_not_2000(
    tmp_path: Path, sim: ThreadedSimulator
) -> None:
    sim.configure(SimulatorConfig(token=TOKEN, faults=Faults(rate_500=1.0, seed=1)))
    targets = write_csv(tmp_path / "r.csv", [f"{p},Ana" for p in phones(2000)])
    journal = tmp_path / "j.db"
    args = campaign(targets, sim.url, "--journal", str(journal), "--chunk-size", "1")
    elapsed, _, code, stderr = timed(*args, cwd=tmp_path)
    line = one_error_line(stderr)
    assert code == 2 and elapsed < 30
    assert "50 calls failed after the server may have processed them" in line
    calls = sim.audit.calls
    assert 50 <= calls <= 50 + 16  # the limit, and the calls in flight when it tripped
    first = kinds(report(targets))
    assert first == {"unknown/ServerError": calls, "failed/aborted": 2000 - calls}

    # The server is fixed: a resume sends what was not sent and leaves the unknowns be.
    sim.configure(SimulatorConfig(token=TOKEN))
    done = run_cli(*campaign(targets, sim.url, "--journal", str(journal)), cwd=tmp_path)
    assert done.returncode == 3, done.stderr  # unknowns remain: may have been sent
    assert kinds(report(targets)) == {"unknown/ServerError": calls, "sent/-": 2000 - calls}
    assert not sim.audit.duplicates()


# -- 429s without end ------------------------------------------------------------------------


@pytest.mark.parametrize("retry_after", [None, "0"], ids=["no-retry-after", "retry-after-0"])
def test_429s_without_end_stop_like_a_fatal_answer(
    tmp_path: Path, sim: ThreadedSimulator, retry_after: str | None
) -> None:
    targets = write_csv(tmp_path / "r.csv", [f"{p},Ana" for p in phones(300)])
    journal = tmp_path / "j.db"
    with Always(429, retry_after) as server:
        args = campaign(targets, server.url, "--journal", str(journal), "--chunk-size", "10")
        elapsed, _, code, stderr = timed(*args, "--max-retry-after", "3", cwd=tmp_path)
    line = one_error_line(stderr)
    assert code == 2 and elapsed < 3 + 10, elapsed
    assert "answered 429 (rate limited)" in line and "with none accepted" in line
    assert "resume with the same --journal" in line
    outcomes = report(targets)
    assert len(outcomes) == 300 and kinds(outcomes) == {"failed/aborted": 300}
    assert len(resume_sends_the_rest(targets, sim, journal)) == 300


# -- a healthy run with faults never trips ----------------------------------------------------


@pytest.mark.parametrize("seed", [1, 2])
async def test_a_healthy_run_with_the_usual_faults_never_trips_the_breaker(seed: int) -> None:
    """One call a record: 429s, 503s, 500s and dropped connections, about one call in eight."""
    template = ProactiveConversationRequest(channel_id=1, bot_id=2, conversation_template_id=3)
    config = SimulatorConfig(token=TOKEN, faults=worker_faults(seed))
    async with Simulator(config) as server, AsyncClient(base_url=server.url, token=TOKEN) as client:
        run = Campaign(
            client, template=template, targets=phones(600), chunk_size=1, rate=3000, concurrency=32
        )
        try:
            summary = await run.run()
        except CircuitOpenError as exc:  # pragma: no cover - the failure this test is for
            pytest.fail(f"the breaker tripped on a healthy run: {exc}")
    assert run.aborted is None and summary.records == 600
    assert summary.throttled and summary.counts[OutcomeStatus.UNKNOWN]  # faults were met
    assert summary.counts[OutcomeStatus.SENT] > 500
