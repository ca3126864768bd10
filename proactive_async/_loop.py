"""The event loop a process runs on: asyncio's own, or uvloop (``proactive-async[fast]``).

One rule, ``choose_loop``: ``asyncio`` is asyncio's loop; ``uvloop`` is uvloop's, refused
with the extra to install when it is missing; ``auto`` (the default) is uvloop when it
imports, else asyncio. The CLI's ``--loop`` and ``PROACTIVE_LOOP`` name one; the campaign
and ``enqueue`` run on it, ``worker`` runs arq's worker on it, and the summary and the
worker's first log line say which one ran (``running_loop_name``).
"""

from __future__ import annotations

import asyncio
import importlib
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Final, Literal, TypeVar, get_args

__all__ = [
    "FAST_EXTRA",
    "LOOP_NAMES",
    "EventLoop",
    "LoopName",
    "LoopUnavailableError",
    "choose_loop",
    "running_loop_name",
]

LoopName = Literal["auto", "asyncio", "uvloop"]
LOOP_NAMES: Final[tuple[str, ...]] = get_args(LoopName)
FAST_EXTRA: Final = "pip install 'proactive-async[fast]'"
T = TypeVar("T")


class LoopUnavailableError(RuntimeError):
    """The loop asked for cannot run here (uvloop not installed): one line naming the fix."""


@dataclass(frozen=True, slots=True)
class EventLoop:
    """A chosen loop: its name and what makes one (None: asyncio's own, as ``asyncio.run``)."""

    name: Literal["asyncio", "uvloop"]
    factory: Callable[[], asyncio.AbstractEventLoop] | None = None

    def run(self, main: Coroutine[Any, Any, T]) -> T:
        """``asyncio.run(main)`` on this loop."""
        with asyncio.Runner(loop_factory=self.factory) as runner:
            return runner.run(main)

    def new_loop(self) -> asyncio.AbstractEventLoop:
        """A new loop of this kind, for code that runs its own (arq's worker)."""
        return (self.factory or asyncio.new_event_loop)()


ASYNCIO: Final = EventLoop("asyncio")


def choose_loop(wanted: str | None = None) -> EventLoop:
    """The loop for ``wanted`` (``auto``, ``asyncio`` or ``uvloop``; None is ``auto``).

    Raises LoopUnavailableError for ``uvloop`` when it does not import, ValueError for a
    name that is none of them.
    """
    wanted = wanted or "auto"
    if wanted not in LOOP_NAMES:
        raise ValueError(f"the event loop must be one of {', '.join(LOOP_NAMES)}, not {wanted!r}")
    if wanted == "asyncio":
        return ASYNCIO
    try:
        uvloop = importlib.import_module("uvloop")
    except ImportError:
        if wanted == "uvloop":
            raise LoopUnavailableError(
                f"the uvloop event loop is not installed: {FAST_EXTRA}"
            ) from None
        return ASYNCIO
    return EventLoop("uvloop", uvloop.new_event_loop)


def running_loop_name() -> str:
    """``uvloop`` or ``asyncio``: what the running loop is (the summary says it)."""
    module = type(asyncio.get_running_loop()).__module__
    return "uvloop" if module.partition(".")[0] == "uvloop" else "asyncio"
