"""The queue's shards against a real PostgreSQL: the shard column, claims shard by shard, and
daemons that split an app's shards between them."""

from __future__ import annotations

import asyncio
import re
import time
from collections import Counter
from typing import Any

import asyncpg

from pushgres.api import enqueue as api_enqueue
from pushgres.db.store import Store
from pushgres.models import QUEUE_SHARDS, Notification
from pushgres.pipeline.shards import ShardPlan, share
from pushgres.simulator import devkit

from .harness import (
    APNS_APP,
    apns,
    daemon_rows,
    enqueue,
    start_daemon_process,
    stop_process,
    wait_terminal,
    write_config,
)

PAYLOAD = {"aps": {"alert": "hi"}}
TIMEOUTS = {"idle_in_transaction_timeout_s": 60.0, "statement_timeout_s": 30.0}


def _notification(token: str, **fields: Any) -> Notification:
    return Notification(
        app=APNS_APP, platform="apns", device_token=token, payload=PAYLOAD, **fields
    )


async def _shards_by_id(conn: asyncpg.Connection, ids: list[int]) -> dict[int, int]:
    rows = await conn.fetch("SELECT id, shard FROM pushgres.queue WHERE id = ANY($1)", ids)
    return {r["id"]: r["shard"] for r in rows}


async def test_the_shard_is_the_token_hash_and_a_device_keeps_one(dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        assert await conn.fetchval("SELECT pushgres.queue_shards()") == QUEUE_SHARDS
        tokens = [devkit.apns_token("ok", n) for n in range(2000)]
        await api_enqueue(conn, [_notification(t) for t in tokens + tokens[:10]])
        mismatched = await conn.fetchval(
            "SELECT count(*) FROM pushgres.queue "
            "WHERE shard <> (hashtext(device_token) & (pushgres.queue_shards() - 1))"
        )
        used = await conn.fetch("SELECT shard, count(*) AS n FROM pushgres.queue GROUP BY 1")
        per_device = await conn.fetchval(
            "SELECT max(n) FROM (SELECT count(DISTINCT shard) AS n FROM pushgres.queue "
            "GROUP BY device_token) s"
        )
    finally:
        await conn.close()
    assert mismatched == 0
    counts = {r["shard"]: r["n"] for r in used}
    assert sorted(counts) == list(range(QUEUE_SHARDS))
    assert min(counts.values()) > 2010 / QUEUE_SHARDS / 2  # spread, not piled on a few
    assert per_device == 1


async def test_a_claim_reads_its_shards_in_order_transactional_rows_first(dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        ids = await api_enqueue(
            conn, [_notification(devkit.apns_token("ok", n)) for n in range(400)]
        )
        shard_of = await _shards_by_id(conn, ids)
        await conn.execute(
            "INSERT INTO pushgres.categories (name, transactional) VALUES ('otp', true) "
            "ON CONFLICT (name) DO UPDATE SET transactional = true"
        )
        (urgent,) = await api_enqueue(
            conn, [_notification(devkit.apns_token("ok", 9999), category="otp")]
        )
    finally:
        await conn.close()
    by_shard: dict[int, list[int]] = {}
    for row_id in ids:
        by_shard.setdefault(shard_of[row_id], []).append(row_id)
    a, b = 3, 11
    store = await Store.open(dsn, max_size=2, **TIMEOUTS)
    try:
        async with store.claim(APNS_APP, len(by_shard[a]) + 3, (a, b)) as claim:
            got = [r.id for r in claim.rows]
        # The transactional row (any shard) first, then shard a's rows, then b's first two.
        assert sorted(got) == sorted([urgent, *by_shard[a], *by_shard[b][:2]])
        async with store.claim(APNS_APP, 1000, (b,)) as claim:
            assert sorted(r.id for r in claim.rows) == by_shard[b][2:]
    finally:
        await store.close()


async def test_daemons_with_disjoint_shares_claim_disjoint_rows(dsn: str) -> None:
    """Two stores claim a backlog at once, each with its daemon's share first: while their own
    shards hold rows, neither touches the other's."""
    conn = await asyncpg.connect(dsn)
    try:
        ids = await api_enqueue(
            conn, [_notification(devkit.apns_token("ok", n)) for n in range(6000)]
        )
        shard_of = await _shards_by_id(conn, ids)
    finally:
        await conn.close()
    plans = {}
    for daemon in ("a", "b"):
        plans[daemon] = ShardPlan()
        plans[daemon].assign(share(daemon, ["a", "b"]), peers=2)
    stores = [await Store.open(dsn, max_size=4, **TIMEOUTS) for _ in plans]
    claimed: dict[str, list[int]] = {"a": [], "b": []}

    async def drain(daemon: str, store: Store) -> None:
        for _ in range(5):  # 5 x 4 concurrent claims of 100: well within each share's rows

            async def one() -> None:
                async with store.claim(APNS_APP, 100, plans[daemon].order()) as claim:
                    await asyncio.sleep(0.01)  # held while "sent", as the lane does
                    claimed[daemon] += [r.id for r in claim.rows]

            await asyncio.gather(*(one() for _ in range(4)))

    try:
        await asyncio.gather(*(drain(d, s) for d, s in zip(plans, stores, strict=True)))
    finally:
        for store in stores:
            await store.close()
    for daemon, got in claimed.items():
        assert len(got) == 2000
        assert {shard_of[i] for i in got} <= set(plans[daemon].own), daemon
    assert not set(claimed["a"]) & set(claimed["b"])


_SHARES = re.compile(r"claiming shards ([\d,]+|none) first \((\d+) daemon")


async def test_four_daemon_processes_split_the_shards_and_send_each_row_once(
    env: dict[str, Any],
) -> None:
    dsn, tmp = env["dsn"], env["tmp"]
    config = write_config(
        tmp / "shards.toml",
        dsn=dsn,
        setup=env["setup"],
        sims=env["sims"],
        daemon='batch_size = 50\nlog_level = "info"',
    )
    logs = [tmp / f"daemon-{n}.log" for n in range(4)]
    procs = [start_daemon_process(config, log) for log in logs]
    try:
        deadline = time.monotonic() + 60
        while len(await daemon_rows(dsn)) < 4:  # every daemon has heartbeated once
            assert time.monotonic() < deadline, "the daemons did not all start"
            await asyncio.sleep(0.2)
        # And each has seen all four (at its next heartbeat, within 5 s).
        while not all(_last_share(log) and _last_share(log)[1] == 4 for log in logs):
            assert time.monotonic() < deadline, [_last_share(log) for log in logs]
            await asyncio.sleep(0.2)
        tokens = [devkit.apns_token("ok", 3000 + n) for n in range(400)]
        ids = await enqueue(dsn, [apns(t) for t in tokens for _ in range(5)])
        found = await wait_terminal(dsn, ids, timeout_s=90)
        shares = [_last_share(log) for log in logs]  # before a stop makes the rest rebalance
    finally:
        codes = [stop_process(p) for p in procs]
    assert codes == [0, 0, 0, 0]
    assert Counter(o.status for o in found.values()) == {"sent": 2000}
    owned = sorted(s for mine, _ in filter(None, shares) for s in mine)
    assert owned == list(range(QUEUE_SHARDS))  # each shard owned by exactly one daemon
    accepted = env["sims"].accepted_counts()
    assert sum(accepted["apns_ids"].values()) == 2000  # each notification delivered once
    assert set(accepted["apns_ids"].values()) == {1}
    text = "".join(log.read_text() for log in logs)
    assert "Traceback" not in text


def _last_share(log: Any) -> tuple[list[int], int] | None:
    found = _SHARES.findall(log.read_text()) if log.exists() else []
    if not found:
        return None
    own, peers = found[-1]
    return ([] if own == "none" else [int(s) for s in own.split(",")]), int(peers)
