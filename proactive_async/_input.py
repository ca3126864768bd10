"""Campaign input: CSV / JSONL files and Python iterables, streamed as ``Record``\\ s.

Every reader numbers records from 1 in input order (a CSV header and blank lines are
not records) and never raises for one bad record: a record that cannot be read becomes
``Record(line=N, error="...")`` carrying as much of its target as could be read, so it
ends ``rejected`` with that reason. Only a file that cannot be read at all (missing,
empty, no header, a header over the limits below, no target column) raises
``InputError``, when iteration starts.

A ``.txt`` file without such a header is a plain list of numbers, one a line.

CSV columns, matched case-insensitively and ignoring ``_``, ``-`` and spaces:

* the phone column: ``recipient``, ``phone``, ``phone_number`` or ``mobile``; or the
  column named by ``recipient_column`` (``--recipient-column telefone``), and then only it
  (a ``phone`` column beside it is a variable like any other);
* the contact column: ``contactId`` (also ``contact_id``, ``CONTACT-ID``, ...);
* every other named column is a content variable of its row, under the header's
  spelling. An empty cell stays ``""`` (a template variable that is present but blank
  keeps every row's variables the same shape); a column with an empty header is ignored.

A CSV row is one physical line unless a quoted value runs over several. A stray ``"``
must not pour other people's rows into one value, so a row is rejected when its quote is
still open at the end of the file or past the row limit (1000 lines, or 4 times the csv
module's field limit in characters), and, unless ``multiline=True``, when a quoted value
spans lines at all; reading then goes on from the line after the rejected row's first,
so no later row is lost. Of a refused multi-line row whose quote closed, only the later
lines that are whole rows on their own are read again (a stray quote closed by another);
the rest of a legal multi-line value stays part of the refused record, never a phantom
one. A cell over ``csv.field_size_limit()`` (left as the user set it) or a line over the
row limit rejects that row alone.
"""

from __future__ import annotations

import asyncio
import csv
import hashlib
import io
import os
from collections.abc import (
    AsyncIterable,
    AsyncIterator,
    Callable,
    Iterable,
    Iterator,
    Mapping,
)
from pathlib import Path
from typing import IO, Any

import msgspec

from ._csv_rows import FIELD_LIMIT_ERROR, CutRow, LineFeed
from ._errors import InputError
from ._records import Record, Target

__all__ = [
    "COLUMN_ALIASES",
    "aiter_records",
    "count_records",
    "fingerprint_file",
    "read_csv",
    "read_jsonl",
    "read_lines",
    "read_records",
    "starts_with_header",
]

_RECIPIENT_NAMES = frozenset({"recipient", "phone", "phonenumber", "mobile"})
_CONTACT_NAMES = frozenset({"contactid"})
COLUMN_ALIASES = "recipient, phone, phone_number, mobile (a phone number); contactId, contact_id"
"""The target columns a CSV header may name, for help texts."""
_SNIFF_DELIMITERS = (",", ";", "\t")
_CSV_SUFFIXES = frozenset({".csv", ".tsv", ".txt"})
_JSONL_SUFFIXES = frozenset({".jsonl", ".ndjson"})
_UTF8_BOM = b"\xef\xbb\xbf"
_NOT_UTF8 = "not valid UTF-8"
# Keys of a JSONL object / mapping item, in either spelling, to the Record field.
_MAPPING_KEYS = {
    "recipient": "recipient",
    "contactId": "contact_id",
    "contact_id": "contact_id",
    "contentVariables": "variables",
    "content_variables": "variables",
}
# How many items a sync iterable yields before aiter_records lets other tasks run.
_YIELD_EVERY = 256

_json_decode = msgspec.json.Decoder().decode


def read_records(
    path: str | os.PathLike[str], *, multiline: bool = False, recipient_column: str | None = None
) -> Iterator[Record]:
    """Read a targets file, choosing the format by suffix.

    ``.csv`` / ``.txt`` (delimiter sniffed), ``.tsv`` (tab), ``.jsonl`` / ``.ndjson``.
    ``multiline`` and ``recipient_column`` are passed to ``read_csv`` (a JSONL file's keys
    are fixed).
    """
    suffix = Path(path).suffix.lower()
    column = recipient_column
    if suffix == ".tsv":
        return read_csv(path, delimiter="\t", multiline=multiline, recipient_column=column)
    if suffix == ".txt" and not _has_header(path, column):
        return read_lines(path)
    if suffix in _CSV_SUFFIXES:
        return read_csv(path, multiline=multiline, recipient_column=column)
    if suffix in _JSONL_SUFFIXES:
        return read_jsonl(path)
    raise InputError(
        f"{os.fspath(path)}: unknown targets file type {suffix!r}; "
        "use .csv, .tsv, .txt, .jsonl or .ndjson"
    )


def starts_with_header(path: str | os.PathLike[str], recipient_column: str | None = None) -> bool:
    """Whether the first line of this targets file is a header, not a record (as
    ``read_records`` reads it): a CSV's is; a JSONL file has none; a ``.txt`` file has one
    only when it names a target column."""
    suffix = Path(path).suffix.lower()
    if suffix in _JSONL_SUFFIXES:
        return False
    if suffix == ".txt":
        try:
            return _has_header(path, recipient_column)
        except (OSError, InputError):
            return False
    return True


def read_csv(
    path: str | os.PathLike[str],
    *,
    delimiter: str | None = None,
    multiline: bool = False,
    recipient_column: str | None = None,
) -> Iterator[Record]:
    """Stream the records of a CSV file with a header row.

    ``delimiter`` is sniffed from the header among ``,`` ``;`` and tab when ``None``.
    UTF-8, with or without a BOM; a row that is not valid UTF-8 is rejected alone.
    ``multiline`` accepts a quoted value spanning several lines; without it such a row is
    rejected and its later lines are read as rows of their own. ``recipient_column`` names
    the phone column (matched as the built-in names are) instead of the built-in names.
    """
    name = os.fspath(path)
    with _open_text(name) as handle:
        feed = LineFeed(handle)
        header_line = feed.header(name)
        sep = delimiter if delimiter is not None else _sniff_delimiter(header_line)
        header = _parse_header(header_line, sep, name, feed.field_limit)
        layout = _CsvLayout(header, name, recipient_column)
        held = feed.held
        line = 0
        while True:
            reader = csv.reader(feed.lines(), delimiter=sep)
            try:
                for row in reader:
                    if len(held) != 1 and not multiline:
                        line += 1
                        reason = feed.reject_multiline(reader.line_num, layout.whole_row(sep))
                        yield Record(line=line, error=reason)
                        break  # read again from the row's second line
                    held.clear()
                    if not row or (len(row) == 1 and not row[0].strip()):
                        continue  # a blank line is not a record
                    line += 1
                    yield layout.record(line, row)
                else:
                    return
            except (csv.Error, CutRow) as exc:
                line += 1
                yield Record(line=line, error=feed.reject(reader.line_num, exc))


def read_jsonl(path: str | os.PathLike[str]) -> Iterator[Record]:
    """Stream the records of a JSON Lines file: one object per line, blank lines skipped.

    Each object has ``recipient`` (a string) or ``contactId`` (an integer), and optionally
    ``contentVariables`` (an object); snake_case spellings are accepted too.
    """
    name = os.fspath(path)
    handle = _open_binary(name)
    with handle:
        first = True
        line = 0
        for raw in handle:
            if first:
                first = False
                raw = raw.removeprefix(_UTF8_BOM)
            if not raw.strip():
                continue
            line += 1
            yield _jsonl_record(line, raw)
        if line == 0:
            raise InputError(f"{name}: the file is empty (no records)")


def read_lines(path: str | os.PathLike[str]) -> Iterator[Record]:
    """Stream a plain list of phone numbers: one a line, no header, blank lines skipped."""
    name = os.fspath(path)
    with _open_text(name) as handle:
        line = 0
        for text in handle:
            number = text.strip()
            if not number:
                continue
            line += 1
            if _has_surrogates(number):
                yield Record(line=line, error=f"line {line}: {_NOT_UTF8}")
            else:
                yield Record(line=line, recipient=number)
        if line == 0:
            raise InputError(f"{name}: the file is empty (no records)")


def _has_header(path: str | os.PathLike[str], recipient_column: str | None = None) -> bool:
    """Whether a ``.txt`` file starts with a CSV header naming a target column (else it is
    a plain list of numbers, one a line)."""
    name = os.fspath(path)
    with _open_text(name) as handle:
        first = next((text for text in handle if text.strip()), "")
    cells = first.replace(";", ",").replace("\t", ",").split(",")
    names = {_column_key(cell.strip().strip('"')) for cell in cells}
    return bool(names & (_recipient_names(recipient_column) | _CONTACT_NAMES))


def _column_key(cell: str) -> str:
    """A header cell as target columns are matched: case-insensitive, no ``_ - `` or spaces."""
    return cell.lower().replace("_", "").replace("-", "").replace(" ", "")


def _recipient_names(recipient_column: str | None) -> frozenset[str]:
    if recipient_column is None:
        return _RECIPIENT_NAMES
    return frozenset({_column_key(recipient_column.strip())})


async def aiter_records(
    source: Iterable[object] | AsyncIterable[object],
) -> AsyncIterator[Record]:
    """Turn the items of an iterable or async iterable into numbered records.

    An item may be a ``str`` (a phone number), an ``int`` (a contact id), a ``Target``,
    a mapping with the JSONL keys (camelCase or snake_case) or a ``Record`` (renumbered to
    its position). Any other item becomes a record whose error names its type.
    """
    line = 0
    if isinstance(source, AsyncIterable):
        async for item in source:
            line += 1
            yield record_from_item(line, item)
        return
    for item in source:
        line += 1
        yield record_from_item(line, item)
        if line % _YIELD_EVERY == 0:
            # A sync source never awaits: give the event loop a turn now and then.
            await asyncio.sleep(0)


def record_from_item(line: int, item: object) -> Record:
    """One Python object as the record at ``line`` (see ``aiter_records``)."""
    if isinstance(item, Record):
        if item.line == line:
            return item
        return msgspec.structs.replace(item, line=line)
    if isinstance(item, str):
        phone = item.strip()
        if not phone:
            return Record(line=line, error="empty phone number")
        return Record(line=line, recipient=phone)
    if isinstance(item, int) and not isinstance(item, bool):
        return Record(line=line, contact_id=item)
    if isinstance(item, Target):
        return Record(
            line=line,
            recipient=item.recipient,
            contact_id=item.contact_id,
            variables=item.content_variables,
        )
    if isinstance(item, Mapping):
        return _mapping_record(line, item)
    return Record(
        line=line,
        error=f"unsupported item of type {type(item).__name__}; expected a phone number "
        "(str), a contact id (int), a Target, a mapping or a Record",
    )


def fingerprint_file(path: str | os.PathLike[str]) -> str:
    """The SHA-256 of a file's bytes as hex, read in blocks (identifies a campaign's input)."""
    with _open_binary(os.fspath(path)) as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


class _CsvLayout:
    """Where the target columns and the variable columns of one CSV header are."""

    __slots__ = ("contact", "recipient", "var_columns", "var_index", "var_names", "width")

    def __init__(self, header: list[str], name: str, recipient_column: str | None) -> None:
        if _has_surrogates("".join(header)):
            raise InputError(f"{name}: the header row is {_NOT_UTF8}")
        header = [cell.strip() for cell in header]
        self.width = len(header)
        self.recipient: int | None = None
        self.contact: int | None = None
        self.var_index: list[int] = []
        self.var_names: list[str] = []
        recipient_names = _recipient_names(recipient_column)
        for index, cell in enumerate(header):
            self._place(index, cell, name, recipient_names)
        if recipient_column is not None and self.recipient is None:
            raise InputError(
                f"{name}: no column {recipient_column!r} (the recipient column asked for) "
                f"in the header {header!r}"
            )
        if self.recipient is None and self.contact is None:
            raise InputError(f"{name}: no recipient or contactId column in the header {header!r}")
        if len(set(self.var_names)) != len(self.var_names):
            raise InputError(f"{name}: the header repeats a column name: {header!r}")
        # Pairs built once: a zip(strict=True) per row cost more than the rest of a row.
        self.var_columns: tuple[tuple[str, int], ...] = tuple(
            zip(self.var_names, self.var_index, strict=True)
        )

    def _place(self, index: int, cell: str, name: str, recipient_names: frozenset[str]) -> None:
        key = _column_key(cell)
        if key in recipient_names:
            if self.recipient is not None:
                raise InputError(f"{name}: more than one recipient column ({cell!r})")
            self.recipient = index
        elif key in _CONTACT_NAMES:
            if self.contact is not None:
                raise InputError(f"{name}: more than one contactId column ({cell!r})")
            self.contact = index
        elif cell:
            self.var_index.append(index)
            self.var_names.append(cell)

    def whole_row(self, delimiter: str) -> Callable[[str], bool]:
        """Whether one physical line is a row on its own: the header's number of fields, and
        no quoted value left open (a value holding the line's end)."""

        def check(text: str) -> bool:
            rows = list(csv.reader([text], delimiter=delimiter))
            return (
                len(rows) == 1
                and len(rows[0]) == self.width
                and not any("\n" in cell or "\r" in cell for cell in rows[0])
            )

        return check

    def record(self, line: int, row: list[str]) -> Record:
        recipient = _cell(row, self.recipient)
        contact_text = _cell(row, self.contact)
        contact_id, contact_error = _parse_contact(contact_text)
        error = self._row_error(row, recipient, contact_text, contact_error)
        variables: dict[str, Any] | None = None
        if self.var_names and error is None:
            variables = {var: row[index] for var, index in self.var_columns}
        if error is not None and recipient is not None and _has_surrogates(recipient):
            recipient = None  # cannot be reported as text either
        return Record(
            line=line, recipient=recipient, contact_id=contact_id, variables=variables, error=error
        )

    def _row_error(
        self,
        row: list[str],
        recipient: str | None,
        contact_text: str | None,
        contact_error: str | None,
    ) -> str | None:
        if len(row) != self.width:
            return f"row has {len(row)} fields, the header has {self.width}"
        if _has_surrogates("".join(row)):
            return f"row is {_NOT_UTF8}"
        if contact_error is not None:
            return contact_error
        if recipient is None and contact_text is None:
            return "neither recipient nor contactId is set"
        return None


def _cell(row: list[str], index: int | None) -> str | None:
    if index is None or index >= len(row):
        return None
    value = row[index].strip()
    return value or None


def _parse_contact(text: str | None) -> tuple[int | None, str | None]:
    if text is None:
        return None, None
    # Strict digits: int() would also take "1_000", "+5" or non-ASCII digits.
    if text.isascii() and text.isdigit():
        return int(text), None
    return None, f"contactId {text!r} is not a positive integer"


def _has_surrogates(text: str) -> bool:
    # surrogateescape turns each undecodable byte into a lone surrogate.
    if text.isascii():
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _is_utf8(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _sniff_delimiter(header_line: str) -> str:
    counts = [(header_line.count(sep), -rank, sep) for rank, sep in enumerate(_SNIFF_DELIMITERS)]
    count, _, sep = max(counts)
    return sep if count else ","


def _parse_header(header_line: str, sep: str, name: str, field_limit: int) -> list[str]:
    try:
        return next(csv.reader([header_line], delimiter=sep))
    except csv.Error as exc:
        if str(exc).startswith(FIELD_LIMIT_ERROR):
            raise InputError(
                f"{name}: a column name of the header row is over the CSV field limit of "
                f"{field_limit} characters"
            ) from None
        raise InputError(f"{name}: the header row cannot be read as CSV: {exc}") from None


def _open_text(name: str) -> IO[str]:
    try:
        # utf-8-sig drops a BOM; surrogateescape lets one bad row fail alone.
        return open(name, encoding="utf-8-sig", errors="surrogateescape", newline="")
    except OSError as exc:
        raise InputError(f"{name}: cannot open the targets file: {exc.strerror or exc}") from exc


def _open_binary(name: str) -> io.BufferedReader:
    try:
        return open(name, "rb")
    except OSError as exc:
        raise InputError(f"{name}: cannot open the targets file: {exc.strerror or exc}") from exc


def _jsonl_record(line: int, raw: bytes) -> Record:
    try:
        value = _json_decode(raw)
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        if not _is_utf8(raw):
            return Record(line=line, error=f"line is {_NOT_UTF8}")
        return Record(line=line, error=f"bad JSON: {exc}")
    if not isinstance(value, dict):
        return Record(
            line=line, error=f"a JSON {_json_type(value)} is not a record; expected an object"
        )
    return _mapping_record(line, value)


def _mapping_record(line: int, mapping: Mapping[Any, Any]) -> Record:
    fields: dict[str, Any] = {}
    unknown: list[str] = []
    for key, value in mapping.items():
        field = _MAPPING_KEYS.get(key) if isinstance(key, str) else None
        if field is None:
            unknown.append(repr(key))
        else:
            fields[field] = value
    recipient = fields.get("recipient")
    contact_id = fields.get("contact_id")
    variables = fields.get("variables")
    errors: list[str] = []
    if unknown:
        errors.append(
            f"unknown field(s) {', '.join(unknown)}; expected recipient, contactId, "
            "contentVariables"
        )
    recipient, error = _check_recipient(recipient)
    if error:
        errors.append(error)
    contact_id, error = _check_contact(contact_id)
    if error:
        errors.append(error)
    if variables is not None and not isinstance(variables, dict):
        errors.append(f"contentVariables must be an object, not {_json_type(variables)}")
        variables = None
    if recipient is None and contact_id is None and not errors:
        errors.append("neither recipient nor contactId is set")
    return Record(
        line=line,
        recipient=recipient,
        contact_id=contact_id,
        variables=None if errors else variables,
        error="; ".join(errors) if errors else None,
    )


def _check_recipient(value: object) -> tuple[str | None, str | None]:
    if value is None:
        return None, None
    if not isinstance(value, str):
        return None, f"recipient must be a string, not {_json_type(value)}"
    return (value.strip() or None), None


def _check_contact(value: object) -> tuple[int | None, str | None]:
    if value is None:
        return None, None
    if isinstance(value, bool) or not isinstance(value, int):
        return None, f"contactId must be an integer, not {_json_type(value)} {value!r}"
    return value, None


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def count_records(source: object, recipient_column: str | None = None) -> int | None:
    """Records in a targets file (lines, header and blank lines aside), for progress and to
    size the planner's dedupe table; else None."""
    if not isinstance(source, str | os.PathLike):
        return len(source) if isinstance(source, list | tuple) else None
    try:
        with open(source, "rb") as handle:
            lines = 0
            last = b"\n"
            while block := handle.read(1 << 20):
                lines += block.count(b"\n")
                last = block[-1:]
    except OSError:
        return None
    if last != b"\n":
        lines += 1
    return max(0, lines - 1) if starts_with_header(source, recipient_column) else lines
