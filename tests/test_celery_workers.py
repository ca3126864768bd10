"""Distributed campaigns on real Celery workers (prefork), with faults and a kill -9.

Celery cannot share an environment with arq (redis-py < 6 against >= 6.4): these tests run
in ``.venv-celery`` (``make test`` runs them there) and are skipped where celery is absent.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

celery = pytest.importorskip("celery")

import redis  # noqa: E402
from _distributed_checks import (  # noqa: E402
    assert_exactly_once,
    assert_no_token_stored,
    cli,
    status,
    worker_faults,
)
from test_cli import ThreadedSimulator  # noqa: E402

from proactive_async.simulator import SimulatorConfig  # noqa: E402

TOKEN = "celery-token-" + uuid.uuid4().hex
FAULTS = worker_faults(5)


def test_register_adds_the_slice_task_with_late_acks_and_the_single_call_task() -> None:
    from proactive_async.celery import SINGLE_CALL_TASK, SLICE_TASK, register

    app = celery.Celery("users-own-app", broker="memory://")
    register(app)
    chunk = app.tasks[SLICE_TASK]
    assert chunk.acks_late and chunk.reject_on_worker_lost and chunk.max_retries is None
    assert not app.tasks[SINGLE_CALL_TASK].acks_late  # a redelivered single call could send twice


def start_worker(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "proactive_async.cli", "worker", "--engine", "celery",
             "--concurrency", "3"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: kill -9 takes the pool with it
        )  # fmt: skip


@pytest.mark.slow
def test_three_celery_workers_and_a_kill_9_give_every_record_one_outcome(
    postgres_server: Any, redis_server: Any, tmp_path: Path
) -> None:
    # 900 in make test; the 20,000 with PROACTIVE_KILL9_RECORDS=20000.
    records = int(os.environ.get("PROACTIVE_KILL9_RECORDS", "900"))
    targets = tmp_path / "targets.csv"
    targets.write_text("phone,name\n" + "".join(f"+55119{i:08d},Ana\n" for i in range(records)))
    store = redis.Redis.from_url(redis_server.url)
    store.flushdb()
    store.close()
    dsn = postgres_server.create_database(f"celery_{uuid.uuid4().hex[:10]}")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROACTIVE_")}
    env |= {
        "PROACTIVE_JOURNAL": dsn,
        "PROACTIVE_BROKER_URL": redis_server.url,
        "PROACTIVE_TOKEN": TOKEN,
        "PROACTIVE_VISIBILITY_TIMEOUT": "10",  # a killed worker's chunks come back in 10 s
    }
    with ThreadedSimulator(SimulatorConfig(token=TOKEN, faults=FAULTS)) as sim:
        env["PROACTIVE_BASE_URL"] = sim.url
        enqueued = cli(
            "enqueue", str(targets), "--engine", "celery", "--channel-id", "1", "--bot-id", "2",
            "--template-id", "3", "--chunk-size", "4", "--job-size", "40", "--campaign",
            "celery9", "--rate", "300", "--burst", "20", env=env,
        )  # fmt: skip
        assert enqueued.returncode == 0, enqueued.stderr
        assert json.loads(enqueued.stdout)["queued"] == -(-records // 40)
        workers = [start_worker(env, tmp_path / f"w{n}.log") for n in range(3)]
        try:
            deadline = time.monotonic() + 90
            while status("celery9", env)["slices_done"] < records // 200:
                assert time.monotonic() < deadline, (tmp_path / "w0.log").read_text()[-3000:]
                time.sleep(0.2)
            os.killpg(workers[0].pid, signal.SIGKILL)
            workers[0].wait()
            workers.append(start_worker(env, tmp_path / "w3.log"))
            killed_at = time.monotonic()
            deadline = killed_at + 90 + records / 300
            while not (final := status("celery9", env))["finished"]:
                assert time.monotonic() < deadline, f"not finished: {final}"
                time.sleep(0.5)
        finally:
            for worker in workers:
                if worker.poll() is None:
                    os.killpg(worker.pid, signal.SIGTERM)
            for worker in workers:
                try:
                    worker.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    os.killpg(worker.pid, signal.SIGKILL)
        processed = sim.audit.snapshot()
    assert_exactly_once(dsn, "celery9", processed, final["counts"], records)
    assert_no_token_stored(dsn, redis_server.url, TOKEN)
