"""In-memory stand-ins for the store and a provider, for unit tests of the pipeline's logic.

:class:`MemoryStore` is what a lane needs of :class:`pushgres.db.store.Store` (the
``LaneStore`` protocol of :mod:`pushgres.pipeline.lane`), with the semantics of its SQL:

* ``claim(app, limit)`` takes the app's ready rows (``send_at`` at or before the store's clock;
  highest priority first, then ``send_at``, then id) out of the queue for the ``async with``
  block and flags them ``is_expired`` / ``is_token_invalid`` as of that moment;
* a normal exit commits what the claim wrote: results, rows back in the queue (``send_at`` =
  the clock + ``delay_s``, with the requeue's attempts and reason), dead tokens; an exception
  rolls back and the rows are queued again exactly as they were;
* ``take_back`` removes a straggler's leased row only while it is queued with the attempt its
  lease counted, and records the late answer only for the rows it removed.

:meth:`MemoryStore.fail_next` makes one operation raise :class:`~pushgres.exceptions.StoreError`,
:meth:`MemoryStore.hold` makes operations wait until released, and :meth:`MemoryStore.check`
asserts that every row added is queued or has a result, once.

:class:`FakeSender` is a :class:`~pushgres.providers.base.Sender` whose answers come from a
function of the row: an :class:`~pushgres.models.Outcome`, or a :class:`Late` to hold the row
back as a straggler (``None`` in its place) and deliver its outcome later through ``on_late``.
It can also hold whole batches on the wire until :meth:`FakeSender.release` or the abort
future, for drain tests.

Neither touches a network or a database: they serve unit tests of pure logic. The integration
tests run the real store on PostgreSQL and the provider simulators.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import itertools
import zlib
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Final, Literal

from .exceptions import StoreError
from .models import (
    QUEUE_SHARDS,
    Action,
    ClaimedRow,
    InvalidToken,
    Outcome,
    Requeue,
    ResultRecord,
)

if TYPE_CHECKING:
    from .pipeline.guardrails import CapsAdded, LedgerRecord
    from .pipeline.lane import LaneStore
    from .providers.base import Accepted, LateOutcome, Sender

__all__ = [
    "INTERRUPTED",
    "STRAGGLE",
    "TIMED_OUT",
    "FakeSender",
    "Late",
    "ManualClock",
    "MemoryClaim",
    "MemoryStore",
    "memory_shard",
    "sent",
]

Operation = Literal["claim", "write", "commit", "take_back"]

INTERRUPTED: Final = Outcome(action=Action.CONN, reason="Interrupted", detail="sending aborted")
"""What a sender reports for a request cut off by the abort future or by closing."""

TIMED_OUT: Final = Outcome(action=Action.WAIT, reason="RequestTimeout", detail="no response")
"""What a sender reports for a request that got no answer before its deadline."""


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def sent(row: ClaimedRow) -> Outcome:
    """The provider accepted the row (the default answer of :class:`FakeSender`)."""
    return Outcome(action=Action.SENT, provider_status=200, provider_id=f"fake-{row.id}")


class ManualClock:
    """A wall clock that moves only when told to: ``MemoryStore(clock=ManualClock())``."""

    def __init__(self, start: dt.datetime | None = None) -> None:
        self.now = start or utc_now()

    def __call__(self) -> dt.datetime:
        return self.now

    def advance(self, seconds: float) -> dt.datetime:
        self.now += dt.timedelta(seconds=seconds)
        return self.now


# -- the store ---------------------------------------------------------------------------------


class MemoryClaim:
    """One claimed batch in its open transaction; what it writes lands when the claim commits."""

    def __init__(self, rows: list[ClaimedRow], store: MemoryStore, shards_read: int = 1) -> None:
        self.rows = rows
        self.shards_read = shards_read
        self._store = store
        self.results: list[ResultRecord] = []
        self.requeues: list[Requeue] = []
        self.invalid_tokens: list[InvalidToken] = []
        self.caps: dict[str, tuple[list[float], list[int], list[str]]] = {}

    async def lock_caps(self, subjects: Sequence[str]) -> Sequence[LedgerRecord]:
        await self._store._round_trip("write")
        ledger = {**self._store.cap_ledger, **self.caps}
        found = []
        for subject in subjects:
            sent_at, events, kinds = ledger.get(subject, ([], [], []))
            found.append((subject, list(sent_at), list(events), list(kinds)))
        return found

    async def write_caps(self, now: float, keep_s: float, added: CapsAdded) -> None:
        await self._store._round_trip("write")
        ledger = {**self._store.cap_ledger, **self.caps}
        forgotten: set[str] = set()
        for subject, forget, event, kind in added:
            sent_at, events, kinds = ledger.get(subject, ([], [], []))
            live = list(zip(sent_at, events, kinds, strict=True))
            if subject not in forgotten:  # as the SQL: once per subject and batch
                live = live[forget:]
                forgotten.add(subject)
            live.append((now, event, kind))
            ledger[subject] = self.caps[subject] = (
                [e[0] for e in live],
                [e[1] for e in live],
                [e[2] for e in live],
            )

    async def write(
        self,
        results: Sequence[ResultRecord],
        requeues: Sequence[Requeue],
        invalid_tokens: Sequence[InvalidToken],
        delivered_batch: int | None = None,
    ) -> None:
        # (no delivery journal in memory: ``delivered_batch`` has nothing to forget)
        await self._store._round_trip("write")
        self._store._check_requeues([*self.requeues, *requeues], set())
        self.results += results
        self.requeues += requeues
        self.invalid_tokens += invalid_tokens


def _claim_order(row: ClaimedRow) -> tuple[int, dt.datetime, int]:
    return (-row.priority, row.send_at, row.id)


def memory_shard(device_token: str) -> int:
    """A token's shard in :class:`MemoryStore` (CRC-32, where Postgres uses ``hashtext``)."""
    return zlib.crc32(device_token.encode()) % QUEUE_SHARDS


class MemoryStore:
    """The lane's store in memory (see the module docstring for its semantics)."""

    def __init__(self, *, clock: Callable[[], dt.datetime] = utc_now) -> None:
        self.clock = clock
        self.results: list[ResultRecord] = []
        """Every result committed, in order."""
        self.invalid_tokens: dict[tuple[str, str], InvalidToken] = {}
        """Dead tokens by (app, device token)."""
        self.cap_ledger: dict[str, tuple[list[float], list[int], list[str]]] = {}
        """The frequency caps' counts by person (admitted at, message, kind), as committed."""
        self.ids: set[int] = set()
        """Every row ever added."""
        self.claims = 0
        self.take_backs = 0
        self._queue: dict[int, ClaimedRow] = {}
        self._claimed: dict[int, ClaimedRow] = {}  # inside an open claim, as they were queued
        self._invalidated_at: dict[tuple[str, str], dt.datetime] = {}
        self._next_id = itertools.count(1)
        self._failures: dict[Operation, list[Exception]] = {}
        self._gates: dict[Operation, asyncio.Event] = {}
        self.waiting: Counter[Operation] = Counter()
        """Operations waiting for :meth:`release`, by kind."""

    # -- what a test sets up and looks at ------------------------------------------------

    def add(
        self,
        app: str = "app",
        *,
        device_token: str | None = None,
        platform: str = "apns",
        payload: str = '{"aps": {"alert": "hi"}}',
        priority: int = 10,
        send_at: dt.datetime | None = None,
        expires_at: dt.datetime | None = None,
        max_attempts: int = 5,
        attempts: int = 0,
        last_reason: str | None = None,
        enqueued_at: dt.datetime | None = None,
    ) -> int:
        """Enqueue one notification (ready now unless ``send_at`` says otherwise); its id."""
        row_id = next(self._next_id)
        now = self.clock()
        self._queue[row_id] = ClaimedRow.fresh(
            id=row_id,
            app=app,
            platform=platform,
            device_token=device_token or f"token-{row_id}",
            payload=payload,
            now=now,
            priority=priority,
            expires_at=expires_at,
            send_at=send_at or now,
            max_attempts=max_attempts,
            attempts=attempts,
            last_reason=last_reason,
            enqueued_at=enqueued_at or now,
        )
        self.ids.add(row_id)
        return row_id

    def add_many(self, count: int, app: str = "app", **fields: object) -> list[int]:
        """Enqueue ``count`` notifications with the same fields (``add``'s keywords)."""
        return [self.add(app, **fields) for _ in range(count)]  # type: ignore[arg-type]

    def invalidate_token(
        self, app: str, device_token: str, *, reason: str = "Unregistered"
    ) -> None:
        """Record a dead token now, as a committed provider answer would."""
        self._apply([], [], [InvalidToken(app, device_token, reason, None)])

    @property
    def queued(self) -> dict[int, ClaimedRow]:
        """The committed queue by id (rows inside an open claim are not in it)."""
        return dict(self._queue)

    @property
    def in_claims(self) -> dict[int, ClaimedRow]:
        """Rows inside open claims, as they were queued (a rollback puts them back so)."""
        return dict(self._claimed)

    def result(self, row_id: int) -> ResultRecord:
        """The one result of row ``row_id`` (AssertionError if it has none or several)."""
        found = [r for r in self.results if r.row.id == row_id]
        assert len(found) == 1, f"row {row_id} has {len(found)} results"
        return found[0]

    def fail_next(self, operation: Operation, exc: Exception | None = None) -> None:
        """Make the next ``operation`` raise ``exc`` (a :class:`StoreError` by default)."""
        error = exc or StoreError(f"{operation} failed (MemoryStore.fail_next)")
        self._failures.setdefault(operation, []).append(error)

    def hold(self, operation: Operation) -> None:
        """Make every ``operation`` from now on wait for :meth:`release` (a slow database)."""
        self._gates.setdefault(operation, asyncio.Event())

    def release(self, operation: Operation) -> None:
        """Let the held ``operation`` calls go on; later ones do not wait."""
        gate = self._gates.pop(operation, None)
        if gate is not None:
            gate.set()

    def check(self) -> None:
        """Assert that each row added is in exactly one place: queued (or in an open claim,
        which the database would still hold), or recorded with one result."""
        counts = Counter(r.row.id for r in self.results)
        problems = []
        for row_id in sorted(self.ids | set(counts)):
            queued = row_id in self._queue or row_id in self._claimed
            if row_id not in self.ids:
                problems.append(f"row {row_id}: a result for a row never added")
            elif counts[row_id] + queued != 1:
                where = "queued" if queued else "not queued"
                problems.append(f"row {row_id}: {where}, {counts[row_id]} results")
        assert not problems, "; ".join(problems)

    # -- the LaneStore protocol ------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def claim(
        self,
        app: str,
        limit: int,
        shards: Sequence[int] = tuple(range(QUEUE_SHARDS)),
        delivered_batch: int | None = None,
    ) -> AsyncIterator[MemoryClaim]:
        """Claim up to ``limit`` ready rows of ``app`` for the block (commit or roll back),
        shard by shard in the order given (a row's shard: :func:`memory_shard`). The memory
        store keeps no delivery journal: ``delivered_batch`` is accepted and unused."""
        await self._round_trip("claim")
        self.claims += 1
        now = self.clock()
        due = [r for r in self._queue.values() if r.app == app and r.send_at <= now]
        # The transactional lane across shards first, then the bulk rows shard by shard.
        ready = sorted((r for r in due if r.transactional), key=_claim_order)
        read = 0
        for shard in shards:
            if len(ready) >= limit:
                break
            read += 1
            ready += sorted(
                (r for r in due if not r.transactional and memory_shard(r.device_token) == shard),
                key=_claim_order,
            )
        del ready[limit:]
        for row in ready:
            del self._queue[row.id]
            self._claimed[row.id] = row
        claim = MemoryClaim([self._flagged(row, now) for row in ready], self, max(1, read))
        try:
            yield claim
            await self._round_trip("commit")
        except BaseException:
            for row in ready:  # rollback: queued again exactly as they were
                del self._claimed[row.id]
                self._queue[row.id] = row
            raise
        for row in ready:
            del self._claimed[row.id]
        self.cap_ledger.update(claim.caps)
        self._apply(claim.results, claim.requeues, claim.invalid_tokens)

    async def take_back(
        self,
        leased: Sequence[ClaimedRow],
        results: Sequence[ResultRecord],
        requeues: Sequence[Requeue],
        invalid_tokens: Sequence[InvalidToken],
        delivered_batches: Iterable[int] = (),
    ) -> set[int]:
        """Record late answers of rows still leased to us; returns their ids."""
        await self._round_trip("take_back")
        self.take_backs += 1
        ours = {
            r.id
            for r in leased
            if (q := self._queue.get(r.id)) is not None and q.attempts == r.attempts + 1
        }
        if len(ours) < len(leased):
            results = [r for r in results if r.row.id in ours]
            requeues = [q for q in requeues if q.row.id in ours]
            owned = {(r.app, r.device_token) for r in leased if r.id in ours}
            invalid_tokens = [t for t in invalid_tokens if (t.app, t.device_token) in owned]
        self._check_requeues(requeues, ours)
        for row_id in ours:
            del self._queue[row_id]
        self._apply(results, requeues, invalid_tokens)
        return ours

    # -- inside ------------------------------------------------------------------------------

    async def _round_trip(self, operation: Operation) -> None:
        """Other tasks run meanwhile; then ``operation`` fails if :meth:`fail_next` said so."""
        await asyncio.sleep(0)
        gate = self._gates.get(operation)
        if gate is not None:
            self.waiting[operation] += 1
            try:
                await gate.wait()
            finally:
                self.waiting[operation] -= 1
        failures = self._failures.get(operation)
        if failures:
            raise failures.pop(0)

    def _flagged(self, row: ClaimedRow, now: dt.datetime) -> ClaimedRow:
        """The row as the claim returns it: a copy, with the claim-time facts."""
        invalidated_at = self._invalidated_at.get((row.app, row.device_token))
        return dataclasses.replace(
            row,
            is_expired=row.expires_at is not None and row.expires_at <= now,
            is_token_invalid=invalidated_at is not None and invalidated_at <= row.enqueued_at,
        )

    def _check_requeues(self, requeues: Sequence[Requeue], leaving: set[int]) -> None:
        """A requeue of a row already queued violates the queue's primary key."""
        ids = Counter(q.row.id for q in requeues)
        clash = sorted(
            i for i, n in ids.items() if n > 1 or (i in self._queue and i not in leaving)
        )
        if clash:
            raise StoreError(f"requeue: duplicate key value (id) = {clash}")

    def _apply(
        self,
        results: Sequence[ResultRecord],
        requeues: Sequence[Requeue],
        invalid_tokens: Sequence[InvalidToken],
    ) -> None:
        now = self.clock()
        self.results += results
        for token in invalid_tokens:
            key = (token.app, token.device_token)
            self.invalid_tokens[key] = token
            self._invalidated_at[key] = now
        for q in requeues:
            self._queue[q.row.id] = dataclasses.replace(
                q.row,
                send_at=now + dt.timedelta(seconds=q.delay_s),
                attempts=q.attempts,
                last_reason=q.reason,
                is_expired=False,
                is_token_invalid=False,
            )


# -- the sender --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Late:
    """A handler's answer for a straggler: ``send_batch`` returns ``None`` in its place.

    With ``outcome`` and ``after_s``, the outcome reaches ``on_late`` after that many seconds;
    without them (:data:`STRAGGLE`), when the test calls :meth:`FakeSender.answer_stragglers`.
    Either way the abort future or closing the sender answers it first with
    :data:`INTERRUPTED`. Without ``on_late`` the batch waits: the outcome, or :data:`TIMED_OUT`.
    """

    outcome: Outcome | None = None
    after_s: float | None = None

    def __post_init__(self) -> None:
        if (self.outcome is None) != (self.after_s is None):
            raise ValueError("Late: give both outcome and after_s, or neither")


STRAGGLE: Final = Late()

Handler = Callable[[ClaimedRow], Outcome | Late]


@dataclass(eq=False, slots=True)
class _Straggler:
    row: ClaimedRow
    index: int
    on_late: LateOutcome


class FakeSender:
    """A sender answering each row with ``handler(row)``; see the module docstring."""

    STRAGGLE: ClassVar[Late] = STRAGGLE

    def __init__(self, handler: Handler = sent, *, streams: int = 100) -> None:
        self.handler = handler
        self.streams = streams
        """What :meth:`capacity` says (the stream slots over all connections)."""
        self.sent: list[ClaimedRow] = []
        """Every row handed to :meth:`send_batch`, in order (a row sent twice is here twice)."""
        self.batches: list[list[int]] = []
        """The ids of each batch."""
        self.late: list[tuple[ClaimedRow, Outcome]] = []
        """Every late answer delivered through ``on_late``, in order."""
        self.is_open = False
        self.held = 0
        """Batches waiting for :meth:`release`."""
        self._gate: asyncio.Event | None = None
        self._stragglers: list[_Straggler] = []
        self._in_send = 0
        self._changed = asyncio.Event()

    async def __aenter__(self) -> FakeSender:
        self.is_open = True
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.is_open = False
        self.answer_stragglers(INTERRUPTED)

    def capacity(self) -> int:
        return self.streams

    def describe(self) -> str:
        return f"fake,streams={self.streams},in_flight={self.in_flight}"

    def stats(self) -> dict[str, int]:
        return {"connections": 1, "in_flight": self.in_flight, "stream_limit": self.streams}

    def record_response_times(self, histogram: Any) -> None:
        self.response_times = histogram

    async def warm_up(self, timeout_s: float) -> str | None:
        return self.problem()

    def problem(self) -> str | None:
        return None if self.is_open else "not open"

    @property
    def in_flight(self) -> int:
        """Rows in batches on the wire, and stragglers not answered yet."""
        return self._in_send + len(self._stragglers)

    @property
    def stragglers(self) -> list[ClaimedRow]:
        """Stragglers not answered yet."""
        return [s.row for s in self._stragglers]

    def hold(self) -> None:
        """Hold every batch sent from now on, before its answers, until :meth:`release`."""
        if self._gate is None:
            self._gate = asyncio.Event()

    def release(self) -> None:
        """Let the held batches be answered; later batches are not held."""
        if self._gate is not None:
            self._gate.set()
            self._gate = None

    async def wait_held(self, batches: int = 1) -> None:
        """Return once ``batches`` batches are held."""
        while self.held < batches:
            self._changed.clear()
            await self._changed.wait()

    def answer_stragglers(
        self,
        outcome: Outcome | Callable[[ClaimedRow], Outcome],
        *,
        ids: Iterable[int] | None = None,
    ) -> int:
        """Deliver late answers now (to the stragglers ``ids``, else all); how many."""
        wanted = None if ids is None else set(ids)
        chosen = [s for s in self._stragglers if wanted is None or s.row.id in wanted]
        for straggler in chosen:
            self._answer(
                straggler, outcome if isinstance(outcome, Outcome) else outcome(straggler.row)
            )
        return len(chosen)

    async def send_batch(
        self,
        rows: Sequence[ClaimedRow],
        *,
        now: dt.datetime,
        abort: asyncio.Future[None] | None = None,
        on_late: LateOutcome | None = None,
        on_accepted: Accepted | None = None,
    ) -> list[Outcome | None]:
        rows = list(rows)
        self.sent += rows
        self.batches.append([r.id for r in rows])
        self._in_send += len(rows)
        try:
            gate = self._gate
            if gate is not None and not await self._wait(gate, abort):
                return [INTERRUPTED] * len(rows)
            if abort is not None and abort.done():
                return [INTERRUPTED] * len(rows)
            answers = [self.handler(row) for row in rows]
        finally:
            self._in_send -= len(rows)
        outcomes: list[Outcome | None] = []
        for index, (row, answer) in enumerate(zip(rows, answers, strict=True)):
            if isinstance(answer, Outcome):
                outcomes.append(answer)
                if on_accepted is not None and answer.action is Action.SENT:
                    on_accepted(index)  # (a straggler's late answer is not named)
            elif on_late is None:
                outcomes.append(answer.outcome or TIMED_OUT)
            else:
                outcomes.append(None)
                self._detach(_Straggler(row, index, on_late), answer, abort)
        return outcomes

    async def _wait(self, gate: asyncio.Event, abort: asyncio.Future[None] | None) -> bool:
        """Wait for the gate (True) or the abort future (False)."""
        opened = asyncio.ensure_future(gate.wait())
        waiters: list[asyncio.Future[Any]] = [opened] if abort is None else [opened, abort]
        self.held += 1
        self._changed.set()
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            opened.cancel()
            self.held -= 1
            self._changed.set()
        return gate.is_set()

    def _detach(
        self, straggler: _Straggler, late: Late, abort: asyncio.Future[None] | None
    ) -> None:
        self._stragglers.append(straggler)
        loop = asyncio.get_running_loop()
        if late.outcome is not None and late.after_s is not None:
            loop.call_later(late.after_s, self._answer, straggler, late.outcome)
        if abort is not None:
            abort.add_done_callback(lambda _: self._answer(straggler, INTERRUPTED))

    def _answer(self, straggler: _Straggler, outcome: Outcome) -> None:
        """Exactly once per straggler: the first answer wins."""
        if straggler not in self._stragglers:
            return
        self._stragglers.remove(straggler)
        self.late.append((straggler.row, outcome))
        self._changed.set()
        straggler.on_late(straggler.index, outcome)


if TYPE_CHECKING:

    def _conforms(store: MemoryStore, sender: FakeSender) -> tuple[LaneStore, Sender]:
        """Type-checked only: the fakes satisfy the protocols they stand in for."""
        return store, sender
