"""Benchmark 13: recovery of a distributed campaign (issue 17), and benchmark 14: what
PostgreSQL and Redis cost per record (the distributed ceilings).

13. Three ``proactive-async worker`` processes (arq, 8 calls in flight each) run a campaign
of one-call records (``enqueue --chunk-size 1 --rate R --burst B``: the shared rate makes
it last long enough to hurt it mid-run) against the SDK's simulator with faults (``FAULTS``:
500 after processing, connections dropped before and after processing, 0.2% 429 and 503
with a fractional ``Retry-After: 0.05``). Not the worker tests' 3% + 3% of 429 and 503:
each of those pauses every worker sharing the limit (1 s as the simulator writes it by
default), and at 300 calls/s the campaign crawled at ~30 records/s, so that the figure
would measure the pauses, not the recovery. Once a quarter of the records are settled, one
scenario each:

* ``kill -9`` of a worker, a replacement started: seconds from the kill to finished;
* ``SIGSTOP`` of a worker, never replaced: seconds from the stop to finished on the other
  two; then ``SIGCONT``, and what the woken worker got processed in the next 5 s;
* ``cancel``: targets the server processed after ``cancel`` answered (at most the calls in
  flight, 3 x 8);
* PostgreSQL restarted (down 4 s) and, in another campaign, Redis restarted empty: the
  campaign finishes with no worker touched and no second enqueue; no worker exited, no
  traceback in their output.

Every row checks, from the simulator's audit (what the *server* processed, per target;
the simulator is this file run with ``--serve``, pinned to the server core, answering
``GET /audit`` on a second port) and the journal's records: every record exactly one
outcome (0 missing), no target processed twice, ``sent`` processed once, ``failed`` never.

14. A distributed run as bench 10's (three workers, 20,000 one-call records, slices of
1,000, fast server), measured on the servers' side: the CPU seconds of the PostgreSQL
process tree (live backends plus what the postmaster reaped) and of redis-server, read
from ``/proc`` around the enqueue (planning, queueing) and around the run (leases, marks,
outcomes, sweeps; job pickups, the shared rate limit), divided by records; with them the
transactions (``pg_stat_database``) and Redis commands (``INFO commandstats``) per record.
Once with no rate limit and once with a shared ``--rate`` far above what the workers reach
(so the limit's Redis script runs on every call without ever making anyone wait). Three
runs of each; the rows give min / median / max and what one core of each server sustains
(1e6 / microseconds per record).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    CLI_CODE,
    PYTHON,
    ROOT,
    SERVER_CORE,
    Server,
    _tests_on_path,
    can_pin,
    cli_env,
    client_prefix,
    fast_server,
    median,
    pin_client,
    row,
    sdk_missing,
    write_csv,
)

NAME = "13 recovery"
CEILINGS = "14 distributed ceilings"
WORKERS = 3
CONCURRENCY = 8
SETTLED_BEFORE_FAULT = 0.25
_TEMPLATE = ["--channel-id", "1", "--bot-id", "1", "--template-id", "7"]
_TICK = os.sysconf("SC_CLK_TCK")


# --- the simulator, as its own process with its audit on a second port ----------------


FAULTS = {
    "rate_429": 0.002,
    "rate_503": 0.002,
    "rate_500": 0.01,
    "drop_before": 0.01,
    "drop_after": 0.01,
    "latency": 0.002,
    "latency_jitter": 0.002,
    "retry_after": 0.05,
}


def serve(seed: int) -> None:
    """The simulator with ``FAULTS``; ``GET /audit`` on a second port."""
    from aiohttp import web

    from proactive_async.simulator import Faults, Simulator, SimulatorConfig

    async def main() -> None:
        config = SimulatorConfig(
            token="bench-token",
            faults=Faults(**FAULTS, seed=seed),
            retry_after_style="fractional",
        )
        simulator = Simulator(config)
        await simulator.start()

        async def audit(request: web.Request) -> web.Response:
            found = simulator.audit
            body: dict[str, Any] = {"processed": found.total_processed, "calls": found.calls}
            if "counts" in request.query:
                body["counts"] = found.snapshot()
            return web.json_response(body)

        app = web.Application()
        app.router.add_get("/audit", audit)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        print(f"audit on http://127.0.0.1:{port}/audit", flush=True)
        print(f"listening on {simulator.url}", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        await stop.wait()
        await runner.cleanup()
        await simulator.aclose()

    asyncio.run(main())


class Audited:
    """The simulator subprocess; ``processed()`` and ``counts()`` read its audit."""

    def __init__(self, server: Server) -> None:
        self.server = server
        lines = b"".join(server.output).decode()
        self.audit_url = lines.split("audit on ", 1)[1].split()[0]

    def _get(self, query: str = "") -> dict[str, Any]:
        with urllib.request.urlopen(self.audit_url + query, timeout=30) as answer:
            found: dict[str, Any] = json.loads(answer.read())
        return found

    def processed(self) -> int:
        return int(self._get()["processed"])

    def counts(self) -> dict[str, int]:
        counts: dict[str, int] = self._get("?counts=1")["counts"]
        return counts


# --- servers that a scenario restarts -----------------------------------------------------


def _pin_tree(pid: int | None) -> None:
    """A server process and its children, already started, onto the server core."""
    if pid is None or not can_pin():
        return
    for member in [pid, *_children(pid)]:
        subprocess.run(
            ["taskset", "-a", "-p", "-c", str(SERVER_CORE), str(member)],
            capture_output=True,
            check=False,
        )


def _children(pid: int) -> list[int]:
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            with contextlib.suppress(OSError):
                fields = Path(f"/proc/{name}/stat").read_text().rsplit(")", 1)[1].split()
                if int(fields[1]) == pid:
                    found.append(int(name))
    return found


def tree_cpu(pid: int) -> float:
    """CPU seconds of a process, its live children, and the children it has reaped."""
    total = 0.0
    for member in [pid, *_children(pid)]:
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{member}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / _TICK  # utime, stime
            if member == pid:  # cutime, cstime: the backends that exited
                total += (int(fields[13]) + int(fields[14])) / _TICK
    return total


@contextlib.contextmanager
def servers(tmp: Path) -> Iterator[tuple[Any, Any]]:
    """The test suite's PostgreSQL and Redis (objects, for ``restart``), on the server core."""
    _tests_on_path()
    from _postgres import PostgresServer, find_pg_bin  # type: ignore[import-not-found]
    from _redis import RedisServer, find_redis_server  # type: ignore[import-not-found]

    bin_dir, executable = find_pg_bin(), find_redis_server()
    if bin_dir is None or executable is None:
        raise RuntimeError("PostgreSQL or redis-server missing (scripts/ensure-servers.sh)")
    database, queue = PostgresServer(bin_dir), RedisServer(executable, tmp)
    try:
        database.start()
        queue.start()
        _pin_tree(database._postmaster_pid())
        _pin_tree(queue._process.pid)
        yield database, queue
    finally:
        queue.stop()
        database.stop()


# --- workers and the CLI -------------------------------------------------------------------


def cli(*args: str, env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*client_prefix(), PYTHON, "-c", CLI_CODE, *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=timeout,
        check=False,
    )


def start_worker(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    argv = [*client_prefix(), PYTHON, "-c", CLI_CODE, "worker"]
    with log.open("ab") as out:
        return subprocess.Popen(
            [*argv, "--concurrency", str(CONCURRENCY)],
            env=env,
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def wait_started(logs: list[Path], workers: list[subprocess.Popen[bytes]]) -> None:
    """Until every worker said it started, as a running service has."""
    deadline = time.monotonic() + 60
    while not all("calls in flight" in log.read_text() for log in logs):
        if time.monotonic() > deadline or any(w.poll() is not None for w in workers):
            raise RuntimeError(f"the workers did not start: {logs[0].read_text()[-500:]}")
        time.sleep(0.05)


def stop_workers(workers: list[subprocess.Popen[bytes]]) -> None:
    for worker in workers:
        if worker.poll() is None:
            worker.send_signal(signal.SIGCONT)
            worker.terminate()
    for worker in workers:
        try:
            worker.wait(30)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait(5)


def status(location: str) -> dict[str, Any] | None:
    """``campaign_status`` (what ``status --json`` prints); None while the journal is down."""
    from proactive_async.distributed import campaign_status

    try:
        return asyncio.run(campaign_status(location)).as_dict()
    except Exception:  # the journal restarting: ask again
        return None


def wait_until(
    location: str, done: Callable[[dict[str, Any]], bool], seconds: float, every: float = 0.2
) -> dict[str, Any]:
    deadline = time.monotonic() + seconds
    while True:
        found = status(location)
        if found is not None and done(found):
            return found
        if time.monotonic() > deadline:
            raise RuntimeError(f"waited {seconds:.0f} s: {found}")
        time.sleep(every)


def settled(found: dict[str, Any]) -> int:
    return sum(n for state, n in found["counts"].items() if state not in ("planned", "in_flight"))


def journal_states(dsn: str, campaign: str) -> dict[str, str]:
    import psycopg

    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT recipient, state FROM proactive_record WHERE campaign_id = %s", (campaign,)
        ).fetchall()
    return {recipient: state for recipient, state in rows}


def exactly_once(states: dict[str, str], processed: dict[str, int], records: int) -> dict[str, Any]:
    """What a finished campaign must show: the figures, and whether they hold."""
    finals = {"sent", "failed", "unknown"}
    outcomes: dict[str, int] = {}
    for state in states.values():
        outcomes[state] = outcomes.get(state, 0) + 1
    mine = {phone: processed.get(phone, 0) for phone in states}
    twice = sum(1 for n in mine.values() if n > 1)
    sent_not_once = sum(1 for p, s in states.items() if s == "sent" and mine[p] != 1)
    failed_processed = sum(1 for p, s in states.items() if s == "failed" and mine[p] > 0)
    missing = records - sum(n for state, n in outcomes.items() if state in finals)
    return {
        "outcomes": outcomes,
        "missing": missing,
        "processed_twice": twice,
        "sent_not_processed_once": sent_not_once,
        "failed_but_processed": failed_processed,
        "ok": missing == 0 and twice == 0 and sent_not_once == 0 and failed_processed == 0,
    }


# --- 13: the scenarios ---------------------------------------------------------------------


class Campaign:
    """One scenario's campaign: its records, its workers, its logs, the checks at the end."""

    def __init__(self, kind: str, ctx: dict[str, Any], offset: int) -> None:
        self.kind = kind
        self.ctx = ctx
        self.records: int = ctx["records"]
        self.id = f"bench13-{kind}-{uuid.uuid4().hex[:6]}"
        self.location = f"{ctx['dsn']}?campaign={self.id}"
        self.csv = ctx["tmp"] / f"{kind}.csv"
        write_csv(self.csv, self.records, start=offset)
        self.logs: list[Path] = []
        self.workers: list[subprocess.Popen[bytes]] = []

    def add_worker(self) -> subprocess.Popen[bytes]:
        log = self.ctx["tmp"] / f"{self.id}-w{len(self.logs)}.log"
        self.logs.append(log)
        worker = start_worker(self.ctx["env"], log)
        self.workers.append(worker)
        return worker

    def start(self) -> float:
        """Workers running, then the enqueue; waits until a quarter is settled. Returns
        the moment the enqueue started."""
        for _ in range(WORKERS):
            self.add_worker()
        wait_started(self.logs, self.workers)
        started = time.monotonic()
        enqueued = cli(
            "enqueue", str(self.csv), *_TEMPLATE, "--chunk-size", "1", "--job-size",
            str(self.ctx["job_size"]), "--rate", str(self.ctx["rate"]), "--burst",
            str(self.ctx["burst"]), "--default-region", "BR", "--campaign", self.id,
            env=self.ctx["env"],
        )  # fmt: skip
        if enqueued.returncode != 0:
            raise RuntimeError(f"enqueue exited {enqueued.returncode}: {enqueued.stderr[-300:]}")
        quarter = int(self.records * SETTLED_BEFORE_FAULT)
        wait_until(self.location, lambda s: settled(s) >= quarter, 120)
        return started

    def finish(self, seconds: float) -> dict[str, Any]:
        return wait_until(self.location, lambda s: bool(s["finished"]), seconds)

    def output(self) -> str:
        return "".join(log.read_text(errors="replace") for log in self.logs)

    def check(self, final: dict[str, Any]) -> dict[str, Any]:
        states = journal_states(self.ctx["dsn"], self.id)
        checks = exactly_once(states, self.ctx["sim"].counts(), self.records)
        checks["status"] = final
        return checks


def kill_9(ctx: dict[str, Any], offset: int) -> dict[str, Any]:
    run = Campaign("kill9", ctx, offset)
    try:
        started = run.start()
        run.workers[0].send_signal(signal.SIGKILL)
        run.workers[0].wait()
        killed = time.monotonic()
        run.add_worker()
        final = run.finish(600)
        seconds = time.monotonic() - killed
    finally:
        stop_workers(run.workers)
    return {
        "seconds": seconds,
        "fault_after": killed - started,
        "campaign_seconds": time.monotonic() - started,
        **run.check(final),
    }


def sigstop(ctx: dict[str, Any], offset: int) -> dict[str, Any]:
    run = Campaign("sigstop", ctx, offset)
    try:
        started = run.start()
        run.workers[0].send_signal(signal.SIGSTOP)
        stopped = time.monotonic()
        final = run.finish(600)
        seconds = time.monotonic() - stopped
        before = ctx["sim"].processed()
        run.workers[0].send_signal(signal.SIGCONT)
        time.sleep(5)  # it wakes, finds its leases taken, and stops
        woken_sent = ctx["sim"].processed() - before
        woken_alive = run.workers[0].poll() is None
    finally:
        stop_workers(run.workers)
    checks = run.check(final)
    checks["ok"] = checks["ok"] and woken_sent == 0
    return {
        "seconds": seconds,
        "fault_after": stopped - started,
        "woken_sent": woken_sent,
        "woken_alive": woken_alive,
        **checks,
    }


def cancel(ctx: dict[str, Any], offset: int) -> dict[str, Any]:
    run = Campaign("cancel", ctx, offset)
    try:
        started = run.start()
        before = ctx["sim"].processed()
        asked = time.monotonic()
        done = cli("cancel", "--campaign", run.id, env=ctx["env"])
        at_answer = ctx["sim"].processed()
        answered = time.monotonic()
        if done.returncode != 0:
            raise RuntimeError(f"cancel exited {done.returncode}: {done.stderr[-300:]}")
        final = run.finish(120)
        time.sleep(2)
        after = ctx["sim"].processed()
    finally:
        stop_workers(run.workers)
    return {
        "after_answer": after - at_answer,
        "during_cancel": at_answer - before,
        "cancel_seconds": answered - asked,
        "fault_after": asked - started,
        "cancel_said": done.stdout.strip()[-200:],
        **run.check(final),
    }


def restart(which: str) -> Callable[[dict[str, Any], int], dict[str, Any]]:
    def scenario(ctx: dict[str, Any], offset: int) -> dict[str, Any]:
        run = Campaign(f"{which}-restart", ctx, offset)
        try:
            started = run.start()
            hurt = time.monotonic()
            if which == "postgresql":
                ctx["database"].restart(down_for=4)
                _pin_tree(ctx["database"]._postmaster_pid())
            else:
                ctx["queue"].restart()  # empty: the queued jobs and the rate limit are gone
                _pin_tree(ctx["queue"]._process.pid)
            final = run.finish(600)
            seconds = time.monotonic() - hurt
            exited = [w.returncode for w in run.workers if w.poll() is not None]
        finally:
            stop_workers(run.workers)
        output = run.output()
        checks = run.check(final)
        clean = not exited and "Traceback" not in output
        checks["ok"] = checks["ok"] and clean
        return {
            "seconds": seconds,
            "fault_after": hurt - started,
            "workers_exited": exited,
            "tracebacks": output.count("Traceback"),
            "worker_log_tail": "" if clean else output[-1500:],
            **checks,
        }

    return scenario


SCENARIOS: dict[str, Callable[[dict[str, Any], int], dict[str, Any]]] = {
    "kill9": kill_9,
    "sigstop": sigstop,
    "cancel": cancel,
    "postgresql": restart("postgresql"),
    "redis": restart("redis"),
}


def _outcomes(r: dict[str, Any]) -> str:
    counts = ", ".join(f"{k} {v:,}" for k, v in sorted(r["outcomes"].items()))
    return (
        f"{counts}; missing {r['missing']}, processed twice {r['processed_twice']}, sent "
        f"not processed once {r['sent_not_processed_once']}, failed but processed "
        f"{r['failed_but_processed']}"
    )


def recovery_rows(results: dict[str, dict[str, Any]], label: str) -> list[dict[str, Any]]:
    in_flight = WORKERS * CONCURRENCY
    rows = []
    for kind, r in results.items():
        if "error" in r:
            rows.append(row(f"{NAME}, {kind}, {label}", target="see note", skipped=r["error"]))
            continue
        fault = f"fault after {r['fault_after']:.1f} s (a quarter settled)"
        if kind == "kill9":
            rows.append(
                row(
                    f"{NAME}, kill -9 of 1 of {WORKERS} workers, replacement started, {label}",
                    sdk=f"{r['seconds']:.1f} s kill to finished",
                    target="<= 90 s; 0 missing; 0 twice",
                    ok=r["ok"] and r["seconds"] <= 90,
                    note=f"{fault}; {_outcomes(r)}",
                )
            )
        elif kind == "sigstop":
            rows.append(
                row(
                    f"{NAME}, SIGSTOP of 1 of {WORKERS} workers, never replaced, {label}",
                    sdk=f"{r['seconds']:.1f} s stop to finished; woken worker: "
                    f"{r['woken_sent']} processed in 5 s after SIGCONT",
                    target="<= 90 s; 0 after SIGCONT; 0 twice",
                    ok=r["ok"] and r["seconds"] <= 90,
                    note=f"{fault}; {_outcomes(r)}",
                )
            )
        elif kind == "cancel":
            rows.append(
                row(
                    f"{NAME}, cancel mid-run, {WORKERS} workers x {CONCURRENCY}, {label}",
                    sdk=f"{r['after_answer']} processed after cancel answered",
                    baseline=f"{in_flight} in flight",
                    target=f"<= {in_flight}; 0 twice",
                    ok=r["ok"] and r["after_answer"] <= in_flight,
                    note=f"{fault}; {r['during_cancel']} processed while the cancel process "
                    f"ran ({r['cancel_seconds']:.2f} s, start-up included); {_outcomes(r)}",
                )
            )
        else:
            what = (
                "PostgreSQL restarted (down 4 s)"
                if kind == "postgresql"
                else "Redis restarted empty"
            )
            rows.append(
                row(
                    f"{NAME}, {what} under {WORKERS} running workers, {label}",
                    sdk=f"finished {r['seconds']:.1f} s after the restart began",
                    target="finishes untouched; 0 twice",
                    ok=r["ok"],
                    note=f"{fault}; workers exited: {r['workers_exited'] or 'none'}, "
                    f"tracebacks {r['tracebacks']}; {_outcomes(r)}",
                )
            )
    return rows


def run(quick: bool = False, only: list[str] | None = None) -> dict[str, Any]:
    """Run benchmark 13 (every scenario, or ``only`` those); its rows and figures."""
    pinned = pin_client()
    records = 600 if quick else 10_000
    rate = 150 if quick else 300
    job_size = 50 if quick else 1000
    label = f"{records:,} records, chunk 1, slices of {job_size:,}, shared --rate {rate}"
    missing = sdk_missing("proactive_async.arq:WorkerSettings", "proactive_async.distributed")
    kinds = only or list(SCENARIOS)
    if missing is not None:
        rows = [row(f"{NAME}, {kind}", target="see README", skipped=missing) for kind in kinds]
        return {"name": NAME, "rows": rows, "details": {}}
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="bench13-") as tmp_name:
        tmp = Path(tmp_name)
        try:
            with (
                servers(tmp) as (database, queue),
                Server([PYTHON, str(Path(__file__).resolve()), "--serve"]) as simulator,
            ):
                dsn = database.create_database("bench13")
                env = cli_env(
                    PROACTIVE_BASE_URL=simulator.url,
                    PROACTIVE_JOURNAL=dsn,
                    PROACTIVE_REDIS_URL=queue.url,
                )
                ctx = {
                    "records": records, "rate": rate, "burst": max(10, rate // 10),
                    "job_size": job_size, "dsn": dsn, "env": env, "tmp": tmp,
                    "sim": Audited(simulator), "database": database, "queue": queue,
                }  # fmt: skip
                for n, kind in enumerate(kinds):
                    print(f"   13: {kind}", file=sys.stderr, flush=True)
                    try:
                        results[kind] = SCENARIOS[kind](ctx, n * records)
                    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
                        results[kind] = {"error": f"error: {exc}"}
        except (RuntimeError, OSError) as exc:
            rows = [row(f"{NAME}, {k}", target="see README", skipped=f"{exc}") for k in kinds]
            return {"name": NAME, "rows": rows, "details": {}}
    return {
        "name": NAME,
        "rows": recovery_rows(results, label),
        "details": {"pinning": pinned, "records": records, "rate": rate, "results": results},
    }


# --- 14: CPU of the servers per record ----------------------------------------------------


def pg_counters(dsn: str) -> dict[str, int]:
    import psycopg

    with psycopg.connect(dsn) as conn:
        found = conn.execute(
            "SELECT xact_commit + xact_rollback, tup_inserted, tup_updated"
            " FROM pg_stat_database WHERE datname = current_database()"
        ).fetchone()
    assert found is not None
    return {"transactions": found[0], "inserted": found[1], "updated": found[2]}


def redis_commands(url: str) -> dict[str, int]:
    import redis

    store = redis.Redis.from_url(url)
    try:
        stats: dict[str, Any] = store.info("commandstats")  # type: ignore[assignment]
    finally:
        store.close()
    return {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()}


def _delta(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {k: v - before.get(k, 0) for k, v in after.items() if v != before.get(k, 0)}


def ceiling_run(ctx: dict[str, Any], rate: int | None) -> dict[str, Any]:
    """One distributed run; the servers' CPU and work per record, enqueue and run apart."""
    records, tmp, env, dsn = ctx["records"], ctx["tmp"], ctx["env"], ctx["dsn"]
    postmaster, redis_pid = ctx["database"]._postmaster_pid(), ctx["queue"]._process.pid
    campaign = f"bench14-{uuid.uuid4().hex[:8]}"
    logs = [tmp / f"{campaign}-w{n}.log" for n in range(WORKERS)]
    workers = [start_worker(env, log) for log in logs]
    flags = ["--rate", str(rate), "--burst", str(rate)] if rate else ["--no-adaptive"]
    try:
        wait_started(logs, workers)
        time.sleep(1)  # the workers' start-up (tables checked, connections) is not a record's
        pg0, rd0 = pg_counters(dsn), redis_commands(ctx["queue"].url)
        cpu0 = (tree_cpu(postmaster), tree_cpu(redis_pid), time.perf_counter())
        enqueued = cli(
            "enqueue", str(ctx["csv"]), *_TEMPLATE, "--chunk-size", "1", "--default-region",
            "BR", "--campaign", campaign, *flags, env=env,
        )  # fmt: skip
        if enqueued.returncode != 0:
            raise RuntimeError(f"enqueue exited {enqueued.returncode}: {enqueued.stderr[-300:]}")
        slices = int(json.loads(enqueued.stdout)["slices"])
        cpu1 = (tree_cpu(postmaster), tree_cpu(redis_pid), time.perf_counter())
        # Finished is read from the workers' lines (one per slice done), not by polling
        # the journal, which would add its own cost to the figures.
        deadline = time.monotonic() + 900
        while sum(log.read_text().count(f"of {campaign}: done") for log in logs) < slices:
            if time.monotonic() > deadline or any(w.poll() is not None for w in workers):
                raise RuntimeError(f"not finished: {logs[0].read_text()[-500:]}")
            time.sleep(0.2)
        cpu2 = (tree_cpu(postmaster), tree_cpu(redis_pid), time.perf_counter())
    finally:
        stop_workers(workers)
    time.sleep(1.5)  # backends flush their statistics at most once a second
    pg1, rd1 = pg_counters(dsn), redis_commands(ctx["queue"].url)
    final = status(f"{dsn}?campaign={campaign}") or {}
    per = 1e6 / records
    return {
        "rate": rate,
        "finished": bool(final.get("finished")),
        "sent": final.get("counts", {}).get("sent", 0),
        "enqueue_seconds": cpu1[2] - cpu0[2],
        "run_seconds": cpu2[2] - cpu1[2],
        "pg_plan_us": (cpu1[0] - cpu0[0]) * per,
        "pg_run_us": (cpu2[0] - cpu1[0]) * per,
        "redis_plan_us": (cpu1[1] - cpu0[1]) * per,
        "redis_run_us": (cpu2[1] - cpu1[1]) * per,
        "pg_per_record": {k: v / records for k, v in _delta(pg1, pg0).items()},
        "redis_per_record": {k: v / records for k, v in _delta(rd1, rd0).items()},
    }


def _spread(values: list[float]) -> str:
    return f"{min(values):.1f} / {median(values):.1f} / {max(values):.1f}"


def ceiling_rows(runs: list[dict[str, Any]], label: str) -> list[dict[str, Any]]:
    rows = []
    for rate in sorted({r["rate"] or 0 for r in runs}):
        mine = [r for r in runs if (r["rate"] or 0) == rate]
        limit = f"shared --rate {rate:,}" if rate else "no rate limit"
        done = all(r["finished"] and r["sent"] == r.get("records", r["sent"]) for r in mine)
        pg = [r["pg_plan_us"] + r["pg_run_us"] for r in mine]
        rd = [r["redis_plan_us"] + r["redis_run_us"] for r in mine]
        tx = [r["pg_per_record"].get("transactions", 0.0) for r in mine]
        cmds = [sum(r["redis_per_record"].values()) for r in mine]
        speed = [ctx_rate(r) for r in mine]
        for server, us, extra in (
            (
                "PostgreSQL",
                pg,
                f"plan {_spread([r['pg_plan_us'] for r in mine])} us, run "
                f"{_spread([r['pg_run_us'] for r in mine])} us; transactions/record "
                f"{_spread(tx)}",
            ),
            (
                "Redis",
                rd,
                f"enqueue {_spread([r['redis_plan_us'] for r in mine])} us, run "
                f"{_spread([r['redis_run_us'] for r in mine])} us; commands/record "
                f"{_spread(cmds)}",
            ),
        ):
            rows.append(
                row(
                    f"{CEILINGS}, {server} CPU per record, {limit}, {label}",
                    sdk=f"{_spread(us)} us/record (min / median / max of {len(mine)})",
                    baseline=f"one core: {_per_core(max(us))} / {_per_core(median(us))} / "
                    f"{_per_core(min(us))} records/s",
                    target="(info)",
                    note=f"{extra}; workers ran {_spread(speed)} records/s in all"
                    + ("" if done else "; NOT every run finished with every record sent"),
                )
            )
    return rows


def ctx_rate(r: dict[str, Any]) -> float:
    return float(r["records"]) / float(r["run_seconds"])


def run_ceilings(quick: bool = False, rounds: int | None = None) -> dict[str, Any]:
    """Run benchmark 14: ``rounds`` alternating runs without and with a shared rate."""
    pinned = pin_client()
    records = 600 if quick else 20_000
    rounds = rounds or (1 if quick else 3)
    label = f"{WORKERS} workers x {CONCURRENCY}, {records:,} records, chunk 1, slices of 1,000"
    missing = sdk_missing("proactive_async.arq:WorkerSettings", "proactive_async.distributed")
    if missing is not None:
        return {
            "name": CEILINGS,
            "rows": [row(CEILINGS, target="(info)", skipped=missing)],
            "details": {},
        }
    env_base = cli_env()
    env_base.pop("PYTHONDONTWRITEBYTECODE", None)
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench14-") as tmp_name:
        tmp = Path(tmp_name)
        csv = tmp / "targets.csv"
        write_csv(csv, records)
        try:
            with servers(tmp) as (database, queue), fast_server() as server:
                dsn = database.create_database("bench14")
                env = {
                    **env_base,
                    "PROACTIVE_BASE_URL": server.url,
                    "PROACTIVE_JOURNAL": dsn,
                    "PROACTIVE_REDIS_URL": queue.url,
                }
                ctx = {"records": records, "tmp": tmp, "env": env, "dsn": dsn, "csv": csv}
                ctx |= {"database": database, "queue": queue}
                for n in range(rounds):
                    for rate in (None, 100_000) if n % 2 == 0 else (100_000, None):
                        print(f"   14: round {n + 1}, rate {rate}", file=sys.stderr, flush=True)
                        runs.append({"records": records, **ceiling_run(ctx, rate)})
        except (RuntimeError, OSError) as exc:
            return {"name": CEILINGS, "rows": [row(CEILINGS, target="(info)", skipped=f"{exc}")]}
    return {
        "name": CEILINGS,
        "rows": ceiling_rows(runs, label),
        "details": {"pinning": pinned, "records": records, "runs": runs},
    }


if __name__ == "__main__":
    if "--serve" in sys.argv:
        serve(seed=int(os.environ.get("BENCH_SEED", "13")))
    elif "--ceilings" in sys.argv:
        print(json.dumps(run_ceilings("--quick" in sys.argv), indent=2, default=str))
    else:
        picked = [a for a in sys.argv[1:] if a in SCENARIOS] or None
        print(json.dumps(run("--quick" in sys.argv, picked), indent=2, default=str))


def _per_core(us_per_record: float) -> str:
    """Records/s one core sustains at this cost; below /proc's 10 ms ticks, unmeasured."""
    if us_per_record <= 0:
        return "(under the clock's resolution)"
    return f"{1e6 / us_per_record:,.0f}"
