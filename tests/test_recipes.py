"""The recipes of docs/recipes, each run the way its framework runs it, against the simulator.

FastAPI through its TestClient with the lifespan entered, Flask and Django through their test
clients, and the arq worker settings by arq's own command in burst mode on a real Redis, with a
campaign planned into a real PostgreSQL. (The Celery recipe: ``test_celery_recipes.py``.)
"""

from __future__ import annotations

import asyncio
import importlib
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import redis
from test_cli import ThreadedSimulator

from proactive_async import CampaignOptions, ProactiveConversationRequest, default_limit_key
from proactive_async.simulator import Faults, SimulatorConfig

RECIPES = Path(__file__).resolve().parent.parent / "docs" / "recipes"
TOKEN = "recipes-token-" + uuid.uuid4().hex
TEMPLATE = ProactiveConversationRequest(channel_id=1, bot_id=2, conversation_template_id=3)
# The simulator writes Retry-After as "0.05", not rounded up to "1": the SDK's retries of
# a 429 stay short.
CONFIG = SimulatorConfig(token=TOKEN, retry_after_style="fractional")
Load = Callable[[str], ModuleType]


@pytest.fixture
def sim() -> Iterator[ThreadedSimulator]:
    with ThreadedSimulator(CONFIG) as server:
        yield server


@pytest.fixture
def recipe_env(
    monkeypatch: pytest.MonkeyPatch, no_proactive_env: None, sim: ThreadedSimulator
) -> None:
    """The environment every recipe reads: the API, its token, the message to send."""
    monkeypatch.delenv("PROACTIVE_REDIS_URL", raising=False)
    monkeypatch.delenv("PROACTIVE_RATE", raising=False)
    monkeypatch.setenv("PROACTIVE_BASE_URL", sim.url)
    monkeypatch.setenv("PROACTIVE_TOKEN", TOKEN)
    monkeypatch.setenv("PROACTIVE_CHANNEL_ID", "1")
    monkeypatch.setenv("PROACTIVE_BOT_ID", "2")
    monkeypatch.setenv("PROACTIVE_TEMPLATE_ID", "3")


@pytest.fixture
def load_recipe(monkeypatch: pytest.MonkeyPatch, recipe_env: None) -> Iterator[Load]:
    """Import a recipe afresh (it reads the environment when imported), as its runner would."""
    monkeypatch.syspath_prepend(str(RECIPES))
    loaded = {"web_common"}

    def load(name: str) -> ModuleType:
        for stale in (name, "web_common"):
            sys.modules.pop(stale, None)
        loaded.add(name)
        return importlib.import_module(name)

    yield load
    for name in loaded:
        sys.modules.pop(name, None)


@pytest.fixture
def flushed_redis(redis_server: Any) -> str:
    store = redis.Redis.from_url(redis_server.url)
    store.flushdb()
    store.close()
    url: str = redis_server.url
    return url


def phone(n: int) -> str:
    return f"+55119{80000000 + n:08d}"


class Spy:
    """What a recipe built of one SDK class: every instance, and which were closed."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, module: ModuleType, name: str) -> None:
        self.made: list[Any] = []
        self.closed: list[Any] = []
        spy = self
        base: type[Any] = getattr(module, name)

        class Recording(base):  # type: ignore[valid-type, misc]
            def __init__(self, *args: Any, **kwargs: Any) -> None:
                super().__init__(*args, **kwargs)
                spy.made.append(self)

            async def aclose(self) -> None:
                spy.closed.append(self)
                await super().aclose()

        monkeypatch.setattr(module, name, Recording)


# -- FastAPI ------------------------------------------------------------------------------


def test_fastapi_lifespan_opens_one_client_for_every_request_and_closes_it_at_shutdown(
    load_recipe: Load, sim: ThreadedSimulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fastapi.testclient import TestClient

    recipe = load_recipe("fastapi_app")
    clients = Spy(monkeypatch, recipe, "AsyncClient")
    with TestClient(recipe.app) as http:
        assert len(clients.made) == 1 and not clients.closed  # made at start-up, not per call
        answers = [
            http.post("/notifications", json={"recipient": phone(n), "variables": {"name": "Ana"}})
            for n in range(3)
        ]
        assert len(clients.made) == 1
    assert [answer.status_code for answer in answers] == [201] * 3
    assert all(len(answer.json()["conversation_ids"]) == 1 for answer in answers)
    assert clients.closed == clients.made and clients.made[0].closed
    assert clients.made[0].rate_limit is None  # no PROACTIVE_REDIS_URL: no shared limit
    assert sim.audit.snapshot() == {phone(n): 1 for n in range(3)}


def test_fastapi_workers_share_one_rate_limit_through_redis_and_close_it_at_shutdown(
    load_recipe: Load,
    sim: ThreadedSimulator,
    flushed_redis: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two lifespans, as two uvicorn workers have: 10 calls at 20/s for both take 0.45 s,
    where a limit of their own each would let them finish in 0.2 s."""
    from fastapi.testclient import TestClient

    monkeypatch.setenv("PROACTIVE_REDIS_URL", flushed_redis)
    monkeypatch.setenv("PROACTIVE_RATE", "20")
    recipe = load_recipe("fastapi_app")
    limits = Spy(monkeypatch, recipe, "SharedRateLimit")
    clients = Spy(monkeypatch, recipe, "AsyncClient")
    both_up = threading.Barrier(2)

    def worker(first: int) -> list[int]:
        with TestClient(recipe.app) as http:
            both_up.wait(10)
            return [
                http.post("/notifications", json={"recipient": phone(n)}).status_code
                for n in range(first, first + 5)
            ]

    started = time.monotonic()
    with ThreadPoolExecutor(2) as pool:
        statuses = [status for done in pool.map(worker, (0, 5)) for status in done]
    elapsed = time.monotonic() - started
    assert statuses == [201] * 10
    assert elapsed >= 0.4, f"the workers did not share one budget: {elapsed:.2f} s"
    assert len(limits.made) == len(clients.made) == 2
    assert {limit.key for limit in limits.made} == {default_limit_key(sim.url, 1)}
    assert [client.rate_limit for client in clients.made] == limits.made
    assert sorted(map(id, limits.closed)) == sorted(map(id, limits.made))
    assert all(client.closed for client in clients.made)
    store = redis.Redis.from_url(flushed_redis)
    try:
        assert store.exists(default_limit_key(sim.url, 1))
    finally:
        store.close()
    assert len(sim.audit.snapshot()) == 10


@pytest.mark.parametrize(
    ("config", "recipient", "status", "processed"),
    [
        (Faults(rate_500=1.0), phone(1), 502, True),
        (Faults(drop_after=1.0), phone(1), 502, True),
        (Faults(rate_429=1.0, retry_after=0.05), phone(1), 429, False),
        (Faults(rate_503=1.0, retry_after=0.05), phone(1), 503, False),
        (Faults(), "12", 422, False),
    ],
    ids=["500", "dropped-after-processing", "429", "503", "invalid-number"],
)
def test_fastapi_maps_each_sdk_error_to_an_http_answer(
    load_recipe: Load,
    sim: ThreadedSimulator,
    config: Faults,
    recipient: str,
    status: int,
    processed: bool,
) -> None:
    from fastapi.testclient import TestClient

    sim.configure(SimulatorConfig(token=TOKEN, retry_after_style="fractional", faults=config))
    recipe = load_recipe("fastapi_app")
    with TestClient(recipe.app) as http:
        answer = http.post("/notifications", json={"recipient": recipient})
    body = answer.json()
    assert answer.status_code == status, body
    assert body["may_have_been_processed"] is processed
    assert ("note" in body) is processed  # "do not resend blindly"
    assert sim.audit.snapshot() == ({recipient: 1} if processed else {})
    if status == 429:
        assert answer.headers["Retry-After"] == "1"  # the API's 0.05 s, in whole seconds
    if status == 422:
        assert "recipient[0]" in body["errors"]
    assert TOKEN not in answer.text


def test_fastapi_answers_502_not_sent_when_the_api_refuses_the_token(
    load_recipe: Load, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fastapi.testclient import TestClient

    monkeypatch.setenv("PROACTIVE_TOKEN", "a-wrong-token")
    recipe = load_recipe("fastapi_app")
    with TestClient(recipe.app) as http:
        answer = http.post("/notifications", json={"recipient": phone(1)})
    assert answer.status_code == 502
    assert answer.json()["error"] == "AuthenticationError"
    assert answer.json()["may_have_been_processed"] is False


# -- Flask --------------------------------------------------------------------------------


@pytest.fixture
def flask_recipe(load_recipe: Load) -> Iterator[ModuleType]:
    recipe = load_recipe("flask_app")
    yield recipe
    recipe.client.close()


def test_flask_view_sends_with_the_module_client_shared_by_threads(
    flask_recipe: ModuleType, sim: ThreadedSimulator
) -> None:
    client = flask_recipe.client

    def post(n: int) -> tuple[int, Any]:
        answer = flask_recipe.app.test_client().post(
            "/notifications", json={"recipient": phone(n), "variables": {"name": "Ana"}}
        )
        return answer.status_code, answer.get_json()

    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(post, range(8)))
    assert [status for status, _ in answers] == [201] * 8
    assert all(len(body["conversation_ids"]) == 1 for _, body in answers)
    assert flask_recipe.client is client and not client.closed
    assert sim.audit.snapshot() == {phone(n): 1 for n in range(8)}


def test_flask_view_refuses_a_bad_body_and_maps_an_ambiguous_failure_to_502(
    flask_recipe: ModuleType, sim: ThreadedSimulator
) -> None:
    http = flask_recipe.app.test_client()
    assert http.post("/notifications", json=["+5511999990000"]).status_code == 400
    sim.configure(SimulatorConfig(token=TOKEN, faults=Faults(rate_500=1.0)))
    answer = http.post("/notifications", json={"recipient": phone(1)})
    body = answer.get_json()
    assert answer.status_code == 502 and body["may_have_been_processed"] is True
    assert "note" in body and TOKEN not in answer.get_data(as_text=True)
    assert sim.audit.snapshot() == {phone(1): 1}


# -- Django -------------------------------------------------------------------------------

JSON = "application/json"


@pytest.fixture
def django_recipe(load_recipe: Load) -> Iterator[ModuleType]:
    from django.urls import clear_url_caches

    recipe = load_recipe("django_app")
    clear_url_caches()  # the URLconf is the module just imported, not an earlier copy
    yield recipe
    recipe.client.close()
    clear_url_caches()


def test_django_view_sends_with_the_client_built_once_from_the_settings(
    django_recipe: ModuleType, sim: ThreadedSimulator
) -> None:
    from django.test import Client as DjangoClient

    client = django_recipe.client
    assert client.base_url == sim.url and client.secrets == (TOKEN,)  # from PROACTIVE_*

    def post(n: int) -> tuple[int, Any]:
        answer = DjangoClient().post(
            "/notifications",
            {"recipient": phone(n), "variables": {"name": "Ana"}},
            content_type=JSON,
        )
        return answer.status_code, answer.json()

    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(post, range(8)))
    assert [status for status, _ in answers] == [201] * 8
    assert all(len(body["conversation_ids"]) == 1 for _, body in answers)
    assert django_recipe.client is client and not client.closed
    assert sim.audit.snapshot() == {phone(n): 1 for n in range(8)}


def test_django_view_refuses_a_bad_body_and_maps_sdk_errors_to_answers(
    django_recipe: ModuleType, sim: ThreadedSimulator
) -> None:
    from django.test import Client as DjangoClient

    http = DjangoClient()
    refused = http.post("/notifications", ["+5511999990000"], content_type=JSON)
    assert refused.status_code == 400
    assert http.get("/notifications").status_code == 405
    sim.configure(SimulatorConfig(token=TOKEN, faults=Faults(rate_500=1.0)))
    answer = http.post("/notifications", {"recipient": phone(1)}, content_type=JSON)
    body = answer.json()
    assert answer.status_code == 502 and body["may_have_been_processed"] is True
    assert "note" in body and "traceId=" in body["detail"] and TOKEN not in answer.text
    faults = Faults(rate_429=1.0, retry_after=0.05)
    sim.configure(SimulatorConfig(token=TOKEN, retry_after_style="fractional", faults=faults))
    throttled = http.post("/notifications", {"recipient": phone(2)}, content_type=JSON)
    assert throttled.status_code == 429 and throttled.headers["Retry-After"] == "1"
    assert sim.audit.snapshot() == {phone(1): 1}


# -- arq ----------------------------------------------------------------------------------


async def test_arq_worker_settings_run_the_users_job_and_a_campaigns_slices(
    load_recipe: Load,
    sim: ThreadedSimulator,
    flushed_redis: str,
    postgres_server: Any,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    """``arq arq_settings.WorkerSettings --burst``: arq's own command, as a user runs it."""
    pytest.importorskip("arq")  # not in .venv-celery: celery and arq cannot share one
    from arq import create_pool
    from arq.connections import RedisSettings

    from proactive_async.arq import enqueue_slices
    from proactive_async.distributed import campaign_status, plan_campaign

    dsn = postgres_server.create_database(f"recipes_{uuid.uuid4().hex[:10]}")
    monkeypatch.setenv("PROACTIVE_JOURNAL", dsn)
    monkeypatch.setenv("PROACTIVE_REDIS_URL", flushed_redis)
    targets = tmp_path / "targets.csv"
    targets.write_text("phone,name\n" + "".join(f"{phone(n)},Ana\n" for n in range(12)))
    plan = await plan_campaign(
        f"{dsn}?campaign=recipe",
        template=TEMPLATE,
        targets=targets,
        options=CampaignOptions(chunk_size=5),
        job_size=5,
    )
    assert plan.pending_slices == [1, 2, 3]
    assert await enqueue_slices(flushed_redis, "recipe", plan.pending_slices) == 3
    pool = await create_pool(RedisSettings.from_dsn(flushed_redis))
    try:
        job = await pool.enqueue_job("send_welcome", phone(99), "Bo")
        assert job is not None
        log = tmp_path / "worker.log"
        with log.open("wb") as out:
            worker = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "arq", "arq_settings.WorkerSettings", "--burst",
                cwd=RECIPES, env=dict(os.environ), stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip
            try:
                returncode = await asyncio.wait_for(worker.wait(), 60)
            finally:
                if worker.returncode is None:
                    worker.kill()
                    await worker.wait()
        assert returncode == 0, log.read_text()[-3000:]
        welcome = await job.result(timeout=5)
    finally:
        await pool.aclose()
    assert isinstance(welcome, list) and len(welcome) == 1
    status = await campaign_status(f"{dsn}?campaign=recipe")
    assert status.finished and status.counts == {"sent": 12}
    assert sim.audit.snapshot() == {phone(n): 1 for n in [*range(12), 99]}
    assert log.read_text().count("proactive_async.send_slice ● 'done'") == 3


def test_arq_worker_settings_name_the_sdk_job_as_the_sdk_enqueues_it(load_recipe: Load) -> None:
    pytest.importorskip("arq")
    from proactive_async import arq as proactive

    recipe = load_recipe("arq_settings")
    functions = {function.name: function for function in recipe.WorkerSettings.functions}
    assert functions[proactive.JOB_NAME].coroutine is proactive.send_slice_job
    assert functions["send_welcome"].max_tries == 1  # a single send never runs twice


def test_the_workers_client_is_found_in_ctx_or_the_missing_startup_is_named() -> None:
    pytest.importorskip("arq")
    from proactive_async import AsyncClient
    from proactive_async import arq as proactive

    client = AsyncClient("http://127.0.0.1:9", "t")
    assert proactive.client({"proactive_async.client": client}) is client
    with pytest.raises(RuntimeError, match="on_startup"):
        proactive.client({})
