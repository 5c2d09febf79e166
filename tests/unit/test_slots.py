"""The daemon's batch slots, shared by weight between lanes that want more than there is."""

from __future__ import annotations

import asyncio

import pytest

from pushgres.pipeline.slots import FairSlots


async def test_an_idle_lanes_share_goes_to_the_busy_one() -> None:
    slots = FairSlots(4)
    a = slots.lane("a")
    slots.lane("b")
    for _ in range(4):
        assert await asyncio.wait_for(a.acquire(), 1)
    assert slots.held("a") == 4


async def test_freed_slots_go_to_the_lane_furthest_below_its_weighted_share() -> None:
    slots = FairSlots(4)
    campaign, other = slots.lane("campaign", 1.0), slots.lane("other", 3.0)
    for _ in range(4):
        await campaign.acquire()
    # Both want more from now on: each waits for a slot, and gives it back when done.
    granted: list[str] = []

    async def want(name: str, handle: object, n: int) -> None:
        for _ in range(n):
            await handle.acquire()  # type: ignore[attr-defined]
            granted.append(name)

    tasks = [
        asyncio.create_task(want("campaign", campaign, 6)),
        asyncio.create_task(want("other", other, 3)),
    ]
    await asyncio.sleep(0)
    for _ in range(4):  # the campaign's four batches end, one by one
        campaign.release()
        await asyncio.sleep(0)
    # "other" (weight 3) gets three of the four freed slots, the campaign one.
    assert granted.count("other") == 3 and granted.count("campaign") == 1
    assert slots.held("other") == 3 and slots.held("campaign") == 1
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def test_a_cancelled_wait_takes_no_slot() -> None:
    slots = FairSlots(1)
    a, b = slots.lane("a"), slots.lane("b")
    await a.acquire()
    waiter = asyncio.create_task(b.acquire())
    await asyncio.sleep(0)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    a.release()
    assert slots.held("b") == 0
    assert await asyncio.wait_for(a.acquire(), 1)


def test_at_least_one_slot() -> None:
    with pytest.raises(ValueError):
        FairSlots(0)
