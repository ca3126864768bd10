"""How a campaign runs: one frozen object, each default written here and nowhere else."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final

from ._planner import DEFAULT_CHUNK_SIZE, PlannerConfig
from ._retry import RetryPolicy
from .ratelimit._adaptive import DEFAULT_TUNING, AdaptiveTuning

__all__ = ["CAMPAIGN_RETRY", "CampaignOptions"]

CAMPAIGN_RETRY: Final = RetryPolicy(max_attempts=8, deadline=None)
"""A campaign's retry policy: safe failures only, 8 attempts, no overall deadline (a
campaign is long; each chunk is bounded by its attempts and the rate limit's pauses)."""


@dataclass(frozen=True, slots=True)
class CampaignOptions:
    """How a campaign plans, paces, retries and stops; the CLI builds one directly.

    Usage::

        options = CampaignOptions(chunk_size=100, concurrency=32, rate=500,
                                  default_region="BR")
        Campaign(client, template=template, targets="recipients.csv", options=options)
        Campaign(client, template=template, targets=rows, chunk_size=100)   # same thing

    Parameters:
        chunk_size: targets per call, at most. concurrency: calls in flight, at most.
        rate: targets per second (a token bucket of ``burst`` targets); calls_per_second:
            an optional second bucket counting calls.
        adaptive: find the rate the server accepts (AIMD on 429); on by default when no
            ``rate`` is given, and bounded by ``rate`` when both are. tuning: how it moves.
        retry: the policy for every failure; default: safe failures only, 8 attempts.
            ``RetryPolicy(retry_ambiguous=True)`` resends ambiguous failures (duplicates
            possible).
        default_region: the region of numbers written without a country code ("BR").
        dedupe: a number or contact seen before ends ``duplicate``, not sent twice.
        allow_repeats_with_different_variables: a repeat with other content variables is
            sent (a different message), not a duplicate.
        allow_vanity_numbers: read letters in a number as keypad digits
            (``1-800-FLOWERS``); off by default, so such numbers end ``rejected``.
        multiline_values: accept a CSV quoted value spanning several lines; off by default,
            so such a record ends ``rejected`` (a stray quote must not merge other
            people's rows into one message).
        recipient_column: the CSV column holding the phone numbers, when it is not one
            of the built-in names (``telefone``); then only that column is read as them.
        resend_unknown: on resume, resend records that ended ``unknown`` or were in flight
            at the crash (duplicates possible).
        resend_failed: on resume, resend records that ended ``failed`` for a cause of the
            run, not of the record (no connection, 429/503, a wrong token or URL: see
            ``is_resendable``), once that cause is fixed. ``failed`` is certainly not
            created, so this never sends twice; a 400 or 422 is not resent. Records a stopped
            run did not send (``aborted``) are resent without it.
        grace_period: seconds calls in flight get to finish once the campaign is stopped or
            cancelled (under the 30 s a service manager usually waits before a kill).
        flush_after: seconds a partly filled chunk waits for more targets of its group.
    """

    chunk_size: int = DEFAULT_CHUNK_SIZE
    concurrency: int = 16
    rate: float | None = None
    calls_per_second: float | None = None
    burst: float | None = None
    adaptive: bool | None = None
    tuning: AdaptiveTuning = DEFAULT_TUNING
    retry: RetryPolicy = CAMPAIGN_RETRY
    default_region: str | None = None
    dedupe: bool = True
    allow_repeats_with_different_variables: bool = False
    allow_vanity_numbers: bool = False
    multiline_values: bool = False
    recipient_column: str | None = None
    resend_unknown: bool = False
    resend_failed: bool = False
    grace_period: float = 10.0
    flush_after: float = 0.05

    def __post_init__(self) -> None:
        if self.chunk_size < 1 or self.concurrency < 1:
            raise ValueError("chunk_size and concurrency must be at least 1")
        for name in ("rate", "calls_per_second", "burst"):
            value = getattr(self, name)
            if value is not None and not (value > 0 and math.isfinite(value)):
                raise ValueError(f"{name} must be a positive number or None, not {value!r}")
        if not self.grace_period >= 0:
            raise ValueError("grace_period must not be negative")

    @property
    def planner(self) -> PlannerConfig:
        """The planning part, as the planner takes it."""
        return PlannerConfig(
            default_region=self.default_region,
            chunk_size=self.chunk_size,
            dedupe=self.dedupe,
            allow_repeats_with_different_variables=self.allow_repeats_with_different_variables,
            allow_vanity_numbers=self.allow_vanity_numbers,
            flush_after=self.flush_after,
        )

    def identity_options(self) -> dict[str, object]:
        """The options that change which lines are sent, for a journal's identity check."""
        options: dict[str, object] = {
            "default_region": self.default_region,
            "dedupe": self.dedupe,
            "allow_repeats_with_different_variables": self.allow_repeats_with_different_variables,
        }
        # Named only when on, so journals written before these options existed still resume.
        if self.allow_vanity_numbers:
            options["allow_vanity_numbers"] = True
        if self.multiline_values:
            options["multiline_values"] = True
        if self.recipient_column is not None:
            options["recipient_column"] = self.recipient_column
        return options
