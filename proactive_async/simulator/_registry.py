"""The simulators serving in this process, by base URL, with the event loop serving each.

Read by the SDK's client (only when this module was imported: a process without a simulator
pays nothing) to tell a slow simulator from one whose loop is blocked by the very call that
waits for it, and to say so instead of timing out.
"""

from __future__ import annotations

import asyncio

__all__ = ["SERVING"]

SERVING: dict[str, asyncio.AbstractEventLoop] = {}
"""``http://127.0.0.1:40123`` -> the loop serving it, while it serves."""
