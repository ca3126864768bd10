"""Shim for modules not yet moved; remove when nothing imports ``_ratelimit_redis``."""

from .ratelimit._redis import SHARED_START as SHARED_START
from .ratelimit._redis import SharedRateLimit as SharedRateLimit
from .ratelimit._redis import default_limit_key as default_limit_key
