"""``repr(Campaign)`` shows its rate readably at any size (issue 18 §4)."""

from __future__ import annotations

import pytest

from proactive_async import AsyncClient, Campaign, ProactiveConversationRequest

TEMPLATE = ProactiveConversationRequest(channel_id=1, bot_id=2, conversation_template_id=3)


@pytest.mark.parametrize(
    ("rate", "shown"),
    [(1e6, "rate=1,000,000/s"), (2500.0, "rate=2,500/s"), (50, "rate=50/s"), (0.5, "rate=0.5/s")],
)
def test_the_rate_in_a_campaigns_repr_is_written_out_not_in_e_notation(
    rate: float, shown: str
) -> None:
    client = AsyncClient("http://127.0.0.1:1", "token-123456")
    text = repr(Campaign(client, template=TEMPLATE, targets=["+5511999990001"], rate=rate))
    assert shown in text and "e+" not in text
