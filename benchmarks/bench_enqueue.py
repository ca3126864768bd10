"""Benchmark 12: peak RSS of ``proactive-async enqueue`` over 100k- and 1M-record CSVs.

Issue 10 asks that a 1M-record file be enqueued in flat memory. ``enqueue FILE.csv
--default-region BR`` (chunks of 50, the default) plans each CSV of unique valid Brazilian
mobiles (one column, so one template for all: a broadcast, 50 records a call; with a
variable per row every record is a chunk and a job of its own) into a throwaway PostgreSQL
(``tests/_postgres.py``; records go in with COPY) and queues one arq job per slice of
1,000 records on a throwaway Redis (``tests/_redis.py``), both on the server core, the CLI
on the client core.
Peak RSS is the child's ``ru_maxrss`` read by ``bench_memory``'s one-child wrapper. The
baseline, measured the same way: a process reading the same CSV with the csv module and
doing nothing. Every run is checked: exit 0, and the plan printed counts every record and
queued every slice (at least records / 50 chunks: a group left waiting goes part-full).

Targets (those of benchmark 4): 1M records <= 120 MB; growth from 100k to 1M <= 64 MB.
"""

from __future__ import annotations

import json
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
    cli_env,
    client_prefix,
    pin_client,
    postgres_server,
    redis_server,
    row,
    sdk_missing,
    write_csv,
)
from bench_memory import CSV_READ_ONLY, peak_rss_mb, peak_rss_rows

NAME = "12 peak RSS, enqueue"
CHUNK_SIZE = 50


def enqueue_once(csv: Path, records: int, env: dict[str, str], tmp: Path) -> dict[str, Any]:
    """One enqueue of ``csv`` under the RSS wrapper; its figures and checks."""
    campaign = f"bench12-{uuid.uuid4().hex[:8]}"
    plan_file = tmp / f"{campaign}.json"
    argv = [*client_prefix(), PYTHON, "-c", CLI_CODE, "enqueue", str(csv)]
    argv += ["--channel-id", "1", "--bot-id", "1", "--template-id", "7"]
    argv += ["--default-region", "BR", "--campaign", campaign]
    # The plan goes to a file: the wrapper reads only its own stdout.
    shell = [PYTHON, "-c", f"import subprocess, sys; sys.exit(subprocess.run(sys.argv[1:], "
             f"stdout=open({str(plan_file)!r}, 'w')).returncode)", *argv]  # fmt: skip
    start = time.monotonic()
    rss, code, err = peak_rss_mb(shell, env=env, timeout=1800)
    seconds = time.monotonic() - start
    plan: dict[str, Any] = {}
    if code == 0:
        plan = json.loads(plan_file.read_text())
    fewest = -(-records // CHUNK_SIZE)  # a group waiting too long is sent part-full
    return {
        "records": records,
        "peak_rss_mb": round(rss, 1),
        "seconds": round(seconds, 1),
        "exit_code": code,
        "plan": plan,
        "stderr_tail": err if code else "",
        "complete": code == 0
        and plan.get("records") == records
        and plan.get("slices") == plan.get("queued")
        and fewest <= plan.get("chunks", 0) <= records,
    }


def run(quick: bool = False) -> dict[str, Any]:
    """Run benchmark 12; returns its rows and the measured figures."""
    pin_client()
    sizes = (1_000, 10_000) if quick else (100_000, 1_000_000)
    labels = ("small", "large") if quick else ("100k", "1M")
    big, growth_name = f"{NAME} {labels[1]} records", f"{NAME} growth {labels[0]}->{labels[1]}"
    missing = sdk_missing("proactive_async.arq:enqueue_slices", "proactive_async.distributed")
    if missing is not None:
        return {
            "name": NAME,
            "rows": [
                row(big, target="<= 120 MB", skipped=missing),
                row(growth_name, target="<= 64 MB", skipped=missing),
            ],
            "details": {},
        }
    details: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bench12-") as tmp_name:
        tmp = Path(tmp_name)
        try:
            with postgres_server() as dsn, redis_server() as redis_url:
                env = cli_env(PROACTIVE_JOURNAL=dsn, PROACTIVE_REDIS_URL=redis_url)
                for size, label in zip(sizes, labels, strict=True):
                    csv = tmp / f"{label}.csv"
                    write_csv(csv, size)
                    base_rss, _, _ = peak_rss_mb(
                        [*client_prefix(), PYTHON, "-c", CSV_READ_ONLY, str(csv)],
                        env=env,
                        timeout=600,
                    )
                    details[label] = enqueue_once(csv, size, env, tmp)
                    details[label]["baseline_peak_rss_mb"] = round(base_rss, 1)
                    csv.unlink()
        except (RuntimeError, OSError) as exc:
            skipped = f"skipped: {exc}"
            return {
                "name": NAME,
                "rows": [
                    row(big, target="<= 120 MB", skipped=skipped),
                    row(growth_name, target="<= 64 MB", skipped=skipped),
                ],
                "details": details,
            }
    small, large = details[labels[0]], details[labels[1]]
    complete = small["complete"] and large["complete"]
    note = "every record planned, every slice queued" if complete else f"incomplete: {details}"
    jobs = large["plan"].get("slices", "?")
    return {
        "name": NAME,
        "rows": peak_rss_rows(
            NAME,
            labels,
            small,
            large,
            key="peak_rss_mb",
            complete=complete,
            note=f"{note}; {jobs} arq jobs",
        ),
        "details": details,
    }


if __name__ == "__main__":
    print(json.dumps(run("--quick" in sys.argv), indent=2))
