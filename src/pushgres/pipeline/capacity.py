"""How many rows one lane may claim now: stream credit, one batch of look-ahead, the rate limit.

:class:`Capacity` is pure arithmetic over three inputs: the sender's stream capacity (HTTP/2
stream slots summed over its connections), the rows this lane has in flight (claimed and not
yet answered, stragglers included), and the app's token bucket. A lane asks :meth:`grant`
before every claim and gets either a number of rows or how long to wait.

* Look-ahead: the lane may claim one batch more than the streams hold, so the next batch is
  claimed while the current one is on the wire and takes the slots its answers free up.
* Worthwhile batches: no claim for fewer than a quarter of a batch while more is coming.
* Rate limit: rows are claimed only with tokens for them; unused tokens go back.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from .ratelimit import TokenBucket

__all__ = ["LOOKAHEAD_BATCHES", "MAX_BATCHES_PER_LANE", "Capacity", "Grant"]

MIN_CLAIM_FRACTION: Final = 4  # wait for at least batch_size / 4 free slots before claiming
LOOKAHEAD_BATCHES: Final = 1  # batches claimed beyond the sender's stream capacity
MAX_BATCHES_PER_LANE: Final = 8


@dataclass(frozen=True, slots=True)
class Grant:
    """``rows`` to claim now; or none, and ``wait_s`` (None: until capacity changes)."""

    rows: int
    wait_s: float | None = None


class Capacity:
    def __init__(
        self,
        streams: Callable[[], int],
        *,
        batch_size: int,
        rate_limit_per_s: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._streams = streams
        self._batch_size = batch_size
        self.bucket = TokenBucket(rate_limit_per_s, clock=clock) if rate_limit_per_s else None
        self.in_flight = 0  # rows claimed and not yet answered
        self.batches = 0  # batches claimed and not yet written

    def grant(self) -> Grant:
        """Reserve the rows of the next claim (give back what it does not find: :meth:`unused`)."""
        batch_size = self._batch_size
        streams = self._streams()
        per_batch = min(batch_size, streams)
        free = streams + per_batch * LOOKAHEAD_BATCHES - self.in_flight
        wanted = min(batch_size, free)
        floor = max(1, per_batch // MIN_CLAIM_FRACTION)
        if wanted < floor or self.batches >= MAX_BATCHES_PER_LANE:
            return Grant(0)
        bucket = self.bucket
        if bucket is not None:
            # Claim only what the rate limit lets us send now, in worthwhile batches.
            enough = min(wanted, floor, int(bucket.capacity))
            granted = bucket.take(wanted)
            if granted < enough:
                bucket.give_back(granted)
                return Grant(0, bucket.wait_s(enough))
            wanted = granted
        self.in_flight += wanted
        self.batches += 1
        return Grant(wanted)

    def unused(self, rows: int) -> None:
        """A claim found ``rows`` fewer than granted: their slots and tokens return."""
        self.in_flight -= rows
        if self.bucket is not None and rows:
            self.bucket.give_back(rows)

    def answered(self, rows: int) -> None:
        """``rows`` of a batch have their answers (or will never be sent): slots return."""
        self.in_flight -= rows

    def batch_done(self) -> None:
        self.batches -= 1
