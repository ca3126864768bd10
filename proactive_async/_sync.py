"""Client: the blocking client; its calls in the calling thread, the rest on one event loop.

A plain call (``create_proactive_conversation``) is made in the calling thread, with no
event loop at all: each Client holds a blocking twin of its ``AsyncClient``
(``AsyncClient._blocking_twin``, over ``_transport/_blocking.py``'s ``SyncTransport``)
whose coroutines never suspend, and ``drive`` runs one to its end with a single ``send``.
The retries, the decoding, the errors and the telemetry are the async client's own code;
between retries the thread sleeps. Why: bench 11 (one process, the fast local server),
1.26x AsyncClient's time a call through the loop below, 0.91x this way; 8 threads, 0.50x
of 8 tasks' calls/s through the loop, about 1.0x this way.

What needs the event loop (``run_campaign``, ``run``, and every call of a client with a
rate limit, a proxy, a transport or a sleep of the caller's, whose coroutines do suspend)
goes through one event loop per process, shared by every ``Client``, where each Client's
``AsyncClient`` (and so its loop's connection pool) lives. No thread is dedicated to it:
the thread that calls while nobody drives the loop runs it itself until its call ends;
other threads' calls meanwhile are run by that driver, and a keeper thread takes the loop
over when the driver's call ends with work left on it (other threads' calls, a collected
client's close, an integration's background work started by ``Client.run``) and drives it
until none is left (``_calls.py``, which says why, with figures). At interpreter exit
(``atexit``) the clients still open are closed and what is left on the loop is cancelled,
so that a script that never calls ``close()`` still exits cleanly, and quickly.

After ``os.fork()`` the child holds copies of the parent's loop, sessions and sockets. The
child forgets them (new pools, and a new loop, are made at its first call) and never
closes or uses them: closing a copied TLS connection would write a close_notify into the parent's
stream, and unregistering a copied socket from the copied epoll instance (the very one the
parent's loop waits on) would deafen the parent. So the child points each descriptor the
old loop watched, and the epoll descriptor itself, at harmless stand-ins, and keeps the old
objects referenced so that nothing tears them down.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import copy
import os
import select
import selectors
import ssl
import threading
import time
import weakref
from collections.abc import AsyncIterable, Awaitable, Callable, Coroutine, Iterable, Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, Self, TypedDict, TypeVar, Unpack

from ._calls import EXITING as _EXITING
from ._calls import SharedLoop as _SharedLoop
from ._campaign import Campaign
from ._client import ApiResponse, AsyncClient
from ._config import Limits, Timeout
from ._errors import ClientStateError
from ._models import Conversation, ProactiveConversationFields, ProactiveConversationRequest
from ._report import CampaignSummary
from ._retry import RetryPolicy, Sleep
from ._transport_api import AsyncTransport
from .ratelimit import RateLimitBackend

if TYPE_CHECKING:
    from opentelemetry.metrics import MeterProvider
    from opentelemetry.trace import TracerProvider

__all__ = ["Client", "ClientOptions"]

T = TypeVar("T")

_CLOSED: Final = "the client is closed; create a new Client"
_IN_EVENT_LOOP: Final = (
    "Client blocks, so it cannot be called from a running event loop (it would stall that "
    "loop, or deadlock); in async code use AsyncClient and await its methods"
)
_EXIT_CLOSE_TIMEOUT: Final = 5.0
"""Seconds the clients left open get to close at interpreter exit: exit must not hang."""
_EXIT_JOIN_TIMEOUT: Final = 10.0


class ClientOptions(TypedDict, total=False):
    """The keyword options of ``AsyncClient``, which ``Client`` forwards unchanged."""

    retry: RetryPolicy | None
    timeout: Timeout | None
    limits: Limits
    verify: bool | str | os.PathLike[str] | ssl.SSLContext
    proxy: str | None
    headers: Mapping[str, str] | None
    max_response_bytes: int
    mask_phone_numbers: bool
    rate_limit: RateLimitBackend | None
    assume_utc: bool
    sleep: Sleep | None
    clock: Callable[[], float] | None
    transport: AsyncTransport | None
    tracer_provider: TracerProvider | None
    meter_provider: MeterProvider | None


class _Runtime:
    """The process's one event loop, made on first use, and the clients that use it."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.generation = 0
        """Bumped in a fork child: a client built in an earlier generation is the parent's."""
        self._shared: _SharedLoop | None = None
        self._exiting = False
        self._clients: weakref.WeakSet[Client] = weakref.WeakSet()
        self._closing: set[asyncio.Task[None]] = set()  # closes of collected clients
        self._inherited: list[object] = []  # a fork child's copies of the parent's objects

    def shared(self) -> _SharedLoop:
        """The loop the calls run on, made if need be."""
        shared = self._shared
        if shared is not None:
            return shared
        with self.lock:
            if self._exiting:
                raise ClientStateError(_EXITING)
            if self._shared is None:
                self._shared = _SharedLoop(asyncio.new_event_loop())
            return self._shared

    def register(self, client: Client) -> None:
        with self.lock:
            self._clients.add(client)

    def keep(self, inherited: object) -> None:
        """Hold a fork child's copy of the parent's objects for good: never closed, never freed."""
        self._inherited.append(inherited)

    def close(self, async_client: AsyncClient, direct: AsyncClient | None, generation: int) -> None:
        """Close a client's pools, waiting for them (the loop's exists only if the loop
        does)."""
        if generation != self.generation:
            self.keep((async_client, direct))
            return
        if direct is not None:
            drive(direct.aclose())
        shared = self._shared
        if shared is not None:
            shared.run(async_client.aclose())

    def release(
        self, async_client: AsyncClient, direct: AsyncClient | None, generation: int
    ) -> None:
        """A client was collected without ``close()``: close its blocking pool now and its
        loop's pool at the loop's next drive (or at exit), from any thread, never waiting
        for the loop, and taking no lock of this runtime (a collection may happen
        anywhere, inside our own critical sections too). The blocking pool's own lock is
        free then: no thread can be using the pool of a client nothing refers to."""
        if generation != self.generation:
            self.keep((async_client, direct))
            return
        if direct is not None:
            drive(direct.aclose())  # never blocks: closes sockets, takes no lock it waits on
        shared = self._shared
        if shared is None:
            return
        with contextlib.suppress(RuntimeError):  # the loop closed: interpreter exit
            shared.loop.call_soon_threadsafe(self._close_soon, async_client)

    def _close_soon(self, async_client: AsyncClient) -> None:
        task = asyncio.ensure_future(async_client.aclose())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    def shutdown(self) -> None:
        """At interpreter exit: close every client still open, cancel what is left on the
        loop (a call from a daemon thread), then take no more calls."""
        with self.lock:
            self._exiting = True
            shared = self._shared
            clients = [c for c in list(self._clients) if c._generation == self.generation]
        for client in clients:
            if client._direct is not None:
                drive(client._direct.aclose())
        if shared is None:
            return
        try:
            with contextlib.suppress(ClientStateError):
                closing = self._close_all([client._async for client in clients])
                shared.run(closing, within=_EXIT_JOIN_TIMEOUT)
        finally:
            shared.close()

    async def _close_all(self, pools: list[AsyncClient]) -> None:
        closes = [pool.aclose() for pool in pools]
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(_EXIT_CLOSE_TIMEOUT):
                await asyncio.gather(*closes, *self._closing, return_exceptions=True)
        # Whatever still runs (a call from a daemon thread) is cancelled as the loop ends.
        me = asyncio.current_task()
        rest = [task for task in asyncio.all_tasks() if task is not me]
        for task in rest:
            task.cancel()
        if rest:
            await asyncio.wait(rest, timeout=_EXIT_CLOSE_TIMEOUT)

    def after_fork_in_child(self) -> None:
        """Forget the parent's loop, neutralised and kept (never closed, never freed)."""
        self.lock = threading.Lock()  # another thread may have held it at the fork
        self.generation += 1
        if self._shared is not None:
            _neutralize_inherited(self._shared.loop)
        self.keep((self._shared, self._closing))
        self._shared = None
        self._closing = set()


def _neutralize_inherited(loop: asyncio.AbstractEventLoop) -> None:
    """In a fork child: point the descriptors the parent's loop watches at stand-ins.

    Each socket the loop watched now refers to /dev/null and its epoll descriptor to a new,
    empty epoll instance of the child's own, so that whatever the copied objects do (close,
    write, unregister) never reaches the parent's connections or the parent's epoll. Loops
    without a selector (uvloop) are only kept, never used.
    """
    # What the copies say if they are ever freed ("Unclosed client session") is not news.
    loop.set_exception_handler(_ignore)
    selector = getattr(loop, "_selector", None)  # asyncio's selector event loops
    if not isinstance(selector, selectors.BaseSelector):
        return
    watched = [key.fd for key in selector.get_map().values()]
    stand_in = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
    try:
        for fd in watched:
            with contextlib.suppress(OSError):
                os.dup2(stand_in, fd, inheritable=False)
    finally:
        os.close(stand_in)
    if isinstance(selector, selectors.EpollSelector):
        fresh = select.epoll()
        try:
            os.dup2(fresh.fileno(), selector.fileno(), inheritable=False)
        finally:
            fresh.close()


def _ignore(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    pass


_RUNTIME: Final = _Runtime()
atexit.register(_RUNTIME.shutdown)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_RUNTIME.after_fork_in_child)


async def _sleep_blocking(seconds: float) -> None:
    """The wait between a blocking call's retries: the calling thread sleeps."""
    time.sleep(seconds)  # noqa: ASYNC251 - never awaited on a loop: driven by drive()


def drive(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine that never suspends (a blocking twin's: ``AsyncClient._blocking_twin``)
    to its end, in this thread, without an event loop."""
    try:
        coro.send(None)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]
    coro.close()
    raise RuntimeError("a blocking call awaited the event loop; please report this bug")


def refuse_inside_event_loop() -> None:
    """A blocking call from a running event loop stalls it (or, from our own, deadlocks)."""
    if asyncio._get_running_loop() is not None:
        raise ClientStateError(_IN_EVENT_LOOP)


class Client:
    """A blocking client for the Proactive Conversation API, safe to share between threads.

    Usage::

        with Client(base_url="https://api.example.com", token=TOKEN) as client:
            conversations = client.create_proactive_conversation(
                channel_id=1, bot_id=2, conversation_template_id=3,
                recipient=["+5511999990000"],
            )

    Its methods are those of ``AsyncClient``, blocking, and raise the same errors. A call is
    made in the calling thread, over a connection pool that every thread shares. Campaigns
    (and calls of a client with a ``rate_limit``, a ``proxy``, a ``transport`` or a
    ``sleep``) run on one event loop that all the Clients of a process share, run by the
    calling threads themselves (made by the first such call, stopped at exit); callbacks
    (``run_campaign``'s ``on_outcome``, ...) run on the thread driving it. A Client left
    open is closed at interpreter exit; after ``os.fork()`` the child makes its own pools
    at its first call. From async code use ``AsyncClient``: a Client called from a
    running event loop raises ClientStateError.

    Parameters:
        base_url, token, and every keyword of ``AsyncClient`` (``retry``, ``timeout``,
        ``limits``, ``verify``, ``proxy``, ``headers``, ...), with the same defaults.
    """

    def __init__(
        self,
        base_url: str | None = None,
        token: str | None = None,
        **options: Unpack[ClientOptions],
    ) -> None:
        self._base_url_arg = base_url
        self._token_arg = token
        self._options = options
        self._async = AsyncClient(base_url, token, **options)
        self._direct = self._async._blocking_twin(_sleep_blocking)
        """Plain calls go here, in the calling thread, when they can (``_blocking_twin``)."""
        self._generation = _RUNTIME.generation
        self._closed = False
        self._parent: Client | None = None
        self._finalizer = self._watch()
        _RUNTIME.register(self)

    def _watch(self) -> weakref.finalize[[AsyncClient, AsyncClient | None, int], Client]:
        """Close the pools if this Client is collected unclosed (interpreter exit has its own)."""
        finalizer = weakref.finalize(
            self, _RUNTIME.release, self._async, self._direct, self._generation
        )
        finalizer.atexit = False
        return finalizer

    def __repr__(self) -> str:
        return f"Client(base_url={self._async.base_url!r})"

    def with_options(
        self,
        *,
        timeout: float | None = None,
        max_attempts: int | None = None,
        retry: RetryPolicy | None = None,
    ) -> Client:
        """A Client sharing this one's connection pool, rate limit and token, with other
        defaults: as ``AsyncClient.with_options``. Closing it leaves the pool open.

        Usage::

            quick = client.with_options(timeout=5.0, max_attempts=1)
        """
        if self.closed:
            raise ClientStateError(_CLOSED)
        derived = copy.copy(self)
        derived._parent = self._parent or self
        derived._async = self._async.with_options(
            timeout=timeout, max_attempts=max_attempts, retry=retry
        )
        if self._direct is not None:
            derived._direct = self._direct.with_options(
                timeout=timeout, max_attempts=max_attempts, retry=retry
            )
        derived._closed = False
        derived._finalizer = derived._watch()  # its own: closing it closes no pool
        return derived

    @property
    def base_url(self) -> str:
        return self._async.base_url

    @property
    def secrets(self) -> tuple[str, ...]:
        """What must never be stored or shown (the token): for journals and reports."""
        return self._async.secrets

    @property
    def closed(self) -> bool:
        return self._closed or (self._parent is not None and self._parent._closed)

    def __enter__(self) -> Self:
        if self.closed:  # a derived client's parent closed counts
            raise ClientStateError(_CLOSED)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if asyncio._get_running_loop() is None:
            self.close()
            return
        # Left in async code (where every call raised ClientStateError): never block the
        # loop, and never raise here, which would replace the block's own exception.
        self._close_soon()

    def _close_soon(self) -> None:
        """Close without waiting for the pool (from a running event loop): closed now,
        the pool soon, on the client's loop."""
        if self._closed:
            return
        self._closed = True
        self._finalizer.detach()
        _RUNTIME.release(self._async, self._direct, self._generation)

    def close(self) -> None:
        """Close the connection pool. Idempotent; calls in flight on other threads fail."""
        if self._closed:
            return
        refuse_inside_event_loop()
        self._closed = True
        self._finalizer.detach()
        _RUNTIME.close(self._async, self._direct, self._generation)

    def create_proactive_conversation(
        self,
        request: ProactiveConversationRequest | None = None,
        /,
        *,
        retry: RetryPolicy | None = None,
        timeout: float | None = None,
        **fields: Unpack[ProactiveConversationFields],
    ) -> list[Conversation]:
        """Start proactive conversations: one per recipient and per contact id.

        As ``AsyncClient.create_proactive_conversation``, blocking: a request, keyword
        fields, or both (the keywords override); ``retry=`` and ``timeout=`` for this call;
        raises the same ProactiveErrors.
        """
        return self._perform(
            lambda client: client.create_proactive_conversation(
                request, retry=retry, timeout=timeout, **fields
            )
        )

    def create_proactive_conversation_with_response(
        self,
        request: ProactiveConversationRequest | None = None,
        /,
        *,
        retry: RetryPolicy | None = None,
        timeout: float | None = None,
        **fields: Unpack[ProactiveConversationFields],
    ) -> ApiResponse[list[Conversation]]:
        """As ``create_proactive_conversation``, with status, headers, elapsed and attempts."""
        return self._perform(
            lambda client: client.create_proactive_conversation_with_response(
                request, retry=retry, timeout=timeout, **fields
            )
        )

    def run_campaign(
        self,
        *,
        template: ProactiveConversationRequest,
        targets: str | os.PathLike[str] | Iterable[object] | AsyncIterable[object],
        **campaign: Any,
    ) -> CampaignSummary:
        """Run a ``Campaign`` on this client to its end and return its summary, blocking.

        Usage::

            summary = client.run_campaign(
                template=ProactiveConversationRequest(channel_id=1, bot_id=2,
                                                      conversation_template_id=3),
                targets="recipients.csv", default_region="BR", report="report.jsonl",
            )

        The keywords are ``Campaign``'s (``options``, ``journal``, ``report``,
        ``rate_limit``, the callbacks ``on_outcome``/``on_retry``/``on_throttle``, which
        run on the thread driving the event loop, or any ``CampaignOptions`` field). Ctrl-C
        stops it as a cancellation stops a campaign: calls in flight get the grace period, then
        KeyboardInterrupt is raised. A fatal error (401, 403, TLS) is raised as from
        ``Campaign.run()``.
        """
        client, shared = self._ready()
        # Built here, not on the loop: it may count the lines of a large targets file.
        runner = Campaign(client, template=template, targets=targets, **campaign)
        return shared.run(runner.run(), wait_out=True)

    def run(self, function: Callable[..., Awaitable[T]], /, *args: Any) -> T:
        """Run ``await function(async_client, *args)`` on this client's event loop; blocking.

        For integrations that drive async parts of the SDK from sync code (a Celery task
        sending a stored chunk): they share this client's loop and connection pool.
        """
        client, shared = self._ready()
        return shared.run(_call(function, client, args))

    def _perform(self, call: Callable[[AsyncClient], Coroutine[Any, Any, T]]) -> T:
        """``call(client)`` run to its end: on the blocking twin in this thread when plain
        calls go there, else on the event loop."""
        direct = self._direct_ready()
        if direct is not None:
            return drive(call(direct))
        client, shared = self._ready()
        return shared.run(call(client))

    def _direct_ready(self) -> AsyncClient | None:
        """This process's blocking twin, if calls go there, or why a call cannot be made."""
        if self.closed:
            raise ClientStateError(_CLOSED)
        refuse_inside_event_loop()
        if self._generation != _RUNTIME.generation:
            self._renew()
        return self._direct

    def _ready(self) -> tuple[AsyncClient, _SharedLoop]:
        """This process's AsyncClient and its loop, or why a call cannot be made."""
        self._direct_ready()  # the same checks
        shared = _RUNTIME.shared()
        # Closed while the loop was being made: close() saw no loop and so no pool to close.
        if self.closed:
            raise ClientStateError(_CLOSED)
        return self._async, shared

    def _renew(self) -> None:
        """In a fork child: a new AsyncClient (a new pool); the parent's is kept, untouched."""
        parent = self._parent
        if parent is not None and parent._generation != _RUNTIME.generation:
            parent._renew()  # made by with_options: the parent's new pool is shared
        with _RUNTIME.lock:
            if self._generation == _RUNTIME.generation:
                return
            inherited = (self._async, self._direct)
            self._finalizer.detach()
            self._async = self._new_async_client()
            self._direct = self._new_direct()
            self._generation = _RUNTIME.generation
            self._finalizer = self._watch()
        _RUNTIME.keep(inherited)

    def _new_direct(self) -> AsyncClient | None:
        if self._parent is None:
            return self._async._blocking_twin(_sleep_blocking)
        twin = self._parent._direct
        if twin is None:
            return None
        mine = self._async
        return twin.with_options(timeout=mine._attempt_timeout, retry=mine.retry)

    def _new_async_client(self) -> AsyncClient:
        if self._parent is None:
            return AsyncClient(self._base_url_arg, self._token_arg, **self._options)
        mine = self._async
        return self._parent._async.with_options(timeout=mine._attempt_timeout, retry=mine.retry)


async def _call(
    function: Callable[..., Awaitable[T]], client: AsyncClient, args: tuple[Any, ...]
) -> T:
    return await function(client, *args)
