"""What every distributed-campaign test through real workers runs and checks, whatever the
engine: the CLI as a subprocess, and the invariants of a finished run."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import psycopg
import redis

from proactive_async.simulator import Faults

TABLES = ("proactive_campaign", "proactive_record", "proactive_chunk", "proactive_slice")


def worker_faults(seed: int) -> Faults:
    """The simulator's faults in every worker test, whatever the engine: 429 and 503 (not
    processed), 500 after processing, connections dropped before and after processing."""
    return Faults(
        rate_429=0.03,
        rate_503=0.03,
        rate_500=0.02,
        drop_before=0.02,
        drop_after=0.02,
        latency=0.002,
        latency_jitter=0.002,
        retry_after=0.05,
        seed=seed,
    )


def cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "proactive_async.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )


def status(campaign: str, env: dict[str, str]) -> dict[str, Any]:
    """``proactive-async status --json`` (the journal from ``PROACTIVE_JOURNAL``): exit 0
    finished, 4 running, 2 aborted."""
    done = cli("status", "--campaign", campaign, "--json", env=env)
    assert done.returncode in (0, 2, 4), done.stderr
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def assert_exactly_once(
    dsn: str, campaign: str, processed: dict[str, int], counts: dict[str, int], records: int
) -> None:
    """One outcome per record; no target processed twice; sent => once, failed => never."""
    assert sum(counts.values()) == records
    assert set(counts) <= {"sent", "failed", "unknown"}
    assert all(count == 1 for count in processed.values()), "a target processed twice"
    with psycopg.connect(dsn) as conn:
        states = dict(
            conn.execute(
                "SELECT recipient, state FROM proactive_record WHERE campaign_id = %s",
                (campaign,),
            ).fetchall()
        )
    assert all(processed.get(phone) == 1 for phone, state in states.items() if state == "sent")
    assert all(phone not in processed for phone, state in states.items() if state == "failed")


def assert_no_token_stored(dsn: str, redis_url: str, token: str) -> None:
    """Neither any table of the journal nor any key or value in Redis holds the token."""
    with psycopg.connect(dsn) as conn:
        dump = "".join(
            row[0]
            for table in TABLES
            for row in conn.execute(f"SELECT row_to_json(t)::text FROM {table} t").fetchall()
        )
    assert token not in dump
    store = redis.Redis.from_url(redis_url)
    try:
        for key in store.scan_iter("*"):
            value = store.dump(key) or b""
            assert token.encode() not in key and token.encode() not in value
    finally:
        store.close()
