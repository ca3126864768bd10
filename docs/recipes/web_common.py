"""What the web recipes share: the message they send, and how an SDK error becomes an answer.

Copy it beside ``fastapi_app.py``, ``flask_app.py`` or ``django_app.py``. The message's
channel, bot and template come from the environment (``PROACTIVE_CHANNEL_ID``,
``PROACTIVE_BOT_ID``, ``PROACTIVE_TEMPLATE_ID``: read by these recipes, not by the SDK).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

from proactive_async import (
    BadRequestError,
    ClientStateError,
    ProactiveConversationRequest,
    ProactiveError,
    RateLimitError,
    ServiceUnavailableError,
    UnprocessableEntityError,
    is_safe_to_retry,
)

__all__ = ["ErrorAnswer", "answer_for", "channel_id_from_env", "template_from_env"]

RESENT_DUPLICATES = (
    "the API may have created the conversation before the failure: resending may send "
    "the message twice; check before retrying"
)


def channel_id_from_env() -> int:
    return int(os.environ["PROACTIVE_CHANNEL_ID"])


def template_from_env() -> ProactiveConversationRequest:
    """The message every request of the app sends, but for its recipient and variables."""
    return ProactiveConversationRequest(
        channel_id=channel_id_from_env(),
        bot_id=int(os.environ["PROACTIVE_BOT_ID"]),
        conversation_template_id=int(os.environ["PROACTIVE_TEMPLATE_ID"]),
    )


@dataclass(frozen=True)
class ErrorAnswer:
    """An HTTP answer for a failed send: status, JSON body, headers."""

    status: int
    body: dict[str, object]
    headers: dict[str, str] = field(default_factory=dict)


def answer_for(exc: ProactiveError) -> ErrorAnswer:
    """The answer to give the app's caller when a send raised ``exc``.

    - may have been processed (a 500/502/504, a read timeout, a lost connection): 502, with
      a note; the caller must not resend blindly.
    - 429 from the API (after the SDK's own retries): 429 with its ``Retry-After``.
    - 503, or the API unreachable: 503 (not sent; safe to retry later).
    - 400 / 422 (the API refused the request, e.g. a bad number): 422 with its errors.
    - a misused client (our bug): 500. Anything else (401, 403, TLS, 404...): 502, not sent.
    """
    body: dict[str, object] = {
        "detail": str(exc),  # the SDK redacts the token and masks phone numbers
        "error": exc.kind,
        "may_have_been_processed": exc.may_have_been_processed,
    }
    if exc.may_have_been_processed:
        return ErrorAnswer(502, body | {"note": RESENT_DUPLICATES})
    if is_safe_to_retry(exc):  # a 429, a 503, the API unreachable: certainly not sent
        headers = {}
        if (
            isinstance(exc, RateLimitError | ServiceUnavailableError)
            and exc.retry_after is not None
        ):
            headers["Retry-After"] = str(math.ceil(exc.retry_after))  # HTTP: whole seconds
        return ErrorAnswer(429 if isinstance(exc, RateLimitError) else 503, body, headers)
    if isinstance(exc, BadRequestError | UnprocessableEntityError):
        errors = exc.problem.errors if exc.problem is not None else {}
        return ErrorAnswer(422, body | {"errors": errors})
    if isinstance(exc, ClientStateError):
        return ErrorAnswer(500, body)
    return ErrorAnswer(502, body)
