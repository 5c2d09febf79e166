"""Fairness: transactional notifications while a million-row campaign drains, and without it.

One daemon serves two APNs apps against the sink: ``bench-ios`` (A), holding a campaign of
``rows`` bulk notifications (enqueued before the daemon starts), and ``bench-other`` (B). Once
the campaign is draining, an open-loop enqueuer inserts one transactional notification for A
and one for B every 20 ms (50/s each, one INSERT statement and transaction apiece, on its own
connection), for ``duration_s``. Reported per app: enqueue→sent p50, p99 and max of those
transactional notifications (Postgres's clock at both ends), with the campaign and then --
same daemon config, the campaign's rest deleted -- without it; and the campaign's own rate
while they were sent. Target: p99 <= 500 ms with the campaign.
"""

from __future__ import annotations

import asyncio
import pathlib
import time
from typing import Any

import asyncpg
import uvloop

from pushgres import codec
from pushgres.api import enqueue

from .e2e import scene
from .procs import StepFailed
from .sink import Sink
from .workload import APP, PAYLOAD, Credentials, device_token, notification

__all__ = ["run_fairness"]

OTHER = "bench-other"
PER_S = 50.0
CHUNK = 10_000
TARGET_P99_S = 0.5
CATEGORIES = """
[guardrails]
default_category = "bulk"

[categories.bulk]

[categories.transactional]
transactional = true
"""
INSERT_SQL = """
INSERT INTO pushgres.queue (app, platform, device_token, payload, category)
VALUES ($1, 'apns', $2, $3::jsonb, 'transactional') RETURNING id
"""
LATENCY_SQL = """
SELECT app, count(*) AS n,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM finished_at - enqueued_at)::float8)
           AS p50,
       percentile_cont(0.99) WITHIN GROUP (ORDER BY extract(epoch FROM finished_at - enqueued_at)::float8)
           AS p99,
       max(extract(epoch FROM finished_at - enqueued_at))::float8 AS max
FROM pushgres.results WHERE id = ANY($1::bigint[]) AND status = 'sent'
GROUP BY app ORDER BY app
"""
BULK_SENT_SQL = """
SELECT count(*) FROM pushgres.results
WHERE app = $1 AND NOT (id = ANY($2::bigint[])) AND status = 'sent'
"""


async def _fill(dsn: str, rows: int) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("DELETE FROM pushgres.queue")
        for start in range(0, rows, CHUNK):
            await enqueue(conn, [notification(n) for n in range(start, min(start + CHUNK, rows))])
        await conn.execute("ANALYZE pushgres.queue")
    finally:
        await conn.close()


async def _until(check: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not await check():
        if time.monotonic() > deadline:
            raise StepFailed(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


async def _trickle(dsn: str, duration_s: float) -> list[int]:
    """One transactional notification per app every 1/PER_S s, open loop; their ids."""
    pool = await asyncpg.create_pool(dsn, min_size=4, max_size=8)
    payload = codec.dumps(PAYLOAD).decode()
    ids: list[int] = []

    async def one(app: str, n: int) -> None:
        ids.append(await pool.fetchval(INSERT_SQL, app, device_token(n), payload))

    try:
        tasks = []
        started = time.monotonic()
        n = 0
        while (now := time.monotonic()) - started < duration_s:
            # Open loop: each insert is its own task; a slow one does not delay the next.
            tasks += [asyncio.create_task(one(app, n)) for app in (APP, OTHER)]
            n += 1
            await asyncio.sleep(max(0.0, started + n / PER_S - now))
        await asyncio.wait_for(asyncio.gather(*tasks), 30)
    finally:
        await pool.close()
    return ids


async def _warm(dsn: str) -> None:
    """One transactional notification per app, sent: the daemon is up and connected."""
    conn = await asyncpg.connect(dsn)
    try:
        payload = codec.dumps(PAYLOAD).decode()
        ids = [
            await conn.fetchval(INSERT_SQL, app, device_token(0), payload) for app in (APP, OTHER)
        ]

        async def sent() -> bool:
            done = await conn.fetchval(
                "SELECT count(*) FROM pushgres.results WHERE id = ANY($1::bigint[])", ids
            )
            return bool(done == len(ids))

        await _until(sent, 60, "the daemon to send its first notifications")
    finally:
        await conn.close()


async def _phase(dsn: str, duration_s: float) -> dict[str, Any]:
    conn = await asyncpg.connect(dsn)
    try:
        bulk_before = await conn.fetchval(BULK_SENT_SQL, APP, [])
        started = time.monotonic()
        ids = await _trickle(dsn, duration_s)
        window_s = time.monotonic() - started
        bulk_after = await conn.fetchval(BULK_SENT_SQL, APP, ids)

        async def all_sent() -> bool:
            done = await conn.fetchval(
                "SELECT count(*) FROM pushgres.results WHERE id = ANY($1::bigint[])", ids
            )
            return bool(done == len(ids))

        await _until(all_sent, 120, "the transactional notifications' results")
        found = {r["app"]: dict(r) for r in await conn.fetch(LATENCY_SQL, ids)}
    finally:
        await conn.close()
    return {
        "notifications": len(ids),
        "campaign_sends_per_s": (bulk_after - bulk_before) / window_s,
        **{
            name: {k: found.get(app, {}).get(k) for k in ("n", "p50", "p99", "max")}
            for name, app in (("a", APP), ("b", OTHER))
        },
    }


def run_fairness(
    sink: Sink,
    credentials: Credentials,
    workdir: pathlib.Path,
    *,
    rows: int,
    duration_s: float,
    codec_name: str,
    connections: int,
    streams: int,
    batch_size: int,
) -> dict[str, Any]:
    """The fairness scenario (see the module docstring); raises :class:`StepFailed`."""
    with (
        scene(
            workdir,
            "fairness",
            sink,
            credentials,
            codec=codec_name,
            metrics=False,
            apps=(APP, OTHER),
            extra=CATEGORIES,
            connections=connections,
            streams=streams,
            batch_size=batch_size,
        ) as here,
        asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner,
    ):
        dsn = here.dsn
        runner.run(_fill(dsn, rows))
        daemon = here.daemon("campaign")

        async def draining() -> bool:
            conn = await asyncpg.connect(dsn)
            try:
                return bool(await conn.fetchval("SELECT count(*) > 1000 FROM pushgres.results"))
            finally:
                await conn.close()

        runner.run(_until(draining, 120, "the campaign to start draining"))
        campaign = runner.run(_phase(dsn, duration_s))
        left = runner.run(_queued(dsn))
        daemon.stop()
        if left == 0:
            raise StepFailed(f"the campaign of {rows:,} drained before the phase ended")
        runner.run(_clear(dsn))
        daemon = here.daemon("alone")
        runner.run(_warm(dsn))
        alone = runner.run(_phase(dsn, duration_s))
    result: dict[str, Any] = {
        "rows": rows,
        "per_s_each": PER_S,
        "duration_s": duration_s,
        "campaign_left": left,
        "with_campaign": campaign,
        "alone": alone,
    }
    worst = max((campaign[k]["p99"] or 1e9) for k in ("a", "b"))
    result["p99_s"] = worst
    return result


async def _queued(dsn: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        return int(await conn.fetchval("SELECT count(*) FROM pushgres.queue"))
    finally:
        await conn.close()


async def _clear(dsn: str) -> None:
    """The campaign's rest goes: the second phase runs without it."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("DELETE FROM pushgres.queue")
        await conn.execute("VACUUM ANALYZE pushgres.queue")
    finally:
        await conn.close()
