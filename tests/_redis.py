"""A real redis-server on a free loopback port, owned by the test session.

``scripts/ensure-servers.sh`` (run by ``make test``) installs it when missing; this module
starts it with no persistence and stops it when the session ends. ``restart()`` and
``stop()`` let a test take Redis away mid-run.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def find_redis_server() -> str | None:
    found = shutil.which("redis-server")
    if found is None and Path("/usr/bin/redis-server").exists():
        found = "/usr/bin/redis-server"
    return found


class RedisServer:
    """One redis-server process; ``url`` stays the same across restarts."""

    def __init__(self, executable: str, workdir: Path, *, also_bind: tuple[str, ...] = ()) -> None:
        self.executable = executable
        self.workdir = workdir
        # Addresses besides loopback (a veth of a test's network namespace): protected
        # mode, which refuses them without a password, is then off.
        self.also_bind = also_bind
        # Arguments of the next start (e.g. ``--requirepass``: a server restarted with its
        # password, where CONFIG SET after the start races a client asking meanwhile).
        self.extra: tuple[str, ...] = ()
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        command = [
            self.executable,
            "--port", str(self.port),
            "--bind", "127.0.0.1", *self.also_bind,
            "--save", "",
            "--appendonly", "no",
            "--dir", str(self.workdir),
            "--protected-mode", "no" if self.also_bind else "yes",
            *self.extra,
        ]  # fmt: skip
        self._process = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        self._wait_ready()

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is not None:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def restart(self) -> None:
        self.stop()
        self.start()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            assert self._process is not None
            if self._process.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self._process.returncode}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                    sock.sendall(b"PING\r\n")
                    # -NOAUTH: up, and asking for its password.
                    if sock.recv(64).startswith((b"+PONG", b"-NOAUTH")):
                        return
            except OSError:
                pass
            time.sleep(0.02)
        raise RuntimeError("redis-server did not answer PING within 10 s")
