"""The HTML report's charts: a timeline drawn as inline SVG (no script, no network).

Seconds with no activity longer than ``_MAX_GAP`` (a pause, the days before a resume) are
cut out and marked with a dashed line, so a run and its resume share one readable axis.
Past ``_MAX_POINTS`` seconds, the seconds are summed into equal buckets; each point is a
rate (per second) over its bucket.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape
from typing import Final

from ._timeline import TimelineRow

__all__ = ["Axis", "axis_of", "chart_svg", "duration_text"]

_MAX_GAP: Final = 10
_MAX_POINTS: Final = 400
_WIDTH: Final = 760
_HEIGHT: Final = 210
_LEFT, _RIGHT, _TOP, _BOTTOM = 56, 12, 14, 30


@dataclass(frozen=True)
class Axis:
    """The timeline laid on an axis: per bucket, the summed counts of each series."""

    start: int
    """The first second (Unix time)."""
    seconds: int
    """Seconds of activity on the axis (the gaps cut out)."""
    bucket: int
    """Seconds per point."""
    sums: tuple[tuple[int, ...], ...]
    """Per point, the counts of ``TimelineRow``'s series summed over its bucket."""
    breaks: tuple[tuple[float, int], ...]
    """Where a gap was cut (in axis seconds), and how many seconds it lasted."""

    @property
    def span(self) -> int:
        """Axis seconds from the first point to the last (at least 1)."""
        return max(1, (len(self.sums) - 1) * self.bucket)

    def rates(self, series: int) -> list[float]:
        """One series (0 sent, 1 failed, 2 unknown, 3 throttled) per second, per point."""
        return [point[series] / self.bucket for point in self.sums]


def axis_of(rows: Sequence[TimelineRow]) -> Axis:
    """``rows`` (in time order, at least one) on an axis of active seconds."""
    positions: list[int] = []
    breaks: list[tuple[float, int]] = []
    first = previous = rows[0].second
    cut = 0
    for row in rows:
        gap = row.second - previous
        if gap > _MAX_GAP:
            cut += gap - 1
        positions.append(row.second - first - cut)
        if gap > _MAX_GAP:
            breaks.append((positions[-1] - 0.5, gap))
        previous = row.second
    seconds = positions[-1] + 1
    bucket = max(1, math.ceil(seconds / _MAX_POINTS))
    sums = [[0, 0, 0, 0] for _ in range(math.ceil(seconds / bucket))]
    for position, row in zip(positions, rows, strict=True):
        point = sums[position // bucket]
        for index, value in enumerate(row[1:]):
            point[index] += value
    return Axis(
        start=first,
        seconds=seconds,
        bucket=bucket,
        sums=tuple(tuple(point) for point in sums),
        breaks=tuple(breaks),
    )


def chart_svg(axis: Axis, series: Sequence[tuple[int, str, str]], *, label: str) -> str:
    """An SVG line chart of ``series`` ((index, name, colour) each) on ``axis``."""
    lines = [axis.rates(index) for index, _, _ in series]
    top = _nice_ceiling(max((max(line) for line in lines), default=0.0))
    parts = [
        f'<svg class="chart" viewBox="0 0 {_WIDTH} {_HEIGHT}" role="img" '
        f'aria-label="{escape(label)}" data-bucket="{axis.bucket}">',
        f"<title>{escape(label)}</title>",
        *_grid(top),
        *_time_labels(axis),
        *_breaks(axis),
    ]
    for (_, name, colour), values in zip(series, lines, strict=True):
        parts.append(_polyline(values, top, name, colour))
    parts.append("</svg>")
    return "\n".join(parts)


def _polyline(values: list[float], top: float, name: str, colour: str) -> str:
    count = len(values)
    if count == 1:
        values = values * 2  # a single second: a flat line across, not an invisible dot
        count = 2
    points = " ".join(
        f"{_x(i / (count - 1)):.1f},{_y(value, top):.1f}" for i, value in enumerate(values)
    )
    peak = max(values)
    return (
        f'<polyline class="series" data-series="{escape(name)}" fill="none" '
        f'stroke="{colour}" stroke-width="1.6" stroke-linejoin="round" points="{points}">'
        f"<title>{escape(name)}: peak {_number(peak)}/s</title></polyline>"
    )


def _grid(top: float) -> list[str]:
    parts = []
    for fraction in (0.0, 0.5, 1.0):
        y = _y(top * fraction, top)
        parts.append(
            f'<line x1="{_LEFT}" x2="{_WIDTH - _RIGHT}" y1="{y:.1f}" y2="{y:.1f}" '
            f'stroke="#d0d7de" stroke-width="1"/>'
        )
        parts.append(
            f'<text x="{_LEFT - 6}" y="{y + 4:.1f}" text-anchor="end" class="tick">'
            f"{_number(top * fraction)}/s</text>"
        )
    return parts


def _time_labels(axis: Axis) -> list[str]:
    """Up to five times along the axis (fewer for a run of a few seconds: none repeated)."""
    span = axis.span
    seconds = sorted({round(span * step / 4) for step in range(5)})
    parts = []
    for second in seconds:
        fraction = second / span
        anchor = {0.0: "start", 1.0: "end"}.get(fraction, "middle")
        parts.append(
            f'<text x="{_x(fraction):.1f}" y="{_HEIGHT - 8}" text-anchor="{anchor}" '
            f'class="tick">{escape(duration_text(second))}</text>'
        )
    return parts


def _breaks(axis: Axis) -> list[str]:
    parts = []
    for at, gap in axis.breaks:
        x = _x(min(1.0, at / axis.span))
        parts.append(
            f'<line class="gap" x1="{x:.1f}" x2="{x:.1f}" y1="{_TOP}" '
            f'y2="{_HEIGHT - _BOTTOM}" stroke="#888" stroke-dasharray="4 3">'
            f"<title>nothing happened for {escape(duration_text(gap))} "
            "(cut out; a pause, or a resume)</title></line>"
        )
    return parts


def _x(fraction: float) -> float:
    return _LEFT + fraction * (_WIDTH - _LEFT - _RIGHT)


def _y(value: float, top: float) -> float:
    height = _HEIGHT - _TOP - _BOTTOM
    return _TOP + height - (value / top * height if top > 0 else 0.0)


def _nice_ceiling(value: float) -> float:
    """The axis' top: 1, 2 or 5 times a power of ten, at least ``value`` (1 for nothing)."""
    if value <= 0:
        return 1.0
    power = 10 ** math.floor(math.log10(value))
    for step in (1, 2, 5, 10):
        if value <= step * power:
            return float(step * power)
    return float(10 * power)  # pragma: no cover - the loop always returns


def _number(value: float) -> str:
    return f"{value:,.0f}" if value >= 10 or value == int(value) else f"{value:,.1f}"


def duration_text(seconds: float) -> str:
    """``0 s``, ``45 s``, ``3 min 20 s``, ``2 h 5 min``, ``3 d 4 h``."""
    total = round(seconds)
    if total < 60:
        return f"{total} s"
    minutes, second = divmod(total, 60)
    if minutes < 60:
        return f"{minutes} min {second} s" if second else f"{minutes} min"
    hours, minute = divmod(minutes, 60)
    if hours < 24:
        return f"{hours} h {minute} min" if minute else f"{hours} h"
    days, hour = divmod(hours, 24)
    return f"{days} d {hour} h" if hour else f"{days} d"
