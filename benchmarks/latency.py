"""Latency under load: enqueue→sent while producers insert at half the measured maximum.

One daemon serves one APNs app against the sink (metrics on, default stages, the daemon's
default polling and NOTIFY settings). For each way of enqueueing, one notification per
``INSERT`` statement (``single``) and 100 per statement (``batch``):

1. **maximum**: producers insert as fast as they can, closed loop on 8 connections, for
   ``duration_s``; the maximum is the rate of notifications *sent* over that window (the whole
   chain, producers included, shares the machine), and the backlog it leaves is drained;
2. **open loop at 50 %**: inserts are scheduled every 10 ms at half that rate, each its own
   task on the 8-connection pool (a slow insert does not delay the next), for
   ``duration_s``; then every one of them is waited for.

Reported per way: the maximum, the rate offered and achieved, and enqueue→sent p50, p99 and
max over every notification of the open-loop phase (Postgres's clock at both ends:
``enqueued_at`` is set by the INSERT, ``finished_at`` by the write-back). Target: p99 <=
100 ms. The producers run on the same two cores as the daemon, Postgres and the sink.
"""

from __future__ import annotations

import asyncio
import pathlib
import time
from typing import Any

import asyncpg
import uvloop

from pushgres import codec

from .e2e import scene
from .fairness import _until
from .procs import StepFailed
from .sink import Sink
from .workload import APP, PAYLOAD, TOKEN_RING, Credentials, device_token

__all__ = ["MODES", "run_latency"]

MODES = {"single": 1, "batch": 100}
PRODUCER_CONNECTIONS = 8
TICK_S = 0.01
TARGET_P99_S = 0.1
INSERT_SQL = """
INSERT INTO pushgres.queue (app, platform, device_token, payload)
SELECT $1, 'apns', t, $3::jsonb FROM unnest($2::text[]) AS t
RETURNING id
"""
LATENCY_SQL = """
SELECT count(*) AS n,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM finished_at - enqueued_at)::float8)
           AS p50,
       percentile_cont(0.99) WITHIN GROUP (ORDER BY extract(epoch FROM finished_at - enqueued_at)::float8)
           AS p99,
       max(extract(epoch FROM finished_at - enqueued_at))::float8 AS max,
       count(*) FILTER (WHERE status <> 'sent') AS not_sent
FROM pushgres.results WHERE id = ANY($1::bigint[])
"""
SENT_SQL = "SELECT coalesce(sum(n_tup_ins), 0)::bigint FROM pg_stat_user_tables WHERE relname LIKE 'results%'"
DONE_SQL = "SELECT count(*) FROM pushgres.results WHERE id = ANY($1::bigint[])"
QUEUED_SQL = "SELECT count(*) FROM pushgres.queue"


class _Producer:
    """Inserts rows of ``size`` notifications, cycling through the token ring."""

    def __init__(self, pool: asyncpg.Pool, size: int) -> None:
        self._pool = pool
        self._size = size
        self._payload = codec.dumps(PAYLOAD).decode()
        self._n = 0
        self.ids: list[int] = []

    async def one(self) -> None:
        start, self._n = self._n, self._n + self._size
        tokens = [device_token(n % TOKEN_RING) for n in range(start, start + self._size)]
        rows = await self._pool.fetch(INSERT_SQL, APP, tokens, self._payload)
        self.ids += [r["id"] for r in rows]


async def _inserted(conn: asyncpg.Connection) -> int:
    return int(await conn.fetchval(SENT_SQL))


async def _maximum(dsn: str, pool: asyncpg.Pool, size: int, duration_s: float) -> float:
    """Closed loop: as many producers as connections, for ``duration_s``; sends per second."""
    producer = _Producer(pool, size)
    conn = await asyncpg.connect(dsn)
    try:
        stop = time.monotonic() + duration_s

        async def loop() -> None:
            while time.monotonic() < stop:
                await producer.one()

        sent0, t0 = await _inserted(conn), time.monotonic()
        await asyncio.gather(*(loop() for _ in range(PRODUCER_CONNECTIONS)))
        sent1, t1 = await _inserted(conn), time.monotonic()

        async def drained() -> bool:
            return bool(await conn.fetchval(QUEUED_SQL) == 0)

        await _until(drained, 300, "the maximum phase's backlog to drain")
    finally:
        await conn.close()
    return (sent1 - sent0) / (t1 - t0)


async def _open_loop(
    dsn: str, pool: asyncpg.Pool, size: int, per_s: float, duration_s: float
) -> dict[str, Any]:
    producer = _Producer(pool, size)
    statements_per_s = per_s / size
    tasks: list[asyncio.Task[None]] = []
    started = time.monotonic()
    issued = 0
    while (now := time.monotonic()) - started < duration_s:
        due = int((now - started) * statements_per_s) + 1
        tasks += [asyncio.create_task(producer.one()) for _ in range(due - issued)]
        issued = due
        await asyncio.sleep(TICK_S)
    offered_s = time.monotonic() - started
    await asyncio.wait_for(asyncio.gather(*tasks), 60)
    conn = await asyncpg.connect(dsn)
    try:

        async def all_done() -> bool:
            return bool(await conn.fetchval(DONE_SQL, producer.ids) == len(producer.ids))

        await _until(all_done, 120, "the open-loop notifications' results")
        found = await conn.fetchrow(LATENCY_SQL, producer.ids)
    finally:
        await conn.close()
    return {
        "offered_per_s": per_s,
        "achieved_per_s": len(producer.ids) / offered_s,
        "notifications": len(producer.ids),
        "p50_s": found["p50"],
        "p99_s": found["p99"],
        "max_s": found["max"],
        "not_sent": found["not_sent"],
    }


def run_latency(
    sink: Sink,
    credentials: Credentials,
    workdir: pathlib.Path,
    *,
    duration_s: float,
    codec_name: str,
    connections: int,
    streams: int,
    batch_size: int,
) -> dict[str, Any]:
    """Per way of enqueueing: the maximum, then the open loop at half of it."""
    found: dict[str, Any] = {"duration_s": duration_s}
    with (
        scene(
            workdir,
            "latency",
            sink,
            credentials,
            codec=codec_name,
            connections=connections,
            streams=streams,
            batch_size=batch_size,
        ) as here,
        asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner,
    ):
        here.daemon("latency")  # metrics on, as users run it
        runner.run(_warm(here.dsn))
        for mode, size in MODES.items():
            found[mode] = runner.run(_mode(here.dsn, size, duration_s))
    for mode in MODES:
        if found[mode]["not_sent"]:
            raise StepFailed(f"{mode}: {found[mode]['not_sent']} not sent", found)
    found["p99_s"] = max(found[mode]["p99_s"] for mode in MODES)
    return found


async def _warm(dsn: str) -> None:
    """One notification sent: the daemon is up and connected."""
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=1)
    try:
        producer = _Producer(pool, 1)
        await producer.one()

        async def sent() -> bool:
            return bool(await pool.fetchval(DONE_SQL, producer.ids) == 1)

        await _until(sent, 60, "the daemon to send its first notification")
    finally:
        await pool.close()


async def _mode(dsn: str, size: int, duration_s: float) -> dict[str, Any]:
    pool = await asyncpg.create_pool(
        dsn, min_size=PRODUCER_CONNECTIONS, max_size=PRODUCER_CONNECTIONS
    )
    try:
        maximum = await _maximum(dsn, pool, size, duration_s)
        if maximum <= 0:
            raise StepFailed("nothing was sent in the maximum phase")
        return {
            "maximum_per_s": maximum,
            **await _open_loop(dsn, pool, size, maximum / 2, duration_s),
        }
    finally:
        await pool.close()
