"""Readers of campaign input: CSV, JSONL, Python iterables, and the file fingerprint."""

from __future__ import annotations

import csv
import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from proactive_async._errors import InputError
from proactive_async._input import (
    aiter_records,
    fingerprint_file,
    read_csv,
    read_jsonl,
    read_records,
)
from proactive_async._records import Record, Target


def write(tmp_path: Path, name: str, content: str | bytes) -> Path:
    path = tmp_path / name
    if isinstance(content, str):
        content = content.encode()
    path.write_bytes(content)
    return path


# --- CSV ---------------------------------------------------------------------------


def test_csv_reads_recipients_and_contacts_numbered_from_one(tmp_path: Path) -> None:
    path = write(tmp_path, "t.csv", "recipient,contactId\n+5511999990000,\n,42\n")
    assert list(read_csv(path)) == [
        Record(line=1, recipient="+5511999990000"),
        Record(line=2, contact_id=42),
    ]


def test_csv_extra_columns_become_variables_and_empty_cells_stay_empty(tmp_path: Path) -> None:
    path = write(tmp_path, "t.csv", "name,recipient,city\nAna,+5511999990000,\n")
    (record,) = read_csv(path)
    assert record.recipient == "+5511999990000"
    assert record.variables == {"name": "Ana", "city": ""}


def test_csv_without_variable_columns_has_no_variables(tmp_path: Path) -> None:
    (record,) = read_csv(write(tmp_path, "t.csv", "recipient\n+5511999990000\n"))
    assert record.variables is None


@pytest.mark.parametrize(
    ("header", "field"),
    [
        ("Recipient", "recipient"),
        ("PHONE", "recipient"),
        ("phone_number", "recipient"),
        ("contact_id", "contact_id"),
        ("ContactID", "contact_id"),
        ("contact-id", "contact_id"),
    ],
)
def test_csv_target_columns_match_case_and_snake_variants(
    tmp_path: Path, header: str, field: str
) -> None:
    (record,) = read_csv(write(tmp_path, "t.csv", f"{header}\n77\n"))
    assert getattr(record, field) == (77 if field == "contact_id" else "77")


def test_csv_sniffs_semicolon_delimiter(tmp_path: Path) -> None:
    path = write(tmp_path, "t.csv", "recipient;name\n+5511999990000;Ana, Maria\n")
    (record,) = read_csv(path)
    assert record.variables == {"name": "Ana, Maria"}


def test_csv_sniffs_tab_delimiter(tmp_path: Path) -> None:
    (record,) = read_csv(write(tmp_path, "t.csv", "recipient\tname\n+5511999990000\tAna\n"))
    assert (record.recipient, record.variables) == ("+5511999990000", {"name": "Ana"})


def test_csv_explicit_delimiter_overrides_sniffing(tmp_path: Path) -> None:
    path = write(tmp_path, "t.csv", "recipient|a;b\n+5511999990000|x;y\n")
    (record,) = read_csv(path, delimiter="|")
    assert record.variables == {"a;b": "x;y"}


def test_csv_tolerates_utf8_bom_and_crlf(tmp_path: Path) -> None:
    path = write(tmp_path, "t.csv", b"\xef\xbb\xbfrecipient,nome\r\n+5511999990000,Jos\xc3\xa9\r\n")
    (record,) = read_csv(path)
    assert record == Record(line=1, recipient="+5511999990000", variables={"nome": "José"})


def test_csv_quoted_field_with_newline_is_one_record_with_multiline(tmp_path: Path) -> None:
    path = write(tmp_path, "t.csv", 'recipient,msg\n+551,"two\nlines"\n+552,x\n')
    records = list(read_csv(path, multiline=True))
    assert [r.line for r in records] == [1, 2]
    assert records[0].variables == {"msg": "two\nlines"}


def test_csv_multiline_value_is_rejected_by_default_and_its_lines_read_again(
    tmp_path: Path,
) -> None:
    """Without multiline, a quoted value over lines 3-4 is rejected as one record; line 4
    (``lines"``, not a row on its own) is part of it, never a phantom record."""
    path = write(tmp_path, "t.csv", 'recipient,msg\n+551,a\n+552,"two\nlines"\n+553,x\n')
    first, spanning, last = read_csv(path)
    assert first == Record(line=1, recipient="+551", variables={"msg": "a"})
    assert spanning == Record(
        line=2,
        error="a quoted value spans lines 3-4 of the file (a stray quote?); "
        "allow multi-line values to send it",
    )
    assert last == Record(line=3, recipient="+553", variables={"msg": "x"})


def test_a_refused_multiline_value_of_many_lines_is_one_record_and_whole_rows_are_read(
    tmp_path: Path,
) -> None:
    """Its later lines that are not rows on their own (a middle line, one with a doubled
    quote, the closing one) are the refused row's; a whole row among them is read as a row."""
    content = 'recipient,msg\n+551,"one\nmiddle\nsaid ""hi\n+552,whole\nend"\n+553,x\n'
    spanning, *rest = read_csv(write(tmp_path, "t.csv", content))
    assert spanning.error is not None and "spans lines 2-6" in spanning.error
    assert rest == [
        Record(line=2, recipient="+552", variables={"msg": "whole"}),
        Record(line=3, recipient="+553", variables={"msg": "x"}),
    ]


def test_csv_unclosed_quote_is_rejected_alone_and_later_rows_are_read(tmp_path: Path) -> None:
    """A stray quote open to the end of the file never pours later rows into one value."""
    content = 'recipient,name\n+551,Ana\n+552,"Bia\n+553,Caio\n\n+554,Duda\n'
    for multiline in (False, True):
        records = list(read_csv(write(tmp_path, "t.csv", content), multiline=multiline))
        assert records == [
            Record(line=1, recipient="+551", variables={"name": "Ana"}),
            Record(
                line=2,
                error="a quoted value opened on line 3 of the file is never closed "
                "(a stray quote?)",
            ),
            Record(line=3, recipient="+553", variables={"name": "Caio"}),
            Record(line=4, recipient="+554", variables={"name": "Duda"}),
        ]


def test_csv_stray_quote_closed_by_another_loses_no_row(tmp_path: Path) -> None:
    path = write(tmp_path, "t.csv", 'recipient,name\n+552,"Bia\n+553,Caio\n+554,Du"da\n+555,Eva\n')
    records = list(read_csv(path))
    assert records[0] == Record(
        line=1,
        error="a quoted value spans lines 2-4 of the file (a stray quote?); "
        "allow multi-line values to send it",
    )
    assert [(r.line, r.recipient, r.variables, r.error) for r in records[1:]] == [
        (2, "+553", {"name": "Caio"}, None),
        (3, "+554", {"name": 'Du"da'}, None),
        (4, "+555", {"name": "Eva"}, None),
    ]


def test_read_records_passes_multiline_to_the_csv_reader(tmp_path: Path) -> None:
    path = write(tmp_path, "t.csv", 'recipient,msg\n+551,"two\nlines"\n')
    (record,) = read_records(path, multiline=True)
    assert record.variables == {"msg": "two\nlines"}
    (rejected,) = read_records(path)
    assert rejected.error is not None and "spans lines 2-3" in rejected.error


def test_csv_quote_open_past_the_row_line_limit_is_cut_and_reading_resumes(
    tmp_path: Path,
) -> None:
    """A quote open for 1500 lines is cut after 1000; every line after its row is read."""
    lines = [f"+55{n}" for n in range(1500)]
    path = write(tmp_path, "t.csv", "recipient\n" + '"' + "\n".join(lines) + "\n")
    for multiline in (False, True):
        first, *rest = read_csv(path, multiline=multiline)
        assert first.line == 1 and first.recipient is None
        assert first.error is not None
        assert first.error.startswith(
            "a quoted value opened on line 2 of the file is still open on line 1002, past "
            "the limit of one row (1000 lines, "
        )
        assert [(r.line, r.recipient, r.error) for r in rest] == [
            (n + 1, f"+55{n}", None) for n in range(1, 1500)
        ]


def test_csv_cell_over_the_field_limit_rejects_its_row_alone(tmp_path: Path) -> None:
    limit = csv.field_size_limit()
    big = "x" * (limit + 1)
    path = write(tmp_path, "t.csv", f"recipient,note\n+551,a\n+552,{big}\n\n{big},b\n+553,c\n")
    records = list(read_csv(path))
    reason = f"over the CSV field limit of {limit} characters"
    assert records == [
        Record(line=1, recipient="+551", variables={"note": "a"}),
        Record(line=2, error=f"a field on line 3 of the file is {reason}"),
        Record(line=3, error=f"a field on line 5 of the file is {reason}"),
        Record(line=4, recipient="+553", variables={"note": "c"}),
    ]
    assert csv.field_size_limit() == limit  # the process-wide limit is left alone


def test_csv_quoted_value_growing_over_the_field_limit_is_cut(tmp_path: Path) -> None:
    limit = csv.field_size_limit()
    filler = ("y" * 999 + "\n") * (limit // 1000 + 1)
    path = write(tmp_path, "t.csv", f'recipient,note\n+551,"{filler}+552,b\n')
    records = list(read_csv(path, multiline=True))
    assert records[0].error is not None
    assert records[0].error.startswith(
        f"a quoted value opened on line 2 of the file is over the CSV field limit of {limit} "
        "characters by line "
    )
    assert records[-1] == Record(line=len(records), recipient="+552", variables={"note": "b"})
    assert all(r.error == "row has 1 fields, the header has 2" for r in records[1:-1])


def test_csv_line_over_the_row_limit_is_rejected_alone(tmp_path: Path) -> None:
    """A line of many small cells over 4x the field limit is skipped, never held whole."""
    most = 4 * csv.field_size_limit()
    huge = "+551" + ",a" * (most // 2 + 10)
    path = write(tmp_path, "t.csv", f"recipient,note\r\n{huge}\r\n+552,b\r\n")
    long_, good = read_csv(path)
    assert long_ == Record(line=1, error=f"line 2 of the file is over {most} characters")
    assert good == Record(line=2, recipient="+552", variables={"note": "b"})


def test_csv_line_over_the_row_limit_inside_an_open_quote_is_a_record_of_its_own(
    tmp_path: Path,
) -> None:
    most = 4 * csv.field_size_limit()
    huge = "+552" + ",a" * (most // 2 + 10)
    path = write(tmp_path, "t.csv", f'recipient,note\n+551,"open\n{huge}\n+553,c\n')
    cut, long_, good = read_csv(path, multiline=True)
    assert cut.line == 1 and cut.error is not None
    assert cut.error.startswith(
        "a quoted value opened on line 2 of the file is still open on line 3"
    )
    assert long_ == Record(line=2, error=f"line 3 of the file is over {most} characters")
    assert good == Record(line=3, recipient="+553", variables={"note": "c"})


def test_csv_header_cell_over_the_field_limit_raises_naming_the_file(tmp_path: Path) -> None:
    big = "n" * (csv.field_size_limit() + 1)
    path = write(tmp_path, "wide.csv", f"recipient,{big}\n+551,a\n")
    with pytest.raises(InputError, match=r"wide\.csv: a column name of the header row is over"):
        list(read_csv(path))


def test_csv_header_over_the_row_limit_raises_naming_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "wide.csv", "recipient" + ",n" * (4 * csv.field_size_limit()))
    with pytest.raises(InputError, match=r"wide\.csv: the header row is over \d+ characters"):
        list(read_csv(path))


def test_csv_error_line_numbers_count_the_header_blank_lines_and_bom(tmp_path: Path) -> None:
    """Records count data rows; messages name physical lines of the file."""
    content = (
        b'\xef\xbb\xbf\r\nrecipient,name\r\n\r\n+551,a\r\n+552,"b\r\nc"\r\n+553,d\r\n+554,"e\r\n'
    )
    records = list(read_csv(write(tmp_path, "t.csv", content)))
    assert [(r.line, r.recipient) for r in records] == [
        (1, "+551"),
        (2, None),
        (3, "+553"),
        (4, None),
    ]
    assert records[1].error is not None and "spans lines 5-6 of" in records[1].error
    assert records[3].error is not None and "opened on line 8 of" in records[3].error


def test_csv_blank_lines_are_not_records(tmp_path: Path) -> None:
    path = write(tmp_path, "t.csv", "recipient,name\n\n+551,a\n   \n+552,b\n")
    assert [(r.line, r.recipient) for r in read_csv(path)] == [(1, "+551"), (2, "+552")]


def test_csv_short_and_long_rows_are_rejected_keeping_the_target(tmp_path: Path) -> None:
    path = write(tmp_path, "t.csv", "recipient,name\n+551\n+552,a,b\n+553,c\n")
    short, long_, good = read_csv(path)
    assert short.error == "row has 1 fields, the header has 2"
    assert short.recipient == "+551"
    assert long_.error == "row has 3 fields, the header has 2"
    assert good.error is None and good.line == 3


def test_csv_non_integer_contact_id_is_rejected(tmp_path: Path) -> None:
    path = write(tmp_path, "t.csv", "contactId\nabc\n1_000\n-5\n12\n")
    records = list(read_csv(path))
    assert [r.error for r in records] == [
        "contactId 'abc' is not a positive integer",
        "contactId '1_000' is not a positive integer",
        "contactId '-5' is not a positive integer",
        None,
    ]
    assert records[3].contact_id == 12


def test_csv_row_with_neither_target_is_rejected(tmp_path: Path) -> None:
    (record,) = read_csv(write(tmp_path, "t.csv", "recipient,contactId,name\n , ,Ana\n"))
    assert record.error == "neither recipient nor contactId is set"


def test_csv_non_utf8_row_is_rejected_alone(tmp_path: Path) -> None:
    path = write(tmp_path, "t.csv", b"recipient,name\n+551,Jo\xe3o\n+552,Ana\n")
    bad, good = read_csv(path)
    assert bad.line == 1 and bad.error == "row is not valid UTF-8"
    assert bad.recipient == "+551"
    assert good == Record(line=2, recipient="+552", variables={"name": "Ana"})


def test_csv_non_utf8_recipient_is_not_kept_as_text(tmp_path: Path) -> None:
    (record,) = read_csv(write(tmp_path, "t.csv", b"recipient\n+55\xff1\n"))
    assert record.error == "row is not valid UTF-8"
    assert record.recipient is None


@pytest.mark.parametrize("content", [b"", b"\n\n", b"\xef\xbb\xbf", b"  \r\n"])
def test_csv_empty_file_raises_input_error_naming_the_file(tmp_path: Path, content: bytes) -> None:
    path = write(tmp_path, "empty.csv", content)
    with pytest.raises(InputError, match=r"empty\.csv: the file is empty"):
        list(read_csv(path))


def test_csv_header_without_target_column_raises(tmp_path: Path) -> None:
    path = write(tmp_path, "t.csv", "name,city\nAna,SP\n")
    with pytest.raises(InputError, match="no recipient or contactId column"):
        list(read_csv(path))


def test_csv_without_header_raises(tmp_path: Path) -> None:
    path = write(tmp_path, "t.csv", "+5511999990000,Ana\n")
    with pytest.raises(InputError, match="no recipient or contactId column"):
        list(read_csv(path))


def test_csv_two_recipient_columns_raise(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="more than one recipient column"):
        list(read_csv(write(tmp_path, "t.csv", "phone,recipient\n1,2\n")))


def test_csv_repeated_variable_column_raises(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="repeats a column name"):
        list(read_csv(write(tmp_path, "t.csv", "recipient,name,name\n1,a,b\n")))


def test_csv_non_utf8_header_raises(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="header row is not valid UTF-8"):
        list(read_csv(write(tmp_path, "t.csv", b"recipient,n\xe3o\n1,2\n")))


def test_csv_column_with_empty_header_is_ignored(tmp_path: Path) -> None:
    (record,) = read_csv(write(tmp_path, "t.csv", "recipient,name,\n+551,Ana,\n"))
    assert record.variables == {"name": "Ana"}


def test_missing_file_raises_input_error_naming_it(tmp_path: Path) -> None:
    missing = tmp_path / "nope.csv"
    with pytest.raises(InputError, match=r"nope\.csv: cannot open"):
        list(read_csv(missing))
    with pytest.raises(InputError, match=r"nope\.csv: cannot open"):
        list(read_jsonl(missing))


# --- JSONL -------------------------------------------------------------------------


def test_jsonl_reads_both_spellings_and_skips_blank_lines(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "t.jsonl",
        '{"recipient": "+551", "contentVariables": {"name": "Ana"}}\n'
        "\n"
        '{"contact_id": 7, "content_variables": {"n": 1}}\n'
        '  \n{"contactId": 8}',
    )
    assert list(read_jsonl(path)) == [
        Record(line=1, recipient="+551", variables={"name": "Ana"}),
        Record(line=2, contact_id=7, variables={"n": 1}),
        Record(line=3, contact_id=8),
    ]


def test_jsonl_tolerates_bom(tmp_path: Path) -> None:
    (record,) = read_jsonl(write(tmp_path, "t.jsonl", b'\xef\xbb\xbf{"contactId": 1}\n'))
    assert record == Record(line=1, contact_id=1)


@pytest.mark.parametrize(
    ("line", "error"),
    [
        ('{"recipient": ', "bad JSON: "),
        ("[1, 2]", "a JSON array is not a record; expected an object"),
        ('"+551"', "a JSON string is not a record"),
        ('{"recipient": 5511}', "recipient must be a string, not number"),
        ('{"contactId": "12"}', "contactId must be an integer, not string '12'"),
        ('{"contactId": true}', "contactId must be an integer, not boolean"),
        ('{"contactId": 1.5}', "contactId must be an integer, not number"),
        ('{"contactId": 1, "contentVariables": [1]}', "contentVariables must be an object"),
        ('{"contactId": 1, "recipent": "x"}', "unknown field(s) 'recipent'"),
        ("{}", "neither recipient nor contactId is set"),
        ('{"recipient": "  "}', "neither recipient nor contactId is set"),
    ],
)
def test_jsonl_broken_line_becomes_error_record(tmp_path: Path, line: str, error: str) -> None:
    path = write(tmp_path, "t.jsonl", f'{{"contactId": 1}}\n{line}\n{{"contactId": 2}}\n')
    first, bad, last = read_jsonl(path)
    assert bad.line == 2
    assert bad.error is not None and bad.error.startswith(error)
    assert (first.error, last.error, last.line) == (None, None, 3)


def test_jsonl_error_keeps_the_readable_target(tmp_path: Path) -> None:
    (record,) = read_jsonl(write(tmp_path, "t.jsonl", '{"contactId": 5, "contentVariables": 3}'))
    assert (record.contact_id, record.variables) == (5, None)
    assert record.error == "contentVariables must be an object, not number"


def test_jsonl_non_utf8_line_is_rejected_alone(tmp_path: Path) -> None:
    path = write(tmp_path, "t.jsonl", b'{"recipient": "+55\xff"}\n\xfe{}\n{"contactId": 1}\n')
    first, second, good = read_jsonl(path)
    assert first.error == second.error == "line is not valid UTF-8"
    assert good == Record(line=3, contact_id=1)


@pytest.mark.parametrize("content", [b"", b"\n \n"])
def test_jsonl_empty_file_raises(tmp_path: Path, content: bytes) -> None:
    with pytest.raises(InputError, match=r"t\.jsonl: the file is empty"):
        list(read_jsonl(write(tmp_path, "t.jsonl", content)))


# --- dispatch and fingerprint ------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("t.csv", "recipient,name\n+551,a\n"),
        ("t.TXT", "recipient;name\n+551;a\n"),
        ("t.tsv", "recipient\tname\n+551\ta\n"),
        ("t.jsonl", '{"recipient": "+551", "contentVariables": {"name": "a"}}\n'),
        ("t.ndjson", '{"recipient": "+551", "contentVariables": {"name": "a"}}\n'),
    ],
)
def test_read_records_picks_the_reader_by_suffix(tmp_path: Path, name: str, content: str) -> None:
    (record,) = read_records(write(tmp_path, name, content))
    assert record == Record(line=1, recipient="+551", variables={"name": "a"})


def test_read_records_rejects_unknown_suffix(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"unknown targets file type '\.xlsx'"):
        read_records(write(tmp_path, "t.xlsx", "x"))


def test_fingerprint_is_sha256_of_the_bytes(tmp_path: Path) -> None:
    data = b"recipient\n" + b"+5511999990000\n" * 50_000
    path = write(tmp_path, "t.csv", data)
    assert fingerprint_file(path) == hashlib.sha256(data).hexdigest()


def test_fingerprint_of_missing_file_raises(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="cannot open"):
        fingerprint_file(tmp_path / "missing.csv")


# --- Python iterables --------------------------------------------------------------


async def collect(source: object) -> list[Record]:
    return [record async for record in aiter_records(source)]  # type: ignore[arg-type]


async def test_aiter_records_accepts_mixed_items_numbered_by_position() -> None:
    items: list[object] = [
        " +551 ",
        42,
        Target(recipient="+552", content_variables={"a": 1}),
        {"contactId": 9, "contentVariables": {"b": 2}},
        {"recipient": "+553", "content_variables": {"c": 3}},
        Record(line=99, contact_id=10),
    ]
    assert await collect(items) == [
        Record(line=1, recipient="+551"),
        Record(line=2, contact_id=42),
        Record(line=3, recipient="+552", variables={"a": 1}),
        Record(line=4, contact_id=9, variables={"b": 2}),
        Record(line=5, recipient="+553", variables={"c": 3}),
        Record(line=6, contact_id=10),
    ]


async def test_aiter_records_turns_unsupported_items_into_error_records() -> None:
    records = await collect([3.5, True, None, "", {"contactId": "x"}])
    assert [r.line for r in records] == [1, 2, 3, 4, 5]
    assert records[0].error is not None and "unsupported item of type float" in records[0].error
    assert records[1].error is not None and "of type bool" in records[1].error
    assert records[2].error is not None and "of type NoneType" in records[2].error
    assert records[3].error == "empty phone number"
    assert records[4].error == "contactId must be an integer, not string 'x'"


async def test_aiter_records_reads_an_async_iterable() -> None:
    async def source() -> AsyncIterator[object]:
        for item in ("+551", 2):
            yield item

    assert await collect(source()) == [
        Record(line=1, recipient="+551"),
        Record(line=2, contact_id=2),
    ]


async def test_aiter_records_streams_a_long_generator_in_order() -> None:
    count = 0
    async for record in aiter_records(str(n) for n in range(1, 2001)):
        count += 1
        assert record.line == count and record.recipient == str(count)
    assert count == 2000


async def test_aiter_records_over_read_csv_keeps_the_file_numbering(tmp_path: Path) -> None:
    path = write(tmp_path, "t.csv", "recipient\n+551\n\n+552\n")
    assert await collect(read_csv(path)) == [
        Record(line=1, recipient="+551"),
        Record(line=2, recipient="+552"),
    ]


# -- issue 18: a recipient column of another name ---------------------------------------------


def test_a_recipient_column_named_by_the_caller_is_the_only_phone_column(tmp_path: Path) -> None:
    """``recipient_column`` is matched as the built-in names are; a ``phone`` column beside
    it is then a content variable like any other."""
    path = tmp_path / "t.csv"
    path.write_text("Tele_fone,phone,nome\n+5511999990001,office,Ana\n")
    [record] = list(read_records(path, recipient_column="telefone"))
    assert record.recipient == "+5511999990001"
    assert record.variables == {"phone": "office", "nome": "Ana"}


def test_a_recipient_column_missing_from_the_header_is_an_input_error(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text("phone,nome\n+5511999990001,Ana\n")
    with pytest.raises(InputError, match="no column 'celular'"):
        list(read_records(path, recipient_column="celular"))


def test_a_txt_file_with_the_chosen_column_is_read_as_a_csv(tmp_path: Path) -> None:
    path = tmp_path / "t.txt"
    path.write_text("telefone,nome\n+5511999990001,Ana\n")
    [record] = list(read_records(path, recipient_column="telefone"))
    assert record.recipient == "+5511999990001" and record.variables == {"nome": "Ana"}
