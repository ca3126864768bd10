"""The defaults every layer shares, written once (as openai-python's ``_constants``).

A module at the bottom of the package: ``settings`` (which re-exports them) and the
distributed machinery below it both read them from here.
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "API_PATH",
    "DEFAULT_ARQ_JOBS",
    "DEFAULT_CELERY_PROCESSES",
    "DEFAULT_JOB_TIMEOUT",
    "DEFAULT_REDIS_URL",
    "DEFAULT_VISIBILITY_TIMEOUT",
    "DEFAULT_WORKER_CONCURRENCY",
]

API_PATH: Final = "/api/Conversation/proactive-conversation"
"""The one endpoint's path, below the base URL: the client posts to it, telemetry names
spans after it, the simulator serves it."""
DEFAULT_REDIS_URL: Final = "redis://127.0.0.1:6379/0"
"""Redis when none is named: the queue of arq workers and the broker of Celery ones."""
DEFAULT_ARQ_JOBS: Final = 2
"""Jobs (slices of a distributed campaign) one arq worker process runs at once when
``worker_concurrency`` is not set: two, so that one slice's tail overlaps the next one's
start; the calls in flight are ``concurrency``, over all of them."""
DEFAULT_WORKER_CONCURRENCY: Final = 32
"""Calls in flight in one worker process (arq or Celery) when ``concurrency`` is not set."""
DEFAULT_CELERY_PROCESSES: Final = 4
"""Processes of one Celery worker when ``worker_concurrency`` is not set."""
DEFAULT_JOB_TIMEOUT: Final = 300.0
"""Seconds an arq job may run; a killed worker's job runs again after this (plus 10 s)."""
DEFAULT_VISIBILITY_TIMEOUT: Final = 60
"""Seconds before Celery's Redis broker hands an unacknowledged message to another worker."""
