"""Fan-out: enqueueing one portable message to 1,000,000 users' devices, and what it costs.

The registry is loaded first (not timed): ``users`` users over an iOS and an Android app of one
group; every user has one device, every other user a second one on the other platform (1.5
devices a user), and 3% of the devices are stale (skipped). Then a
:func:`pushgres.fanout.send_to_users` call to every user through the group is timed twice on
that registry, the queue emptied in between: in one transaction on one connection, and in
slices on ``CONNECTIONS`` connections at once (each slice its own transaction). Each gives
its wall time, the notifications it enqueued per second, and the CPU µs per notification of
this process (the client) and of all Postgres server processes. The target, 50,000
notifications/s, is for the fan-out on ``CONNECTIONS`` connections.
"""

from __future__ import annotations

import asyncio
import os
import pathlib
import time
from typing import Any

import asyncpg
import uvloop

from pushgres import fanout
from pushgres.db import store

from .e2e import _postmaster_pid, bench_database, migrate_database
from .procs import StepFailed, cpu_s, tree_cpu_s
from .report import FANOUT_TARGET_PER_S

__all__ = ["TARGET_PER_S", "run_fanout"]

TARGET_PER_S = FANOUT_TARGET_PER_S
CONNECTIONS = 2  # one Postgres session per core
GROUP = "shop"
APPS = ("shop-ios", "shop-android")
STALE_EVERY = 33  # about 3% of the devices
MESSAGE = {
    "title": "Your cart misses you",
    "body": "3 items are waiting for you",
    "data": {"campaign": "cart-recovery"},
    "badge": 1,
    "ttl": 86400,
}


def run_fanout(workdir: pathlib.Path, *, users: int) -> dict[str, Any]:
    """The fan-out figures (see the module docstring); raises :class:`StepFailed`."""
    state = workdir / "fanout"
    state.mkdir(parents=True, exist_ok=True)
    dsn, server = bench_database(state)
    try:
        migrate_database(dsn)
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            return runner.run(_run(dsn, users, server))
    finally:
        if server is not None:
            server.cleanup()


async def _run(dsn: str, users: int, server: Any) -> dict[str, Any]:
    pool = await asyncpg.create_pool(dsn, min_size=CONNECTIONS, max_size=CONNECTIONS)
    try:
        async with pool.acquire() as conn:
            if queued := await conn.fetchval("SELECT count(*) FROM pushgres.queue"):
                raise StepFailed(f"the database's queue is not empty ({queued} rows)")
            loading = time.monotonic()
            devices = await _load_registry(conn, users)
            load_s = time.monotonic() - loading
            await store.sync_app_groups(conn, {GROUP: APPS}, APPS)
            await conn.execute("ANALYZE pushgres.devices")
            postmaster = await _postmaster_pid(conn)
        if postmaster is None and server is not None:
            postmaster = server.get_pid()
        ids = [f"user-{i}" for i in range(users)]
        one = await _timed(pool, ids, 1, postmaster)
        async with pool.acquire() as conn:
            await conn.execute("TRUNCATE pushgres.queue")
        sliced = await _timed(pool, ids, CONNECTIONS, postmaster)
    finally:
        await pool.close()
    rate = sliced["notifications_per_s"]
    return {
        "users": sliced["users"],
        "devices": devices,
        "notifications": sliced["notifications"],
        "users_without_device": sliced["users_without_device"],
        "registry_load_s": load_s,
        "connections": CONNECTIONS,
        "wall_s": sliced["wall_s"],
        "notifications_per_s": rate,
        "client_cpu_us": sliced["client_cpu_us"],
        "postgres_cpu_us": sliced["postgres_cpu_us"],
        "one_transaction": one,
        "target_per_s": TARGET_PER_S,
        "meets_target": rate >= TARGET_PER_S,
    }


async def _timed(
    pool: asyncpg.Pool, ids: list[str], connections: int, postmaster: int | None
) -> dict[str, Any]:
    """One fan-out to every user on ``connections`` connections, timed."""
    async with pool.acquire() as conn:
        await conn.execute("CHECKPOINT")
    pg_before = tree_cpu_s(postmaster) if postmaster else None
    me_before = cpu_s(os.getpid())
    started = time.perf_counter()
    done = await fanout.send_to_users(pool, GROUP, ids, MESSAGE, connections=connections)
    wall_s = time.perf_counter() - started
    me_after = cpu_s(os.getpid())
    pg_after = tree_cpu_s(postmaster) if postmaster else None
    async with pool.acquire() as conn:
        queued = await conn.fetchval(
            "SELECT count(*) FROM pushgres.queue WHERE group_id = $1", done.group_id
        )
    if queued != done.notifications:
        raise StepFailed(
            f"the fan-out reported {done.notifications} rows, the queue holds {queued}"
        )
    n = done.notifications
    return {
        "connections": connections,
        "users": done.users,
        "users_without_device": done.users_without_device,
        "notifications": n,
        "wall_s": wall_s,
        "notifications_per_s": n / wall_s,
        "client_cpu_us": None
        if me_before is None or me_after is None
        else (me_after - me_before) / n * 1e6,
        "postgres_cpu_us": None
        if pg_before is None or pg_after is None
        else (pg_after - pg_before) / n * 1e6,
    }


async def _load_registry(conn: asyncpg.Connection, users: int) -> int:
    """COPY the devices straight into the registry (setup, not what is measured)."""
    records: list[tuple[Any, ...]] = []
    for i in range(users):
        user = f"user-{i}"
        first = APPS[i % 2]
        records.append((first, "apns" if first == APPS[0] else "fcm", _token(first, i), user))
        if i % 2 == 0:
            other = APPS[1]
            records.append((other, "fcm", _token(other, i), user))
    await conn.copy_records_to_table(
        "devices",
        schema_name="pushgres",
        columns=("app", "platform", "token", "user_id"),
        records=records,
    )
    await conn.execute(
        "UPDATE pushgres.devices SET state = 'stale' WHERE hashtext(token) % $1 = 0", STALE_EVERY
    )
    return len(records)


def _token(app: str, i: int) -> str:
    if app == APPS[0]:
        return f"{i:064x}"
    return f"bench-fcm-token-{i:09d}:APA91b"
