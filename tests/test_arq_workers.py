"""A distributed campaign on real arq workers (subprocesses), with faults and a kill -9.

The CLI enqueues; three ``proactive-async worker`` processes send; one is killed with
SIGKILL mid-run and a replacement started. Every record ends with exactly one outcome,
the server processed no target twice, ``sent`` records were processed once, ``failed``
ones never, and neither PostgreSQL nor Redis holds the token.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import redis
from _distributed_checks import (
    assert_exactly_once,
    assert_no_token_stored,
    cli,
    status,
    worker_faults,
)
from test_cli import ThreadedSimulator

from proactive_async.simulator import SimulatorConfig

TOKEN = "arq-token-" + uuid.uuid4().hex
FAULTS = worker_faults(11)


def start_worker(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "proactive_async.cli", "worker", "--concurrency", "8"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


@pytest.fixture
def environment(postgres_server: Any, redis_server: Any, tmp_path: Path) -> dict[str, str]:
    dsn = postgres_server.create_database(f"arq_{uuid.uuid4().hex[:10]}")
    store = redis.Redis.from_url(redis_server.url)
    store.flushdb()
    store.close()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROACTIVE_")}
    env |= {
        "PROACTIVE_JOURNAL": dsn,
        "PROACTIVE_REDIS_URL": redis_server.url,
        "PROACTIVE_TOKEN": TOKEN,
        "PROACTIVE_JOB_TIMEOUT": "5",  # a killed worker's job runs again after 15 s
    }
    return env


@pytest.mark.slow
def test_three_workers_and_a_kill_9_give_every_record_one_outcome_and_no_duplicate(
    environment: dict[str, str], tmp_path: Path
) -> None:
    # 3,000 in make test; the 20,000 with PROACTIVE_KILL9_RECORDS=20000.
    records = int(os.environ.get("PROACTIVE_KILL9_RECORDS", "3000"))
    targets = tmp_path / "targets.csv"
    targets.write_text("phone,name\n" + "".join(f"+55119{i:08d},Ana\n" for i in range(records)))
    env = environment
    with ThreadedSimulator(SimulatorConfig(token=TOKEN, faults=FAULTS)) as sim:
        env = env | {"PROACTIVE_BASE_URL": sim.url}
        enqueued = cli(
            "enqueue", str(targets), "--channel-id", "1", "--bot-id", "2", "--template-id", "3",
            "--chunk-size", "5", "--campaign", "kill9", "--rate", "1500", "--burst", "50",
            env=env,
        )  # fmt: skip
        assert enqueued.returncode == 0, enqueued.stderr
        plan = json.loads(enqueued.stdout)
        assert plan["records"] == records and plan["queued"] == plan["chunks"] == records // 5
        assert TOKEN not in enqueued.stdout + enqueued.stderr
        logs = [tmp_path / f"worker-{n}.log" for n in range(4)]
        workers = [start_worker(env, logs[n]) for n in range(3)]
        try:
            deadline = time.monotonic() + 60
            while status("kill9", env)["chunks_done"] < records // 20:
                assert time.monotonic() < deadline, "no progress"
                time.sleep(0.2)
            workers[0].send_signal(signal.SIGKILL)
            workers[0].wait()
            workers.append(start_worker(env, logs[3]))
            deadline = time.monotonic() + 150 + records / 50
            while not (final := status("kill9", env))["finished"]:
                assert time.monotonic() < deadline, f"not finished: {final}"
                time.sleep(0.5)
        finally:
            for worker in workers:
                if worker.poll() is None:
                    worker.send_signal(signal.SIGTERM)
            for worker in workers:
                try:
                    worker.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    worker.kill()
        processed = sim.audit.snapshot()
    assert_exactly_once(env["PROACTIVE_JOURNAL"], "kill9", processed, final["counts"], records)
    assert final["counts"].get("sent", 0) > records * 0.8
    assert_no_token_stored(env["PROACTIVE_JOURNAL"], env["PROACTIVE_REDIS_URL"], TOKEN)


def test_an_enqueue_that_cannot_reach_redis_says_so_and_a_second_one_queues_the_plan(
    environment: dict[str, str], tmp_path: Path
) -> None:
    targets = tmp_path / "targets.csv"
    targets.write_text("phone\n" + "".join(f"+55119{i:08d}\n" for i in range(120)))
    args = ("enqueue", str(targets), "--channel-id", "1", "--bot-id", "2", "--template-id", "3",
            "--campaign", "requeue")  # fmt: skip
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    refused = f"redis://:redis-pw-9@127.0.0.1:{port}/0"
    failed = cli(*args, "--redis-url", refused, env=environment)
    assert failed.returncode == 2, failed.stderr
    assert "campaign requeue is planned (120 records, 3 chunks)" in failed.stderr
    assert "run the same enqueue again with --campaign requeue" in failed.stderr
    assert "redis-pw-9" not in failed.stderr and "Traceback" not in failed.stderr
    again = cli(*args, env=environment)
    assert again.returncode == 0, again.stderr
    plan = json.loads(again.stdout)
    assert plan["already_planned"] and plan["records"] == 120 and plan["queued"] == 3
    assert status("requeue", environment)["counts"] == {"planned": 120}
