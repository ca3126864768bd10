"""``-v`` and ``--log-file``: the package's log lines, with no secret and no whole number."""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator, Sequence

from .._secrets import mask_phones_in
from ._common import UsageError, os_error_text

__all__ = ["logging_to"]


class _LogScrubber(logging.Filter):
    """No secret and no whole phone number reaches a log line, whoever wrote it."""

    def __init__(self, secrets: Sequence[str]) -> None:
        super().__init__()
        self._secrets = [secret for secret in secrets if secret]

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg, record.args = self._scrub(record.getMessage()), None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self._scrub(record.exc_text)
        return True

    def _scrub(self, text: str) -> str:
        text = mask_phones_in(text)
        for secret in self._secrets:
            text = text.replace(secret, "[redacted]")
        return text


@contextlib.contextmanager
def logging_to(verbose: int, log_file: str | None, secrets: Sequence[str]) -> Iterator[None]:
    """``-v`` (INFO) / ``-vv`` (DEBUG) on stderr, ``--log-file`` at DEBUG: the
    ``proactive_async`` logger's lines, the secrets redacted and phone numbers masked."""
    logger = logging.getLogger("proactive_async")
    handlers: list[logging.Handler] = []
    formatter = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    if verbose:
        handler: logging.Handler = logging.StreamHandler(sys.stderr)
        handler.setLevel(logging.INFO if verbose == 1 else logging.DEBUG)
        handlers.append(handler)
    if log_file is not None:
        try:
            handler = logging.FileHandler(log_file, encoding="utf-8")
        except OSError as exc:
            raise UsageError(f"--log-file: {os_error_text(exc)}") from exc
        handler.setLevel(logging.DEBUG)
        handlers.append(handler)
    level = logger.level
    for handler in handlers:
        handler.setFormatter(formatter)
        handler.addFilter(_LogScrubber(secrets))
        logger.addHandler(handler)
    if handlers:
        logger.setLevel(min(handler.level for handler in handlers))
    try:
        yield
    finally:
        for handler in handlers:
            logger.removeHandler(handler)
            handler.close()
        logger.setLevel(level)
