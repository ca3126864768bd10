"""Distributed campaigns on real arq workers (subprocesses), with faults, kill -9, SIGSTOP,
cancel, and PostgreSQL and Redis restarts.

The CLI enqueues; ``proactive-async worker`` processes send. Every record ends with
exactly one outcome, the server processed no target twice, ``sent`` records were
processed once, ``failed`` ones never, and neither PostgreSQL nor Redis holds the token.
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
from collections.abc import Iterator
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
TEMPLATE = ("--channel-id", "1", "--bot-id", "2", "--template-id", "3")


def start_worker(env: dict[str, str], log: Path, *flags: str) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "proactive_async.cli", "worker", "--concurrency", "8", *flags],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def stop_all(workers: list[subprocess.Popen[bytes]]) -> None:
    for worker in workers:
        if worker.poll() is None:
            worker.send_signal(signal.SIGCONT)
            worker.send_signal(signal.SIGTERM)
    for worker in workers:
        try:
            worker.wait(timeout=30)
        except subprocess.TimeoutExpired:
            worker.kill()


def write_targets(path: Path, records: int) -> Path:
    path.write_text("phone,name\n" + "".join(f"+55119{i:08d},Ana\n" for i in range(records)))
    return path


def wait_for(campaign: str, env: dict[str, str], done: Any, seconds: float) -> dict[str, Any]:
    deadline = time.monotonic() + seconds
    while not done(found := status(campaign, env)):
        assert time.monotonic() < deadline, f"waited {seconds} s: {found}"
        time.sleep(0.2)
    return found


def _connections(dsn: str) -> int:
    import psycopg

    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
            " AND pid <> pg_backend_pid()"
        ).fetchone()
    return int(row[0]) if row else 0


def settled(found: dict[str, Any]) -> int:
    return sum(n for state, n in found["counts"].items() if state not in ("planned", "in_flight"))


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
    }
    return env


@pytest.fixture
def sim() -> Iterator[ThreadedSimulator]:
    with ThreadedSimulator(SimulatorConfig(token=TOKEN, faults=FAULTS)) as simulator:
        yield simulator


def enqueue(env: dict[str, str], targets: Path, campaign: str, *flags: str) -> dict[str, Any]:
    done = cli("enqueue", str(targets), *TEMPLATE, "--campaign", campaign, *flags, env=env)
    assert done.returncode == 0, done.stderr
    assert TOKEN not in done.stdout + done.stderr
    result: dict[str, Any] = json.loads(done.stdout)
    return result


@pytest.mark.slow
def test_three_workers_and_a_kill_9_finish_soon_with_no_duplicate(
    environment: dict[str, str], tmp_path: Path, sim: ThreadedSimulator
) -> None:
    # 3,000 in make test; the 20,000 with PROACTIVE_KILL9_RECORDS=20000.
    records = int(os.environ.get("PROACTIVE_KILL9_RECORDS", "3000"))
    env = environment | {"PROACTIVE_BASE_URL": sim.url}
    targets = write_targets(tmp_path / "targets.csv", records)
    plan = enqueue(
        env, targets, "kill9", "--chunk-size", "5", "--job-size", "100",
        "--rate", "400", "--burst", "50",
    )  # fmt: skip
    assert plan["records"] == records and plan["queued"] == plan["slices"] == records // 100
    logs = [tmp_path / f"worker-{n}.log" for n in range(4)]
    workers = [start_worker(env, logs[n]) for n in range(3)]
    try:
        wait_for("kill9", env, lambda s: settled(s) >= records // 5, 60)
        workers[0].send_signal(signal.SIGKILL)
        workers[0].wait()
        killed_at = time.monotonic()
        workers.append(start_worker(env, logs[3]))
        final = wait_for("kill9", env, lambda s: s["finished"], 90 + records / 400)
        finished_in = time.monotonic() - killed_at
    finally:
        stop_all(workers)
    processed = sim.audit.snapshot()
    assert_exactly_once(env["PROACTIVE_JOURNAL"], "kill9", processed, final["counts"], records)
    assert final["counts"].get("sent", 0) > records * 0.8
    assert finished_in < 90 + records / 400, finished_in
    assert_no_token_stored(env["PROACTIVE_JOURNAL"], env["PROACTIVE_REDIS_URL"], TOKEN)
    started = logs[1].read_text()
    assert "engine arq" in started and "calls in flight" in started and TOKEN not in started
    assert "slice " in started and "records/s" in started  # a line per slice finished


@pytest.mark.slow
def test_a_frozen_worker_is_taken_over_and_sends_nothing_when_it_wakes(
    environment: dict[str, str], tmp_path: Path, sim: ThreadedSimulator
) -> None:
    records = 1500
    env = environment | {"PROACTIVE_BASE_URL": sim.url}
    targets = write_targets(tmp_path / "targets.csv", records)
    enqueue(env, targets, "frozen", "--job-size", "100", "--rate", "300", "--burst", "20")
    workers = [start_worker(env, tmp_path / f"w{n}.log") for n in range(2)]
    try:
        wait_for("frozen", env, lambda s: settled(s) >= records // 5, 60)
        workers[0].send_signal(signal.SIGSTOP)  # holds its slices, its sessions, its sockets
        stopped_at = time.monotonic()
        final = wait_for("frozen", env, lambda s: s["finished"], 90)
        assert time.monotonic() - stopped_at < 90
        before = sum(sim.audit.snapshot().values())
        workers[0].send_signal(signal.SIGCONT)
        time.sleep(3)  # it wakes, finds its leases gone, and stops
        after = sum(sim.audit.snapshot().values())
    finally:
        stop_all(workers)
    assert after == before, f"the woken worker sent {after - before} more"
    processed = sim.audit.snapshot()
    assert_exactly_once(env["PROACTIVE_JOURNAL"], "frozen", processed, final["counts"], records)


@pytest.mark.slow
def test_after_cancel_only_the_calls_in_flight_finish(
    environment: dict[str, str], tmp_path: Path, sim: ThreadedSimulator
) -> None:
    records = 2000
    env = environment | {"PROACTIVE_BASE_URL": sim.url}
    targets = write_targets(tmp_path / "targets.csv", records)
    enqueue(env, targets, "cancel", "--job-size", "200", "--rate", "200", "--burst", "10")
    workers = [start_worker(env, tmp_path / f"w{n}.log") for n in range(2)]
    try:
        wait_for("cancel", env, lambda s: settled(s) >= 200, 60)
        cancelled = cli("cancel", "--campaign", "cancel", env=env)
        assert cancelled.returncode == 0, cancelled.stderr
        at_answer = sum(sim.audit.snapshot().values())
        final = wait_for("cancel", env, lambda s: s["finished"], 60)
        time.sleep(1)
        after = sum(sim.audit.snapshot().values())
    finally:
        stop_all(workers)
    assert after - at_answer <= 2 * 8, f"{after - at_answer} calls after cancel answered"
    assert final["cancelled"] and final["counts"].get("failed", 0) > records // 2
    processed = sim.audit.snapshot()
    assert_exactly_once(env["PROACTIVE_JOURNAL"], "cancel", processed, final["counts"], records)


@pytest.mark.slow
def test_workers_ride_out_a_postgresql_restart_and_a_redis_restart_empty(
    redis_server: Any, tmp_path: Path, sim: ThreadedSimulator
) -> None:
    """Nothing is restarted or enqueued again: the workers reconnect, and what the empty
    Redis lost (the queued jobs) they take from the journal."""
    from _postgres import PostgresServer, find_pg_bin
    from _redis import RedisServer, find_redis_server

    bin_dir, executable = find_pg_bin(), find_redis_server()
    assert bin_dir is not None and executable is not None
    database, queue = PostgresServer(bin_dir), RedisServer(executable, tmp_path)
    database.start()
    queue.start()
    records = 1500
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROACTIVE_")}
    env |= {
        "PROACTIVE_JOURNAL": database.create_database("restarts"),
        "PROACTIVE_REDIS_URL": queue.url,
        "PROACTIVE_TOKEN": TOKEN,
        "PROACTIVE_BASE_URL": sim.url,
    }
    targets = write_targets(tmp_path / "targets.csv", records)
    workers: list[subprocess.Popen[bytes]] = []
    try:
        enqueue(env, targets, "restarts", "--job-size", "50", "--rate", "150", "--burst", "10")
        workers = [start_worker(env, tmp_path / f"w{n}.log") for n in range(2)]
        wait_for("restarts", env, lambda s: settled(s) >= 300, 60)
        database.restart(down_for=4)
        wait_for("restarts", env, lambda s: settled(s) >= 600, 60)
        queue.stop()  # down long enough for arq's worker to give up, then back empty
        time.sleep(8)
        queue.start()
        final = wait_for("restarts", env, lambda s: s["finished"], 120)
        held = _connections(env["PROACTIVE_JOURNAL"])
        # Per worker: claims and leases, the sweep, one per slice at once (2): a worker
        # whose arq was started again after Redis left its old slices' connections open.
        assert held <= 2 * (2 + 2), f"{held} connections held by two workers"
    finally:
        stop_all(workers)
        logs = "".join(p.read_text() for p in tmp_path.glob("w*.log"))
        queue.stop()
        processed = sim.audit.snapshot()
        dsn = env["PROACTIVE_JOURNAL"]
    try:
        assert_exactly_once(dsn, "restarts", processed, final["counts"], records)
        assert all(w.returncode in (0, -signal.SIGTERM) for w in workers), logs[-3000:]
        assert "Traceback" not in logs, logs[-3000:]
    finally:
        database.stop()


def test_a_wrong_token_aborts_the_campaign_loudly_and_status_wait_ends(
    environment: dict[str, str], tmp_path: Path, sim: ThreadedSimulator
) -> None:
    env = environment | {"PROACTIVE_BASE_URL": sim.url}
    targets = write_targets(tmp_path / "targets.csv", 60)
    enqueue(env, targets, "denied", "--job-size", "20")
    wrong = env | {"PROACTIVE_TOKEN": "not-the-token-" + "z" * 12}
    log = tmp_path / "w.log"
    workers = [start_worker(wrong, log)]
    try:
        waited = subprocess.run(
            [sys.executable, "-m", "proactive_async.cli", "status", "--wait", "--no-progress",
             "--campaign", "denied"],
            env=env, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
    finally:
        stop_all(workers)
    assert waited.returncode == 2, waited.stdout + waited.stderr
    assert "aborted" in waited.stdout and "401" in waited.stdout
    assert "run the same enqueue again" in waited.stderr
    assert "ABORTED" in log.read_text() and "401" in log.read_text()
    assert sim.audit.snapshot() == {}
    assert status("denied", env)["counts"] == {"planned": 60}  # all still to send


def test_a_worker_on_the_wrong_database_says_so_and_leaves_the_jobs_queued(
    environment: dict[str, str], postgres_server: Any, tmp_path: Path, sim: ThreadedSimulator
) -> None:
    env = environment | {"PROACTIVE_BASE_URL": sim.url}
    plan = enqueue(env, write_targets(tmp_path / "t.csv", 10), "right", "--chunk-size", "1",
                   "--job-size", "5")  # fmt: skip
    elsewhere = postgres_server.create_database(f"empty_{uuid.uuid4().hex[:8]}")
    log = tmp_path / "w.log"
    workers = [start_worker(env | {"PROACTIVE_JOURNAL": elsewhere}, log)]
    try:
        deadline = time.monotonic() + 30
        while log.read_text().count("is this worker's journal the database") < 2:
            assert time.monotonic() < deadline, log.read_text()[-2000:]
            time.sleep(0.2)
        assert workers[0].poll() is None  # it keeps running, and says why it cannot work
    finally:
        stop_all(workers)
    assert "Traceback" not in log.read_text()
    queued = redis.Redis.from_url(env["PROACTIVE_REDIS_URL"])
    try:
        assert plan["queued"] == 2 and queued.zcard("arq:queue") == 2  # still there
    finally:
        queued.close()
    assert sim.audit.snapshot() == {}
    assert status("right", env)["counts"] == {"planned": 10}


def test_a_worker_whose_journal_is_unreachable_says_so_and_exits_2(
    environment: dict[str, str], tmp_path: Path
) -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    done = subprocess.run(
        [sys.executable, "-m", "proactive_async.cli", "worker", "--base-url", "http://127.0.0.1:9"],
        env=environment | {"PROACTIVE_JOURNAL": f"postgresql://app:db-pw-7@127.0.0.1:{port}/x"},
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "unreachable" in done.stderr and "db-pw-7" not in done.stderr
    assert "Traceback" not in done.stderr


def test_enqueue_refuses_the_flags_it_would_not_honour(
    environment: dict[str, str], tmp_path: Path
) -> None:
    targets = write_targets(tmp_path / "t.csv", 5)
    for flag in ("--concurrency", "--calls-per-second", "--limit-key", "--processes",
                 "--report", "--report-format", "--grace-period"):  # fmt: skip
        value = "csv" if flag == "--report-format" else "5"
        done = cli("enqueue", str(targets), *TEMPLATE, flag, value, env=environment)
        assert done.returncode == 2 and "unrecognized arguments" in done.stderr, flag


def test_an_enqueue_that_cannot_reach_redis_says_so_and_a_second_one_queues_the_plan(
    environment: dict[str, str], tmp_path: Path
) -> None:
    targets = write_targets(tmp_path / "targets.csv", 120)
    args = ("enqueue", str(targets), *TEMPLATE, "--campaign", "requeue", "--job-size", "40")
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    refused = f"redis://:redis-pw-9@127.0.0.1:{port}/0"
    failed = cli(*args, "--redis-url", refused, env=environment)
    assert failed.returncode == 2, failed.stderr
    assert "campaign requeue is planned (120 records, 3 slices)" in failed.stderr
    assert "run the same enqueue again with --campaign requeue" in failed.stderr
    assert "redis-pw-9" not in failed.stderr and "Traceback" not in failed.stderr
    again = cli(*args, env=environment)
    assert again.returncode == 0, again.stderr
    plan = json.loads(again.stdout)
    assert plan["already_planned"] and plan["records"] == 120 and plan["queued"] == 3
    assert status("requeue", environment)["counts"] == {"planned": 120}


def test_a_worker_trusts_a_private_ca_given_by_flag_and_refuses_it_without(
    environment: dict[str, str], tmp_path: Path, tls_ca: Any
) -> None:
    """``worker --ca-file`` (and its timeouts) reach the worker's client: over TLS with a
    private CA the campaign is sent; without the CA the first call fails verification,
    a fatal answer: the campaign is aborted, nothing sent."""
    config = SimulatorConfig(token=TOKEN)
    with ThreadedSimulator(config, ssl_context=tls_ca.server_context) as server:
        env = environment | {"PROACTIVE_BASE_URL": server.url.replace("http://", "https://")}
        enqueue(env, write_targets(tmp_path / "a.csv", 20), "untrusted", "--job-size", "10")
        log = tmp_path / "untrusted.log"
        workers = [start_worker(env, log)]
        try:
            found = wait_for("untrusted", env, lambda s: s["aborted"], 60)
        finally:
            stop_all(workers)
        assert "certificate" in found["aborted"].lower() or "tls" in found["aborted"].lower()
        assert server.simulator.audit.snapshot() == {}
        enqueue(env, write_targets(tmp_path / "b.csv", 30), "trusted", "--job-size", "10")
        flags = ("--ca-file", tls_ca.ca_file, "--connect-timeout", "5", "--timeout", "20")
        workers = [start_worker(env, tmp_path / "trusted.log", *flags)]
        try:
            final = wait_for("trusted", env, lambda s: s["finished"], 60)
        finally:
            stop_all(workers)
    assert final["counts"] == {"sent": 30}
    assert len(server.simulator.audit.snapshot()) == 30
