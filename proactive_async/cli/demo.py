"""``proactive-async demo``: a generated campaign against the embedded simulator, audited.

It writes a CSV of Brazilian mobiles (some without ``+55``, a few invalid or repeated),
starts the simulator with a rate limit the client is not told and about 4% faulty calls,
runs the campaign through ``campaign.run_campaign``, and holds the report against the
simulator's audit: every record one outcome, nothing sent twice.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import secrets
import sys
import tempfile
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import msgspec

from .._models import ProactiveConversationRequest
from .._options import CampaignOptions
from .._records import Outcome, OutcomeStatus
from ..settings import Settings
from ._common import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    UsageError,
    console,
    os_error_text,
    stderr_console,
)
from ._flags import int_arg, positive_int
from .campaign import CampaignSettings, print_summary, run_campaign

if TYPE_CHECKING:
    from rich.console import Console

    from ..simulator import SimulatorConfig

__all__ = ["AuditResult", "add_parser", "audit_report", "demo_command", "write_demo_recipients"]


_DEMO_NAMES: Final = (
    "Ana",
    "Bruno",
    "Camila",
    "Diego",
    "Eduarda",
    "Felipe",
    "Gabriela",
    "Henrique",
    "Isabela",
    "João",
    "Larissa",
    "Marcos",
    "Natália",
    "Otávio",
    "Patrícia",
    "Rafael",
    "Sofia",
    "Thiago",
    "Vitória",
    "Wagner",
)
_DEMO_AREA_CODES: Final = (11, 21, 31, 41, 47, 51, 61, 71, 81, 85, 91, 92)
_DEMO_INVALID: Final = ("12345", "+55 11 1234", "0000", "+999 123456789", "not-a-number")


def write_demo_recipients(path: Path, records: int, seed: int) -> None:
    """A CSV of Brazilian mobiles with a ``name`` column.

    About 20% lack the +55 prefix (so --default-region BR matters), 0.5% are invalid and
    0.5% repeat an earlier number in another spelling.
    """
    rng = random.Random(seed)
    numbers = rng.sample(range(10**8), records)
    lines = ["phone,name"]
    written: list[tuple[int, int]] = []
    for index in range(records):
        name = _DEMO_NAMES[index % len(_DEMO_NAMES)]
        draw = rng.random()
        if draw < 0.005:
            lines.append(f"{rng.choice(_DEMO_INVALID)},{name}")
            continue
        if draw < 0.01 and written:
            area, number = rng.choice(written)
            lines.append(f"({area}) 9{number // 10**4:04d}-{number % 10**4:04d},{name}")
            continue
        area = rng.choice(_DEMO_AREA_CODES)
        number = numbers[index]
        written.append((area, number))
        if draw < 0.2:
            lines.append(f"{area} 9{number:08d},{name}")
        else:
            lines.append(f"+55{area}9{number:08d},{name}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def _demo_simulator_config(seed: int) -> SimulatorConfig:
    from ..simulator import Faults, SimulatorConfig

    return SimulatorConfig(
        token=secrets.token_urlsafe(24),
        rate_limit=4000.0,  # not told to the client: adaptive mode has to find it
        retry_after_style="fractional",
        faults=Faults(
            rate_429=0.02,
            rate_503=0.01,
            rate_500=0.005,
            drop_before=0.005,
            drop_after=0.003,
            truncate_after=0.003,
            latency=0.004,
            latency_jitter=0.003,
            retry_after=0.2,
            seed=seed,
        ),
    )


@dataclass
class AuditResult:
    """The simulator's audit held against the campaign's report."""

    records: int
    lost: list[str] = field(default_factory=list)
    duplicated: list[str] = field(default_factory=list)
    missing_lines: list[int] = field(default_factory=list)
    repeated_lines: list[int] = field(default_factory=list)
    unknown: int = 0
    unknown_processed: int = 0

    @property
    def ok(self) -> bool:
        """Nothing lost or sent twice, and one report line per record."""
        return not (self.lost or self.duplicated or self.missing_lines or self.repeated_lines)

    def text(self) -> str:
        """The verdict line, then up to 20 examples of each discrepancy."""
        head = (
            f"audit: {self.records:,} records, {len(self.lost)} lost, "
            f"{len(self.duplicated)} duplicated, {len(self.missing_lines)} without a report "
            f"line, {len(self.repeated_lines)} with several"
        )
        note = ""
        if self.unknown:
            note = (
                f"; {self.unknown} unknown, of which the server processed "
                f"{self.unknown_processed} (why unknowns are never resent blindly)"
            )
        verdict = " ... OK" if self.ok else " ... DISCREPANCIES"
        details = [f"  lost: {x}" for x in self.lost[:20]]
        details += [f"  duplicated: {x}" for x in self.duplicated[:20]]
        details += [f"  no report line: line {n}" for n in self.missing_lines[:20]]
        details += [f"  several report lines: line {n}" for n in self.repeated_lines[:20]]
        return "\n".join([head + note + verdict, *details])


def audit_report(
    outcomes: Sequence[Outcome], processed: Mapping[str, int], records: int
) -> AuditResult:
    """Check a report against what the server processed, per number and per input line.

    ``sent`` -> processed exactly once; ``failed`` / ``rejected`` / ``duplicate`` -> not
    processed (unless another line with the number was sent); ``unknown`` -> at most once.
    """
    result = AuditResult(records=records)
    lines = Counter(outcome.line for outcome in outcomes)
    result.missing_lines = [n for n in range(1, records + 1) if n not in lines]
    result.repeated_lines = sorted(n for n, count in lines.items() if count > 1)
    sent: Counter[str] = Counter()
    unknown: Counter[str] = Counter()
    for outcome in outcomes:
        key = _audit_key(outcome)
        if outcome.status is OutcomeStatus.SENT:
            sent[key] += 1
        elif outcome.status is OutcomeStatus.UNKNOWN:
            unknown[key] += 1
    counts = {_digits(target): n for target, n in processed.items()}
    for key, n in sent.items():
        if counts.get(key, 0) < n:
            result.lost.append(f"{key} reported sent, processed {counts.get(key, 0)} time(s)")
    for key, count in counts.items():
        allowed = sent[key] + unknown[key]
        if count > allowed:
            result.duplicated.append(f"{key} processed {count} time(s), {allowed} allowed")
    result.unknown = sum(unknown.values())
    result.unknown_processed = sum(min(counts.get(k, 0), n) for k, n in unknown.items())
    return result


def _audit_key(outcome: Outcome) -> str:
    if outcome.contact_id is not None:
        return f"contact:{outcome.contact_id}"
    return _digits(outcome.recipient or "")


def _digits(target: str) -> str:
    if target.startswith("contact:"):
        return target
    return "".join(c for c in target if c.isdigit())


def _read_report(path: str) -> list[Outcome]:
    decoder = msgspec.json.Decoder(Outcome)
    with open(path, "rb") as handle:
        return [decoder.decode(line) for line in handle if line.strip()]


async def _run_demo(args: argparse.Namespace, workdir: Path, stderr: Console) -> int:
    # The simulator (aiohttp.web) is imported only when the demo runs.
    from ..simulator import Simulator

    recipients = workdir / "recipients.csv"
    write_demo_recipients(recipients, args.records, args.seed)
    config = _demo_simulator_config(args.seed)
    async with Simulator(config) as simulator:
        settings = CampaignSettings(
            targets=str(recipients),
            settings=Settings(base_url=simulator.url, token=config.token),
            template=ProactiveConversationRequest(
                channel_id=1,
                bot_id=2,
                conversation_template_id=3,
                content_variables={"company": "Acme"},
            ),
            options=CampaignOptions(default_region="BR"),
            journal=str(workdir / "journal.db"),
            report=str(workdir / "report.jsonl"),
            progress=not args.no_progress,
        )
        stderr.print(
            f"demo: {args.records:,} recipients in {recipients}; simulator at {simulator.url} "
            "(server limit 4,000 targets/s, not told to the client; ~4% faulty calls)"
        )
        result = await run_campaign(settings, stderr=stderr)
        processed = simulator.audit.snapshot()
    print_summary(result, settings, json_summary=False, stderr=stderr)
    if result.exit_code == EXIT_INTERRUPTED:
        return EXIT_INTERRUPTED
    assert settings.report is not None
    audit = audit_report(_read_report(settings.report), processed, args.records)
    console(sys.stdout).print(audit.text())
    return EXIT_OK if audit.ok else EXIT_FAILED


def demo_command(args: argparse.Namespace) -> int:
    """``proactive-async demo``: a campaign against the embedded simulator, then its audit."""
    stderr = stderr_console()
    if args.workdir:
        workdir = Path(args.workdir)
        try:
            workdir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UsageError(os_error_text(exc)) from exc
        for stale in ("journal.db", "journal.db-wal", "journal.db-shm", "report.jsonl"):
            (workdir / stale).unlink(missing_ok=True)  # a demo always starts afresh
    else:
        workdir = Path(tempfile.mkdtemp(prefix="proactive-async-demo-"))
    stderr.print(f"demo: working in {workdir}")
    return asyncio.run(_run_demo(args, workdir, stderr))


def add_parser(commands: Any) -> None:
    """``demo``: how many records, the seed of its recipients and faults, its directory."""
    p = commands.add_parser(
        "demo",
        help="a 20,000-recipient campaign against the embedded simulator, then an audit",
        description="Start the simulator with realistic faults and a hidden rate limit, run "
        "a campaign against it and check the simulator's audit against the report: nothing "
        "lost, nothing sent twice.",
        epilog="exit codes: 0 the audit found no discrepancy, 1 it found one (listed), "
        "130 interrupted.",
        allow_abbrev=False,
    )
    p.add_argument("--records", type=positive_int, default=20_000, metavar="N")
    p.add_argument("--seed", type=int_arg, default=1, metavar="N")
    p.add_argument("--workdir", metavar="DIR", help="default: a fresh temporary directory")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(handler=demo_command)
