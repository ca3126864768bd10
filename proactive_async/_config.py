"""Configuration that travels together, each default written once (httpx's Timeout, Limits)."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DEFAULT_LIMITS", "DEFAULT_TIMEOUT", "NO_TIMEOUT", "Limits", "Timeout"]


@dataclass(frozen=True, slots=True)
class Timeout:
    """How long one attempt may take, in seconds; None: no limit.

    Usage::

        AsyncClient(timeout=Timeout(connect=5.0, read=20.0))

    Parameters:
        connect: to open the connection (a connect timeout is certainly not processed).
        read: with nothing of the answer coming: from the start of the attempt until its
            head, then between two pieces of it (past it: a read timeout, ambiguous).
        total: for one whole attempt, so that a server dripping its answer cannot hold a
            call for ever. ``RetryPolicy.deadline`` bounds all attempts together.

    An attempt's clocks start once it has a connection slot (``Limits``): waiting for one
    is not counted. Read and total fire at most a second late (a twentieth of the shorter
    one, for short timeouts), never early.
    """

    connect: float | None = 10.0
    read: float | None = 30.0
    total: float | None = 60.0

    def __post_init__(self) -> None:
        for name in ("connect", "read", "total"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"Timeout.{name} must be positive or None, not {value!r}")


@dataclass(frozen=True, slots=True)
class Limits:
    """The connection pool of one client (how many calls at once; how fast: ``ratelimit``).

    Usage::

        AsyncClient(limits=Limits(max_connections=64))

    Parameters:
        max_connections: connections open at once, in all (also the calls in flight).
        max_connections_per_host: per host; 0 means no limit besides ``max_connections``.
        keepalive_timeout: seconds an idle connection is kept for reuse.
    """

    max_connections: int = 100
    max_connections_per_host: int = 0
    keepalive_timeout: float = 15.0

    def __post_init__(self) -> None:
        if self.max_connections < 1:
            raise ValueError(f"max_connections must be at least 1, not {self.max_connections}")
        if self.max_connections_per_host < 0:
            raise ValueError("max_connections_per_host must be >= 0")


DEFAULT_TIMEOUT = Timeout()
DEFAULT_LIMITS = Limits()
NO_TIMEOUT = Timeout(connect=None, read=None, total=None)
