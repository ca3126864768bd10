"""``AdaptiveTuning``: the knobs of the adaptive control law (``_law.py``), built once,
defaults written here only. Both homes of the law read them: ``AdaptiveRate`` (one process)
and ``SharedRateLimit`` (a group through Redis).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from ._bucket import check_positive

__all__ = ["DEFAULT_TUNING", "NOISE_MIN_CALLS", "PAUSES_PER_PLATEAU", "AdaptiveTuning"]


@dataclass(frozen=True, slots=True)
class AdaptiveTuning:
    """How :class:`AdaptiveRate` moves: its knobs, built once, defaults written here only.

    Usage::

        AdaptiveTuning()                              # the defaults, right for most servers
        AdaptiveTuning(decrease=0.8, max_plateau=30)  # back off harder, probe more often

    Parameters:
        floor: never go below this rate.
        interval: seconds between two increases.
        window: seconds over which the achieved goodput is measured.
        reaction_window: seconds after a pause during which 429s are not a new signal.
        decrease: the share of achieved goodput the rate drops to on a 429.
        slow_start: the growth factor per half interval before the first 429.
        approach: the share of the gap to the estimate closed per interval.
        probe: the first step above the estimate, as a share of the rate; each further
            step without a 429 is ``probe_growth`` times larger.
        max_cut: with nothing accepted lately, a 429 sets the rate to this share of the
            rate calls were really sent at (the limiter's grants since the last 429).
        busy: an increase needs this share of the rate to have been used, so an idle
            campaign does not talk itself into a huge rate.
        drain: empty the limiter's bucket on each 429 until its pause ends.
        margin: the rate settles this share below the estimate.
        plateau, max_plateau: seconds spent just under the estimate before probing, at
            first and at most; and at least 10 times the pause the last 429 imposed on
            every sender (a long ``Retry-After`` stops them all at each probe).
        confirm: a new estimate within this share of the last one confirms it (doubling
            the plateau) when the rate had come back up to just under the last one; one
            further off starts again from ``plateau``.
        unknown_pause: the pause assumed for a 429 without Retry-After (the caller backs
            off for a time we are not told).
        noise_share, noise_run: a 429 cuts the rate only when 429s are more than
            ``noise_share`` of the calls of the last one to two ``window``s (counted over
            at least 20 calls), or when ``noise_run`` come with no success between them;
            otherwise it is noise: the rate stays, nobody else pauses, and only the call
            that met it waits its Retry-After.

    How the noise threshold was chosen: a sender above a server's limit by x gets about
    x / (1 + x) of its calls refused, so a real limit passed by 5% or more shows at once;
    random 429s (a busy shard, a proxy) of 1-2% of calls do not. What it costs: a limit
    passed by less than 5% is found only when probing has gone past 5% (up to ~5% of calls
    refused meanwhile), and at fewer than 20 calls per window a lone 429 is taken for noise
    (the second one, or a run, cuts). A 429 with no call accepted lately (the start) is
    always the limit. 0.0 reads every 429 as the limit (the old behaviour).
    """

    floor: float = 1.0
    interval: float = 0.5
    window: float = 1.0
    reaction_window: float = 0.1
    decrease: float = 0.9
    slow_start: float = 2.0
    approach: float = 0.5
    probe: float = 0.02
    probe_growth: float = 1.5
    max_cut: float = 0.5
    busy: float = 0.5
    drain: bool = True
    margin: float = 0.05
    plateau: float = 2.0
    max_plateau: float = 60.0
    confirm: float = 0.15
    unknown_pause: float = 0.5
    noise_share: float = 0.05
    noise_run: int = 3

    def __post_init__(self) -> None:
        for name in ("floor", "interval", "window"):
            check_positive(name, getattr(self, name))
        if not 0 < self.decrease < 1:
            raise ValueError("decrease must be between 0 and 1")
        if not 0 <= self.noise_share < 1 or self.noise_run < 1:
            raise ValueError("noise_share must be in [0, 1) and noise_run at least 1")
        for name in ("reaction_window", "unknown_pause"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must not be negative")


DEFAULT_TUNING: Final = AdaptiveTuning()
PAUSES_PER_PLATEAU: Final = 10.0
"""Seconds held just under a found limit per second of the pause a 429 imposed, at least:
with a ``Retry-After`` of 2 s each probe past the limit stops every sender for 2 s, so
probing at most every 20 s keeps its cost near a tenth of the time; with the short
pauses of most servers (and ``Retry-After: 1``, which pauses the group only briefly once
the limit is known: ``Law.group_pause``) the plateau itself is the longer."""
NOISE_MIN_CALLS: Final = 20
