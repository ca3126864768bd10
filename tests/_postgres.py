"""A throwaway PostgreSQL server on a free loopback port, owned by the test session.

initdb refuses to run as root, so as root the server runs as the ``postgres`` user, with
its data directory and socket in a fresh temporary folder; ``scripts/ensure-servers.sh``
installs PostgreSQL when it is missing. ``fsync=off``: the tests kill our processes, never
the server, so its own crash safety is not what they check.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from _redis import free_port


def find_pg_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


class PostgresServer:
    """One postgres process; ``url`` is a DSN for its ``postgres`` database."""

    def __init__(self, bin_dir: Path, *, also_listen: tuple[str, ...] = ()) -> None:
        self.bin_dir = bin_dir
        # Addresses besides loopback (a veth of a test's network namespace), trusted too.
        self.also_listen = also_listen
        self.root = Path(tempfile.mkdtemp(prefix="proactive-pg-"))
        self.data = self.root / "data"
        self.port = free_port()
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        self._process: subprocess.Popen[bytes] | None = None
        self._as_postgres = os.geteuid() == 0

    def _command(self, *args: str) -> list[str]:
        if self._as_postgres:
            return ["runuser", "-u", "postgres", "--", *args]
        return list(args)

    def start(self) -> None:
        if self._as_postgres:
            shutil.chown(self.root, "postgres", "postgres")
        subprocess.run(
            self._command(
                str(self.bin_dir / "initdb"), "-D", str(self.data), "-U", "postgres",
                "--auth=trust", "-E", "UTF8", "--no-sync",
            ),
            check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )  # fmt: skip
        if self.also_listen:
            with (self.data / "pg_hba.conf").open("a") as hba:
                for address in self.also_listen:
                    hba.write(f"host all all {address}/16 trust\n")
        self._launch()

    def _launch(self) -> None:
        self._process = subprocess.Popen(
            self._command(
                str(self.bin_dir / "postgres"), "-D", str(self.data), "-p", str(self.port),
                "-k", str(self.root),
                "-c", f"listen_addresses={','.join(('127.0.0.1', *self.also_listen))}",
                "-c", "fsync=off", "-c", "max_connections=200",
            ),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        self._wait_ready()

    def stop(self) -> None:
        self._halt()
        shutil.rmtree(self.root, ignore_errors=True)

    def restart(self, down_for: float = 0.0) -> None:
        """Stop the server (fast shutdown: every session ends), stay down ``down_for``
        seconds, and start it again on the same port with the same data."""
        self._halt()
        time.sleep(down_for)
        self._launch()

    def _halt(self) -> None:
        process, self._process = self._process, None
        if process is not None:
            # runuser does not pass signals on: signal the postmaster itself (fast shutdown).
            postmaster = self._postmaster_pid()
            if postmaster is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(postmaster, signal.SIGINT)
            else:
                process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                if postmaster is not None:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(postmaster, signal.SIGKILL)
                process.kill()
                process.wait()

    def _postmaster_pid(self) -> int | None:
        try:
            first = (self.data / "postmaster.pid").read_text().split("\n", 1)[0]
            return int(first)
        except (OSError, ValueError):
            return None

    def create_database(self, name: str) -> str:
        """A new empty database; its DSN."""
        import psycopg

        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return f"postgresql://postgres@127.0.0.1:{self.port}/{name}"

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            assert self._process is not None
            if self._process.poll() is not None:
                raise RuntimeError(f"postgres exited with {self._process.returncode}")
            ready = subprocess.run(
                [str(self.bin_dir / "pg_isready"), "-h", "127.0.0.1", "-p", str(self.port)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                check=False,
            )
            if ready.returncode == 0:
                return
            time.sleep(0.1)
        raise RuntimeError("postgres did not become ready within 30 s")
