"""Interrupted sends with dedupe keys on every row: nothing is lost, nothing vanishes.

An interrupted send (the shutdown deadline, a lost connection, a killed daemon) puts its row
back into the queue by re-inserting it with its own id and dedupe key. Every path must end
with each row exactly once in the queue or the results, and a later run delivering it.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import signal
import time
from collections.abc import Sequence
from typing import Any

import asyncpg

from pushgres.simulator import devkit

from .harness import (
    apns,
    assert_each_row_queued_or_done,
    enqueue,
    fcm,
    running_daemon,
    settings_for,
    start_daemon_process,
    stop_process,
    wait_terminal,
    write_config,
)


def _tokens(start: int, n: int) -> list[str]:
    """APNs tokens told apart by their first 12 characters (all the simulator logs)."""
    assert start + n <= 1 << 16
    return [devkit.apns_token("ok", (start + i) << 208) for i in range(n)]


def _blackholed(sims: Any, service: str = "apns") -> set[str]:
    """The 12-character token prefixes of the requests the simulator never answered."""
    return {e["token"] for e in sims.requests(service) if e["fault"] == "blackhole"}


def _open_streams(sims: Any) -> int:
    """Streams the simulators have received and not answered yet."""
    state = sims.state()
    return sum(c["open"] for service in ("apns", "fcm") for c in state[service]["connections"])


def _config(env: dict[str, Any], name: str, daemon: str) -> Any:
    return write_config(
        env["tmp"] / name, dsn=env["dsn"], setup=env["setup"], sims=env["sims"], daemon=daemon
    )


async def _assert_keys_still_held(
    dsn: str, items: Sequence[dict[str, Any]], ids: list[int]
) -> None:
    """Each row still holds its dedupe key: enqueueing it again is a duplicate of it."""
    conn = await asyncpg.connect(dsn)
    try:
        held = await conn.fetch(
            "SELECT id FROM pushgres.dedupe_keys WHERE id = ANY($1::bigint[])", ids
        )
        assert sorted(r["id"] for r in held) == sorted(ids)
        queued = await conn.fetchval("SELECT count(*) FROM pushgres.queue")
    finally:
        await conn.close()
    assert await enqueue(dsn, items) == ids
    conn = await asyncpg.connect(dsn)
    try:
        assert await conn.fetchval("SELECT count(*) FROM pushgres.queue") == queued
    finally:
        await conn.close()


async def test_the_shutdown_deadline_puts_keyed_rows_back_and_a_second_run_sends_each_once(
    env: dict[str, Any],
) -> None:
    sims, dsn = env["sims"], env["dsn"]
    config = _config(env, "deadline.toml", "shutdown_timeout_s = 0.5\nrequest_timeout_s = 10")
    sims.patch({"apns": {"latency": {"dist": "fixed", "ms": 4000}}})
    sims.patch({"fcm": {"latency": {"dist": "fixed", "ms": 4000}}})
    tokens_a = _tokens(100, 60)
    tokens_f = [devkit.fcm_token("ok", 50_000 + i) for i in range(60)]
    items = [apns(t, dedupe_key=f"d-{t}") for t in tokens_a]
    items += [fcm(t, dedupe_key=f"d-{t}") for t in tokens_f]
    ids = await enqueue(dsn, items)
    async with running_daemon(settings_for(config)) as daemon:
        deadline = time.monotonic() + 20
        while sims.apns.counters.get("streams", 0) < 2 or sims.fcm.counters.get("streams", 0) < 2:
            assert time.monotonic() < deadline, "nothing was sent"
            await asyncio.sleep(0.02)
        stopped = time.monotonic()
    assert time.monotonic() - stopped < 3.5  # gave up at the deadline, not after the 4 s sends
    assert daemon.stats.claimed > 0
    await assert_each_row_queued_or_done(dsn, ids)
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch("SELECT id, attempts FROM pushgres.queue ORDER BY id")
        assert [r["id"] for r in rows] == sorted(ids)
        assert all(r["attempts"] == 0 for r in rows)  # an interrupted send is no attempt
        assert await conn.fetchval("SELECT count(*) FROM pushgres.results") == 0
    finally:
        await conn.close()
    counts = sims.accepted_counts()
    assert not counts["apns"] and not counts["fcm"]  # every send was cut off, none answered
    await _assert_keys_still_held(dsn, items, ids)

    sims.patch({"apns": {"latency": None}, "fcm": {"latency": None}})
    async with running_daemon(settings_for(config)):
        found = await wait_terminal(dsn, ids)
    assert all(o.status == "sent" and o.attempts == 1 for o in found.values()), found
    counts = sims.accepted_counts()
    assert sorted(counts["apns"].items()) == sorted((t, 1) for t in tokens_a)
    assert sorted(counts["fcm"].items()) == sorted((t, 1) for t in tokens_f)


async def test_stragglers_at_the_shutdown_deadline_come_back_with_attempts_unchanged(
    env: dict[str, Any],
) -> None:
    sims, dsn = env["sims"], env["dsn"]
    config = _config(env, "stragglers.toml", "shutdown_timeout_s = 1\nrequest_timeout_s = 10")
    sims.patch({"apns": {"blackhole_rate": 0.05, "seed": 7}})
    tokens = _tokens(1000, 2000)
    items = [apns(t, dedupe_key=f"s-{i}") for i, t in enumerate(tokens)]
    ids = await enqueue(dsn, items)
    by_prefix = {t[:12]: nid for t, nid in zip(tokens, ids, strict=True)}
    conn = await asyncpg.connect(dsn)
    try:
        started = time.monotonic()
        async with running_daemon(settings_for(config)):
            # Until a batch has returned early and committed its stragglers' leases (attempt
            # counted, send_at past the 10 s deadline). Batches with more unanswered streams
            # than the stragglers' quorum are still on the wire, waiting for that deadline.
            while True:
                leased = await conn.fetch(
                    "SELECT id FROM pushgres.queue"
                    " WHERE attempts = 1 AND last_reason LIKE 'RequestTimeout%'"
                )
                if len(leased) >= 5:
                    break
                assert time.monotonic() - started < 8, "no stragglers were leased"
                await asyncio.sleep(0.02)
            leased_ids = {r["id"] for r in leased}
        # Stopped well before any 10 s deadline: no unanswered send has timed out yet.
        assert time.monotonic() - started < 9
        await assert_each_row_queued_or_done(dsn, ids)
        blackholed = {by_prefix[p] for p in _blackholed(sims)}
        assert leased_ids <= blackholed  # leases are only for unanswered sends
        queued = await conn.fetch(
            "SELECT id, attempts, last_reason, send_at <= now() AS due FROM pushgres.queue"
        )
        queued_ids = {r["id"] for r in queued}
        assert blackholed <= queued_ids, sorted(blackholed - queued_ids)[:10]
        # Every row left in the queue, the leased stragglers among them, is as it was
        # claimed: no attempt counted, and due at once rather than under a lease.
        wrong = [dict(r) for r in queued if r["attempts"] != 0 or not r["due"]]
        assert not wrong, wrong[:10]
        results = await conn.fetch("SELECT id, status, attempts FROM pushgres.results")
        assert results and all(r["status"] == "sent" and r["attempts"] == 1 for r in results)
        assert {r["id"] for r in results} | queued_ids == set(ids)
    finally:
        await conn.close()
    counts = sims.accepted_counts()["apns"]
    assert all(n == 1 for n in counts.values())
    assert len(counts) == len(results)
    await _assert_keys_still_held(dsn, items, ids)

    sims.patch({"apns": {"blackhole_rate": 0.0}})
    async with running_daemon(settings_for(config)):
        found = await wait_terminal(dsn, ids)
    assert all(o.status == "sent" and o.attempts == 1 for o in found.values())
    counts = sims.accepted_counts()["apns"]
    assert sorted(counts.items()) == sorted((t, 1) for t in tokens)


async def test_connections_lost_mid_send_lose_no_keyed_row(env: dict[str, Any]) -> None:
    # The simulators cut every connection (TCP reset, no GOAWAY) while streams are on the
    # wire, a few times: the cut-off sends are retried, re-inserted with their keys. Each
    # round enqueues its own rows, so that a drain faster than the rounds still leaves
    # streams on the wire to cut.
    sims, dsn = env["sims"], env["dsn"]
    sims.patch({"apns": {"latency": {"dist": "fixed", "ms": 300}}})
    sims.patch({"fcm": {"latency": {"dist": "fixed", "ms": 300}}})
    tokens: list[str] = []  # in enqueue order, as ids
    ids: list[int] = []
    items: list[Any] = []
    dropped = 0
    async with running_daemon(settings_for(env["config"])):
        for round_ in range(4):
            round_a = _tokens(5000 + 400 * round_, 400)
            round_f = [devkit.fcm_token("ok", 60_000 + 250 * round_ + i) for i in range(250)]
            round_items = [apns(t, dedupe_key=f"c-{t}") for t in round_a]
            round_items += [fcm(t, dedupe_key=f"c-{t}") for t in round_f]
            ids += await enqueue(dsn, round_items)
            tokens += round_a + round_f
            items += round_items
            deadline = time.monotonic() + 20
            while _open_streams(sims) < 20:
                assert time.monotonic() < deadline, "no streams in flight"
                await asyncio.sleep(0.02)
            await asyncio.sleep(0.1)
            dropped += sims.drop("all", mode="rst")
            await assert_each_row_queued_or_done(dsn, ids)
            await asyncio.sleep(0.5)
        found = await wait_terminal(dsn, ids, timeout_s=90)
    assert dropped >= 4
    assert (
        sims.apns.counters.get("connections_reset", 0)
        + sims.fcm.counters.get("connections_reset", 0)
        >= 4
    )
    not_sent = [o for o in found.values() if o.status != "sent"]
    assert not not_sent, not_sent[:5]
    retried = {nid for nid, o in found.items() if o.attempts > 1}
    assert retried  # some sends were cut off and went back to the queue
    counts = sims.accepted_counts()
    accepted = {**counts["apns"], **counts["fcm"]}
    by_token = {t: nid for t, nid in zip(tokens, ids, strict=True)}
    assert set(accepted) == set(by_token)  # every row delivered
    # A token accepted twice is one whose answer was cut off with its connection: its row
    # was sent again, so it shows more than one attempt.
    twice = {by_token[t] for t, n in accepted.items() if n > 1}
    assert twice <= retried, sorted(twice - retried)[:10]
    await assert_each_row_queued_or_done(dsn, ids)
    await _assert_keys_still_held(dsn, items, ids)


async def test_sigkill_mid_drain_with_stragglers_loses_no_keyed_row(env: dict[str, Any]) -> None:
    sims, dsn = env["sims"], env["dsn"]
    config = _config(env, "kill.toml", "request_timeout_s = 3")
    sims.patch(
        {
            "apns": {
                "blackhole_rate": 0.02,
                "latency": {"dist": "fixed", "ms": 100},
                "request_log_size": 100_000,
            },
            "fcm": {"blackhole_rate": 0.02, "latency": {"dist": "fixed", "ms": 100}},
        }
    )
    tokens_a = _tokens(20_000, 3000)
    tokens_f = [devkit.fcm_token("ok", 70_000 + i) for i in range(2000)]
    tokens = tokens_a + tokens_f
    items = [apns(t, dedupe_key=f"k-{t}") for t in tokens_a]
    items += [fcm(t, dedupe_key=f"k-{t}") for t in tokens_f]
    ids = await enqueue(dsn, items)
    by_token = {t: nid for t, nid in zip(tokens, ids, strict=True)}
    conn = await asyncpg.connect(dsn)
    try:
        first = start_daemon_process(config, env["tmp"] / "daemon1.log")
        deadline = time.monotonic() + 60
        while True:
            leased = await conn.fetchval(
                "SELECT count(*) FROM pushgres.queue"
                " WHERE attempts = 1 AND last_reason LIKE 'RequestTimeout%'"
            )
            done = await conn.fetchval("SELECT count(*) FROM pushgres.results")
            if leased >= 5 and done >= 1000:
                break
            assert first.poll() is None, "the first daemon exited"
            assert time.monotonic() < deadline, (leased, done)
            await asyncio.sleep(0.05)
        stop_process(first, signal.SIGKILL)
        killed_at = dt.datetime.now(dt.UTC)
        assert done < len(ids), "the first daemon finished before it was killed"
        await assert_each_row_queued_or_done(dsn, ids)
        committed = {r["id"] for r in await conn.fetch("SELECT id FROM pushgres.results")}
        blackholed_a = {by_token[t] for t in tokens_a if t[:12] in _blackholed(sims)}
        assert blackholed_a, "no stragglers before the kill"
        assert not blackholed_a & committed  # unanswered: never recorded as done
        await _assert_keys_still_held(dsn, items, ids)
        second = start_daemon_process(config, env["tmp"] / "daemon2.log")
        try:
            found = await wait_terminal(dsn, ids, timeout_s=120)
        finally:
            assert stop_process(second) == 0
        assert await conn.fetchval("SELECT count(*) FROM pushgres.queue") == 0
        assert await conn.fetchval("SELECT count(*) FROM pushgres.results") == len(ids)
    finally:
        await conn.close()
    not_sent = [o for o in found.values() if o.status != "sent"]
    assert not not_sent, not_sent[:5]
    counts = sims.accepted_counts()
    accepted = {**counts["apns"], **counts["fcm"]}
    assert set(accepted) == set(tokens)  # none lost
    for token in (t for t, n in accepted.items() if n > 1):
        nid = by_token[token]
        # Sent twice: only a row not recorded done at the kill (in flight or a straggler).
        assert nid not in committed, token
        finished = found[nid].finished_at
        assert finished is not None and finished > killed_at
    for nid in blackholed_a:
        assert found[nid].status == "sent"


async def test_the_pool_closing_mid_send_puts_keyed_rows_back(env: dict[str, Any]) -> None:
    # A pool that closes (as a sender does when its app goes away) fails the requests still
    # waiting for a stream slot with PoolClosed: those sends are interrupted, no attempt, and
    # their rows must come back holding their own dedupe keys.
    sims = env["sims"]
    sims.apns.patch({"latency": {"dist": "fixed", "ms": 2000}})
    config = write_config(
        env["tmp"] / "close.toml",
        dsn=env["dsn"],
        setup=env["setup"],
        sims=sims,
        apns="max_connections = 1\nmax_streams_per_connection = 5",
    )
    tokens = _tokens(700, 30)
    items = [apns(t, dedupe_key=f"close-{t}") for t in tokens]
    ids = await enqueue(env["dsn"], items)
    async with running_daemon(settings_for(config)) as daemon:
        while sims.apns.counters.get("streams", 0) < 5:
            await asyncio.sleep(0.02)
        lane = next(lane for lane in daemon._lanes if lane.name == "ios")
        await lane.sender.pool.aclose(timeout_s=0.1)  # type: ignore[attr-defined]
        deadline = time.monotonic() + 10
        while lane.is_busy:  # the batch ends; a closed pool has no capacity for another
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
    await assert_each_row_queued_or_done(env["dsn"], ids)
    conn = await asyncpg.connect(env["dsn"])
    try:
        rows = await conn.fetch("SELECT attempts, last_reason FROM pushgres.queue")
    finally:
        await conn.close()
    # The five on the wire were cut off (an attempt); the rest never left (no attempt).
    assert sum(r["attempts"] == 0 for r in rows) >= 5, rows
    await _assert_keys_still_held(env["dsn"], items, ids)
    sims.apns.patch({"latency": None})
    async with running_daemon(settings_for(config)):
        found = await wait_terminal(env["dsn"], ids)
    assert all(o.status == "sent" for o in found.values())
