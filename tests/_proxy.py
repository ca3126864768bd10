"""A real forward proxy on 127.0.0.1 that records every byte a client sends it.

It tunnels ``CONNECT host:port`` (or refuses it with a chosen status) and forwards
absolute-form plain-HTTP requests, one request per connection (it answers with
``Connection: close`` semantics by closing after the upstream's answer).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import yarl


@dataclass
class ProxyRecord:
    """What the proxy received: each request head, and every byte from every client."""

    heads: list[bytes] = field(default_factory=list)
    raw: bytearray = field(default_factory=bytearray)

    def head_lines(self) -> list[list[str]]:
        return [head.decode("latin-1").split("\r\n") for head in self.heads]


class LoopbackServer:
    """A TCP server on 127.0.0.1 (port chosen by the OS) that runs ``_handle`` for each
    connection, closes it after, and cancels the ones still open when it is closed."""

    def __init__(self) -> None:
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def port(self) -> int:
        assert self._server is not None
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)

    async def aclose(self) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raise NotImplementedError

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await self._handle(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self._tasks.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()


class RecordingProxy(LoopbackServer):
    """``async with RecordingProxy() as proxy``: ``proxy.url``, ``proxy.record``."""

    def __init__(self, *, refuse_connect: int | None = None) -> None:
        super().__init__()
        self.record = ProxyRecord()
        self.refuse_connect = refuse_connect

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def __aenter__(self) -> RecordingProxy:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await self._one(reader, writer)

    async def _one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        self.record.heads.append(head)
        self.record.raw += head
        method, target, _ = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ", 2)
        if method == "CONNECT":
            await self._tunnel(target, reader, writer)
        else:
            await self._forward(head, target, reader, writer)

    async def _tunnel(
        self, target: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        if self.refuse_connect is not None:
            writer.write(
                f"HTTP/1.1 {self.refuse_connect} Refused\r\nContent-Length: 0\r\n\r\n".encode()
            )
            await writer.drain()
            return
        host, port = target.rsplit(":", 1)
        up_reader, up_writer = await asyncio.open_connection(host, int(port))
        writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        await writer.drain()
        await self._pipe_both(reader, writer, up_reader, up_writer)

    async def _forward(
        self,
        head: bytes,
        target: str,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        url = yarl.URL(target)
        assert url.host is not None and url.port is not None
        up_reader, up_writer = await asyncio.open_connection(url.host, url.port)
        up_writer.write(head)
        await self._pipe_both(reader, writer, up_reader, up_writer)

    async def _pipe_both(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        up_reader: asyncio.StreamReader,
        up_writer: asyncio.StreamWriter,
    ) -> None:
        async def client_to_upstream() -> None:
            while data := await reader.read(65536):
                self.record.raw += data
                up_writer.write(data)
                await up_writer.drain()

        async def upstream_to_client() -> None:
            while data := await up_reader.read(65536):
                writer.write(data)
                await writer.drain()

        try:
            tasks = [
                asyncio.ensure_future(client_to_upstream()),
                asyncio.ensure_future(upstream_to_client()),
            ]
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            up_writer.close()
            with contextlib.suppress(Exception):
                await up_writer.wait_closed()


@contextlib.asynccontextmanager
async def recording_proxy(*, refuse_connect: int | None = None) -> AsyncIterator[RecordingProxy]:
    async with RecordingProxy(refuse_connect=refuse_connect) as proxy:
        yield proxy
