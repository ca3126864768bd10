"""proactive-async: an asyncio SDK for the Proactive Conversation API."""
