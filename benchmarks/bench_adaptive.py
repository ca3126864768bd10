"""Benchmark 6: adaptive mode behind a server-side limit the client is not told.

Runs ``Campaign(..., rate=None, adaptive=True, chunk_size=1, concurrency=64)`` over unique
numbers (about 20 s of work at the limit) behind:

* the simulator's own limit (``--rate 300``, a token bucket of targets, 429 + Retry-After);
* a real nginx ``limit_req`` (Debian's package, installed by ``setup.sh``) at 300 r/s,
  ``burst=30 nodelay``, ``limit_req_status 429``, proxying to an unlimited simulator on
  loopback. nginx sends no Retry-After of its own: the first nginx row adds
  ``Retry-After: 1`` on its 429s (``error_page 429 = @throttled``), the second sends none.
  nginx counts requests, hence chunk_size=1 everywhere.

The baseline is the limit. Goodput = targets sent / campaign time (ramp-up included);
429 share = 429 answers / calls; "nothing lost" = every record has exactly one outcome and
all are ``sent``.

Targets: goodput >= 90% of the limit; 429s <= 5% of calls; nothing lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    TOKEN,
    Server,
    brazil_mobiles,
    pin_client,
    row,
    sdk_missing,
    server_prefix,
    simulator_argv,
)

NAME = "6 adaptive"
LIMIT = 300.0
TARGET = ">= 90% of limit; 429s <= 5%; none lost"
_offset = 0

_NGINX_CONF = """worker_processes 1;
daemon off;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    # Every client is 127.0.0.1, so this is one bucket for the whole benchmark.
    limit_req_zone $binary_remote_addr zone=api:1m rate={rate}r/s;
    upstream simulator {{ server {upstream}; keepalive 64; }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            limit_req zone=api burst={burst} nodelay;
            limit_req_status 429;
            {error_page}
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_pass http://simulator;
        }}
        location @throttled {{
            add_header Retry-After 1 always;
            return 429 '{{"title":"Too Many Requests","status":429}}';
        }}
    }}
}}
"""


def nginx_binary() -> str | None:
    found = shutil.which("nginx")
    if found:
        return found
    return "/usr/sbin/nginx" if os.access("/usr/sbin/nginx", os.X_OK) else None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def nginx_in_front(upstream: str, *, retry_after: bool) -> Iterator[str]:
    """nginx with limit_req proxying to ``upstream`` (host:port); yields its URL; stops it."""
    binary = nginx_binary()
    if binary is None:
        raise RuntimeError("nginx not installed (benchmarks/setup.sh installs it)")
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        conf = Path(tmp) / "nginx.conf"
        conf.write_text(
            _NGINX_CONF.format(
                tmp=tmp,
                rate=int(LIMIT),
                burst=int(LIMIT / 10),
                upstream=upstream,
                port=port,
                error_page="error_page 429 = @throttled;" if retry_after else "",
            )
        )
        proc = subprocess.Popen(
            [*server_prefix(), binary, "-c", str(conf), "-p", tmp],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            _wait_port(port, proc)
            yield f"http://127.0.0.1:{port}"
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
            if proc.stderr is not None:
                proc.stderr.close()


def _wait_port(port: int, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
            raise RuntimeError(f"nginx exited {proc.returncode}: {err[-300:]}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise RuntimeError("nginx did not open its port in 10 s")


async def adaptive_campaign(url: str, count: int) -> dict[str, Any]:
    from proactive_async import AsyncClient, Limits, ProactiveConversationRequest
    from proactive_async._campaign import Campaign

    global _offset
    targets = list(brazil_mobiles(count, start=_offset))
    _offset += count
    template = ProactiveConversationRequest(channel_id=1, bot_id=1, conversation_template_id=7)
    limits = Limits(max_connections=64)
    async with AsyncClient(base_url=url, token=TOKEN, limits=limits) as client:
        campaign = Campaign(
            client,
            template=template,
            targets=targets,
            chunk_size=1,
            concurrency=64,
            rate=None,
            adaptive=True,
            default_region="BR",
        )
        start = time.perf_counter()
        summary = await campaign.run()
        elapsed = time.perf_counter() - start
        final_rate = campaign.rate
    counts = {str(k): v for k, v in summary.counts.items()}
    return {
        "elapsed": elapsed,
        "calls": summary.calls,
        "throttled": summary.throttled,
        "counts": counts,
        "final_rate": final_rate,
        "records": count,
    }


def judge(label: str, result: dict[str, Any], note: str) -> dict[str, Any]:
    sent = result["counts"].get("sent", 0)
    goodput = sent / result["elapsed"]
    share = result["throttled"] / max(1, result["calls"])
    complete = sum(result["counts"].values()) == result["records"] == sent
    ok = goodput >= 0.9 * LIMIT and share <= 0.05 and complete
    lost = "none lost" if complete else f"counts {result['counts']}"
    return row(
        f"{NAME}, {label}",
        sdk=f"{goodput:.0f} targets/s, 429s {share:.1%}",
        baseline=f"limit {LIMIT:.0f}/s",
        ratio=goodput / LIMIT,
        target=TARGET,
        ok=ok,
        note=f"{lost}; {note}; {result['calls']} calls in {result['elapsed']:.1f} s",
    )


def run(quick: bool = False) -> dict[str, Any]:
    """Run benchmark 6; returns its rows and each scenario's figures."""
    pinned = pin_client()
    count = int(LIMIT * (2 if quick else 20))
    scenarios = [
        ("simulator limit", "simulator --rate 300"),
        ("nginx limit_req + Retry-After: 1", "nginx 300r/s burst 30, Retry-After 1"),
        ("nginx limit_req, no Retry-After", "nginx 300r/s burst 30, no Retry-After"),
    ]
    if quick:
        scenarios = scenarios[:2]
    missing = sdk_missing("proactive_async._campaign:Campaign", "proactive_async.simulator:main")
    if missing is not None:
        return {
            "name": NAME,
            "rows": [
                row(f"{NAME}, {label}", target=TARGET, skipped=missing) for label, _ in scenarios
            ],
            "details": {},
        }
    rows: list[dict[str, Any]] = []
    details: dict[str, Any] = {"pinning": pinned, "records": count}
    for label, note in scenarios:
        try:
            if label == "simulator limit":
                with Server(simulator_argv("--rate", str(LIMIT))) as sim:
                    result = asyncio.run(adaptive_campaign(sim.url, count))
            else:
                with (
                    Server(simulator_argv()) as sim,
                    nginx_in_front(
                        sim.url.removeprefix("http://"),
                        retry_after="Retry-After" in label and "no Retry" not in label,
                    ) as url,
                ):
                    result = asyncio.run(adaptive_campaign(url, count))
        except RuntimeError as exc:
            rows.append(row(f"{NAME}, {label}", target=TARGET, skipped=f"skipped: {exc}"))
            continue
        details[label] = result
        rows.append(judge(label, result, note))
    return {"name": NAME, "rows": rows, "details": details}


if __name__ == "__main__":
    import json

    print(json.dumps(run("--quick" in sys.argv), indent=2))
