"""The unit of campaign work: one input record, and the one outcome it ends with."""

from __future__ import annotations

import enum
from typing import Any

import msgspec

__all__ = ["Outcome", "OutcomeError", "OutcomeStatus", "Record", "Target"]


class Target(msgspec.Struct, kw_only=True, frozen=True):
    """One campaign target as a caller supplies it: a phone number or a contact id.

    Usage::

        Target(recipient="+5511999990000", content_variables={"name": "Ana"})
        Target(contact_id=123)
    """

    recipient: str | None = None
    contact_id: int | None = None
    content_variables: dict[str, Any] | None = None


class Record(msgspec.Struct, kw_only=True):
    """One input record, numbered from 1 in input order (a CSV header is not a record).

    ``error`` is set when the record could not be read (a broken CSV row, a bad JSONL
    line): such a record ends ``rejected`` with that reason and is never sent.
    """

    line: int
    recipient: str | None = None
    contact_id: int | None = None
    variables: dict[str, Any] | None = None
    error: str | None = None


class OutcomeStatus(enum.StrEnum):
    """How a record ended. Every record ends with exactly one."""

    SENT = "sent"
    """The server created the conversation(s); processed exactly once."""
    FAILED = "failed"
    """Certainly not created (a 4xx, or retries exhausted on a safe failure)."""
    UNKNOWN = "unknown"
    """May have been created (an ambiguous failure); not resent by default."""
    REJECTED = "rejected"
    """Invalid input; never sent."""
    DUPLICATE = "duplicate"
    """The same target appeared earlier in the input; ``duplicate_of`` names that line."""


class OutcomeError(msgspec.Struct, kw_only=True, frozen=True, omit_defaults=True, rename="camel"):
    """Why a record did not end ``sent``: the error's kind, HTTP status and message.

    ``trace_id`` is the ``traceId`` of the server's ProblemDetails answer, when it sent one:
    quote it to the vendor to find the call in their logs. Omitted when None.
    """

    kind: str
    message: str
    status: int | None = None
    trace_id: str | None = None


class Outcome(msgspec.Struct, kw_only=True, rename="camel"):
    """The one outcome of one input record; one JSONL report line per outcome.

    ``recipient`` is the E.164 number that was sent (or the raw input when it was invalid);
    ``conversation_ids`` the conversations created, or, for a record ``unknown`` after a
    successful call, the answer's conversations that proved nobody's (to check with the
    vendor); ``attempts`` the calls made for it.
    """

    line: int
    status: OutcomeStatus
    recipient: str | None = None
    contact_id: int | None = None
    conversation_ids: list[int] = msgspec.field(default_factory=list)
    attempts: int = 0
    error: OutcomeError | None = None
    duplicate_of: int | None = None
