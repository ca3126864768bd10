"""The token's path at the edges: real proxies, real TLS with a private CA, echoing servers.

Every test runs real servers on 127.0.0.1: the simulator (over HTTPS where it matters) and a
forward proxy that records every byte it is sent (``tests/_proxy.py``).
"""

from __future__ import annotations

import base64
import subprocess
import sys
from types import SimpleNamespace

import pytest
from _proxy import recording_proxy
from aiohttp import web
from test_transport import PATH, web_server

from proactive_async import (
    AsyncClient,
    BadRequestError,
    ClientStateError,
    ConnectError,
    RetryPolicy,
    TLSError,
)
from proactive_async.simulator import Simulator, SimulatorConfig

TOKEN = "s3cret-token-for-the-api-origin-only"
SEND = {"channel_id": 1, "bot_id": 2, "conversation_template_id": 3}
NO_RETRY = RetryPolicy.never()


def _proxy_auth_lines(head_lines: list[str]) -> list[str]:
    return [line for line in head_lines if line.lower().startswith("proxy-authorization:")]


# --- the token and proxies ----------------------------------------------------------------


@pytest.mark.parametrize("credentials", [None, ("user", "pa:ss")])
async def test_the_token_never_reaches_a_proxy_in_front_of_an_https_api(
    tls_ca: SimpleNamespace, credentials: tuple[str, str] | None
) -> None:
    """CONNECT carries no token (issue 7.1); proxy credentials come only from its URL."""
    config = SimulatorConfig(token=TOKEN)
    async with (
        Simulator(config, ssl_context=tls_ca.server_context) as sim,
        recording_proxy() as proxy,
    ):
        proxy_url = proxy.url
        if credentials is not None:
            proxy_url = proxy_url.replace("http://", f"http://{credentials[0]}:pa%3Ass@")
        async with AsyncClient(
            sim.url,
            TOKEN,
            proxy=proxy_url,
            verify=tls_ca.ca_file,
            headers={"X-Api-Key": "another-secret-value"},
        ) as client:
            conversations = await client.create_proactive_conversation(
                **SEND, recipient=["+5511999990000"]
            )
    assert len(conversations) == 1
    assert TOKEN.encode() not in proxy.record.raw
    assert b"another-secret-value" not in proxy.record.raw
    [connect] = proxy.record.head_lines()
    assert connect[0].startswith("CONNECT 127.0.0.1:")
    auth = _proxy_auth_lines(connect)
    if credentials is None:
        assert auth == []
    else:
        expected = base64.b64encode(b"user:pa:ss").decode()
        assert auth == [f"Proxy-Authorization: Basic {expected}"]


@pytest.mark.parametrize("credentials", [False, True])
async def test_a_plain_http_api_through_a_proxy_gets_no_bearer_proxy_authorization(
    credentials: bool,
) -> None:
    """Through a proxy to http://, the token is only in Authorization, to the origin."""
    async with Simulator(SimulatorConfig(token=TOKEN)) as sim, recording_proxy() as proxy:
        proxy_url = proxy.url.replace("http://", "http://u:p@") if credentials else proxy.url
        async with AsyncClient(sim.url, TOKEN, proxy=proxy_url) as client:
            await client.create_proactive_conversation(**SEND, recipient=["+5511999990000"])
    [head] = proxy.record.head_lines()
    assert head[0].startswith(f"POST {sim.url}{PATH}")
    assert [line for line in head if TOKEN in line] == [f"Authorization: Bearer {TOKEN}"]
    auth = _proxy_auth_lines(head)
    assert auth == (
        [f"Proxy-Authorization: Basic {base64.b64encode(b'u:p').decode()}"] if credentials else []
    )


async def test_a_proxy_that_refuses_the_tunnel_is_a_safe_connect_error(
    tls_ca: SimpleNamespace,
) -> None:
    """A 403 to CONNECT: the API never saw the call; ConnectError, retried as safe."""
    policy = RetryPolicy(max_attempts=3, backoff_initial=0.0, jitter=0.0)
    async with (
        recording_proxy(refuse_connect=403) as proxy,
        AsyncClient("https://127.0.0.1:9", TOKEN, proxy=proxy.url, verify=tls_ca.ca_file) as client,
    ):
        with pytest.raises(ConnectError) as info:
            await client.create_proactive_conversation(**SEND, retry=policy)
    assert info.value.may_have_been_processed is False
    assert info.value.attempts == 3
    assert "403" in str(info.value) and TOKEN not in str(info.value)
    assert TOKEN.encode() not in proxy.record.raw


# --- TLS ---------------------------------------------------------------------------------


async def test_a_certificate_that_does_not_verify_is_fatal_and_never_retried(
    tls_ca: SimpleNamespace,
) -> None:
    policy = RetryPolicy(max_attempts=5, backoff_initial=0.0, jitter=0.0)
    async with Simulator(SimulatorConfig(token=TOKEN), ssl_context=tls_ca.server_context) as sim:
        async with AsyncClient(sim.url, TOKEN) as client:  # the private CA is not trusted
            with pytest.raises(TLSError) as info:
                await client.create_proactive_conversation(
                    **SEND, retry=policy, recipient=["+5511999990000"]
                )
        assert sim.audit.total_processed == 0
    assert info.value.attempts == 1
    assert info.value.fatal and not info.value.may_have_been_processed
    assert "certificate" in str(info.value).lower()


async def test_a_private_ca_is_trusted_through_verify_with_its_pem_path(
    tls_ca: SimpleNamespace,
) -> None:
    server = Simulator(SimulatorConfig(token=TOKEN), ssl_context=tls_ca.server_context)
    async with server as sim, AsyncClient(sim.url, TOKEN, verify=tls_ca.ca_file) as client:
        [conversation] = await client.create_proactive_conversation(
            **SEND, recipient=["+5511999990000"]
        )
    assert conversation.recipients == ["+5511999990000"]


def test_tls_answers_are_read_whole_under_uvloop(tls_ca: SimpleNamespace) -> None:
    """uvloop's TLS layer hands decrypted bytes to the connection's buffer (a buffered
    protocol) as asyncio's does: answers whole, the connection reused."""
    from test_transport_http11 import uvloop_module

    uvloop = uvloop_module()

    async def scenario() -> None:
        server = Simulator(SimulatorConfig(token=TOKEN), ssl_context=tls_ca.server_context)
        async with server as sim, AsyncClient(sim.url, TOKEN, verify=tls_ca.ca_file) as client:
            for n in range(5):
                [conversation] = await client.create_proactive_conversation(
                    **SEND, recipient=[f"+551199999000{n}"]
                )
                assert conversation.recipients == [f"+551199999000{n}"]
            assert sim.audit.total_processed == 5

    uvloop.run(scenario())


def test_a_ca_bundle_that_cannot_be_read_is_refused_when_the_client_is_built(
    tmp_path: pytest.TempPathFactory,
) -> None:
    with pytest.raises(ClientStateError, match="CA bundle"):
        AsyncClient("https://127.0.0.1:9", TOKEN, verify=f"{tmp_path}/missing.pem")


# --- tokens and headers that HTTP cannot carry -----------------------------------------------


@pytest.mark.parametrize(
    ("token", "headers"),
    [
        ("first-line\nsecond-line", None),
        ("token-with-cr\r", None),
        (" padded-token", None),
        ("tökén-ñot-latin1-€", None),
        (TOKEN, {"X-Tenant": "9\r\nX-Injected: 1"}),
        (TOKEN, {"Bad Name": "1"}),
    ],
)
def test_a_token_or_header_that_cannot_be_sent_is_refused_at_construction(
    token: str, headers: dict[str, str] | None
) -> None:
    """Issue 7.5: a ClientStateError (nothing sent, fatal), never an 'unknown' per record."""
    with pytest.raises(ClientStateError) as info:
        AsyncClient("http://127.0.0.1:9", token, headers=headers)
    assert info.value.fatal and not info.value.may_have_been_processed
    assert token.strip() not in str(info.value)


# --- what an echoing server sends back -------------------------------------------------------


async def test_an_echoed_token_is_redacted_from_the_error_its_body_and_headers() -> None:
    async def echo(request: web.Request) -> web.StreamResponse:
        await request.read()
        echoed = "; ".join(f"{k}: {v}" for k, v in request.headers.items())
        return web.json_response(
            {"title": "Bad request", "detail": f"you sent {echoed}"},
            status=400,
            headers={"X-Echo-Auth": request.headers["Authorization"]},
        )

    async with web_server(echo) as (base, _), AsyncClient(base, TOKEN) as client:
        with pytest.raises(BadRequestError) as info:
            await client.create_proactive_conversation(**SEND, retry=NO_RETRY)
    exc = info.value
    assert "[redacted]" in str(exc)
    assert TOKEN not in str(exc) and TOKEN not in repr(exc)
    assert TOKEN.encode() not in exc.body
    assert all(TOKEN not in value for value in exc.headers.values())
    assert exc.problem is not None and TOKEN not in (exc.problem.detail or "")


async def test_an_error_body_is_kept_to_64_kib() -> None:
    async def huge(request: web.Request) -> web.StreamResponse:
        await request.read()
        return web.Response(status=502, body=b"x" * (5 * 1024 * 1024))

    async with web_server(huge) as (base, _), AsyncClient(base, TOKEN) as client:
        with pytest.raises(Exception) as info:
            await client.create_proactive_conversation(**SEND, retry=NO_RETRY)
    assert len(info.value.body) == 64 * 1024  # type: ignore[attr-defined]


# --- logging ------------------------------------------------------------------------------


def test_a_library_user_without_logging_set_up_sees_no_warnings_on_stderr() -> None:
    code = (
        "import logging, proactive_async\n"
        "logging.getLogger('proactive_async').warning('attempt 1 failed; retrying')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stderr == ""
