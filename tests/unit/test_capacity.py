"""Capacity arithmetic (look-ahead, worthwhile batches, batch cap) and the token bucket (pure)."""

from __future__ import annotations

import pytest

from pushgres.pipeline.capacity import LOOKAHEAD_BATCHES, MAX_BATCHES_PER_LANE, Capacity, Grant
from pushgres.pipeline.ratelimit import TokenBucket


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def grants(capacity: Capacity, limit: int = 100) -> list[int]:
    """Grant until refused; the rows of each grant."""
    rows = []
    for _ in range(limit):
        grant = capacity.grant()
        if not grant.rows:
            break
        rows.append(grant.rows)
    return rows


@pytest.mark.parametrize(
    ("streams", "batch_size", "expected"),
    [
        (100, 50, [50, 50, 50]),  # the streams' two batches and one of look-ahead
        (10, 50, [20]),  # a batch bigger than the streams: streams + what they hold
        (64, 50, [50, 50, 14]),  # 64 + 50 in flight at most
        (1, 50, [2]),
    ],
)
def test_lookahead_is_the_streams_plus_one_batch(
    streams: int, batch_size: int, expected: list[int]
) -> None:
    capacity = Capacity(lambda: streams, batch_size=batch_size)
    assert LOOKAHEAD_BATCHES == 1
    assert grants(capacity) == expected
    assert capacity.in_flight == streams + min(streams, batch_size)
    assert capacity.grant() == Grant(0, None)  # wait until capacity changes


def test_no_claim_for_less_than_a_quarter_batch() -> None:
    capacity = Capacity(lambda: 100, batch_size=100)
    assert grants(capacity) == [100, 100]
    capacity.answered(24)  # 24 free slots: fewer than 100 / 4
    assert capacity.grant() == Grant(0, None)
    capacity.answered(1)
    assert capacity.grant() == Grant(25)
    assert capacity.in_flight == 200


def test_the_quarter_floor_follows_the_streams_and_is_at_least_one() -> None:
    streams = 8
    capacity = Capacity(lambda: streams, batch_size=100)
    assert grants(capacity) == [16]  # per batch: the 8 streams; floor 2
    capacity.answered(1)
    assert capacity.grant().rows == 0
    capacity.answered(1)
    assert capacity.grant() == Grant(2)
    streams = 3  # floor 3 // 4 = 0, so 1
    capacity.answered(11)
    assert capacity.in_flight == 5
    assert capacity.grant() == Grant(1)


def test_streams_are_read_at_every_grant() -> None:
    streams = 0
    capacity = Capacity(lambda: streams, batch_size=10)
    assert capacity.grant() == Grant(0, None)  # no connection: no claim
    streams = 5
    assert capacity.grant() == Grant(10)


def test_at_most_max_batches_per_lane() -> None:
    capacity = Capacity(lambda: 1_000_000, batch_size=10)
    assert grants(capacity) == [10] * MAX_BATCHES_PER_LANE
    assert capacity.grant() == Grant(0, None)
    capacity.answered(10)  # slots back, but the batch is not written yet
    assert capacity.grant().rows == 0
    capacity.batch_done()
    assert capacity.grant() == Grant(10)


def test_unused_and_answered_rows_bring_the_accounting_back_to_zero() -> None:
    capacity = Capacity(lambda: 100, batch_size=50, rate_limit_per_s=1000.0, clock=FakeClock())
    first, second = capacity.grant(), capacity.grant()
    assert (first.rows, second.rows, capacity.batches) == (50, 50, 2)
    capacity.unused(20)  # the first claim found 30 rows
    capacity.answered(5)  # settled by a stage
    capacity.answered(23)  # answered
    capacity.answered(2)  # two stragglers, answered late
    capacity.batch_done()
    capacity.unused(50)  # the second found none
    capacity.batch_done()
    assert (capacity.in_flight, capacity.batches) == (0, 0)
    assert grants(capacity) == [50, 50, 50]


def test_rate_limit_grants_only_the_tokens_there_are() -> None:
    clock = FakeClock()
    capacity = Capacity(lambda: 1000, batch_size=100, rate_limit_per_s=50.0, clock=clock)
    assert capacity.grant() == Grant(50)  # a one-second burst
    # No tokens: wait for a worthwhile batch (a quarter batch, 25 rows: half a second).
    refused = capacity.grant()
    assert refused.rows == 0 and refused.wait_s == pytest.approx(0.5)
    assert capacity.in_flight == 50 and capacity.batches == 1
    clock.now += 0.3  # 15 tokens: not enough, and they stay in the bucket
    refused = capacity.grant()
    assert refused.rows == 0 and refused.wait_s == pytest.approx(0.2)
    clock.now += 0.2
    assert capacity.grant() == Grant(25)
    clock.now += 10  # the bucket holds one second at most
    assert capacity.grant() == Grant(50)


def test_a_claim_finding_fewer_rows_gives_its_tokens_back() -> None:
    clock = FakeClock()
    capacity = Capacity(lambda: 1000, batch_size=100, rate_limit_per_s=100.0, clock=clock)
    assert capacity.grant() == Grant(100)
    capacity.unused(90)  # found 10 rows
    capacity.batch_done()
    assert capacity.grant() == Grant(90)
    capacity.answered(90)  # answered rows keep their tokens spent
    capacity.batch_done()
    assert capacity.grant().rows == 0


def test_a_slow_rate_grants_single_rows() -> None:
    clock = FakeClock()
    capacity = Capacity(lambda: 1000, batch_size=100, rate_limit_per_s=0.5, clock=clock)
    assert capacity.grant() == Grant(1)
    refused = capacity.grant()
    assert refused.rows == 0 and refused.wait_s == pytest.approx(2.0)
    clock.now += 2.0
    assert capacity.grant() == Grant(1)


def test_token_bucket_refills_at_its_rate_up_to_one_second() -> None:
    clock = FakeClock()
    bucket = TokenBucket(10.0, clock=clock)
    assert bucket.take(4) == 4
    assert bucket.take(100) == 6
    assert bucket.wait_s(5) == pytest.approx(0.5)
    clock.now += 0.25
    assert bucket.take(100) == 2  # 2.5 tokens: whole ones only
    clock.now += 60
    assert bucket.take(100) == 10
    bucket.give_back(50)
    assert bucket.take(100) == 10
