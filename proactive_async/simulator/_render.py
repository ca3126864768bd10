"""The 200 body: one Conversation per target, with every field of the openapi schema.

Values imitate what the real ASP.NET Core service emits: ``createdAt`` values are UTC
with seven fractional digits and a ``Z``; ``lastConversationUpdateTime`` and message dates
have no offset and trailing zeros trimmed (a .NET ``DateTime`` of unspecified kind);
``duration`` is a .NET ``TimeSpan`` (here: the time the server spent on the call).

Each template id picks one of a few texts whose ``{{name}}`` placeholders are filled from
``contentVariables``; a placeholder without a variable is left as it is.
"""

from __future__ import annotations

import functools
import itertools
import re
import secrets
import time
from typing import Any

import msgspec

from ._validation import Call

__all__ = ["BUSINESS_NUMBER", "Renderer", "format_timespan", "phone_of_contact", "render_template"]

BUSINESS_NUMBER = "+15550100200"
_TENANT_ID = 42
_TEMPLATES = (
    "Hello {{name}}, your order {{order}} is on its way.",
    "Hi {{1}}, your appointment is confirmed for {{2}}.",
    "{{name}}, we have news for you: {{message}}",
)
_PLACEHOLDER = re.compile(r"\{\{\s*([^{}]+?)\s*\}\}")
_TICKS_PER_SECOND = 10_000_000
_encode = msgspec.json.Encoder().encode


def format_timespan(ticks: int) -> str:
    """A .NET ``TimeSpan`` in its constant format: ``[-][d.]hh:mm:ss[.fffffff]``."""
    sign = "-" if ticks < 0 else ""
    seconds, fraction = divmod(abs(ticks), _TICKS_PER_SECOND)
    minutes, second = divmod(seconds, 60)
    hours, minute = divmod(minutes, 60)
    days, hour = divmod(hours, 24)
    text = f"{sign}{days}." if days else sign
    text += f"{hour:02d}:{minute:02d}:{second:02d}"
    return f"{text}.{fraction:07d}" if fraction else text


@functools.lru_cache(maxsize=8)
def _format_second(seconds: int) -> str:
    # Thousands of calls share each second: format it once.
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))


def _format_utc(ns: int) -> str:
    seconds, rest = divmod(ns, 1_000_000_000)
    return f"{_format_second(seconds)}.{rest // 100:07d}Z"


def _format_unspecified(ns: int) -> str:
    seconds, rest = divmod(ns, 1_000_000_000)
    fraction = f"{rest // 100:07d}".rstrip("0")
    stamp = _format_second(seconds)
    return f"{stamp}.{fraction}" if fraction else stamp


def phone_of_contact(contact_id: int) -> str:
    """The (made-up, NANP-shaped) phone number of a contact id."""
    return f"+1{contact_id % 10**10:010d}"


def _as_text(value: Any) -> str | None:
    if value is None or type(value) is str:
        return value
    return _encode(value).decode()


@functools.lru_cache(maxsize=64)
def _split_template(text: str) -> tuple[tuple[str, str, str], ...]:
    """``text`` as (literal, variable name, placeholder as written) triples."""
    parts: list[tuple[str, str, str]] = []
    start = 0
    for match in _PLACEHOLDER.finditer(text):
        parts.append((text[start : match.start()], match.group(1), match.group(0)))
        start = match.end()
    parts.append((text[start:], "", ""))
    return tuple(parts)


def render_template(text: str, variables: dict[str, Any]) -> str:
    """``text`` with each ``{{name}}`` replaced by that variable, when there is one."""
    pieces: list[str] = []
    for literal, name, placeholder in _split_template(text):
        pieces.append(literal)
        if not placeholder:
            break
        if name in variables:
            pieces.append(_as_text(variables[name]) or "")
        else:
            pieces.append(placeholder)
    return "".join(pieces)


def _optional_name(prefix: str, number: int) -> str | None:
    return f"{prefix} {number}" if number else None


class Renderer:
    """Builds the 200 bodies; ids increase over the life of one simulator."""

    def __init__(self) -> None:
        self._conversation_ids = itertools.count(1001)
        self._message_ids = itertools.count(500_001)
        self._variable_ids = itertools.count(1)

    def render(self, call: Call, received_ns: int) -> bytes:
        """The JSON array for ``call``: recipients first, then contacts, in request order."""
        now = time.time_ns()
        template = _TEMPLATES[call.conversation_template_id % len(_TEMPLATES)]
        content = render_template(template, call.content_variables)
        shared = self._shared_fields(call, now, received_ns, content)
        message_shared = self._message_fields(call, now, content)
        variables = [(name, _as_text(value)) for name, value in call.content_variables.items()]
        conversations = [
            self._conversation(shared, message_shared, variables, recipient, None)
            for recipient in call.recipients
        ]
        conversations.extend(
            self._conversation(
                shared, message_shared, variables, phone_of_contact(cid), f"Contact {cid}"
            )
            for cid in call.contact_ids
        )
        return _encode(conversations)

    def _conversation(
        self,
        shared: dict[str, Any],
        message_shared: dict[str, Any],
        variables: list[tuple[str, str | None]],
        to: str,
        contact_name: str | None,
    ) -> dict[str, Any]:
        conversation_id = next(self._conversation_ids)
        message_id = next(self._message_ids)
        message = message_shared.copy()
        message["id"] = message_id
        message["to"] = to
        message["conversationId"] = conversation_id
        message["messageSid"] = f"SM{message_id:032x}"
        conversation = shared.copy()
        conversation["id"] = conversation_id
        conversation["conversationId"] = f"{secrets.token_urlsafe(16)}-us"
        conversation["contactName"] = contact_name
        conversation["messages"] = [message]
        conversation["dynamicVariables"] = self._variables(variables, conversation_id)
        conversation["dataCollection"] = self._variables(variables, conversation_id)
        return conversation

    def _variables(
        self, variables: list[tuple[str, str | None]], conversation_id: int
    ) -> list[dict[str, Any]]:
        ids = self._variable_ids
        return [
            {"id": next(ids), "name": name, "value": value, "conversationId": conversation_id}
            for name, value in variables
        ]

    @staticmethod
    def _shared_fields(call: Call, now: int, received_ns: int, content: str) -> dict[str, Any]:
        """Every Conversation field that is the same for all targets of one call."""
        created = _format_utc(now)
        # A templated send is tagged, a template id of 0 is not: both shapes get exercised.
        tags = (
            [
                {
                    "id": 7,
                    "name": "proactive",
                    "active": True,
                    "createdAt": created,
                    "tenantId": _TENANT_ID,
                }
            ]
            if call.conversation_template_id
            else []
        )
        return {
            "id": 0,
            "active": True,
            "liveAgent": call.live_agent,
            "from": BUSINESS_NUMBER,
            "conversationId": None,
            "waterMark": "1",
            "token": None,
            "createdAt": created,
            "finishedAt": None,
            "queuedAt": None,
            "lastConversationUpdateTime": _format_unspecified(now),
            "lastMessageContent": content,
            "contactName": None,
            "userId": call.user_id,
            "userName": _optional_name("Agent", call.user_id),
            "counterpartUserId": call.counterpart_user_id,
            "counterpartUserName": _optional_name("User", call.counterpart_user_id),
            "botId": call.bot_id,
            "botName": _optional_name("Bot", call.bot_id),
            "fileUrl": None,
            "fileName": None,
            "tenantId": _TENANT_ID,
            "conversationSummary": None,
            "messages": None,
            "score": 0,
            "finalScore": 0,
            "checklistId": 0,
            "channelId": call.channel_id,
            "conversationIntegrationType": call.integration_type,
            "duration": format_timespan(max(0, now - received_ns) // 100),
            "highImportanceErrorDetected": False,
            "tags": tags,
            "conversationEvaluationStatus": 0,
            "conversationEvaluationStatusMessage": None,
            "queueId": call.queue_id,
            "queueName": _optional_name("Queue", call.queue_id),
            "conversationEndedReasonId": 0,
            "agentType": 1 if call.live_agent else 0,
            "conversationType": 1,
            "applicationStatusId": 0,
            "overallSentiment": None,
            "callStatus": None,
            "disconnectionReason": None,
            "callSuccessful": False,
            "totalUnreadedMessagesByUser": 0,
            "dynamicVariables": None,
            "dataCollection": None,
            "agentId": call.user_id if call.live_agent else 0,
        }

    @staticmethod
    def _message_fields(call: Call, now: int, content: str) -> dict[str, Any]:
        """Every Message field that is the same for all targets of one call."""
        variables = call.content_variables
        return {
            "id": 0,
            "createdAt": _format_unspecified(now),
            "from": BUSINESS_NUMBER,
            "to": None,
            "content": content,
            "conversationId": 0,
            "sentiment": None,
            "offset": None,
            "isNPS": False,
            "contentSid": f"HX{call.conversation_template_id & 0xFFFFFFFF:032x}",
            "messageType": 0,
            "mediaUrl": None,
            "mediaFileName": None,
            "tenantId": _TENANT_ID,
            "userId": call.user_id,
            "contentVariables": _encode(variables).decode() if variables else None,
            "messageSid": None,
            "messageStatus": 0,
            "sent": True,
            "delivered": False,
            "read": False,
            "errorCode": None,
            "errorMessage": None,
            "isReadByUser": False,
            "documentId": 0,
        }
