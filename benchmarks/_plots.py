"""Pictures of rate-limited runs: accepted targets/s over time against the server's limit.

``draw_run`` takes what the server saw (one ``(arrival, status, targets accepted)`` per
call, any clock) and writes a PNG: accepted targets per second in 100 ms bins (light) and
over a sliding second (dark), the limit as a dashed line, every 429 as a red tick along the
bottom (and the 429s per second on a second axis). matplotlib is the `bench` extra's; when
it is missing, nothing is drawn and the caller gets a note saying so, never an error.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

PLOTS = Path(__file__).resolve().parent / "plots"
_BIN = 0.1


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def draw_run(
    answers: Sequence[tuple[float, int, int]],
    *,
    limit: float,
    title: str,
    path: Path,
) -> str:
    """Draw one run to ``path``; returns a note for the row (where, or why not)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        return f"no plot: matplotlib missing ({exc.name}; pip install -e '.[bench]')"
    if not answers:
        return "no plot: the server logged no calls"
    start = min(t for t, _, _ in answers)
    end = max(t for t, _, _ in answers) - start
    bins = int(end / _BIN) + 1
    accepted = [0.0] * bins
    refused = [0.0] * bins
    throttled_at: list[float] = []
    for t, status, n in answers:
        i = min(bins - 1, int((t - start) / _BIN))
        if status == 429:
            refused[i] += 1
            throttled_at.append(t - start)
        elif 200 <= status < 300:
            accepted[i] += n
    per_bin = [a / _BIN for a in accepted]
    width = round(1.0 / _BIN)
    sliding = [
        sum(accepted[max(0, i - width + 1) : i + 1]) / (min(i + 1, width) * _BIN)
        for i in range(bins)
    ]
    refused_per_s = [
        sum(refused[max(0, i - width + 1) : i + 1]) / (min(i + 1, width) * _BIN)
        for i in range(bins)
    ]
    times = [(i + 1) * _BIN for i in range(bins)]
    fig, ax = plt.subplots(figsize=(9, 4.2), dpi=110)
    ax.plot(times, per_bin, color="#9ecae1", lw=0.8, label="accepted targets/s (100 ms bins)")
    ax.plot(times, sliding, color="#08519c", lw=1.8, label="accepted targets/s (last 1 s)")
    ax.axhline(limit, color="black", ls="--", lw=1.2, label=f"server limit {limit:g}/s")
    if throttled_at:
        ax.plot(
            throttled_at,
            [0] * len(throttled_at),
            "|",
            color="#d62728",
            ms=10,
            label=f"429 ({len(throttled_at)})",
        )
        ax2 = ax.twinx()
        ax2.plot(times, refused_per_s, color="#d62728", lw=0.9, alpha=0.6)
        ax2.set_ylabel("429s per second (last 1 s)", color="#d62728")
        ax2.set_ylim(bottom=0)
    ax.set_xlabel("seconds since the first call (server's clock)")
    ax.set_ylabel("targets/s")
    ax.set_ylim(bottom=0, top=max(limit * 1.6, max(sliding) * 1.1))
    ax.set_xlim(left=0)
    ax.set_title(title, fontsize=10)
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    try:
        return f"plot {path.relative_to(PLOTS.parent)}"
    except ValueError:
        return f"plot {path}"


def plot_path(name: str, quick: bool, scratch: Path) -> Path:
    """Full runs draw into benchmarks/plots/; quick runs into a scratch dir (thrown away)."""
    return (scratch if quick else PLOTS) / f"{slug(name)}.png"
