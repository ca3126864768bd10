"""What every journal backend does the same way, written once: the stored entry, the
campaign identity and its check, keeping secrets out, and ``Outcome``'s wire names."""

from __future__ import annotations

import os
import socket
from collections.abc import Collection, Mapping
from typing import Any, Final

import msgspec

from .._errors import JournalError, JournalMismatchError
from .._records import Outcome, OutcomeError, OutcomeStatus
from .._secrets import MIN_SECRET_LENGTH

__all__ = [
    "INTERRUPTED",
    "IN_FLIGHT",
    "OUTCOME_WIRE_NAMES",
    "CampaignIdentity",
    "JournalEntry",
    "SecretScrubber",
    "check_identity",
    "interrupted_outcome",
    "kept_secrets",
    "process_name",
    "refuse_secrets",
]

IN_FLIGHT: Final = "in_flight"
"""The state of a line whose call may have been sent but has no final outcome yet."""

INTERRUPTED: Final = OutcomeError(
    kind="interrupted",
    message="the campaign stopped while this record's call was in flight; it may have been sent",
)
"""The error of a record whose call was in flight when its campaign stopped."""

OUTCOME_WIRE_NAMES: Final = {
    field.name: field.encode_name for field in msgspec.structs.fields(Outcome)
}
"""``Outcome``'s field names (Python) -> its JSON names, for SQL that reads or builds one."""


def process_name() -> str:
    """This process as the owners it writes into a journal name it: ``host/pid``."""
    return f"{socket.gethostname()}/{os.getpid()}"


class CampaignIdentity(msgspec.Struct, frozen=True):
    """What makes two runs the same campaign; a journal only resumes its own campaign.

    Usage::

        identity = CampaignIdentity.build(
            template, input_fingerprint=_input.fingerprint_file("targets.csv"),
            options={"default_region": "BR", "dedupe": True},
        )

    Parameters:
        template: canonical JSON of the request template. It must never hold the API
            token (:meth:`Journal.open` refuses one it is told about).
        input_fingerprint: identifies the input, e.g. ``_input.fingerprint_file``; ``""``
            when it cannot be known (a Python iterable), in which case resuming with
            the same input is the caller's promise.
        options: canonical JSON of the options that change how lines are planned
            (default region, deduplication); ``""`` when there are none.
    """

    template: str
    input_fingerprint: str = ""
    options: str = ""

    @classmethod
    def build(
        cls,
        template: Mapping[str, Any],
        *,
        input_fingerprint: str = "",
        options: Mapping[str, Any] | None = None,
    ) -> CampaignIdentity:
        """An identity from plain mappings, each encoded as sorted-key JSON."""
        return cls(
            template=_canonical_json(template),
            input_fingerprint=input_fingerprint,
            options=_canonical_json(options) if options else "",
        )


class JournalEntry(msgspec.Struct, frozen=True):
    """What the journal knows of one input line.

    ``state`` is ``"in_flight"`` or an :class:`OutcomeStatus` value; ``outcome`` is the
    stored outcome of a finished line, ``None`` for one in flight.
    """

    line: int
    state: str
    outcome: Outcome | None = None


def interrupted_outcome(
    line: int, *, recipient: str | None = None, contact_id: int | None = None
) -> Outcome:
    """The ``unknown`` outcome a resume reports for a line left in flight."""
    return Outcome(
        line=line,
        status=OutcomeStatus.UNKNOWN,
        recipient=recipient,
        contact_id=contact_id,
        error=INTERRUPTED,
    )


class SecretScrubber:
    """Replaces the JSON-encoded forms of secrets in encoded outcomes before they are stored."""

    def __init__(self, secrets: Collection[str]) -> None:
        self._forms = tuple(msgspec.json.encode(secret)[1:-1] for secret in secrets)

    def scrub(self, encoded: bytes) -> bytes:
        """``encoded`` with each secret replaced by ``[redacted]``."""
        for form in self._forms:
            encoded = encoded.replace(form, b"[redacted]")
        return encoded


def kept_secrets(secrets: Collection[str]) -> tuple[str, ...]:
    """The secrets a journal guards: long enough that finding one is not a coincidence."""
    return tuple(secret for secret in secrets if len(secret) >= MIN_SECRET_LENGTH)


def _canonical_json(value: Mapping[str, Any]) -> str:
    return msgspec.json.encode(value, order="sorted").decode()


def refuse_secrets(identity: CampaignIdentity, secrets: tuple[str, ...]) -> None:
    """Refuse an identity holding a secret: the journal stores the identity as it is."""
    for field in ("template", "options"):
        text: str = getattr(identity, field)
        if any(secret in text for secret in secrets):
            raise JournalError(
                f"the campaign {field} holds the API token; the journal never stores it"
            )


_IDENTITY_LABELS: Final = {
    "template": "request template",
    "input_fingerprint": "input",
    "options": "planning options",
}


def check_identity(path: str, stored: dict[str, str], identity: CampaignIdentity) -> None:
    """Refuse a journal of another campaign, naming every part of the identity that differs."""
    differences = [
        f"the {label} differs (journal: {_excerpt(stored.get(field, ''))}, "
        f"this run: {_excerpt(getattr(identity, field))})"
        for field, label in _IDENTITY_LABELS.items()
        if stored.get(field, "") != getattr(identity, field)
    ]
    if differences:
        raise JournalMismatchError(
            f"the journal {path} belongs to another campaign: {'; '.join(differences)}. "
            "Resume with the original template and input, or use a new journal file."
        )


def _excerpt(text: str) -> str:
    if not text:
        return "none"
    return repr(text if len(text) <= 80 else f"{text[:77]}...")
