"""Benchmark 4: peak RSS of a CLI campaign over 100k- and 1M-record CSV files.

Runs ``proactive-async campaign FILE.csv ... --journal J --report R --no-progress``
(dedupe on, the default; journal on) against the simulator without faults (its own
process on core 1; the CLI on core 0), over CSVs of unique valid Brazilian mobiles
(+55 11 9xxxx-xxxx) with one variable column. Peak RSS is the child's ``ru_maxrss`` read
by a one-child wrapper process, so nothing else is counted. The baseline, measured the
same way: a Python process that reads the same CSV with the csv module and does nothing.
Every report is checked to hold one line per record.

Targets: 1M records <= 80 MB peak RSS (issue 19; was 120 MB); growth from 100k to 1M
<= 64 MB.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    PYTHON,
    ROOT,
    TOKEN,
    Server,
    brazil_mobiles,
    client_prefix,
    pin_client,
    row,
    sdk_missing,
    simulator_argv,
)

NAME = "4 peak RSS, CLI campaign"
LIMIT_MB = 80
_WRAPPER = (
    "import resource, subprocess, sys\n"
    "code = subprocess.run(sys.argv[1:]).returncode\n"
    "print('MAXRSS_KB', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, code)\n"
)
CSV_READ_ONLY = (
    "import csv, sys\n"
    "with open(sys.argv[1], newline='') as f:\n"
    "    for _ in csv.reader(f):\n"
    "        pass\n"
)
_CLI = "import sys; from proactive_async.cli import main; sys.exit(main())"


def write_csv(path: Path, count: int) -> None:
    with path.open("w") as handle:
        handle.write("phone,name\n")
        for i, phone in enumerate(brazil_mobiles(count)):
            handle.write(f"{phone},Cliente {i}\n")


def peak_rss_mb(argv: list[str], *, env: dict[str, str], timeout: float) -> tuple[float, int, str]:
    """Peak RSS (MB) and exit code of ``argv``, run as the only child of a wrapper."""
    done = subprocess.run(
        [PYTHON, "-c", _WRAPPER, *argv],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=timeout,
        check=False,
    )
    for line in done.stdout.splitlines():
        if line.startswith("MAXRSS_KB"):
            _, kb, code = line.split()
            return int(kb) / 1024, int(code), done.stderr[-500:]
    raise RuntimeError(f"no MAXRSS from wrapper: {done.stdout[-300:]} {done.stderr[-300:]}")


def cli_args(help_text: str, csv_path: Path, url: str, tmp: Path, tag: str) -> list[str]:
    """The campaign command line; options the CLI may not have are added only if it lists them."""
    args = [
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
        "--journal",
        str(tmp / f"{tag}.db"),
        "--report",
        str(tmp / f"{tag}.jsonl"),
        "--no-progress",
    ]
    if "--default-region" in help_text:
        args += ["--default-region", "BR"]
    # The simulator has no limit here; adaptive probing would only slow the run down.
    if "--no-adaptive" in help_text:
        args.append("--no-adaptive")
    return args


def count_lines(path: Path) -> int:
    if not path.exists():
        return -1
    with path.open("rb") as handle:
        return sum(1 for _ in handle)


def run(quick: bool = False) -> dict[str, Any]:
    """Run benchmark 4; returns its rows and the measured figures."""
    pin_client()
    sizes = (1_000, 10_000) if quick else (100_000, 1_000_000)
    labels = ("small", "large") if quick else ("100k", "1M")
    missing = sdk_missing("proactive_async.cli:main", "proactive_async.simulator:main")
    if missing is not None:
        return {
            "name": NAME,
            "rows": [
                row(f"{NAME} {labels[1]}", target=f"<= {LIMIT_MB} MB", skipped=missing),
                row(f"{NAME} growth {labels[0]}->{labels[1]}", target="<= 64 MB", skipped=missing),
            ],
            "details": {},
        }
    env = {**os.environ, "PROACTIVE_TOKEN": TOKEN, "PYTHONPATH": str(ROOT)}
    help_text = subprocess.run(
        [PYTHON, "-c", _CLI, "campaign", "--help"],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        check=False,
    ).stdout
    details: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        for size, label in zip(sizes, labels, strict=True):
            csv_path = tmp / f"{label}.csv"
            write_csv(csv_path, size)
            base_rss, _, _ = peak_rss_mb(
                [*client_prefix(), PYTHON, "-c", CSV_READ_ONLY, str(csv_path)], env=env, timeout=600
            )
            with Server(simulator_argv()) as sim:
                start = time.monotonic()
                rss, code, err = peak_rss_mb(
                    cli_args(help_text, csv_path, sim.url, tmp, label), env=env, timeout=900
                )
                took = time.monotonic() - start
            lines = count_lines(tmp / f"{label}.jsonl")
            details[label] = {
                "records": size,
                "cli_peak_rss_mb": round(rss, 1),
                "baseline_peak_rss_mb": round(base_rss, 1),
                "exit_code": code,
                "seconds": round(took, 1),
                "report_lines": lines,
                "stderr_tail": err if code else "",
            }
            for name in (f"{label}.db", f"{label}.jsonl", f"{label}.csv"):
                (tmp / name).unlink(missing_ok=True)
    small, large = details[labels[0]], details[labels[1]]
    complete = all(
        d["report_lines"] == d["records"] and d["exit_code"] == 0 for d in details.values()
    )
    note = (
        "every record reported"
        if complete
        else f"exit {large['exit_code']}, {large['report_lines']} of {large['records']} reported"
    )
    return {
        "name": NAME,
        "rows": peak_rss_rows(
            NAME,
            labels,
            small,
            large,
            key="cli_peak_rss_mb",
            complete=complete,
            note=note,
            limit_mb=LIMIT_MB,
        ),
        "details": details,
    }


def peak_rss_rows(
    name: str,
    labels: tuple[str, str],
    small: dict[str, Any],
    large: dict[str, Any],
    *,
    key: str,
    complete: bool,
    note: str,
    limit_mb: int = 120,
) -> list[dict[str, Any]]:
    """The two rows of a peak-RSS benchmark (4, 12): the large file against its target
    of ``limit_mb``, and the growth from the small one to it against 64 MB; ``key`` names
    the measured figure in ``small`` and ``large`` (``baseline_peak_rss_mb`` beside it)."""
    growth = large[key] - small[key]
    base_growth = large["baseline_peak_rss_mb"] - small["baseline_peak_rss_mb"]
    return [
        row(
            f"{name} {labels[1]} records",
            sdk=f"{large[key]:.1f} MB",
            baseline=f"{large['baseline_peak_rss_mb']:.1f} MB (csv read only)",
            ratio=large[key] / large["baseline_peak_rss_mb"],
            target=f"<= {limit_mb} MB",
            ok=large[key] <= limit_mb and complete,
            note=f"{note}; {large['seconds']} s",
        ),
        row(
            f"{name} growth {labels[0]}->{labels[1]}",
            sdk=f"{growth:+.1f} MB",
            baseline=f"{base_growth:+.1f} MB (csv read only)",
            target="<= 64 MB",
            ok=growth <= 64 and complete,
            note=f"{labels[0]}: {small[key]:.1f} MB in {small['seconds']} s",
        ),
    ]


if __name__ == "__main__":
    import json

    print(json.dumps(run("--quick" in sys.argv), indent=2))
