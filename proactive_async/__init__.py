"""proactive-async: an asyncio SDK for the Proactive Conversation (WhatsApp) API.

Usage::

    async with AsyncClient(base_url="https://api.example.com", token=TOKEN) as client:
        conversations = await client.create_proactive_conversation(
            channel_id=1, bot_id=2, conversation_template_id=3, recipient=["+5511999990000"]
        )
"""

import logging as _logging

from ._campaign import Campaign
from ._client import ApiResponse, AsyncClient
from ._config import Limits, Timeout
from ._errors import (
    AuthenticationError,
    BadRequestError,
    CircuitOpenError,
    ClientStateError,
    ConflictError,
    ConnectError,
    ConnectionLostError,
    ConnectTimeout,
    DecodingError,
    HTTPStatusError,
    InputError,
    JournalError,
    JournalMismatchError,
    NameResolutionError,
    NotFoundError,
    PermissionDeniedError,
    ProactiveError,
    ProblemDetails,
    RateLimitError,
    ReadTimeout,
    RedirectError,
    ResponseTooLargeError,
    ServerError,
    ServiceUnavailableError,
    TLSError,
    TransportError,
    UnprocessableEntityError,
)
from ._hooks import OutcomeHook, RetryDetails, RetryHook, ThrottleDetails, ThrottleHook
from ._models import (
    AgentType,
    Conversation,
    ConversationEvaluationStatus,
    ConversationIntegrationType,
    ConversationType,
    ConversationVariable,
    Message,
    ProactiveConversationFields,
    ProactiveConversationRequest,
    Tag,
    parse_datetime,
    parse_timespan,
)
from ._options import CampaignOptions
from ._records import Outcome, OutcomeError, OutcomeStatus, Record, Target
from ._report import CampaignSummary
from ._retry import RetryPolicy, is_safe_to_retry, parse_retry_after
from ._secrets import mask_phone
from ._sync import Client, ClientOptions
from ._transport_api import AsyncTransport, TransportRequest, TransportResponse
from ._version import __version__
from .journal import Journal, open_journal
from .ratelimit import (
    AdaptiveTuning,
    RateLimit,
    RateLimitBackend,
    SharedRateLimit,
    default_limit_key,
)
from .settings import SettingsError
from .settings import setup_logging as _setup_logging

__all__ = [
    "AdaptiveTuning",
    "AgentType",
    "ApiResponse",
    "AsyncClient",
    "AsyncTransport",
    "AuthenticationError",
    "BadRequestError",
    "Campaign",
    "CampaignOptions",
    "CampaignSummary",
    "CircuitOpenError",
    "Client",
    "ClientOptions",
    "ClientStateError",
    "ConflictError",
    "ConnectError",
    "ConnectTimeout",
    "ConnectionLostError",
    "Conversation",
    "ConversationEvaluationStatus",
    "ConversationIntegrationType",
    "ConversationType",
    "ConversationVariable",
    "DecodingError",
    "HTTPStatusError",
    "InputError",
    "Journal",
    "JournalError",
    "JournalMismatchError",
    "Limits",
    "Message",
    "NameResolutionError",
    "NotFoundError",
    "Outcome",
    "OutcomeError",
    "OutcomeHook",
    "OutcomeStatus",
    "PermissionDeniedError",
    "ProactiveConversationFields",
    "ProactiveConversationRequest",
    "ProactiveError",
    "ProblemDetails",
    "RateLimit",
    "RateLimitBackend",
    "RateLimitError",
    "ReadTimeout",
    "Record",
    "RedirectError",
    "ResponseTooLargeError",
    "RetryDetails",
    "RetryHook",
    "RetryPolicy",
    "ServerError",
    "ServiceUnavailableError",
    "SettingsError",
    "SharedRateLimit",
    "TLSError",
    "Tag",
    "Target",
    "ThrottleDetails",
    "ThrottleHook",
    "Timeout",
    "TransportError",
    "TransportRequest",
    "TransportResponse",
    "UnprocessableEntityError",
    "__version__",
    "default_limit_key",
    "is_safe_to_retry",
    "mask_phone",
    "open_journal",
    "parse_datetime",
    "parse_retry_after",
    "parse_timespan",
]

# A library never prints on its own: with no logging configured, retry warnings go nowhere,
# unless PROACTIVE_LOG asks for them (as OPENAI_LOG does).
_logging.getLogger("proactive_async").addHandler(_logging.NullHandler())
_setup_logging()
