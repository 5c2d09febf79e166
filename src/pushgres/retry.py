"""Retry timing: exponential backoff with full jitter, and ``Retry-After`` parsing.

Pure functions; the caller owns the random generator so tests are reproducible.
"""

from __future__ import annotations

import email.utils
import random
import time

__all__ = ["backoff_s", "parse_retry_after"]

MAX_RETRY_AFTER_S = 24 * 3600.0


def backoff_s(attempt: int, *, base_s: float, max_s: float, rng: random.Random) -> float:
    """Full-jitter exponential backoff: uniform in [0, min(max_s, base_s * 2**(attempt-1))]."""
    ceiling = min(max_s, base_s * (2 ** max(0, min(attempt - 1, 30))))
    return rng.uniform(0, ceiling)


def parse_retry_after(value: bytes | str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header: delta-seconds or an HTTP date."""
    if value is None:
        return None
    text = value.decode("latin-1") if isinstance(value, bytes) else value
    text = text.strip()
    if not text:
        return None
    if text.isdigit():
        return min(float(text), MAX_RETRY_AFTER_S)
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    current = time.time() if now is None else now
    return min(max(0.0, when.timestamp() - current), MAX_RETRY_AFTER_S)
