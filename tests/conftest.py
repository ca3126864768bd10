"""Shared fixtures. Keep each small and clearly named: several test modules use this file."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import aiohttp
import aioresponses.core as aioresponses_core
import pytest
from _requires import unavailable
from aioresponses import aioresponses

from proactive_async.settings import VARIABLES
from proactive_async.testing import MockTransport


class FakeTime:
    """An injectable ``clock`` and ``sleep``: sleeping advances the clock and is recorded."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float, /) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


@pytest.fixture
def fake_time() -> FakeTime:
    """A FakeTime for ``AsyncClient(sleep=fake_time.sleep, clock=fake_time.clock)``."""
    return FakeTime()


@pytest.fixture
def no_proactive_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Unset every variable the settings read (VARIABLES): the shell cannot leak in."""
    for variable in VARIABLES.values():
        monkeypatch.delenv(variable, raising=False)
    yield


class _AiohttpCompatResponse(aiohttp.ClientResponse):
    """aioresponses 0.7.9 builds responses without the ``stream_writer`` aiohttp 3.12+ needs."""

    def __init__(self, method: str, url: Any, **kwargs: Any) -> None:
        kwargs.setdefault("stream_writer", SimpleNamespace(output_size=0))
        super().__init__(method, url, **kwargs)


@pytest.fixture
def mock_transport() -> MockTransport:
    """A ``MockTransport`` answering like the API (set ``.handler`` per test): for
    ``AsyncClient(transport=...)``, the seam users test their code with."""
    return MockTransport()


@pytest.fixture
def mock_api(monkeypatch: pytest.MonkeyPatch) -> Iterator[aioresponses]:
    """An ``aioresponses`` mock that works with the installed aiohttp (see above). It
    mocks aiohttp's session, so the clients made under it get the aiohttp transport (the
    one a proxy gets) in place of the direct one, and a sync ``Client`` makes its calls
    through its event loop, over that transport, not in the calling thread."""
    from proactive_async import _client
    from proactive_async._transport._aiohttp import AiohttpTransport

    monkeypatch.setattr(aioresponses_core, "ClientResponse", _AiohttpCompatResponse)
    monkeypatch.setattr(_client, "open_transport", AiohttpTransport)
    monkeypatch.setattr(_client.AsyncClient, "_blocking_twin", lambda self, sleep: None)
    with aioresponses() as mocked:
        yield mocked


@pytest.fixture(scope="session")
def tls_ca(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """A private CA (trustme) with a certificate for 127.0.0.1 / localhost.

    ``server_context`` serves with it; ``ca_file`` is the CA's PEM, for ``verify=``.
    """
    import ssl

    import trustme

    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(server_context)
    ca_file = tmp_path_factory.mktemp("tls") / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    return SimpleNamespace(server_context=server_context, ca_file=str(ca_file))


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A real redis-server for the session (installed by scripts/ensure-servers.sh)."""
    from _redis import RedisServer, find_redis_server

    executable = find_redis_server()
    if executable is None:
        unavailable("redis-server is missing: run scripts/ensure-servers.sh (make test does)")
    server = RedisServer(executable, tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[Any]:
    """A redis-server of the test's own, for a test that changes it (its password, its
    memory) or stops it."""
    from _redis import RedisServer, find_redis_server

    executable = find_redis_server()
    if executable is None:
        unavailable("redis-server is missing: run scripts/ensure-servers.sh (make test does)")
    server = RedisServer(executable, tmp_path)
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[Any]:
    """A throwaway PostgreSQL for the session (installed by scripts/ensure-servers.sh)."""
    from _postgres import PostgresServer, find_pg_bin

    bin_dir = find_pg_bin()
    if bin_dir is None:
        unavailable("PostgreSQL is missing: run scripts/ensure-servers.sh (make test does)")
    server = PostgresServer(bin_dir)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The size of every piece of data the HTTP/1.1 connections receive, in order (both
    transports feed ``_http11.Connection.data_received``)."""
    from proactive_async._transport._http11 import Connection

    sizes: list[int] = []
    original = Connection.data_received

    def spy(self: Connection, data: bytes) -> None:
        sizes.append(len(data))
        original(self, data)

    monkeypatch.setattr(Connection, "data_received", spy)
    return sizes
