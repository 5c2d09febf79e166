"""The device registry against real PostgreSQL, and the daemon keeping it true.

Each operation and its edge cases: registration and refresh, a token moved between users,
identify and logout, rotation (by installation and explicit), bulk unregister, Apple's rule
for re-registration after a 410, bad input named; then with the daemon and the simulators:
a dead-token answer marks the device invalid in the transaction of its result, later sends
to it are not made, and a re-registration after the provider's timestamp sends again.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from typing import Any

import aiohttp
import asyncpg
import pytest

from pushgres import devices
from pushgres.exceptions import DeviceError, SchemaError
from pushgres.simulator import devkit

from .harness import (
    APNS_APP,
    FCM_APP,
    apns,
    enqueue,
    running_daemon,
    settings_for,
    wait_terminal,
    write_config,
)

APP = "ios"
T1 = devkit.apns_token("ok", 1)
T2 = devkit.apns_token("ok", 2)
T3 = devkit.apns_token("ok", 3)


async def _events(conn: asyncpg.Connection, token: str) -> list[str]:
    return [e.event for e in await devices.history(conn, APP, token)]


async def test_register_refresh_and_move_between_users(conn: asyncpg.Connection) -> None:
    first = await devices.register(
        conn, APP, "apns", T1, user_id="alice", timezone="Europe/Paris", locale="fr-FR",
        environment="production", app_version="3.2", attributes={"plan": "pro"},
    )  # fmt: skip
    assert first == devices.Registered("active", "registered")
    before = await devices.device(conn, APP, T1)
    assert before is not None and before.user_id == "alice" and before.timezone == "Europe/Paris"
    again = await devices.register(conn, APP, "apns", T1, attributes={"beta": True})
    assert again == devices.Registered("active", "seen")
    after = await devices.device(conn, APP, T1)
    assert after is not None
    assert after.last_seen_at > before.last_seen_at
    assert after.user_id == "alice"  # a registration without a user keeps the device's
    assert after.attributes == {"plan": "pro", "beta": True}
    # The same token registered for another user moves: it is nobody else's any more.
    moved = await devices.register(conn, APP, "apns", T1, user_id="bob")
    assert moved.event == "moved"
    assert await devices.user_devices(conn, APP, "alice") == []
    assert [d.token for d in await devices.user_devices(conn, APP, "bob")] == [T1]
    history = await devices.history(conn, APP, T1)
    assert [e.event for e in history] == ["registered", "moved"]
    assert history[1].user_id == "bob" and history[1].detail == {"from": "alice"}


async def test_identify_and_logout(conn: asyncpg.Connection) -> None:
    await devices.register(conn, APP, "apns", T1)  # anonymous
    assert await devices.identify(conn, APP, T1, "carol") is True
    assert [d.token for d in await devices.user_devices(conn, APP, "carol")] == [T1]
    assert await devices.identify(conn, APP, T1, "dave") is True  # moved
    assert await devices.logout(conn, APP, T1) is True
    assert await devices.user_devices(conn, APP, "dave") == []
    anonymous = await devices.device(conn, APP, T1)
    assert anonymous is not None and anonymous.user_id is None and anonymous.state == "active"
    assert await _events(conn, T1) == ["registered", "identified", "moved", "logged_out"]
    assert await devices.identify(conn, APP, T3, "erin") is False  # unknown token
    assert await devices.logout(conn, APP, T3) is False


async def test_rotation_by_installation_and_explicit(conn: asyncpg.Connection) -> None:
    await devices.register(conn, APP, "apns", T1, user_id="frank", installation_id="inst-1")
    rotated = await devices.register(conn, APP, "apns", T2, installation_id="inst-1")
    assert rotated == devices.Registered("active", "rotated")
    old, new = await devices.device(conn, APP, T1), await devices.device(conn, APP, T2)
    assert old is not None and old.state == "unregistered" and old.state_reason == "rotated"
    assert old.user_id is None
    assert new is not None and new.user_id == "frank"
    assert [d.token for d in await devices.user_devices(conn, APP, "frank")] == [T2]
    history = await devices.history(conn, APP, T1)
    assert history[-1].event == "rotated" and history[-1].detail == {"replaced_by": T2}
    # Explicit: the old token is retired, the new one registered with its user.
    assert await devices.rotate(conn, APP, T2, T3) == "registered"
    third = await devices.device(conn, APP, T3)
    assert third is not None and third.user_id == "frank" and third.installation_id == "inst-1"
    assert await devices.rotate(conn, APP, devkit.apns_token("ok", 99), T1) is None


async def test_bulk_unregister_of_100000_tokens(conn: asyncpg.Connection) -> None:
    await conn.execute(
        "INSERT INTO pushgres.devices (app, platform, token, user_id)"
        " SELECT 'bulk', 'fcm', 'tok-' || i, 'u' || (i % 1000) FROM generate_series(1, 100000) i"
    )
    tokens = [f"tok-{i}" for i in range(1, 100_001)] + ["tok-unknown", "tok-1"]
    assert await devices.unregister_many(conn, "bulk", tokens) == 100_000
    states = await conn.fetch("SELECT state, count(*) FROM pushgres.devices GROUP BY state")
    assert {r["state"]: r["count"] for r in states} == {"unregistered": 100_000}
    assert await conn.fetchval("SELECT count(*) FROM pushgres.device_events") == 100_000
    assert await devices.unregister_many(conn, "bulk", ["tok-5"]) == 0  # already
    assert await devices.unregister(conn, "bulk", "tok-unknown") is False
    # Seen again: a registration brings an unregistered device back.
    back = await devices.register(conn, "bulk", "fcm", "tok-7")
    assert back == devices.Registered("active", "reactivated")


async def test_apple_rule_for_registration_around_the_invalidation(
    conn: asyncpg.Connection,
) -> None:
    await devices.register(conn, APP, "apns", T1, user_id="gail")
    # A provider's 410 with its timestamp, as the daemon writes it.
    invalidated = dt.datetime.now(dt.UTC)
    await conn.execute(
        "UPDATE pushgres.devices SET state = 'invalid', state_reason = 'Unregistered',"
        " invalidated_at = $1::timestamptz, last_seen_at = $1::timestamptz - interval '1 minute'"
        " WHERE token = $2",
        invalidated,
        T1,
    )
    await conn.execute(
        "INSERT INTO pushgres.invalid_tokens (app, device_token, reason) VALUES ($1, $2, 'x')",
        APP,
        T1,
    )
    stale = await devices.register(
        conn, APP, "apns", T1, registered_at=invalidated - dt.timedelta(hours=1)
    )
    assert stale == devices.Registered("invalid", "still_invalid")
    fresh = await devices.register(conn, APP, "apns", T1)
    assert fresh == devices.Registered("active", "reactivated")
    assert await conn.fetchval("SELECT count(*) FROM pushgres.invalid_tokens") == 0
    again = await devices.device(conn, APP, T1)
    assert again is not None and again.invalidated_at is None and again.user_id == "gail"


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (dict(platform="apns", token="zz-not-hex"), "an APNs device token is hexadecimal"),
        (dict(platform="webpush", token=T1), "platform must be apns or fcm"),
        (dict(platform="apns", token=T1, timezone="Mars/Olympus"), "is not an IANA time zone"),
        (dict(platform="apns", token=T1, environment="staging"), "environment must be"),
        (dict(platform="apns", token=T1, app="bad app"), "is not an app name"),
    ],
)
async def test_bad_input_is_named(
    conn: asyncpg.Connection, call: dict[str, Any], message: str
) -> None:
    args = {"app": APP, **call}
    with pytest.raises(DeviceError, match=message) as info:
        await devices.register(
            conn, args.pop("app"), args.pop("platform"), args.pop("token"), **args
        )
    assert T1 not in str(info.value)  # tokens are shown shortened


async def test_platform_of_a_known_token_cannot_change(conn: asyncpg.Connection) -> None:
    await devices.register(conn, "multi", "fcm", "abc123")
    with pytest.raises(DeviceError, match="registered for fcm already"):
        await devices.register(conn, "multi", "apns", "abc123")


async def test_a_database_without_the_registry(empty_dsn: str) -> None:
    conn = await asyncpg.connect(empty_dsn)
    try:
        with pytest.raises(SchemaError, match="pushgres migrate"):
            await devices.register(conn, APP, "apns", T1)
    finally:
        await conn.close()


async def test_the_daemon_keeps_the_registry_true(env: dict[str, Any]) -> None:
    sims, dsn = env["sims"], env["dsn"]
    # The simulator's 410 timestamp: now (the device was registered before it).
    sims.patch({"apns": {"unregistered_age_ms": 0}})
    dead = devkit.apns_token("Unregistered", 1)
    alive = devkit.apns_token("ok", 10)
    unregistered = devkit.apns_token("ok", 11)
    conn = await asyncpg.connect(dsn)
    try:
        for token, user in ((dead, "hal"), (alive, "hal"), (unregistered, "ivy")):
            await devices.register(conn, APNS_APP, "apns", token, user_id=user)
        await conn.execute("UPDATE pushgres.devices SET last_seen_at = now() - interval '1 minute'")
        await devices.unregister(conn, APNS_APP, unregistered)
        async with running_daemon(settings_for(env["config"])):
            first = await enqueue(dsn, [apns(dead), apns(alive), apns(unregistered)])
            found = await wait_terminal(dsn, first)
            assert [found[i].status for i in first] == ["token_invalid", "sent", "token_invalid"]
            assert found[first[2]].reason == "TokenInvalidated"  # not sent at all
            marked = await devices.device(conn, APNS_APP, dead)
            assert marked is not None and marked.state == "invalid"
            assert marked.state_reason == "Unregistered" and marked.invalidated_at is not None
            assert (await _events_of(conn, dead))[-1] == "invalidated"
            # Later sends to the dead device are not made.
            second = await enqueue(dsn, [apns(dead)])
            found = await wait_terminal(dsn, second)
            assert found[second[0]].reason == "TokenInvalidated"
            # The app registers the token again after the provider's timestamp: sent again.
            again = await devices.register(conn, APNS_APP, "apns", dead)
            assert again.event == "reactivated"
            sims.register_tokens({"apns": {dead: "ok"}})  # the new install answers
            third = await enqueue(dsn, [apns(dead)])
            found = await wait_terminal(dsn, third)
            assert found[third[0]].status == "sent", found[third[0]]
        accepted = sims.accepted_counts()["apns"]
        assert accepted.get(unregistered, 0) == 0
        assert accepted[alive] == 1 and accepted[dead] == 1
    finally:
        await conn.close()


async def _events_of(conn: asyncpg.Connection, token: str) -> list[str]:
    return [e.event for e in await devices.history(conn, APNS_APP, token)]


async def test_quiet_devices_become_stale_and_come_back(env: dict[str, Any]) -> None:
    dsn, tmp = env["dsn"], env["tmp"]
    # FCM keeps a token 270 days at most: a longer stale_after_days is capped to it.
    config = write_config(
        tmp / "stale.toml", dsn=dsn, setup=env["setup"], sims=env["sims"],
        fcm="stale_after_days = 400",
    )  # fmt: skip
    config.write_text(config.read_text() + '\n[admin]\nlisten = "127.0.0.1:0"\n')
    quiet, recent = devkit.apns_token("ok", 20), devkit.apns_token("ok", 21)
    old_android, young_android = "fcm-old", "fcm-young"
    conn = await asyncpg.connect(dsn)
    try:
        for token in (quiet, recent):
            await devices.register(conn, APNS_APP, "apns", token, user_id="jo")
        for token in (old_android, young_android):
            await devices.register(conn, FCM_APP, "fcm", token, user_id="jo")
        # The clock of the registry: last seen 61 days (ios) and 300 / 200 days (android) ago.
        for app, token, days in (
            (APNS_APP, quiet, 61), (APNS_APP, recent, 59),
            (FCM_APP, old_android, 300), (FCM_APP, young_android, 200),
        ):  # fmt: skip
            await conn.execute(
                "UPDATE pushgres.devices SET last_seen_at = now() - make_interval(days => $3)"
                " WHERE app = $1 AND token = $2",
                app,
                token,
                days,
            )
        async with running_daemon(settings_for(config)) as daemon:  # maintenance runs at start
            deadline = time.monotonic() + 10
            while daemon.admin_url is None:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.02)
            async with (
                aiohttp.ClientSession() as session,
                session.get(f"{daemon.admin_url}/metrics") as resp,
            ):
                metrics = await resp.text()
        states = {
            (r["app"], r["token"]): r["state"]
            for r in await conn.fetch("SELECT app, token, state FROM pushgres.devices")
        }
        assert states == {
            (APNS_APP, quiet): "stale",
            (APNS_APP, recent): "active",
            (FCM_APP, old_android): "stale",
            (FCM_APP, young_android): "active",
        }
        assert 'pushgres_devices{app="ios",state="stale"} 1.0' in metrics
        assert (await _events_of(conn, quiet))[-1] == "stale"
        stale = await devices.device(conn, APNS_APP, quiet)
        assert stale is not None and stale.state_reason == "not seen for 60 days"
        back = await devices.register(conn, APNS_APP, "apns", quiet)
        assert back == devices.Registered("active", "reactivated")
    finally:
        await conn.close()


async def test_long_retired_devices_are_purged(env: dict[str, Any]) -> None:
    dsn = env["dsn"]
    config = write_config(
        env["tmp"] / "purge.toml", dsn=dsn, setup=env["setup"], sims=env["sims"],
        daemon="device_retention_days = 30\nresults_retention_days = 7",
    )  # fmt: skip
    old, recent, active = (devkit.apns_token("ok", 30 + i) for i in range(3))
    conn = await asyncpg.connect(dsn)
    try:
        for token in (old, recent, active):
            await devices.register(conn, APNS_APP, "apns", token)
        await devices.unregister_many(conn, APNS_APP, [old, recent])
        await conn.execute(
            "UPDATE pushgres.devices SET state_changed_at = now() - interval '31 days'"
            " WHERE token = $1",
            old,
        )
        await conn.execute(
            "INSERT INTO pushgres.invalid_tokens (app, device_token, reason, invalidated_at)"
            " VALUES ('ios', 'aa', 'Unregistered', now() - interval '31 days'),"
            " ('ios', 'bb', 'Unregistered', now())"
        )
        # Fan-outs: one older than the results' retention (7 days here), one recent.
        groups = [
            await conn.fetchval(
                "SELECT group_id FROM pushgres.send_to_users($1, ARRAY['nobody'],"
                ' \'{"body": "x"}\')',
                APNS_APP,
            )
            for _ in range(2)
        ]
        await conn.execute(
            "UPDATE pushgres.groups SET created_at = now() - interval '8 days' WHERE id = $1",
            groups[0],
        )
        async with running_daemon(settings_for(config)):  # maintenance runs at start
            pass
        kept_groups = [r["id"] for r in await conn.fetch("SELECT id FROM pushgres.groups")]
        assert kept_groups == [groups[1]]
        left = {r["token"] for r in await conn.fetch("SELECT token FROM pushgres.devices")}
        assert left == {recent, active}
        assert await devices.history(conn, APNS_APP, old) == []
        kept = [
            r["device_token"] for r in await conn.fetch("SELECT * FROM pushgres.invalid_tokens")
        ]
        assert kept == ["bb"]
    finally:
        await conn.close()
