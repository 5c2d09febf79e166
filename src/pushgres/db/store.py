"""The daemon's access to PostgreSQL: claim a batch, write its outcomes back, maintenance.

A batch is claimed by ``DELETE … FOR UPDATE SKIP LOCKED … RETURNING`` inside a transaction that
stays open while the batch is sent (queue-design.md §12.3, "held" mode). The outcomes, the
retries and the invalid tokens are written in the same transaction, one statement each per
batch, and the commit makes the batch's fate durable at once. A crash, a kill or a dropped
connection rolls the transaction back and the rows are claimable again: nothing is lost, and
only notifications that were in flight can be sent twice.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Any

import asyncpg

from ..exceptions import StoreError
from ..models import ClaimedRow, InvalidToken, Requeue, ResultRecord
from .migrate import check_schema
from .queries import QUERIES

__all__ = [
    "Claim",
    "Store",
    "map_db_errors",
]

logger = logging.getLogger(__name__)


@contextlib.contextmanager
def map_db_errors(action: str) -> Iterator[None]:
    """Turn asyncpg and socket errors into :class:`StoreError`, keeping the cause."""
    try:
        yield
    except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError) as exc:
        raise StoreError(f"{action} failed: {type(exc).__name__}: {exc}") from exc


class Claim:
    """One claimed batch inside its open transaction."""

    def __init__(self, conn: asyncpg.Connection, rows: list[ClaimedRow]) -> None:
        self._conn = conn
        self.rows = rows
        self.is_written = False

    async def write(
        self,
        results: Sequence[ResultRecord],
        requeues: Sequence[Requeue],
        invalid_tokens: Sequence[InvalidToken],
    ) -> None:
        """Write the batch's outcomes: one statement per kind, never one per row."""
        with map_db_errors("writing batch results"):
            if results:
                await _write_results(self._conn, results)
            if invalid_tokens:
                await self._conn.execute(
                    QUERIES["invalidate_tokens"],
                    [t.app for t in invalid_tokens],
                    [t.device_token for t in invalid_tokens],
                    [t.reason for t in invalid_tokens],
                    [t.provider_timestamp for t in invalid_tokens],
                )
            if requeues:
                await self._conn.execute(QUERIES["requeue"], *_requeue_columns(requeues))
        self.is_written = True


RESULT_COLUMNS = (
    "id",
    "app",
    "platform",
    "device_token",
    "status",
    "provider_status",
    "reason",
    "provider_id",
    "attempts",
    "enqueued_at",
    "metadata",
)


async def _write_results(conn: asyncpg.Connection, results: Sequence[ResultRecord]) -> None:
    """Insert outcomes with one binary COPY (half the client CPU of an ``unnest`` insert)."""
    await conn.copy_records_to_table(
        "results",
        schema_name="pushgres",
        columns=RESULT_COLUMNS,
        records=[
            (
                r.row.id,
                r.row.app,
                r.row.platform,
                r.row.device_token,
                r.status,
                r.provider_status,
                r.reason,
                r.provider_id,
                r.attempts,
                r.row.enqueued_at,
                r.row.metadata,
            )
            for r in results
        ],
    )


def _requeue_columns(requeues: Sequence[Requeue]) -> list[list[Any]]:
    rows = [q.row for q in requeues]
    return [
        [r.id for r in rows],
        [r.app for r in rows],
        [r.platform for r in rows],
        [r.device_token for r in rows],
        [r.payload for r in rows],
        [r.priority for r in rows],
        [r.push_type for r in rows],
        [r.collapse_id for r in rows],
        [r.expires_at for r in rows],
        [r.topic for r in rows],
        [q.delay_s for q in requeues],
        [r.dedupe_key for r in rows],
        [r.max_attempts for r in rows],
        [r.metadata for r in rows],
        [q.attempts for q in requeues],
        [q.reason for q in requeues],
        [r.enqueued_at for r in rows],
    ]


def _claimed(record: asyncpg.Record) -> ClaimedRow:
    return ClaimedRow(*record)  # columns in field order (tests/unit/test_queries.py)


class Store:
    """A pool of daemon sessions on one database."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

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
        idle_ms = str(int(idle_in_transaction_timeout_s * 1000))
        statement_ms = str(int(statement_timeout_s * 1000))

        async def setup(conn: asyncpg.Connection) -> None:
            # On every acquire, not once per connection: the pool's release runs RESET ALL,
            # which would leave every later use unmarked and without timeouts.
            await conn.execute(QUERIES["session_setup"], idle_ms, statement_ms)

        with map_db_errors("connecting to PostgreSQL"):
            pool = await asyncpg.create_pool(
                dsn,
                min_size=1,
                max_size=max_size,
                setup=setup,
                timeout=connect_timeout_s,
                command_timeout=statement_timeout_s + 5,
            )
        return cls(pool)

    async def close(self) -> None:
        await self._pool.close()

    def terminate(self) -> None:
        self._pool.terminate()

    async def check_schema(self) -> int:
        with map_db_errors("checking the schema"):
            async with self._pool.acquire() as conn:
                return await check_schema(conn)

    @contextlib.asynccontextmanager
    async def claim(self, app: str, limit: int) -> AsyncIterator[Claim]:
        """Claim up to ``limit`` ready rows of ``app`` in a transaction held for the block.

        The transaction commits when the block exits normally (after :meth:`Claim.write`)
        and rolls back on any exception or cancellation, putting the rows back.
        """
        with map_db_errors("claiming a batch"):
            conn = await self._pool.acquire()
        try:
            tx = conn.transaction()
            with map_db_errors("claiming a batch"):
                await tx.start()
            try:
                with map_db_errors("claiming a batch"):
                    records = await conn.fetch(QUERIES["claim_batch"], app, limit)
                claim = Claim(conn, [_claimed(r) for r in records])
                yield claim
            except BaseException:
                with contextlib.suppress(Exception):
                    await tx.rollback()
                raise
            else:
                with map_db_errors("committing a batch"):
                    await tx.commit()
        finally:
            await self._pool.release(conn)

    async def fail_unknown_apps(
        self, known_apps: Sequence[str], grace_s: float, limit: int
    ) -> list[dict[str, Any]]:
        """Fail rows naming an app no daemon knows, once they are older than ``grace_s``."""
        with map_db_errors("failing rows of unknown apps"):
            async with self._pool.acquire() as conn:
                present = {r["app"] for r in await conn.fetch(QUERIES["queue_apps"])}
            unknown = sorted(present - set(known_apps))
            failed: list[dict[str, Any]] = []
            for app in unknown:
                failed += await self._fail_app(app, grace_s, limit)
            return failed

    async def _fail_app(self, app: str, grace_s: float, limit: int) -> list[dict[str, Any]]:
        with map_db_errors("failing rows of unknown apps"):
            async with self._pool.acquire() as conn, conn.transaction():
                records = await conn.fetch(QUERIES["claim_unknown_app"], app, grace_s, limit)
                if not records:
                    return []
                rows = [
                    ClaimedRow(
                        id=r["id"],
                        app=r["app"],
                        platform=r["platform"],
                        device_token=r["device_token"],
                        payload="{}",
                        priority=10,
                        push_type=None,
                        collapse_id=None,
                        expires_at=None,
                        topic=None,
                        send_at=r["enqueued_at"],
                        dedupe_key=None,
                        max_attempts=1,
                        metadata=r["metadata"],
                        attempts=r["attempts"],
                        last_reason=None,
                        enqueued_at=r["enqueued_at"],
                    )
                    for r in records
                ]
                results = [
                    ResultRecord(
                        row=row,
                        status="failed",
                        provider_status=None,
                        reason=f"UnknownApp: no app named {row.app!r} in the configuration",
                        provider_id=None,
                        attempts=row.attempts,
                    )
                    for row in rows
                ]
                await _write_results(conn, results)
                return [{"id": row.id, "app": row.app} for row in rows]

    async def maintenance(self, *, retention_days: int, dedupe_retention_days: int) -> None:
        """Create upcoming result partitions, drop expired ones, prune old dedupe keys."""
        with map_db_errors("maintenance"):
            async with self._pool.acquire() as conn, conn.transaction():
                if not await conn.fetchval(QUERIES["maintenance_lock"]):
                    return
                await conn.execute(QUERIES["ensure_partitions"], 2)
                dropped = await conn.fetchval(QUERIES["drop_partitions"], retention_days)
                await conn.execute(QUERIES["prune_dedupe_keys"], dedupe_retention_days)
        if dropped:
            logger.info("dropped %d old result partitions", dropped, extra={"action": "maintain"})

    async def listen(self, dsn: str, on_notify: Callable[[], None]) -> asyncpg.Connection:
        """A dedicated connection listening for enqueue hints; the caller closes it."""
        with map_db_errors("listening for enqueue notifications"):
            conn = await asyncpg.connect(dsn, timeout=10)

            def callback(*_: object) -> None:
                on_notify()

            await conn.add_listener("pushgres_enqueued", callback)
        return conn
