"""Daemons serving different apps on one database, and the unknown-app sweeper between them.

Each daemon records a heartbeat row (pushgres.daemons) naming its apps; a daemon fails a row
as UnknownApp only when neither it nor any live daemon serves the row's app.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

import asyncpg

from pushgres.simulator import devkit

from .harness import (
    APNS_APP,
    FCM_APP,
    apns,
    config_with_apps,
    daemon_rows,
    enqueue,
    fcm,
    running_daemon,
    settings_for,
    start_daemon_process,
    stop_process,
    wait_terminal,
)


async def _wait_for_daemons(
    dsn: str, procs: Sequence[subprocess.Popen[bytes]], *, timeout_s: float = 30.0
) -> list[asyncpg.Record]:
    """Until every process has its heartbeat row; fail if one exits first."""
    pids = {p.pid for p in procs}
    deadline = time.monotonic() + timeout_s
    while True:
        rows = await daemon_rows(dsn)
        if pids <= {r["pid"] for r in rows}:
            return rows
        exited = [(p.pid, p.returncode) for p in procs if p.poll() is not None]
        assert not exited, f"daemon process(es) exited before recording a heartbeat: {exited}"
        assert time.monotonic() < deadline, f"no heartbeat from every daemon: {rows}"
        await asyncio.sleep(0.1)


async def test_two_daemons_serving_different_apps_do_not_fail_each_others_rows(
    env: dict[str, Any],
) -> None:
    dsn, tmp, sims = env["dsn"], env["tmp"], env["sims"]
    apns_only = config_with_apps(env["config"], tmp / "apns-only.toml", [APNS_APP])
    fcm_only = config_with_apps(env["config"], tmp / "fcm-only.toml", [FCM_APP])
    assert "[apps.android]" not in apns_only.read_text()
    assert "[apps.ios]" not in fcm_only.read_text()
    assert "unknown_app_grace_s = 0.5" in apns_only.read_text()

    a = start_daemon_process(apns_only, tmp / "apns-daemon.log")
    f = start_daemon_process(fcm_only, tmp / "fcm-daemon.log")
    try:
        rows = await _wait_for_daemons(dsn, [a, f])
        by_pid = {r["pid"]: r for r in rows}
        assert list(by_pid[a.pid]["apps"]) == [APNS_APP]
        assert list(by_pid[f.pid]["apps"]) == [FCM_APP]
        assert f":{a.pid}:" in by_pid[a.pid]["id"] and f":{f.pid}:" in by_pid[f.pid]["id"]

        tokens_a = [devkit.apns_token("ok", 40_000 + i) for i in range(300)]
        tokens_f = [devkit.fcm_token("ok", 40_000 + i) for i in range(300)]
        # Half the rows are due in 3 s: they wait in the queue well past the 0.5 s grace, so
        # each daemon's sweeper sees the other app's rows several times before they are sent.
        later = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=3)
        items = [apns(t) for t in tokens_a[:150]] + [fcm(t) for t in tokens_f[:150]]
        items += [apns(t, send_at=later) for t in tokens_a[150:]]
        items += [fcm(t, send_at=later) for t in tokens_f[150:]]
        ids = await enqueue(dsn, items)
        found = await wait_terminal(dsn, ids, timeout_s=60)

        failed = [o for o in found.values() if o.status != "sent"]
        assert not failed, failed[:5]
        counts = sims.accepted_counts()
        assert sorted(counts["apns"].items()) == sorted((t, 1) for t in tokens_a)
        assert sorted(counts["fcm"].items()) == sorted((t, 1) for t in tokens_f)

        # While both run, the table lists both, each with its apps and a recent heartbeat.
        rows = await daemon_rows(dsn)
        assert sorted((r["pid"], list(r["apps"])) for r in rows) == sorted(
            [(a.pid, [APNS_APP]), (f.pid, [FCM_APP])]
        )
        assert all(r["age_s"] < 15 for r in rows), rows

        # The APNs daemon stops: its row goes at once, the FCM daemon's stays.
        assert stop_process(a, signal.SIGTERM) == 0
        rows = await daemon_rows(dsn)
        assert [(r["pid"], list(r["apps"])) for r in rows] == [(f.pid, [FCM_APP])]

        # With nobody serving APNs any more, the FCM daemon fails a new APNs row (it does
        # not wait for a stale heartbeat to age out), and still delivers FCM.
        late = await enqueue(dsn, [apns(devkit.apns_token("ok", 41_000)), fcm(tokens_f[0])])
        found = await wait_terminal(dsn, late, timeout_s=20)
        assert found[late[0]].status == "failed"
        assert (found[late[0]].reason or "").startswith("UnknownApp"), found[late[0]]
        assert found[late[1]].status == "sent"
    finally:
        codes = [stop_process(p, signal.SIGTERM) for p in (a, f)]
    assert codes == [0, 0]
    assert await daemon_rows(dsn) == []


async def test_a_row_for_an_app_no_daemon_serves_is_failed(env: dict[str, Any]) -> None:
    dsn = env["dsn"]
    items = [
        {**apns(devkit.apns_token("ok", 42_000)), "app": "nobody"},
        {**fcm(devkit.fcm_token("ok", 42_001)), "app": "nobody-else", "dedupe_key": "n-1"},
        apns(devkit.apns_token("ok", 42_002)),
    ]
    ids = await enqueue(dsn, items)
    async with running_daemon(settings_for(env["config"])):
        found = await wait_terminal(dsn, ids, timeout_s=20)
        rows = await daemon_rows(dsn)
    assert [sorted(r["apps"]) for r in rows] == [sorted([APNS_APP, FCM_APP])]
    for nid, app in zip(ids[:2], ["nobody", "nobody-else"], strict=True):
        assert found[nid].status == "failed", found[nid]
        assert (found[nid].reason or "").startswith("UnknownApp"), found[nid]
        assert repr(app) in (found[nid].reason or "")
        assert found[nid].attempts == 0  # never sent
    assert found[ids[2]].status == "sent"
    assert env["sims"].apns.metrics()["requests"] == 1
    assert await daemon_rows(dsn) == []  # removed on stop


async def _record_ghost(conn: asyncpg.Connection, daemon_id: str, age_s: float) -> None:
    await conn.execute(
        "INSERT INTO pushgres.daemons (id, host, pid, apps, heartbeat_at)"
        " VALUES ($1, 'elsewhere', 4242, ARRAY['ghost'], now() - make_interval(secs => $2))"
        " ON CONFLICT (id) DO UPDATE SET heartbeat_at = excluded.heartbeat_at",
        daemon_id,
        age_s,
    )


def _ghost(n: int) -> dict[str, Any]:
    return {**apns(devkit.apns_token("ok", 43_000 + n)), "app": "ghost"}


async def test_a_stale_heartbeat_does_not_protect_its_apps(env: dict[str, Any]) -> None:
    dsn = env["dsn"]
    conn = await asyncpg.connect(dsn)
    try:
        await _record_ghost(conn, "ghost-stale", 300)
        ids = await enqueue(dsn, [_ghost(i) for i in range(5)])
        async with running_daemon(settings_for(env["config"])):
            found = await wait_terminal(dsn, ids, timeout_s=20)
        assert all(
            o.status == "failed" and (o.reason or "").startswith("UnknownApp")
            for o in found.values()
        ), found
        # The stale row is not the daemon's to remove; only its own row went.
        assert await conn.fetchval("SELECT array_agg(id) FROM pushgres.daemons") == ["ghost-stale"]
    finally:
        await conn.close()


@contextlib.asynccontextmanager
async def _fresh_ghost(conn: asyncpg.Connection, daemon_id: str) -> AsyncIterator[None]:
    """Keep a heartbeat row for app 'ghost' fresh (re-upserted every second)."""

    async def beat() -> None:
        while True:
            await _record_ghost(conn, daemon_id, 0)
            await asyncio.sleep(1.0)

    await _record_ghost(conn, daemon_id, 0)
    task = asyncio.create_task(beat())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_a_fresh_heartbeat_protects_its_apps_while_it_stays_fresh(
    env: dict[str, Any],
) -> None:
    dsn = env["dsn"]
    conn = await asyncpg.connect(dsn)
    beat_conn = await asyncpg.connect(dsn)
    try:
        async with (
            _fresh_ghost(beat_conn, "ghost-fresh"),
            running_daemon(settings_for(env["config"])),
        ):
            ids = await enqueue(dsn, [_ghost(i) for i in range(5)])
            # A row of an app nobody serves, enqueued alongside: proof the sweeper ran.
            control = await enqueue(dsn, [{**_ghost(9), "app": "nobody"}])
            found = await wait_terminal(dsn, control, timeout_s=20)
            assert (found[control[0]].reason or "").startswith("UnknownApp")
            await asyncio.sleep(3.0)  # several more sweeps, each past the 0.5 s grace
            queued = await conn.fetch(
                "SELECT id, attempts FROM pushgres.queue WHERE app = 'ghost' ORDER BY id"
            )
            assert [(r["id"], r["attempts"]) for r in queued] == [(i, 0) for i in ids]
            assert (
                await conn.fetchval(
                    "SELECT count(*) FROM pushgres.results WHERE id = ANY($1::bigint[])", ids
                )
                == 0
            )
        # The heartbeat stopped; once it is stale a daemon fails the rows after all.
        await _record_ghost(conn, "ghost-fresh", 300)
        async with running_daemon(settings_for(env["config"])):
            found = await wait_terminal(dsn, ids, timeout_s=20)
        assert all(
            o.status == "failed" and (o.reason or "").startswith("UnknownApp")
            for o in found.values()
        ), found
    finally:
        await beat_conn.close()
        await conn.close()
