"""Sending to people against real PostgreSQL and the simulators: fan-outs and uninstall probes.

A fan-out across an iOS and an Android app of one group reaches every active device of each
user exactly once (simulator receipts) and nothing else: not stale or dead devices, not a
logged-out user's old device, not anonymous ones; its group outcome is one query. The SQL
functions refuse bad input naming it, and a repeated dedupe key adds nothing. Uninstall probes
go at their pace to quiet devices only, once per period; a dead answer marks the device
uninstalled, and probes stay out of the app's notification counts.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import asyncpg
import pytest

import pushgres
from pushgres import devices, fanout
from pushgres import message as portable
from pushgres.db.store import Store
from pushgres.exceptions import EnqueueError
from pushgres.housekeeping import PROBE_MESSAGE
from pushgres.simulator import devkit

from .harness import (
    APNS_APP,
    FCM_APP,
    TERMINAL,
    running_daemon,
    settings_for,
    wait_terminal,
    write_config,
)

GROUP = "shop"
MESSAGE = {
    "title": "Your cart misses you",
    "body": "3 items are waiting",
    "data": {"cart": 42},
    "badge": 3,
    "link": "shop://cart",
    "ttl": 3600,
    "collapse_key": "cart",
}


def _group_config(env: dict[str, Any], name: str, **kw: str) -> Any:
    config = write_config(
        env["tmp"] / name, dsn=env["dsn"], setup=env["setup"], sims=env["sims"], **kw
    )
    config.write_text(
        config.read_text()
        + f'\n[groups]\n{GROUP} = ["{APNS_APP}", "{FCM_APP}"]\n[admin]\nlisten = "127.0.0.1:0"\n'
    )
    return config


async def _wait_group(conn: asyncpg.Connection, group_id: int) -> fanout.GroupOutcome:
    deadline = time.monotonic() + 60
    while True:
        outcome = await fanout.group_outcome(conn, group_id)
        assert outcome is not None
        if outcome.counts and outcome.done:
            return outcome
        assert time.monotonic() < deadline, outcome
        await asyncio.sleep(0.1)


async def test_a_fanout_across_two_apps_reaches_each_active_device_once(
    env: dict[str, Any],
) -> None:
    sims, dsn = env["sims"], env["dsn"]
    ios = [devkit.apns_token("ok", 100 + i) for i in range(6)]
    android = [devkit.fcm_token("ok", 100 + i) for i in range(4)]
    conn = await asyncpg.connect(dsn)
    try:
        # ann: two iPhones and an Android phone; ben: one Android phone; cy: a stale iPhone
        # and a dead one; dee: nothing; an anonymous iPhone; eve's old iPhone, logged out
        # (a shared device), now anonymous.
        for token, user in ((ios[0], "ann"), (ios[1], "ann"), (ios[2], "cy"), (ios[3], "cy"),
                            (ios[4], None), (ios[5], "eve")):  # fmt: skip
            await devices.register(conn, APNS_APP, "apns", token, user_id=user)
        for token, user in ((android[0], "ann"), (android[1], "ben"), (android[2], None)):
            await devices.register(conn, FCM_APP, "fcm", token, user_id=user)
        await devices.logout(conn, APNS_APP, ios[5])
        await conn.execute("UPDATE pushgres.devices SET state = 'stale' WHERE token = $1", ios[2])
        await conn.execute("UPDATE pushgres.devices SET state = 'invalid' WHERE token = $1", ios[3])
        async with running_daemon(settings_for(_group_config(env, "fanout.toml"))):
            deadline = time.monotonic() + 10
            while not await conn.fetchval("SELECT count(*) FROM pushgres.app_groups"):
                assert time.monotonic() < deadline, "the daemon did not write the app groups"
                await asyncio.sleep(0.05)
            sent = await fanout.send_to_users(
                conn, GROUP, ["ann", "ben", "cy", "dee", "eve", "ann"], MESSAGE,
                overrides={"fcm": {"android": {"notification": {"channel_id": "cart"}}}},
                metadata={"campaign": "cart-recovery"},
            )  # fmt: skip
            assert (sent.users, sent.users_without_device, sent.notifications) == (5, 3, 4)
            outcome = await _wait_group(conn, sent.group_id)
            per_user = await fanout.group_outcome(conn, sent.group_id, per_user=True)
            rows = await conn.fetch(
                "SELECT app, device_token, user_id, metadata FROM pushgres.results"
                " WHERE group_id = $1",
                sent.group_id,
            )
            queued = await conn.fetchrow(
                "SELECT collapse_id, expires_at - send_at AS ttl, priority FROM pushgres.queue"
                " WHERE group_id = $1 LIMIT 1",
                sent.group_id,
            )
        assert queued is None  # all delivered
        assert outcome.by_status() == {"sent": 4}
        assert outcome.target == GROUP and set(outcome.apps) == {APNS_APP, FCM_APP}
        assert per_user is not None
        assert {(c.user_id, c.status): c.count for c in per_user.counts} == {
            ("ann", "sent"): 3,
            ("ben", "sent"): 1,
        }
        assert sorted((r["app"], r["device_token"], r["user_id"]) for r in rows) == sorted(
            [(APNS_APP, ios[0], "ann"), (APNS_APP, ios[1], "ann"),
             (FCM_APP, android[0], "ann"), (FCM_APP, android[1], "ben")]
        )  # fmt: skip
        assert all(r["metadata"] == '{"campaign": "cart-recovery"}' for r in rows)
        accepted = sims.accepted_counts()
        assert {t: n for t, n in accepted["apns"].items() if t in ios} == {ios[0]: 1, ios[1]: 1}
        assert {t: n for t, n in accepted["fcm"].items() if t in android} == {
            android[0]: 1,
            android[1]: 1,
        }
    finally:
        await conn.close()


async def test_a_logged_out_device_gets_nothing_of_its_former_user(env: dict[str, Any]) -> None:
    sims, dsn = env["sims"], env["dsn"]
    shared, own = devkit.apns_token("ok", 200), devkit.apns_token("ok", 201)
    conn = await asyncpg.connect(dsn)
    try:
        await devices.register(conn, APNS_APP, "apns", shared, user_id="fay")
        await devices.logout(conn, APNS_APP, shared)  # fay signs out of the family iPad
        await devices.register(conn, APNS_APP, "apns", own, user_id="gus")
        await devices.identify(conn, APNS_APP, shared, "gus")  # gus signs in on it
        async with running_daemon(settings_for(_group_config(env, "logout.toml"))):
            to_fay = await fanout.send_to_user(conn, APNS_APP, "fay", {"body": "for fay"})
            to_gus = await fanout.send_to_user(conn, APNS_APP, "gus", {"body": "for gus"})
            assert (to_fay.notifications, to_fay.users_without_device) == (0, 1)
            assert to_gus.notifications == 2
            await _wait_group(conn, to_gus.group_id)
            empty = await fanout.group_outcome(conn, to_fay.group_id)
        assert empty is not None and empty.counts == () and empty.users_without_device == 1
        assert sims.accepted_counts()["apns"] == {shared: 1, own: 1}  # both gus's, once
    finally:
        await conn.close()


async def test_fanouts_from_sql_refuse_bad_input_and_repeat_nothing(
    conn: asyncpg.Connection,
) -> None:
    token = devkit.apns_token("ok", 300)
    await devices.register(conn, APNS_APP, "apns", token, user_id="hal")
    first = await conn.fetchrow(
        "SELECT * FROM pushgres.send_to_user($1, 'hal', '{\"title\": \"Hi\"}', NULL, NULL, 'k1')",
        APNS_APP,
    )
    again = await conn.fetchrow(
        "SELECT * FROM pushgres.send_to_user($1, 'hal', '{\"title\": \"Hi\"}', NULL, NULL, 'k1')",
        APNS_APP,
    )
    assert first is not None and again is not None
    assert (first["duplicate"], first["notifications"]) == (False, 1)
    assert (again["duplicate"], again["group_id"], again["notifications"]) == (
        True,
        first["group_id"],
        1,
    )
    assert await conn.fetchval("SELECT count(*) FROM pushgres.queue") == 1
    row = await conn.fetchrow("SELECT payload::text, message::text, priority FROM pushgres.queue")
    assert row is not None and row["payload"] == "{}" and row["priority"] == 10
    for message, named in (
        ('{"titel": "Hi"}', "unknown key"),
        ('{"badge": -1}', "message.badge"),
        ('{"ttl": 99999999, "body": "x"}', "message.ttl"),
        ('{"priority": "urgent", "body": "x"}', "message.priority"),
        ('{"image": "http://x/y.png"}', "https"),
        ('{"ttl": 60}', "nothing to deliver"),
    ):
        with pytest.raises(asyncpg.InvalidParameterValueError, match=named):
            await conn.fetch(
                "SELECT * FROM pushgres.send_to_user($1, 'hal', $2)", APNS_APP, message
            )
    with pytest.raises(asyncpg.InvalidParameterValueError, match="overrides"):
        await conn.fetch(
            "SELECT * FROM pushgres.send_to_user($1, 'hal', '{\"body\": \"x\"}', '{\"web\": {}}')",
            APNS_APP,
        )
    with pytest.raises(EnqueueError, match="unknown"):
        await fanout.send_to_users(conn, APNS_APP, ["hal"], {"titel": "Hi"})
    with pytest.raises(EnqueueError, match="user 1"):
        await fanout.send_to_users(conn, APNS_APP, ["hal", ""], {"title": "Hi"})


async def _register_people(conn: asyncpg.Connection, people: int) -> list[str]:
    """``people`` users, each with an iPhone and every other one an Android phone too."""
    rows: list[dict[str, Any]] = []
    for i in range(people):
        rows.append({"app": APNS_APP, "platform": "apns", "token": devkit.apns_token("ok", 5000 + i),
                     "user_id": f"p{i}"})  # fmt: skip
        if i % 2 == 0:
            rows.append({"app": FCM_APP, "platform": "fcm", "token": devkit.fcm_token("ok", 5000 + i),
                         "user_id": f"p{i}"})  # fmt: skip
    await devices.import_devices(conn, rows)
    await conn.execute(
        "INSERT INTO pushgres.app_groups (name, apps) VALUES ($1, $2)", GROUP, [APNS_APP, FCM_APP]
    )
    return [f"p{i}" for i in range(people)]


async def _slice(
    conn: asyncpg.Connection, users: list[str], group_id: int, number: int
) -> asyncpg.Record | None:
    """Slice ``number`` of a fan-out in slices, given from SQL."""
    return await conn.fetchrow(
        "SELECT * FROM pushgres.send_to_users(NULL, $1::text[], NULL, add_to_group => $2,"
        " slice => $3)",
        users,
        group_id,
        number,
    )


async def _rows_per_device(conn: asyncpg.Connection, group_id: int) -> dict[str, int]:
    records = await conn.fetch(
        "SELECT device_token, count(*) AS n FROM pushgres.queue WHERE group_id = $1 "
        "GROUP BY device_token",
        group_id,
    )
    return {r["device_token"]: r["n"] for r in records}


async def test_a_fanout_in_slices_on_two_connections_is_the_same_fanout(
    dsn: str, conn: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(fanout, "SLICE_USERS", 7)
    people = await _register_people(conn, 40)
    pool = await asyncpg.create_pool(dsn, min_size=2, max_size=2)
    try:
        sliced = await fanout.send_to_users(
            pool,
            GROUP,
            people + people[:5],
            MESSAGE,
            connections=2,  # 5 users given twice
        )
        whole = await fanout.send_to_users(conn, GROUP, people, MESSAGE)
    finally:
        await pool.close()
    for done in (sliced, whole):
        assert (done.users, done.users_without_device, done.notifications) == (40, 0, 60)
        assert not done.duplicate
        per_device = await _rows_per_device(conn, done.group_id)
        assert len(per_device) == 60 and set(per_device.values()) == {1}
    assert await conn.fetchval(
        "SELECT count(*) FROM pushgres.group_slices WHERE group_id = $1", sliced.group_id
    ) == 6  # fmt: skip
    outcome = await fanout.group_outcome(conn, sliced.group_id)
    assert outcome is not None and outcome.complete and outcome.notifications == 60


async def test_a_stopped_fanout_is_finished_by_calling_it_again(
    dsn: str, conn: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(fanout, "SLICE_USERS", 10)
    people = await _register_people(conn, 30)
    # A run that stopped after its second slice: the group open, slices 0 and 1 committed.
    group_id = await conn.fetchval(
        "SELECT group_id FROM pushgres.open_fanout($1, $2::jsonb, dedupe_key => 'spring')",
        GROUP,
        '{"body": "Spring sale"}',
    )
    for number in (0, 1):
        await _slice(conn, people[number * 10 : number * 10 + 10], group_id, number)
    stopped = await fanout.group_outcome(conn, group_id)
    assert stopped is not None and not stopped.complete and not stopped.done
    assert stopped.notifications == 30
    pool = await asyncpg.create_pool(dsn, min_size=2, max_size=2)
    try:
        finished = await fanout.send_to_users(
            pool, GROUP, people, {"body": "Spring sale"}, dedupe_key="spring", connections=2
        )
        again = await fanout.send_to_users(
            pool, GROUP, people, {"body": "Spring sale"}, dedupe_key="spring", connections=2
        )
    finally:
        await pool.close()
    assert finished.group_id == group_id and not finished.duplicate
    assert (finished.users, finished.notifications) == (30, 45)
    assert again.duplicate and again.group_id == group_id and again.notifications == 45
    per_device = await _rows_per_device(conn, group_id)
    assert len(per_device) == 45 and set(per_device.values()) == {1}
    # A slice given twice adds nothing; a complete group takes no more.
    with pytest.raises(asyncpg.InvalidParameterValueError, match="is complete"):
        await _slice(conn, people[:10], group_id, 0)
    reopened = await conn.fetchval(
        "SELECT group_id FROM pushgres.open_fanout($1, $2::jsonb)", GROUP, '{"body": "x"}'
    )
    first = await _slice(conn, people[:2], reopened, 0)
    twice = await _slice(conn, people[:2], reopened, 0)
    assert first is not None and twice is not None
    assert (first["duplicate"], first["notifications"]) == (False, 3)
    assert (twice["duplicate"], twice["notifications"]) == (True, 3)
    assert len(await _rows_per_device(conn, reopened)) == 3
    with pytest.raises(asyncpg.InvalidParameterValueError, match="differs"):
        await conn.fetch(
            'SELECT * FROM pushgres.send_to_users(NULL, $1::text[], \'{"body": "y"}\','
            " add_to_group => $2)",
            people[:2],
            reopened,
        )
    with pytest.raises(EnqueueError, match="needs a pool"):
        await fanout.send_to_users(conn, GROUP, people, {"body": "x"}, connections=2)


async def test_a_portable_message_to_a_token_from_python_and_sql(env: dict[str, Any]) -> None:
    """No registry, no fan-out: a portable message enqueued to tokens, rendered and sent."""
    sims, dsn = env["sims"], env["dsn"]
    ios, android = devkit.apns_token("ok", 700), devkit.fcm_token("ok", 700)
    message = {"title": "Hi", "data": {"n": 1}, "ttl": 120, "priority": "normal",
               "collapse_key": "hi"}  # fmt: skip
    conn = await asyncpg.connect(dsn)
    try:
        ids = await pushgres.enqueue(conn, [
            pushgres.Notification(app=APNS_APP, platform="apns", device_token=ios,
                                  message=message),
            {"app": FCM_APP, "platform": "fcm", "device_token": android, "message": message,
             "payload": {"android": {"notification": {"channel_id": "news"}}}},
        ])  # fmt: skip
        from_sql = await conn.fetchval(
            "INSERT INTO pushgres.queue (app, platform, device_token, payload, message)"
            " VALUES ($1, 'apns', $2, '{}', '{\"body\": \"from SQL\"}') RETURNING id",
            APNS_APP,
            devkit.apns_token("ok", 701),
        )
        unrenderable = await conn.fetchval(
            "INSERT INTO pushgres.queue (app, platform, device_token, payload, message)"
            " VALUES ($1, 'apns', $2, '{}', '{\"titel\": \"x\"}') RETURNING id",
            APNS_APP,
            devkit.apns_token("ok", 702),
        )
        rows = await conn.fetch(
            "SELECT message, priority, collapse_id, expires_at - enqueued_at AS ttl"
            " FROM pushgres.queue WHERE id = ANY($1::bigint[]) ORDER BY id",
            ids,
        )
        for row in rows:  # the delivery keys became the row's columns
            assert row["message"] == '{"data": {"n": 1}, "title": "Hi"}'
            assert (row["priority"], row["collapse_id"]) == (5, "hi")
            assert abs(row["ttl"].total_seconds() - 120) < 5
        with pytest.raises(EnqueueError, match=r"notification 0: message: unknown key 'titel'"):
            await pushgres.enqueue(conn, [pushgres.Notification(
                app=APNS_APP, platform="apns", device_token=ios, message={"titel": "x"})])  # fmt: skip
        async with running_daemon(settings_for(_group_config(env, "direct.toml"))):
            found = await wait_terminal(dsn, [*ids, from_sql, unrenderable])
    finally:
        await conn.close()
    assert [found[i].status for i in (*ids, from_sql)] == ["sent"] * 3
    bad = found[unrenderable]
    assert bad.status == "failed" and bad.reason is not None
    assert bad.reason.startswith("InvalidMessage: unknown key 'titel'")
    accepted = sims.accepted_counts()
    assert accepted["apns"].get(ios) == 1 and accepted["fcm"].get(android) == 1


async def test_a_fanout_is_refused_when_a_provider_of_its_target_could_not_render_it(
    conn: asyncpg.Connection,
) -> None:
    await _register_people(conn, 4)
    from_key = {"title": "Hi", "data": {"from": "shop"}}  # a reserved FCM data key
    with pytest.raises(EnqueueError, match=r"refused for fcm: message.data.from is a reserved"):
        await fanout.send_to_users(conn, GROUP, ["p0", "p1"], from_key)
    apns_only = await fanout.send_to_users(conn, APNS_APP, ["p0", "p1"], from_key)
    assert apns_only.notifications == 2  # APNs has no such rule: fine for the iOS app alone
    with pytest.raises(EnqueueError, match=r"refused for apns: the overrides must leave"):
        await fanout.send_to_users(
            conn, GROUP, ["p0"], {"title": "Hi"}, overrides={"apns": {"aps": None}}
        )
    assert await conn.fetchval("SELECT count(*) FROM pushgres.queue") == 2


async def test_closing_a_fanout_waits_for_its_slices_in_flight(
    dsn: str, conn: asyncpg.Connection
) -> None:
    people = await _register_people(conn, 10)
    group_id = await conn.fetchval(
        'SELECT group_id FROM pushgres.open_fanout($1, \'{"body": "x"}\')', GROUP
    )
    slicer, closer = await asyncpg.connect(dsn), await asyncpg.connect(dsn)
    try:
        adding = slicer.transaction()
        await adding.start()
        await _slice(slicer, people, group_id, 0)  # not committed yet
        closing = asyncio.create_task(
            closer.fetchrow("SELECT * FROM pushgres.close_fanout($1)", group_id)
        )
        await asyncio.sleep(0.3)
        assert not closing.done()  # waits for the slice
        await adding.commit()
        totals = await asyncio.wait_for(closing, 10)
    finally:
        await slicer.close()
        await closer.close()
    assert totals is not None and (totals["users"], totals["notifications"]) == (10, 15)
    with pytest.raises(asyncpg.InvalidParameterValueError, match="is complete"):
        await _slice(conn, people, group_id, 1)


async def test_a_slice_given_again_must_hold_the_same_users(conn: asyncpg.Connection) -> None:
    people = await _register_people(conn, 4)
    group_id = await conn.fetchval(
        'SELECT group_id FROM pushgres.open_fanout($1, \'{"body": "x"}\')', GROUP
    )
    await _slice(conn, people[:2], group_id, 0)
    with pytest.raises(asyncpg.InvalidParameterValueError, match="given before with other users"):
        await _slice(conn, people[1:3], group_id, 0)


async def test_groups_of_apps_follow_the_config(conn: asyncpg.Connection) -> None:
    from pushgres.db import store

    async def groups() -> dict[str, list[str]]:
        rows = await conn.fetch("SELECT name, apps FROM pushgres.app_groups ORDER BY name")
        return {r["name"]: list(r["apps"]) for r in rows}

    await store.sync_app_groups(conn, {"shop": ["ios", "android"]}, ["ios", "android"])
    await conn.execute("INSERT INTO pushgres.app_groups (name, apps) VALUES ('news', '{web}')")
    assert await groups() == {"news": ["web"], "shop": ["ios", "android"]}
    await store.sync_app_groups(conn, {"store": ["ios"]}, ["ios", "android"])
    # shop (all its apps are this config's) is gone; news (another config's app) stays.
    assert await groups() == {"news": ["web"], "store": ["ios"]}
    await store.sync_app_groups(conn, {}, ["ios", "android"])
    assert await groups() == {"news": ["web"]}


MESSAGES: list[Any] = [
    {"title": "a"},
    {"body": "b", "data": {"k": [1, 2]}, "badge": 0, "sound": "default"},
    {"subtitle": "s", "thread": "t", "link": "app://x", "image": "https://e.com/i.png"},
    {"data": {}},
    {"title": "a", "ttl": 1, "priority": "normal", "collapse_key": "c"},
    {},
    {"ttl": 60},
    {"titel": "a"},
    {"title": 1},
    {"data": []},
    {"badge": 1.5},
    {"badge": -1},
    {"badge": True},
    {"ttl": 2419201, "title": "a"},
    {"priority": "urgent", "title": "a"},
    {"collapse_key": "", "title": "a"},
    {"collapse_key": "x" * 65, "title": "a"},
    {"image": "http://e.com/i.png"},
    {"title": "a", "image": "https://"},
    {"title": "a", "image": "https://a b/i.png"},
    {"title": "a", "image": "https://user@cdn.e.com:8443/i.png?x=1"},
    {"image": "https://e.com/i.png"},
    {"sound": ""},
    {"link": ""},
    {"thread": "", "title": "a"},
    {"title": ""},
    {"badge": 2**31 - 1},
    {"badge": 2**31},
    {"badge": 1.0},
    {"ttl": 0, "title": "a"},
    {"ttl": 1, "title": "a"},
    {"ttl": 60.0, "title": "a"},
    [],
    "text",
]


async def test_python_and_sql_judge_messages_alike(conn: asyncpg.Connection) -> None:
    """The one rule set, twice (enqueue in Python, fan-out in SQL): the same verdicts."""
    import json

    for message in MESSAGES:
        in_sql = await conn.fetchval(
            "SELECT pushgres.message_problem($1::jsonb)", json.dumps(message)
        )
        in_python = portable.check(message)
        assert (in_sql is None) == (in_python is None), (message, in_sql, in_python)


async def test_uninstall_probes_keep_their_pace_and_period(
    conn: asyncpg.Connection, dsn: str
) -> None:
    tokens = [devkit.apns_token("ok", 400 + i) for i in range(5)]
    for token in tokens:
        await devices.register(conn, APNS_APP, "apns", token, user_id="ida")
    await conn.execute(
        "UPDATE pushgres.devices SET last_seen_at = now() - interval '40 days' WHERE token <> $1",
        tokens[4],
    )
    store = await Store.open(
        dsn, max_size=2, idle_in_transaction_timeout_s=30, statement_timeout_s=30
    )
    try:
        assert await store.probe_devices(APNS_APP, 30, 7, 3, PROBE_MESSAGE) == 3
        assert await store.probe_devices(APNS_APP, 30, 7, 3, PROBE_MESSAGE) == 0  # the minute's
        await conn.execute("UPDATE pushgres.devices SET probed_at = probed_at - interval '2 min'")
        assert await store.probe_devices(APNS_APP, 30, 7, 3, PROBE_MESSAGE) == 1  # the 4th quiet
        await conn.execute("UPDATE pushgres.devices SET probed_at = probed_at - interval '2 min'")
        assert await store.probe_devices(APNS_APP, 30, 7, 3, PROBE_MESSAGE) == 0  # once a period
        await conn.execute("UPDATE pushgres.devices SET probed_at = probed_at - interval '8 days'")
        assert await store.probe_devices(APNS_APP, 30, 7, 10, PROBE_MESSAGE) == 4
    finally:
        await store.close()
    rows = await conn.fetch("SELECT device_token, probe, priority, message FROM pushgres.queue")
    assert len(rows) == 8 and all(r["probe"] and r["priority"] == 5 for r in rows)
    assert tokens[4] not in {r["device_token"] for r in rows}  # seen lately: no probe


async def test_uninstall_probes_end_to_end(env: dict[str, Any]) -> None:
    sims, dsn = env["sims"], env["dsn"]
    sims.patch({"apns": {"unregistered_age_ms": 0}})
    gone = devkit.apns_token("Unregistered", 500)
    there = devkit.apns_token("ok", 501)
    recent = devkit.apns_token("ok", 502)
    android_gone = devkit.fcm_token("UNREGISTERED", 503)
    conn = await asyncpg.connect(dsn)
    try:
        for token in (gone, there, recent):
            await devices.register(conn, APNS_APP, "apns", token, user_id="jay")
        await devices.register(conn, FCM_APP, "fcm", android_gone, user_id="jay")
        await conn.execute(
            "UPDATE pushgres.devices SET last_seen_at = now() - interval '45 days'"
            " WHERE token <> $1",
            recent,
        )
        probe = "uninstall_probe_after_days = 30\nuninstall_probe_per_minute = 50"
        config = _group_config(env, "probes.toml", apns=probe, fcm=probe)
        async with running_daemon(settings_for(config)) as daemon:
            deadline = time.monotonic() + 30
            while True:
                done = await conn.fetch(
                    "SELECT device_token, status, reason FROM pushgres.results WHERE probe"
                )
                if len(done) == 3:
                    break
                assert time.monotonic() < deadline, done
                await asyncio.sleep(0.1)
            assert daemon.admin_url is not None
            async with (
                aiohttp.ClientSession() as session,
                session.get(f"{daemon.admin_url}/metrics") as resp,
            ):
                metrics = await resp.text()
        states = {
            r["token"]: (r["state"], r["state_reason"])
            for r in await conn.fetch("SELECT token, state, state_reason FROM pushgres.devices")
        }
        assert states[gone] == ("uninstalled", "Unregistered")
        assert states[android_gone] == ("uninstalled", "UNREGISTERED")
        assert states[there][0] == "active" and states[recent][0] == "active"
        assert {r["device_token"]: r["status"] for r in done} == {
            gone: "token_invalid",
            there: "sent",
            android_gone: "token_invalid",
        }
        events = await devices.history(conn, APNS_APP, gone)
        assert events[-1].event == "uninstalled"
        assert (
            'pushgres_uninstall_probes_total{app="ios",platform="apns",status="token_invalid"} 1.0'
            in metrics
        )
        assert 'pushgres_notifications_total{app="ios"' not in metrics  # probes only: none
        assert sims.accepted_counts()["apns"] == {there: 1}
        assert all(s in TERMINAL for s in {r["status"] for r in done})
    finally:
        await conn.close()
