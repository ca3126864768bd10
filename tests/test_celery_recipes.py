"""The Celery recipe (docs/recipes/celery_tasks.py) on a real prefork worker and Redis.

Celery cannot share an environment with arq: this runs in ``.venv-celery`` only.
"""

from __future__ import annotations

import asyncio
import importlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

celery = pytest.importorskip("celery")

import redis  # noqa: E402
from test_cli import ThreadedSimulator  # noqa: E402

from proactive_async import CampaignOptions, ProactiveConversationRequest  # noqa: E402
from proactive_async.distributed import campaign_status, plan_campaign  # noqa: E402
from proactive_async.simulator import Faults, SimulatorConfig  # noqa: E402

RECIPES = Path(__file__).resolve().parent.parent / "docs" / "recipes"
TOKEN = "celery-recipes-token-" + uuid.uuid4().hex
TEMPLATE = ProactiveConversationRequest(channel_id=1, bot_id=2, conversation_template_id=3)


def phone(n: int) -> str:
    return f"+55119{60000000 + n:08d}"


@pytest.fixture
def sim() -> Iterator[ThreadedSimulator]:
    with ThreadedSimulator(SimulatorConfig(token=TOKEN)) as server:
        yield server


@pytest.fixture
def recipe(
    monkeypatch: pytest.MonkeyPatch,
    no_proactive_env: None,
    sim: ThreadedSimulator,
    redis_server: Any,
    postgres_server: Any,
) -> Iterator[ModuleType]:
    """The recipe's app, imported in this process (the side that sends tasks), with the
    environment its worker gets too."""
    results = redis_server.url.rsplit("/", 1)[0] + "/1"
    for url in (redis_server.url, results):
        store = redis.Redis.from_url(url)
        store.flushdb()
        store.close()
    env = {
        "PROACTIVE_BROKER_URL": redis_server.url,
        "CELERY_RESULT_BACKEND": results,
        "PROACTIVE_BASE_URL": sim.url,
        "PROACTIVE_TOKEN": TOKEN,
        "PROACTIVE_JOURNAL": postgres_server.create_database(f"crec_{uuid.uuid4().hex[:10]}"),
        "PROACTIVE_CHANNEL_ID": "1",
        "PROACTIVE_BOT_ID": "2",
        "PROACTIVE_TEMPLATE_ID": "3",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("PROACTIVE_REDIS_URL", raising=False)
    monkeypatch.syspath_prepend(str(RECIPES))
    sys.modules.pop("celery_tasks", None)
    module = importlib.import_module("celery_tasks")
    yield module
    module.app.close()
    sys.modules.pop("celery_tasks", None)


@pytest.fixture
def worker(recipe: ModuleType, tmp_path: Path) -> Iterator[Path]:
    """``celery -A celery_tasks worker`` (prefork, two processes), run from the recipes folder;
    its log's path."""
    log = tmp_path / "worker.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "celery_tasks", "worker",
             "--concurrency", "2", "--loglevel", "INFO", "--without-gossip",
             "--without-mingle", "--without-heartbeat"],
            cwd=RECIPES,
            env=dict(os.environ),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: stopping it stops the pool
        )  # fmt: skip
    try:
        yield log
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def test_the_users_task_sends_one_message_and_may_not_be_redelivered(
    recipe: ModuleType, worker: Path, sim: ThreadedSimulator
) -> None:
    task = recipe.send_order_confirmation
    assert not task.acks_late  # a redelivered single send could send twice
    ids = task.delay(phone(1), "Ana", "A-1001").get(timeout=60)
    assert isinstance(ids, list) and len(ids) == 1, worker.read_text()[-3000:]
    assert sim.audit.snapshot() == {phone(1): 1}


def test_the_users_task_retries_later_while_the_api_is_down_and_then_sends_once(
    recipe: ModuleType, worker: Path, sim: ThreadedSimulator
) -> None:
    # Seeded draws: the first five calls (the SDK's five attempts) answer 503, so the task
    # itself is retried, after the API's Retry-After; its third call goes through.
    sim.configure(
        SimulatorConfig(
            token=TOKEN,
            retry_after_style="fractional",
            faults=Faults(rate_503=0.8, retry_after=0.05, seed=3),
        )
    )
    ids = recipe.send_order_confirmation.delay(phone(3), "Ana", "A-1003").get(timeout=60)
    assert isinstance(ids, list) and len(ids) == 1
    assert "retry: Retry in" in worker.read_text()
    assert sim.audit.snapshot() == {phone(3): 1}


def test_the_users_task_never_retries_a_send_that_may_have_gone_out(
    recipe: ModuleType, worker: Path, sim: ThreadedSimulator
) -> None:
    sim.configure(SimulatorConfig(token=TOKEN, faults=Faults(rate_500=1.0)))
    result = recipe.send_order_confirmation.delay(phone(4), "Ana", "A-1004")
    with pytest.raises(Exception, match="500"):
        result.get(timeout=60)
    assert "retry: Retry in" not in worker.read_text()
    assert sim.audit.snapshot() == {phone(4): 1}  # processed once: the API did create it


def test_the_sdks_single_call_task_runs_on_the_users_app(
    recipe: ModuleType, worker: Path, sim: ThreadedSimulator
) -> None:
    from proactive_async.celery import SINGLE_CALL_TASK

    fields = {"channel_id": 1, "bot_id": 2, "conversation_template_id": 3}
    result = recipe.app.send_task(SINGLE_CALL_TASK, kwargs={**fields, "recipient": [phone(2)]})
    ids = result.get(timeout=60)
    assert isinstance(ids, list) and len(ids) == 1, worker.read_text()[-3000:]
    assert sim.audit.snapshot() == {phone(2): 1}


def test_the_users_worker_runs_a_distributed_campaign_from_the_sdks_queue(
    recipe: ModuleType, worker: Path, sim: ThreadedSimulator, tmp_path: Path
) -> None:
    from proactive_async.celery import enqueue_slices

    location = f"{os.environ['PROACTIVE_JOURNAL']}?campaign=recipe"
    targets = tmp_path / "targets.csv"
    targets.write_text("phone,name\n" + "".join(f"{phone(n)},Ana\n" for n in range(20)))
    plan = asyncio.run(
        plan_campaign(
            location,
            template=TEMPLATE,
            targets=targets,
            options=CampaignOptions(chunk_size=4),
            job_size=4,
        )
    )
    assert enqueue_slices(recipe.app, "recipe", plan.pending_slices) == 5
    deadline = time.monotonic() + 60
    while not (status := asyncio.run(campaign_status(location))).finished:
        assert time.monotonic() < deadline, worker.read_text()[-3000:]
        time.sleep(0.2)
    assert status.counts == {"sent": 20} and status.slices_done == 5
    assert sim.audit.snapshot() == {phone(n): 1 for n in range(20)}
