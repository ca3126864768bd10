"""Benchmark 3: decoding arrays of 50 and 500 conversations with the SDK's decoder.

Measures ``proactive_async._models.decode_conversations`` (msgspec Structs with defaults
and open enums) on realistic response bodies (every field of the contract, one message,
one tag, one variable), in microseconds per conversation, alternating round by round with
the baselines in the same run: bare msgspec Structs (same fields, no defaults, plain ints
for enums), ``orjson.loads``, ``json.loads`` and pydantic v2
``TypeAdapter(list[Model]).validate_json``.

Targets: SDK <= 1.2x bare msgspec time; >= 4x faster than pydantic; >= 3x faster than
json.loads.
"""

from __future__ import annotations

import functools
import gc
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _baselines
from _common import alternate, median, pin_client, row, sdk_missing
from _fastserver import conversation

NAME = "3 decode"


def body_of(count: int) -> bytes:
    """A response body of ``count`` distinct conversations."""
    return msgspec.json.encode(
        [conversation(i, f"+55119{10_000_000 + i:08d}") for i in range(count)]
    )


def per_conversation_us(
    decode: Callable[[bytes], Any], body: bytes, count: int, budget: float
) -> float:
    """Best-of-batches microseconds per conversation, for about ``budget`` seconds."""
    decode(body)
    loops = 1
    while True:  # size a batch to ~budget/5
        start = time.perf_counter()
        for _ in range(loops):
            decode(body)
        took = time.perf_counter() - start
        if took >= budget / 5 or loops > 1_000_000:
            break
        loops *= 2
    times = []
    gc_was = gc.isenabled()
    gc.disable()  # a collection landing in one decoder's batch is noise, not its cost
    try:
        for _ in range(3):
            start = time.perf_counter()
            for _ in range(loops):
                decode(body)
            times.append(time.perf_counter() - start)
    finally:
        if gc_was:
            gc.enable()
    return min(times) / loops / count * 1e6


def decoders() -> tuple[dict[str, Callable[[bytes], Any]], str | None]:
    """Every decoder by name; the SDK's is absent (with why) when it cannot be imported."""
    import orjson

    found: dict[str, Callable[[bytes], Any]] = {}
    missing = sdk_missing("proactive_async._models:decode_conversations")
    if missing is None:
        from proactive_async._models import decode_conversations

        found["sdk"] = decode_conversations
    found["bare_msgspec"] = _baselines.BARE_DECODER.decode
    found["orjson"] = orjson.loads
    found["json"] = json.loads
    found["pydantic"] = _baselines.pydantic_adapter().validate_json
    return found, missing


def run(quick: bool = False) -> dict[str, Any]:
    """Run benchmark 3; returns its rows and the per-round figures."""
    pinned = pin_client()
    found, missing = decoders()
    sizes = (50, 500)
    rounds = 1 if quick else 5
    budget = 0.02 if quick else 0.25
    rows: list[dict[str, Any]] = []
    details: dict[str, Any] = {"pinning": pinned, "rounds": rounds, "unit": "us/conversation"}
    # Warm the core and every decoder first: the first timed block otherwise runs on a
    # cold CPU and read up to 1.3x slower, whichever decoder it was.
    warm_body = body_of(sizes[0])
    for decode in found.values():
        per_conversation_us(decode, warm_body, sizes[0], budget)
    for size in sizes:
        body = body_of(size)
        for decode in found.values():  # every decoder reads the same body
            decode(body)
        figures = alternate(
            {
                name: functools.partial(per_conversation_us, decode, body, size, budget)
                for name, decode in found.items()
            },
            rounds,
        )
        med = {name: median(values) for name, values in figures.items()}
        details[str(size)] = {"figures": figures, "medians": med, "body_bytes": len(body)}
        label = f"{NAME} {size} conversations"
        bare = med["bare_msgspec"]
        if missing is not None:
            rows.append(
                row(
                    f"{label} vs bare msgspec",
                    baseline=f"{bare:.2f} us/conv",
                    target="<= 1.2x time",
                    skipped=missing,
                )
            )
            continue
        sdk = med["sdk"]
        rows += [
            row(
                f"{label} vs bare msgspec",
                sdk=f"{sdk:.2f} us/conv",
                baseline=f"{bare:.2f} us/conv",
                ratio=sdk / bare,
                target="<= 1.2x time",
                ok=sdk <= 1.2 * bare,
            ),
            row(
                f"{label} vs pydantic v2",
                sdk=f"{sdk:.2f} us/conv",
                baseline=f"{med['pydantic']:.2f} us/conv",
                ratio=med["pydantic"] / sdk,
                target=">= 4x faster",
                ok=med["pydantic"] >= 4 * sdk,
            ),
            row(
                f"{label} vs json.loads",
                sdk=f"{sdk:.2f} us/conv",
                baseline=f"{med['json']:.2f} us/conv",
                ratio=med["json"] / sdk,
                target=">= 3x faster",
                ok=med["json"] >= 3 * sdk,
            ),
            row(
                f"{label} vs orjson.loads",
                sdk=f"{sdk:.2f} us/conv",
                baseline=f"{med['orjson']:.2f} us/conv",
                ratio=med["orjson"] / sdk,
                target="(info)",
                ok=None,
            ),
        ]
    return {"name": NAME, "rows": rows, "details": details}


if __name__ == "__main__":
    print(json.dumps(run("--quick" in sys.argv), indent=2))
