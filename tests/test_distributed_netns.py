"""A worker on another "host" cut off silently mid-run: a network namespace with a veth pair
(made and removed by the test) stands in for the host; its link goes down without a FIN or
a reset, as a pulled cable or a partition does. The worker on this host takes the cut
worker's slices over once their leases expire, the campaign finishes, and when the link
comes back the cut worker sends nothing more: no target processed twice.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from _distributed_checks import assert_exactly_once, cli, status
from _requires import unavailable

from proactive_async.simulator import SimulatorConfig, ThreadedSimulator

TOKEN = "netns-token-" + uuid.uuid4().hex
TEMPLATE = ("--channel-id", "1", "--bot-id", "2", "--template-id", "3")
HOST_SIDE, NS_SIDE = "10.231.7.1", "10.231.7.2"


def _can_make_namespaces() -> bool:
    if os.geteuid() != 0 or shutil.which("ip") is None:
        return False
    name = f"pa-probe-{os.getpid()}"
    made = subprocess.run(["ip", "netns", "add", name], check=False, capture_output=True)
    subprocess.run(["ip", "netns", "del", name], check=False, capture_output=True)
    return made.returncode == 0


@pytest.fixture(autouse=True, scope="module")
def _namespaces() -> None:
    """Skip without network namespaces on a developer's machine; fail without them under CI."""
    if not _can_make_namespaces():
        unavailable("network namespaces need root, iproute2 (ip) and CAP_NET_ADMIN")


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


class Namespace:
    """A network namespace joined to this host by a veth pair (10.231.7.1 <-> .2)."""

    def __init__(self) -> None:
        tag = uuid.uuid4().hex[:6]
        self.name, self.host_link, self.ns_link = f"pa{tag}", f"vh{tag}", f"vn{tag}"

    def __enter__(self) -> Namespace:
        ip("netns", "add", self.name)
        try:
            ip("link", "add", self.host_link, "type", "veth", "peer", "name", self.ns_link)
            ip("link", "set", self.ns_link, "netns", self.name)
            ip("addr", "add", f"{HOST_SIDE}/30", "dev", self.host_link)
            ip("link", "set", self.host_link, "up")
            self.run("ip", "addr", "add", f"{NS_SIDE}/30", "dev", self.ns_link)
            self.run("ip", "link", "set", self.ns_link, "up")
            self.run("ip", "link", "set", "lo", "up")
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        subprocess.run(["ip", "netns", "del", self.name], check=False, capture_output=True)
        subprocess.run(["ip", "link", "del", self.host_link], check=False, capture_output=True)

    def run(self, *argv: str) -> None:
        ip("netns", "exec", self.name, *argv)

    def cut(self) -> None:
        """The link goes down inside the namespace: packets vanish, nobody is told."""
        self.run("ip", "link", "set", self.ns_link, "down")

    def mend(self) -> None:
        self.run("ip", "link", "set", self.ns_link, "up")

    def command(self, *argv: str) -> list[str]:
        return ["ip", "netns", "exec", self.name, *argv]


def url_at(sim: ThreadedSimulator, host: str) -> str:
    """The simulator's URL at one of this machine's addresses."""
    return f"http://{host}:{sim.url.rsplit(':', 1)[1]}"


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[tuple[Any, Any]]:
    from _postgres import PostgresServer, find_pg_bin
    from _redis import RedisServer, find_redis_server

    bin_dir, executable = find_pg_bin(), find_redis_server()
    if bin_dir is None or executable is None:
        unavailable("PostgreSQL and redis-server are missing: run scripts/ensure-servers.sh")
    database = PostgresServer(bin_dir, also_listen=(HOST_SIDE,))
    queue = RedisServer(executable, tmp_path, also_bind=(HOST_SIDE,))
    yield database, queue
    queue.stop()
    database.stop()


def settled(found: dict[str, Any]) -> int:
    return sum(n for state, n in found["counts"].items() if state not in ("planned", "in_flight"))


@pytest.mark.slow
def test_a_worker_host_cut_off_silently_is_taken_over_and_sends_nothing_after(
    servers: tuple[Any, Any], tmp_path: Path
) -> None:
    database, queue = servers
    records = 1200
    targets = tmp_path / "targets.csv"
    targets.write_text("phone\n" + "".join(f"+55119{i:08d}\n" for i in range(records)))
    workers: list[subprocess.Popen[bytes]] = []
    with Namespace() as namespace:
        database.start()
        queue.start()
        dsn = database.create_database("netns")
        with ThreadedSimulator(SimulatorConfig(token=TOKEN), host="0.0.0.0") as sim:
            base = {k: v for k, v in os.environ.items() if not k.startswith("PROACTIVE_")}
            here = base | {
                "PROACTIVE_JOURNAL": dsn,
                "PROACTIVE_REDIS_URL": queue.url,
                "PROACTIVE_TOKEN": TOKEN,
                "PROACTIVE_BASE_URL": url_at(sim, "127.0.0.1"),
            }
            there = here | {
                "PROACTIVE_JOURNAL": dsn.replace("127.0.0.1", HOST_SIDE),
                "PROACTIVE_REDIS_URL": queue.url.replace("127.0.0.1", HOST_SIDE),
                "PROACTIVE_BASE_URL": url_at(sim, HOST_SIDE),
            }
            enqueued = cli(
                "enqueue", str(targets), *TEMPLATE, "--campaign", "cut", "--job-size", "100",
                "--rate", "200", "--burst", "10", env=here,
            )  # fmt: skip
            assert enqueued.returncode == 0, enqueued.stderr
            argv = [sys.executable, "-m", "proactive_async.cli", "worker", "--concurrency", "8"]
            logs = [tmp_path / "there.log", tmp_path / "here.log"]
            try:
                with logs[0].open("wb") as out:
                    far = namespace.command(*argv)
                    workers.append(
                        subprocess.Popen(far, env=there, stdout=out, stderr=subprocess.STDOUT)
                    )
                deadline = time.monotonic() + 60
                while settled(status("cut", here)) < 100:  # the far worker is sending
                    assert time.monotonic() < deadline, logs[0].read_text()[-2000:]
                    time.sleep(0.2)
                with logs[1].open("wb") as out:
                    workers.append(
                        subprocess.Popen(argv, env=here, stdout=out, stderr=subprocess.STDOUT)
                    )
                time.sleep(1)
                namespace.cut()
                cut_at = time.monotonic()
                deadline = cut_at + 90
                while not (final := status("cut", here))["finished"]:
                    assert time.monotonic() < deadline, f"not finished 90 s after the cut: {final}"
                    time.sleep(0.5)
                finished_in = time.monotonic() - cut_at
                before = sum(sim.audit.snapshot().values())
                namespace.mend()
                time.sleep(4)  # the far worker hears again: its leases are gone
                after = sum(sim.audit.snapshot().values())
            finally:
                for worker in workers:
                    if worker.poll() is None:
                        worker.send_signal(signal.SIGTERM)
                for worker in workers:
                    try:
                        worker.wait(timeout=30)
                    except subprocess.TimeoutExpired:
                        worker.kill()
                        worker.wait()
            processed = sim.audit.snapshot()
    assert after == before, (
        f"the cut-off worker sent {after - before} more after the link came back"
    )
    assert finished_in < 90
    assert_exactly_once(dsn, "cut", processed, final["counts"], records)
