"""Shim for modules not yet moved; remove when nothing imports ``proactive_async._limits``."""

from .ratelimit._adaptive import DEFAULT_TUNING as DEFAULT_TUNING
from .ratelimit._adaptive import AdaptiveRate as AdaptiveRate
from .ratelimit._adaptive import AdaptiveTuning as AdaptiveTuning
from .ratelimit._bucket import Cooldown as Cooldown
