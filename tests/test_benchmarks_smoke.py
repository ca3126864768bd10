"""Smoke runs of the benchmarks at their tiny ``--quick`` size: they run and report rows.

These check shape only, never timing: a benchmark is a measurement, not a test. Benchmarks
4 (CLI over CSV files), 6 (adaptive behind nginx) and 10 (arq workers on a fresh
PostgreSQL) take longer than this file's budget of ~10 s and are exercised by
``benchmarks/run.py --quick`` instead; 9 starts its own redis-server, as the session does.
13 (recovery) waits for leases to expire (20 s each), so its smoke test runs one scenario
for real (cancel) and builds every other row from figures; 14 (ceilings) runs at its quick
size. Both are marked slow.

A skipped row fails its smoke test, unless what it lacks is optional: wrk (a benchmark-only
tool), or a server ``make test`` installs (redis-server, PostgreSQL) on a developer's
machine; under CI a missing server fails too.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from _requires import unavailable

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
ROW_KEYS = {"benchmark", "sdk", "baseline", "ratio", "target", "ok", "note", "skipped"}


@pytest.fixture(autouse=True)
def _restore_affinity() -> Iterator[None]:
    """The benchmarks pin their process to core 0; the rest of the test run must not stay pinned."""
    saved = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    sys.path.insert(0, str(BENCHMARKS))
    try:
        yield
    finally:
        sys.path.remove(str(BENCHMARKS))
        if saved is not None:
            os.sched_setaffinity(0, saved)


def _quick(module_name: str) -> dict[str, Any]:
    module = importlib.import_module(module_name)
    assert (module.__doc__ or "").strip(), f"{module_name} opens with no docstring"
    result: dict[str, Any] = module.run(True)
    return result


@pytest.mark.parametrize(
    "module_name",
    [
        "bench_calls",
        "bench_campaign",
        "bench_decode",
        "bench_rate",
        "bench_latency",
        "bench_cli",
        "bench_shared",
    ],
)
def test_quick_benchmark_reports_rows_with_every_table_column(module_name: str) -> None:
    result = _quick(module_name)
    _check_rows(result)
    assert isinstance(result["details"], dict)


def _check_rows(result: dict[str, Any]) -> None:
    """Every row has the table's columns and is judged or says why not; a row skipped for
    any reason but a missing optional tool or server fails (see ``_check_skips``)."""
    assert result["name"] and result["rows"], "a benchmark must report at least one row"
    for row in result["rows"]:
        assert set(row) == ROW_KEYS
        assert row["benchmark"] and row["target"]
        assert row["ok"] is not None or row["skipped"] or row["target"] == "(info)"
    _check_skips(result["rows"])


OPTIONAL_TOOLS = ("wrk not installed",)
"""Skip reasons a smoke run takes as they are: wrk is a benchmark-only tool that
``benchmarks/setup.sh`` installs and ``make test`` does not."""
SERVERS = ("redis-server not installed", "PostgreSQL not installed")
"""Servers ``make test`` installs (``scripts/ensure-servers.sh``): a row skipped without
one skips the test on a developer's machine and fails it under CI, as the server fixtures
do."""


def _check_skips(rows: list[dict[str, Any]]) -> None:
    skipped = {row["benchmark"]: row["skipped"] for row in rows if row["skipped"]}
    accepted = OPTIONAL_TOOLS + SERVERS
    wrong = {name: why for name, why in skipped.items() if not any(a in why for a in accepted)}
    assert not wrong, f"rows that must run in the smoke were skipped: {wrong}"
    for why in skipped.values():
        if any(server in why for server in SERVERS):
            unavailable(why)


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_recovery_benchmark_runs_a_cancel_and_reports_a_row_per_scenario() -> None:
    bench = importlib.import_module("bench_recovery")
    result = bench.run(True, only=["cancel"])
    _check_rows(result)
    assert len(result["rows"]) == 1 and "cancel" in result["rows"][0]["benchmark"]
    assert result["details"]["results"]["cancel"]["processed_twice"] == 0
    checked = {"missing": 0, "processed_twice": 0, "sent_not_processed_once": 0}
    figures = {"outcomes": {"sent": 10}, "failed_but_processed": 0, "fault_after": 1.0, **checked}
    figures |= {"ok": True, "seconds": 30.0, "woken_sent": 0, "workers_exited": []}
    figures |= {"tracebacks": 0, "after_answer": 3, "during_cancel": 5, "cancel_seconds": 0.5}
    rows = bench.recovery_rows({kind: figures for kind in bench.SCENARIOS}, "10 records")
    assert len(rows) == len(bench.SCENARIOS) and all(r["ok"] is True for r in rows)
    late = bench.recovery_rows({"kill9": figures | {"seconds": 91.0}}, "10 records")
    assert late[0]["ok"] is False


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_ceilings_benchmark_reports_postgresql_and_redis_rows() -> None:
    result = importlib.import_module("bench_recovery").run_ceilings(True)
    _check_rows(result)
    names = " ".join(r["benchmark"] for r in result["rows"])
    assert "PostgreSQL" in names and "Redis" in names and len(result["rows"]) == 4


def test_results_table_has_a_line_per_row_and_marks_skips() -> None:
    run = importlib.import_module("run")
    common = importlib.import_module("_common")
    results = [
        {
            "rows": [
                common.row("a", sdk="1", baseline="2", ratio=0.5, target=">= 0.9x", ok=False),
                common.row("b", target="t", skipped="not available: ImportError: x"),
            ]
        }
    ]
    lines = run.table(results).splitlines()
    assert len(lines) == 4
    assert "MISS" in lines[2] and "0.50x" in lines[2]
    assert "skipped" in lines[3] and "not available" in lines[3]


def test_a_quick_run_without_output_leaves_the_committed_results_alone(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    run = importlib.import_module("run")
    committed = (BENCHMARKS / "results.json").read_bytes()
    monkeypatch.setattr(run, "run_one", lambda number, quick: {"number": number, "rows": []})
    assert run.main(["--quick", "--only", "3", "--no-setup"]) == 0
    assert (BENCHMARKS / "results.json").read_bytes() == committed
    written = Path(capsys.readouterr().err.split("results: ")[-1].strip())
    try:
        assert written.parent != BENCHMARKS and b'"quick": true' in written.read_bytes()
    finally:
        written.unlink()
    assert run.output_default(False) == str(BENCHMARKS / "results.json")


def test_a_skipped_row_fails_the_smoke_unless_what_it_lacks_is_optional(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    row = importlib.import_module("_common").row
    _check_skips([row("a", target="t", skipped="wrk not installed (benchmarks/setup.sh)")])
    with pytest.raises(AssertionError, match="must run in the smoke"):
        _check_skips([row("b", target="t", skipped="uvloop not installed: No module")])
    with pytest.raises(AssertionError, match="must run in the smoke"):
        _check_skips([row("c", target="t", skipped="error: RuntimeError: boom")])
    server = row("d", target="t", skipped="skipped: PostgreSQL not installed (...)")
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception):
        _check_skips([server])
    monkeypatch.setenv("CI", "1")
    with pytest.raises(pytest.fail.Exception):
        _check_skips([server])


def test_max_window_counts_the_busiest_second() -> None:
    bench_rate = importlib.import_module("bench_rate")
    assert bench_rate.max_window([0.0, 0.1, 0.5, 0.99, 1.0, 1.5, 1.6, 1.7]) == 5


def test_a_missing_wrk_marks_its_row_skipped_not_failed(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """make test passes on a machine without wrk: its row says skipped, with the reason."""
    monkeypatch.setenv("PATH", str(tmp_path))  # no wrk (nor taskset) on this PATH
    result = _quick("bench_calls")
    ceiling_name = importlib.import_module("bench_calls").CEILING
    ceiling = [r for r in result["rows"] if r["benchmark"] == ceiling_name]
    assert len(ceiling) == 1
    assert ceiling[0]["ok"] is None
    assert "not installed" in (ceiling[0]["skipped"] or "")
