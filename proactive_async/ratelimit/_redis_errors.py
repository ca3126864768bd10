"""What a Redis failure means for ``SharedRateLimit``: away (waited for, or paced locally)
or an error answer (fatal, ``SharedLimitError``), and the words an operator acts on. Never
the password: a client is described by host, port and database only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

from .._errors import ProactiveError

if TYPE_CHECKING:
    import redis.asyncio as aioredis

__all__ = [
    "DETAIL_MAX",
    "SharedLimitError",
    "UnexpectedReply",
    "describe_client",
    "is_outage",
    "outage_reason",
    "reason",
]

TRANSIENT_ANSWERS: Final = ("LOADING", "MASTERDOWN", "TRYAGAIN", "CLUSTERDOWN")
"""Error answers that pass by themselves (a restart, a failover): waited out like an outage."""
DETAIL_MAX: Final = 160


class SharedLimitError(ProactiveError):
    """The shared rate limit's Redis answered with an error that waiting will not mend (a
    wrong or missing password, out of memory, a read-only replica, not Redis at all).

    Raised by ``SharedRateLimit.acquire`` before a call is made: nothing was sent, and a
    campaign stops at once, as for a 401. ``reason`` is the short why (``"refused the
    password"``); the message names Redis by its URL without the password.
    """

    fatal = True
    may_have_been_processed = False

    def __init__(self, message: str, *, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


def is_outage(exc: BaseException, errors: Any) -> bool:
    """The one rule: Redis away (waited for, or paced locally) or an error answer (fatal)."""
    if isinstance(exc, errors.AuthenticationError | errors.AuthorizationError):
        return False  # a ConnectionError in redis-py, but no wait brings a password
    if isinstance(exc, errors.ConnectionError | errors.TimeoutError | OSError):
        return True
    return isinstance(exc, errors.ResponseError) and str(exc).startswith(TRANSIENT_ANSWERS)


class UnexpectedReply(Exception):
    """The script's answer is not what it returns: whatever answered is not our Redis."""


def reason(exc: BaseException, errors: Any) -> str:
    """Why an error answer stops the limit, in words an operator acts on."""
    text = str(exc)
    # Unauthenticated, Redis refuses a command of many arguments as a protocol error.
    if "unauthenticated" in text or "NOAUTH" in text:
        return "asks for a password (give it in the URL: redis://:PASSWORD@host)"
    if isinstance(exc, errors.AuthenticationError) or text.startswith("WRONGPASS"):
        if "required" in text.lower():
            return "asks for a password (give it in the URL: redis://:PASSWORD@host)"
        return "refused the password (or the user)"
    if isinstance(exc, errors.AuthorizationError | errors.NoPermissionError):
        return "does not let this user run the limit's script (NOPERM)"
    if isinstance(exc, errors.OutOfMemoryError):
        return "is out of memory and refuses writes (maxmemory)"
    if isinstance(exc, errors.ReadOnlyError):
        return "is a read-only replica (point the URL at the primary)"
    if isinstance(exc, errors.InvalidResponse | UnexpectedReply):
        return "does not answer as Redis does (is the URL's host and port a Redis?)"
    return "answered with an error"


def outage_reason(exc: BaseException) -> str:
    """``connection refused``, ``timed out``: what the display says of an outage."""
    text = str(exc).lower()
    for words, reason in OUTAGE_REASONS:
        if words in text:
            return reason
    return type(exc).__name__


OUTAGE_REASONS: Final = (
    ("refused", "connection refused"),
    ("error 111 ", "connection refused"),  # redis-py: "Error 111 connecting to ..."
    ("connect call failed", "connection refused"),
    ("timed out", "timed out"),
    ("timeout", "timed out"),
    ("loading", "loading its data"),
    ("reset", "connection reset"),
    ("closed", "connection closed"),
    ("name or service", "host name not found"),
)


def describe_client(client: aioredis.Redis) -> str:
    """Host, port and database of a given client: never its password."""
    kwargs = client.connection_pool.connection_kwargs
    if "path" in kwargs:
        return f"unix://{kwargs['path']}"
    host, port, db = kwargs.get("host", "localhost"), kwargs.get("port", 6379), kwargs.get("db", 0)
    return f"redis://{host}:{port}/{db}"
