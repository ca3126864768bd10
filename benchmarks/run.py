"""Run the benchmark suite: ``make bench`` (all of them), ``--only N``, ``--quick`` (smoke size).

Installs wrk and nginx first (``setup.sh``, only if missing, never fatal), runs each
``bench_<topic>.run(quick)``, writes ``benchmarks/results.json`` with the machine it ran on,
prints the markdown table and writes it to ``benchmarks/RESULTS.md``. A ``--quick`` run
leaves the committed results alone: its JSON goes to ``--output`` or a temporary file
(RESULTS.md and the README's table are written only by a full-size run of every
benchmark). A benchmark that crashes becomes a skipped row with its error; the run goes on.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import HERE, machine_info, row

from proactive_async._files import write_whole

BENCHMARKS = {
    1: "bench_calls",
    2: "bench_campaign",
    3: "bench_decode",
    4: "bench_memory",
    5: "bench_rate",
    6: "bench_adaptive",
    7: "bench_latency",
    8: "bench_cli",
    9: "bench_shared",
    10: "bench_distributed",
    11: "bench_sync",
    12: "bench_enqueue",
    13: "bench_recovery",
    # module:function, for a second benchmark kept in the module of the first.
    14: "bench_recovery:run_ceilings",
}


def run_one(number: int, quick: bool) -> dict[str, Any]:
    """One benchmark's result dict; a crash becomes a skipped row carrying the error."""
    name = BENCHMARKS[number]
    module_name, _, function = name.partition(":")
    start = time.monotonic()
    try:
        module = importlib.import_module(module_name)
        result: dict[str, Any] = getattr(module, function or "run")(quick)
    except Exception as exc:  # one broken benchmark must not lose the others' results
        traceback.print_exc()
        result = {
            "name": name,
            "details": {},
            "rows": [row(f"{number} {name}", skipped=f"error: {type(exc).__name__}: {exc}")],
        }
    result["number"] = number
    result["seconds"] = round(time.monotonic() - start, 1)
    return result


def table(results: list[dict[str, Any]]) -> str:
    """The markdown table: benchmark, SDK, baseline, ratio, target, pass/miss, note."""
    lines = [
        "| benchmark | SDK | baseline | ratio | target | result | note |",
        "|---|---|---|---|---|---|---|",
    ]
    for result in results:
        for r in result["rows"]:
            verdict = (
                "skipped"
                if r["skipped"]
                else "pass"
                if r["ok"] is True
                else "MISS"
                if r["ok"] is False
                else "info"
            )
            ratio = f"{r['ratio']:.2f}x" if r["ratio"] is not None else ""
            note = r["skipped"] or r["note"]
            cells = [r["benchmark"], r["sdk"], r["baseline"], ratio, r["target"], verdict, note]
            lines.append("| " + " | ".join(str(c).replace("|", "/") for c in cells) + " |")
    return "\n".join(lines)


def machine_line(machine: dict[str, Any]) -> str:
    return (
        f"{machine['cpu']}, {machine['cores']} cores, {machine['memory']}, Python "
        f"{machine['python']}, aiohttp {machine['aiohttp']}, msgspec {machine['msgspec']}, "
        f"{'client core 0 / server core 1' if machine['pinned'] else 'not pinned'}, "
        f"{machine['date']}"
    )


RESULTS = HERE / "results.json"
"""The committed results: written only by a full-size run (or an explicit --output)."""


def output_default(quick: bool) -> str:
    """results.json for a full-size run; a new temporary file for a --quick one, so a smoke
    run never replaces the committed figures."""
    if not quick:
        return str(RESULTS)
    handle, path = tempfile.mkstemp(prefix="bench-quick-", suffix=".json")
    os.close(handle)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run the proactive-async benchmarks.")
    parser.add_argument(
        "--only",
        type=int,
        action="append",
        choices=sorted(BENCHMARKS),
        help="run only benchmark N (repeatable)",
    )
    parser.add_argument("--quick", action="store_true", help="tiny smoke sizes")
    parser.add_argument(
        "--output",
        help=f"where the results go (default {RESULTS}; with --quick, a temporary file)",
    )
    parser.add_argument("--no-setup", action="store_true", help="skip setup.sh (wrk, nginx)")
    args = parser.parse_args(argv)
    output_path = args.output or output_default(args.quick)
    if not args.no_setup:
        subprocess.run(["bash", str(HERE / "setup.sh")], check=False)
    machine = machine_info()
    results = []
    for number in args.only or sorted(BENCHMARKS):
        print(f"-- benchmark {number}: {BENCHMARKS[number]}", file=sys.stderr, flush=True)
        results.append(run_one(number, args.quick))
    output = {"machine": machine, "quick": args.quick, "results": results}
    write_whole(output_path, (json.dumps(output, indent=2, default=str) + "\n").encode())
    print(f"results: {output_path}", file=sys.stderr)
    markdown = f"Machine: {machine_line(machine)}\n\n{table(results)}\n"
    if not args.quick and not args.only:
        write_whole(
            HERE / "RESULTS.md",
            (
                "# Latest `make bench` results\n\nWritten by `benchmarks/run.py`.\n\n" + markdown
            ).encode(),
        )
        update_readme(markdown)
    print(markdown)
    return 0


README_START = "<!-- bench-table -->"
README_END = "<!-- /bench-table -->"


def update_readme(markdown: str) -> None:
    """Put the latest table between the README's bench-table markers (if it has them)."""
    readme = HERE.parent / "README.md"
    text = readme.read_text()
    start, end = text.find(README_START), text.find(README_END)
    if start < 0 or end < start:
        return
    body = f"{README_START}\n{markdown}{README_END}"
    write_whole(readme, (text[:start] + body + text[end + len(README_END) :]).encode())


if __name__ == "__main__":
    sys.exit(main())
