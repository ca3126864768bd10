"""Two CLI campaigns at once on one channel share one limit through Redis (issue 9)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import redis
from test_cli import TOKEN, ThreadedSimulator, phones, write_csv
from test_cli_hardening import TEMPLATE_FLAGS

from proactive_async.simulator import SimulatorConfig


def start_cli(targets: Path, url: str, redis_url: str, cwd: Path) -> subprocess.Popen[str]:
    env = {"PROACTIVE_TOKEN": TOKEN, "PATH": "/usr/bin:/bin"}
    command = [
        sys.executable, "-m", "proactive_async.cli", "campaign", str(targets), *TEMPLATE_FLAGS,
        "--base-url", url, "--no-progress", "--json-summary", "--chunk-size", "1",
        "--rate", "150", "--burst", "10", "--redis-url", redis_url,
    ]  # fmt: skip
    return subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=cwd
    )


def test_two_campaigns_on_one_channel_share_the_rate_and_meet_no_429(
    tmp_path: Path, redis_server: Any
) -> None:
    """150 targets/s in all, behind a server allowing 200/s: alone each would send 150/s."""
    first = write_csv(tmp_path / "a.csv", [f"{p},Ana" for p in phones(150)])
    second = write_csv(tmp_path / "b.csv", [f"{p},Bia" for p in phones(150, start=500)])
    with ThreadedSimulator(SimulatorConfig(token=TOKEN, rate_limit=200, burst=20)) as sim:
        started = time.monotonic()
        runs = [start_cli(path, sim.url, redis_server.url, tmp_path) for path in (first, second)]
        outputs = [run.communicate(timeout=120) for run in runs]
        elapsed = time.monotonic() - started
    for run, (out, err) in zip(runs, outputs, strict=True):
        assert run.returncode == 0, err
        summary = json.loads(out.splitlines()[-1])
        assert summary["counts"]["sent"] == 150
        assert summary["throttled"] == 0  # together they stayed under the server's 200/s
    assert elapsed >= (300 - 10) / 150 * 0.9  # one budget: not 2 x 150/s
    store = redis.Redis.from_url(redis_server.url)
    try:
        keys = [key.decode() for key in store.scan_iter("proactive-async:limit:*")]
        assert keys == ["proactive-async:limit:127.0.0.1:channel:1"]
        stored = json.dumps({k.decode(): v.decode() for k, v in store.hgetall(keys[0]).items()})
        assert TOKEN not in stored
    finally:
        store.close()
