"""msgspec Structs for the request and the response, and the decoders, built once.

Attributes are snake_case in Python and camelCase on the wire. Every response field has a
default, so an older or newer server never breaks decoding; enum values the reference page
does not list decode as pseudo-members that keep their int. Decoding takes a fast strict
path first; only a body the strict path refuses (a date form msgspec does not read, a null
where the schema has none, a value of the wrong type) goes through a tolerant second pass.
"""

from __future__ import annotations

import enum
import logging
import re
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, Final, TypedDict

import msgspec
from msgspec import UNSET, UnsetType

from ._errors import DecodingError

__all__ = [
    "AgentType",
    "Conversation",
    "ConversationEvaluationStatus",
    "ConversationIntegrationType",
    "ConversationType",
    "ConversationVariable",
    "Message",
    "ProactiveConversationFields",
    "ProactiveConversationRequest",
    "Tag",
    "build_request",
    "decode_conversations",
    "decode_conversations_utc",
    "encode_request",
    "parse_datetime",
    "parse_timespan",
]

_log = logging.getLogger("proactive_async")


class _OpenIntEnum(enum.IntEnum):
    """An IntEnum that accepts values it does not list, as ``UNKNOWN_<n>`` pseudo-members."""

    @classmethod
    def _missing_(cls, value: object) -> Any:
        if not isinstance(value, int) or isinstance(value, bool):
            return None
        cache: dict[int, Any] = cls.__dict__.get("_pseudo_cache", None) or {}
        member = cache.get(value)
        if member is None:
            member = int.__new__(cls, value)
            member._name_ = f"UNKNOWN_{value}"
            member._value_ = value
            cache[value] = member
            type.__setattr__(cls, "_pseudo_cache", cache)
        return member


# The reference page lists these enums by value only; members are named after their value.


class ConversationIntegrationType(_OpenIntEnum):
    """Integration type of a conversation (0-18 on the reference page; others still decode)."""

    VALUE_0 = 0
    VALUE_1 = 1
    VALUE_2 = 2
    VALUE_3 = 3
    VALUE_4 = 4
    VALUE_5 = 5
    VALUE_6 = 6
    VALUE_7 = 7
    VALUE_8 = 8
    VALUE_9 = 9
    VALUE_10 = 10
    VALUE_11 = 11
    VALUE_12 = 12
    VALUE_13 = 13
    VALUE_14 = 14
    VALUE_15 = 15
    VALUE_16 = 16
    VALUE_17 = 17
    VALUE_18 = 18


INT32_MIN: Final = -(2**31)
INT32_MAX: Final = 2**31 - 1
"""The range of the contract's ``int32`` fields (ids); a value past it fails at the server."""
INTEGRATION_TYPES: Final = range(
    min(ConversationIntegrationType), max(ConversationIntegrationType) + 1
)
"""The ``conversationIntegrationType`` values the reference page lists (0-18)."""


class ConversationEvaluationStatus(_OpenIntEnum):
    """Evaluation status of a conversation (0-4 on the reference page; others still decode)."""

    VALUE_0 = 0
    VALUE_1 = 1
    VALUE_2 = 2
    VALUE_3 = 3
    VALUE_4 = 4


class AgentType(_OpenIntEnum):
    """Type of the agent handling a conversation (0-6; others still decode)."""

    VALUE_0 = 0
    VALUE_1 = 1
    VALUE_2 = 2
    VALUE_3 = 3
    VALUE_4 = 4
    VALUE_5 = 5
    VALUE_6 = 6


class ConversationType(_OpenIntEnum):
    """Type of a conversation (0-6 and 99 on the reference page; others still decode)."""

    VALUE_0 = 0
    VALUE_1 = 1
    VALUE_2 = 2
    VALUE_3 = 3
    VALUE_4 = 4
    VALUE_5 = 5
    VALUE_6 = 6
    VALUE_99 = 99


class ProactiveConversationRequest(
    msgspec.Struct, kw_only=True, frozen=True, rename="camel", omit_defaults=True, gc=False
):
    """The body of ``POST /api/Conversation/proactive-conversation``.

    Only the fields you set are sent: an unset field is left out of the JSON, never sent
    as ``0`` or ``null``. Set a nullable list to ``None`` to send an explicit ``null``.

    Usage::

        ProactiveConversationRequest(
            channel_id=1, bot_id=2, conversation_template_id=3,
            recipient=["+5511999990000"], content_variables={"name": "Ana"},
        )
    """

    channel_id: int | UnsetType = UNSET
    bot_id: int | UnsetType = UNSET
    recipient: list[str] | UnsetType | None = UNSET
    live_agent: bool | UnsetType = UNSET
    conversation_template_id: int | UnsetType = UNSET
    counterpart_user_id: int | UnsetType = UNSET
    user_id: int | UnsetType = UNSET
    queue_id: int | UnsetType = UNSET
    content_variables: dict[str, Any] | UnsetType = UNSET
    account_ids: list[int] | UnsetType | None = UNSET
    contact_ids: list[int] | UnsetType | None = UNSET
    conversation_integration_type: ConversationIntegrationType | int | UnsetType = UNSET

    def target_count(self) -> int:
        """How many conversations this request asks for: recipients plus contact ids."""
        count = 0
        if isinstance(self.recipient, list):
            count += len(self.recipient)
        if isinstance(self.contact_ids, list):
            count += len(self.contact_ids)
        return count


class ProactiveConversationFields(TypedDict, total=False):
    """The request's fields as keywords, for ``create_proactive_conversation(**fields)``.

    Editors complete these names and type checkers check them; each is the field of
    ``ProactiveConversationRequest`` of the same name (a test keeps the two in step).
    """

    channel_id: int
    bot_id: int
    recipient: list[str] | None
    live_agent: bool
    conversation_template_id: int
    counterpart_user_id: int
    user_id: int
    queue_id: int
    content_variables: dict[str, Any]
    account_ids: list[int] | None
    contact_ids: list[int] | None
    conversation_integration_type: ConversationIntegrationType | int


class Message(msgspec.Struct, kw_only=True, frozen=True, rename="camel", gc=False):
    """A message of a conversation; ``to`` is the recipient's WhatsApp id."""

    id: int = 0
    created_at: datetime | None = None
    from_: str | None = msgspec.field(default=None, name="from")
    to: str | None = None
    content: str | None = None
    conversation_id: int = 0
    sentiment: str | None = None
    offset: str | None = None
    is_nps: bool = msgspec.field(default=False, name="isNPS")
    content_sid: str | None = None
    message_type: int = 0
    media_url: str | None = None
    media_file_name: str | None = None
    tenant_id: int = 0
    user_id: int = 0
    content_variables: str | None = None
    message_sid: str | None = None
    message_status: int = 0
    sent: bool = False
    delivered: bool = False
    read: bool = False
    error_code: str | None = None
    error_message: str | None = None
    is_read_by_user: bool = False
    document_id: int = 0


class Tag(msgspec.Struct, kw_only=True, frozen=True, rename="camel", gc=False):
    """A tag attached to a conversation."""

    id: int = 0
    name: str | None = None
    active: bool = False
    created_at: datetime | None = None
    tenant_id: int = 0


class ConversationVariable(msgspec.Struct, kw_only=True, frozen=True, rename="camel", gc=False):
    """One item of ``dynamic_variables`` or ``data_collection``."""

    id: int = 0
    name: str | None = None
    value: str | None = None
    conversation_id: int = 0


class Conversation(msgspec.Struct, kw_only=True, frozen=True, rename="camel", gc=False):
    """A conversation the server created: one per recipient and per contact id."""

    id: int = 0
    active: bool = False
    live_agent: bool = False
    from_: str | None = msgspec.field(default=None, name="from")
    conversation_id: str | None = None
    water_mark: str | None = None
    token: str | None = None
    created_at: datetime | None = None
    finished_at: datetime | None = None
    queued_at: datetime | None = None
    last_conversation_update_time: datetime | None = None
    last_message_content: str | None = None
    contact_name: str | None = None
    user_id: int = 0
    user_name: str | None = None
    counterpart_user_id: int = 0
    counterpart_user_name: str | None = None
    bot_id: int = 0
    bot_name: str | None = None
    file_url: str | None = None
    file_name: str | None = None
    tenant_id: int = 0
    conversation_summary: str | None = None
    messages: list[Message] | None = None
    score: int = 0
    final_score: int = 0
    checklist_id: int = 0
    channel_id: int = 0
    conversation_integration_type: ConversationIntegrationType = ConversationIntegrationType(0)
    duration: str | None = None
    high_importance_error_detected: bool = False
    tags: list[Tag] | None = None
    conversation_evaluation_status: ConversationEvaluationStatus = ConversationEvaluationStatus(0)
    conversation_evaluation_status_message: str | None = None
    queue_id: int = 0
    queue_name: str | None = None
    conversation_ended_reason_id: int = 0
    agent_type: AgentType = AgentType(0)
    conversation_type: ConversationType = ConversationType(0)
    application_status_id: int = 0
    overall_sentiment: str | None = None
    call_status: str | None = None
    disconnection_reason: str | None = None
    call_successful: bool = False
    total_unreaded_messages_by_user: int = 0
    dynamic_variables: list[ConversationVariable] | None = None
    data_collection: list[ConversationVariable] | None = None
    agent_id: int = 0

    @property
    def duration_timedelta(self) -> timedelta | None:
        """``duration`` as a timedelta; None if absent or unreadable."""
        return parse_timespan(self.duration) if self.duration is not None else None

    @property
    def recipients(self) -> list[str]:
        """The ``to`` of each message: who this conversation was started with."""
        return [m.to for m in self.messages or () if m.to]


_ENCODER: Final = msgspec.json.Encoder()
_CONVERSATIONS: Final = msgspec.json.Decoder(list[Conversation])


def build_request(
    request: ProactiveConversationRequest | None, fields: Mapping[str, Any]
) -> ProactiveConversationRequest:
    """``request`` with ``fields`` (snake_case) set over it; from ``fields`` alone if None.

    The one way a request is made, for a single call and for each chunk of a campaign.
    A list field given as something else (``recipient="+55..."``, ``contact_ids=7``) is
    a TypeError naming the field, raised here, before anything is sent.
    """
    if request is None:
        built = ProactiveConversationRequest(**fields)
    elif fields:
        built = msgspec.structs.replace(request, **fields)
    else:
        built = request
    # A few identity checks on the common path; the loop runs only to name a culprit.
    recipient, contact_ids = built.recipient, built.contact_ids
    if (
        (recipient.__class__ is not list and recipient is not UNSET)
        or (contact_ids.__class__ is not list and contact_ids is not UNSET)
        or built.account_ids is not UNSET
    ):
        _check_lists(built)
    return built


_LIST_FIELDS: Final = (
    ("recipient", "phone numbers (str)"),
    ("contact_ids", "contact ids (int)"),
    ("account_ids", "account ids (int)"),
)


def _check_lists(request: ProactiveConversationRequest) -> None:
    """Refuse a list field that is not a list (a str is iterable, but one number is not 13)."""
    for name, items in _LIST_FIELDS:
        value = getattr(request, name)
        if value is UNSET or value is None or isinstance(value, list | tuple):
            continue
        example = "['+5511999990000']" if name == "recipient" else "[123]"
        raise TypeError(
            f"{name} must be a list of {items} or None, not {type(value).__name__}: "
            f"write {name}={example}"
        )


def encode_request(request: ProactiveConversationRequest) -> bytes:
    """JSON body of a request, with only the fields the caller set."""
    return _ENCODER.encode(request)


def decode_conversations(body: bytes) -> list[Conversation]:
    """Decode a 2xx body into Conversations; raises DecodingError if it is not an array of them.

    A date-time the server sent with an offset (or ``Z``) is aware; one sent without is
    naive, as sent (``decode_conversations_utc`` reads those as UTC).
    """
    try:
        return _CONVERSATIONS.decode(body)
    except msgspec.ValidationError:
        return _decode_tolerant(body)
    except msgspec.DecodeError as exc:
        raise DecodingError(f"response body is not valid JSON: {exc}", body=body[:2048]) from exc


def decode_conversations_utc(body: bytes) -> list[Conversation]:
    """As ``decode_conversations``, with every naive date-time made UTC-aware (``assume_utc``)."""
    return [_conversation_in_utc(conversation) for conversation in decode_conversations(body)]


def _in_utc(moment: datetime | None) -> datetime | None:
    if moment is None or moment.tzinfo is not None:
        return moment
    return moment.replace(tzinfo=UTC)


def _conversation_in_utc(conversation: Conversation) -> Conversation:
    """The conversation with naive date-times (its own, its messages' and tags') as UTC."""
    changes: dict[str, Any] = {}
    for name in ("created_at", "finished_at", "queued_at", "last_conversation_update_time"):
        value = getattr(conversation, name)
        if value is not None and value.tzinfo is None:
            changes[name] = value.replace(tzinfo=UTC)
    for name in ("messages", "tags"):
        items: list[Message] | list[Tag] | None = getattr(conversation, name)
        if items and any(i.created_at is not None and i.created_at.tzinfo is None for i in items):
            changes[name] = [
                msgspec.structs.replace(i, created_at=_in_utc(i.created_at)) for i in items
            ]
    return msgspec.structs.replace(conversation, **changes) if changes else conversation


# --- tolerant second pass -------------------------------------------------------------

_PATH_PART = re.compile(r"\.([A-Za-z_][\w]*)|\[(\d+)\]")
_AT_PATH = re.compile(r"at `(\$[^`]*)`")
_DATETIME_FIELDS: Final = frozenset(
    {"createdAt", "finishedAt", "queuedAt", "lastConversationUpdateTime"}
)
_MAX_REPAIRS: Final = 10_000


def _decode_tolerant(body: bytes) -> list[Conversation]:
    """Decode a body the strict decoder refused: read dates leniently, default bad values."""
    try:
        data = msgspec.json.decode(body)
    except msgspec.DecodeError as exc:  # pragma: no cover - the strict pass already parsed it
        raise DecodingError(f"response body is not valid JSON: {exc}", body=body[:2048]) from exc
    if not isinstance(data, list):
        raise DecodingError(
            f"expected a JSON array of conversations, got {type(data).__name__}", body=body[:2048]
        )
    _parse_dates(data)
    # Items are repaired one by one: converting the whole array after each repair costs
    # O(items x repairs) (0.4 s for 1,000 items with one null int each), and a large
    # answer would hit the repair cap and be refused as a whole.
    repaired: list[str] = []
    result = [_convert_item(item, index, body, repaired) for index, item in enumerate(data)]
    if repaired:
        _log.debug("defaulted %d unreadable field(s): %s", len(repaired), repaired[:10])
    return result


def _convert_item(item: object, index: int, body: bytes, repaired: list[str]) -> Conversation:
    """Convert one array item, dropping unreadable values until it fits (defaults apply)."""
    for _ in range(_MAX_REPAIRS):
        try:
            return msgspec.convert(item, Conversation, strict=False)
        except msgspec.ValidationError as exc:
            path = _error_path(str(exc))
            if path is None or not _drop_at(item, path):
                raise DecodingError(
                    f"response item {index} does not match the Conversation schema: {exc}",
                    body=body[:2048],
                ) from exc
            repaired.append(f"$[{index}]{path[1:]}")
    raise DecodingError(  # pragma: no cover - only a pathological body gets here
        "response has too many unreadable fields", body=body[:2048]
    )


def _parse_dates(node: object) -> None:
    """Replace date-time strings that msgspec does not read with datetimes (or None)."""
    if isinstance(node, list):
        for item in node:
            _parse_dates(item)
    elif isinstance(node, dict):
        for key, value in node.items():
            if key in _DATETIME_FIELDS and isinstance(value, str | int | float):
                node[key] = parse_datetime(value)
            elif isinstance(value, list | dict):
                _parse_dates(value)


def _error_path(message: str) -> str | None:
    match = _AT_PATH.search(message)
    return match.group(1) if match else None


def _drop_at(data: object, path: str) -> bool:
    """Remove the value at a msgspec error path (``$[0].messages[1].id``) so its default applies."""
    parts: list[str | int] = [
        m.group(1) if m.group(1) is not None else int(m.group(2))
        for m in _PATH_PART.finditer(path[1:])
    ]
    if not parts:
        return False
    node = data
    for part in parts[:-1]:
        try:
            node = node[part]  # type: ignore[index]
        except (KeyError, IndexError, TypeError):
            return False
    last = parts[-1]
    if isinstance(node, dict) and isinstance(last, str) and last in node:
        del node[last]
        return True
    # An item of a nested list that is not an object (``"tags": [null]``) is dropped like
    # any other unreadable value, instead of refusing the whole answer.
    if isinstance(node, list) and isinstance(last, int) and last < len(node):
        del node[last]
        return True
    return False


# --- date-time and TimeSpan parsing ---------------------------------------------------

_LONG_FRACTION = re.compile(r"(\.\d{6})\d+")
_MS_DATE = re.compile(r"^/Date\((-?\d+)([+-]\d{4})?\)/$")
_TIMESPAN = re.compile(
    r"^(?P<sign>-)?(?:(?P<days>\d+)\.)?(?P<h>\d{1,2}):(?P<m>\d{1,2}):(?P<s>\d{1,2})"
    r"(?:\.(?P<frac>\d{1,7}))?$"
)
_ISO_DURATION = re.compile(
    r"^(?P<sign>-)?P(?:(?P<w>\d+(?:\.\d+)?)W)?(?:(?P<d>\d+(?:\.\d+)?)D)?"
    r"(?:T(?:(?P<h>\d+(?:\.\d+)?)H)?(?:(?P<m>\d+(?:\.\d+)?)M)?(?:(?P<s>\d+(?:\.\d+)?)S)?)?$"
)


def parse_datetime(value: str | float) -> datetime | None:
    """Read a date-time in any form a server may send; None when it cannot be read.

    Accepts RFC 3339 / ISO 8601 with ``Z``, an offset or none, up to 7+ fractional digits
    (.NET emits 7; extra digits past microseconds are cut), date-only, the legacy
    ``/Date(ms)/`` form, and Unix epoch seconds as a number.
    """
    if isinstance(value, int | float) and not isinstance(value, bool):
        try:
            return datetime.fromtimestamp(value, tz=UTC)
        except (OverflowError, OSError, ValueError):
            return None
    if not isinstance(value, str):
        return None
    text = value.strip()
    legacy = _MS_DATE.match(text)
    if legacy:
        return _parse_legacy_date(int(legacy.group(1)), legacy.group(2))
    text = _LONG_FRACTION.sub(r"\1", text)
    if text.endswith(("z", "Z")):
        text = text[:-1] + "+00:00"
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        return None


def _parse_legacy_date(millis: int, offset: str | None) -> datetime | None:
    try:
        moment = datetime.fromtimestamp(millis / 1000, tz=UTC)
    except (OverflowError, OSError, ValueError):
        return None
    if offset:
        sign = -1 if offset[0] == "-" else 1
        delta = timedelta(hours=int(offset[1:3]), minutes=int(offset[3:5]))
        moment = moment.astimezone(timezone(sign * delta))
    return moment


def parse_timespan(value: str) -> timedelta | None:
    """Read a .NET TimeSpan (``[-][d.]hh:mm:ss[.fffffff]``) or an ISO 8601 duration.

    Returns None for anything else: a duration the SDK cannot read never breaks decoding.
    """
    text = value.strip()
    match = _TIMESPAN.match(text)
    if match:
        frac = match.group("frac") or ""
        delta = timedelta(
            days=int(match.group("days") or 0),
            hours=int(match.group("h")),
            minutes=int(match.group("m")),
            seconds=int(match.group("s")),
            microseconds=int((frac + "0000000")[:7]) / 10,
        )
        return -delta if match.group("sign") else delta
    match = _ISO_DURATION.match(text)
    # lstrip, not rstrip: "-P" and "-PT" name no duration either.
    if match and text.lstrip("-") not in ("P", "PT") and not text.endswith("T"):
        delta = timedelta(
            weeks=float(match.group("w") or 0),
            days=float(match.group("d") or 0),
            hours=float(match.group("h") or 0),
            minutes=float(match.group("m") or 0),
            seconds=float(match.group("s") or 0),
        )
        return -delta if match.group("sign") else delta
    return None
