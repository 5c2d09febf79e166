"""The delivery journal: the sends the provider accepted, written down within milliseconds.

A batch's outcomes become durable only when its claim transaction commits, after its last
answer; a kill -9 before that rolls every row of the batch back into the queue, the accepted
ones too. The lanes hand each accepted row to :class:`DeliveryJournal` as its answer arrives
(:meth:`record`, under its batch's random key); a free writer (two run) puts what has
gathered into ``pushgres.delivered`` (one row per batch: the ids and their attempts) in one
transaction, each write taking what came during the other's. A batch waits for its
acceptances to be written (:meth:`settled`) before it commits, and its commit deletes its
rows there. A claim that finds a row there records it sent instead of sending it again
(``NotSendable``). So after a kill only the notifications in flight, and those answered but
not yet written down (:attr:`unwritten`), are sent again.

The journal is a safeguard, never a condition of delivery: when the database refuses a write
the acceptances are dropped from it (the batch still commits its outcomes), and what it holds
is bounded (:data:`MAX_PENDING`); beyond that new acceptances are not written down.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Final, Protocol

from ..exceptions import StoreError
from ..models import ClaimedRow

__all__ = ["MAX_PENDING", "WRITERS", "DeliveryJournal", "JournalStore"]

logger = logging.getLogger(__name__)

MAX_PENDING: Final = 100_000  # accepted rows waiting to be written, at most
WRITERS: Final = 2  # writes in flight at once (each on a pooled connection of its own)


class JournalStore(Protocol):
    async def write_delivered(
        self, batches: Sequence[tuple[int, list[int], list[int]]]
    ) -> None: ...


class DeliveryJournal:
    """Accepted rows in, ``pushgres.delivered`` rows out, one writer (:meth:`run`)."""

    def __init__(self, store: JournalStore) -> None:
        self._store = store
        self._pending: dict[int, tuple[list[int], list[int]]] = {}
        self._size = 0
        self._recorded = 0  # rows handed to record(), ever
        self._taken = 0  # of those, taken by a writer
        self._done = 0  # of those, written (or given up on), in order
        self._ended: dict[int, int] = {}  # writes ended out of order: first row -> past last
        self._failing = False
        self._wake = asyncio.Event()
        self._progress = asyncio.Event()
        self.dropped = 0
        """Accepted rows not written down: the database refused the write, or too many waited."""

    @property
    def unwritten(self) -> int:
        """Accepted rows recorded and not yet written down (or given up on): what a kill now
        would send again beside the streams in flight."""
        return self._recorded - self._done

    def record(self, batch: int, row: ClaimedRow) -> None:
        """``row``'s current attempt, in the batch keyed ``batch``, was accepted."""
        if self._size >= MAX_PENDING:
            self.dropped += 1
            return
        entry = self._pending.get(batch)
        if entry is None:
            entry = self._pending[batch] = ([], [])
        entry[0].append(row.id)
        entry[1].append(row.attempts + 1)
        self._size += 1
        self._recorded += 1
        self._wake.set()

    async def settled(self) -> None:
        """Return once everything recorded so far is written (or given up on)."""
        mark = self._recorded
        while self._done < mark:
            self._progress.clear()
            await self._progress.wait()

    async def run(self) -> None:
        """Run :data:`WRITERS` writers, each writing what has gathered when it is free; until
        cancelled. A second writer takes what arrives during the first's write, so an answer
        waits for one write, not for the end of the one before it as well."""
        async with asyncio.TaskGroup() as tg:
            for n in range(WRITERS):
                tg.create_task(self._writer(), name=f"delivery-journal-writer-{n}")

    async def _writer(self) -> None:
        while True:
            await self._wake.wait()
            if not self._pending:
                self._wake.clear()
                continue
            pending, size = self._pending, self._size
            self._pending, self._size = {}, 0
            self._wake.clear()
            first = self._taken
            self._taken += size
            try:
                await self._store.write_delivered([(k, *v) for k, v in pending.items()])
                self._failing = False
            except StoreError as exc:
                self.dropped += size
                if not self._failing and not exc.unavailable:  # the store logs an outage
                    logger.warning(
                        "accepted sends not written down (%s): a kill now could send them twice",
                        exc,
                        extra={"action": "delivery_journal"},
                    )
                self._failing = True
            finally:
                # Writes end in any order; done advances over those ended without a gap.
                self._ended[first] = first + size
                while self._done in self._ended:
                    self._done = self._ended.pop(self._done)
                self._progress.set()
