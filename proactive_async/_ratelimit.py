"""Shim for modules not yet moved; remove when nothing imports ``proactive_async._ratelimit``."""

from .ratelimit import RateLimitBackend as RateLimitBackend
from .ratelimit import report_failure as report_failure
from .ratelimit._local import ADAPTIVE_START as ADAPTIVE_START
from .ratelimit._local import RateLimit as RateLimit
from .ratelimit._local import unnamed_throttle_wait as unnamed_throttle_wait
