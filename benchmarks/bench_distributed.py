"""Benchmark 10: calls/s of a distributed campaign on three arq workers (issues 10, 17).

``proactive-async enqueue`` plans a CSV of 20,000 unique single-recipient records into a
throwaway PostgreSQL (``tests/_postgres.py``) with ``--chunk-size 1`` (one call per
record, as personalised campaigns are) and ``--no-adaptive`` without ``--rate`` (no rate
limit), cut into slices of the default job size (1,000 records), and queues one arq job
per slice on a throwaway Redis (``tests/_redis.py``). The three workers run before it
(as services do: their start-up is not the campaign's), and the time runs from the start
of the enqueue (planning included, as the baseline's is) until the workers' logs say
every slice is done (one line a slice, read every 0.1 s, as benchmark 14 does). Polling
the journal instead (``campaign_status``, what ``status --json`` prints) counted the
campaign's records each time: 15 ms of PostgreSQL's CPU a poll at 20,000 records
(pg_stat_statements), a tenth of its core at 0.1 s, which the baseline does not pay. The
final state is then read once with ``proactive-async status --json``, and must say
finished.

Baseline, same input: one ``proactive-async campaign`` process with ``--chunk-size 1
--concurrency 24`` (the workers' 3 x 8 in flight), ``--no-adaptive``, no rate, journaled in
the same PostgreSQL (``--journal postgresql://...?campaign=...``), timed from spawn to exit
(planning included, as the enqueue's is).

Client processes (workers, the CLI) run on the client core, servers (fast server, Redis,
PostgreSQL) on the server core, so both sides get the same CPU: the ratio is what the
distributed machinery (jobs, leases, fenced state changes in PostgreSQL) costs per call
on one core, not what more machines would add. Target (issue 17): >= 0.8x.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    CLI_CODE,
    PYTHON,
    ROOT,
    cli_env,
    client_prefix,
    fast_server,
    pin_client,
    postgres_server,
    rate_str,
    redis_server,
    report_outcomes,
    row,
    sdk_missing,
    write_csv,
)

NAME = "10 distributed"
WORKERS = 3
WORKER_CONCURRENCY = 8
CHUNK_SIZE = 1
TARGET = ">= 0.8x"
_TEMPLATE = ["--channel-id", "1", "--bot-id", "1", "--template-id", "7"]


def cli(*args: str, env: dict[str, str], timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*client_prefix(), PYTHON, "-c", CLI_CODE, *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=timeout,
        check=False,
    )


def status(dsn: str, campaign: str, env: dict[str, str]) -> dict[str, Any]:
    done = cli("status", "--journal", dsn, "--campaign", campaign, "--json", env=env, timeout=60)
    if done.returncode not in (0, 4):
        raise RuntimeError(f"status exited {done.returncode}: {done.stderr[-300:]}")
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def distributed(csv: Path, records: int, env: dict[str, str], tmp: Path) -> dict[str, Any]:
    """Three workers already running (as services are), then the enqueue; from the start
    of the enqueue until the status says finished. Figures and checks."""
    campaign = f"bench10-{uuid.uuid4().hex[:8]}"
    dsn = env["PROACTIVE_JOURNAL"]
    logs = [tmp / f"worker-{n}.log" for n in range(WORKERS)]
    worker_argv = [*client_prefix(), PYTHON, "-c", CLI_CODE, "worker"]
    worker_argv += ["--concurrency", str(WORKER_CONCURRENCY)]
    workers = []
    for log in logs:
        with log.open("ab") as out:
            workers.append(
                subprocess.Popen(
                    worker_argv, env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT
                )
            )
    try:
        _wait_started(logs, workers)
        start = time.perf_counter()
        enqueued = cli(
            "enqueue", str(csv), *_TEMPLATE, "--chunk-size", str(CHUNK_SIZE), "--no-adaptive",
            "--default-region", "BR", "--campaign", campaign, env=env,
        )  # fmt: skip
        enqueue_seconds = time.perf_counter() - start
        if enqueued.returncode != 0:
            raise RuntimeError(f"enqueue exited {enqueued.returncode}: {enqueued.stderr[-300:]}")
        plan = json.loads(enqueued.stdout)
        slices, deadline = int(plan["slices"]), start + 900
        while sum(log.read_text().count(f"of {campaign}: done") for log in logs) < slices:
            if time.perf_counter() > deadline:
                raise RuntimeError(f"not finished in 900 s: {logs[0].read_text()[-500:]}")
            if any(w.poll() is not None for w in workers):
                raise RuntimeError(f"a worker exited: {logs[0].read_text()[-500:]}")
            time.sleep(0.1)
        seconds = time.perf_counter() - start
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.terminate()
        for worker in workers:
            try:
                worker.wait(30)
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait(5)
    final = status(dsn, campaign, env)
    report = tmp / f"{campaign}.jsonl"
    written = cli("report", "--journal", dsn, "--campaign", campaign, "--out", str(report), env=env)
    outcomes = report_outcomes(report) if written.returncode == 0 else {"error": written.stderr}
    return {
        "campaign": campaign,
        "plan": plan,
        "enqueue_seconds": enqueue_seconds,
        "seconds": seconds,
        "calls_per_second": records / seconds,
        "status": final,
        "outcomes": outcomes,
        "complete": bool(final["finished"])
        and outcomes.get("lines") == outcomes.get("records") == records
        and outcomes.get("sent") == records,
    }


def _wait_started(logs: list[Path], workers: list[subprocess.Popen[bytes]]) -> None:
    """Until every worker said it started (its start-up line), as a running service has."""
    deadline = time.monotonic() + 60
    while not all("calls in flight" in log.read_text() for log in logs):
        if time.monotonic() > deadline or any(w.poll() is not None for w in workers):
            raise RuntimeError(f"the workers did not start: {logs[0].read_text()[-500:]}")
        time.sleep(0.05)


def single(csv: Path, records: int, url: str, env: dict[str, str], tmp: Path) -> dict[str, Any]:
    """The same input in one CLI campaign process, journaled in the same PostgreSQL."""
    campaign = f"bench10-single-{uuid.uuid4().hex[:8]}"
    report = tmp / f"{campaign}.jsonl"
    journal = f"{env['PROACTIVE_JOURNAL']}?campaign={campaign}"
    # No PROACTIVE_REDIS_URL: with it, a campaign without --rate and --no-adaptive is
    # refused ("a shared limit needs --rate, or the adaptive mode").
    env = {k: v for k, v in env.items() if k != "PROACTIVE_REDIS_URL"}
    start = time.perf_counter()
    done = cli(
        "campaign", str(csv), *_TEMPLATE, "--base-url", url, "--chunk-size", str(CHUNK_SIZE),
        "--concurrency", str(WORKERS * WORKER_CONCURRENCY), "--no-adaptive",
        "--default-region", "BR", "--no-progress", "--json-summary", "--journal", journal,
        "--report", str(report), env=env,
    )  # fmt: skip
    seconds = time.perf_counter() - start
    outcomes = report_outcomes(report)
    return {
        "seconds": seconds,
        "calls_per_second": records / seconds,
        "exit_code": done.returncode,
        "stderr_tail": done.stderr[-300:] if done.returncode else "",
        "outcomes": outcomes,
        "complete": done.returncode == 0
        and outcomes["lines"] == outcomes["records"] == outcomes.get("sent", 0) == records,
    }


def run(quick: bool = False) -> dict[str, Any]:
    """Run benchmark 10; returns its row and the figures of both runs."""
    pinned = pin_client()
    records = 300 if quick else 20_000
    label = (
        f"{NAME}, {WORKERS} arq workers x {WORKER_CONCURRENCY} vs one CLI process, "
        f"{records:,} records, chunk {CHUNK_SIZE}, no rate limit"
    )
    missing = sdk_missing("proactive_async.arq:WorkerSettings", "proactive_async.distributed")
    if missing is not None:
        return {"name": NAME, "rows": [row(label, target=TARGET, skipped=missing)], "details": {}}
    env_base = cli_env()
    env_base.pop("PYTHONDONTWRITEBYTECODE", None)
    subprocess.run(
        [PYTHON, "-m", "compileall", "-q", str(ROOT / "proactive_async")],
        capture_output=True,
        check=False,
    )
    with tempfile.TemporaryDirectory(prefix="bench10-") as tmp_name:
        tmp = Path(tmp_name)
        csv = tmp / "targets.csv"
        write_csv(csv, records)
        try:
            with (
                postgres_server() as dsn,
                redis_server() as redis_url,
                fast_server() as server,
            ):
                env = {
                    **env_base,
                    "PROACTIVE_BASE_URL": server.url,
                    "PROACTIVE_JOURNAL": dsn,
                    "PROACTIVE_REDIS_URL": redis_url,
                }
                base = single(csv, records, server.url, env, tmp)
                dist = distributed(csv, records, env, tmp)
        except (RuntimeError, OSError) as exc:
            return {
                "name": NAME,
                "rows": [row(label, target=TARGET, skipped=f"skipped: {exc}")],
                "details": {},
            }
    complete = base["complete"] and dist["complete"]
    lost = (
        "every record one outcome (all sent) in both"
        if complete
        else f"outcomes: workers {dist['outcomes']}, CLI {base['outcomes']}"
    )
    ratio = dist["calls_per_second"] / base["calls_per_second"]
    return {
        "name": NAME,
        "rows": [
            row(
                label,
                sdk=rate_str(dist["calls_per_second"]),
                baseline=rate_str(base["calls_per_second"]) + " (one CLI process, 24 in flight)",
                ratio=ratio,
                target=TARGET,
                ok=complete and ratio >= 0.8,
                note=f"{lost}; {dist['seconds']:.1f} s from the start of the enqueue (itself "
                f"{dist['enqueue_seconds']:.1f} s) to finished, workers already running; CLI "
                f"{base['seconds']:.1f} s from spawn to exit; PostgreSQL journal for both",
            )
        ],
        "details": {"pinning": pinned, "records": records, "distributed": dist, "single": base},
    }


if __name__ == "__main__":
    print(json.dumps(run("--quick" in sys.argv), indent=2))
