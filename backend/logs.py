"""Logging for backend processes: one stderr handler, level from LOG_LEVEL, secrets masked.

The backend never formats secrets into messages; the redacting filter is a second line of defence for
messages from libraries (e.g. an exception text that quotes a URL or a header).
"""

from __future__ import annotations

import logging
import sys

from .settings import Settings

_FORMAT = "%(asctime)s %(levelname)s [%(process)d] %(name)s: %(message)s"
_MASK = "***"


class RedactingFilter(logging.Filter):
    """Replaces every occurrence of the given secret strings in a record's final message by ``***``."""

    def __init__(self, secrets: list[str]) -> None:
        super().__init__()
        self._secrets = sorted({s for s in secrets if s}, key=len, reverse=True)

    def filter(self, record: logging.LogRecord) -> bool:
        if not self._secrets:
            return True
        message = record.getMessage()
        redacted = message
        for secret in self._secrets:
            redacted = redacted.replace(secret, _MASK)
        if record.exc_info and record.exc_text is None:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            for secret in self._secrets:
                record.exc_text = record.exc_text.replace(secret, _MASK)
        if redacted != message:
            record.msg, record.args = redacted, None
        return True


def configure_logging(settings: Settings) -> None:
    """Send the root logger to stderr at ``settings.log_level`` with secrets masked (idempotent)."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_litesam", False):
            root.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler._litesam = True
    handler.setFormatter(logging.Formatter(_FORMAT))
    handler.addFilter(RedactingFilter(settings.secret_values()))
    root.addHandler(handler)
    root.setLevel(settings.log_level)
