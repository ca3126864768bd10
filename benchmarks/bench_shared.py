"""Benchmark 9: one fixed rate shared by three CLI campaigns through Redis (issue 9).

Three ``proactive-async campaign`` processes start at once, each with ``--rate 300 --burst
25 --redis-url URL`` on the same channel (so the same default limit key: the API host and
the channel id; nothing else tells them about each other), 2,000 unique records each,
chunk 1, 64 in flight each, ``--no-adaptive``. ``--rate`` is the total for all of them. The
server is the simulator (``_limitserver.py``) limited to 330 targets/s (a bucket of one
second; exact fractional ``Retry-After``), logging the arrival of every call on its own
clock. Redis is a throwaway ``redis-server`` (``tests/_redis.py``) on the server core.

From the server's log: the 429 share of all calls; goodput = targets accepted / (last -
first arrival); the busiest 1-second window of arrivals (any call, sliding). The baseline
is the configured total rate. Every process's JSONL report must hold each of its records
exactly once, all ``sent``.

Targets: 429s <= 1% of calls; goodput >= 90% of 300/s; no 1 s window above 300 + 25.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    HERE,
    PYTHON,
    ROOT,
    Server,
    campaign_argv,
    cli_env,
    max_window,
    pin_client,
    redis_server,
    report_outcomes,
    row,
    sdk_missing,
    write_csv,
)
from _limitserver import read_log
from _plots import draw_run, plot_path

NAME = "9 shared fixed rate"
RATE = 300.0
BURST = 25.0
SERVER_LIMIT = 330.0
PROCESSES = 3
TARGET = f"429s <= 1%; >= 90% of {RATE:.0f}/s; max 1 s window <= {RATE + BURST:.0f}"


def run(quick: bool = False) -> dict[str, Any]:
    """Run benchmark 9; returns its row and the measured figures."""
    pinned = pin_client()
    per_process = 100 if quick else 2000
    total = per_process * PROCESSES
    label = (
        f"{NAME}, {PROCESSES} CLI x --rate {RATE:.0f} --burst {BURST:.0f} --redis-url, "
        f"server {SERVER_LIMIT:.0f}/s"
    )
    missing = sdk_missing("proactive_async.cli:main", "proactive_async.ratelimit:SharedRateLimit")
    if missing is not None:
        return {"name": NAME, "rows": [row(label, target=TARGET, skipped=missing)], "details": {}}
    with tempfile.TemporaryDirectory(prefix="bench9-") as tmp_name:
        tmp = Path(tmp_name)
        log = tmp / "answers.log"
        csvs = [tmp / f"targets-{n}.csv" for n in range(PROCESSES)]
        reports = [tmp / f"report-{n}.jsonl" for n in range(PROCESSES)]
        for n, path in enumerate(csvs):
            write_csv(path, per_process, start=n * per_process)
        server_argv = [PYTHON, str(HERE / "_limitserver.py"), "--rate", str(SERVER_LIMIT)]
        try:
            with redis_server() as redis_url, Server([*server_argv, "--log", str(log)]) as sim:
                pace = ["--chunk-size", "1", "--concurrency", "64", "--no-adaptive"]
                pace += ["--rate", str(int(RATE)), "--burst", str(int(BURST))]
                pace += ["--redis-url", redis_url]
                start = time.perf_counter()
                procs = [
                    subprocess.Popen(
                        campaign_argv(csv, sim.url, report, *pace),
                        stdout=subprocess.PIPE,
                        stderr=subprocess.PIPE,
                        env=cli_env(),
                        cwd=ROOT,
                        text=True,
                    )
                    for csv, report in zip(csvs, reports, strict=True)
                ]
                outputs = [proc.communicate(timeout=600) for proc in procs]
                wall = time.perf_counter() - start
        except RuntimeError as exc:
            return {
                "name": NAME,
                "rows": [row(label, target=TARGET, skipped=f"skipped: {exc}")],
                "details": {},
            }
        answers = read_log(log)
        outcomes = [report_outcomes(report) for report in reports]
        drawn = draw_run(
            answers,
            limit=SERVER_LIMIT,
            title=f"bench 9: {PROCESSES} CLI campaigns sharing --rate {RATE:.0f} through Redis"
            f" (server limit {SERVER_LIMIT:.0f}/s)",
            path=plot_path("9 shared fixed rate", quick, tmp),
        )
    summaries = []
    for (out, err), proc in zip(outputs, procs, strict=True):
        try:
            summaries.append(json.loads(out.strip().splitlines()[-1]))
        except (ValueError, IndexError):
            summaries.append({"exit_code": proc.returncode, "stderr": err[-500:]})
    stamps = [t for t, _, _ in answers]
    accepted = sum(n for _, status, n in answers if status == 200)
    throttled = sum(1 for _, status, _ in answers if status == 429)
    span = stamps[-1] - stamps[0] if len(stamps) > 1 else float("nan")
    goodput = accepted / span
    share = throttled / max(1, len(answers))
    window = max_window(stamps)
    complete = all(
        o["lines"] == o["records"] == per_process == o.get("sent", 0) for o in outcomes
    ) and all(proc.returncode == 0 for proc in procs)
    ok = share <= 0.01 and goodput >= 0.9 * RATE and window <= RATE + BURST and complete
    lost = (
        "every record one outcome (all sent)"
        if complete
        else f"outcomes {outcomes}, exit codes {[p.returncode for p in procs]}"
    )
    return {
        "name": NAME,
        "rows": [
            row(
                label,
                sdk=f"{goodput:.1f} targets/s, 429s {share:.2%}, max window {window}",
                baseline=f"{RATE:.0f} targets/s total, burst {BURST:.0f}",
                ratio=goodput / RATE,
                target=TARGET,
                ok=ok,
                note=f"{lost}; {total:,} records, chunk 1, 64 in flight each; {len(answers)} "
                f"calls, {throttled} 429s in {span:.1f} s at the server ({wall:.1f} s wall, "
                f"process start included: {accepted / wall:.0f}/s); {drawn}",
            )
        ],
        "details": {
            "pinning": pinned,
            "records": total,
            "server_calls": len(answers),
            "server_429s": throttled,
            "accepted": accepted,
            "span_s": span,
            "wall_s": wall,
            "goodput": goodput,
            "max_1s_window": window,
            "summaries": summaries,
            "outcomes": outcomes,
        },
    }


if __name__ == "__main__":
    print(json.dumps(run("--quick" in sys.argv), indent=2))
