"""How many rows one lane may claim now: stream credit, one batch of look-ahead, the rate limit.

:class:`Capacity` is pure arithmetic over three inputs: the sender's stream capacity (HTTP/2
stream slots summed over its connections), the rows this lane has in flight (claimed and not
yet answered, stragglers included), and the app's token bucket. A lane asks :meth:`grant`
before every claim and gets either a number of rows or how long to wait.

* Look-ahead: the lane may claim one batch more than the streams hold, so the next batch is
  claimed while the current one is on the wire and takes the slots its answers free up.
* Worthwhile batches: no claim for fewer than a quarter of a batch while more is coming.
* Rate limit: rows are claimed only with tokens for them; unused tokens go back.
* Pace: when the provider throttles the app's project, rows are claimed no faster than the
  pace (:class:`~pushgres.pipeline.pacing.ProjectPace`) allows, through a second bucket.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from .pacing import ProjectPace
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
        pace: ProjectPace | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._streams = streams
        self._batch_size = batch_size
        self._clock = clock
        self.bucket = TokenBucket(rate_limit_per_s, clock=clock) if rate_limit_per_s else None
        self.pace = pace
        self._paced: TokenBucket | None = None
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
        # Claim only what the rate limit and the pace let us send now, in worthwhile batches.
        taken: list[tuple[TokenBucket, int]] = []
        for bucket in (self.bucket, self._pace_bucket()):
            if bucket is None:
                continue
            enough = min(wanted, floor, int(bucket.capacity))
            granted = bucket.take(wanted)
            if granted < enough:
                bucket.give_back(granted)
                for earlier, n in taken:
                    earlier.give_back(n)
                return Grant(0, bucket.wait_s(enough))
            taken.append((bucket, granted))
            wanted = granted
        for bucket, n in taken:
            if n > wanted:
                bucket.give_back(n - wanted)
        self.in_flight += wanted
        self.batches += 1
        return Grant(wanted)

    def unused(self, rows: int) -> None:
        """A claim found ``rows`` fewer than granted: their slots and tokens return."""
        self.in_flight -= rows
        if rows:
            for bucket in (self.bucket, self._paced):
                if bucket is not None:
                    bucket.give_back(rows)

    @property
    def pace_per_s(self) -> float | None:
        """The pace the provider's throttling set (None: not paced)."""
        return self.pace.current() if self.pace is not None else None

    def _pace_bucket(self) -> TokenBucket | None:
        rate = self.pace_per_s
        if rate is None:
            self._paced = None
            return None
        if self._paced is None:
            self._paced = TokenBucket(rate, clock=self._clock)
        else:
            self._paced.rate_per_s = rate
            self._paced.capacity = max(1.0, rate)
        return self._paced

    def answered(self, rows: int) -> None:
        """``rows`` of a batch have their answers (or will never be sent): slots return."""
        self.in_flight -= rows

    def batch_done(self) -> None:
        self.batches -= 1
