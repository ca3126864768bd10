"""Keeping the API token out of what the SDK shows: errors, bodies, reports, journals.

One rule for every place that redacts: a string shorter than ``MIN_SECRET_LENGTH`` is no
credible token and would match ordinary text, so only ``Bearer <token>`` is redacted then.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Final

__all__ = ["MIN_SECRET_LENGTH", "REDACTED", "Redactor", "check_header_value"]

MIN_SECRET_LENGTH: Final = 8
REDACTED: Final = "[redacted]"


class Redactor:
    """Replaces known secrets in text, bytes and header mappings with ``[redacted]``."""

    __slots__ = ("_bytes", "_texts")

    def __init__(self, secrets: Iterable[str]) -> None:
        texts: list[str] = []
        for secret in secrets:
            if not secret:
                continue
            texts.append(f"Bearer {secret}")
            if len(secret) >= MIN_SECRET_LENGTH:
                texts.append(secret)
        self._texts = tuple(texts)
        self._bytes = tuple(text.encode("utf-8", "replace") for text in texts)

    def text(self, value: str) -> str:
        for secret in self._texts:
            if secret in value:
                value = value.replace(secret, REDACTED)
        return value

    def bytes(self, value: bytes) -> bytes:
        for secret in self._bytes:
            if secret in value:
                value = value.replace(secret, REDACTED.encode())
        return value

    def headers(self, value: Mapping[str, str]) -> Mapping[str, str]:
        """``value`` itself when no secret is in it, else a redacted copy."""
        if not any(secret in item for item in value.values() for secret in self._texts):
            return value
        return {name: self.text(item) for name, item in value.items()}


def check_header_value(name: str, value: str) -> str | None:
    """Why ``value`` cannot be sent as header ``name`` (CR, LF, NUL, non-Latin-1), or None."""
    if any(c in value for c in "\r\n\x00"):
        return f"the {name} holds a line break or NUL (a two-line token file?)"
    try:
        value.encode("latin-1")
    except UnicodeEncodeError:
        return f"the {name} holds characters that HTTP headers cannot carry"
    if value != value.strip():
        return f"the {name} starts or ends with white space"
    return None
