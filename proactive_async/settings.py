"""One home for configuration: the settings object, and the builders that read it.

Usage::

    from proactive_async.settings import Settings, build_client

    settings = Settings.from_env(read_timeout=20)   # PROACTIVE_* first, then the overrides
    async with build_client(settings) as client:
        ...

``Settings.from_env`` is the only reader of ``os.environ`` in the package (besides
``AsyncClient``'s documented ``PROACTIVE_BASE_URL``/``PROACTIVE_TOKEN`` defaults), and
nothing writes it. ``build_client``, ``build_sync_client`` and ``build_rate_limit`` are
the only places that turn settings into a client or a rate limit: the CLI and the workers
call them, so a CA file, a proxy or a timeout set once reaches every one of them. Every
default a setting falls back to is written here once.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import sys
import warnings
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Annotated, Any, Final

import msgspec

from ._client import AsyncClient
from ._config import DEFAULT_LIMITS, DEFAULT_TIMEOUT, Limits, Timeout
from ._constants import (
    DEFAULT_ARQ_JOBS,
    DEFAULT_CELERY_PROCESSES,
    DEFAULT_JOB_TIMEOUT,
    DEFAULT_REDIS_URL,
    DEFAULT_VISIBILITY_TIMEOUT,
    DEFAULT_WORKER_CONCURRENCY,
)
from ._errors import ProactiveError
from ._loop import LoopName
from ._secrets import display_url
from .ratelimit import AdaptiveTuning, RateLimit, SharedRateLimit, default_limit_key
from .ratelimit._adaptive import DEFAULT_TUNING

if TYPE_CHECKING:
    from ._models import ProactiveConversationRequest
    from ._sync import Client
    from .distributed import SendSettings
    from .ratelimit import RateLimitBackend

__all__ = [
    "DEFAULT_ARQ_JOBS",
    "DEFAULT_CELERY_PROCESSES",
    "DEFAULT_JOB_TIMEOUT",
    "DEFAULT_REDIS_URL",
    "DEFAULT_VISIBILITY_TIMEOUT",
    "DEFAULT_WORKER_CONCURRENCY",
    "VARIABLES",
    "Settings",
    "SettingsError",
    "build_client",
    "build_rate_limit",
    "build_send_rate_limit",
    "build_sync_client",
    "display_url",
    "environment_value",
    "setup_logging",
]


# Constraints msgspec checks while converting: a count is at least 1, seconds are positive,
# URLs name a scheme the code behind them can use.
_Count = Annotated[int, msgspec.Meta(ge=1)]
_Seconds = Annotated[float, msgspec.Meta(gt=0)]
_HttpUrl = Annotated[str, msgspec.Meta(pattern=r"^https?://")]
_RedisUrl = Annotated[str, msgspec.Meta(pattern=r"^(redis|rediss|unix)://")]
_LogLevel = Annotated[str, msgspec.Meta(pattern=r"(?i)^(debug|info|warning)$")]

VARIABLES: Final[Mapping[str, str]] = {
    "base_url": "PROACTIVE_BASE_URL",
    "token": "PROACTIVE_TOKEN",
    "ca_file": "PROACTIVE_CA_FILE",
    "proxy": "PROACTIVE_PROXY",
    "connect_timeout": "PROACTIVE_CONNECT_TIMEOUT",
    "read_timeout": "PROACTIVE_READ_TIMEOUT",
    "total_timeout": "PROACTIVE_TIMEOUT",
    "journal": "PROACTIVE_JOURNAL",
    "redis_url": "PROACTIVE_REDIS_URL",
    "broker_url": "PROACTIVE_BROKER_URL",
    "concurrency": "PROACTIVE_CONCURRENCY",
    "worker_concurrency": "PROACTIVE_WORKER_CONCURRENCY",
    "job_timeout": "PROACTIVE_JOB_TIMEOUT",
    "visibility_timeout": "PROACTIVE_VISIBILITY_TIMEOUT",
    "loop": "PROACTIVE_LOOP",
    "log": "PROACTIVE_LOG",
}
"""Each setting's environment variable."""

# What a refused value is told, by setting: msgspec's own words name types, not remedies.
_REASONS: Final[Mapping[str, str]] = {
    "base_url": "must be an http:// or https:// URL",
    "proxy": "must be an http:// or https:// URL",
    "redis_url": "must start with redis://, rediss:// or unix://",
    "concurrency": "must be a whole number of at least 1",
    "worker_concurrency": "must be a whole number of at least 1",
    "visibility_timeout": "must be a whole number of seconds of at least 1",
    "loop": "must be auto, asyncio or uvloop",
    "log": "must be debug, info or warning",
}
_SECONDS_REASON: Final = "must be a positive number of seconds"
_TEXT_REASON: Final = "must be text"
# Shown as given when refused: none of them can hold a secret.
_SHOWN: Final = frozenset(
    {
        "ca_file",
        "connect_timeout",
        "read_timeout",
        "total_timeout",
        "concurrency",
        "worker_concurrency",
        "job_timeout",
        "visibility_timeout",
        "loop",
        "log",
    }
)
# Never shown whole: a token, and URLs that may carry a password.
_URLS: Final = ("base_url", "proxy", "journal", "redis_url", "broker_url")


class SettingsError(ProactiveError, ValueError):
    """A setting whose value cannot be used; names the variable (or the setting) and why.

    ``variable`` is the environment variable the value came from, or None when it was
    given as an override (a command-line flag, a keyword); ``field`` the setting's name.
    """

    def __init__(self, field: str, reason: str, *, variable: str | None) -> None:
        super().__init__(f"{variable or field} {reason}")
        self.field = field
        self.reason = reason
        self.variable = variable


class Settings(msgspec.Struct, frozen=True, kw_only=True):
    """What the client, the rate limit, the journal and the workers are configured with.

    Usage::

        settings = Settings.from_env()                           # PROACTIVE_* variables
        settings = Settings.from_env(os.environ, proxy=args.proxy)   # a flag wins when set
        client = build_client(settings)

    Every field is optional; None means the default of whatever uses it. The environment
    variable of each field is in ``VARIABLES``. ``repr`` never shows the token, nor a
    password held in a URL.

    Parameters:
        base_url, token: the API (``PROACTIVE_BASE_URL``, ``PROACTIVE_TOKEN``).
        ca_file: a PEM bundle of CA certificates to trust (a private CA).
        proxy: an HTTP proxy URL, credentials in it if any.
        connect_timeout, read_timeout, total_timeout: seconds, per attempt (``Timeout``);
            ``PROACTIVE_TIMEOUT`` is the total.
        journal: a campaign journal: a SQLite path or a ``postgresql://`` DSN.
        redis_url: Redis for a shared rate limit and arq's queue.
        broker_url: Celery's broker.
        concurrency: calls in flight, which also sizes the connection pool.
        worker_concurrency: jobs one arq worker runs at once (``DEFAULT_ARQ_JOBS``), or
            processes of one Celery worker (``DEFAULT_CELERY_PROCESSES``).
        job_timeout: seconds one arq job may run.
        visibility_timeout: seconds before Celery redelivers an unacknowledged chunk.
        loop: the event loop of the CLI and the workers: auto (uvloop if installed),
            asyncio or uvloop (``proactive-async[fast]``).
        log: ``debug``, ``info`` or ``warning`` (``PROACTIVE_LOG``, as ``OPENAI_LOG``): the
            package's log lines on stderr from that level (``setup_logging``).
    """

    base_url: _HttpUrl | None = None
    token: str | None = None
    ca_file: str | None = None
    proxy: _HttpUrl | None = None
    connect_timeout: _Seconds | None = None
    read_timeout: _Seconds | None = None
    total_timeout: _Seconds | None = None
    journal: str | None = None
    redis_url: _RedisUrl | None = None
    broker_url: str | None = None
    concurrency: _Count | None = None
    worker_concurrency: _Count | None = None
    job_timeout: _Seconds = DEFAULT_JOB_TIMEOUT
    visibility_timeout: _Count = DEFAULT_VISIBILITY_TIMEOUT
    loop: LoopName | None = None
    log: _LogLevel | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, /, **overrides: Any) -> Settings:
        """The environment (default ``os.environ``) first, then the overrides that are not
        None. An empty variable counts as unset. A value that does not convert, or breaks a
        constraint, is a ``SettingsError`` naming the variable (or the override)."""
        unknown = sorted(set(overrides) - set(VARIABLES))
        if unknown:
            raise TypeError(f"Settings has no field {', '.join(map(repr, unknown))}")
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for name, variable in VARIABLES.items():
            given = overrides.get(name)
            if given is not None:
                values[name] = _convert(name, given, variable=None)
                continue
            text = env.get(variable, "").strip()
            if text:
                values[name] = _convert(name, text, variable=variable)
        return cls(**values)

    @property
    def timeout(self) -> Timeout:
        """The client's ``Timeout``: each part set here, else the client's default."""
        given = {
            "connect": self.connect_timeout,
            "read": self.read_timeout,
            "total": self.total_timeout,
        }
        return dataclasses.replace(
            DEFAULT_TIMEOUT, **{part: value for part, value in given.items() if value is not None}
        )

    @property
    def limits(self) -> Limits:
        """The connection pool: never smaller than the default, and at least one connection
        for each call in flight (a call waiting for a connection is not in flight)."""
        if self.concurrency is None or self.concurrency <= DEFAULT_LIMITS.max_connections:
            return DEFAULT_LIMITS
        return dataclasses.replace(DEFAULT_LIMITS, max_connections=self.concurrency)

    def _shown(self) -> Iterator[tuple[str, object]]:
        """The fields that are set, secrets hidden: for ``repr`` and rich's pretty print."""
        for name in self.__struct_fields__:
            value = getattr(self, name)
            if value == _FIELD_DEFAULTS[name]:
                continue
            if name == "token":
                value = "***"
            elif name in _URLS:
                value = display_url(value)
            yield name, value

    def __repr__(self) -> str:
        return f"Settings({', '.join(f'{name}={value!r}' for name, value in self._shown())})"

    def __rich_repr__(self) -> list[tuple[str, Any]]:
        # msgspec's own would show every field as it is, the token included.
        return list(self._shown())


_FIELDS: Final = msgspec.structs.fields(Settings)
_FIELD_TYPES: Final[Mapping[str, Any]] = {field.name: field.type for field in _FIELDS}
_FIELD_DEFAULTS: Final[Mapping[str, object]] = {field.name: field.default for field in _FIELDS}


def _convert(name: str, value: object, *, variable: str | None) -> object:
    """``value`` as field ``name`` takes it (strings converted), or a SettingsError."""
    kind = _FIELD_TYPES[name]
    try:
        converted = msgspec.convert(value, kind, strict=False)
    except msgspec.ValidationError:
        raise SettingsError(name, _refusal(name, value), variable=variable) from None
    if isinstance(converted, float) and not math.isfinite(converted):
        raise SettingsError(name, _refusal(name, value), variable=variable)
    return converted


def _refusal(name: str, value: object) -> str:
    if name in _REASONS:
        reason = _REASONS[name]
    elif name.endswith("_timeout"):
        reason = _SECONDS_REASON
    else:
        reason = _TEXT_REASON
    # A refused URL is not echoed: it may hold a password.
    return f"{reason}, not {value!r}" if name in _SHOWN else reason


# -- builders ----------------------------------------------------------------------


def environment_value(field: str, environ: Mapping[str, str] | None = None) -> str | None:
    """The raw text of one setting's variable (``VARIABLES[field]``), stripped; None when
    unset or empty. For a tool that needs one value without validating the rest."""
    env = os.environ if environ is None else environ
    text = env.get(VARIABLES[field], "").strip()
    return text or None


def setup_logging(environ: Mapping[str, str] | None = None) -> None:
    """``PROACTIVE_LOG=debug|info|warning``: the ``proactive_async`` logger at that level,
    on stderr unless the application configured logging (a handler of its own, on that
    logger or the root). Run when the package is imported, as ``OPENAI_LOG`` is; a value
    it cannot use is a warning, never an error at import. No line holds the token."""
    text = environment_value("log", environ)
    if text is None:
        return
    try:
        level = _convert("log", text, variable=VARIABLES["log"])
    except SettingsError as exc:
        warnings.warn(f"{exc}: ignored", RuntimeWarning, stacklevel=2)
        return
    _log_at(str(level))


def _log_at(level: str) -> None:
    logger = logging.getLogger("proactive_async")
    logger.setLevel(level.upper())
    configured = [h for h in logger.handlers if not isinstance(h, logging.NullHandler)]
    if configured or logging.getLogger().handlers:
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logger.addHandler(handler)


def _client_options(settings: Settings) -> dict[str, Any]:
    return {
        "timeout": settings.timeout,
        "limits": settings.limits,
        "verify": settings.ca_file if settings.ca_file is not None else True,
        "proxy": settings.proxy,
    }


def build_client(settings: Settings, **options: Any) -> AsyncClient:
    """An ``AsyncClient`` with the settings' API, TLS trust, proxy, timeouts and pool;
    ``options`` are more ``AsyncClient`` keywords (``rate_limit=``, ``retry=``), and win.

    A base URL or token the settings lack is looked for by ``AsyncClient`` itself
    (``PROACTIVE_BASE_URL``, ``PROACTIVE_TOKEN``); ClientStateError if it is not found.
    The settings' ``log`` level, if any, is applied as ``setup_logging`` applies it.
    """
    if settings.log is not None:
        _log_at(settings.log)
    return AsyncClient(
        settings.base_url, settings.token, **{**_client_options(settings), **options}
    )


def build_sync_client(settings: Settings, **options: Any) -> Client:
    """The blocking ``Client`` of the same settings (see ``build_client``)."""
    from ._sync import Client  # anyio's portal only for those who block

    if settings.log is not None:
        _log_at(settings.log)
    return Client(settings.base_url, settings.token, **{**_client_options(settings), **options})


def build_rate_limit(
    settings: Settings,
    *,
    rate: float | None = None,
    burst: float | None = None,
    adaptive: bool | None = None,
    calls_per_second: float | None = None,
    tuning: AdaptiveTuning = DEFAULT_TUNING,
    key: str | None = None,
    channel_id: int | None = None,
    redis_url: str | None = None,
    processes: int | None = None,
) -> RateLimitBackend:
    """The rate limit of a campaign or a worker: shared through Redis when there is one.

    Parameters:
        rate, burst, adaptive, calls_per_second, tuning: as ``RateLimit`` takes them;
            ``rate`` is the total of every process sharing it.
        key: the shared limit's name; None: from the API host and ``channel_id``
            (``default_limit_key``), so that campaigns on one channel share it.
        redis_url: Redis for a shared limit; None: the settings' ``redis_url``. With
            neither, the limit is local to this process.
        processes: how many processes share the rate. Local: this one paces at
            ``rate / processes``. Shared: while Redis cannot be reached, this one paces
            locally at ``rate / processes``; None: it waits for Redis (never unpaced).

    No limit at all (``adaptive=False``, no ``rate``) has nothing to share: it is local.
    """
    url = redis_url if redis_url is not None else settings.redis_url
    share = 1 if processes is None else processes
    if share < 1:
        raise ValueError(f"processes must be at least 1, not {processes}")
    if url is None or (adaptive is False and rate is None and calls_per_second is None):
        return RateLimit(
            _part(rate, share),
            burst=_part(burst, share),
            calls_per_second=_part(calls_per_second, share),
            adaptive=adaptive,
            tuning=tuning,
        )
    if calls_per_second is not None:
        raise ValueError(
            "a calls-per-second limit is not shared through Redis: give a rate (targets/s)"
        )
    if key is None:
        if settings.base_url is None:
            raise ValueError("a shared rate limit needs a key, or a base URL to name it by")
        key = default_limit_key(settings.base_url, channel_id)
    return SharedRateLimit(
        url,
        key=key,
        rate=rate,
        burst=burst,
        tuning=tuning,
        on_redis_error="wait" if processes is None else "local",
        processes=share,
    )


def build_send_rate_limit(
    settings: Settings,
    template: ProactiveConversationRequest,
    send: SendSettings,
    *,
    redis_url: str | None,
    processes: int | None = None,
) -> RateLimitBackend:
    """The rate limit a worker sends a distributed campaign's slices with: the campaign's
    stored rate, shared by its channel (``build_rate_limit``)."""
    channel = template.channel_id if isinstance(template.channel_id, int) else None
    return build_rate_limit(
        settings,
        rate=send.rate,
        burst=send.burst,
        adaptive=send.adaptive,
        channel_id=channel,
        redis_url=redis_url,
        processes=processes,
    )


def _part(value: float | None, share: int) -> float | None:
    return None if value is None else value / share
