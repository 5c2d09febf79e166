"""Guardrails on PostgreSQL and the simulators: categories checked at enqueue, frequency caps
exact across four daemon processes, quiet hours and local-time sends judged on a daemon clock
the test moves (DST changes included)."""

from __future__ import annotations

import asyncio
import datetime as dt
import zoneinfo
from collections import Counter
from typing import Any

import asyncpg
import pytest

from pushgres import devices, fanout
from pushgres.daemon import Daemon
from pushgres.db.queries import QUERIES
from pushgres.db.store import Store
from pushgres.exceptions import EnqueueError
from pushgres.models import Requeue
from pushgres.simulator import devkit

from .harness import (
    APNS_APP,
    FCM_APP,
    apns,
    enqueue,
    fcm,
    running_daemon,
    settings_for,
    start_daemon_process,
    stop_process,
    wait_terminal,
    write_config,
)

UTC = dt.UTC

GUARDRAILS = """
[categories.news]
[categories.receipts]
transactional = true

[caps.daily]
apps = ["ios", "android"]
limit = 3
window = "24h"
"""


def configure(env: dict[str, Any], *, daemon: str = "", apns: str = "", extra: str = "") -> Any:
    path = write_config(
        env["tmp"] / "guardrails.toml",
        dsn=env["dsn"],
        setup=env["setup"],
        sims=env["sims"],
        daemon=daemon,
        apns='default_category = "news"\n' + apns,
        fcm='default_category = "news"\n',
    )
    path.write_text(path.read_text() + GUARDRAILS + extra)
    return path


class OffsetClock:
    """The daemon's wall clock: the real one moved to a chosen moment, then running on."""

    def __init__(self, at: dt.datetime) -> None:
        self.offset = at - dt.datetime.now(UTC)

    def __call__(self) -> dt.datetime:
        return dt.datetime.now(UTC) + self.offset


async def started(daemon: Any) -> None:
    """Until the daemon runs (it has written the config's categories by then)."""
    for _ in range(300):
        if daemon.phase == "running":
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the daemon did not start")


async def _rows_of(dsn: str, sql: str, ids: list[int]) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(dsn)
    try:
        return list(await conn.fetch(sql, ids))
    finally:
        await conn.close()


async def results(dsn: str, ids: list[int]) -> list[asyncpg.Record]:
    return await _rows_of(
        dsn,
        "SELECT id, status, reason, category FROM pushgres.results"
        " WHERE id = ANY($1::bigint[]) ORDER BY id",
        ids,
    )


async def queued(dsn: str, ids: list[int]) -> list[asyncpg.Record]:
    return await _rows_of(
        dsn,
        "SELECT id, attempts, last_reason, extract(epoch FROM send_at - now())::float8 AS in_s"
        " FROM pushgres.queue WHERE id = ANY($1::bigint[]) ORDER BY id",
        ids,
    )


async def wait_queued_reason(dsn: str, ids: list[int], *, timeout_s: float = 20) -> list[Any]:
    """Until every id is back in the queue with a reason (deferred); those rows."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        rows = await queued(dsn, ids)
        if len(rows) == len(ids) and all(r["last_reason"] for r in rows):
            return rows
        assert asyncio.get_running_loop().time() < deadline, rows
        await asyncio.sleep(0.1)


# -- categories ----------------------------------------------------------------------------------


async def test_unknown_categories_are_refused_at_enqueue(env: dict[str, Any]) -> None:
    settings = settings_for(configure(env))
    dsn = env["dsn"]
    token = devkit.apns_token("ok", 1)
    async with running_daemon(settings) as daemon:
        await started(daemon)
        ids = await enqueue(dsn, [apns(token, category="receipts"), apns(token)])
        found = await wait_terminal(dsn, ids)
        assert [o.status for o in found.values()] == ["sent", "sent"]
        # Each result records the category it was sent under: its own, or the app's default.
        assert [r["category"] for r in await results(dsn, ids)] == ["receipts", "news"]

        with pytest.raises(EnqueueError, match=r"notification 1: unknown category 'promo'"):
            await enqueue(dsn, [apns(token), apns(token, category="promo")])
        conn = await asyncpg.connect(dsn)
        try:
            with pytest.raises(asyncpg.CheckViolationError, match="unknown category 'promo'"):
                await conn.execute(
                    "INSERT INTO pushgres.queue (app, platform, device_token, payload, category)"
                    " VALUES ('ios', 'apns', $1, '{\"aps\": {}}', 'promo')",
                    token,
                )
            with pytest.raises(asyncpg.CheckViolationError, match="queue_timezone_known"):
                await conn.execute(
                    "INSERT INTO pushgres.queue (app, platform, device_token, payload, timezone)"
                    " VALUES ('ios', 'apns', $1, '{\"aps\": {}}', 'Mars/Olympus')",
                    token,
                )
            assert await conn.fetchval("SELECT count(*) FROM pushgres.queue") == 0
        finally:
            await conn.close()
    with pytest.raises(EnqueueError, match="timezone must be an IANA time zone"):
        await enqueue(dsn, [apns(token, timezone="Mars/Olympus")])
    with pytest.raises(EnqueueError, match="local_send_at must be a wall-clock time"):
        await enqueue(dsn, [apns(token, local_send_at=dt.datetime.now(UTC))])


# -- frequency caps -----------------------------------------------------------------------------


async def test_caps_count_per_person_across_devices_and_apps(env: dict[str, Any]) -> None:
    dsn = env["dsn"]
    settings = settings_for(
        configure(
            env,
            extra='[caps.cooldown]\napps = ["ios"]\ncategories = ["receipts"]\nlimit = 1\n'
            'window = "1h"\nover = "defer"\n',
        )
    )
    phone, tablet = devkit.apns_token("ok", 11), devkit.apns_token("ok", 12)
    android = devkit.fcm_token("ok", 13)
    anonymous = devkit.apns_token("ok", 14)
    conn = await asyncpg.connect(dsn)
    try:
        await devices.register(conn, APNS_APP, "apns", phone, user_id="ann")
        await devices.register(conn, APNS_APP, "apns", tablet, user_id="ann")
        await devices.register(conn, FCM_APP, "fcm", android, user_id="ann")
    finally:
        await conn.close()
    async with running_daemon(settings) as daemon:
        await started(daemon)
        # Ann: 5 notifications over her three devices on two apps; 3 per 24 h reach her.
        items = [apns(phone), apns(tablet), fcm(android), apns(phone), fcm(android)]
        items += [apns(anonymous) for _ in range(4)]  # an anonymous device: its own count
        ids = await enqueue(dsn, [dict(i, priority=10) for i in items])
        found = await wait_terminal(dsn, ids)
        statuses = [found[i].status for i in ids]
        assert statuses[:5].count("sent") == 3 and statuses[:5].count("suppressed") == 2
        assert statuses[5:].count("sent") == 3 and statuses[5:].count("suppressed") == 1
        reasons = {found[i].reason for i in ids if found[i].status == "suppressed"}
        assert reasons == {"FrequencyCap: daily (3 per 24h)"}
        # Transactional receipts are not under the daily cap, but under their own cooldown,
        # which defers (does not drop) the second.
        receipts = await enqueue(
            dsn, [apns(phone, category="receipts"), apns(tablet, category="receipts")]
        )
        deferred = await wait_queued_reason(dsn, receipts[1:])
        assert deferred[0]["last_reason"] == "FrequencyCap: cooldown (1 per 1h), deferred"
        assert deferred[0]["attempts"] == 0 and 3500 < deferred[0]["in_s"] <= 3600
        assert (await wait_terminal(dsn, receipts[:1]))[receipts[0]].status == "sent"
    counts = env["sims"].accepted_counts()
    assert sum(counts["apns"].values()) + sum(counts["fcm"].values()) == 7


async def test_four_daemons_never_exceed_a_cap(env: dict[str, Any]) -> None:
    """Twenty people, fifteen notifications each, drained by four daemon processes at once:
    each person gets exactly three."""
    dsn, tmp = env["dsn"], env["tmp"]
    config = configure(env, daemon="batch_size = 20")
    people = {f"user-{p}": devkit.apns_token("ok", 500 + p) for p in range(20)}
    conn = await asyncpg.connect(dsn)
    try:
        for user, token in people.items():
            await devices.register(conn, APNS_APP, "apns", token, user_id=user)
    finally:
        await conn.close()
    later = dt.datetime.now(UTC) + dt.timedelta(seconds=4)
    procs = [start_daemon_process(config, tmp / f"daemon-{n}.log") for n in range(4)]
    try:
        # Due together once every daemon runs: their claims race for the same people.
        items = [apns(token, send_at=later) for _ in range(15) for token in people.values()]
        ids = await enqueue(dsn, items)
        found = await wait_terminal(dsn, ids, timeout_s=90)
    finally:
        codes = [stop_process(p) for p in procs]
    assert codes == [0, 0, 0, 0]
    by_status = Counter(o.status for o in found.values())
    assert by_status == {"sent": 60, "suppressed": 240}, by_status
    accepted = env["sims"].accepted_counts()["apns"]
    assert sorted(accepted.values()) == [3] * 20  # three each, none sent twice
    logs = "".join((tmp / f"daemon-{n}.log").read_text() for n in range(4))
    assert "deadlock" not in logs.lower() and "Traceback" not in logs


# -- quiet hours and local time --------------------------------------------------------------


async def test_quiet_hours_hold_notifications_until_the_window_ends(env: dict[str, Any]) -> None:
    dsn = env["dsn"]
    paris = zoneinfo.ZoneInfo("Europe/Paris")
    # The daemon's clock: two seconds before the next 08:00 in Paris (ahead of the database's
    # clock, which judges expiry at claim time).
    tomorrow = dt.datetime.now(paris).date() + dt.timedelta(days=1)
    eight = dt.datetime.combine(tomorrow, dt.time(8), tzinfo=paris)
    clock = OffsetClock(eight.astimezone(UTC) - dt.timedelta(seconds=2))
    settings = settings_for(
        configure(
            env,
            apns='quiet_hours = "21:00-08:00"\ntimezone = "Europe/Paris"\nquiet_hours_spread = 0\n',
        )
    )
    night_owl = devkit.apns_token("ok", 21)  # registered in Tokyo: 15:00 there, not quiet
    conn = await asyncpg.connect(dsn)
    try:
        await devices.register(conn, APNS_APP, "apns", night_owl, timezone="Asia/Tokyo")
    finally:
        await conn.close()
    async with running_daemon(settings, clock=clock) as daemon:
        await started(daemon)
        ids = await enqueue(
            dsn,
            [
                apns(devkit.apns_token("ok", 22)),  # the app's zone: Paris, quiet
                apns(devkit.apns_token("ok", 23), timezone="America/New_York"),  # 02:00: quiet
                apns(night_owl),
                apns(devkit.apns_token("ok", 24), category="receipts"),  # transactional
                # Quiet for six more hours in New York; it expires in one.
                apns(
                    devkit.apns_token("ok", 25),
                    timezone="America/New_York",
                    expires_at=clock() + dt.timedelta(hours=1),
                ),
            ],
        )
        done = await wait_terminal(dsn, [ids[2], ids[3], ids[4]])
        assert [done[i].status for i in ids[2:]] == ["sent", "sent", "expired"]
        assert (done[ids[4]].reason or "").startswith(
            "QuietHours: 21:00-08:00 in America/New_York; it expires first"
        )
        (ny,) = await wait_queued_reason(dsn, [ids[1]])
        assert ny["last_reason"] == "QuietHours: 21:00-08:00 in America/New_York"
        new_york = zoneinfo.ZoneInfo("America/New_York")
        ny_eight = dt.datetime.combine(eight.astimezone(new_york).date(), dt.time(8), new_york)
        assert abs(ny["in_s"] - (ny_eight - clock()).total_seconds()) < 10  # 08:00 there
        # 08:00 in Paris comes (on the daemon's clock): the Paris row goes then, not before.
        paris_row = (await wait_terminal(dsn, [ids[0]], timeout_s=20))[ids[0]]
        assert paris_row.status == "sent"
        assert clock() >= eight.astimezone(UTC)
        # Held back, not retried: deferrals are counted apart from retries.
        assert daemon.stats.deferred >= 2 and daemon.stats.retried == 0


async def test_quiet_hours_end_at_local_time_across_a_dst_change(env: dict[str, Any]) -> None:
    """On the night Paris moves to summer time, 08:00 comes an hour sooner in UTC."""
    dsn = env["dsn"]
    clock = OffsetClock(dt.datetime(2026, 3, 28, 21, 30, tzinfo=UTC))  # 22:30 CET
    settings = settings_for(
        configure(env, apns='quiet_hours = "21:00-08:00"\nquiet_hours_spread = 0\n')
    )
    async with running_daemon(settings, clock=clock):
        ids = await enqueue(dsn, [apns(devkit.apns_token("ok", 31), timezone="Europe/Paris")])
        (row,) = await wait_queued_reason(dsn, ids)
    expected = (dt.datetime(2026, 3, 29, 6, tzinfo=UTC) - clock()).total_seconds()
    assert abs(row["in_s"] - expected) < 10  # 06:00 UTC: 08:00 CEST, not 07:00 UTC


async def test_local_time_sends_at_each_devices_wall_clock(env: dict[str, Any]) -> None:
    dsn = env["dsn"]
    tokyo = zoneinfo.ZoneInfo("Asia/Tokyo")
    soon = (dt.datetime.now(tokyo) + dt.timedelta(seconds=3)).replace(tzinfo=None, microsecond=0)
    settings = settings_for(configure(env, apns='late_local_time = "next_day"\n'))
    async with running_daemon(settings):
        ids = await enqueue(
            dsn,
            [
                apns(devkit.apns_token("ok", 41), local_send_at=soon, timezone="Asia/Tokyo"),
                # The same wall-clock time in Paris is hours away.
                apns(devkit.apns_token("ok", 42), local_send_at=soon, timezone="Europe/Paris"),
                # An hour ago in Tokyo: passed at enqueue, so tomorrow at that time.
                apns(
                    devkit.apns_token("ok", 43),
                    local_send_at=soon - dt.timedelta(hours=1),
                    timezone="Asia/Tokyo",
                ),
            ],
        )
        started = dt.datetime.now(UTC)
        sent = await wait_terminal(dsn, ids[:1], timeout_s=20)
        assert sent[ids[0]].status == "sent"
        assert sent[ids[0]].finished_at is not None
        assert sent[ids[0]].finished_at >= soon.replace(tzinfo=tokyo).astimezone(UTC)
        assert (dt.datetime.now(UTC) - started).total_seconds() < 15
        waiting = {r["id"]: r for r in await queued(dsn, ids[1:])}
        assert waiting.keys() == set(ids[1:])
        paris = soon.replace(tzinfo=zoneinfo.ZoneInfo("Europe/Paris")) - dt.datetime.now(UTC)
        assert abs(waiting[ids[1]]["in_s"] - paris.total_seconds()) < 10
        assert 23 * 3600 - 10 < waiting[ids[2]]["in_s"] < 23 * 3600 + 10


async def test_a_fanout_under_a_category_at_each_devices_local_time(env: dict[str, Any]) -> None:
    dsn = env["dsn"]
    settings = settings_for(configure(env))
    conn = await asyncpg.connect(dsn)
    try:
        await devices.register(
            conn,
            APNS_APP,
            "apns",
            devkit.apns_token("ok", 51),
            user_id="ann",
            timezone="Asia/Tokyo",
        )
        await devices.register(
            conn,
            APNS_APP,
            "apns",
            devkit.apns_token("ok", 52),
            user_id="bob",
            timezone="America/Los_Angeles",
        )
    finally:
        await conn.close()
    tokyo = zoneinfo.ZoneInfo("Asia/Tokyo")
    soon = (dt.datetime.now(tokyo) + dt.timedelta(seconds=2)).replace(tzinfo=None, microsecond=0)
    message = {"title": "Advent", "body": "Door 24 is open"}
    async with running_daemon(settings) as daemon:
        await started(daemon)
        conn = await asyncpg.connect(dsn)
        try:
            with pytest.raises(EnqueueError, match="unknown category 'promo'"):
                await fanout.send_to_users(conn, APNS_APP, ["ann"], message, category="promo")
            done = await fanout.send_to_users(
                conn, APNS_APP, ["ann", "bob"], message, category="receipts", local_send_at=soon
            )
            group = done.group_id
            ann = await wait_terminal(dsn, [await _row_id(conn, group, "ann")], timeout_s=20)
            assert [o.status for o in ann.values()] == ["sent"]
            (bob,) = await queued(dsn, [await _row_id(conn, group, "bob")])
            los_angeles = zoneinfo.ZoneInfo("America/Los_Angeles")
            expected = soon.replace(tzinfo=los_angeles) - dt.datetime.now(UTC)
            assert abs(bob["in_s"] - expected.total_seconds()) < 10
            assert bob["last_reason"].startswith("LocalTime: waiting for")
            categories = await conn.fetch(
                "SELECT DISTINCT category FROM pushgres.results WHERE group_id = $1"
                " UNION SELECT DISTINCT category FROM pushgres.queue WHERE group_id = $1",
                group,
            )
            assert [r["category"] for r in categories] == ["receipts"]
        finally:
            await conn.close()


async def _row_id(conn: asyncpg.Connection, group: int, user: str) -> int:
    found = await conn.fetchval(
        "SELECT id FROM (SELECT id, user_id FROM pushgres.queue WHERE group_id = $1"
        " UNION ALL SELECT id, user_id FROM pushgres.results WHERE group_id = $1) g"
        " WHERE user_id = $2",
        group,
        user,
    )
    assert found is not None
    return int(found)


# -- lanes -------------------------------------------------------------------------------------


async def test_transactional_rows_are_claimed_ahead_of_a_bulk_backlog(dsn: str) -> None:
    store = await Store.open(
        dsn, max_size=2, idle_in_transaction_timeout_s=60, statement_timeout_s=30
    )
    try:
        await store.sync_categories({"news": False, "receipts": True})
        bulk = [apns(devkit.apns_token("ok", 1000 + i), category="news") for i in range(300)]
        bulk += [apns(devkit.apns_token("ok", 2000 + i)) for i in range(300)]  # no category
        await enqueue(dsn, bulk)
        urgent = await enqueue(
            dsn,
            [
                apns(devkit.apns_token("ok", 3000), category="receipts", priority=5),
                apns(devkit.apns_token("ok", 3001), category="receipts"),
            ],
        )
        async with store.claim(APNS_APP, 10) as claim:
            ids = [row.id for row in claim.rows]
            assert set(urgent) <= set(ids) and len(ids) == 10
            by_id = {row.id: row for row in claim.rows}
            assert all(by_id[i].transactional for i in urgent)
            assert sum(row.transactional for row in claim.rows) == 2
            # A retry keeps its lane.
            await claim.write([], [Requeue(by_id[urgent[0]], 0.0, "TooManyRequests", 1)], [])
        async with store.claim(APNS_APP, 1) as claim:
            assert [row.id for row in claim.rows] == [urgent[0]]
            await claim.write([], [Requeue(claim.rows[0], 0.0, "Interrupted", 1)], [])
    finally:
        await store.close()


# -- quota pacing -------------------------------------------------------------------------------


async def test_a_project_over_its_fcm_quota_is_paced_then_recovers(env: dict[str, Any]) -> None:
    dsn, sims = env["dsn"], env["sims"]
    settings = settings_for(configure(env))
    sims.fcm.patch({"quota_per_minute": 150, "retry_after_mode": "none"})
    async with running_daemon(settings) as daemon:
        await started(daemon)
        # Enough attempts that no row runs out of them while refused: how many refusals a row
        # meets before the pace settles depends on the machine's speed, not on the pacing.
        ids = await enqueue(
            dsn,
            [fcm(devkit.fcm_token("ok", 6000 + i), max_attempts=100) for i in range(600)],
        )
        deadline = asyncio.get_running_loop().time() + 20
        paced = None
        while paced is None:
            assert asyncio.get_running_loop().time() < deadline, "the app was never paced"
            (android,) = [a for a in daemon.app_states() if a.name == FCM_APP]
            paced = android.pace_per_s
            await asyncio.sleep(0.05)
        # Without a pace every retry round sends all 450 rows over the quota again (a round
        # every 0.5 s here: 2,700 requests in three seconds). Paced, the rate halves while
        # the provider keeps refusing: once it has settled, a small fraction of that.
        await asyncio.sleep(3.0)
        tried_before = len(sims.requests("fcm"))
        await asyncio.sleep(3.0)
        tried = len(sims.requests("fcm")) - tried_before
        assert tried < 300, tried
        (android,) = [a for a in daemon.app_states() if a.name == FCM_APP]
        settled = android.pace_per_s
        assert settled is not None and settled < paced
        # The quota refills (the simulator's window is a minute): lift it, and the pace comes
        # back to the full rate by itself, additively.
        sims.fcm.patch({"quota_per_minute": 0})
        found = await wait_terminal(dsn, ids, timeout_s=90)
        ends = Counter((o.status, o.reason) for o in found.values())
        assert set(ends) == {("sent", None)}, ends
        (android,) = [a for a in daemon.app_states() if a.name == FCM_APP]
        assert android.pace_per_s is None or android.pace_per_s > settled  # recovering


async def test_a_device_apns_throttles_is_held_back_not_hammered(env: dict[str, Any]) -> None:
    dsn, sims = env["dsn"], env["sims"]
    settings = settings_for(configure(env))
    sims.apns.patch({"per_token_limit": {"count": 2, "per_s": 0.5}})
    busy = devkit.apns_token("ok", 7000)
    async with running_daemon(settings) as daemon:
        await started(daemon)
        first = await enqueue(dsn, [apns(busy, category="receipts") for _ in range(3)])
        done = await wait_terminal(dsn, first[:2])
        assert [o.status for o in done.values()] == ["sent", "sent"]
        (throttled,) = await wait_queued_reason(dsn, first[2:])
        # Requeued by the 429 ("TooManyRequests"); on a slow machine it may already have been
        # claimed again and held back by the device's pace before it is read here.
        assert throttled["last_reason"].startswith("TooManyRequests"), throttled["last_reason"]
        later = await enqueue(
            dsn,
            [apns(busy, category="receipts") for _ in range(3)]
            + [apns(devkit.apns_token("ok", 7001 + i)) for i in range(5)],
        )
        others = await wait_terminal(dsn, later[3:])
        assert all(o.status == "sent" for o in others.values())
        held = await wait_queued_reason(dsn, later[:3])
        assert all(r["last_reason"].startswith("TooManyRequests: device paced") for r in held)
        assert all(r["attempts"] == 0 for r in held)
        (ios,) = [a for a in daemon.app_states() if a.name == APNS_APP]
        assert ios.paced_devices == 1
    throttles = [r for r in sims.requests("apns") if r.get("status") == 429]
    assert len(throttles) == 1  # asked once, then the device was left alone


async def test_a_ttl_with_a_local_send_time_lasts_from_the_last_zone(dsn: str) -> None:
    """Every device gets the whole ttl from its own local time: it counts from UTC-12's."""
    nine = dt.datetime(2026, 12, 24, 9, 0)
    last = dt.datetime(2026, 12, 24, 21, 0, tzinfo=UTC)  # 09:00 at UTC-12
    message = {"title": "Door 24", "ttl": 3600}
    (direct,) = await enqueue(
        dsn,
        [
            {
                "app": APNS_APP,
                "platform": "apns",
                "device_token": devkit.apns_token("ok", 1),
                "message": message,
                "local_send_at": nine,
            }
        ],
    )
    conn = await asyncpg.connect(dsn)
    try:
        await devices.register(conn, APNS_APP, "apns", devkit.apns_token("ok", 2), user_id="ann")
        done = await fanout.send_to_users(conn, APNS_APP, ["ann"], message, local_send_at=nine)
        rows = await conn.fetch(
            "SELECT id, send_at, expires_at FROM pushgres.queue WHERE id = $1 OR group_id = $2",
            direct,
            done.group_id,
        )
    finally:
        await conn.close()
    assert len(rows) == 2
    for row in rows:
        assert row["send_at"] == dt.datetime(2026, 12, 23, 19, 0, tzinfo=UTC)  # UTC+14's 09:00
        assert row["expires_at"] == last + dt.timedelta(hours=1)


async def test_a_reload_applies_new_caps_and_categories(env: dict[str, Any]) -> None:
    dsn = env["dsn"]
    path = configure(env)
    before = settings_for(path)
    token = devkit.apns_token("ok", 8000)
    current = {"settings": before}
    daemon = Daemon(before, reload_config=lambda: current["settings"])
    task = asyncio.create_task(daemon.run())
    try:
        await started(daemon)
        ids = await enqueue(dsn, [apns(token) for _ in range(4)])
        found = await wait_terminal(dsn, ids)
        assert Counter(o.status for o in found.values()) == {"sent": 3, "suppressed": 1}
        # The new config: a tighter cap, and a new category.
        path.write_text(
            path.read_text().replace("limit = 3", "limit = 1") + "\n[categories.alerts]\n"
        )
        current["settings"] = settings_for(path)
        daemon.reload()
        conn = await asyncpg.connect(dsn)
        try:
            for _ in range(100):
                names = {
                    r["name"] for r in await conn.fetch("SELECT name FROM pushgres.categories")
                }
                if "alerts" in names:
                    break
                await asyncio.sleep(0.05)
        finally:
            await conn.close()
        assert "alerts" in names
        other = devkit.apns_token("ok", 8001)
        ids = await enqueue(dsn, [apns(other, category="alerts") for _ in range(3)])
        found = await wait_terminal(dsn, ids)
        assert Counter(o.status for o in found.values()) == {"sent": 1, "suppressed": 2}
        assert {o.reason for o in found.values() if o.status == "suppressed"} == {
            "FrequencyCap: daily (1 per 24h)"
        }
    finally:
        daemon.stop()
        await asyncio.wait_for(task, 30)


async def test_daemons_with_other_categories_keep_each_others(dsn: str) -> None:
    store = await Store.open(
        dsn, max_size=2, idle_in_transaction_timeout_s=60, statement_timeout_s=30
    )
    conn = await asyncpg.connect(dsn)
    try:
        await store.sync_categories({"news": False})
        await store.sync_categories({"receipts": True})  # another daemon's config
        names = {r["name"] for r in await conn.fetch("SELECT name FROM pushgres.categories")}
        assert names == {"news", "receipts"}
        # Nobody has declared "news" for two days: the next sync removes it.
        await conn.execute(
            "UPDATE pushgres.categories SET updated_at = now() - interval '2 days'"
            " WHERE name = 'news'"
        )
        await store.sync_categories({"receipts": True})
        names = {r["name"] for r in await conn.fetch("SELECT name FROM pushgres.categories")}
        assert names == {"receipts"}
        # The cap ledger's pruning keeps what still counts and what a batch holds.
        await conn.execute(
            "INSERT INTO pushgres.cap_ledger (subject, expires_at) VALUES"
            " ('u:old', now() - interval '1 hour'), ('u:live', now() + interval '1 hour'),"
            " ('u:held', now() - interval '1 hour')"
        )
        holder = await asyncpg.connect(dsn)
        try:
            async with holder.transaction():
                await holder.fetch("SELECT * FROM pushgres.lock_cap_ledger(ARRAY['u:held'])")
                await conn.execute(QUERIES["prune_cap_ledger"])
        finally:
            await holder.close()
        left = {r["subject"] for r in await conn.fetch("SELECT subject FROM pushgres.cap_ledger")}
        assert left == {"u:live", "u:held"}
    finally:
        await conn.close()
        await store.close()
