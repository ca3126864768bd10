"""What the simulator enforces and which faults it injects: two frozen dataclasses."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

__all__ = ["FAULT_KINDS", "RETRY_AFTER_STYLES", "Faults", "SimulatorConfig"]

# The fault kinds in the order of the single cumulative draw each call makes.
FAULT_KINDS = ("drop_before", "rate_429", "rate_503", "rate_500", "drop_after", "truncate_after")
RETRY_AFTER_STYLES = ("seconds", "fractional", "http-date")


@dataclass(frozen=True)
class Faults:
    """Faults injected into valid, admitted calls; at most one per call.

    Usage::

        Faults(rate_503=0.05, drop_after=0.01, seed=7)

    Each ``rate_*``/``drop_*``/``truncate_after`` is a probability per call; together they
    must not exceed 1. ``drop_before``, ``rate_429`` and ``rate_503`` leave the call
    unprocessed; ``rate_500``, ``drop_after`` and ``truncate_after`` process it first, so
    a client that retries them blindly sends a duplicate.

    Parameters:
        rate_429: 429 with ``Retry-After`` (``retry_after`` seconds), not processed.
        rate_503: 503 with ``Retry-After``, not processed.
        rate_500: processed, then answered 500 with a ProblemDetails body.
        drop_before: body read, then the connection is dropped; not processed.
        drop_after: processed, then the connection is dropped with no response.
        truncate_after: processed, then a 200 whose body stops short of its Content-Length.
        latency: mean seconds added before every answer of the endpoint (after processing).
        latency_jitter: half-width of the uniform jitter around ``latency``.
        seed: seeds the fault draw; the same seed and the same sequence of calls give the
            same faults. ``None`` draws from an unseeded generator.
        retry_after: seconds announced by the injected 429 and 503 answers.
    """

    rate_429: float = 0.0
    rate_503: float = 0.0
    rate_500: float = 0.0
    drop_before: float = 0.0
    drop_after: float = 0.0
    truncate_after: float = 0.0
    latency: float = 0.0
    latency_jitter: float = 0.0
    seed: int | None = None
    retry_after: float = 1.0

    def __post_init__(self) -> None:
        for kind in FAULT_KINDS:
            probability = getattr(self, kind)
            if not 0.0 <= probability <= 1.0:
                raise ValueError(f"Faults.{kind} must be in [0, 1], got {probability}")
        total = sum(getattr(self, kind) for kind in FAULT_KINDS)
        # A little slack so that e.g. 0.1 + 0.2 + 0.7 is not refused for rounding.
        if total > 1.0 + 1e-9:
            raise ValueError(f"the fault probabilities add up to {total}, more than 1")
        for name in ("latency", "latency_jitter", "retry_after"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0.0):
                raise ValueError(f"Faults.{name} must be a finite number >= 0, got {value}")

    def thresholds(self) -> tuple[tuple[float, str], ...]:
        """The cumulative probability at which each configured fault kind ends."""
        cumulative = 0.0
        steps: list[tuple[float, str]] = []
        for kind in FAULT_KINDS:
            probability: float = getattr(self, kind)
            if probability > 0.0:
                cumulative += probability
                steps.append((cumulative, kind))
        return tuple(steps)


@dataclass(frozen=True)
class SimulatorConfig:
    """How the simulated API behaves: its token, its rate limit, its limits and faults.

    Usage::

        SimulatorConfig(rate_limit=200, burst=50, faults=Faults(rate_503=0.1, seed=1))

    Parameters:
        token: the expected Bearer token; any other answers 401.
        rate_limit: server-side limit in targets (recipients + contactIds) per second, a
            token bucket; ``None`` for no limit.
        burst: the bucket size; defaults to ``rate_limit`` (one second's worth). A call
            with more targets than ``burst`` is admitted when the bucket is full and leaves
            it in debt, so the long-run rate still holds and no call is refused forever.
        retry_after_style: how ``Retry-After`` is written: ``"seconds"`` (an integer,
            rounded up), ``"fractional"`` (e.g. ``"0.25"``) or ``"http-date"``.
        max_targets_per_call: more targets than this in one call answers 400.
        faults: the faults to inject.
    """

    token: str = "simulator-token"
    rate_limit: float | None = None
    burst: float | None = None
    retry_after_style: str = "seconds"
    max_targets_per_call: int | None = None
    faults: Faults = field(default_factory=Faults)

    def __post_init__(self) -> None:
        for name in ("rate_limit", "burst"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value > 0.0):
                raise ValueError(f"SimulatorConfig.{name} must be > 0 or None, got {value}")
        if self.burst is not None and self.rate_limit is None:
            raise ValueError("SimulatorConfig.burst needs a rate_limit")
        if self.retry_after_style not in RETRY_AFTER_STYLES:
            raise ValueError(
                f"retry_after_style must be one of {RETRY_AFTER_STYLES}, "
                f"got {self.retry_after_style!r}"
            )
        if self.max_targets_per_call is not None and self.max_targets_per_call < 1:
            raise ValueError("SimulatorConfig.max_targets_per_call must be >= 1 or None")

    @property
    def bucket_size(self) -> float | None:
        """The effective burst: ``burst``, else one second of ``rate_limit``."""
        if self.rate_limit is None:
            return None
        return self.burst if self.burst is not None else self.rate_limit
