"""What the SDK hides in what it shows (errors, bodies, logs, reports, journals, reprs):
the API token, the password of a URL, whole phone numbers.

One rule for every place that redacts: a string shorter than ``MIN_SECRET_LENGTH`` is no
credible token and would match ordinary text, so only ``Bearer <token>`` is redacted then.
Phone numbers are masked here rather than in ``_phone.py``: masking needs no
``phonenumbers``, whose import (20 ms) the client and ``--help`` do not pay for.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Final
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

from ._errors import ClientStateError

__all__ = [
    "MIN_SECRET_LENGTH",
    "REDACTED",
    "Redactor",
    "check_header_value",
    "check_headers",
    "check_token",
    "display_url",
    "hide_url_secrets",
    "mask_phone",
    "mask_phones_in",
]

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


def check_token(token: str) -> tuple[str, str | None]:
    """The token to send, and why it cannot be sent (or None).

    A token pasted with its scheme (``Bearer eyJ...``, as a browser's or Swagger's
    ``Authorization`` header shows it) is taken without it: no bearer token holds a space
    (RFC 6750), so the prefix can only be the scheme, and sending it would make
    ``Bearer Bearer ...``, which servers answer 401. Any other space is refused.
    """
    if token[:7].lower() == "bearer " and token[7:].strip(" "):
        token = token[7:].lstrip(" ")
    problem = check_header_value("token", token)
    if problem is None and any(c.isspace() for c in token):
        problem = (
            "the token holds a space: give the token alone, without 'Authorization:' or "
            "any other text"
        )
    return token, problem


def display_url(url: str) -> str:
    """``url`` with its password, if any, shown as ``***``: for messages and reprs (a Redis
    URL, a journal's PostgreSQL DSN); ``***`` alone for a string that is no URL."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:  # not a URL that can be taken apart: show none of it
        return "***"
    if password is not None:
        parts = parts._replace(netloc=parts.netloc.replace(f":{password}@", ":***@", 1))
    if parts.query:
        # redis-py and libpq also take it as a parameter: ?password=...
        query = [
            (name, "***" if _SECRET_PARAMETER.search(name) else value)
            for name, value in parse_qsl(parts.query, keep_blank_values=True)
        ]
        parts = parts._replace(query=urlencode(query, safe="*"))
    return urlunsplit(parts)


_SECRET_PARAMETER: Final = re.compile(r"pass|secret|token", re.IGNORECASE)
"""URL parameters whose value is hidden (``password``, ``sslpassword``, ``passwd``)."""


def hide_url_secrets(text: str, url: str) -> str:
    """``text`` (a driver's error message, say) with every secret of ``url`` shown as
    ``***``: its password as written and percent-decoded, and the values of its secret
    parameters. libpq repeats a password it cannot decode (``invalid percent-encoded
    token: "se%zzcret"``), so a message about a URL may hold what ``display_url`` hides."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return text
    found = [password, unquote(password)] if password else []
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        if _SECRET_PARAMETER.search(name):
            found.append(value)
    for secret in sorted({s for s in found if s}, key=len, reverse=True):
        text = text.replace(secret, "***")
    return text


def mask_phone(number: str) -> str:
    """``+5511999990000`` -> ``+551********00``: enough to tell numbers apart in a log."""
    digits = [c for c in number if c.isdigit()]
    if len(digits) < 6:
        return "*" * len(number)
    hidden = len(digits) - 5
    masked = digits[:3] + ["*"] * hidden + digits[-2:]
    return ("+" if number.lstrip().startswith("+") else "") + "".join(masked)


def mask_phones_in(text: str) -> str:
    """Mask every phone-number-like run of digits in ``text``."""
    return _PHONE.sub(lambda m: mask_phone(m.group(0)), text)


_PHONE: Final = re.compile(r"\+?\d[\d\s().-]{6,}\d")


def check_headers(token: str, headers: Mapping[str, str]) -> str:
    """The token to send (without a pasted ``Bearer ``); refuse, at construction, a token or
    header that HTTP cannot carry (nothing is sent)."""
    token, token_problem = check_token(token)
    problems = [token_problem]
    for name, value in headers.items():
        if not name or any(c in name for c in "\r\n\x00: "):
            problems.append(f"{name!r} is not a valid header name")
        problems.append(check_header_value(f"header {name!r}", value))
    problem = next((p for p in problems if p is not None), None)
    if problem is not None:
        raise ClientStateError(problem)
    return token
