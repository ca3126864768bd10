"""Shared helpers of the benchmarks: core pinning, server subprocesses, alternation, medians.

Every benchmark returns ``{"name": ..., "rows": [row, ...], "details": {...}}``; a row is
one line of the results table (see ``row``). A row whose SDK piece cannot be imported, or
whose tool is missing, is ``skipped`` with the reason instead of crashing the run.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Coroutine, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PYTHON = sys.executable
PATH = "/api/Conversation/proactive-conversation"
TOKEN = "bench-token"
CLIENT_CORE = 0
SERVER_CORE = 1
_LISTENING = re.compile(rb"listening on (http://[^\s]+)")
T = TypeVar("T")

if str(ROOT) not in sys.path:
    # Run as `python benchmarks/run.py`: make the repo's package importable without install.
    sys.path.insert(0, str(ROOT))


# --- cores ---------------------------------------------------------------------------


def can_pin() -> bool:
    """Two cores and taskset: client and server each get their own."""
    return (os.cpu_count() or 1) >= 2 and shutil.which("taskset") is not None


def pin_client() -> str:
    """Pin this process to the client core; says what was done."""
    if (os.cpu_count() or 1) < 2 or not hasattr(os, "sched_setaffinity"):
        return "not pinned (one core)"
    os.sched_setaffinity(0, {CLIENT_CORE})
    return f"client on core {CLIENT_CORE}"


def server_prefix() -> list[str]:
    """The command prefix that pins a server subprocess to the server core."""
    return ["taskset", "-c", str(SERVER_CORE)] if can_pin() else []


def client_prefix() -> list[str]:
    """The command prefix that pins a client subprocess (wrk, the CLI) to the client core."""
    return ["taskset", "-c", str(CLIENT_CORE)] if can_pin() else []


# --- server subprocesses ----------------------------------------------------------------


class Server:
    """A server subprocess pinned to the server core; ``url`` once it said "listening on".

    Usage::

        with Server([PYTHON, "benchmarks/_fastserver.py"]) as server:
            ... server.url ...
    """

    def __init__(
        self,
        argv: Sequence[str],
        *,
        env: dict[str, str] | None = None,
        timeout: float = 20.0,
        pin: bool = True,
    ) -> None:
        self.argv = [*(server_prefix() if pin else []), *argv]
        self.env = env
        self.timeout = timeout
        self.url = ""
        self.output: list[bytes] = []
        self._proc: subprocess.Popen[bytes] | None = None
        self._reader: threading.Thread | None = None

    def __enter__(self) -> Server:
        env = {**os.environ, **(self.env or {})}
        env.setdefault("PYTHONPATH", str(ROOT))
        self._proc = subprocess.Popen(
            self.argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=ROOT,
        )
        self.url = self._wait_listening()
        # Keep draining its output so a chatty server never blocks on a full pipe.
        self._reader = threading.Thread(target=self._drain, daemon=True)
        self._reader.start()
        return self

    def _wait_listening(self) -> str:
        assert self._proc is not None and self._proc.stdout is not None
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            line = self._proc.stdout.readline()
            if not line:
                break
            self.output.append(line)
            match = _LISTENING.search(line)
            if match:
                return match.group(1).decode().rstrip("/")
        self.stop()
        tail = b"".join(self.output[-20:]).decode(errors="replace")
        raise RuntimeError(f"server {self.argv} did not say 'listening on': {tail}")

    def _drain(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        for line in self._proc.stdout:
            if len(self.output) < 1000:
                self.output.append(line)

    @property
    def pid(self) -> int:
        assert self._proc is not None
        return self._proc.pid

    def stop(self, sig: int = signal.SIGTERM) -> int | None:
        """Stop the server (SIGTERM, then SIGKILL after 5 s); returns its exit code."""
        proc = self._proc
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(sig)
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        if self._reader is not None:
            self._reader.join(2)
        if proc.stdout is not None:
            proc.stdout.close()
        return proc.returncode

    def __exit__(self, *exc: object) -> None:
        self.stop()


def fast_server(*, timestamps: str | None = None) -> Server:
    """The fast local server of benchmarks 1, 2, 5 and 7."""
    argv = [PYTHON, str(HERE / "_fastserver.py"), "--port", "0"]
    if timestamps:
        argv += ["--timestamps", timestamps]
    return Server(argv)


def simulator_argv(*extra: str) -> list[str]:
    """The simulator's command line: the CLI's ``simulate`` if it exists, else its main()."""
    try:
        import proactive_async.cli as cli

        if hasattr(cli, "main"):
            code = "import sys; from proactive_async.cli import main; sys.exit(main())"
            return [PYTHON, "-c", code, "simulate", "--port", "0", "--token", TOKEN, *extra]
    except ImportError:
        pass
    code = "import sys; from proactive_async.simulator import main; sys.exit(main())"
    return [PYTHON, "-c", code, "--port", "0", "--token", TOKEN, *extra]


# --- SDK availability -------------------------------------------------------------------


def sdk_missing(*names: str) -> str | None:
    """None if each ``module:attr`` (or module) imports; else "not available: <error>"."""
    import importlib

    for name in names:
        module, _, attr = name.partition(":")
        try:
            mod = importlib.import_module(module)
            if attr and not hasattr(mod, attr):
                raise ImportError(f"cannot import name {attr!r} from {module!r}")
        except Exception as exc:  # an SDK piece being written may fail in any way
            return f"not available: {type(exc).__name__}: {exc}"
    return None


# --- event loops ----------------------------------------------------------------------

LOOPS = ("asyncio", "uvloop")
"""The event loops rows 1 and 8 run on: asyncio's own, and uvloop (``proactive-async[fast]``)."""


def uvloop_missing() -> str | None:
    """None if uvloop imports; else why its rows are skipped."""
    try:
        import uvloop  # noqa: F401
    except ImportError as exc:
        return f"uvloop not installed (pip install 'proactive-async[fast]'): {exc}"
    return None


def run_on(loop: str, main: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run(main)`` on asyncio's own loop or on uvloop's."""
    if loop == "asyncio":
        return asyncio.run(main)
    import uvloop

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)


# --- measuring --------------------------------------------------------------------------


def alternate(variants: dict[str, Callable[[], float]], rounds: int) -> dict[str, list[float]]:
    """Run each variant once per round, in turn; collect their figures.

    Alternating spreads any drift of the machine (another process, heat) over all of them.
    The order rotates each round (A B C, B C A, C A B, ...) so that no variant always
    follows the same one, and garbage is collected between runs so that none pays for
    what the one before it left behind.
    """
    import gc

    names = list(variants)
    figures: dict[str, list[float]] = {name: [] for name in names}
    for round_number in range(rounds):
        shift = round_number % len(names)
        for name in names[shift:] + names[:shift]:
            gc.collect()
            figures[name].append(variants[name]())
    return figures


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100), nearest rank; NaN when empty."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def row(
    benchmark: str,
    *,
    sdk: str = "",
    baseline: str = "",
    ratio: float | None = None,
    target: str = "",
    ok: bool | None = None,
    note: str = "",
    skipped: str | None = None,
) -> dict[str, Any]:
    """One line of the results table; ``ok`` None means not judged (skipped or info only)."""
    return {
        "benchmark": benchmark,
        "sdk": sdk,
        "baseline": baseline,
        "ratio": None if ratio is None or ratio != ratio else round(ratio, 3),
        "target": target,
        "ok": None if skipped else ok,
        "note": note,
        "skipped": skipped,
    }


def skipped_rows(names: Sequence[tuple[str, str]], why: str) -> list[dict[str, Any]]:
    """Skipped rows, one per (benchmark, target)."""
    return [row(name, target=target, skipped=why) for name, target in names]


def rate_str(value: float, unit: str = "calls/s") -> str:
    if value != value:
        return "n/a"
    return f"{value / 1000:.2f}k {unit}" if value >= 1000 else f"{value:.0f} {unit}"


def brazil_mobiles(count: int, *, start: int = 0) -> Iterator[str]:
    """``count`` unique valid Brazilian mobile numbers, +55 11 9xxxx-xxxx."""
    # 9 followed by 8 digits; numbers from 9_1000_0000 up keep the first subscriber digit
    # non-zero (valid mobile ranges in area code 11).
    for i in range(start, start + count):
        yield f"+55119{10_000_000 + i:08d}"


def machine_info() -> dict[str, Any]:
    """CPU model, cores, Python and library versions, date."""
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    # Read from the installed metadata, never by importing: imports change the process the
    # benchmarks then run in. Importing httpx and pydantic here once freed a large block
    # that raised glibc's mmap threshold, which made asyncio's 256 KiB reads (any plain
    # protocol's: aiohttp's, asyncio streams') 60% faster than in a bare process.
    versions: dict[str, str] = {}
    for name in ("aiohttp", "msgspec", "httpx", "orjson", "pydantic"):
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "missing"
    mem = ""
    with contextlib.suppress(OSError, IndexError):
        mem = Path("/proc/meminfo").read_text().splitlines()[0].split(":", 1)[1].strip()
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory": mem,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "pinned": can_pin(),
        **versions,
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }


def rounds_for(quick: bool, full: int) -> int:
    return 1 if quick else full


_WRK_SCRIPT = """wrk.method = "POST"
wrk.body = '{"channelId":1,"botId":1,"recipient":["+5511999990000"]}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer bench-token"
"""


def wrk_ceiling(url: str, *, seconds: int = 3, connections: int = 64) -> float | str:
    """Requests/s wrk gets from the server at ``url`` (pinned to the client core), or why not.

    The reason (a str) is a skip reason: a missing or failing wrk never fails a run.
    """
    import tempfile

    wrk = shutil.which("wrk")
    if wrk is None:
        return "wrk not installed (benchmarks/setup.sh installs it)"
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(_WRK_SCRIPT)
    try:
        done = subprocess.run(
            [
                *client_prefix(),
                wrk,
                "-t1",
                f"-c{connections}",
                f"-d{seconds}s",
                "-s",
                script.name,
                url + PATH,
            ],
            capture_output=True,
            text=True,
            timeout=seconds + 30,
            check=False,
        )
    finally:
        os.unlink(script.name)
    match = re.search(r"Requests/sec:\s*([\d.]+)", done.stdout)
    if match is None:
        return f"wrk said {done.stdout[-200:]!r} {done.stderr[-200:]!r}"
    return float(match.group(1))


# --- throwaway Redis and PostgreSQL (the test suite's helpers) ------------------------


def _tests_on_path() -> None:
    """tests/_redis.py and tests/_postgres.py start the servers; they import each other."""
    tests = str(ROOT / "tests")
    if tests not in sys.path:
        sys.path.append(tests)


def _pin_to_server_core(pid: int) -> None:
    """Move an already started server (Redis, the postmaster) to the server core."""
    if can_pin():
        subprocess.run(
            ["taskset", "-a", "-p", "-c", str(SERVER_CORE), str(pid)],
            capture_output=True,
            check=False,
        )


@contextlib.contextmanager
def redis_server() -> Iterator[str]:
    """A throwaway redis-server (tests/_redis.py) on a free port; yields its URL.

    Raises RuntimeError saying why when redis-server is missing (scripts/ensure-servers.sh
    installs it) or does not start: the caller turns that into skipped rows.
    """
    import tempfile

    _tests_on_path()
    from _redis import RedisServer, find_redis_server

    executable = find_redis_server()
    if executable is None:
        raise RuntimeError("redis-server not installed (scripts/ensure-servers.sh installs it)")
    with tempfile.TemporaryDirectory(prefix="bench-redis-") as workdir:
        server = RedisServer(executable, Path(workdir))
        server.start()
        try:
            process = getattr(server, "_process", None)
            if process is not None:
                _pin_to_server_core(process.pid)
            yield server.url
        finally:
            server.stop()


@contextlib.contextmanager
def postgres_server() -> Iterator[str]:
    """A throwaway PostgreSQL (tests/_postgres.py) on a free port; yields a fresh database's
    DSN. Raises RuntimeError saying why when PostgreSQL is missing or does not start."""
    _tests_on_path()
    from _postgres import PostgresServer, find_pg_bin

    bin_dir = find_pg_bin()
    if bin_dir is None:
        raise RuntimeError("PostgreSQL not installed (scripts/ensure-servers.sh installs it)")
    server = PostgresServer(bin_dir)
    try:
        server.start()
    except (OSError, subprocess.CalledProcessError) as exc:
        server.stop()
        raise RuntimeError(f"PostgreSQL did not start: {exc}") from exc
    try:
        postmaster = server._postmaster_pid()
        if postmaster is not None:
            _pin_to_server_core(postmaster)
        yield server.create_database("bench")
    finally:
        server.stop()


# --- the CLI as a process -------------------------------------------------------------

CLI_CODE = "import sys; from proactive_async.cli import main; sys.exit(main())"


def cli_env(**extra: str) -> dict[str, str]:
    """The environment of a CLI subprocess: the token, the repo importable, no stray
    PROACTIVE_* settings of the caller's shell."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROACTIVE_")}
    return {**env, "PROACTIVE_TOKEN": TOKEN, "PYTHONPATH": str(ROOT), **extra}


def campaign_argv(csv_path: Path | str, url: str, report: Path | str, *extra: str) -> list[str]:
    """``proactive-async campaign`` pinned to the client core: template 1/1/7, region BR,
    no progress bar, the summary as JSON on stdout; ``extra`` adds pace flags."""
    return [
        *client_prefix(),
        PYTHON,
        "-c",
        CLI_CODE,
        "campaign",
        str(csv_path),
        "--channel-id", "1", "--bot-id", "1", "--template-id", "7",
        "--base-url", url,
        "--default-region", "BR",
        "--no-progress",
        "--json-summary",
        "--report", str(report),
        *extra,
    ]  # fmt: skip


def write_csv(path: Path, count: int, *, start: int = 0) -> None:
    """A one-column CSV of ``count`` unique valid mobiles."""
    with path.open("w") as handle:
        handle.write("phone\n")
        handle.writelines(f"{phone}\n" for phone in brazil_mobiles(count, start=start))


def report_outcomes(path: Path) -> dict[str, int]:
    """Outcome counts of a JSONL report, plus ``lines``, and ``records`` (distinct lines
    numbers): every record exactly one outcome means lines == records == input size."""
    import json

    counts: dict[str, int] = {}
    lines = 0
    seen: set[int] = set()
    if path.exists():
        with path.open() as handle:
            for text in handle:
                item = json.loads(text)
                lines += 1
                seen.add(item.get("line"))
                status = str(item.get("status"))
                counts[status] = counts.get(status, 0) + 1
    return {**counts, "lines": lines, "records": len(seen)}


def max_window(stamps: Sequence[float], width: float = 1.0) -> int:
    """The most timestamps (sorted) in any window [t, t + width) starting at a timestamp."""
    import bisect

    best = 0
    for i, start in enumerate(stamps):
        best = max(best, bisect.bisect_left(stamps, start + width, lo=i) - i)
    return best
