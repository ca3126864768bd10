"""Cutting a CSV file into rows, so that a stray quote rejects one row, not the rest.

``csv.reader`` reads one row from as many physical lines as its quotes say. ``LineFeed``
feeds it the file's lines and keeps those of the row being read; when a row must be
rejected (its quoted value open past the limits below, or at the end of the file, or a
line too long), it puts the row's later lines back in front of the file, so reading goes
on from the line after the rejected row's first and no later row is lost.

A row refused only because its closed quoted value spans lines (multi-line values not
allowed) may be a legal value or a stray quote closed by another. Its later lines are read
again as rows only where a line is a whole row on its own (the header's number of fields,
no quote left open): a stray quote's rows are, and are not lost. A line that is not (the
rest of a legal value: ``lines"``) is taken as part of the refused row, which counts it in
its span, rather than rejected as a phantom record of its own.
"""

from __future__ import annotations

import csv
import functools
from collections import deque
from collections.abc import Callable, Iterator
from typing import IO

from ._errors import InputError

__all__ = ["FIELD_LIMIT_ERROR", "MAX_ROW_LINES", "CutRow", "LineFeed"]

# One CSV row may span at most this many physical lines, and hold at most this many times
# the csv module's field limit in characters: past either, its quote is taken for a stray one.
MAX_ROW_LINES = 1000
_ROW_CHARS_PER_FIELD_LIMIT = 4
# What csv.Error says of a field over csv.field_size_limit().
FIELD_LIMIT_ERROR = "field larger than field limit"


class CutRow(Exception):
    """Raised by ``LineFeed.lines`` through ``csv.reader`` to stop a row that must be rejected."""

    # 1: the last held line never reached the reader, so its line_num does not count it.
    held_back = 1


class _LongLine(CutRow):
    """The last held line is over the row limit (held as ``""``, its text skipped)."""


class _Runaway(CutRow):
    """The row's quoted value is still open past the row limit."""


class _Unclosed(CutRow):
    """The file ended inside the row's quoted value."""

    held_back = 0


class LineFeed:
    """The physical lines of a CSV file, fed to ``csv.reader``, and the row being read.

    ``held`` has the lines of the current row (the reader's caller empties it after each
    row). Rejecting a row puts its later lines back in front of the file, to be read
    again by a new reader over a new ``lines()``. ``base`` is the physical line number
    before the first line of the current reader.
    """

    __slots__ = ("_chars", "_pushback", "_source", "base", "field_limit", "held", "max_chars")

    def __init__(self, handle: IO[str]) -> None:
        self.field_limit = csv.field_size_limit()
        self.max_chars = _ROW_CHARS_PER_FIELD_LIMIT * self.field_limit
        # readline(n) bounds the memory a line without end can take.
        self._source: Iterator[str] = iter(
            functools.partial(handle.readline, self.max_chars + 1), ""
        )
        self._pushback: deque[str] = deque()
        self.held: list[str] = []
        self.base = 0
        self._chars = 0

    def header(self, name: str) -> str:
        """The first non-blank line."""
        for text in self._source:
            self.base += 1
            if len(text) > self.max_chars:
                raise InputError(f"{name}: the header row is over {self.max_chars} characters")
            if text.strip():
                return text
        raise InputError(f"{name}: the file is empty (no header row)")

    def lines(self) -> Iterator[str]:
        """Lines put back first, then the file's; raises ``CutRow`` to cut a row short."""
        held = self.held
        pushback = self._pushback
        while pushback:
            text = pushback.popleft()
            self._hold(text)
            yield text
        limit = self.max_chars
        for text in self._source:
            if held or len(text) > limit:
                self._hold(text)
            else:
                held.append(text)
            yield text
        if held:
            raise _Unclosed

    def reject_multiline(self, line_num: int, own_row: Callable[[str], bool]) -> str:
        """Reject the complete row in ``held``, which spans lines (``line_num``: the reader's);
        of its later lines, those that are not ``own_row`` stay the refused row's (read again
        as blank lines, so that line numbers hold)."""
        last = self.base + line_num
        first = last - len(self.held) + 1
        held = self.held
        held[1:] = [text if own_row(text) else "\n" for text in held[1:]]
        self._rewind(first)
        return (
            f"a quoted value spans lines {first}-{last} of the file (a stray quote?); "
            "allow multi-line values to send it"
        )

    def reject(self, line_num: int, exc: csv.Error | CutRow) -> str:
        """Reject the row in ``held`` that ``exc`` stopped, saying why."""
        held = self.held
        last = self.base + line_num + (exc.held_back if isinstance(exc, CutRow) else 0)
        first = last - len(held) + 1
        opened = f"a quoted value opened on line {first} of the file"
        if isinstance(exc, _Unclosed):
            reason = f"{opened} is never closed (a stray quote?)"
        elif isinstance(exc, _LongLine) and len(held) == 1:
            reason = f"line {last} of the file is over {self.max_chars} characters"
        elif isinstance(exc, CutRow):
            reason = (
                f"{opened} is still open on line {last}, past the limit of one row "
                f"({MAX_ROW_LINES} lines, {self.max_chars} characters; a stray quote?)"
            )
        elif not str(exc).startswith(FIELD_LIMIT_ERROR):
            reason = f"line {last} of the file cannot be read as CSV: {exc}"
        elif len(held) == 1:
            reason = (
                f"a field on line {last} of the file is over the CSV field limit of "
                f"{self.field_limit} characters"
            )
        else:
            reason = (
                f"{opened} is over the CSV field limit of {self.field_limit} characters "
                f"by line {last} (a stray quote?)"
            )
        self._rewind(first)
        return reason

    def _rewind(self, first: int) -> None:
        held = self.held
        self._pushback.extendleft(reversed(held[1:]))
        held.clear()
        self.base = first

    def _hold(self, text: str) -> None:
        """Hold a line off the common path: a row's later line, a put-back or a long one."""
        held = self.held
        if len(text) > self.max_chars:
            self._skip_line(text)
            text = ""
        held.append(text)
        if not text:
            raise _LongLine
        if len(held) == 1:
            return
        if len(held) == 2:
            self._chars = len(held[0])
        self._chars += len(text)
        if len(held) > MAX_ROW_LINES or self._chars > self.max_chars:
            raise _Runaway

    def _skip_line(self, text: str) -> None:
        """Read past the rest of a physical line that began with ``text``."""
        while text and text[-1] not in "\r\n":
            text = next(self._source, "")
