"""Two CLI campaigns at once on one channel share one limit through Redis (issue 9)."""

from __future__ import annotations

import json
import os
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


# -- a Redis that answers with an error, or is away (issue 18) --------------------------

REDIS_PASSWORD = "hunter2-redis"


def cli_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROACTIVE_")}
    env["PROACTIVE_TOKEN"] = TOKEN
    return env


def campaign_command(targets: Path, url: str, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "proactive_async.cli", "campaign", str(targets), *TEMPLATE_FLAGS,
        "--base-url", url, "--no-progress", "--chunk-size", "1", *extra,
    ]  # fmt: skip


def test_a_redis_refusing_the_password_ends_the_campaign_with_exit_2_one_line_and_the_report(
    tmp_path: Path, own_redis: Any
) -> None:
    """Was a traceback, exit 1 and an empty report: now exit 2 in seconds, one line naming
    Redis and why (never the password), nothing sent, every record in the report."""
    store = redis.Redis.from_url(own_redis.url)
    store.config_set("requirepass", "the-right-one")
    store.close()
    redis_url = own_redis.url.replace("redis://", f"redis://:{REDIS_PASSWORD}@")
    targets = write_csv(tmp_path / "t.csv", [f"{p},Ana" for p in phones(40)])
    report = tmp_path / "report.jsonl"
    with ThreadedSimulator(SimulatorConfig(token=TOKEN)) as sim:
        started = time.monotonic()
        done = subprocess.run(
            campaign_command(
                targets, sim.url, "--rate", "100", "--redis-url", redis_url,
                "--report", str(report), "--journal", str(tmp_path / "j.db"),
            ),
            capture_output=True, text=True, env=cli_env(), cwd=tmp_path, timeout=60,
        )  # fmt: skip
        elapsed = time.monotonic() - started
        calls = sim.simulator.audit.calls
    assert done.returncode == 2, done.stderr
    assert elapsed < 15
    assert "Traceback" not in done.stderr
    assert REDIS_PASSWORD not in done.stderr + done.stdout
    errors = [line for line in done.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and "Redis" in errors[0] and "refused the password" in errors[0]
    assert calls == 0
    lines = [json.loads(line) for line in report.read_text().splitlines()]
    assert sorted(line["line"] for line in lines) == list(range(1, 41))
    assert {line["status"] for line in lines} == {"failed"}
    assert {line["error"]["kind"] for line in lines} == {"aborted"}


def calls_in_first_second(sim: ThreadedSimulator, deadline: float = 30) -> int:
    """Calls the simulator took in the second after its first one."""
    audit = sim.simulator.audit
    limit = time.monotonic() + deadline
    while audit.calls == 0:
        assert time.monotonic() < limit, "no call came"
        time.sleep(0.002)
    time.sleep(1.0)
    return audit.calls


def test_with_redis_stopped_processes_keeps_to_its_share_from_the_first_second(
    tmp_path: Path, own_redis: Any
) -> None:
    """--rate 200 --processes 2 with Redis down: 100 calls in the first second (was 201:
    the local fallback's bucket started full), and the progress lines say why."""
    own_redis.stop()
    targets = write_csv(tmp_path / "t.csv", [f"{p},Ana" for p in phones(300)])
    with ThreadedSimulator(SimulatorConfig(token=TOKEN)) as sim:
        run = subprocess.Popen(
            campaign_command(
                targets, sim.url, "--rate", "200", "--burst", "100", "--processes", "2",
                "--redis-url", own_redis.url,
            ),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cli_env(), cwd=tmp_path,
        )  # fmt: skip
        try:
            first = calls_in_first_second(sim)
        finally:
            _out, err = run.communicate(timeout=60)
    assert run.returncode == 0, err
    assert first <= 100 + 3, first
    assert "pacing locally at 100 targets/s" in err


def test_while_redis_is_away_the_progress_lines_say_the_campaign_waits_for_it(
    tmp_path: Path, own_redis: Any
) -> None:
    """No --processes: nothing is sent while Redis is stopped, and the display says why
    (it did only with -v); once Redis is back, the campaign ends."""
    own_redis.stop()
    targets = write_csv(tmp_path / "t.csv", [f"{p},Ana" for p in phones(20)])
    with ThreadedSimulator(SimulatorConfig(token=TOKEN)) as sim:
        run = subprocess.Popen(
            campaign_command(targets, sim.url, "--rate", "100", "--redis-url", own_redis.url),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cli_env(), cwd=tmp_path,
        )  # fmt: skip
        try:
            time.sleep(2.0)
            assert sim.simulator.audit.calls == 0
            own_redis.start()
            _out, err = run.communicate(timeout=60)
        finally:
            if run.poll() is None:
                run.kill()
                run.communicate()
    assert run.returncode == 0, err
    waiting = [line for line in err.splitlines() if "unreachable" in line]
    assert waiting, err
    assert "waiting for it, nothing is sent unpaced" in waiting[0]
    assert "connection refused" in waiting[0]
