"""The delivery journal's writer, with an in-memory store."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
from collections.abc import AsyncIterator, Callable, Sequence

import pytest

from pushgres.exceptions import StoreError
from pushgres.models import ClaimedRow
from pushgres.pipeline import journal as journal_module
from pushgres.pipeline.journal import WRITERS, DeliveryJournal

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
        self.gates: list[asyncio.Event] = []  # when set, the nth write waits on the nth gate
        self.calls = 0

    async def write_delivered(self, batches: Sequence[tuple[int, list[int], list[int]]]) -> None:
        self.calls += 1
        n = self.calls
        await (self.gates[n - 1] if n <= len(self.gates) else self.gate).wait()
        if self.fail:
            raise StoreError("refused")
        self.writes.append(list(batches))


async def until(condition: Callable[[], bool]) -> None:
    for _ in range(1000):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError("the writers never got there")


@contextlib.asynccontextmanager
async def running(journal: DeliveryJournal) -> AsyncIterator[None]:
    writer = asyncio.get_running_loop().create_task(journal.run())
    try:
        yield
    finally:
        writer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await writer


async def test_what_arrives_during_a_write_goes_to_the_other_writer() -> None:
    store = Store()
    journal = DeliveryJournal(store)
    async with running(journal):
        store.gate.clear()
        journal.record(7, _row(1))
        await until(lambda: store.calls == 1)  # one writer takes row 1, waits on the database
        journal.record(7, _row(2, attempts=2))
        journal.record(9, _row(3))
        await until(lambda: store.calls == 2)  # the other takes rows 2 and 3 at once
        journal.record(7, _row(4))  # and this waits for a free writer
        await asyncio.sleep(0.01)
        assert store.calls == WRITERS == 2
        assert journal.unwritten == 4
        store.gate.set()
        await asyncio.wait_for(journal.settled(), 1)
        assert journal.unwritten == 0
    # One row per batch and write; the attempt numbers are those sent.
    assert sorted(store.writes) == sorted(
        [[(7, [1], [1])], [(7, [2], [3]), (9, [3], [1])], [(7, [4], [1])]]
    )


async def test_settled_waits_for_an_earlier_write_that_ends_after_a_later_one() -> None:
    store = Store()
    store.gates = [asyncio.Event(), asyncio.Event()]
    journal = DeliveryJournal(store)
    async with running(journal):
        journal.record(1, _row(1))
        await until(lambda: store.calls == 1)
        journal.record(2, _row(2))
        await until(lambda: store.calls == 2)
        waiting = asyncio.ensure_future(journal.settled())
        store.gates[1].set()  # the second write ends first
        await asyncio.sleep(0.01)
        assert store.writes == [[(2, [2], [1])]] and not waiting.done()
        store.gates[0].set()
        await asyncio.wait_for(waiting, 1)
        assert len(store.writes) == 2


async def test_settled_waits_only_for_what_was_recorded_before_it() -> None:
    store = Store()
    journal = DeliveryJournal(store)
    async with running(journal):
        journal.record(1, _row(1))
        waiting = asyncio.ensure_future(journal.settled())
        await asyncio.wait_for(waiting, 1)
        assert store.writes == [[(1, [1], [1])]]


async def test_a_refused_write_drops_its_rows_and_releases_the_batch() -> None:
    store = Store()
    store.fail = True
    journal = DeliveryJournal(store)
    async with running(journal):
        journal.record(1, _row(1))
        journal.record(1, _row(2))
        await asyncio.wait_for(journal.settled(), 1)  # a batch never waits on a failure
        assert journal.dropped == 2
        store.fail = False
        journal.record(2, _row(3))
        await asyncio.wait_for(journal.settled(), 1)
    assert store.writes == [[(2, [3], [1])]]


async def test_it_holds_a_bounded_number_of_rows(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(journal_module, "MAX_PENDING", 2)
    journal = DeliveryJournal(Store())
    for n in range(5):
        journal.record(1, _row(n))
    assert journal.dropped == 3
