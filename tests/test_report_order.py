"""The report writer puts outcomes in input order in flat memory, spilling to disk."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from proactive_async._records import Outcome, OutcomeStatus
from proactive_async._report import ReportWriter


def lines_of(path: Path) -> list[int]:
    return [json.loads(line)["line"] for line in path.read_text().splitlines()]


@pytest.mark.parametrize(("records", "max_held"), [(2000, 10), (5000, 3), (300, 10_000)])
def test_outcomes_in_completion_order_are_written_in_input_order(
    tmp_path: Path, records: int, max_held: int
) -> None:
    order = list(range(1, records + 1))
    random.Random(records).shuffle(order)
    writer = ReportWriter(tmp_path / "r.jsonl", max_held=max_held)
    for line in order:
        writer.write(Outcome(line=line, status=OutcomeStatus.SENT))
        assert len(writer._held) <= max_held  # flat memory: the rest is on disk
    writer.close()
    assert lines_of(tmp_path / "r.jsonl") == list(range(1, records + 1))


def test_a_line_that_never_comes_holds_the_rest_until_close(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    writer = ReportWriter(path, max_held=4)
    for line in (1, 2, 4, 5, 6, 7, 8, 9, 10):  # 3 was left unsent by a stop
        writer.write(Outcome(line=line, status=OutcomeStatus.SENT))
    writer._write_buffer()
    assert writer._replace is not None  # written beside the path until it is complete
    assert lines_of(Path(writer._replace[0])) == [1, 2]
    assert not path.exists()
    writer.close()
    assert lines_of(path) == [1, 2, 4, 5, 6, 7, 8, 9, 10]


def test_flush_writes_every_held_line_for_an_exit_that_cannot_wait(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    writer = ReportWriter(path)
    for line in (2, 1, 5, 4):
        writer.write(Outcome(line=line, status=OutcomeStatus.SENT))
    writer.flush()
    assert lines_of(path) == [1, 2, 4, 5]
    writer.close()
