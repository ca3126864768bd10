"""SharedLoop: an event loop driven by the threads that call it (leader/follower).

A thread calling while nobody drives runs the loop itself; others hand their calls to it and
block; the role passes to a follower whose call is unfinished; tasks nobody waits for are
driven by a keeper thread. Who drives is decided under one lock: these tests race it.
"""

from __future__ import annotations

import asyncio
import random
import signal
import threading
import time
from collections.abc import Callable, Coroutine, Iterator

import pytest

from proactive_async import ClientStateError
from proactive_async._calls import SharedLoop


@pytest.fixture
def shared() -> Iterator[SharedLoop]:
    shared = SharedLoop(asyncio.new_event_loop())
    yield shared
    assert not _keepers(), "a keeper thread outlived its work"
    with shared._lock:
        assert shared._driver is None and not shared._waiting and not shared._pending
    assert shared.close()


def _keepers(wait: float = 2.0) -> list[threading.Thread]:
    """The keeper threads still alive after up to ``wait`` seconds."""
    deadline = time.monotonic() + wait
    while True:
        alive = [t for t in threading.enumerate() if t.name == "proactive-async-loop"]
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.01)


def _in_threads(work: Callable[[int], None], count: int) -> None:
    errors: list[BaseException] = []

    def run(k: int) -> None:
        try:
            work(k)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(k,)) for k in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
        assert not thread.is_alive(), "a caller hangs: a call sits in a loop nobody runs"
    assert errors == []


async def _echo(n: int, awaits: int = 1) -> int:
    for _ in range(awaits):
        await asyncio.sleep(0)
    return n


async def _where(seconds: float = 0.0) -> tuple[int, int]:
    """The threads that ran the coroutine's start and its end."""
    start = threading.get_ident()
    await asyncio.sleep(seconds)
    return start, threading.get_ident()


def test_a_lone_caller_drives_the_loop_in_its_own_thread(shared: SharedLoop) -> None:
    before = threading.active_count()
    for _ in range(3):
        assert shared.run(_where()) == (threading.get_ident(), threading.get_ident())
    assert threading.active_count() == before


def test_calls_from_many_threads_each_get_their_own_answer(shared: SharedLoop) -> None:
    """Calls of zero to two awaits from eight threads: the role changes hands all the time;
    no call is lost, none answered with another's result, none left unrun."""
    answers: list[list[int]] = [[] for _ in range(8)]

    def work(k: int) -> None:
        rng = random.Random(k)
        for i in range(300):
            answers[k].append(shared.run(_echo(k * 1000 + i, rng.randrange(3))))

    _in_threads(work, 8)
    assert answers == [[k * 1000 + i for i in range(300)] for k in range(8)]


def test_an_error_is_raised_to_its_caller_and_the_loop_goes_on(shared: SharedLoop) -> None:
    with pytest.raises(ZeroDivisionError):
        shared.run(_divide_by_zero())
    assert shared.run(_echo(7)) == 7


def test_a_driver_leaving_unfinished_calls_hands_the_loop_to_a_keeper(
    shared: SharedLoop,
) -> None:
    """A drives (a 0.2 s call); B's 0.5 s call starts on A's thread and ends on the keeper's,
    A having returned as soon as its own call ended."""
    results: dict[str, tuple[int, int]] = {}
    idents: dict[str, int] = {}
    a_started = threading.Event()

    async def a_call() -> tuple[int, int]:
        a_started.set()
        return await _where(0.2)

    def a() -> None:
        idents["a"] = threading.get_ident()
        results["a"] = shared.run(a_call())

    def b() -> None:
        idents["b"] = threading.get_ident()
        a_started.wait(5)
        results["b"] = shared.run(_where(0.5))

    _in_threads(lambda k: (a, b)[k](), 2)
    assert results["a"] == (idents["a"], idents["a"])
    assert results["b"][0] == idents["a"]
    assert results["b"][1] not in (idents["a"], idents["b"])


def test_followers_giving_up_as_they_are_promoted_never_strand_a_call(
    shared: SharedLoop,
) -> None:
    """Followers give up (as at a Ctrl-C) at about the moment the driver hands them the
    role; whichever wins, the role is never left with a thread that has gone."""
    for round_ in range(40):
        gave_up = 0

        def driver() -> None:
            shared.run(asyncio.sleep(0.01))

        def quitter() -> None:
            nonlocal gave_up
            try:
                shared.run(asyncio.sleep(0.05), within=0.01 + random.uniform(-0.003, 0.003))
            except ClientStateError:
                gave_up += 1

        _in_threads(lambda k: (driver, quitter, quitter)[k](), 3)
        assert shared.run(_echo(round_)) == round_  # still driven, by whoever calls
    _keepers()  # the given-up calls' cancellations, run by a keeper


def test_background_tasks_are_driven_by_a_keeper_between_calls(shared: SharedLoop) -> None:
    """A task no caller waits for (a worker's sweep) keeps running while no call is made;
    once it ends the keeper goes, and a lone caller drives again."""
    ticks = 0
    stop = asyncio.Event()

    async def sweep() -> None:
        nonlocal ticks
        while not stop.is_set():
            ticks += 1
            await asyncio.sleep(0.01)

    tasks: list[asyncio.Task[None]] = []

    async def start() -> None:
        tasks.append(asyncio.create_task(sweep()))

    shared.run(start())
    seen = ticks
    time.sleep(0.3)
    assert ticks >= seen + 5, "nobody drove the loop between calls"
    assert len(_keepers(0)) == 1
    started, ended = shared.run(_where())  # followed: the keeper drives
    assert started == ended != threading.get_ident()

    async def finish() -> None:
        stop.set()
        await tasks[0]

    shared.run(finish())
    assert not _keepers()
    assert shared.run(_where()) == (threading.get_ident(), threading.get_ident())


def test_a_cancelled_call_that_never_started_closes_its_coroutine(shared: SharedLoop) -> None:
    """Given up before its task was made: closed unrun, no 'never awaited' warning."""
    release = asyncio.Event()

    async def hold() -> None:
        await release.wait()

    driver = threading.Thread(target=shared.run, args=(hold(),))
    driver.start()
    time.sleep(0.05)
    never = _echo(1)
    with pytest.raises(ClientStateError, match="cancelled"):
        shared.run(never, within=0)
    shared.loop.call_soon_threadsafe(release.set)
    driver.join(5)
    shared.run(_echo(0))  # callbacks left by a drive run at the next (here: the close)
    _keepers()
    assert never.cr_frame is None


@pytest.mark.skipif(
    threading.current_thread() is not threading.main_thread(), reason="signals: main thread"
)
def test_ctrl_c_while_the_main_thread_drives_cancels_its_call_and_raises(
    shared: SharedLoop,
) -> None:
    """As asyncio.Runner: the call is cancelled (never cut inside the loop's own code),
    KeyboardInterrupt is raised once it ended, the default handler is back, the loop works."""
    cancelled = threading.Event()
    long = _until_cancelled(cancelled)

    main = threading.main_thread().ident
    assert main is not None
    timer = threading.Timer(0.2, signal.pthread_kill, args=(main, signal.SIGINT))
    timer.start()
    started = time.monotonic()
    try:
        with pytest.raises(KeyboardInterrupt):
            shared.run(long())
    finally:
        timer.cancel()
    assert time.monotonic() - started < 2
    assert cancelled.is_set()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert shared.run(_echo(3)) == 3


@pytest.mark.skipif(
    threading.current_thread() is not threading.main_thread(), reason="signals: main thread"
)
def test_ctrl_c_while_the_main_thread_follows_gives_its_call_up(shared: SharedLoop) -> None:
    cancelled = threading.Event()
    long = _until_cancelled(cancelled)

    other = threading.Thread(target=shared.run, args=(asyncio.sleep(0.5),))
    other.start()
    time.sleep(0.05)  # the other thread drives
    main = threading.main_thread().ident
    assert main is not None
    timer = threading.Timer(0.1, signal.pthread_kill, args=(main, signal.SIGINT))
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            shared.run(long())
    finally:
        timer.cancel()
    other.join(5)
    assert cancelled.wait(2)
    _keepers()
    assert shared.run(_echo(4)) == 4


def test_a_closed_loop_refuses_calls_and_closes_their_coroutines() -> None:
    shared = SharedLoop(asyncio.new_event_loop())
    assert shared.run(_echo(1)) == 1
    assert shared.close()
    refused = _echo(2)
    with pytest.raises(ClientStateError, match="exiting"):
        shared.run(refused)
    assert refused.cr_frame is None


async def _divide_by_zero() -> int:
    return 1 // 0


def test_a_call_looks_only_at_its_own_loops_tasks(
    shared: SharedLoop, monkeypatch: pytest.MonkeyPatch
) -> None:
    # asyncio.all_tasks() walks every task of the process, of every loop: with 20k tasks
    # of another loop alive, a driven call took 4.8 ms. The loop's own tasks are kept.
    def everywhere(loop: object = None) -> set[asyncio.Task[object]]:
        raise AssertionError("asyncio.all_tasks() walks the whole process")

    monkeypatch.setattr(asyncio, "all_tasks", everywhere)

    async def answer() -> int:
        return 42

    assert shared.run(answer()) == 42

    async def background() -> None:
        asyncio.get_running_loop().create_task(asyncio.sleep(0.2))

    shared.run(background())  # a task left: a keeper drives it, then leaves
    assert shared.tasks_left()
    assert not _keepers()
    assert not shared.tasks_left()


def _until_cancelled(cancelled: threading.Event) -> Callable[[], Coroutine[None, None, None]]:
    """A coroutine function sleeping 5 s that sets ``cancelled`` when cancelled."""

    async def long() -> None:
        try:
            await asyncio.sleep(5)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    return long
