"""Structured, redacted logging.

One line per record: time, level, logger, message, then the record's ``extra`` fields as
``key=value``. Device tokens are shown only as a short prefix (:func:`short_token`); JWTs,
OAuth tokens and keys are never passed to the logger at all.
"""

from __future__ import annotations

import logging
import sys

__all__ = ["KeyValueFormatter", "setup_logging", "short_token"]

_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
}


def short_token(token: str) -> str:
    """A device token truncated for logs: its first 8 characters and its length."""
    return f"{token[:8]}…({len(token)})"


class KeyValueFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extras = [f"{k}={v}" for k, v in vars(record).items() if k not in _STANDARD]
        return f"{line} {' '.join(extras)}" if extras else line


def setup_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(KeyValueFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
