"""Benchmark 8: records/s of a whole CLI campaign process, startup and shutdown included.

Measures the wall time of ``proactive-async campaign FILE.csv --chunk-size 1 --concurrency 64
--no-adaptive --no-progress --default-region BR --report R`` (no journal; the report is on,
as it always is in the CLI) over a CSV of 20,000 unique valid Brazilian mobiles, one call
per record, against the fast local server (its own process on core 1; the CLI on core 0).
The baseline, run the same way and alternating round by round with the CLI: a hand-written
aiohttp script (``_BASELINE`` below: the csv module, one ClientSession with
TCPConnector(limit=64), 64 worker tasks, msgspec decode into bare Structs) making the same
20,000 POSTs. Both figures are records per second of the whole process (interpreter start,
imports, reading, sending, exit), so the CLI pays for its imports, planning (normalising,
deduplicating), outcome matching and the JSONL report; the script for none of them. Every
CLI run is checked to exit 0 with one report line per record.

Targets (issue 19): the CLI on asyncio's loop (``--loop asyncio``) >= 0.9x the script; the
CLI on uvloop (``--loop uvloop``, ``proactive-async[fast]``) >= 1.2x the same script on
asyncio's loop (the script as people write it: ``asyncio.run``). The three alternate round
by round.

Second row (issue 17): the same CLI process with a journal, ``--concurrency 24`` (what
benchmark 10's three workers have in flight), ``--journal postgresql://...?campaign=NAME``
(a throwaway PostgreSQL on the server core, a fresh campaign each round) against
``--journal FILE.db`` (SQLite, a fresh file each round), alternating round by round, each
timed from spawn to exit and checked to exit 0 with one ``sent`` line per record, both on
``--loop asyncio``. Target: PostgreSQL >= 0.7x SQLite.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    HERE,
    PATH,
    PYTHON,
    ROOT,
    TOKEN,
    alternate,
    brazil_mobiles,
    client_prefix,
    fast_server,
    median,
    pin_client,
    postgres_server,
    rate_str,
    report_outcomes,
    row,
    sdk_missing,
    uvloop_missing,
)

NAME = "8 CLI campaign process"
CONCURRENCY = 64
TARGET = 0.9
UVLOOP_TARGET = 1.2
_CLI = "import sys; from proactive_async.cli import main; sys.exit(main())"
_BASELINE = """\
import asyncio, csv, sys, msgspec, aiohttp
path, url, here, token, concurrency = sys.argv[1:6]
concurrency = int(concurrency)
sys.path.insert(0, here)
from _baselines import BARE_DECODER

async def main(path, url):
    with open(path, newline="") as handle:
        rows = csv.reader(handle)
        next(rows)
        phones = iter([row[0] for row in rows])
    encode = msgspec.json.Encoder().encode
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json",
               "Accept": "application/json"}
    done = 0
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, headers=headers) as session:
        async def worker():
            nonlocal done
            for phone in phones:
                body = encode({"channelId": 1, "botId": 1, "conversationTemplateId": 7,
                               "recipient": [phone]})
                async with session.post(url, data=body) as resp:
                    payload = await resp.read()
                    if resp.status != 200:
                        raise RuntimeError(f"HTTP {resp.status}")
                    BARE_DECODER.decode(payload)
                done += 1
        await asyncio.gather(*(worker() for _ in range(concurrency)))
    print("DONE", done)

asyncio.run(main(path, url))
"""


def write_csv(path: Path, count: int) -> None:
    with path.open("w") as handle:
        handle.write("phone\n")
        handle.writelines(f"{phone}\n" for phone in brazil_mobiles(count))


def cli_argv(
    csv_path: Path, url: str, report: Path, concurrency: int = CONCURRENCY, loop: str = "asyncio"
) -> list[str]:
    return [
        *client_prefix(),
        PYTHON,
        "-c",
        _CLI,
        "campaign",
        str(csv_path),
        "--channel-id",
        "1",
        "--bot-id",
        "1",
        "--template-id",
        "7",
        "--base-url",
        url,
        "--concurrency",
        str(concurrency),
        "--chunk-size",
        "1",
        "--no-adaptive",
        "--no-progress",
        "--default-region",
        "BR",
        "--report",
        str(report),
        "--loop",
        loop,
    ]


def timed(argv: list[str], env: dict[str, str]) -> tuple[float, subprocess.CompletedProcess[str]]:
    """Wall seconds of one process, from spawn to exit."""
    start = time.perf_counter()
    done = subprocess.run(
        argv, capture_output=True, text=True, env=env, cwd=ROOT, timeout=600, check=False
    )
    return time.perf_counter() - start, done


def count_lines(path: Path) -> int:
    if not path.exists():
        return -1
    with path.open("rb") as handle:
        return sum(1 for _ in handle)


def run(quick: bool = False) -> dict[str, Any]:
    """Run benchmark 8; returns its rows and the per-round figures."""
    pinned = pin_client()
    records = 500 if quick else 20_000
    rounds = 1 if quick else 5
    missing = sdk_missing("proactive_async.cli:main")
    no_uvloop = uvloop_missing()
    env = {**os.environ, "PROACTIVE_TOKEN": TOKEN, "PYTHONPATH": str(ROOT)}
    # Imports timed as an installed package has them: compiled once, not on every start.
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    subprocess.run(
        [PYTHON, "-m", "compileall", "-q", str(ROOT / "proactive_async")],
        capture_output=True,
        check=False,
    )
    runs: list[dict[str, Any]] = []
    with fast_server() as server, tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        csv_path = tmp / "targets.csv"
        write_csv(csv_path, records)
        report = tmp / "report.jsonl"

        def cli(loop: str = "asyncio") -> float:
            report.unlink(missing_ok=True)
            seconds, done = timed(cli_argv(csv_path, server.url, report, loop=loop), env)
            lines = count_lines(report)
            runs.append(
                {
                    "loop": loop,
                    "seconds": round(seconds, 3),
                    "exit_code": done.returncode,
                    "report_lines": lines,
                    "stderr_tail": done.stderr[-300:] if done.returncode else "",
                }
            )
            return records / seconds

        def script() -> float:
            argv = [
                *client_prefix(),
                PYTHON,
                "-c",
                _BASELINE,
                str(csv_path),
                server.url + PATH,
                str(HERE),
                TOKEN,
                str(CONCURRENCY),
            ]
            seconds, done = timed(argv, env)
            if done.returncode != 0 or f"DONE {records}" not in done.stdout:
                raise RuntimeError(f"baseline script failed: {done.stderr[-500:]}")
            return records / seconds

        variants: dict[str, Callable[[], float]] = {"aiohttp_script": script}
        if missing is None:
            variants = {"cli": cli, **variants}
            if no_uvloop is None:
                variants["cli_uvloop"] = lambda: cli("uvloop")
        figures = alternate(variants, rounds)
    med = {name: median(values) for name, values in figures.items()}
    raw = med["aiohttp_script"]
    label = f"{NAME}, {records:,} records, chunk 1, 64 in flight vs aiohttp script"
    uvloop_label = f"{NAME}, --loop uvloop vs the same aiohttp script (asyncio)"
    if missing is not None:
        rows = [
            row(
                label, baseline=rate_str(raw, "records/s"), target=f">= {TARGET}x", skipped=missing
            ),
            row(uvloop_label, target=f">= {UVLOOP_TARGET}x", skipped=missing),
        ]
    else:
        rows = [
            _cli_row(label, "cli", TARGET, med, figures, runs, records),
            _cli_row(uvloop_label, "cli_uvloop", UVLOOP_TARGET, med, figures, runs, records)
            if no_uvloop is None
            else row(uvloop_label, target=f">= {UVLOOP_TARGET}x", skipped=no_uvloop),
        ]
    journals = journal_rows(quick, records, rounds, env)
    return {
        "name": NAME,
        "rows": [*rows, *journals["rows"]],
        "details": {
            "pinning": pinned,
            "records_per_round": records,
            "rounds": rounds,
            "figures": figures,
            "medians": med,
            "cli_runs": runs,
            "journals": journals["details"],
        },
    }


def _cli_row(
    label: str,
    name: str,
    target: float,
    med: dict[str, float],
    figures: dict[str, list[float]],
    runs: list[dict[str, Any]],
    records: int,
) -> dict[str, Any]:
    """The CLI variant ``name`` against the script: every run exit 0, one line per record."""
    loop = "uvloop" if name == "cli_uvloop" else "asyncio"
    mine = [r for r in runs if r["loop"] == loop]
    bad = [r for r in mine if r["exit_code"] != 0 or r["report_lines"] != records]
    note = (
        f"{len(bad)} run(s) exited non-zero or lost records" if bad else "every record one outcome"
    )
    raw = med["aiohttp_script"]
    spread = ", ".join(
        f"{key} {min(figures[key]):,.0f}-{max(figures[key]):,.0f}"
        for key in (name, "aiohttp_script")
    )
    return row(
        label,
        sdk=rate_str(med[name], "records/s"),
        baseline=rate_str(raw, "records/s"),
        ratio=med[name] / raw,
        target=f">= {target}x",
        ok=med[name] >= target * raw and not bad,
        note=f"{note}; records/s of the rounds: {spread}",
    )


JOURNAL_CONCURRENCY = 24
JOURNAL_TARGET = ">= 0.7x"


def journal_rows(quick: bool, records: int, rounds: int, env: dict[str, str]) -> dict[str, Any]:
    """The CLI process journaled in PostgreSQL against the same process with SQLite."""
    label = (
        f"{NAME}, PostgreSQL journal vs SQLite journal, {records:,} records, chunk 1, "
        f"{JOURNAL_CONCURRENCY} in flight"
    )
    missing = sdk_missing("proactive_async.cli:main", "psycopg")
    if missing is not None:
        return {"rows": [row(label, target=JOURNAL_TARGET, skipped=missing)], "details": {}}
    runs: list[dict[str, Any]] = []
    try:
        with (
            postgres_server() as dsn,
            fast_server() as server,
            tempfile.TemporaryDirectory() as tmp_name,
        ):
            tmp = Path(tmp_name)
            csv_path = tmp / "targets.csv"
            write_csv(csv_path, records)
            counter = iter(range(10_000))

            def journaled(kind: str) -> float:
                n = next(counter)
                report = tmp / f"report-{n}.jsonl"
                journal = (
                    f"{dsn}?campaign=bench8-{n}" if kind == "postgresql" else f"{tmp}/j-{n}.db"
                )
                argv = cli_argv(csv_path, server.url, report, JOURNAL_CONCURRENCY)
                seconds, done = timed([*argv, "--journal", journal], env)
                outcomes = report_outcomes(report)
                complete = done.returncode == 0 and outcomes.get("sent") == records
                runs.append(
                    {
                        "journal": kind,
                        "seconds": round(seconds, 3),
                        "exit_code": done.returncode,
                        "outcomes": outcomes,
                        "complete": complete,
                        "stderr_tail": done.stderr[-300:] if done.returncode else "",
                    }
                )
                return records / seconds

            figures = alternate(
                {
                    "sqlite": lambda: journaled("sqlite"),
                    "postgresql": lambda: journaled("postgresql"),
                },
                rounds,
            )
    except RuntimeError as exc:
        return {
            "rows": [row(label, target=JOURNAL_TARGET, skipped=f"skipped: {exc}")],
            "details": {},
        }
    med = {name: median(values) for name, values in figures.items()}
    bad = [r for r in runs if not r["complete"]]
    ratio = med["postgresql"] / med["sqlite"]
    note = (
        f"{len(bad)} run(s) exited non-zero or lost records"
        if bad
        else "every record sent once (report), every run exit 0"
    )
    spread = ", ".join(f"{name} {min(v):,.0f}-{max(v):,.0f}" for name, v in figures.items())
    return {
        "rows": [
            row(
                label,
                sdk=rate_str(med["postgresql"], "records/s"),
                baseline=rate_str(med["sqlite"], "records/s") + " (SQLite)",
                ratio=ratio,
                target=JOURNAL_TARGET,
                ok=ratio >= 0.7 and not bad,
                note=f"{note}; medians of {rounds} alternating rounds, whole processes "
                f"(records/s of the rounds: {spread})",
            )
        ],
        "details": {"figures": figures, "medians": med, "runs": runs},
    }


if __name__ == "__main__":
    import json

    print(json.dumps(run("--quick" in sys.argv), indent=2))
