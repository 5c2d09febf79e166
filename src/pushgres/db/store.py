"""The one place pushgres runs SQL for the daemon: claims, write-back, leases, maintenance.

A batch is claimed by ``DELETE … FOR UPDATE SKIP LOCKED … RETURNING`` inside a transaction that
stays open while the batch is sent ("held" mode). The outcomes, the retries and the invalid
tokens are written in the same transaction, one statement each per batch, and the commit makes
the batch's fate durable at once. A crash, a kill or a dropped connection rolls the transaction
back and the rows are claimable again: nothing is lost, and only notifications that were in
flight can be sent twice.

A batch whose last few sends are still unanswered does not wait for them: it commits, and puts
those rows back into the queue under a *lease* (``send_at`` past their deadline, the attempt
counted). When a straggler's answer comes, :meth:`Store.take_back` removes its leased row and
records the answer in one transaction; when none comes, the lease runs out and the row is
claimed again. Either way the row is in the queue or in the results at every moment.

The functions at the end serve callers that hold their own connection — the enqueue API, the
command line, the demo and the benchmarks — so they run no SQL of their own either.

The store also watches the database's availability: an outage is logged once when it starts
and once when it ends, whatever number of operations fail in between, and the LISTEN
connection that wakes the daemon reconnects by itself (:class:`Listener`).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import math
import time
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Callable,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from operator import attrgetter
from typing import TYPE_CHECKING, Any, Final

import asyncpg

from .. import codec
from ..exceptions import SchemaError, StoreError
from ..models import QUEUE_SHARDS, ClaimedRow, InvalidToken, Requeue, ResultRecord
from .columns import ENQUEUE_COLUMNS, REQUEUE_COLUMNS, RESULT_COLUMNS, ROW_RESULT_COLUMNS
from .migrate import check_schema
from .queries import QUERIES

if TYPE_CHECKING:
    from ..pipeline.guardrails import CapsAdded, LedgerRecord

__all__ = [
    "Claim",
    "Listener",
    "Store",
    "dedupe_holders",
    "fetch_outcomes",
    "group_id_range",
    "insert_notifications",
    "is_unavailable",
    "queue_depth",
    "recent_outcomes",
    "results_by_reason",
    "results_done",
    "results_sent_tokens",
    "results_timing",
]

logger = logging.getLogger(__name__)

NOTIFY_CHANNEL: Final = "pushgres_enqueued"
DAEMON_MARK: Final = "pushgres.daemon"  # keeps the daemon's own re-inserts from NOTIFYing
LISTEN_CONNECT_TIMEOUT_S: Final = 5.0
LISTEN_RETRY_INITIAL_S: Final = 0.1
LISTEN_RETRY_MAX_S: Final = 1.0  # the database back → NOTIFY works again within a second
LISTEN_KEEPALIVE_S: Final = 10.0  # a silent network loss is found by a ping this often
LISTEN_PING_TIMEOUT_S: Final = 5.0
CLOSE_TIMEOUT_S: Final = 5.0
RECOVERED_AFTER_S: Final = 1.0  # an outage ends with a success begun this long after a failure
STALE_BATCH: Final = 10_000  # devices marked stale per statement
QUEUE_COUNT_CAP: Final = 1_000_000  # the queue gauges count this many rows per app at most
DELIVERED_KEEP_S: Final = 300.0  # pushgres.delivered rows older than this may be pruned
ALL_SHARDS: Final = tuple(range(QUEUE_SHARDS))  # a claim's shards when it names none
ACQUIRE_TIMEOUT_S: Final = 30.0  # waiting for a pooled connection (or a new one) at most
VACUUM_TIMEOUT_S: Final = 600.0  # a vacuum of the queue (cancelled beyond, harmlessly)

# Errors that say the database cannot be reached, not that a statement was wrong.
_UNAVAILABLE = (
    OSError,
    TimeoutError,
    asyncpg.InterfaceError,
    # A connection broken mid-operation can be left in a state asyncpg refuses to use.
    asyncpg.InternalClientError,
    asyncpg.exceptions.ConnectionDoesNotExistError,
    asyncpg.exceptions.OperatorInterventionError,  # admin/crash shutdown, cannot connect now
    asyncpg.exceptions.PostgresConnectionError,
)
_row_result_fields = attrgetter(*ROW_RESULT_COLUMNS)


def is_unavailable(exc: BaseException) -> bool:
    """Whether ``exc`` means the database could not be reached (rather than refused a query)."""
    return isinstance(exc, _UNAVAILABLE)


class _Availability:
    """Logs an outage once when it starts and once when it ends."""

    def __init__(self) -> None:
        self.is_up = True
        self._failed_at = -math.inf

    def failed(self, exc: BaseException) -> None:
        self._failed_at = time.monotonic()
        if self.is_up:
            self.is_up = False
            logger.warning(
                "PostgreSQL is unavailable (%s); retrying until it is back, nothing is lost",
                type(exc).__name__,
                extra={"action": "db_unavailable"},
            )

    def succeeded(self, started_at: float) -> None:
        # Only an operation begun a while after the last failure proves the database is back:
        # one already running when the outage began, or started as the server was shutting
        # down on a session it had not closed yet, may still succeed.
        if not self.is_up and started_at > self._failed_at + RECOVERED_AFTER_S:
            self.is_up = True
            logger.warning("PostgreSQL is available again", extra={"action": "db_available"})


_NO_AVAILABILITY = _Availability()


@contextlib.contextmanager
def map_db_errors(action: str, availability: _Availability = _NO_AVAILABILITY) -> Iterator[None]:
    """Turn asyncpg and socket errors into :class:`StoreError`, keeping the cause."""
    started_at = time.monotonic()
    try:
        yield
    except (asyncpg.PostgresError, ValueError, *_UNAVAILABLE) as exc:
        if is_unavailable(exc):
            availability.failed(exc)
            raise StoreError(
                f"{action} failed: the database connection was lost or refused "
                f"({type(exc).__name__})",
                unavailable=True,
            ) from exc
        raise StoreError(f"{action} failed: {type(exc).__name__}: {exc}") from exc
    availability.succeeded(started_at)


@contextlib.contextmanager
def schema_required() -> Iterator[None]:
    """Turn "no such table/function/schema" into :class:`SchemaError` (for the APIs)."""
    try:
        yield
    except (
        asyncpg.InvalidSchemaNameError,
        asyncpg.UndefinedTableError,
        asyncpg.UndefinedFunctionError,
    ) as exc:
        raise SchemaError(
            f"the pushgres schema is missing from this database ({exc}); "
            "run `pushgres migrate` first"
        ) from None


def _result_records(results: Sequence[ResultRecord]) -> list[tuple[Any, ...]]:
    return [
        (
            *_row_result_fields(r.row),
            r.status,
            r.provider_status,
            r.reason,
            r.provider_id,
            r.attempts,
        )
        for r in results
    ]


def _requeue_arrays(requeues: Sequence[Requeue]) -> list[list[Any]]:
    own = {"delay_s": "delay_s", "attempts": "attempts", "last_reason": "reason"}
    arrays = []
    for column in REQUEUE_COLUMNS:
        if column in own:
            arrays.append([getattr(q, own[column]) for q in requeues])
        else:
            arrays.append([getattr(q.row, column) for q in requeues])
    return arrays


async def _write(
    conn: asyncpg.Connection,
    results: Sequence[ResultRecord],
    requeues: Sequence[Requeue],
    invalid_tokens: Sequence[InvalidToken],
    delivered_batches: Iterable[int] = (),
) -> None:
    """Write outcomes, retries and dead tokens: one statement per kind, never one per row;
    and forget the batches' rows in ``pushgres.delivered``."""
    if results:
        # One binary COPY: half the client CPU of an ``unnest`` insert.
        await conn.copy_records_to_table(
            "results",
            schema_name="pushgres",
            columns=RESULT_COLUMNS,
            records=_result_records(results),
        )
    if invalid_tokens:
        await conn.execute(
            QUERIES["invalidate_tokens"],
            [t.app for t in invalid_tokens],
            [t.device_token for t in invalid_tokens],
            [t.reason for t in invalid_tokens],
            [t.provider_timestamp for t in invalid_tokens],
            [t.probe for t in invalid_tokens],
        )
    if requeues:
        await conn.execute(QUERIES["requeue"], *_requeue_arrays(requeues))
    for batch in delivered_batches:  # their deliveries were needed until now
        await conn.execute(QUERIES["forget_delivered"], batch)


class Claim:
    """One claimed batch inside its open transaction."""

    def __init__(
        self,
        conn: asyncpg.Connection,
        rows: list[ClaimedRow],
        availability: _Availability = _NO_AVAILABILITY,
    ) -> None:
        self._conn = conn
        self._availability = availability
        self.rows = rows
        self.is_written = False
        self.shards_read = 1
        """How many shards the claim read: all but the last had no more due rows."""

    async def lock_caps(self, subjects: Sequence[str]) -> Sequence[LedgerRecord]:
        """Lock the frequency caps' entries of ``subjects`` for the transaction; those that
        hold anything."""
        with map_db_errors("locking frequency cap counts", self._availability):
            found = await self._conn.fetchval(QUERIES["cap_lock"], codec.dumps(subjects).decode())
        records: Sequence[LedgerRecord] = codec.loads(found)
        return records

    async def write_caps(self, now: float, keep_s: float, added: CapsAdded) -> None:
        """Count what the batch admitted in the caps' entries."""
        with map_db_errors("writing frequency cap counts", self._availability):
            await self._conn.execute(QUERIES["cap_write"], codec.dumps(added).decode(), now, keep_s)

    async def write(
        self,
        results: Sequence[ResultRecord],
        requeues: Sequence[Requeue],
        invalid_tokens: Sequence[InvalidToken],
        delivered_batch: int | None = None,
    ) -> None:
        """Write the batch's outcomes; they become durable when the claim block exits.

        ``delivered_batch``: the key under which the batch's accepted sends were written to
        ``pushgres.delivered``; they are deleted in the same transaction.
        """
        batches = () if delivered_batch is None else (delivered_batch,)
        with map_db_errors("writing batch results", self._availability):
            await _write(self._conn, results, requeues, invalid_tokens, batches)
        self.is_written = True


class Store:
    """A pool of daemon sessions on one database."""

    def __init__(self, pool: asyncpg.Pool, dsn: str) -> None:
        self._pool = pool
        self._dsn = dsn
        self._availability = _Availability()

    @classmethod
    async def open(
        cls,
        dsn: str,
        *,
        max_size: int,
        idle_in_transaction_timeout_s: float,
        statement_timeout_s: float,
        connect_timeout_s: float = 10.0,
    ) -> Store:
        # Session settings sent in the startup packet are the session's defaults: the RESET
        # ALL that the pool runs on every release returns to them, so every use of every
        # connection is marked and has its timeouts, at no round trip per use.
        session = {
            DAEMON_MARK: "on",
            "idle_in_transaction_session_timeout": str(int(idle_in_transaction_timeout_s * 1000)),
            "statement_timeout": str(int(statement_timeout_s * 1000)),
        }
        with map_db_errors("connecting to PostgreSQL"):
            pool = await asyncpg.create_pool(
                dsn,
                # No standing connection: the pool would otherwise keep reconnecting it
                # during an outage and log a traceback for each failed attempt.
                min_size=0,
                max_size=max_size,
                server_settings=session,
                timeout=connect_timeout_s,
                command_timeout=statement_timeout_s + 5,
            )
        return cls(pool, dsn)

    @property
    def is_available(self) -> bool:
        """False from the first failure of an outage until the next success."""
        return self._availability.is_up

    async def close(self) -> None:
        try:
            async with asyncio.timeout(CLOSE_TIMEOUT_S):
                await self._pool.close()
        except TimeoutError:
            self._pool.terminate()

    def terminate(self) -> None:
        self._pool.terminate()

    def _guard(self, action: str) -> contextlib.AbstractContextManager[None]:
        return map_db_errors(action, self._availability)

    def pool_stats(self) -> tuple[int, int, int]:
        """Database connections: open, in use, and the most the pool may open."""
        size = self._pool.get_size()
        return size, size - self._pool.get_idle_size(), self._pool.get_max_size()

    async def queue_sample(self) -> dict[str, tuple[int, int, float]]:
        """Per app: rows queued and rows due now (each counted up to ``QUEUE_COUNT_CAP``), and
        the age of the oldest due row in seconds."""
        with self._guard("sampling the queue"):
            async with self._pool.acquire(timeout=ACQUIRE_TIMEOUT_S) as conn:
                records = await conn.fetch(QUERIES["queue_sample"], QUEUE_COUNT_CAP)
        return {r["app"]: (r["depth"], r["ready"], r["oldest_ready_age_s"]) for r in records}

    async def check_schema(self) -> int:
        with self._guard("checking the schema"):
            async with self._pool.acquire(timeout=ACQUIRE_TIMEOUT_S) as conn:
                return await check_schema(conn)

    @contextlib.asynccontextmanager
    async def claim(
        self,
        app: str,
        limit: int,
        shards: Sequence[int] = ALL_SHARDS,
        delivered_batch: int | None = None,
    ) -> AsyncIterator[Claim]:
        """Claim up to ``limit`` ready rows of ``app`` in a transaction held for the block.

        The shards are read in the order given, one statement each, until ``limit`` rows are
        claimed (a backlog fills a claim from its first shard). The transaction commits when
        the block exits normally (after :meth:`Claim.write`) and rolls back on any exception
        or cancellation, putting the rows back.

        ``delivered_batch``: the key the batch's acceptances go to ``pushgres.delivered``
        under; the transaction locks it, so claims skip those rows while the batch lives.
        """
        with self._guard("claiming a batch"):
            conn = await self._pool.acquire(timeout=ACQUIRE_TIMEOUT_S)
        try:
            tx = conn.transaction()
            with self._guard("claiming a batch"):
                await tx.start()
            try:
                rows: list[ClaimedRow] = []
                read = 0
                with self._guard("claiming a batch"):
                    if delivered_batch is not None:
                        await conn.execute(QUERIES["lock_batch"], delivered_batch)
                    for shard in shards:
                        records = await conn.fetch(
                            QUERIES["claim_batch"], app, limit - len(rows), shard
                        )
                        rows += [ClaimedRow(*r) for r in records]
                        read += 1
                        if len(rows) >= limit:
                            break
                claim = Claim(conn, rows, self._availability)
                claim.shards_read = read
                yield claim
            except BaseException:
                with contextlib.suppress(Exception):
                    await tx.rollback()
                raise
            else:
                with self._guard("committing a batch"):
                    await tx.commit()
        finally:
            with contextlib.suppress(Exception):
                await self._pool.release(conn)

    async def take_back(
        self,
        leased: Sequence[ClaimedRow],
        results: Sequence[ResultRecord],
        requeues: Sequence[Requeue],
        invalid_tokens: Sequence[InvalidToken],
        delivered_batches: Iterable[int] = (),
    ) -> set[int]:
        """Record late answers of leased rows; returns the ids that were still ours.

        ``leased`` are the rows as they were claimed (their lease holds one more attempt).
        Outcomes of rows whose lease was claimed by someone else meanwhile are dropped: that
        claim sends and records them. ``delivered_batches``: the keys of the batches whose
        late acceptances were written to ``pushgres.delivered``; deleted with the outcomes.
        """
        with self._guard("recording late answers"):
            async with self._pool.acquire(timeout=ACQUIRE_TIMEOUT_S) as conn, conn.transaction():
                records = await conn.fetch(
                    QUERIES["take_back_stragglers"],
                    [r.id for r in leased],
                    [r.attempts + 1 for r in leased],
                )
                ours = {r[0] for r in records}
                if len(ours) < len(leased):
                    results = [r for r in results if r.row.id in ours]
                    requeues = [q for q in requeues if q.row.id in ours]
                    owned = {(r.app, r.device_token) for r in leased if r.id in ours}
                    invalid_tokens = [t for t in invalid_tokens if (t.app, t.device_token) in owned]
                await _write(conn, results, requeues, invalid_tokens, delivered_batches)
        return ours

    async def write_delivered(self, batches: Sequence[tuple[int, list[int], list[int]]]) -> None:
        """Write down sends the provider accepted (``pushgres.delivered``): per batch key, the
        ids and their attempts; one transaction, before their batches commit."""
        keys: list[int] = []
        ids: list[int] = []
        attempts: list[int] = []
        lows: list[int] = []
        highs: list[int] = []
        for key, batch_ids, batch_attempts in batches:
            keys.append(key)
            lows.append(len(ids) + 1)
            ids += batch_ids
            attempts += batch_attempts
            highs.append(len(ids))
        with self._guard("recording accepted sends"):
            async with self._pool.acquire(timeout=ACQUIRE_TIMEOUT_S) as conn:
                await conn.execute(QUERIES["write_delivered"], keys, ids, lows, highs, attempts)

    async def heartbeat(
        self, daemon_id: str, host: str, pid: int, apps: Sequence[str], live_s: float
    ) -> dict[str, list[str]]:
        """Record that this daemon is alive and serves ``apps``; the apps of every daemon alive
        within ``live_s`` (this one included), by daemon id."""
        with self._guard("recording the daemon heartbeat"):
            async with self._pool.acquire(timeout=ACQUIRE_TIMEOUT_S) as conn:
                await conn.execute(QUERIES["heartbeat"], daemon_id, host, pid, list(apps))
                records = await conn.fetch(QUERIES["live_daemons"], live_s)
        return {r["id"]: list(r["apps"]) for r in records}

    async def forget_daemon(self, daemon_id: str) -> None:
        with self._guard("removing the daemon heartbeat"):
            async with self._pool.acquire(timeout=ACQUIRE_TIMEOUT_S) as conn:
                await conn.execute(QUERIES["forget_daemon"], daemon_id)

    async def fail_unserved_apps(
        self, served: Sequence[str], live_s: float, grace_s: float, limit: int
    ) -> list[ResultRecord]:
        """Fail rows of apps that neither ``served`` nor any daemon alive within ``live_s`` serves.

        Only rows older than ``grace_s`` are failed, so a daemon starting up with a new app
        has time to record its heartbeat.
        """
        with self._guard("failing rows of unknown apps"):
            async with self._pool.acquire(timeout=ACQUIRE_TIMEOUT_S) as conn:
                present = {r["app"] for r in await conn.fetch(QUERIES["queue_apps"])}
                if not present - set(served):
                    return []
                alive = {r["app"] for r in await conn.fetch(QUERIES["served_apps"], live_s)}
            failed: list[ResultRecord] = []
            for app in sorted(present - set(served) - alive):
                failed += await self._fail_app(app, grace_s, limit)
            return failed

    async def _fail_app(self, app: str, grace_s: float, limit: int) -> list[ResultRecord]:
        async with self._pool.acquire(timeout=ACQUIRE_TIMEOUT_S) as conn, conn.transaction():
            records = await conn.fetch(QUERIES["claim_unknown_app"], app, grace_s, limit)
            results = [
                ResultRecord(
                    row=row,
                    status="failed",
                    provider_status=None,
                    reason=f"UnknownApp: no running daemon serves an app named {row.app!r}",
                    provider_id=None,
                    attempts=row.attempts,
                )
                for row in (ClaimedRow(*r) for r in records)
            ]
            await _write(conn, results, (), ())
            return results

    async def maintenance(
        self, *, retention_days: int, dedupe_retention_days: int, device_retention_days: int
    ) -> None:
        """Create upcoming result partitions, drop expired ones, prune old keys and daemons,
        purge long-retired devices, forget old dead tokens, old fan-outs' groups and
        deliveries whose batch committed without forgetting them."""
        with self._guard("maintenance"):
            async with self._pool.acquire(timeout=ACQUIRE_TIMEOUT_S) as conn, conn.transaction():
                if not await conn.fetchval(QUERIES["maintenance_lock"]):
                    return
                await conn.execute(QUERIES["ensure_partitions"], 2)
                dropped = await conn.fetchval(QUERIES["drop_partitions"], retention_days)
                await conn.execute(QUERIES["prune_dedupe_keys"], dedupe_retention_days)
                await conn.execute(QUERIES["prune_daemons"])
                purged = await conn.fetchval(QUERIES["purge_devices"], device_retention_days)
                await conn.execute(QUERIES["prune_invalid_tokens"], device_retention_days)
                await conn.execute(QUERIES["prune_groups"], retention_days)
                await conn.execute(QUERIES["prune_cap_ledger"])
                await conn.execute(QUERIES["prune_delivered"], DELIVERED_KEEP_S)
        if dropped:
            logger.info("dropped %d old result partitions", dropped, extra={"action": "maintain"})
        if purged:
            logger.info(
                "purged %d device(s) unregistered or uninstalled for %d days",
                purged,
                device_retention_days,
                extra={"action": "maintain"},
            )

    async def mark_stale_devices(self, app: str, days: int) -> int:
        """Mark ``app``'s devices not seen for ``days`` stale, a bounded batch per statement;
        how many were marked."""
        marked = 0
        with self._guard("marking stale devices"):
            while True:
                async with self._pool.acquire(timeout=ACQUIRE_TIMEOUT_S) as conn:
                    n = int(
                        await conn.fetchval(QUERIES["mark_stale_devices"], app, days, STALE_BATCH)
                    )
                marked += n
                if n < STALE_BATCH:
                    return marked

    async def probe_devices(
        self, app: str, after_days: int, every_days: int, limit: int, message: str
    ) -> int:
        """Enqueue up to ``limit`` uninstall probes for ``app``'s quiet devices; how many."""
        with self._guard("enqueueing uninstall probes"):
            async with self._pool.acquire(timeout=ACQUIRE_TIMEOUT_S) as conn, conn.transaction():
                if not await conn.fetchval(QUERIES["probe_turn"], app):
                    return 0  # another daemon is probing this app right now
                return int(
                    await conn.fetchval(
                        QUERIES["probe_devices"], app, after_days, every_days, limit, message
                    )
                )

    async def sync_app_groups(
        self, groups: Mapping[str, Sequence[str]], apps: Sequence[str]
    ) -> None:
        """The config's groups of apps (``apps``: the config's apps), for fan-outs from SQL."""
        with self._guard("writing the app groups"):
            async with self._pool.acquire(timeout=ACQUIRE_TIMEOUT_S) as conn:
                await sync_app_groups(conn, groups, apps)

    async def sync_categories(self, categories: Mapping[str, bool]) -> None:
        """The config's categories (name: transactional), where enqueues are checked."""
        with self._guard("writing the categories"):
            async with self._pool.acquire(timeout=ACQUIRE_TIMEOUT_S) as conn:
                await conn.execute(
                    QUERIES["sync_categories"], list(categories), list(categories.values())
                )

    async def queue_dead_rows(self) -> tuple[int, int, bool]:
        """The queue's dead and live rows (as the statistics last counted them), and whether
        this role may vacuum it."""
        with self._guard("counting the queue's dead rows"):
            async with self._pool.acquire(timeout=ACQUIRE_TIMEOUT_S) as conn:
                record = await conn.fetchrow(QUERIES["queue_dead_rows"])
        assert record is not None
        return int(record["dead"]), int(record["live"]), bool(record["may_vacuum"])

    async def vacuum_queue(self) -> None:
        """Vacuum the queue now, unless a vacuum of it is already running."""
        with self._guard("vacuuming the queue"):
            async with self._pool.acquire(timeout=ACQUIRE_TIMEOUT_S) as conn:
                # The session's statement_timeout bounds claims and writes, not a vacuum of a
                # big queue: lifted for this statement, bounded by VACUUM_TIMEOUT_S instead.
                await conn.execute(QUERIES["lift_statement_timeout"])
                try:
                    await conn.execute(QUERIES["vacuum_queue"], timeout=VACUUM_TIMEOUT_S)
                finally:
                    await conn.execute(QUERIES["reset_statement_timeout"])

    async def device_counts(self) -> dict[tuple[str, str], int]:
        """Devices by app and state."""
        with self._guard("counting devices"):
            async with self._pool.acquire(timeout=ACQUIRE_TIMEOUT_S) as conn:
                return await device_counts_of(conn)

    def listener(self, on_notify: Callable[[], None]) -> Listener:
        """The LISTEN connection that wakes the daemon on enqueues (run it as a task)."""
        return Listener(self._dsn, on_notify)


class Listener:
    """A dedicated connection listening for enqueue hints, reconnecting by itself.

    :meth:`run` holds the connection until cancelled. When the connection is lost (the
    database restarts, the network drops — found by a ping every ``LISTEN_KEEPALIVE_S`` when
    nothing else happens) it logs that once, reconnects with a backoff capped at one second,
    logs once that it is back, and wakes the daemon, since enqueues may have come meanwhile.
    """

    def __init__(self, dsn: str, on_notify: Callable[[], None]) -> None:
        self._dsn = dsn
        self._on_notify = on_notify
        self.is_listening = False
        self.reconnects = 0
        self.alive_at: float | None = None
        """When the database last answered on this connection (monotonic), if it ever did."""

    async def run(self) -> None:
        delay = LISTEN_RETRY_INITIAL_S
        lost = False
        while True:
            try:
                async with asyncio.timeout(LISTEN_CONNECT_TIMEOUT_S):
                    conn = await asyncpg.connect(self._dsn)
            except (asyncpg.PostgresError, *_UNAVAILABLE) as exc:
                if not lost:
                    lost = True
                    self._log_lost(exc)
                await asyncio.sleep(delay)
                delay = min(LISTEN_RETRY_MAX_S, delay * 2)
                continue
            try:
                closed = asyncio.Event()
                conn.add_termination_listener(lambda _, closed=closed: closed.set())
                await conn.add_listener(NOTIFY_CHANNEL, self._callback)
                self.is_listening = True
                self.alive_at = time.monotonic()
                delay = LISTEN_RETRY_INITIAL_S
                if lost:
                    lost = False
                    self.reconnects += 1
                    logger.warning(
                        "LISTEN connection to PostgreSQL is back; enqueues wake the daemon again",
                        extra={"action": "listen_restored"},
                    )
                self._on_notify()  # enqueues may have come while it was down
                await self._hold(conn, closed)
            except (asyncpg.PostgresError, *_UNAVAILABLE) as exc:
                lost = True
                self._log_lost(exc)
            finally:
                self.is_listening = False
                conn.terminate()

    async def _hold(self, conn: asyncpg.Connection, closed: asyncio.Event) -> None:
        """Return (or raise) once the connection is gone."""
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(LISTEN_KEEPALIVE_S):
                    await closed.wait()
            if closed.is_set():
                raise ConnectionError("the connection closed")
            async with asyncio.timeout(LISTEN_PING_TIMEOUT_S):
                await conn.execute(QUERIES["ping"])
            self.alive_at = time.monotonic()

    def problem(self) -> str | None:
        """Why the database cannot be said to answer now, or None: judged from this
        connection's keepalive, so that asking costs no query and no pooled connection."""
        if not self.is_listening or self.alive_at is None:
            return "the LISTEN connection to PostgreSQL is down (reconnecting)"
        silent = time.monotonic() - self.alive_at
        if silent > 2 * LISTEN_KEEPALIVE_S + LISTEN_PING_TIMEOUT_S:
            return f"PostgreSQL has not answered for {silent:.0f}s"
        return None

    def _callback(self, *_: object) -> None:
        self._on_notify()

    @staticmethod
    def _log_lost(exc: BaseException) -> None:
        logger.warning(
            "LISTEN connection to PostgreSQL lost (%s); reconnecting, the daemon polls meanwhile",
            type(exc).__name__,
            extra={"action": "listen_lost"},
        )


# -- for callers with their own connection: the enqueue API, the CLI, the demo ----------------

COPY_THRESHOLD: Final = 1000  # from this many rows an enqueue uses COPY


async def insert_notifications(
    conn: asyncpg.Connection, rows: Sequence[tuple[Any, ...]]
) -> list[int | None]:
    """Insert queue rows (``ENQUEUE_COLUMNS`` but ``id``); each one's id, or None if deduped.

    Call it inside a transaction: the ids are reserved first, so that the rows the dedupe
    trigger skipped can be told from those it inserted.
    """
    reserved = [r[0] for r in await conn.fetch(QUERIES["reserve_ids"], len(rows))]
    if len(rows) >= COPY_THRESHOLD:
        send_at = ENQUEUE_COLUMNS.index("send_at") - 1  # in a row, which has no id
        now = dt.datetime.now(dt.UTC)
        records = [
            (rid, *row[:send_at], row[send_at] or now, *row[send_at + 1 :])
            for rid, row in zip(reserved, rows, strict=True)
        ]
        await conn.copy_records_to_table(
            "queue", schema_name="pushgres", columns=ENQUEUE_COLUMNS, records=records
        )
    else:
        await conn.execute(QUERIES["enqueue_rows"], reserved, *map(list, zip(*rows, strict=True)))
    inserted = {r[0] for r in await conn.fetch(QUERIES["inserted_ids"], reserved)}
    return [rid if rid in inserted else None for rid in reserved]


async def category_names(conn: asyncpg.Connection) -> set[str]:
    """The categories the daemons' config declares (as last written by a daemon)."""
    return {r["name"] for r in await conn.fetch(QUERIES["categories"])}


async def dedupe_holders(conn: asyncpg.Connection, app: str, keys: Sequence[str]) -> dict[str, int]:
    """The id of the notification holding each of ``app``'s dedupe ``keys``."""
    records = await conn.fetch(QUERIES["dedupe_lookup"], list(keys), app)
    return {r["dedupe_key"]: int(r["id"]) for r in records}


async def fetch_outcomes(
    conn: asyncpg.Connection | asyncpg.Pool, ids: Sequence[int]
) -> list[asyncpg.Record]:
    """Each known id's state (``queued`` or its result), in the order of ``ids``."""
    return list(await conn.fetch(QUERIES["outcome"], list(ids)))


async def queue_depth(conn: asyncpg.Connection) -> list[asyncpg.Record]:
    """Per app and platform: rows queued, rows ready now, age of the oldest."""
    return list(await conn.fetch(QUERIES["queue_depth"]))


async def recent_outcomes(conn: asyncpg.Connection, window_s: float) -> list[asyncpg.Record]:
    """Outcomes by app, status and reason over the last ``window_s`` seconds."""
    return list(await conn.fetch(QUERIES["recent_outcomes"], window_s))


async def results_by_reason(conn: asyncpg.Connection, lo: int, hi: int) -> list[asyncpg.Record]:
    return list(await conn.fetch(QUERIES["results_by_reason"], lo, hi))


async def results_done(conn: asyncpg.Connection, lo: int, hi: int) -> int:
    return int(await conn.fetchval(QUERIES["results_done"], lo, hi))


async def results_timing(conn: asyncpg.Connection, lo: int, hi: int) -> asyncpg.Record:
    """First and last finish and the enqueue→sent p50/p99 of the ids ``lo..hi``."""
    record = await conn.fetchrow(QUERIES["results_timing"], lo, hi)
    assert record is not None  # an aggregate always returns its one row
    return record


async def results_sent_tokens(conn: asyncpg.Connection, lo: int, hi: int) -> list[asyncpg.Record]:
    return list(await conn.fetch(QUERIES["results_sent_tokens"], lo, hi))


async def group_id_range(conn: asyncpg.Connection, group_id: int) -> tuple[int, int] | None:
    """The lowest and highest notification id of a fan-out (None: it has none)."""
    record = await conn.fetchrow(QUERIES["group_id_range"], group_id)
    if record is None or record["lo"] is None:
        return None
    return int(record["lo"]), int(record["hi"])


# -- the device registry (pushgres.devices; the API is pushgres.devices) -------------------


async def register_device(conn: asyncpg.Connection, *args: Any) -> asyncpg.Record:
    """``register_device``'s arguments in the order of its query; its (state, event)."""
    record = await conn.fetchrow(QUERIES["register_device"], *args)
    assert record is not None  # the function returns exactly one row
    return record


async def identify_device(conn: asyncpg.Connection, app: str, token: str, user_id: str) -> bool:
    return bool(await conn.fetchval(QUERIES["identify_device"], app, token, user_id))


async def logout_device(conn: asyncpg.Connection, app: str, token: str) -> bool:
    return bool(await conn.fetchval(QUERIES["logout_device"], app, token))


async def rotate_device_token(
    conn: asyncpg.Connection, app: str, old_token: str, new_token: str
) -> str | None:
    event = await conn.fetchval(QUERIES["rotate_device_token"], app, old_token, new_token)
    return None if event is None else str(event)


async def unregister_devices(conn: asyncpg.Connection, app: str, tokens: Sequence[str]) -> int:
    return int(await conn.fetchval(QUERIES["unregister_devices"], app, list(tokens)))


async def user_devices(conn: asyncpg.Connection, app: str, user_id: str) -> list[asyncpg.Record]:
    return list(await conn.fetch(QUERIES["user_devices"], app, user_id))


async def device(conn: asyncpg.Connection, app: str, token: str) -> asyncpg.Record | None:
    record: asyncpg.Record | None = await conn.fetchrow(QUERIES["device"], app, token)
    return record


async def device_history(conn: asyncpg.Connection, app: str, token: str) -> list[asyncpg.Record]:
    return list(await conn.fetch(QUERIES["device_history"], app, token))


DEVICE_IMPORT_COLUMNS: Final = (
    "n",
    "app",
    "platform",
    "token",
    "user_id",
    "installation_id",
    "environment",
    "timezone",
    "locale",
    "app_version",
    "attributes",
    "registered_at",
    "last_seen_at",
)
EXPORT_PREFETCH: Final = 5000  # rows per round trip of an export's cursor


async def load_device_import(conn: asyncpg.Connection, records: Sequence[tuple[Any, ...]]) -> None:
    """COPY an import's rows (``DEVICE_IMPORT_COLUMNS``) into a temporary table.

    Call it inside a transaction, then :func:`device_import_problem` and
    :func:`apply_device_import`; the table goes with the transaction.
    """
    await conn.execute(QUERIES["device_import_table"])
    await conn.copy_records_to_table(
        "pushgres_device_import",
        schema_name="pg_temp",
        columns=DEVICE_IMPORT_COLUMNS,
        records=records,
    )
    await conn.execute(QUERIES["device_import_analyze"])


async def device_import_problem(conn: asyncpg.Connection) -> tuple[int, str, str] | None:
    """The first loaded row the registry refuses, as (row number, field, value), or None."""
    record = await conn.fetchrow(QUERIES["device_import_problem"])
    return None if record is None else (record["n"], record["field"], record["value"])


async def apply_device_import(conn: asyncpg.Connection) -> tuple[int, int, int]:
    """Upsert the loaded rows into the registry; (inserted, updated, moved)."""
    record = await conn.fetchrow(QUERIES["device_import_apply"])
    assert record is not None  # an aggregate always returns its one row
    await conn.execute(QUERIES["device_import_drop"])
    return record["inserted"], record["updated"], record["moved"]


async def export_devices(
    conn: asyncpg.Connection, app: str | None, states: Sequence[str] | None
) -> AsyncGenerator[asyncpg.Record, None]:
    """Every device of ``app`` (None: all) in ``states`` (None: all), by a server-side cursor.

    The cursor's transaction stays open until the iteration ends: close the iterator
    (``contextlib.aclosing``) when stopping early.
    """
    async with conn.transaction():
        cursor = conn.cursor(
            QUERIES["export_devices"],
            app,
            None if states is None else list(states),
            prefetch=EXPORT_PREFETCH,
        )
        async for record in cursor:
            yield record


async def device_counts_of(conn: asyncpg.Connection) -> dict[tuple[str, str], int]:
    """Registered devices by (app, state)."""
    records = await conn.fetch(QUERIES["device_counts"])
    return {(r["app"], r["state"]): int(r["n"]) for r in records}


# -- fan-outs to people and uninstall probes -------------------------------------------------


async def sync_app_groups(
    conn: asyncpg.Connection, groups: Mapping[str, Sequence[str]], apps: Sequence[str]
) -> None:
    """Write the config's app groups to ``pushgres.app_groups`` (at start and each reload).

    A group no longer in the config is removed when all its apps are among ``apps`` (the
    config's): a group of apps another daemon's config serves is left to that daemon.
    """
    await conn.execute(
        QUERIES["sync_app_groups"],
        list(groups),
        [codec.dumps(list(members)).decode() for members in groups.values()],
        sorted(apps),
    )


async def target_platforms(conn: asyncpg.Connection, target: str) -> list[str]:
    """The platforms a fan-out to ``target`` (an app or a group of apps) reaches."""
    return [r["platform"] for r in await conn.fetch(QUERIES["target_platforms"], target)]


async def open_fanout(conn: asyncpg.Connection, *args: Any) -> asyncpg.Record:
    """``pushgres.open_fanout``'s arguments in order; its one row."""
    record = await conn.fetchrow(QUERIES["open_fanout"], *args)
    assert record is not None  # the function returns exactly one row
    return record


async def fanout_slice(
    conn: asyncpg.Connection,
    group_id: int,
    user_ids: Sequence[str],
    slice_no: int,
    send_at: dt.datetime | None,
    max_attempts: int,
) -> asyncpg.Record:
    """One slice of a fan-out's users (``pushgres.send_to_users`` with ``slice``)."""
    record = await conn.fetchrow(
        QUERIES["fanout_slice"], group_id, user_ids, slice_no, send_at, max_attempts
    )
    assert record is not None  # the function returns exactly one row
    return record


async def close_fanout(conn: asyncpg.Connection, group_id: int) -> asyncpg.Record:
    """Mark a fan-out complete; its final counts."""
    record = await conn.fetchrow(QUERIES["close_fanout"], group_id)
    assert record is not None  # the group was opened by the caller
    return record


async def fanout_group(conn: asyncpg.Connection, group_id: int) -> asyncpg.Record | None:
    record: asyncpg.Record | None = await conn.fetchrow(QUERIES["fanout_group"], group_id)
    return record


async def group_outcome(
    conn: asyncpg.Connection, group_id: int, per_user: bool
) -> list[asyncpg.Record]:
    return list(await conn.fetch(QUERIES["group_outcome"], group_id, per_user))


async def uninstalls_by_day(
    conn: asyncpg.Connection, days: int, app: str | None
) -> list[asyncpg.Record]:
    return list(await conn.fetch(QUERIES["uninstalls_by_day"], days, app))
