"""The daemon end to end: real PostgreSQL, the simulators over HTTP/2 + TLS, every outcome."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

import asyncpg
import pytest

from pushgres.models import Action
from pushgres.providers.apns.reasons import APNS_REASONS
from pushgres.simulator import devkit

from .harness import (
    apns,
    assert_each_row_queued_or_done,
    enqueue,
    fcm,
    running_daemon,
    settings_for,
    wait_terminal,
    write_config,
)

# HTTP status APNs uses for each reason (Apple, "Handling notification responses from APNs").
APNS_STATUS = {
    **dict.fromkeys(
        [
            "BadCollapseId",
            "BadDeviceToken",
            "BadExpirationDate",
            "BadMessageId",
            "BadPriority",
            "BadTopic",
            "DeviceTokenNotForTopic",
            "DuplicateHeaders",
            "IdleTimeout",
            "InvalidPushType",
            "MissingDeviceToken",
            "MissingTopic",
            "PayloadEmpty",
            "TopicDisallowed",
        ],
        400,
    ),
    **dict.fromkeys(
        [
            "BadCertificate",
            "BadCertificateEnvironment",
            "ExpiredProviderToken",
            "Forbidden",
            "InvalidProviderToken",
            "MissingProviderToken",
            "UnrelatedKeyIdInToken",
            "BadEnvironmentKeyIdInToken",
            "BadEnvironmentKeyInToken",
        ],
        403,
    ),
    "BadPath": 404,
    "MethodNotAllowed": 405,
    "ExpiredToken": 410,
    "Unregistered": 410,
    "PayloadTooLarge": 413,
    "TooManyProviderTokenUpdates": 429,
    "TooManyRequests": 429,
    "InternalServerError": 500,
    "ServiceUnavailable": 503,
    "Shutdown": 503,
}
EXPECTED_STATUS = {
    Action.DEAD: "token_invalid",
    Action.FIX: "failed",
    Action.CFG: "failed",  # max_attempts = 1
    Action.WAIT: "failed",  # max_attempts = 1
    Action.AUTH: "sent",  # one inline retry on a fresh token/connection succeeds
    Action.CONN: "sent",  # resent at once on another connection
}


async def test_every_apns_reason_maps_to_its_documented_outcome(env: dict[str, Any]) -> None:
    sims = env["sims"]
    tokens = {reason: devkit.apns_token("ok", 1000 + i) for i, reason in enumerate(APNS_REASONS)}
    sims.apns.script({tok: [f"{APNS_STATUS[r]}:{r}"] for r, tok in tokens.items()})
    ids = await enqueue(env["dsn"], [apns(tok, max_attempts=1) for tok in tokens.values()])
    async with running_daemon(settings_for(env["config"])):
        found = await wait_terminal(env["dsn"], ids)
    for (reason, _token), nid in zip(tokens.items(), ids, strict=True):
        expected = EXPECTED_STATUS[APNS_REASONS[reason]]
        assert found[nid].status == expected, (reason, found[nid])
        if expected != "sent":
            # The reason code, and for BadDeviceToken which environment it was not for.
            assert (found[nid].reason or "").split(":")[0] == reason
            assert found[nid].provider_status == APNS_STATUS[reason]


FCM_CASES = [
    # kind, expected status, expected reason
    ("ok", "sent", None),
    ("UNREGISTERED", "token_invalid", "UNREGISTERED"),
    ("SENDER_ID_MISMATCH", "token_invalid", "SENDER_ID_MISMATCH"),
    ("INVALID_ARGUMENT", "token_invalid", "INVALID_ARGUMENT"),
    ("apns_unregistered", "token_invalid", "INVALID_ARGUMENT/Unregistered"),
    ("THIRD_PARTY_AUTH_ERROR", "failed", "THIRD_PARTY_AUTH_ERROR"),
    ("QUOTA_EXCEEDED", "failed", "QUOTA_EXCEEDED"),
    ("UNAVAILABLE", "failed", "UNAVAILABLE"),
    ("INTERNAL", "failed", "INTERNAL"),
]


async def test_every_fcm_error_maps_to_its_documented_outcome(env: dict[str, Any]) -> None:
    tokens = [devkit.fcm_token(kind, 7) for kind, _, _ in FCM_CASES]
    ids = await enqueue(env["dsn"], [fcm(tok, max_attempts=1) for tok in tokens])
    async with running_daemon(settings_for(env["config"])):
        found = await wait_terminal(env["dsn"], ids)
    for (kind, status, reason), nid in zip(FCM_CASES, ids, strict=True):
        assert found[nid].status == status, (kind, found[nid])
        if reason is not None:
            assert found[nid].reason == reason, (kind, found[nid])
        else:
            assert found[nid].provider_id and found[nid].provider_id.startswith("projects/")


async def test_transient_errors_retry_and_honour_retry_after(env: dict[str, Any]) -> None:
    sims = env["sims"]
    flaky = devkit.apns_token("flaky", 1)  # 503 twice, then 200
    quota = devkit.fcm_token("ok", 99)
    sims.fcm.script({quota: ["429:QUOTA_EXCEEDED", "200"]})
    ids = await enqueue(env["dsn"], [apns(flaky), fcm(quota)])
    started = dt.datetime.now(dt.UTC)
    async with running_daemon(settings_for(env["config"])):
        found = await wait_terminal(env["dsn"], ids)
    assert found[ids[0]].status == "sent" and found[ids[0]].attempts == 3
    assert found[ids[1]].status == "sent" and found[ids[1]].attempts == 2
    # The simulator's Retry-After (at least 1 s) was waited for before the second attempt.
    assert found[ids[1]].finished_at is not None
    assert (found[ids[1]].finished_at - started).total_seconds() >= 1.0
    counts = sims.accepted_counts()
    assert counts["apns"].get(flaky) == 1 and counts["fcm"].get(quota) == 1


async def test_dead_tokens_are_remembered_and_skipped(env: dict[str, Any]) -> None:
    sims = env["sims"]
    dead = devkit.apns_token("Unregistered", 5)
    first = await enqueue(env["dsn"], [apns(dead)])
    async with running_daemon(settings_for(env["config"])):
        found = await wait_terminal(env["dsn"], first)
        assert found[first[0]].status == "token_invalid"
        requests_before = sims.apns.metrics()["requests"]
        again = await enqueue(env["dsn"], [apns(dead), apns(devkit.apns_token("ok", 5))])
        found = await wait_terminal(env["dsn"], again)
    assert found[again[0]].status == "token_invalid"
    assert found[again[0]].reason == "TokenInvalidated"
    assert found[again[1]].status == "sent"
    assert sims.apns.metrics()["requests"] == requests_before + 1  # only the live token
    conn = await asyncpg.connect(env["dsn"])
    try:
        row = await conn.fetchrow("SELECT * FROM pushgres.invalid_tokens")
        assert row["device_token"] == dead and row["reason"] == "Unregistered"
        assert row["provider_timestamp"] is not None
    finally:
        await conn.close()


async def test_bad_input_fails_with_a_reason_and_the_daemon_keeps_going(
    env: dict[str, Any],
) -> None:
    ok = devkit.apns_token("ok", 50)
    items = [
        apns(ok, payload={"aps": {"alert": "x" * 5000}}),  # too large
        fcm(devkit.fcm_token("ok", 51), payload={"data": {"n": 1}}),  # data values are strings
        {**apns(devkit.apns_token("ok", 52)), "app": "nobody"},  # unknown app
        apns(
            devkit.apns_token("ok", 53),
            expires_at=dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1),
        ),
        apns(devkit.apns_token("ok", 54)),
    ]
    ids = await enqueue(env["dsn"], items)
    async with running_daemon(settings_for(env["config"])):
        found = await wait_terminal(env["dsn"], ids)
    assert found[ids[0]].status == "failed" and found[ids[0]].reason is not None
    assert found[ids[0]].reason.startswith("PayloadTooLarge: payload is 50")
    assert found[ids[1]].status == "failed" and "message.data.n must be a string" in (
        found[ids[1]].reason or ""
    )
    assert found[ids[2]].status == "failed" and "UnknownApp" in (found[ids[2]].reason or "")
    assert found[ids[3]].status == "expired"
    assert found[ids[4]].status == "sent"


async def test_goaway_and_connection_resets_lose_nothing(env: dict[str, Any]) -> None:
    sims = env["sims"]
    sims.apns.patch({"goaway_after_streams": 150, "reset_connection": {"after_streams": 230}})
    sims.fcm.patch({"goaway_after_streams": 120})
    tokens_a = [devkit.apns_token("ok", 2000 + i) for i in range(600)]
    tokens_f = [devkit.fcm_token("ok", 2000 + i) for i in range(400)]
    ids = await enqueue(env["dsn"], [apns(t) for t in tokens_a] + [fcm(t) for t in tokens_f])
    async with running_daemon(settings_for(env["config"])):
        found = await wait_terminal(env["dsn"], ids, timeout_s=90)
    assert all(o.status == "sent" for o in found.values()), [
        o for o in found.values() if o.status != "sent"
    ][:5]
    counts = sims.accepted_counts()
    assert all(counts["apns"].get(t, 0) >= 1 for t in tokens_a)
    assert all(counts["fcm"].get(t, 0) >= 1 for t in tokens_f)


async def test_sigterm_drains_in_flight_and_leaves_the_rest_queued(env: dict[str, Any]) -> None:
    sims = env["sims"]
    sims.apns.patch({"latency": {"dist": "fixed", "ms": 300}})
    tokens = [devkit.apns_token("ok", 3000 + i) for i in range(3000)]
    ids = await enqueue(env["dsn"], [apns(t) for t in tokens])
    settings = settings_for(env["config"])
    async with running_daemon(settings) as daemon:
        while daemon.stats.claimed == 0:
            await asyncio.sleep(0.02)
    # Stopped: every claimed row got its outcome written; nothing is half-done.
    conn = await asyncpg.connect(env["dsn"])
    try:
        queued = await conn.fetchval("SELECT count(*) FROM pushgres.queue")
        done = await conn.fetchval("SELECT count(*) FROM pushgres.results WHERE status = 'sent'")
    finally:
        await conn.close()
    assert done > 0 and queued > 0 and done + queued == len(ids)
    accepted = sum(sims.accepted_counts()["apns"].values())
    assert accepted == done


@pytest.mark.parametrize("auth", ["p12", "pem"])
async def test_certificate_auth(env: dict[str, Any], auth: str) -> None:
    config = write_config(
        env["tmp"] / f"cert-{auth}.toml",
        dsn=env["dsn"],
        setup=env["setup"],
        sims=env["sims"],
        apns_auth=auth,
    )
    tokens = [devkit.apns_token("ok", 4000 + i) for i in range(20)]
    ids = await enqueue(env["dsn"], [apns(t) for t in tokens])
    async with running_daemon(settings_for(config)):
        found = await wait_terminal(env["dsn"], ids)
    assert all(o.status == "sent" for o in found.values())
    assert env["sims"].apns.counters.get("token_changes", 0) == 0
    assert sorted(env["sims"].accepted_counts()["apns"]) == sorted(tokens)


async def test_notify_wakes_an_idle_daemon_and_streams_stay_within_limits(
    env: dict[str, Any],
) -> None:
    config = write_config(
        env["tmp"] / "limits.toml",
        dsn=env["dsn"],
        setup=env["setup"],
        sims=env["sims"],
        daemon="poll_interval_s = 30",
        apns="max_streams_per_connection = 40",
    )
    sims = env["sims"]
    sims.apns.patch({"latency": {"dist": "fixed", "ms": 30}})
    async with running_daemon(settings_for(config)):
        await asyncio.sleep(0.5)  # idle: the queue is empty, the next poll is 30 s away
        tokens = [devkit.apns_token("ok", 5000 + i) for i in range(400)]
        ids = await enqueue(env["dsn"], [apns(t) for t in tokens])
        found = await wait_terminal(env["dsn"], ids, timeout_s=20)  # woken by NOTIFY
        state = sims.state()["apns"]["connections"]
    assert all(o.status == "sent" for o in found.values())
    assert sims.apns.counters.get("limit_violations", 0) == 0
    assert 1 < max(c["max_concurrent_seen"] for c in state) <= 40


async def test_revoked_oauth_tokens_are_refreshed_once(env: dict[str, Any]) -> None:
    sims = env["sims"]
    first = [devkit.fcm_token("ok", 6000 + i) for i in range(50)]
    second = [devkit.fcm_token("ok", 6100 + i) for i in range(50)]
    async with running_daemon(settings_for(env["config"])):
        ids = await enqueue(env["dsn"], [fcm(t) for t in first])
        await wait_terminal(env["dsn"], ids)
        assert sims.oauth.issued == 1
        sims.oauth.revoke_all()  # every access token now answers 401
        ids2 = await enqueue(env["dsn"], [fcm(t) for t in second])
        found = await wait_terminal(env["dsn"], ids2)
    assert all(o.status == "sent" and o.attempts == 1 for o in found.values())
    assert sims.oauth.issued == 2  # one refresh shared by all in-flight sends, no storm


async def test_expired_provider_token_gets_a_new_connection(env: dict[str, Any]) -> None:
    sims = env["sims"]
    ok = [devkit.apns_token("ok", 7000 + i) for i in range(3)]
    sims.apns.script({ok[1]: ["403:ExpiredProviderToken"]})
    config = write_config(
        env["tmp"] / "one.toml",
        dsn=env["dsn"],
        setup=env["setup"],
        sims=sims,
        apns="max_connections = 1",
    )
    async with running_daemon(settings_for(config)):
        ids = await enqueue(env["dsn"], [apns(ok[0])])
        await wait_terminal(env["dsn"], ids)
        ids = await enqueue(env["dsn"], [apns(t) for t in ok[1:]])
        found = await wait_terminal(env["dsn"], ids)
    assert all(o.status == "sent" for o in found.values())
    # The connection that answered ExpiredProviderToken was retired and replaced.
    assert sims.apns.counters["connections_opened"] == 2


@pytest.mark.parametrize("keyed", [False, True], ids=["plain", "dedupe-keys"])
async def test_sends_past_the_shutdown_deadline_go_back_to_the_queue(
    env: dict[str, Any], keyed: bool
) -> None:
    # With dedupe keys: the re-inserted row holds its own key and must not be taken for a
    # duplicate of itself (it used to vanish: no queue row, no result).
    sims = env["sims"]
    config = write_config(
        env["tmp"] / "deadline.toml",
        dsn=env["dsn"],
        setup=env["setup"],
        sims=sims,
        daemon="shutdown_timeout_s = 0.5\nrequest_timeout_s = 10",
    )
    sims.apns.patch({"latency": {"dist": "fixed", "ms": 4000}})
    tokens = [devkit.apns_token("ok", 8000 + i) for i in range(50)]
    extra = [{"dedupe_key": f"k-{i}"} if keyed else {} for i in range(len(tokens))]
    ids = await enqueue(env["dsn"], [apns(t, **e) for t, e in zip(tokens, extra, strict=True)])
    async with running_daemon(settings_for(config)) as daemon:
        while sims.apns.counters.get("streams", 0) < 2:
            await asyncio.sleep(0.02)
        claimed = daemon.stats.claimed
    assert claimed > 0
    conn = await asyncpg.connect(env["dsn"])
    try:
        rows = await conn.fetch("SELECT attempts, last_reason FROM pushgres.queue")
        assert len(rows) == len(ids)  # nothing lost, nothing half-written
        await assert_each_row_queued_or_done(env["dsn"], ids)
        assert all(r["attempts"] == 0 for r in rows)  # an interrupted send is no attempt
        assert await conn.fetchval("SELECT count(*) FROM pushgres.results") == 0
    finally:
        await conn.close()
    sims.apns.patch({"latency": None})
    async with running_daemon(settings_for(config)):
        found = await wait_terminal(env["dsn"], ids)
    assert all(o.status == "sent" for o in found.values())
