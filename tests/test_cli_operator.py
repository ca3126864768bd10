"""The CLI as an operator meets it, through real subprocesses: why nothing is sent (the
latest error live, the top errors at the end), --dry-run, connection flags, plain inputs."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace

from test_cli import TOKEN, ThreadedSimulator, phones, write_csv
from test_cli_hardening import campaign, run_cli

from proactive_async.simulator import Faults, SimulatorConfig


def refused_url() -> str:
    """A local port nobody listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


class TimedRun:
    """A CLI subprocess whose stderr lines are stamped with their arrival (seconds from start)."""

    def __init__(self, *args: str, cwd: Path, token: str = TOKEN) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PROACTIVE_")}
        env["PROACTIVE_TOKEN"] = token
        self.started = time.monotonic()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "proactive_async.cli", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=cwd,
        )
        self.lines: list[tuple[float, str]] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.lines.append((time.monotonic() - self.started, line.rstrip("\n")))

    def wait(self) -> tuple[int, str]:
        assert self.process.stdout is not None
        with self.process:  # closes the pipes
            stdout = self.process.stdout.read()
            self.process.wait(timeout=120)
            self._reader.join(10)
        return self.process.returncode, stdout

    def first(self, text: str) -> float:
        """Seconds from start to the first stderr line holding ``text``."""
        return next(at for at, line in self.lines if text in line)

    @property
    def stderr(self) -> str:
        return "\n".join(line for _, line in self.lines)


# -- why nothing is being sent (issue 12 §1) ---------------------------------------------


def test_a_refused_port_is_named_in_the_progress_lines_as_it_happens(tmp_path: Path) -> None:
    targets = write_csv(tmp_path / "r.csv", [f"{p},Ana" for p in phones(300)])
    run = TimedRun(
        *campaign(targets, refused_url(), "--max-attempts", "4", "--json-summary"), cwd=tmp_path
    )
    code, stdout = run.wait()
    assert code == 1, run.stderr
    # The first attempts fail at once; the line comes at the next poll (0.25 s), not after
    # the retries are spent. Python's start-up counts in the budget.
    assert run.first("retrying: ConnectError x") < 1.0 + _startup(run), run.stderr
    assert "next in" in run.stderr
    summary = json.loads(stdout)
    (top,) = summary["top_errors"]
    assert top["records"] == 300 and top["kind"] == "ConnectError" and top["status"] == "failed"
    assert "top errors" in run.stderr and "300 x could not connect" in run.stderr


def test_a_wrong_token_names_the_401_at_once_and_counts_it_in_the_top_errors(
    tmp_path: Path,
) -> None:
    targets = write_csv(tmp_path / "r.csv", [f"{p},Ana" for p in phones(200)])
    with ThreadedSimulator(SimulatorConfig(token=TOKEN)) as sim:
        run = TimedRun(
            *campaign(targets, sim.url, "--chunk-size", "50", "--json-summary"),
            cwd=tmp_path,
            token="wrong-token-xyz",
        )
        code, stdout = run.wait()
    assert code == 2, run.stderr
    assert run.first("authentication failed: HTTP 401") < 1.0 + _startup(run)
    top = json.loads(stdout)["top_errors"]
    assert top[0]["http_status"] == 401 and top[0]["kind"] == "AuthenticationError"
    assert sum(error["records"] for error in top) == 200
    assert "wrong-token-xyz" not in run.stderr + stdout


def test_a_bad_certificate_is_named_at_once(tmp_path: Path, tls_ca: SimpleNamespace) -> None:
    targets = write_csv(tmp_path / "r.csv", [f"{p},Ana" for p in phones(20)])
    with ThreadedSimulator(SimulatorConfig(token=TOKEN), tls_ca.server_context) as sim:
        run = TimedRun(*campaign(targets, sim.url), cwd=tmp_path)
        code, _ = run.wait()
    assert code == 2
    assert run.first("certificate") < 1.0 + _startup(run), run.stderr


_STARTUP: list[float] = []


def _startup(run: TimedRun) -> float:
    """Python's start-up and the package's import, measured once with ``--version``."""
    if not _STARTUP:
        started = time.monotonic()
        run_cli("--version", cwd=Path.cwd())
        _STARTUP.append(time.monotonic() - started)
    return _STARTUP[0]


# -- checking before sending (issue 12 §2) -----------------------------------------------


def test_dry_run_plans_the_whole_file_without_token_or_network(tmp_path: Path) -> None:
    rows = [f"{p},Ana" for p in phones(120)] + [f"{phones(1)[0]},Ana", "12,Bob", "x-y-z,Carl"]
    targets = write_csv(tmp_path / "r.csv", rows)
    done = run_cli(
        "campaign", str(targets), "--channel-id", "1", "--bot-id", "2", "--template-id", "3",
        "--chunk-size", "50", "--dry-run", "--json-summary",
        token=None, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr  # rejected and duplicate: reported, exit 0
    plan = json.loads(done.stdout)
    assert (plan["records"], plan["valid"], plan["rejected"], plan["duplicate"]) == (123, 120, 2, 1)
    assert plan["calls"] == 3 and plan["targets_per_call"] == {"min": 20, "mean": 40.0, "max": 50}
    assert {r["kind"] for r in plan["top_rejections"]} == {"invalid_phone"}
    assert "dry run: nothing sent" in done.stderr and "top rejections" in done.stderr
    report = [json.loads(line) for line in (tmp_path / "r.report.jsonl").read_text().splitlines()]
    assert [(r["line"], r["status"]) for r in report] == [
        (121, "duplicate"),
        (122, "rejected"),
        (123, "rejected"),
    ]


def test_dry_run_exits_0_when_every_record_is_sendable(tmp_path: Path) -> None:
    targets = write_csv(tmp_path / "r.csv", [f"{p},Ana" for p in phones(10)])
    done = run_cli(
        "campaign", str(targets), "--channel-id", "1", "--bot-id", "2", "--template-id", "3",
        "--dry-run", token=None, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "valid" in done.stdout and "10" in done.stdout
    assert (tmp_path / "r.report.jsonl").read_text() == ""


# -- connection and logging flags (issue 12 §3) ---------------------------------------


def test_log_file_and_verbose_log_calls_without_the_token_or_whole_numbers(
    tmp_path: Path,
) -> None:
    targets = write_csv(tmp_path / "r.csv", [f"{p},Ana" for p in phones(30)])
    log = tmp_path / "run.log"
    with ThreadedSimulator(SimulatorConfig(token=TOKEN)) as sim:
        done = run_cli(
            *campaign(targets, sim.url, "--log-file", str(log), "-vv", "--chunk-size", "10"),
            "--connect-timeout", "2", "--read-timeout", "5", "--timeout", "9",
            cwd=tmp_path,
        )  # fmt: skip
    assert done.returncode == 0, done.stderr
    text = log.read_text()
    assert text.count("DEBUG proactive_async: POST") == 3
    assert "DEBUG" in done.stderr
    assert TOKEN not in text + done.stderr
    assert all(p not in text for p in phones(30))


def test_a_failed_attempt_is_logged_with_the_token_redacted_and_the_proxy_never_echoed(
    tmp_path: Path,
) -> None:
    targets = write_csv(tmp_path / "r.csv", [f"{p},Ana" for p in phones(5)])
    log = tmp_path / "run.log"
    proxy = refused_url().replace("http://", "http://operator:proxy-pw-1@")
    done = run_cli(
        *campaign(targets, refused_url(), "--proxy", proxy, "--log-file", str(log)),
        "--max-attempts", "2",
        cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 1, done.stderr
    text = log.read_text()
    assert "INFO proactive_async: attempt 1 failed: ConnectError" in text
    assert "proxy-pw-1" not in text + done.stderr + done.stdout and TOKEN not in text
    bad = run_cli(*campaign(targets, refused_url(), "--proxy", "socks5://u:pw-2@h:1"), cwd=tmp_path)
    assert bad.returncode == 2 and "--proxy must be an http://" in bad.stderr
    assert "pw-2" not in bad.stderr


# -- input an operator has (issue 12 §4) -------------------------------------------------


def test_a_plain_txt_list_and_standard_input_are_sent_and_reported_in_input_order(
    tmp_path: Path,
) -> None:
    numbers = phones(400)
    (tmp_path / "list.txt").write_text("\n".join(numbers[:200]) + "\n\n")
    with ThreadedSimulator(
        SimulatorConfig(token=TOKEN, faults=Faults(latency=0.02, latency_jitter=0.02))
    ) as sim:
        listed = run_cli(
            *campaign(tmp_path / "list.txt", sim.url, "--chunk-size", "7"), cwd=tmp_path
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith("PROACTIVE_")}
        piped = subprocess.run(
            [sys.executable, "-m", "proactive_async.cli", *campaign(Path("-"), sim.url)],
            input="\n".join(numbers[200:]) + "\n",
            capture_output=True, text=True, timeout=120, check=False, cwd=tmp_path,
            env=env | {"PROACTIVE_TOKEN": TOKEN},
        )  # fmt: skip
        assert sim.audit.total_processed == 400
    assert listed.returncode == 0, listed.stderr
    assert piped.returncode == 0, piped.stderr
    for report, count in (("list.report.jsonl", 200), ("stdin.report.jsonl", 200)):
        lines = [json.loads(line) for line in (tmp_path / report).read_text().splitlines()]
        assert [row["line"] for row in lines] == list(range(1, count + 1))  # input order
        assert {row["status"] for row in lines} == {"sent"}


def test_help_lists_the_column_aliases_and_what_the_report_line_counts(tmp_path: Path) -> None:
    done = run_cli("campaign", "--help", cwd=tmp_path)
    text = " ".join(done.stdout.split())
    assert "recipient, phone, phone_number, mobile" in text and "contactId" in text
    assert '"line" counts data records from 1 (a CSV header and blank lines are not' in text
    assert "- for standard input" in text


def test_report_format_csv_writes_a_spreadsheet_in_input_order(tmp_path: Path) -> None:
    import csv

    targets = write_csv(tmp_path / "r.csv", [f"{p},Ana" for p in phones(30)] + ["12,Bo"])
    with ThreadedSimulator(SimulatorConfig(token=TOKEN)) as sim:
        done = run_cli(
            *campaign(targets, sim.url, "--report-format", "csv", "--chunk-size", "4"),
            cwd=tmp_path,
        )
    assert done.returncode == 0, done.stderr  # a rejected record is reported, not an error
    with (tmp_path / "r.report.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [int(row["line"]) for row in rows] == list(range(1, 32))
    assert all(row["status"] == "sent" and row["conversation_ids"] for row in rows[:30])
    assert rows[30]["status"] == "rejected" and rows[30]["error_kind"]
    mismatched = run_cli(
        *campaign(targets, "http://127.0.0.1:9", "--report-format", "csv", "--report", "x.jsonl"),
        cwd=tmp_path,
    )
    assert mismatched.returncode == 2 and "--report-format csv" in mismatched.stderr


# -- what stops a run (issue 18 §1) ------------------------------------------------------


def test_the_stop_flags_reach_the_retry_policy_and_resend_failed_the_options() -> None:
    from proactive_async.cli import build_parser
    from proactive_async.cli._flags import options_from_args

    argv = ["campaign", "r.csv", "--channel-id", "1", "--bot-id", "2", "--template-id", "3"]
    defaults = options_from_args(build_parser().parse_args(argv))
    assert (defaults.retry.stop_unreachable_after, defaults.retry.stop_ambiguous_after) == (60, 50)
    assert defaults.retry.max_retry_after == 120 and not defaults.resend_failed
    given = build_parser().parse_args(
        [
            *argv,
            *("--stop-unreachable-after", "5", "--stop-ambiguous-after", "7"),
            *("--max-retry-after", "9", "--resend-failed", "--max-attempts", "3"),
        ]
    )
    options = options_from_args(given)
    retry = options.retry
    assert (retry.stop_unreachable_after, retry.stop_ambiguous_after) == (5.0, 7)
    assert retry.max_retry_after == 9.0 and retry.max_attempts == 3
    assert options.resend_failed and not options.resend_unknown


def test_the_stop_flags_are_the_campaigns_alone() -> None:
    """enqueue stores no breaker limits with a campaign: it does not take their flags."""
    done = subprocess.run(
        [sys.executable, "-m", "proactive_async.cli", "enqueue", "--help"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0
    for flag in ("--stop-unreachable-after", "--stop-ambiguous-after", "--resend-failed"):
        assert flag not in done.stdout


# -- a run without a journal (issue 18 §2) ------------------------------------------------


def test_a_run_without_journal_warns_at_the_start_that_a_re_run_sends_again(
    tmp_path: Path,
) -> None:
    targets = write_csv(tmp_path / "r.csv", [f"{p},Ana" for p in phones(5)])
    with ThreadedSimulator(SimulatorConfig(token=TOKEN)) as sim:
        plain = run_cli(*campaign(targets, sim.url), cwd=tmp_path)
        journaled = run_cli(*campaign(targets, sim.url, "--journal", "j.db"), cwd=tmp_path)
    assert plain.returncode == 0 and journaled.returncode == 0, plain.stderr + journaled.stderr
    first = plain.stderr.splitlines()[0]
    assert "no --journal" in first and "sends to every recipient again" in first
    assert plain.stderr.count("no --journal") == 1
    assert "no --journal" not in journaled.stderr


def test_the_ctrl_c_hint_says_how_many_were_already_sent(tmp_path: Path) -> None:
    targets = write_csv(tmp_path / "r.csv", [f"{p},Ana" for p in phones(2000)])
    with ThreadedSimulator(SimulatorConfig(token=TOKEN)) as sim:
        run = TimedRun(
            *campaign(targets, sim.url, "--rate", "100", "--chunk-size", "5"), cwd=tmp_path
        )
        deadline = time.monotonic() + 30
        while sim.audit.total_processed < 50 and time.monotonic() < deadline:
            time.sleep(0.01)
        run.process.send_signal(signal.SIGINT)
        code, _ = run.wait()
    assert code == 130, run.stderr
    (hint,) = [line for line in run.stderr.splitlines() if line.startswith("interrupted: ")][:1]
    sent = int(hint.removeprefix("interrupted: ").split(" ", 1)[0].replace(",", ""))
    assert 50 <= sent < 2000, hint
    assert "already sent (no --journal: a re-run sends them again)" in hint
    assert "already sent too" in run.stderr  # the advice after the summary


# -- answers that prove nothing (issue 18 §4) ---------------------------------------------


class _OtherNumbersHandler(BaseHTTPRequestHandler):
    """200 for every call, naming conversations to numbers nobody asked for."""

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        answer = json.dumps(
            [
                {"id": 500 + i, "messages": [{"to": "+4915100000000"}]}
                for i, _ in enumerate(body["recipient"])
            ]
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, format: str, *args: object) -> None:
        pass


def test_the_summary_says_calls_answered_without_proof_instead_of_a_bare_zero_rate(
    tmp_path: Path,
) -> None:
    targets = write_csv(tmp_path / "r.csv", [f"{p},Ana" for p in phones(300)])
    server = ThreadingHTTPServer(("127.0.0.1", 0), _OtherNumbersHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        done = run_cli(*campaign(targets, url, "--chunk-size", "10"), cwd=tmp_path)
    finally:
        server.shutdown()
        server.server_close()
    assert done.returncode == 3, done.stderr
    [rate] = [line for line in done.stdout.splitlines() if "targets/s" in line]
    assert "0 proven (300 records answered without proof: see top errors)" in rate, rate
    assert "300 x the call succeeded" in done.stdout and "unmatched" in done.stdout


def test_a_dry_run_and_a_run_of_a_file_with_rejected_records_exit_alike(tmp_path: Path) -> None:
    """Rejected and duplicate records are reported, never an exit code of their own."""
    rows = [f"{p},Ana" for p in phones(8)] + ["12,Bob", f"{phones(1)[0]},Ana"]
    targets = write_csv(tmp_path / "r.csv", rows)
    dry = run_cli(*campaign(targets, "http://127.0.0.1:9", "--dry-run"), token=None, cwd=tmp_path)
    with ThreadedSimulator(SimulatorConfig(token=TOKEN)) as sim:
        real = run_cli(*campaign(targets, sim.url, "--json-summary"), cwd=tmp_path)
        assert sim.audit.total_processed == 8
    assert (dry.returncode, real.returncode) == (0, 0), dry.stderr + real.stderr
    counts = json.loads(real.stdout)["counts"]
    assert (counts["sent"], counts["rejected"], counts["duplicate"]) == (8, 1, 1)
    helped = run_cli("campaign", "--help", token=None, cwd=tmp_path).stdout
    assert "never an exit code of their own" in helped and "--dry-run of the same file" in helped


# -- progress lines (issue 18 §4) ----------------------------------------------------------


def test_the_last_progress_line_counts_the_records_read_not_the_lines(tmp_path: Path) -> None:
    targets = tmp_path / "r.csv"
    rows = [f"{p},Ana" for p in phones(14)]
    targets.write_text("phone,name\n" + "\n".join(rows[:7]) + "\n\n" + "\n".join(rows[7:]) + "\n")
    with ThreadedSimulator(SimulatorConfig(token=TOKEN)) as sim:
        done = run_cli(*campaign(targets, sim.url), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    last = [line for line in done.stderr.splitlines() if " records, " in line][-1]
    assert last.startswith("14/14 records, "), done.stderr


def test_the_eta_of_a_resume_follows_the_records_sent_now_not_those_replayed(
    tmp_path: Path,
) -> None:
    targets = write_csv(tmp_path / "r.csv", [f"{p},Ana" for p in phones(2000)])
    journal = ["--journal", str(tmp_path / "j.db"), "--chunk-size", "10"]
    with ThreadedSimulator(SimulatorConfig(token=TOKEN)) as sim:
        first = TimedRun(*campaign(targets, sim.url, *journal, "--rate", "1000"), cwd=tmp_path)
        deadline = time.monotonic() + 30
        while sim.audit.total_processed < 1500 and time.monotonic() < deadline:
            time.sleep(0.01)
        first.process.send_signal(signal.SIGINT)
        assert first.wait()[0] == 130, first.stderr
        resume = TimedRun(*campaign(targets, sim.url, *journal, "--rate", "50"), cwd=tmp_path)
        code, _ = resume.wait()
    assert code == 0, resume.stderr
    # About 500 records left at 50 a second: some 10 s. Replayed records counted in the rate
    # made the first lines' ETA a second or two.
    etas = [line.rsplit(", eta ", 1)[1] for line in resume.stderr.splitlines() if ", eta " in line]
    h, m, s = (int(part) for part in etas[0].split(":"))
    assert h * 3600 + m * 60 + s >= 5, resume.stderr


# -- a multi-line value refused by default (issue 18 §4) -----------------------------------


def test_a_refused_multi_line_value_is_one_report_line_not_two(tmp_path: Path) -> None:
    first, second = phones(2)
    targets = tmp_path / "r.csv"
    targets.write_text(f'phone,name\n{first},"Ana\nMaria"\n{second},Bob\n', encoding="utf-8")
    dry = run_cli(*campaign(targets, "http://127.0.0.1:9", "--dry-run", "--json-summary"),
                  token=None, cwd=tmp_path)  # fmt: skip
    assert dry.returncode == 0, dry.stderr
    plan = json.loads(dry.stdout)
    assert (plan["records"], plan["valid"], plan["rejected"]) == (2, 1, 1)
    with ThreadedSimulator(SimulatorConfig(token=TOKEN)) as sim:
        done = run_cli(*campaign(targets, sim.url), cwd=tmp_path)
        assert sim.audit.total_processed == 1
    assert done.returncode == 0, done.stderr
    report = [json.loads(line) for line in (tmp_path / "r.report.jsonl").read_text().splitlines()]
    assert [(r["line"], r["status"]) for r in report] == [(1, "rejected"), (2, "sent")]
    assert "spans lines 2-3" in report[0]["error"]["message"]
