"""What a test needs from the machine and cannot find: it skips on a developer's machine,
and fails under CI (``CI`` set), where every test is meant to run."""

from __future__ import annotations

import os
from typing import NoReturn

import pytest


def unavailable(reason: str) -> NoReturn:
    """Skip for ``reason``; under CI, fail instead: a skip there would pass unseen."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set: this test must run there)")
    pytest.skip(reason)
