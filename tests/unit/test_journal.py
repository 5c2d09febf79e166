"""The delivery journal's writer, with an in-memory store."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Sequence

import pytest

from pushgres.exceptions import StoreError
from pushgres.models import ClaimedRow
from pushgres.pipeline import journal as journal_module
from pushgres.pipeline.journal import DeliveryJournal

NOW = dt.datetime(2026, 12, 6, tzinfo=dt.UTC)


def _row(n: int, attempts: int = 0) -> ClaimedRow:
    return ClaimedRow.fresh(
        id=n,
        app="app",
        platform="apns",
        device_token="aa",
        payload="{}",
        now=NOW,
        attempts=attempts,
    )


class Store:
    def __init__(self) -> None:
        self.writes: list[list[tuple[int, list[int], list[int]]]] = []
        self.fail = False
        self.gate = asyncio.Event()
        self.gate.set()

    async def write_delivered(self, batches: Sequence[tuple[int, list[int], list[int]]]) -> None:
        await self.gate.wait()
        if self.fail:
            raise StoreError("refused")
        self.writes.append(list(batches))


async def test_what_gathers_during_a_write_goes_in_the_next_one() -> None:
    store = Store()
    journal = DeliveryJournal(store)
    writer = asyncio.get_running_loop().create_task(journal.run())
    try:
        store.gate.clear()
        journal.record(7, _row(1))
        await asyncio.sleep(0)  # the writer takes row 1 and waits on the database
        journal.record(7, _row(2, attempts=2))
        journal.record(9, _row(3))
        journal.record(7, _row(4))
        store.gate.set()
        await asyncio.wait_for(journal.settled(), 1)
    finally:
        writer.cancel()
    # One row per batch and write; the attempt numbers are those sent.
    assert store.writes == [[(7, [1], [1])], [(7, [2, 4], [3, 1]), (9, [3], [1])]]


async def test_settled_waits_only_for_what_was_recorded_before_it() -> None:
    store = Store()
    journal = DeliveryJournal(store)
    writer = asyncio.get_running_loop().create_task(journal.run())
    try:
        journal.record(1, _row(1))
        waiting = asyncio.ensure_future(journal.settled())
        await asyncio.wait_for(waiting, 1)
        assert store.writes == [[(1, [1], [1])]]
    finally:
        writer.cancel()


async def test_a_refused_write_drops_its_rows_and_releases_the_batch() -> None:
    store = Store()
    store.fail = True
    journal = DeliveryJournal(store)
    writer = asyncio.get_running_loop().create_task(journal.run())
    try:
        journal.record(1, _row(1))
        journal.record(1, _row(2))
        await asyncio.wait_for(journal.settled(), 1)  # a batch never waits on a failure
        assert journal.dropped == 2
        store.fail = False
        journal.record(2, _row(3))
        await asyncio.wait_for(journal.settled(), 1)
    finally:
        writer.cancel()
    assert store.writes == [[(2, [3], [1])]]


async def test_it_holds_a_bounded_number_of_rows(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(journal_module, "MAX_PENDING", 2)
    journal = DeliveryJournal(Store())
    for n in range(5):
        journal.record(1, _row(n))
    assert journal.dropped == 3
