"""One app's flow, as one lane of named stages: capacity gate → claim → stages → send → decide →
write.

:meth:`Lane.run` is the lane's claimer. It asks :class:`~pushgres.pipeline.capacity.Capacity`
how many rows it may claim *before* claiming, then hands the claim to a batch task in the
daemon's TaskGroup and goes on claiming while that batch is on the wire. A batch:

1. holds its claim transaction (``Store.claim``) while it is sent; it is claimed from the
   lane's own queue shards first (:class:`~pushgres.pipeline.shards.ShardPlan`), and each
   row the provider accepts is written down at once
   (:class:`~pushgres.pipeline.journal.DeliveryJournal`);
2. passes its rows through the lane's stages (the first settles rows that must not be sent);
3. sends the rest through the app's sender, which may return before a few stragglers are
   answered;
4. decides each answer (``decide``) and writes results, retries and dead tokens, together with
   a *lease* for each straggler (its row back in the queue, ``send_at`` past its deadline, the
   attempt counted), and commits.

The stragglers' answers come later; the lane's late writer records them
(``Store.take_back``) once their batch has committed. A straggler that never answers needs no
write: its lease runs out and the row is claimed again. A crash at any moment loses nothing:
every row is in its claim transaction, in the queue or in the results.

Observers see ``claimed``, ``sent`` and ``written`` events; the lane does no logging of its own
on the hot path.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import enum
import logging
import random
import time
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Final, Protocol

from ..config import RetryConfig
from ..exceptions import StoreError
from ..models import Action, ClaimedRow, InvalidToken, Outcome, Requeue, ResultRecord
from ..providers.base import Sender
from .capacity import Capacity
from .decide import Decision, decide
from .guardrails import CapStore
from .journal import DeliveryJournal
from .observer import Observer
from .pacing import Pacing
from .shards import ShardPlan
from .stages import Stage, run_stages

__all__ = ["BatchSlots", "Lane", "LaneSettings", "LaneStore", "wait_any"]

logger = logging.getLogger(__name__)

STORE_RETRY_S: Final = 2.0
LATE_FLUSH_S: Final = 0.05  # late answers are written in small batches, this often at most
LEASE_MARGIN_S: Final = 2.0  # a straggler's lease outlives its deadline by this much


class ClaimHandle(CapStore, Protocol):
    rows: list[ClaimedRow]
    shards_read: int

    async def write(
        self,
        results: Sequence[ResultRecord],
        requeues: Sequence[Requeue],
        invalid_tokens: Sequence[InvalidToken],
        delivered_batch: int | None = None,
    ) -> None: ...


class BatchSlots(Protocol):
    """The lane's share of the daemon's batch slots (``slots.LaneSlots``, or a semaphore)."""

    async def acquire(self) -> bool: ...

    def release(self) -> None: ...


class LaneStore(Protocol):
    """What a lane needs of the store (``db.store.Store``; ``testing.MemoryStore``)."""

    def claim(
        self, app: str, limit: int, shards: Sequence[int], delivered_batch: int | None = None
    ) -> AbstractAsyncContextManager[ClaimHandle]: ...

    async def take_back(
        self,
        leased: Sequence[ClaimedRow],
        results: Sequence[ResultRecord],
        requeues: Sequence[Requeue],
        invalid_tokens: Sequence[InvalidToken],
        delivered_batches: Iterable[int] = (),
    ) -> set[int]: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class LaneSettings:
    batch_size: int
    poll_interval_s: float
    notify_min_interval_s: float
    request_timeout_s: float


async def wait_any(event: asyncio.Event, stopping: asyncio.Event, timeout_s: float) -> None:
    """Wait for ``event``, the stop signal, or ``timeout_s``, whichever comes first."""
    if stopping.is_set() and event is not stopping:
        return
    waiters = [asyncio.ensure_future(event.wait()), asyncio.ensure_future(stopping.wait())]
    try:
        await asyncio.wait(waiters, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()


class _Commit(enum.Enum):
    PENDING = "pending"
    DONE = "done"
    FAILED = "failed"


class _Batch:
    """A batch's fate, as its stragglers' late answers need to know it."""

    __slots__ = ("key", "reserved", "rows", "state")

    def __init__(self, rows: list[ClaimedRow], key: int = 0) -> None:
        self.rows = rows
        self.state = _Commit.PENDING
        self.reserved = len(rows)  # rows of capacity the batch holds (not its stragglers)
        self.key = key  # its acceptances' key in pushgres.delivered (random, 63 bits)


class Lane:
    """One app's claimer, its batches and its stragglers."""

    def __init__(
        self,
        name: str,
        *,
        sender: Sender,
        store: LaneStore,
        settings: LaneSettings,
        retry: RetryConfig,
        capacity: Capacity,
        stages: Sequence[Stage],
        observer: Observer,
        batch_slots: BatchSlots,
        stopping: asyncio.Event,
        abort: asyncio.Future[None],
        rng: random.Random | None = None,
        clock: Callable[[], dt.datetime] | None = None,
        pacing: Pacing | None = None,
        journal: DeliveryJournal | None = None,
    ) -> None:
        self.name = name
        self._journal = journal
        self._clock = clock or _utc_now
        self.pacing = pacing
        """Where the batches' answers go to slow what a provider throttles, if anywhere."""
        self.sender = sender
        self.capacity = capacity
        self._store = store
        self._settings = settings
        self._retry = retry
        self._stages = tuple(stages)
        self._observer = observer
        self._batch_slots = batch_slots
        self._stopping = stopping
        self._abort = abort
        self._rng = rng or random.Random()
        self._wake = asyncio.Event()  # set by NOTIFY
        self._changed = asyncio.Event()  # set when capacity frees up or work ends
        self._late_event = asyncio.Event()  # set when a late answer comes or a batch ends
        self._progress = asyncio.Event()  # set whenever work ends (batch, late write)
        self._late: list[tuple[_Batch, ClaimedRow, Outcome]] = []
        self._open_stragglers = 0  # detached, answer not yet in _late
        self._claiming = False
        self.last_tick = time.monotonic()
        """When the claim loop last went round (the watchdog's sign of life)."""
        self._writing_late = False  # late answers taken out of _late, not yet written
        self._batch_ids = 0
        self.lease_s = settings.request_timeout_s + LEASE_MARGIN_S
        self.shards = ShardPlan()
        """The queue shards this lane claims first (its daemon's share, set by the daemon)."""

    # -- the claimer -----------------------------------------------------------------------

    def wake(self) -> None:
        """New rows may be ready (NOTIFY, or the LISTEN connection came back)."""
        self._wake.set()

    def poke(self) -> None:
        """Re-check the stop signal and capacity now."""
        self._wake.set()
        self._changed.set()

    @property
    def is_busy(self) -> bool:
        """Batches on the wire, or stragglers whose answers are not written yet."""
        return bool(
            self.capacity.batches or self._open_stragglers > 0 or self._late or self._writing_late
        )

    async def wait_idle(self) -> None:
        """Return once no batch is on the wire and every late answer is written."""
        while self._claiming or self.is_busy:
            self._progress.clear()
            await self._progress.wait()

    async def run(self, tg: asyncio.TaskGroup) -> None:
        """Claim until the stop signal; the batches and the late writer run in ``tg``."""
        self._claiming = True
        tg.create_task(self._write_late(), name=f"late-writer:{self.name}")
        try:
            await self._claim_loop(tg)
        finally:
            self._claiming = False
            self._changed.set()
            self._late_event.set()
            self._progress.set()

    async def _claim_loop(self, tg: asyncio.TaskGroup) -> None:
        settings = self._settings
        stopping = self._stopping
        capacity = self.capacity
        while not stopping.is_set():
            self.last_tick = time.monotonic()
            grant = capacity.grant()
            if not grant.rows:
                if grant.wait_s is None:
                    self._changed.clear()
                    await wait_any(self._changed, stopping, settings.poll_interval_s)
                else:
                    await wait_any(stopping, stopping, grant.wait_s)
                continue
            await self._batch_slots.acquire()
            self.last_tick = time.monotonic()
            if stopping.is_set():
                self._batch_slots.release()
                capacity.unused(grant.rows)
                capacity.batch_done()
                break
            self._wake.clear()
            try:
                claimed = await self._start_batch(grant.rows, tg)
            except StoreError as exc:
                # The batch task released its slot and its capacity already.
                if not exc.unavailable:  # an outage is logged once, by the store
                    logger.error("app %s: %s", self.name, exc, extra={"action": "claim_batch"})
                await wait_any(self._wake, stopping, STORE_RETRY_S)
                continue
            if claimed < grant.rows:
                # The queue is drained for now: wait for a NOTIFY or the polling interval.
                await wait_any(self._wake, stopping, settings.poll_interval_s)
                if self._wake.is_set() and settings.notify_min_interval_s:
                    await wait_any(stopping, stopping, settings.notify_min_interval_s)

    async def _start_batch(self, limit: int, tg: asyncio.TaskGroup) -> int:
        """Hand a claim of up to ``limit`` rows to a batch task; returns the rows claimed."""
        claimed: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._batch_ids += 1
        tg.create_task(self._batch(limit, claimed), name=f"batch:{self.name}:{self._batch_ids}")
        return await claimed

    # -- one batch -------------------------------------------------------------------------

    async def _batch(self, limit: int, claimed: asyncio.Future[int]) -> None:
        batch = _Batch([], self._rng.getrandbits(63))
        batch.reserved = limit
        try:
            started = time.perf_counter()
            key = batch.key if self._journal is not None else None
            async with self._store.claim(self.name, limit, self.shards.order(), key) as claim:
                self.shards.read(claim.shards_read)
                batch.rows = claim.rows
                self.capacity.unused(limit - len(batch.rows))
                batch.reserved = len(batch.rows)
                claimed.set_result(len(batch.rows))
                if batch.rows:
                    self._observer.claimed(
                        self.name, len(batch.rows), time.perf_counter() - started
                    )
                    await self._send_and_write(claim, batch)
            batch.state = _Commit.DONE
        except StoreError as exc:
            if not claimed.done():
                claimed.set_exception(exc)
            elif not exc.unavailable:
                logger.error(
                    "app %s: batch not written, its rows return to the queue: %s",
                    self.name,
                    exc,
                    extra={"action": "write_results", "app": self.name},
                )
        except Exception:
            # A bug, not a provider answer: the transaction rolled back, the rows are queued.
            logger.exception(
                "app %s: batch failed, its rows return to the queue",
                self.name,
                extra={"action": "batch", "app": self.name},
            )
        finally:
            if batch.state is _Commit.PENDING:
                batch.state = _Commit.FAILED
            if not claimed.done():
                claimed.set_exception(StoreError("the batch ended before its claim returned"))
            if claimed.exception() is None:
                self.capacity.answered(batch.reserved)
            else:
                self.capacity.unused(batch.reserved)  # nothing claimed: slots and tokens back
            self.capacity.batch_done()
            self._batch_slots.release()
            self._changed.set()
            self._late_event.set()
            self._progress.set()

    async def _send_and_write(self, claim: ClaimHandle, batch: _Batch) -> None:
        """Send, decide, write (stragglers leave the batch's capacity for their own)."""
        now = self._clock()
        to_send, decisions = await run_stages(self._stages, batch.rows, now, claim)
        self._release(batch, len(batch.rows) - len(to_send))
        started = time.perf_counter()
        outcomes = await self._send(to_send, now, batch)
        if self.pacing is not None:
            self.pacing.answered(to_send, outcomes)
        stragglers = [row for row, o in zip(to_send, outcomes, strict=True) if o is None]
        # Capacity returns as soon as the answers are in, before the write-back, so the next
        # batch is claimed while this one commits. Each straggler returns its own slot.
        self._open_stragglers += len(stragglers)
        batch.reserved -= len(stragglers)
        self._release(batch, batch.reserved)
        # Uninstall probes never count toward what the observers judge an app by (alerts).
        answered = [
            o for o, row in zip(outcomes, to_send, strict=True) if o is not None and not row.probe
        ]
        self._observer.sent(self.name, answered, time.perf_counter() - started)
        now = dt.datetime.now(dt.UTC)
        retry, rng = self._retry, self._rng
        for row, outcome in zip(to_send, outcomes, strict=True):
            if outcome is not None:
                decisions.append(decide(row, outcome, now=now, retry=retry, rng=rng))
        results, requeues, invalid = _split(decisions)
        requeues += [self._lease(row) for row in stragglers]
        journal = self._journal
        if journal is not None:
            await journal.settled()  # its acceptances are written down before it commits
        started = time.perf_counter()
        await claim.write(
            results, requeues, invalid, delivered_batch=batch.key if journal else None
        )
        self._observer.written(self.name, results, requeues, invalid, time.perf_counter() - started)

    def _release(self, batch: _Batch, rows: int) -> None:
        if rows:
            batch.reserved -= rows
            self.capacity.answered(rows)
            self._changed.set()

    async def _send(
        self, rows: list[ClaimedRow], now: dt.datetime, batch: _Batch
    ) -> list[Outcome | None]:
        """Send the batch; past the shutdown deadline (``abort``) unfinished sends give up."""
        if not rows:
            return []

        def on_late(index: int, outcome: Outcome) -> None:
            self._late.append((batch, rows[index], outcome))
            self._open_stragglers -= 1
            self.capacity.answered(1)
            self._changed.set()
            self._late_event.set()

        journal = self._journal
        key = batch.key
        on_accepted = None if journal is None else (lambda i: journal.record(key, rows[i]))
        try:
            return await self.sender.send_batch(
                rows, now=now, abort=self._abort, on_late=on_late, on_accepted=on_accepted
            )
        except Exception as exc:
            # A bug, not a provider answer: every row of the batch is retried later.
            logger.error(
                "app %s: batch of %d notifications (first id %d): send failed unexpectedly: %r",
                self.name,
                len(rows),
                rows[0].id,
                exc,
                exc_info=exc,
                extra={"action": "send", "app": self.name},
            )
            return [Outcome(action=Action.WAIT, reason="InternalError")] * len(rows)

    def _decide(self, row: ClaimedRow, outcome: Outcome, now: dt.datetime) -> Decision:
        return decide(row, outcome, now=now, retry=self._retry, rng=self._rng)

    def _lease(self, row: ClaimedRow) -> Requeue:
        """A straggler's row back in the queue until its answer comes or its deadline passes."""
        reason = f"RequestTimeout: no response within {self._settings.request_timeout_s:g}s"
        return Requeue(row, self.lease_s, reason, row.attempts + 1)

    # -- stragglers' late answers ----------------------------------------------------------

    async def _write_late(self) -> None:
        """Record stragglers' answers once their batch has committed; ends with the lane."""
        while self._claiming or self.is_busy:
            self._late_event.clear()
            if not self._ready_late():
                await wait_any(self._late_event, self._late_event, self._settings.poll_interval_s)
                continue
            await self._flush_late()
            self._progress.set()
            await asyncio.sleep(LATE_FLUSH_S)  # gather a few more before the next write

    def _ready_late(self) -> bool:
        return any(batch.state is not _Commit.PENDING for batch, _, _ in self._late)

    async def _flush_late(self) -> None:
        ready = [e for e in self._late if e[0].state is not _Commit.PENDING]
        self._late = [e for e in self._late if e[0].state is _Commit.PENDING]
        now = dt.datetime.now(dt.UTC)
        leased: list[ClaimedRow] = []
        decisions: list[Decision] = []
        for batch, row, outcome in ready:
            # A failed batch rolled back: its rows are queued as they were, not leased.
            # A timeout changes nothing: the lease already says so, and runs out by itself.
            if batch.state is _Commit.FAILED or outcome.reason == "RequestTimeout":
                continue
            leased.append(row)
            decisions.append(self._decide(row, outcome, now))
        if not leased:
            return
        results, requeues, invalid = _split(decisions)
        started = time.perf_counter()
        self._writing_late = True
        try:
            keys: set[int] = set()
            if self._journal is not None:
                await self._journal.settled()
                keys = {batch.key for batch, _, _ in ready}
            ours = await self._store.take_back(
                leased, results, requeues, invalid, delivered_batches=keys
            )
        except StoreError as exc:
            if not exc.unavailable:
                logger.error(
                    "app %s: late answers of %d stragglers not recorded; their leases "
                    "run out and they are sent again: %s",
                    self.name,
                    len(leased),
                    exc,
                    extra={"action": "write_late", "app": self.name},
                )
            return
        finally:
            self._writing_late = False
        if len(ours) < len(leased):
            results = [r for r in results if r.row.id in ours]
            requeues = [q for q in requeues if q.row.id in ours]
            owned = {(r.app, r.device_token) for r in leased if r.id in ours}
            invalid = [t for t in invalid if (t.app, t.device_token) in owned]
        self._observer.written(self.name, results, requeues, invalid, time.perf_counter() - started)


def _utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _split(
    decisions: Sequence[Decision],
) -> tuple[list[ResultRecord], list[Requeue], list[InvalidToken]]:
    results: list[ResultRecord] = []
    requeues: list[Requeue] = []
    invalid: list[InvalidToken] = []
    for decision in decisions:
        if decision.result is not None:
            results.append(decision.result)
        if decision.requeue is not None:
            requeues.append(decision.requeue)
        if decision.invalid_token is not None:
            invalid.append(decision.invalid_token)
    return results, requeues, invalid
