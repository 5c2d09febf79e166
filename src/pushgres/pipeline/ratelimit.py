"""A token bucket per app: at most ``rate_per_s`` sends per second, bursts up to one second."""

from __future__ import annotations

import time
from collections.abc import Callable

__all__ = ["TokenBucket"]


class TokenBucket:
    def __init__(self, rate_per_s: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate_per_s = rate_per_s
        self.capacity = max(1.0, rate_per_s)
        self._tokens = self.capacity
        self._clock = clock
        self._updated = clock()

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(self.capacity, self._tokens + (now - self._updated) * self.rate_per_s)
        self._updated = now

    def take(self, wanted: int) -> int:
        """Take up to ``wanted`` whole tokens; returns how many were granted."""
        self._refill()
        granted = min(wanted, int(self._tokens))
        self._tokens -= granted
        return granted

    def give_back(self, unused: int) -> None:
        """Return tokens taken for sends that did not happen (the claim found fewer rows)."""
        self._tokens = min(self.capacity, self._tokens + unused)

    def wait_s(self, tokens: int = 1) -> float:
        """Seconds until at least ``tokens`` tokens are available."""
        self._refill()
        return max(0.0, (tokens - self._tokens) / self.rate_per_s)
