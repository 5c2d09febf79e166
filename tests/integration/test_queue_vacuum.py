"""The daemon's queue vacuum against a real PostgreSQL: it vacuums once the dead rows reach the
threshold, not before, and leaves the queue to autovacuum when its role does not own it."""

from __future__ import annotations

import asyncio
import secrets
import time
import urllib.parse

import asyncpg

from pushgres.api import enqueue
from pushgres.config import DaemonConfig
from pushgres.db.store import Store
from pushgres.housekeeping import Housekeeping
from pushgres.models import Notification
from pushgres.pipeline.observer import StatsObserver
from pushgres.simulator import devkit

TIMEOUTS = {"idle_in_transaction_timeout_s": 60.0, "statement_timeout_s": 30.0}
ROWS = 300


async def _dead_rows(dsn: str, at_least: int) -> None:
    """Enqueue ``at_least`` rows, delete them, and wait until the statistics count them."""
    conn = await asyncpg.connect(dsn)
    try:
        rows = [
            Notification(
                app="ios",
                platform="apns",
                device_token=devkit.apns_token("ok", n),
                payload={"aps": {}},
            )
            for n in range(at_least)
        ]
        await enqueue(conn, rows)
        await conn.execute("DELETE FROM pushgres.queue")
    finally:
        await conn.close()  # a closing backend flushes its statistics
    conn = await asyncpg.connect(dsn)
    try:
        deadline = time.monotonic() + 20
        while (
            await conn.fetchval(
                "SELECT n_dead_tup FROM pg_stat_user_tables WHERE relid = 'pushgres.queue'::regclass"
            )
            < at_least
        ):
            assert time.monotonic() < deadline, "the deletes never reached the statistics"
            await asyncio.sleep(0.2)
    finally:
        await conn.close()


async def _vacuums(dsn: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        return int(
            await conn.fetchval(
                "SELECT vacuum_count FROM pg_stat_user_tables "
                "WHERE relid = 'pushgres.queue'::regclass"
            )
        )
    finally:
        await conn.close()


def _chores(store: Store, threshold: int) -> Housekeeping:
    return Housekeeping(
        store,
        daemon_id="test",
        apps=["ios"],
        settings=DaemonConfig(queue_vacuum_dead_rows=threshold),
        observer=StatsObserver(),
    )


async def test_the_queue_is_vacuumed_once_its_dead_rows_reach_the_threshold(dsn: str) -> None:
    await _dead_rows(dsn, ROWS)
    store = await Store.open(dsn, max_size=1, **TIMEOUTS)  # one session: the vacuum's
    try:
        before = await _vacuums(dsn)
        assert await _chores(store, ROWS * 10).vacuum_round() is False  # not enough yet
        assert await _vacuums(dsn) == before
        assert await _chores(store, ROWS).vacuum_round() is True
        assert await _vacuums(dsn) == before + 1
        dead, _, may = await store.queue_dead_rows()
        assert may and dead < ROWS  # the vacuum removed them
        # The session's statement_timeout, lifted for the vacuum, is back.
        async with store._pool.acquire() as conn:
            assert await conn.fetchval("SHOW statement_timeout") == "30s"
    finally:
        await store.close()


async def test_a_role_that_does_not_own_the_queue_leaves_it_to_autovacuum(dsn: str) -> None:
    await _dead_rows(dsn, ROWS)
    role = f"pushgres_sender_{secrets.token_hex(4)}"
    admin = await asyncpg.connect(dsn)
    try:
        await admin.execute(f"CREATE ROLE {role} LOGIN")
        await admin.execute(f"GRANT USAGE ON SCHEMA pushgres TO {role}")
        parts = urllib.parse.urlsplit(dsn)
        host = parts.hostname or ""
        netloc = f"{role}@{host}" + (f":{parts.port}" if parts.port else "")
        sender_dsn = urllib.parse.urlunsplit(parts._replace(netloc=netloc))
        store = await Store.open(sender_dsn, max_size=2, **TIMEOUTS)
        try:
            before = await _vacuums(dsn)
            assert await _chores(store, 1).vacuum_round() is None
            assert await _vacuums(dsn) == before
        finally:
            await store.close()
    finally:
        await admin.execute(f"REVOKE ALL ON SCHEMA pushgres FROM {role}")
        await admin.execute(f"DROP ROLE {role}")
        await admin.close()
