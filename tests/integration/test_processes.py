"""Daemons as real processes: several on one queue, SIGKILL mid-batch, SIGTERM exit code."""

from __future__ import annotations

import asyncio
import datetime as dt
import signal
import time
from typing import Any

import asyncpg
import pytest

from pushgres.providers.apns.protocol import apns_id_for
from pushgres.simulator import devkit

from .harness import (
    apns,
    assert_each_row_queued_or_done,
    enqueue,
    fcm,
    start_daemon_process,
    stop_process,
    wait_terminal,
    write_config,
)


@pytest.mark.parametrize("daemons", [2, 4])
async def test_several_daemons_send_each_notification_exactly_once(
    env: dict[str, Any], daemons: int
) -> None:
    tokens_a = [devkit.apns_token("ok", 10_000 + i) for i in range(1500)]
    tokens_f = [devkit.fcm_token("ok", 10_000 + i) for i in range(1500)]
    ids = await enqueue(env["dsn"], [apns(t) for t in tokens_a] + [fcm(t) for t in tokens_f])
    procs = [
        start_daemon_process(env["config"], env["tmp"] / f"daemon{i}.log") for i in range(daemons)
    ]
    try:
        found = await wait_terminal(env["dsn"], ids, timeout_s=120)
    finally:
        codes = [stop_process(p) for p in procs]
    assert codes == [0] * daemons
    assert all(o.status == "sent" for o in found.values())
    counts = env["sims"].accepted_counts()
    assert sorted(counts["apns"].items()) == sorted((t, 1) for t in tokens_a)
    assert sorted(counts["fcm"].items()) == sorted((t, 1) for t in tokens_f)


async def test_sigkill_mid_batch_loses_nothing(env: dict[str, Any]) -> None:
    sims = env["sims"]
    sims.apns.patch({"latency": {"dist": "fixed", "ms": 200}})
    sims.fcm.patch({"latency": {"dist": "fixed", "ms": 200}})
    tokens = [devkit.apns_token("ok", 20_000 + i) for i in range(2000)] + [
        devkit.fcm_token("ok", 20_000 + i) for i in range(2000)
    ]
    # Half the rows carry dedupe keys: a rolled-back claim must bring them back as they were.
    items = [apns(t, dedupe_key=f"kill-{i}") if i < 2000 else fcm(t) for i, t in enumerate(tokens)]
    ids = await enqueue(env["dsn"], items)
    conn = await asyncpg.connect(env["dsn"])
    try:
        first = start_daemon_process(env["config"], env["tmp"] / "daemon1.log")
        deadline = time.monotonic() + 60
        while await conn.fetchval("SELECT count(*) FROM pushgres.results") < 500:
            assert time.monotonic() < deadline, "the first daemon made no progress"
            await asyncio.sleep(0.05)
        stop_process(first, signal.SIGKILL)
        killed_at = dt.datetime.now(dt.UTC)
        await assert_each_row_queued_or_done(env["dsn"], ids)
        committed = {r["id"] for r in await conn.fetch("SELECT id FROM pushgres.results")}
        second = start_daemon_process(env["config"], env["tmp"] / "daemon2.log")
        try:
            found = await wait_terminal(env["dsn"], ids, timeout_s=120)
        finally:
            assert stop_process(second) == 0
        assert all(o.status == "sent" for o in found.values())
        assert await conn.fetchval("SELECT count(*) FROM pushgres.queue") == 0
        assert await conn.fetchval("SELECT count(*) FROM pushgres.results") == len(ids)
    finally:
        await conn.close()
    counts = sims.accepted_counts()
    accepted = {**counts["apns"], **counts["fcm"]}
    assert all(accepted.get(t, 0) >= 1 for t in tokens)  # none lost
    duplicated = {t for t, n in accepted.items() if n > 1}
    by_token = {t: nid for t, nid in zip(tokens, ids, strict=True)}
    for token in duplicated:
        nid = by_token[token]
        # A duplicate can only be a row whose outcome was not committed before the kill,
        # i.e. a row that was in flight then.
        assert nid not in committed
        assert found[nid].finished_at is not None and found[nid].finished_at > killed_at


async def test_second_signal_exits_at_once_and_loses_nothing(env: dict[str, Any]) -> None:
    sims = env["sims"]
    sims.apns.patch({"latency": {"dist": "fixed", "ms": 3000}})
    tokens = [devkit.apns_token("ok", 30_000 + i) for i in range(300)]
    ids = await enqueue(env["dsn"], [apns(t, dedupe_key=f"sig-{t}") for t in tokens])
    proc = start_daemon_process(env["config"], env["tmp"] / "daemon1.log")
    deadline = time.monotonic() + 30
    while sims.apns.counters.get("streams", 0) < 50:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    await asyncio.sleep(0.3)
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    code = await asyncio.to_thread(proc.wait, 10)
    assert code != 0 and time.monotonic() - started < 2.5  # did not wait for the 3 s sends
    await assert_each_row_queued_or_done(env["dsn"], ids)
    sims.apns.patch({"latency": None})
    second = start_daemon_process(env["config"], env["tmp"] / "daemon2.log")
    try:
        found = await wait_terminal(env["dsn"], ids, timeout_s=60)
    finally:
        assert stop_process(second) == 0
    assert all(o.status == "sent" for o in found.values())


async def test_sigkill_resends_only_what_was_in_flight(env: dict[str, Any]) -> None:
    """With ``delivery_journal``, accepted sends are written down before their batch commits:
    after a kill -9, what the provider had accepted is recorded sent, not sent again."""
    sims = env["sims"]
    # Answers spread over 20-400 ms: a batch waits for its slowest, its first ones wait with it.
    sims.apns.patch({"latency": {"dist": "uniform", "min_ms": 20, "max_ms": 400}})
    tokens = [devkit.apns_token("ok", 40_000 + i) for i in range(3000)]
    ids = await enqueue(env["dsn"], [apns(t) for t in tokens])
    config = write_config(
        env["tmp"] / "journal.toml",
        dsn=env["dsn"],
        setup=env["setup"],
        sims=sims,
        daemon="delivery_journal = true",
    )
    conn = await asyncpg.connect(env["dsn"])
    try:
        daemon = start_daemon_process(config, env["tmp"] / "daemon1.log")
        deadline = time.monotonic() + 60
        written_down: set[int] = set()
        while not written_down:  # kill it while accepted sends wait for their batch's commit
            assert time.monotonic() < deadline, "nothing was written down"
            written_down = {
                r[0]
                for r in await conn.fetch(
                    "SELECT unnest(ids) FROM pushgres.delivered d "
                    "WHERE NOT EXISTS (SELECT 1 FROM pushgres.results r WHERE r.id = ANY (d.ids))"
                )
            }
            await asyncio.sleep(0.01)
        stop_process(daemon, signal.SIGKILL)
        committed = {r[0] for r in await conn.fetch("SELECT id FROM pushgres.results")}
        pending = written_down - committed  # written down, its batch rolled back
        second = start_daemon_process(config, env["tmp"] / "daemon2.log")
        try:
            found = await wait_terminal(env["dsn"], ids, timeout_s=120)
        finally:
            assert stop_process(second) == 0
        reasons = {
            r["id"]: r["reason"]
            for r in await conn.fetch(
                "SELECT id, reason FROM pushgres.results WHERE status = 'sent'"
            )
        }
    finally:
        await conn.close()
    assert all(o.status == "sent" for o in found.values())
    assert pending, "the kill came after every written-down batch had committed"
    accepted = sims.accepted_counts()["apns_ids"]
    for row_id in pending:
        assert accepted[apns_id_for(row_id)] == 1  # not sent again
        assert reasons[row_id] == "AcceptedBeforeRollback"
