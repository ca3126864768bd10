"""Client, the blocking client: one event loop per process, shared by threads, fork-safe.

The simulator serves from a thread of its own, behind a small TCP forwarder that counts the
connections it accepts: what the server sees of a client's connection pool.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import inspect
import json
import os
import signal
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from _proxy import LoopbackServer
from test_cli import ThreadedSimulator

from proactive_async import (
    ApiResponse,
    AsyncClient,
    AuthenticationError,
    ClientStateError,
    ConnectError,
    Conversation,
    Limits,
    OutcomeStatus,
    ProactiveConversationRequest,
    ReadTimeout,
    RetryPolicy,
    Timeout,
)
from proactive_async._sync import _RUNTIME, Client, ClientOptions
from proactive_async.simulator import Faults, SimulatorConfig

TOKEN = "sync-test-token"
ROOT = Path(__file__).resolve().parent.parent
FORK_WARNING = "ignore:This process .* is multi-threaded:DeprecationWarning"  # Python 3.12+


class ConnectionCounter(LoopbackServer):
    """A TCP forwarder to an upstream port that counts the connections it is given; with
    ``idle_close``, it closes a connection that many seconds after the client last sent
    anything, as a server's keep-alive timeout does (a FIN, no ``Connection: close``)."""

    def __init__(self, upstream_port: int, idle_close: float | None = None) -> None:
        super().__init__()
        self.upstream_port = upstream_port
        self.idle_close = idle_close
        self.accepted = 0
        self.open = 0
        self.peak = 0

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        self.open += 1
        self.peak = max(self.peak, self.open)
        up_writer: asyncio.StreamWriter | None = None
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
            if self.idle_close is None:
                await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
                return
            answers = asyncio.create_task(_pipe(up_reader, writer))
            try:
                while True:
                    async with asyncio.timeout(self.idle_close):
                        data = await reader.read(65536)
                    if not data:
                        break
                    up_writer.write(data)
                    await up_writer.drain()
            except TimeoutError:
                pass  # idle: closed by the server
            finally:
                answers.cancel()
                writer.close()
        finally:
            self.open -= 1
            if up_writer is not None:
                up_writer.close()
                with contextlib.suppress(Exception):
                    await up_writer.wait_closed()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()  # one side ended: so does the other (HTTP/1.1 keep-alive is symmetric)


class ServedSimulator(ThreadedSimulator):
    """The simulator and a ConnectionCounter in front of it, on a thread and loop of their own."""

    def __init__(self, config: SimulatorConfig, *, idle_close: float | None = None) -> None:
        super().__init__(config)
        self.counter: ConnectionCounter | None = None
        self.idle_close = idle_close

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        async with self.simulator:
            self.counter = ConnectionCounter(self.simulator.port, self.idle_close)
            await self.counter.start()
            try:
                self._ready.set()
                await self._stop.wait()
            finally:
                await self.counter.aclose()

    def __enter__(self) -> ServedSimulator:
        super().__enter__()
        return self

    @property
    def url(self) -> str:
        """The counter's URL: every client connection is counted on its way to the simulator."""
        assert self.counter is not None
        return f"http://127.0.0.1:{self.counter.port}"

    @property
    def connections(self) -> int:
        assert self.counter is not None
        return self.counter.accepted

    def configure(self, config: SimulatorConfig) -> None:
        assert self._loop is not None

        async def configure() -> None:
            self.simulator.configure(config)

        asyncio.run_coroutine_threadsafe(configure(), self._loop).result(10)


@pytest.fixture
def sim() -> Iterator[ServedSimulator]:
    with ServedSimulator(SimulatorConfig(token=TOKEN)) as server:
        yield server


def phone(i: int) -> str:
    return f"+55119{70000000 + i:08d}"


def send(client: Client, i: int = 0) -> list[Conversation]:
    return client.create_proactive_conversation(channel_id=1, bot_id=2, recipient=[phone(i)])


async def send_async(client: AsyncClient, i: int) -> list[Conversation]:
    """``send`` on the event loop's pool (``Client.run``)."""
    return await client.create_proactive_conversation(channel_id=1, bot_id=2, recipient=[phone(i)])


def run_script(source: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run ``source`` with ``python -W error``, as a user's script would be run."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("PYTHONWARNINGS", None)
    return subprocess.run(
        [sys.executable, "-W", "error", "-c", source, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=ROOT,
        check=False,
    )


def run_child(child: Callable[[], int], *, deadline: float = 30.0) -> int:
    """Fork; the child runs ``child()`` and leaves with its status; returns that status."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child's coverage is not collected
        code = 70
        try:
            code = child()
        except BaseException as exc:
            print(f"child failed: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        finally:
            os._exit(code)
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.02)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    pytest.fail("the fork child did not finish")


# -- calls ---------------------------------------------------------------------------


def test_calls_return_what_async_client_returns(sim: ServedSimulator) -> None:
    with Client(base_url=sim.url, token=TOKEN) as client:
        conversations = send(client, 1)
        response = client.create_proactive_conversation_with_response(
            ProactiveConversationRequest(channel_id=1, bot_id=2), recipient=[phone(2)]
        )

    assert len(conversations) == 1 and isinstance(conversations[0], Conversation)
    assert isinstance(response, ApiResponse)
    assert response.status == 200 and response.attempts == 1 and len(response.value) == 1
    assert sim.simulator.audit.total_processed == 2


def test_eight_threads_of_200_calls_share_one_pool(sim: ServedSimulator) -> None:
    """Every call answered; the server sees at most the pool's size of connections."""
    answered: list[int] = []
    errors: list[BaseException] = []

    with Client(base_url=sim.url, token=TOKEN, limits=Limits(max_connections=4)) as client:

        def work(thread: int) -> None:
            try:
                count = 0
                for i in range(200):
                    count += len(send(client, thread * 1000 + i))
                answered.append(count)
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)

    assert errors == []
    assert answered == [200] * 8
    assert sim.simulator.audit.total_processed == 1600
    assert sim.simulator.audit.duplicates() == {}
    assert sim.counter is not None
    assert 1 <= sim.counter.accepted <= 4, "more connections than one pool of 4"
    assert sim.counter.peak <= 4


def test_errors_are_the_async_client_classes(sim: ServedSimulator) -> None:
    with (
        Client(base_url=sim.url, token="wrong-token") as client,
        pytest.raises(AuthenticationError) as info,
    ):
        send(client)
    assert info.value.status == 401 and info.value.fatal

    with (
        Client(base_url="http://127.0.0.1:9", token=TOKEN) as client,
        pytest.raises(ConnectError) as connect,
    ):
        once_more = RetryPolicy(max_attempts=2, backoff_initial=0.01)
        client.create_proactive_conversation(channel_id=1, recipient=[phone(1)], retry=once_more)
    assert connect.value.attempts == 2 and not connect.value.may_have_been_processed


def test_bad_options_raise_at_construction(no_proactive_env: None) -> None:
    with pytest.raises(ClientStateError, match="base_url"):
        Client(token=TOKEN)
    with pytest.raises(ClientStateError, match="http"):
        Client(base_url="ftp://example.com", token=TOKEN)


def test_options_are_those_of_async_client() -> None:
    """ClientOptions names every keyword-only option of AsyncClient, and nothing else."""
    parameters = inspect.signature(AsyncClient).parameters.values()
    keywords = {p.name for p in parameters if p.kind is inspect.Parameter.KEYWORD_ONLY}
    assert set(ClientOptions.__annotations__) == keywords


def test_repr_never_shows_the_token(sim: ServedSimulator) -> None:
    client = Client(base_url=sim.url, token=TOKEN, timeout=Timeout(read=5.0))
    try:
        assert repr(client) == f"Client(base_url={sim.url!r})"
        assert TOKEN not in repr(client)
        assert client.secrets == (TOKEN,)
        assert client.base_url == sim.url
    finally:
        client.close()


# -- lifecycle -------------------------------------------------------------------------


def test_with_closes_and_close_is_idempotent(sim: ServedSimulator) -> None:
    with Client(base_url=sim.url, token=TOKEN) as client:
        send(client)
        assert not client.closed
    assert client.closed
    client.close()
    client.close()
    assert client.closed


def test_use_after_close_raises_client_state_error(sim: ServedSimulator) -> None:
    client = Client(base_url=sim.url, token=TOKEN)
    send(client)
    client.close()

    with pytest.raises(ClientStateError, match="closed"):
        send(client)
    with pytest.raises(ClientStateError, match="closed"):
        client.create_proactive_conversation_with_response(channel_id=1, recipient=[phone(1)])
    with pytest.raises(ClientStateError, match="closed"):
        client.run_campaign(template=ProactiveConversationRequest(channel_id=1), targets=[])
    with pytest.raises(ClientStateError, match="closed"), client:
        pass


def test_a_client_closed_before_any_call_stays_closed(sim: ServedSimulator) -> None:
    client = Client(base_url=sim.url, token=TOKEN)
    client.close()
    with pytest.raises(ClientStateError):
        send(client)
    assert sim.connections == 0


def test_a_client_collected_unclosed_closes_its_pool(sim: ServedSimulator) -> None:
    """No 'Unclosed client session' (filterwarnings = error would fail the test): the pool
    is closed at the loop's next drive (here another client's call), never in the collector."""
    client = Client(base_url=sim.url, token=TOKEN)
    send(client)
    del client
    gc.collect()
    with Client(base_url=sim.url, token=TOKEN) as other:
        send(other, 1)
    deadline = time.monotonic() + 5
    assert sim.counter is not None
    while sim.counter.open and time.monotonic() < deadline:
        time.sleep(0.01)
    assert sim.counter.open == 0, "the collected client's connection is still open"


async def test_calling_from_a_running_event_loop_raises(sim: ServedSimulator) -> None:
    """A blocking call in async code would stall its loop: refused, nothing sent."""
    client = Client(base_url=sim.url, token=TOKEN)
    with pytest.raises(ClientStateError, match="running event loop"):
        send(client)
    with pytest.raises(ClientStateError, match="AsyncClient"):
        client.create_proactive_conversation_with_response(channel_id=1, recipient=[phone(1)])
    with pytest.raises(ClientStateError, match="running event loop"):
        client.close()
    await asyncio.to_thread(client.close)  # from a worker thread it is fine
    assert client.closed
    assert sim.simulator.audit.calls == 0


def test_calling_from_inside_asyncio_run_raises(sim: ServedSimulator) -> None:
    with Client(base_url=sim.url, token=TOKEN) as client:

        async def main() -> None:
            send(client)

        with pytest.raises(ClientStateError, match="running event loop"):
            asyncio.run(main())
        assert len(send(client)) == 1  # still usable outside the loop


def test_a_keep_alive_connection_the_server_closed_while_idle_is_never_reused() -> None:
    """No thread runs the loop between calls, so the server's FIN on the idle pooled
    connection is read only when the next call drives the loop: it settles first (SETTLE
    iterations), so that call opens a new connection instead of writing its request into
    the closed one and failing with an ambiguous ConnectionLostError."""
    config = SimulatorConfig(token=TOKEN)
    with (
        ServedSimulator(config, idle_close=0.1) as server,
        Client(base_url=server.url, token=TOKEN, retry=RetryPolicy(max_attempts=1)) as client,
    ):
        for i in range(3):
            send(client, i)
            assert server.counter is not None
            deadline = time.monotonic() + 5
            while server.counter.open and time.monotonic() < deadline:
                time.sleep(0.02)  # until the server has closed the idle connection
            assert server.counter.open == 0
        assert server.connections == 3
        assert server.simulator.audit.total_processed == 3


def test_a_blocking_call_from_a_callback_on_the_driving_thread_is_refused(
    sim: ServedSimulator,
) -> None:
    """The thread that drives the loop runs its callbacks: a blocking call from one of them
    is refused (it would wait for the loop it stalls), and the loop goes on."""
    with Client(base_url=sim.url, token=TOKEN) as client:

        async def nested(_: AsyncClient) -> str:
            try:
                send(client, 1)
            except ClientStateError as exc:
                return str(exc)
            return "not refused"

        assert "running event loop" in client.run(nested)
        assert len(send(client, 2)) == 1
    assert sim.simulator.audit.total_processed == 1


# -- campaigns ------------------------------------------------------------------------


def test_run_campaign_over_a_list_of_numbers(sim: ServedSimulator, tmp_path: Path) -> None:
    template = ProactiveConversationRequest(channel_id=1, bot_id=2, conversation_template_id=3)
    numbers = [phone(i) for i in range(57)]
    report = tmp_path / "report.jsonl"

    with Client(base_url=sim.url, token=TOKEN) as client:
        summary = client.run_campaign(
            template=template, targets=numbers, chunk_size=10, concurrency=4, report=report
        )

    assert summary.complete
    assert summary.counts[OutcomeStatus.SENT] == 57 and summary.records == 57
    assert sim.simulator.audit.total_processed == 57
    assert sim.simulator.audit.duplicates() == {}
    assert len(report.read_text().splitlines()) == 57


def test_run_campaign_raises_a_fatal_error(sim: ServedSimulator) -> None:
    template = ProactiveConversationRequest(channel_id=1, bot_id=2)
    with (
        Client(base_url=sim.url, token="wrong-token") as client,
        pytest.raises(AuthenticationError),
    ):
        client.run_campaign(template=template, targets=[phone(1), phone(2)])


def test_run_campaign_refuses_bad_arguments_before_sending(sim: ServedSimulator) -> None:
    with (
        Client(base_url=sim.url, token=TOKEN) as client,
        pytest.raises(TypeError, match="no_such_option"),
    ):
        client.run_campaign(
            template=ProactiveConversationRequest(channel_id=1),
            targets=[phone(1)],
            no_such_option=1,
        )
    assert sim.simulator.audit.calls == 0


def test_ctrl_c_during_run_campaign_lets_calls_in_flight_finish(
    sim: ServedSimulator, tmp_path: Path
) -> None:
    """KeyboardInterrupt stops the campaign as a cancellation does: grace period, report
    closed, then the interrupt is raised; nothing in flight is abandoned."""
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signals reach the main thread only")
    sim.configure(SimulatorConfig(token=TOKEN, faults=Faults(latency=0.3)))
    report = tmp_path / "report.jsonl"
    template = ProactiveConversationRequest(channel_id=1, bot_id=2)
    main = threading.main_thread().ident
    assert main is not None
    timer = threading.Timer(0.5, signal.pthread_kill, args=(main, signal.SIGINT))

    with Client(base_url=sim.url, token=TOKEN) as client:
        timer.start()
        try:
            with pytest.raises(KeyboardInterrupt):
                client.run_campaign(
                    template=template,
                    targets=[phone(i) for i in range(200)],
                    chunk_size=1,
                    concurrency=4,
                    report=report,
                )
        finally:
            timer.cancel()

    lines = [json.loads(line) for line in report.read_text().splitlines()]
    sent = [line for line in lines if line["status"] == "sent"]
    assert 0 < len(sent) < 200
    # The calls in flight at the interrupt were awaited, not cut: the server processed
    # exactly what the report says was sent.
    assert sim.simulator.audit.total_processed == len(sent)
    assert all(line["status"] != "unknown" for line in lines)


# -- fork -------------------------------------------------------------------------------


@pytest.mark.filterwarnings(FORK_WARNING)
def test_fork_child_makes_its_own_pool_and_the_parent_keeps_its_own(
    sim: ServedSimulator,
) -> None:
    client = Client(base_url=sim.url, token=TOKEN, timeout=Timeout(read=5.0))
    try:
        for i in range(3):
            send(client, i)  # the blocking pool, in this thread
            client.run(send_async, 10 + i)  # the event loop's pool
        parent_connections = sim.connections
        assert _RUNTIME._shared is not None
        parent_loop = _RUNTIME._shared.loop
        assert client._direct is not None
        parent_pool = client._direct._transport

        def child() -> int:
            # The inherited Client, used as is: new pools, a new loop, new connections.
            if len(send(client, 100)) != 1 or len(client.run(send_async, 101)) != 1:
                return 3
            if _RUNTIME._shared is None or _RUNTIME._shared.loop is parent_loop:
                return 4
            if client._direct is None or client._direct._transport is parent_pool:
                return 5
            client.close()
            return 0

        assert run_child(child) == 0
        assert sim.connections == parent_connections + 2, "the child used connections of its own"
        for i in range(3):
            send(client, 200 + i)  # the parent's pooled connections, untouched by the child
            client.run(send_async, 210 + i)
        assert sim.connections == parent_connections + 2
        assert sim.simulator.audit.total_processed == 14
    finally:
        client.close()


@pytest.mark.filterwarnings(FORK_WARNING)
def test_a_fork_child_freeing_its_inherited_copies_does_not_deafen_the_parent(
    sim: ServedSimulator,
) -> None:
    """A child that lets the parent's loop and pool be freed (as interpreter exit may) must
    not reach the parent's sockets or epoll: the parent's next calls are answered at once."""
    client = Client(base_url=sim.url, token=TOKEN, timeout=Timeout(read=2.0))
    try:
        for i in range(3):
            send(client, i)

        def child() -> int:
            send(client, 100)  # renews the client: the parent's AsyncClient is now inherited
            warnings.simplefilter("ignore")  # the copies complain as they are freed
            _RUNTIME._inherited.clear()
            gc.collect()
            return 0

        assert run_child(child) == 0
        started = time.monotonic()
        for i in range(3):
            send(client, 200 + i)
        assert time.monotonic() - started < 1.0
    finally:
        client.close()


# -- interpreter exit ------------------------------------------------------------------------

_EIGHT_THREADS = """
import json, sys, threading
from proactive_async import Limits
from proactive_async._sync import Client

url, token = sys.argv[1:3]
answered = []
with Client(base_url=url, token=token, limits=Limits(max_connections=4)) as client:
    def work(n):
        count = 0
        for i in range(200):
            count += len(client.create_proactive_conversation(
                channel_id=1, bot_id=2, recipient=[f"+55119{80000000 + n * 1000 + i:08d}"]))
        answered.append(count)
    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
print(json.dumps(answered))
"""


def test_script_with_eight_threads_exits_cleanly_under_w_error(sim: ServedSimulator) -> None:
    done = run_script(_EIGHT_THREADS, sim.url, TOKEN)

    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    assert json.loads(done.stdout) == [200] * 8
    assert sim.simulator.audit.total_processed == 1600
    assert 1 <= sim.connections <= 4


_NEVER_CLOSED = """
import sys, threading
from proactive_async._sync import Client

url, token = sys.argv[1:3]
port = url.rsplit(":", 1)[1]
client = Client(base_url=url, token=token)          # a global, never closed
by_name = Client(base_url=f"http://localhost:{port}", token=token)   # resolved in a thread
never_used = Client(base_url=url, token=token)

def call(c, i):
    c.create_proactive_conversation(channel_id=1, recipient=[f"+55119{90000000 + i:08d}"])

def local():
    forgotten = Client(base_url=url, token=token)  # collected unclosed when this returns
    call(forgotten, 99)

threads = [threading.Thread(target=call, args=(client, i)) for i in range(4)]
for t in threads:
    t.start()
for t in threads:
    t.join()
call(by_name, 50)
local()
print("done")
"""


def test_script_exiting_without_close_prints_no_warning(sim: ServedSimulator) -> None:
    done = run_script(_NEVER_CLOSED, sim.url, TOKEN)

    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    assert done.stdout == "done\n"
    assert sim.simulator.audit.total_processed == 6


_DAEMON_IN_FLIGHT = """
import sys, threading, time
from proactive_async import ProactiveError
from proactive_async._sync import Client

url, token = sys.argv[1:3]
client = Client(base_url=url, token=token)

def slow():
    try:
        client.create_proactive_conversation(channel_id=1, recipient=["+5511970000001"])
    except ProactiveError:
        pass  # cut short by the exit: the call may have been processed, as the error says

threading.Thread(target=slow, daemon=True).start()
time.sleep(0.2)   # the daemon's call is now in flight: the exit must not wait for it
print("exiting")
"""


def test_exit_with_a_daemon_thread_call_in_flight_is_clean_and_quick(
    sim: ServedSimulator,
) -> None:
    sim.configure(SimulatorConfig(token=TOKEN, faults=Faults(latency=5.0)))
    started = time.monotonic()
    done = run_script(_DAEMON_IN_FLIGHT, sim.url, TOKEN)

    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    assert done.stdout == "exiting\n"
    assert time.monotonic() - started < 4.0  # not held up by the 5 s answer


async def test_with_client_in_async_code_never_replaces_the_blocks_own_exception() -> None:
    """``__exit__`` from a running loop closes without blocking and raises nothing of its
    own: the block's exception (here a KeyError) is the one the caller sees (issue 18)."""
    with (
        pytest.raises(KeyError, match="the block's own"),
        Client(base_url="http://127.0.0.1:1", token="t") as client,
    ):
        raise KeyError("the block's own")
    assert client.closed


async def test_a_call_from_async_code_raises_its_own_error_through_the_with_block() -> None:
    with (
        pytest.raises(ClientStateError, match="event loop"),
        Client(base_url="http://127.0.0.1:1", token="t") as client,
    ):
        client.create_proactive_conversation(
            channel_id=1, bot_id=2, conversation_template_id=3, recipient=["+5511999990000"]
        )
    assert client.closed
    with Client(base_url="http://127.0.0.1:1", token="t") as quiet:
        pass  # nothing raised, nothing to replace: closed all the same
    assert quiet.closed


# -- with_options and a call's timeout (issue 20 §3) -------------------------------------


def test_with_options_shares_the_pool_and_closing_it_closes_no_pool(sim: ServedSimulator) -> None:
    client = Client(base_url=sim.url, token=TOKEN, retry=RetryPolicy(max_attempts=4))
    try:
        send(client, 1)
        quick = client.with_options(timeout=5.0, max_attempts=1)
        assert quick._async.retry.max_attempts == 1 and client._async.retry.max_attempts == 4
        send(quick, 2)
        assert sim.connections == 1  # the parent's pooled connection, reused
        quick.close()
        assert quick.closed and not client.closed
        with pytest.raises(ClientStateError, match="closed"):
            send(quick, 3)
        send(client, 4)
        sibling = client.with_options(max_attempts=2)
    finally:
        client.close()
    assert sibling.closed
    with pytest.raises(ClientStateError, match="closed"):
        send(sibling, 5)
    assert sim.simulator.audit.total_processed == 3


def test_a_calls_timeout_is_a_read_timeout_and_the_call_may_have_been_processed(
    sim: ServedSimulator,
) -> None:
    sim.configure(SimulatorConfig(token=TOKEN, faults=Faults(latency=1.0)))
    with Client(base_url=sim.url, token=TOKEN) as client:
        with pytest.raises(ReadTimeout) as info:
            client.create_proactive_conversation(
                channel_id=1, bot_id=2, recipient=[phone(1)], timeout=0.2
            )
        assert info.value.may_have_been_processed and info.value.attempts == 1
        with pytest.raises(ReadTimeout):
            client.create_proactive_conversation_with_response(
                channel_id=1, bot_id=2, recipient=[phone(2)], timeout=0.2
            )
    time.sleep(1.0)  # the server answers late: it did process both
    assert sim.simulator.audit.total_processed == 2


@pytest.mark.filterwarnings(FORK_WARNING)
def test_a_fork_child_shares_one_new_pool_between_a_client_and_its_derived_one(
    sim: ServedSimulator,
) -> None:
    client = Client(base_url=sim.url, token=TOKEN)
    quick = client.with_options(max_attempts=1)
    try:
        send(quick, 1)
        parent_connections = sim.connections

        def child() -> int:
            send(quick, 100)  # renews the parent's pool first, then shares it
            send(client, 101)
            if quick._async._parent is not client._async or quick._async.retry.max_attempts != 1:
                return 3
            client.close()
            return 0 if quick.closed else 4

        assert run_child(child) == 0
        assert sim.connections == parent_connections + 1
        send(quick, 2)
        assert sim.connections == parent_connections + 1
    finally:
        client.close()
