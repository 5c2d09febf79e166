"""Quota pacing: AIMD on an app's rate when its project is throttled; a throttled device held
back, then recovering. A manual clock moves time."""

from __future__ import annotations

import datetime as dt

from pushgres.models import Action, ClaimedRow, Outcome
from pushgres.pipeline.capacity import Capacity
from pushgres.pipeline.pacing import DevicePacing, Pacing, ProjectPace
from pushgres.testing import MemoryClaim, MemoryStore

NOW = dt.datetime(2026, 7, 1, tzinfo=dt.UTC)
SENT = Outcome(action=Action.SENT, provider_status=200)
QUOTA = Outcome(action=Action.WAIT, provider_status=429, reason="QUOTA_EXCEEDED")
DEVICE = Outcome(action=Action.WAIT, provider_status=429, reason="TooManyRequests")


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def rows(n: int, token: str = "t") -> list[ClaimedRow]:
    return [
        ClaimedRow.fresh(
            id=i, app="a", platform="fcm", device_token=f"{token}{i}", payload="{}", now=NOW
        )
        for i in range(n)
    ]


def test_a_throttled_project_halves_its_rate_then_recovers_additively() -> None:
    clock = Clock()
    pace = ProjectPace(clock=clock)
    for _ in range(4):  # 1,000 answers a second
        clock.t += 0.5
        pace.answered(500, 0)
    assert pace.current() is None
    clock.t += 0.5
    pace.answered(500, 40)
    assert pace.current() == 500.0  # half the measured 1,000/s
    pace.answered(500, 40)  # the same burst: one decrease per half second at most
    assert pace.current() == 500.0
    clock.t += 1.0
    pace.answered(100, 10)
    assert pace.current() == 260.0  # (500 + 20 recovered in that second) / 2
    clock.t += 5.0
    assert pace.current() == 260.0 + 5 * 20.0
    clock.t += 60.0
    assert pace.current() is None  # back to the rate it was throttled at: lifted
    assert pace.decreases == 2


def test_capacity_claims_no_faster_than_the_pace() -> None:
    clock = Clock()
    pace = ProjectPace(clock=clock)
    capacity = Capacity(lambda: 1000, batch_size=500, pace=pace, clock=clock)
    assert capacity.grant().rows == 500
    capacity.answered(500)
    capacity.batch_done()
    pace.rate, pace._peak = 100.0, 1000.0  # throttled to 100/s
    grant = capacity.grant()
    assert grant.rows == 100  # one second's worth of tokens
    capacity.answered(100)
    capacity.batch_done()
    grant = capacity.grant()
    assert grant.rows == 0 and grant.wait_s is not None and grant.wait_s > 0
    clock.t += 1.0
    assert 0 < capacity.grant().rows <= 150  # the pace has grown a little meanwhile


async def test_a_throttled_device_waits_and_recovers() -> None:
    clock = Clock()
    devices = DevicePacing(clock=clock, base_s=5.0, max_s=60.0)
    pacing = Pacing({"TooManyRequests": "device", "QUOTA_EXCEEDED": "project"}, devices=devices)
    batch = rows(3)
    pacing.answered(batch, [DEVICE, SENT, None])
    assert len(devices) == 1
    later = rows(3)  # the same tokens again
    keep, settled = await devices.sift(later, NOW, MemoryClaim([], MemoryStore()))
    assert [r.id for r in keep] == [1, 2]
    (held,) = settled
    assert held.requeue is not None and held.requeue.deferred
    assert held.requeue.delay_s == 5.0 and held.requeue.attempts == 0
    assert held.requeue.reason == "TooManyRequests: device paced for 5s"
    # Throttled again: the penalty doubles, up to the most.
    pacing.answered(batch[:1], [DEVICE])
    pacing.answered(batch[:1], [DEVICE])
    pacing.answered(batch[:1], [DEVICE])
    pacing.answered(batch[:1], [DEVICE])
    _, settled = await devices.sift(rows(1), NOW, MemoryClaim([], MemoryStore()))
    assert settled[0].requeue is not None and settled[0].requeue.delay_s == 60.0
    clock.t += 61
    keep, settled = await devices.sift(rows(1), NOW, MemoryClaim([], MemoryStore()))
    assert len(keep) == 1 and not settled and len(devices) == 0
    # Accepted sends halve the penalty until it is forgotten.
    for _ in range(4):
        pacing.answered(batch[:1], [SENT])
    assert not devices.any
    # A project throttle does not pace devices.
    pacing.answered(batch, [QUOTA, QUOTA, SENT])
    assert not devices.any and pacing.project.decreases == 1


def test_the_device_map_is_bounded() -> None:
    clock = Clock()
    devices = DevicePacing(clock=clock, max_devices=3)
    for token in "abcde":
        devices.throttled(token, None)
    assert len(devices) == 3


def test_a_burst_after_idle_is_paced_from_its_own_rate() -> None:
    clock = Clock()
    pace = ProjectPace(clock=clock)
    clock.t += 0.5
    pace.answered(500, 0)
    clock.t += 3600.0  # an idle hour
    pace.answered(500, 0)
    clock.t += 0.25
    pace.answered(500, 200)
    rate = pace.current()
    assert rate is not None and rate > 100  # not the idle hour's average
    clock.t += 1.0
    assert pace.current() is not None  # still paced a second later
