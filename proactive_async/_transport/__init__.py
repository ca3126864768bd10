"""The client's own transports: what they share, and which one a client gets.

Two make the POSTs of an ``AsyncClient`` built without ``transport=`` (which one:
``open_transport``):

- ``DirectTransport`` (``_direct.py``), the default: its own HTTP/1.1 connections
  (``_http11.py``) to the API's origin, http or https. A call costs about a tenth of the CPU
  that aiohttp's ClientSession spends on it (measured in ``_http11.py``'s docstring).
- ``AiohttpTransport`` (``_aiohttp.py``) when the client goes through a proxy:
  aiohttp's CONNECT tunnels and proxy authentication are not written again here.

A third, ``SyncTransport`` (``_blocking.py``), carries the plain calls of the sync
``Client`` in its calling threads: the same connections and parser, read with blocking
sockets. What the two HTTP/1.1 transports write and how failures read: ``_wire.py``.

Both take a connection slot before a call's clocks start, keep read and total timeouts with
one shared timer (``_deadlines.py``), map what went wrong onto the SDK's transport errors,
and tell certainly-not-sent (nothing connected) from may-have-been-processed (the rest).
"""

from __future__ import annotations

from ._base import (
    DEADLINE_GRACE,
    MAX_ERROR_BODY,
    RawResponse,
    Transport,
    TransportConfig,
    origin,
    split_headers,
    tls_verify,
    user_agent,
)
from ._blocking import BLOCKED_AFTER, PROBE_AFTER, SimulatorBlocked, SyncTransport
from ._direct import DirectTransport

__all__ = [
    "BLOCKED_AFTER",
    "DEADLINE_GRACE",
    "MAX_ERROR_BODY",
    "PROBE_AFTER",
    "RawResponse",
    "SimulatorBlocked",
    "SyncTransport",
    "Transport",
    "TransportConfig",
    "open_transport",
    "origin",
    "split_headers",
    "tls_verify",
    "user_agent",
]


def open_transport(config: TransportConfig) -> Transport:
    """The client's own transport: aiohttp's through a proxy (its CONNECT tunnels and proxy
    authentication), the direct one otherwise."""
    if config.proxy is not None:
        from ._aiohttp import AiohttpTransport  # aiohttp's import takes 0.16 s: only if used

        return AiohttpTransport(config)
    return DirectTransport(config)
