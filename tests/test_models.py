"""The msgspec models against openapi.yaml: names, encoding, tolerant decoding, dates, enums."""

from __future__ import annotations

import enum
import json
import re
from datetime import UTC, date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proactive_async import (
    AgentType,
    Conversation,
    ConversationEvaluationStatus,
    ConversationIntegrationType,
    ConversationType,
    ConversationVariable,
    DecodingError,
    Message,
    ProactiveConversationRequest,
    Tag,
    parse_datetime,
    parse_timespan,
)
from proactive_async._models import decode_conversations, encode_request

# The contract, kept in the repo (docs/api/) so a clone tests against it on its own.
API_DIR = Path(__file__).resolve().parents[1] / "docs" / "api"
OPENAPI = API_DIR / "openapi.yaml"
REFERENCE_PAGE = API_DIR / "reference-page.txt"


# --- a reader for the subset of YAML openapi.yaml uses (PyYAML is not a dependency) ---


def _flow_map(text: str) -> dict[str, str]:
    """``{ type: integer, format: int32 }`` -> {"type": "integer", "format": "int32"}."""
    inner = text.strip()[1:-1]
    out: dict[str, str] = {}
    for part in inner.split(","):
        if ":" in part:
            key, _, value = part.partition(":")
            out[key.strip()] = value.strip().strip('"')
    return out


def _load_schemas() -> tuple[dict[str, dict[str, dict[str, Any]]], dict[str, list[int]]]:
    """Properties of each object schema (name -> attributes) and the values of each enum."""
    lines = OPENAPI.read_text().splitlines()
    start = lines.index("  schemas:")
    objects: dict[str, dict[str, dict[str, Any]]] = {}
    enums: dict[str, list[int]] = {}
    schema = prop = None
    for line in lines[start + 1 :]:
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        indent = len(line) - len(line.lstrip())
        key, _, value = line.strip().partition(":")
        value = value.strip()
        if indent == 4:
            schema, prop = key, None
        elif indent == 6 and key == "enum" and schema is not None:
            enums[schema] = [int(v) for v in value.strip("[]").split(",")]
        elif indent == 6 and key == "properties" and schema is not None:
            objects[schema] = {}
        elif indent == 8 and schema in objects:
            prop = key
            objects[schema][prop] = _flow_map(value) if value.startswith("{") else {}
        elif indent == 10 and schema in objects and prop is not None:
            attrs = objects[schema][prop]
            attrs[key] = _flow_map(value) if value.startswith("{") else value.strip('"')
    return objects, enums


SCHEMAS, ENUMS = _load_schemas()
STRUCTS: dict[str, type[msgspec.Struct]] = {
    "ProactiveConversationRequest": ProactiveConversationRequest,
    "Conversation": Conversation,
    "Message": Message,
    "Tag": Tag,
    "ConversationVariable": ConversationVariable,
}
ENUM_CLASSES: dict[str, type[enum.IntEnum]] = {
    "ConversationIntegrationType": ConversationIntegrationType,
    "ConversationEvaluationStatus": ConversationEvaluationStatus,
    "AgentType": AgentType,
    "ConversationType": ConversationType,
}


def _snake(name: str) -> str:
    """The Python attribute expected for a wire name (``isNPS`` -> ``is_nps``)."""
    special = {"from": "from_", "isNPS": "is_nps"}
    if name in special:
        return special[name]
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def _ref_name(attrs: dict[str, Any]) -> str | None:
    ref = attrs.get("$ref")
    return ref.rsplit("/", 1)[-1] if isinstance(ref, str) else None


def test_the_yaml_reader_found_every_schema() -> None:
    """Guards the field tests below: the hand-rolled reader saw all schemas and fields."""
    assert set(SCHEMAS) == set(STRUCTS)
    assert set(ENUMS) == set(ENUM_CLASSES)
    example = json.loads(_reference_example())[0]
    assert set(SCHEMAS["Conversation"]) == set(example)  # 48 fields on the reference page
    assert set(SCHEMAS["Message"]) == set(example["messages"][0])
    assert set(SCHEMAS["Tag"]) == set(example["tags"][0])
    assert set(SCHEMAS["ConversationVariable"]) == set(example["dynamicVariables"][0])
    assert SCHEMAS["Conversation"]["messages"]["items"] == {"$ref": "#/components/schemas/Message"}


@pytest.mark.parametrize("schema", sorted(STRUCTS))
def test_struct_has_exactly_the_schema_fields_on_the_wire(schema: str) -> None:
    wire = {f.encode_name for f in msgspec.structs.fields(STRUCTS[schema])}
    assert wire == set(SCHEMAS[schema])


@pytest.mark.parametrize("schema", sorted(STRUCTS))
def test_struct_attributes_are_snake_case_of_the_wire_names(schema: str) -> None:
    pairs = {f.encode_name: f.name for f in msgspec.structs.fields(STRUCTS[schema])}
    assert pairs == {wire: _snake(wire) for wire in SCHEMAS[schema]}
    assert pairs.get("from", "from_") == "from_"


def test_from_and_isnps_map_to_from_and_is_nps() -> None:
    [conv] = decode_conversations(b'[{"from": "bot", "messages": [{"from": "a", "isNPS": true}]}]')
    assert conv.from_ == "bot"
    assert conv.messages is not None
    assert conv.messages[0].from_ == "a"
    assert conv.messages[0].is_nps is True


@pytest.mark.parametrize("name", sorted(ENUM_CLASSES))
def test_enums_are_intenums_listing_the_schema_values(name: str) -> None:
    cls = ENUM_CLASSES[name]
    assert issubclass(cls, enum.IntEnum)
    assert sorted(m.value for m in cls) == ENUMS[name]


@pytest.mark.parametrize("schema", ["Conversation", "Message", "Tag", "ConversationVariable"])
def test_every_response_field_has_a_default(schema: str) -> None:
    """An empty object decodes: an older or newer server never breaks decoding."""
    decoded = msgspec.convert({}, STRUCTS[schema])
    assert isinstance(decoded, STRUCTS[schema])


# --- encoding a request --------------------------------------------------------------


def test_encoding_a_request_sends_only_the_fields_set() -> None:
    body = encode_request(ProactiveConversationRequest(channel_id=1, recipient=["+551199"]))
    assert json.loads(body) == {"channelId": 1, "recipient": ["+551199"]}


def test_encoding_an_empty_request_sends_an_empty_object() -> None:
    assert encode_request(ProactiveConversationRequest()) == b"{}"


def test_a_nullable_list_set_to_none_is_sent_as_null() -> None:
    body = encode_request(ProactiveConversationRequest(account_ids=None, live_agent=False))
    assert json.loads(body) == {"accountIds": None, "liveAgent": False}


def test_zero_and_false_values_set_by_the_caller_are_sent() -> None:
    body = encode_request(ProactiveConversationRequest(queue_id=0, live_agent=False))
    assert json.loads(body) == {"queueId": 0, "liveAgent": False}


def test_a_full_request_uses_every_schema_name_in_camel_case() -> None:
    request = ProactiveConversationRequest(
        channel_id=1,
        bot_id=2,
        recipient=["+5511999990000"],
        live_agent=True,
        conversation_template_id=3,
        counterpart_user_id=4,
        user_id=5,
        queue_id=6,
        content_variables={"name": "Ana", "n": 1},
        account_ids=[7],
        contact_ids=[8, 9],
        conversation_integration_type=ConversationIntegrationType(4),
    )
    wire = json.loads(encode_request(request))
    assert set(wire) == set(SCHEMAS["ProactiveConversationRequest"])
    assert wire["conversationIntegrationType"] == 4
    assert wire["contentVariables"] == {"name": "Ana", "n": 1}
    assert request.target_count() == 3


def test_target_count_ignores_unset_and_null_lists() -> None:
    assert ProactiveConversationRequest(recipient=None).target_count() == 0
    assert ProactiveConversationRequest(contact_ids=[1, 2]).target_count() == 2


# --- date-times ----------------------------------------------------------------------

UTC_10H = datetime(2024, 5, 1, 10, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2024-05-01T10:00:00Z", UTC_10H),
        ("2024-05-01T12:00:00+02:00", UTC_10H),
        ("2024-05-01T07:00:00-03:00", UTC_10H),
        ("2024-05-01T10:00:00.1234567Z", UTC_10H + timedelta(microseconds=123457)),
        ("2024-05-01T10:00:00.123Z", UTC_10H + timedelta(microseconds=123000)),
        ("2024-05-01T10:00:00", datetime(2024, 5, 1, 10)),
        ("2024-05-01T10:00:00.5", datetime(2024, 5, 1, 10, 0, 0, 500000)),
        ("2024-05-01T10:00:00.123456789+00:00", UTC_10H + timedelta(microseconds=123457)),
        ("2024-05-01T10:00:00+0000", UTC_10H),
        ("2024-05-01T13:00:00+0300", UTC_10H),
        ("2024-05-01 10:00:00Z", UTC_10H),
        ("2024-05-01t10:00:00z", UTC_10H),
        # Forms msgspec refuses, read by the tolerant path:
        ("2024-05-01", datetime(2024, 5, 1)),
        ("2024-05-01T10:00Z", UTC_10H),
        ("2024-05-01T13:00+03:00", UTC_10H),
        ("/Date(1714557600000)/", UTC_10H),
        ("/Date(1714557600000+0200)/", UTC_10H),
    ],
)
def test_created_at_decodes_from_every_valid_form(text: str, expected: datetime) -> None:
    body = json.dumps([{"createdAt": text, "messages": [{"createdAt": text}]}]).encode()
    [conv] = decode_conversations(body)
    assert conv.created_at == expected
    assert (conv.created_at.tzinfo is None) == (expected.tzinfo is None)
    assert conv.messages is not None
    assert conv.messages[0].created_at == expected


def test_the_tolerant_path_reads_every_date_of_the_body() -> None:
    """One date-only value sends the body down the tolerant path; the others still read.

    Past microseconds the tolerant path truncates where msgspec rounds (<= 1 us apart).
    """
    [conv] = decode_conversations(
        b'[{"createdAt": "2024-05-01T10:00:00.123456789Z", "queuedAt": "2024-05-01"}]'
    )
    assert conv.created_at == UTC_10H + timedelta(microseconds=123456)
    assert conv.queued_at == datetime(2024, 5, 1)


def test_an_offset_is_kept_not_converted() -> None:
    [conv] = decode_conversations(b'[{"createdAt": "2024-05-01T12:00:00+02:00"}]')
    assert conv.created_at is not None
    assert conv.created_at.utcoffset() == timedelta(hours=2)


def test_a_tolerant_date_does_not_lose_the_other_fields() -> None:
    [conv] = decode_conversations(
        b'[{"id": 9, "createdAt": "2024-05-01", "finishedAt": "2024-05-02T00:00:00Z",'
        b' "tags": [{"createdAt": "2024-05-01T10:00+0000", "name": "vip"}]}]'
    )
    assert conv.id == 9
    assert conv.finished_at == datetime(2024, 5, 2, tzinfo=UTC)
    assert conv.tags is not None
    assert conv.tags[0].created_at == UTC_10H
    assert conv.tags[0].name == "vip"


@pytest.mark.parametrize("text", ["garbage", "2024-13-45T99:00:00Z", "", "/Date(x)/"])
def test_an_unreadable_date_decodes_as_none_without_failing(text: str) -> None:
    [conv] = decode_conversations(json.dumps([{"id": 3, "queuedAt": text}]).encode())
    assert conv.queued_at is None
    assert conv.id == 3


def test_parse_datetime_reads_epoch_seconds_and_refuses_other_types() -> None:
    assert parse_datetime(1714557600) == UTC_10H
    assert parse_datetime(1e20) is None
    assert parse_datetime(True) is None  # a bool is not a timestamp
    assert parse_datetime("/Date(99999999999999999999)/") is None


def test_parse_datetime_reads_a_negative_offset_legacy_date() -> None:
    moment = parse_datetime("/Date(1714557600000-0300)/")
    assert moment == UTC_10H
    assert moment is not None and moment.utcoffset() == timedelta(hours=-3)


# --- duration (.NET TimeSpan) ---------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("00:05:30", timedelta(minutes=5, seconds=30)),
        ("1.02:03:04.5670000", timedelta(days=1, hours=2, minutes=3, seconds=4.567)),
        ("-00:00:01", timedelta(seconds=-1)),
        ("-1.00:00:00.5", -timedelta(days=1, microseconds=500000)),
        ("00:00:00.0000001", timedelta(0)),  # one tick: below a microsecond
        ("00:00:00.0000010", timedelta(microseconds=1)),
        ("PT1H30M", timedelta(hours=1, minutes=30)),
        ("-P1DT2S", -timedelta(days=1, seconds=2)),
        ("P2W", timedelta(weeks=2)),
    ],
)
def test_duration_is_available_as_a_timedelta(text: str, expected: timedelta) -> None:
    [conv] = decode_conversations(json.dumps([{"duration": text}]).encode())
    assert conv.duration == text
    assert conv.duration_timedelta == expected


@pytest.mark.parametrize(
    "text", ["<string>", "", "5 minutes", "P", "PT", "-P", "-PT", "P1DT", "1:2", "1:2:3:4"]
)
def test_an_unreadable_duration_keeps_the_text_and_gives_no_timedelta(text: str) -> None:
    [conv] = decode_conversations(json.dumps([{"id": 1, "duration": text}]).encode())
    assert conv.duration == text
    assert conv.duration_timedelta is None
    assert parse_timespan(text) is None


def test_a_null_or_missing_duration_gives_no_timedelta() -> None:
    a, b = decode_conversations(b'[{"duration": null}, {}]')
    assert a.duration_timedelta is None
    assert b.duration_timedelta is None


# --- enums -----------------------------------------------------------------------------


def test_unlisted_enum_values_decode_and_keep_their_int() -> None:
    [conv] = decode_conversations(
        b'[{"conversationType": 7, "agentType": 42, "conversationIntegrationType": 19,'
        b' "conversationEvaluationStatus": -1}]'
    )
    assert conv.conversation_type == 7
    assert isinstance(conv.conversation_type, ConversationType)
    assert conv.conversation_type.name == "UNKNOWN_7"
    assert int(conv.agent_type) == 42
    assert conv.conversation_integration_type == 19
    assert conv.conversation_evaluation_status == -1


def test_listed_enum_values_decode_to_their_members() -> None:
    [conv] = decode_conversations(b'[{"conversationType": 99, "agentType": 6}]')
    assert conv.conversation_type is ConversationType.VALUE_99
    assert conv.agent_type is AgentType.VALUE_6


def test_an_unlisted_enum_value_is_the_same_object_each_time() -> None:
    assert ConversationType(1234) is ConversationType(1234)


def test_an_enum_refuses_non_int_values() -> None:
    with pytest.raises(ValueError):
        ConversationType("x")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        ConversationType(1.5)  # type: ignore[arg-type]


# --- tolerance and failures ----------------------------------------------------------


def test_unknown_fields_are_ignored() -> None:
    [conv] = decode_conversations(b'[{"id": 1, "brandNew": {"x": [1, 2]}, "alsoNew": null}]')
    assert conv.id == 1


def test_missing_fields_take_their_defaults() -> None:
    [conv] = decode_conversations(b"[{}]")
    assert conv == Conversation()
    assert conv.id == 0 and conv.messages is None and conv.created_at is None


@pytest.mark.parametrize(
    ("field", "bad"),
    [
        ("id", None),
        ("active", None),
        ("score", "not a number"),
        ("score", 1.5),
        ("userName", 12),
        ("messages", "x"),
        ("messages", {"not": "a list"}),
        ("conversationType", None),
        ("conversationType", "abc"),
        ("tags", 3),
        ("duration", 5),
        ("callSuccessful", [True]),
    ],
)
def test_a_null_or_wrong_typed_value_is_defaulted(field: str, bad: object) -> None:
    body = json.dumps([{"id": 5, "userName": "u", field: bad, "score": 2} | {field: bad}])
    [conv] = decode_conversations(body.encode())
    defaults = Conversation()
    attr = _snake(field)
    assert getattr(conv, attr) == getattr(defaults, attr)
    if field != "id":
        assert conv.id == 5


def test_defaulting_one_field_keeps_the_neighbours() -> None:
    [a, b] = decode_conversations(
        b'[{"id": 1, "queueId": null, "botName": "b"},'
        b' {"id": 2, "messages": [{"id": null, "to": "+5511"}]}]'
    )
    assert (a.id, a.queue_id, a.bot_name) == (1, 0, "b")
    assert b.messages is not None
    assert (b.messages[0].id, b.messages[0].to) == (0, "+5511")
    assert b.recipients == ["+5511"]


def test_lax_values_are_converted_not_dropped() -> None:
    [conv] = decode_conversations(b'[{"id": "12", "active": "true", "conversationType": "99"}]')
    assert conv.id == 12
    assert conv.active is True
    assert conv.conversation_type is ConversationType.VALUE_99


def test_a_non_object_item_of_a_nested_list_is_dropped() -> None:
    [conv] = decode_conversations(b'[{"tags": [null, {"name": "a"}, 3], "messages": [1]}]')
    assert conv.tags == [Tag(name="a")]
    assert conv.messages == []


def test_many_defaulted_fields_decode_in_linear_time() -> None:
    """5,000 items each with a null int: the old whole-array repair loop refused this."""
    body = json.dumps([{"id": i, "queueId": None} for i in range(5000)]).encode()
    decoded = decode_conversations(body)
    assert [c.id for c in decoded] == list(range(5000))


@pytest.mark.parametrize("body", [b"{}", b'"x"', b"1", b"null", b'{"id": 1}'])
def test_a_body_that_is_not_an_array_is_a_decoding_error(body: bytes) -> None:
    with pytest.raises(DecodingError) as info:
        decode_conversations(body)
    assert info.value.may_have_been_processed is True
    assert info.value.body == body


@pytest.mark.parametrize("body", [b"", b"nope", b"[{", b"<html>502</html>", b'[{"id": 1},]'])
def test_invalid_json_is_a_decoding_error(body: bytes) -> None:
    with pytest.raises(DecodingError, match="not valid JSON"):
        decode_conversations(body)


@pytest.mark.parametrize("body", [b"[null]", b"[1]", b'[{"id": 1}, "x"]'])
def test_an_array_item_that_is_not_an_object_is_a_decoding_error(body: bytes) -> None:
    """Dropping it would hide a conversation the server may have created: refuse instead."""
    with pytest.raises(DecodingError, match="does not match"):
        decode_conversations(body)


def test_an_empty_array_decodes_to_no_conversations() -> None:
    assert decode_conversations(b"[]") == []


def test_recipients_lists_the_to_of_each_message() -> None:
    [conv] = decode_conversations(b'[{"messages": [{"to": "+1"}, {"to": null}, {"to": "+2"}]}]')
    assert conv.recipients == ["+1", "+2"]
    assert Conversation().recipients == []


# --- the reference page's example ----------------------------------------------------


def _reference_example() -> bytes:
    """The JSON array printed after the curl command on the reference page."""
    text = REFERENCE_PAGE.read_text()
    after_curl = text[text.index("--data '") :]
    after_request = after_curl[after_curl.index("\n'\n") + 3 :]
    start = after_request.index("[")
    end = after_request.index("\n]\n") + 2
    return after_request[start:end].encode()


def test_the_reference_page_example_decodes_unchanged() -> None:
    """No ``<string>`` placeholder needed adapting: ``duration`` is a str, kept as is.

    ``"duration": "<string>"`` is not a TimeSpan, so ``duration_timedelta`` is None; every
    other placeholder sits in a string field.
    """
    body = _reference_example()
    assert b'"duration": "<string>"' in body
    [conv] = decode_conversations(body)
    raw = json.loads(body)[0]
    assert conv.id == 123 and conv.active is True and conv.agent_id == 123
    assert conv.from_ == "<string>"
    assert conv.created_at == datetime(2023, 11, 7, 5, 31, 56, tzinfo=UTC)
    assert conv.duration == "<string>" and conv.duration_timedelta is None
    assert conv.conversation_type is ConversationType.VALUE_0
    assert conv.messages is not None and conv.messages[0].is_nps is True
    assert conv.tags is not None and conv.tags[0].name == "<string>"
    assert conv.data_collection == [
        ConversationVariable(id=123, name="<string>", value="<string>", conversation_id=123)
    ]
    # Every documented field came through: re-encoding gives the same object back.
    again = json.loads(msgspec.json.encode(conv))
    assert again.keys() == raw.keys()
    assert again["createdAt"] == "2023-11-07T05:31:56Z"
    again.pop("createdAt")
    for key in ("finishedAt", "queuedAt", "lastConversationUpdateTime"):
        again.pop(key)
        raw.pop(key)
    raw.pop("createdAt")
    assert {k: v for k, v in again.items() if k not in ("messages", "tags")} == {
        k: v for k, v in raw.items() if k not in ("messages", "tags")
    }


# --- property: anything that fits the schema decodes -----------------------------------

INT32 = st.integers(-(2**31), 2**31 - 1)
TEXT = st.text(alphabet=st.characters(exclude_categories=["Cs"]), max_size=12)
JSON_LEAF = st.none() | st.booleans() | INT32 | st.floats(allow_nan=False) | TEXT
JSON_VALUE = st.recursive(
    JSON_LEAF,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3),
    max_leaves=6,
)


@st.composite
def _datetime_form(draw: st.DrawFn) -> tuple[str, datetime]:
    """A valid date-time text in one of the forms servers send, and the moment it names."""
    day = draw(st.dates(min_value=date(1971, 1, 1), max_value=date(9998, 1, 1)))
    hour, minute = draw(st.integers(0, 23)), draw(st.integers(0, 59))
    second = draw(st.integers(0, 59))
    digits = draw(st.sampled_from(["", "1", "123", "123456", "1234567", "123456789"]))
    micro = int((digits + "000000")[:6]) if digits else 0
    frac = f".{digits}" if digits else ""
    offset_min = draw(st.integers(-14 * 4, 14 * 4)) * 15
    tz = timezone(timedelta(minutes=offset_min))
    sign = "-" if offset_min < 0 else "+"
    hh, mm = divmod(abs(offset_min), 60)
    base = f"{day.isoformat()}T{hour:02}:{minute:02}:{second:02}{frac}"
    naive = datetime(day.year, day.month, day.day, hour, minute, second, micro)
    form = draw(st.sampled_from(["Z", "offset", "basic", "none", "date", "minutes", "space", "ms"]))
    if form == "Z":
        return base + draw(st.sampled_from(["Z", "z"])), naive.replace(tzinfo=UTC)
    if form == "offset":
        return f"{base}{sign}{hh:02}:{mm:02}", naive.replace(tzinfo=tz)
    if form == "basic":
        return f"{base}{sign}{hh:02}{mm:02}", naive.replace(tzinfo=tz)
    if form == "none":
        return base, naive
    if form == "date":
        return day.isoformat(), datetime(day.year, day.month, day.day)
    if form == "minutes":
        return f"{day.isoformat()}T{hour:02}:{minute:02}Z", naive.replace(
            second=0, microsecond=0, tzinfo=UTC
        )
    if form == "space":
        return base.replace("T", " ") + "Z", naive.replace(tzinfo=UTC)
    millis = draw(st.integers(0, 2**42))
    return f"/Date({millis})/", datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=millis)


@st.composite
def _timespan(draw: st.DrawFn) -> tuple[str, timedelta]:
    days, h, m, s = (
        draw(st.integers(0, 9999)),
        draw(st.integers(0, 23)),
        draw(st.integers(0, 59)),
        draw(st.integers(0, 59)),
    )
    ticks = draw(st.integers(0, 9_999_999))
    negative = draw(st.booleans())
    text = f"{'-' if negative else ''}{f'{days}.' if days else ''}{h:02}:{m:02}:{s:02}"
    text += f".{ticks:07}" if ticks else ""
    # A tick is 100 ns: timedelta rounds it to the nearest microsecond (half to even).
    delta = timedelta(days=days, hours=h, minutes=m, seconds=s, microseconds=ticks / 10)
    return text, -delta if negative else delta


_MISSING = object()


def _field_strategy(attrs: dict[str, Any]) -> st.SearchStrategy[tuple[object, object]]:
    """(wire value, expected decoded value) pairs for one property of openapi.yaml."""
    ref = _ref_name(attrs)
    if ref in ENUMS:
        return (st.sampled_from(ENUMS[ref]) | INT32).map(lambda v: (v, v))
    kind, fmt = attrs.get("type"), attrs.get("format")
    nullable = attrs.get("nullable") == "true"
    strategy: st.SearchStrategy[tuple[object, object]]
    if kind == "integer":
        strategy = INT32.map(lambda v: (v, v))
    elif kind == "boolean":
        strategy = st.booleans().map(lambda v: (v, v))
    elif kind == "string" and fmt == "date-time":
        strategy = _datetime_form()
    elif kind == "string" and fmt == "date-span":
        strategy = _timespan() | TEXT.map(lambda v: (v, _MISSING))
    elif kind == "string":
        strategy = TEXT.map(lambda v: (v, v))
    elif kind == "array":
        items = attrs["items"]
        item_ref = _ref_name(items)
        item = _object_strategy(item_ref) if item_ref else _field_strategy(items)
        strategy = st.lists(item, max_size=3).map(
            lambda pairs: ([p[0] for p in pairs], [p[1] for p in pairs])
        )
    elif kind == "object":
        strategy = st.dictionaries(TEXT, JSON_VALUE, max_size=3).map(lambda v: (v, v))
    else:  # pragma: no cover - a type the schema does not use
        raise AssertionError(f"no strategy for {attrs}")
    if nullable:
        strategy = strategy | st.just((None, None))
    return strategy


def _object_strategy(schema: str) -> st.SearchStrategy[tuple[object, object]]:
    """An object of ``schema`` with any subset of its fields plus unknown extra keys."""
    props = SCHEMAS[schema]
    fields = st.fixed_dictionaries({}, optional={k: _field_strategy(v) for k, v in props.items()})
    extras = st.dictionaries(TEXT.filter(lambda k: k not in props), JSON_VALUE, max_size=2)

    def build(
        pair: tuple[dict[str, tuple[object, object]], dict[str, object]],
    ) -> tuple[object, object]:
        chosen, extra = pair
        wire = extra | {k: v[0] for k, v in chosen.items()}
        expected = {k: v[1] for k, v in chosen.items()}
        return wire, (schema, expected)

    return st.tuples(fields, extras).map(build)


def _assert_matches(decoded: object, expected: object) -> None:
    if isinstance(expected, tuple):  # (schema name, expected fields) of a nested object
        schema, fields = expected
        assert isinstance(decoded, STRUCTS[schema])
        by_wire = {f.encode_name: f.name for f in msgspec.structs.fields(STRUCTS[schema])}
        for wire_name, value in fields.items():
            attr = getattr(decoded, by_wire[wire_name])
            if wire_name == "duration" and isinstance(value, timedelta):
                assert decoded.duration_timedelta == value  # type: ignore[attr-defined]
            elif value is not _MISSING:
                _assert_matches(attr, value)
    elif isinstance(expected, list):
        assert isinstance(decoded, list) and len(decoded) == len(expected)
        for d, e in zip(decoded, expected, strict=True):
            _assert_matches(d, e)
    elif isinstance(expected, datetime):
        assert isinstance(decoded, datetime)
        assert (decoded.tzinfo is None) == (expected.tzinfo is None)
        # 7+ fractional digits: msgspec rounds, the tolerant path truncates.
        assert abs(decoded - expected) <= timedelta(microseconds=1)
    else:
        assert decoded == expected
        assert type(decoded) is not bool or type(expected) is bool


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_object_strategy("Conversation"), max_size=3))
def test_any_value_fitting_the_response_schema_decodes(
    items: list[tuple[object, object]],
) -> None:
    body = msgspec.json.encode([wire for wire, _ in items])
    decoded = decode_conversations(body)
    _assert_matches(decoded, [expected for _, expected in items])


@pytest.mark.parametrize(
    ("data", "path"),
    [({"a": 1}, "$"), ({"a": {"b": 1}}, "$.x.b"), ({"a": [1]}, "$.a[5]"), ({"a": 1}, "$.z")],
)
def test_the_repair_step_refuses_a_path_it_cannot_follow(data: object, path: str) -> None:
    """Without this refusal the tolerant loop would spin on an error it cannot fix."""
    from proactive_async._models import _drop_at

    before = json.dumps(data)
    assert _drop_at(data, path) is False
    assert json.dumps(data) == before
