"""The guardrail stages' cost per notification: frequency caps on vs off, on PostgreSQL.

One run passes the same claimed batches of 500 through a lane's stages as the daemon builds
them, each batch inside a transaction on the benchmark's Postgres with the store's own
:class:`~pushgres.db.store.Claim` (so the caps' ledger is locked, read and written as in the
daemon), in three setups, alternating rounds so all see the same machine: no guardrails (the
first stage and the timing stage with nothing to hold back); timing (quiet hours outside
their window, a local-time row in twenty); caps (the same and two frequency caps: 3 per
24 h, and 1 per 10 minutes that defers). Caps on vs off is caps - timing; timing's own cost
is timing - none. Twenty thousand people each have one message counted five hours
before (the worst case: every person's entry is read and judged), and first, once, nobody
has anything counted ("fresh"); each batch's transaction is rolled back, so every round sees
the same ledger.

Reported: this process's CPU per notification (``process_time``: the stages' Python and
asyncpg's encoding and decoding, i.e. the daemon's share), best of the rounds, and
PostgreSQL's CPU per notification over the same rounds (its processes' CPU time from /proc).
The differences on - off are the guardrails' cost.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import gc
import pathlib
import time
from typing import Any

import asyncpg
import uvloop

from pushgres.config import AppConfig, CapRule, PoolConfig, QuietHours
from pushgres.db.store import Claim
from pushgres.models import ClaimedRow
from pushgres.pipeline.guardrails import CapCoverage, FrequencyCaps, Timing, category_policies
from pushgres.pipeline.stages import NotSendable, Stage, run_stages

from .e2e import bench_database, migrate_database
from .procs import tree_cpu_s

BATCH = 500
BATCHES = 200
ROUNDS = 5
PEOPLE = 20_000
APP = "ios"


def _rows(now: dt.datetime, start: int) -> list[ClaimedRow]:
    rows = []
    for i in range(start, start + BATCH):
        extra: dict[str, Any] = {"user_id": f"user-{i % PEOPLE}"}
        if i % 20 == 0:
            extra["local_send_at"] = dt.datetime(2026, 1, 1, 9)
            extra["timezone"] = "Europe/Paris"
        rows.append(
            ClaimedRow.fresh(
                id=i,
                app=APP,
                platform="apns",
                device_token=f"{i:064x}",
                payload="{}",
                now=now,
                **extra,
            )
        )
    return rows


SETUPS = ("none", "timing", "caps")


def _stages(setup: str) -> list[Stage]:
    """The lane's stages: ``none`` (no guardrails), ``timing`` (quiet hours and local time),
    ``caps`` (the same and two frequency caps)."""
    pool = PoolConfig(host="localhost", port=443, server_hostname="localhost")
    if setup == "none":
        app = AppConfig(name=APP, platform="apns", pool=pool)
        return [NotSendable(), Timing(app, category_policies(app, {}, []))]
    app = AppConfig(
        name=APP,
        platform="apns",
        pool=pool,
        quiet_hours=QuietHours(dt.time(21), dt.time(8)),
        timezone="Europe/Paris",
    )
    caps = [
        CapRule(name="daily", apps=frozenset({APP}), categories=None, limit=3, window_s=86400),
        CapRule(
            name="cooldown",
            apps=frozenset({APP}),
            categories=None,
            limit=1,
            window_s=600,
            over="defer",
        ),
    ]
    if setup == "timing":
        return [NotSendable(), Timing(app, category_policies(app, {}, []))]
    policies = category_policies(app, {}, caps)
    return [NotSendable(), Timing(app, policies), FrequencyCaps(policies, CapCoverage({}, caps))]


async def _round(
    conn: asyncpg.Connection, setup: str, batches: list[list[ClaimedRow]], now: dt.datetime
) -> float:
    stages = _stages(setup)
    for rows in batches:  # the timing stage sets each row's category: start afresh
        for row in rows:
            row.category = None
    started = time.process_time()
    for rows in batches:
        tx = conn.transaction()
        await tx.start()
        await run_stages(stages, list(rows), now, Claim(conn, []))
        await tx.rollback()
    return (time.process_time() - started) / (len(batches) * BATCH) * 1e6


async def _measure(dsn: str, postmaster: int | None) -> dict[str, Any]:
    now = dt.datetime(2026, 7, 1, 10, tzinfo=dt.UTC)  # noon in Paris: outside quiet hours
    batches = [_rows(now, 1 + b * BATCH) for b in range(BATCHES)]
    # The prepared rows are long-lived, unlike a daemon's batches: out of the collector's way,
    # so that its passes over them are not billed to the stages.
    gc.collect()
    gc.freeze()
    conn = await asyncpg.connect(dsn)
    try:
        # Fresh: nobody has anything counted (a campaign to people not messaged lately).
        fresh: list[float] = []
        timing_fresh: list[float] = []
        for _ in range(ROUNDS):
            timing_fresh.append(await _round(conn, "timing", batches, now))
            fresh.append(await _round(conn, "caps", batches, now))
        await conn.execute(
            "INSERT INTO pushgres.cap_ledger (subject, sent_at, events, kinds)"
            " SELECT 'u:user-' || g, ARRAY[$1::float8], ARRAY[-1::bigint], ARRAY[$2]"
            " FROM generate_series(0, $3 - 1) g",
            (now - dt.timedelta(hours=5)).timestamp(),
            f"{APP}/",
            PEOPLE,
        )
        await conn.execute("ANALYZE pushgres.cap_ledger")
        found: dict[str, list[float]] = {setup: [] for setup in SETUPS}
        pg = dict.fromkeys(SETUPS, 0.0)
        for _ in range(ROUNDS):
            for setup in SETUPS:
                before = tree_cpu_s(postmaster) if postmaster else None
                found[setup].append(await _round(conn, setup, batches, now))
                after = tree_cpu_s(postmaster) if postmaster else None
                if before is not None and after is not None:
                    pg[setup] += after - before
    finally:
        await conn.close()
        gc.unfreeze()
    notifications = ROUNDS * BATCHES * BATCH
    best = {setup: min(found[setup]) for setup in SETUPS}
    postgres = {
        setup: (pg[setup] / notifications * 1e6 if postmaster else None) for setup in SETUPS
    }
    return {
        "batch": BATCH,
        "notifications": BATCHES * BATCH,
        "rounds": ROUNDS,
        "people": PEOPLE,
        "off_us": best["none"],
        "timing_us": best["timing"] - best["none"],
        "on_us": best["caps"],
        "guardrails_us": best["caps"] - best["timing"],
        "guardrails_fresh_us": min(fresh) - min(timing_fresh),
        "postgres_off_us": postgres["timing"],
        "postgres_on_us": postgres["caps"],
        "postgres_guardrails_us": (
            None
            if postgres["caps"] is None or postgres["timing"] is None
            else postgres["caps"] - postgres["timing"]
        ),
    }


def run_guardrails(workdir: pathlib.Path) -> dict[str, Any]:
    """µs of CPU per notification through the stages, guardrails off and on."""
    state = workdir / "guardrails"
    state.mkdir(parents=True, exist_ok=True)
    dsn, server = bench_database(state)
    try:
        migrate_database(dsn)
        postmaster = server.get_pid() if server is not None else None
        # The daemon's event loop: uvloop (asyncpg's reads cost less on it).
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            return runner.run(_measure(dsn, postmaster))
    finally:
        if server is not None:
            server.cleanup()
