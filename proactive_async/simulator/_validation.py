"""The request body: decoded, checked against openapi.yaml, every bad field named.

Property names match case-insensitively and unknown ones are ignored, as ASP.NET Core's
System.Text.Json web defaults do. Error keys are camelCase paths with list indexes
(``recipient[3]``), each with its messages, as a ValidationProblemDetails carries them.
"""

from __future__ import annotations

import re
from typing import Any

import msgspec

from .._models import INT32_MAX, INT32_MIN, INTEGRATION_TYPES

__all__ = ["Call", "parse_call"]

# A WhatsApp id or E.164 number: optional "+", then 8-15 ASCII digits, the first not 0.
_PHONE = re.compile(r"\+?[1-9][0-9]{7,14}")

_NOT_INT32 = "The JSON value could not be converted to System.Int32."
_NOT_BOOL = "The JSON value could not be converted to System.Boolean."
_NOT_STRING = "The JSON value could not be converted to System.String."
_NOT_STRINGS = (
    "The JSON value could not be converted to System.Collections.Generic.List`1[System.String]."
)
_NOT_INTS = (
    "The JSON value could not be converted to System.Collections.Generic.List`1[System.Int32]."
)
_NOT_OBJECT = (
    "The JSON value could not be converted to "
    "System.Collections.Generic.Dictionary`2[System.String,System.Object]."
)
_NOT_REQUEST = "The JSON value could not be converted to ProactiveConversationRequest."
_EMPTY_BODY = "A non-empty request body is required."
_NO_TARGET = "At least one recipient or contactId is required."

_INT_FIELDS = (
    "channelId",
    "botId",
    "conversationTemplateId",
    "counterpartUserId",
    "userId",
    "queueId",
)
# Every known property, lower-cased, to its camelCase name.
_KNOWN = {
    name.lower(): name
    for name in (
        *_INT_FIELDS,
        "liveAgent",
        "recipient",
        "contentVariables",
        "accountIds",
        "contactIds",
        "conversationIntegrationType",
    )
}

Errors = dict[str, list[str]]


class Call:
    """One valid request: its fields, defaults filled in as the server would bind them."""

    __slots__ = (
        "account_ids",
        "bot_id",
        "channel_id",
        "contact_ids",
        "content_variables",
        "conversation_template_id",
        "counterpart_user_id",
        "integration_type",
        "live_agent",
        "queue_id",
        "recipients",
        "user_id",
    )

    def __init__(self, fields: dict[str, Any]) -> None:
        self.channel_id: int = fields.get("channelId", 0)
        self.bot_id: int = fields.get("botId", 0)
        self.conversation_template_id: int = fields.get("conversationTemplateId", 0)
        self.counterpart_user_id: int = fields.get("counterpartUserId", 0)
        self.user_id: int = fields.get("userId", 0)
        self.queue_id: int = fields.get("queueId", 0)
        self.live_agent: bool = fields.get("liveAgent", False)
        self.integration_type: int = fields.get("conversationIntegrationType", 0)
        self.content_variables: dict[str, Any] = fields.get("contentVariables") or {}
        self.recipients: list[str] = fields.get("recipient") or []
        self.contact_ids: list[int] = fields.get("contactIds") or []
        self.account_ids: list[int] = fields.get("accountIds") or []

    @property
    def target_count(self) -> int:
        """Recipients plus contact ids."""
        return len(self.recipients) + len(self.contact_ids)

    def target_keys(self) -> list[str]:
        """The audit key of every target, recipients first, in request order."""
        return [*self.recipients, *(f"contact:{cid}" for cid in self.contact_ids)]


def parse_call(body: bytes, max_targets: int | None) -> Call | Errors:
    """The valid call in ``body``, or the validation errors by field path."""
    if not body.strip():
        return {"": [_EMPTY_BODY]}
    try:
        document = msgspec.json.decode(body)
    except msgspec.DecodeError as exc:
        return {"$": [f"The request body is not valid JSON: {exc}."]}
    if type(document) is not dict:
        return {"$": [_NOT_REQUEST]}
    fields: dict[str, Any] = {}
    errors: Errors = {}
    for key, value in document.items():
        name = _KNOWN.get(key.lower())
        if name is not None:
            fields[name] = value
    for name, value in fields.items():
        _check_field(name, value, errors)
    _check_targets(fields, max_targets, errors)
    return errors if errors else Call(fields)


def _is_int32(value: object) -> bool:
    # bool is an int subclass in Python but never an integer in JSON.
    return type(value) is int and INT32_MIN <= value <= INT32_MAX


def _add(errors: Errors, path: str, message: str) -> None:
    errors.setdefault(path, []).append(message)


def _check_field(name: str, value: object, errors: Errors) -> None:
    """Record what is wrong with one top-level property, if anything."""
    if name in _INT_FIELDS:
        if not _is_int32(value):
            _add(errors, name, _NOT_INT32)
    elif name == "liveAgent":
        if type(value) is not bool:
            _add(errors, name, _NOT_BOOL)
    elif name == "conversationIntegrationType":
        if not _is_int32(value):
            _add(errors, name, _NOT_INT32)
        elif value not in INTEGRATION_TYPES:
            _add(errors, name, f"The value '{value}' is not valid for {name} (0 to 18).")
    elif name == "contentVariables":
        if value is not None and type(value) is not dict:
            _add(errors, name, _NOT_OBJECT)
    elif name == "recipient":
        _check_recipients(value, errors)
    else:  # accountIds, contactIds
        _check_int_list(name, value, errors)


def _check_recipients(value: object, errors: Errors) -> None:
    if value is None:
        return
    if type(value) is not list:
        _add(errors, "recipient", _NOT_STRINGS)
        return
    for index, item in enumerate(value):
        if type(item) is not str:
            _add(errors, f"recipient[{index}]", _NOT_STRING)
        elif _PHONE.fullmatch(item) is None:
            _add(errors, f"recipient[{index}]", f"'{item}' is not a valid phone number.")


def _check_int_list(name: str, value: object, errors: Errors) -> None:
    if value is None:
        return
    if type(value) is not list:
        _add(errors, name, _NOT_INTS)
        return
    for index, item in enumerate(value):
        if not _is_int32(item):
            _add(errors, f"{name}[{index}]", _NOT_INT32)


def _check_targets(fields: dict[str, Any], max_targets: int | None, errors: Errors) -> None:
    lists = (fields.get("recipient"), fields.get("contactIds"))
    if any(value is not None and type(value) is not list for value in lists):
        return  # already reported as the wrong type; the count would mean nothing
    count = sum(len(value) for value in lists if value is not None)
    if count == 0:
        _add(errors, "recipient", _NO_TARGET)
    elif max_targets is not None and count > max_targets:
        _add(
            errors,
            "recipient",
            f"At most {max_targets} recipients and contactIds are allowed in one call; "
            f"this call has {count}.",
        )
