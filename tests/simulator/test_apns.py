"""The APNs simulator on the wire, through a bare h2 client."""

from __future__ import annotations

import asyncio
import json
import re
import time
import uuid
from typing import Any

import h2.errors
import pytest

from pushgres.simulator import SimulatorConfig, Simulators, devkit

from .h2client import H2Client, Stream, apns_headers, provider_token

OK = devkit.apns_token("ok", 1)
UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")


def reason(stream: Stream) -> str:
    assert stream.headers[b"content-type"] == b"application/json"
    return str(json.loads(stream.body)["reason"])


async def test_accepted_push_echoes_apns_id_and_is_counted(
    sims: Simulators, apns: H2Client
) -> None:
    apns_id = str(uuid.uuid4())
    resp = await apns.request(apns_headers(OK, apns.auth, apns_id=apns_id), b'{"aps":{}}')
    assert resp.status == 200 and resp.body == b"" and resp.data_frames == 0
    assert resp.headers[b"apns-id"] == apns_id.encode()
    assert b"apns-unique-id" not in resp.headers  # production
    generated = await apns.request(apns_headers(OK, apns.auth), b'{"aps":{}}')
    assert UUID_RE.match(generated.headers[b"apns-id"].decode())
    counts = sims.accepted_counts()
    assert counts["apns"][OK] == 2
    assert counts["apns_ids"][apns_id] == 1


async def test_sandbox_adds_unique_id(sims: Simulators, dev_setup: devkit.DevSetup) -> None:
    client = await H2Client.connect(sims.apns_sandbox_port, sims.ca_file)
    try:
        auth = provider_token(dev_setup)
        ok = await client.request(apns_headers(OK, auth), b"{}")
        assert ok.status == 200 and UUID_RE.match(ok.headers[b"apns-unique-id"].decode())
        bad = await client.request(apns_headers(OK, auth, apns_priority="7"), b"{}")
        assert bad.status == 400 and b"apns-unique-id" in bad.headers
    finally:
        await client.close()
    assert sims.apns_sandbox.accepted[OK] == 1 and not sims.apns.accepted


CASES: list[tuple[str, dict[str, Any], int, str]] = [
    # (name, request changes, status, reason), in the order of the simulator's checks 1-12
    # (pushgres.simulator.apns); statuses and reasons as in Apple's "Handling notification
    # responses from APNs".
    ("method", {"method": b"GET"}, 405, "MethodNotAllowed"),
    ("no token", {"path": b"/3/device/"}, 400, "MissingDeviceToken"),
    ("bad path", {"path": b"/4/device/" + OK.encode()}, 404, "BadPath"),
    (
        "duplicate",
        {"extra_headers": [(b"apns-topic", b"com.example.app")]},
        400,
        "DuplicateHeaders",
    ),
    ("apns-id", {"apns_id": "not-a-uuid"}, 400, "BadMessageId"),
    ("no auth", {"auth": None}, 403, "MissingProviderToken"),
    ("bad jwt", {"auth": b"bearer not.a.jwt"}, 403, "InvalidProviderToken"),
    ("no topic", {"topic": None}, 400, "MissingTopic"),
    ("bad topic", {"topic": "com example"}, 400, "BadTopic"),
    ("other topic", {"topic": "com.other.app"}, 400, "TopicDisallowed"),
    ("push type", {"apns_push_type": "shout"}, 400, "InvalidPushType"),
    ("priority", {"apns_priority": "7"}, 400, "BadPriority"),
    ("background 10", {"apns_push_type": "background", "apns_priority": "10"}, 400, "BadPriority"),
    ("expiration", {"apns_expiration": "soon"}, 400, "BadExpirationDate"),
    ("collapse", {"apns_collapse_id": "x" * 65}, 400, "BadCollapseId"),
    ("empty", {"body": b""}, 400, "PayloadEmpty"),
    ("too large", {"body": b"x" * 4097}, 413, "PayloadTooLarge"),
    (
        "voip too large",
        {"apns_push_type": "voip", "topic": "com.example.app.voip", "body": b"x" * 5121},
        413,
        "PayloadTooLarge",
    ),
    ("token not hex", {"token": "zz" * 32}, 400, "BadDeviceToken"),
    ("token short", {"token": "ab" * 31}, 400, "BadDeviceToken"),
    ("kind BadDeviceToken", {"kind": "BadDeviceToken"}, 400, "BadDeviceToken"),
    ("kind NotForTopic", {"kind": "DeviceTokenNotForTopic"}, 400, "DeviceTokenNotForTopic"),
    ("kind Unregistered", {"kind": "Unregistered"}, 410, "Unregistered"),
    ("kind ExpiredToken", {"kind": "ExpiredToken"}, 410, "ExpiredToken"),
    ("kind TooManyRequests", {"kind": "TooManyRequests"}, 429, "TooManyRequests"),
    ("kind 500", {"kind": "InternalServerError"}, 500, "InternalServerError"),
    ("kind 503", {"kind": "ServiceUnavailable"}, 503, "ServiceUnavailable"),
]


def build(auth: bytes, changes: dict[str, Any]) -> tuple[list[tuple[bytes, bytes]], bytes]:
    changes = dict(changes)
    token = devkit.apns_token(changes.pop("kind"), 5) if "kind" in changes else OK
    token = changes.pop("token", token)
    body = changes.pop("body", b'{"aps":{"alert":"hi"}}')
    method = changes.pop("method", b"POST")
    path = changes.pop("path", None)
    extra = changes.pop("extra_headers", [])
    the_auth = changes.pop("auth", auth)
    topic = changes.pop("topic", "com.example.app")
    changes.setdefault("apns_push_type", "alert")
    headers = apns_headers(token, the_auth, topic=topic, **changes)
    headers = [
        (k, method if k == b":method" else (path if k == b":path" and path else v))
        for k, v in headers
    ]
    return headers + extra, body


@pytest.mark.parametrize(
    ("name", "changes", "status", "expected"), CASES, ids=[c[0] for c in CASES]
)
async def test_each_reason(
    sims: Simulators, apns: H2Client, name: str, changes: dict[str, Any], status: int, expected: str
) -> None:
    headers, body = build(apns.auth, changes)
    resp = await apns.request(headers, body)
    assert resp.status == status
    assert reason(resp) == expected
    assert resp.body.startswith(b'{"reason":"' + expected.encode() + b'"')
    if status == 410:
        timestamp = json.loads(resp.body)["timestamp"]
        assert isinstance(timestamp, int) and timestamp < time.time() * 1000
    else:
        assert resp.body == b'{"reason":"' + expected.encode() + b'"}'
    if expected == "BadMessageId":
        assert UUID_RE.match(resp.headers[b"apns-id"].decode())
    assert sims.apns.responses[f"{status}:{expected}"] == 1
    assert sims.accepted_counts()["apns"] == {devkit.apns_token("ok", 0): 1}


async def test_boundaries_are_accepted(apns: H2Client) -> None:
    for changes in (
        {"body": b"x" * 4096},
        {"apns_push_type": "voip", "topic": "com.example.app.voip", "body": b"x" * 5120},
        {"apns_collapse_id": "x" * 64},
        {"apns_push_type": "background", "apns_priority": "5"},
        {"apns_expiration": "0"},
    ):
        headers, body = build(apns.auth, changes)
        assert (await apns.request(headers, body)).status == 200, changes


async def test_one_stream_until_authenticated_then_raised(
    sims: Simulators, dev_setup: devkit.DevSetup
) -> None:
    client = await H2Client.connect(sims.apns_production_port, sims.ca_file)
    try:
        assert client.limits == [1]
        resp = await client.request(apns_headers(OK, provider_token(dev_setup)), b"{}")
        assert resp.status == 200
        await client.wait_until(lambda: client.limits[-1] == 1000)
    finally:
        await client.close()


async def test_excess_stream_gets_goaway(sims: Simulators, dev_setup: devkit.DevSetup) -> None:
    client = await H2Client.connect(sims.apns_production_port, sims.ca_file)
    try:
        auth = provider_token(dev_setup)
        sims.apns.patch({"latency": {"dist": "fixed", "ms": 200}})
        client.ignore_stream_limit()
        client.start(apns_headers(OK, auth), b"{}")
        client.start(apns_headers(OK, auth), b"{}")  # the limit is still 1
        await asyncio.wait_for(client.closed.wait(), 5)
        assert client.goaway is not None
        assert client.goaway.error_code == h2.errors.ErrorCodes.PROTOCOL_ERROR
        assert (
            client.goaway.additional_data == b"Maximum active streams violated for this endpoint."
        )
        assert sims.apns.counters["limit_violations"] == 1
    finally:
        await client.close()


async def test_excess_stream_refused(sims: Simulators, dev_setup: devkit.DevSetup) -> None:
    sims.apns.patch({"on_excess_streams": "refuse", "latency": {"dist": "fixed", "ms": 100}})
    client = await H2Client.connect(sims.apns_production_port, sims.ca_file)
    try:
        auth = provider_token(dev_setup)
        client.ignore_stream_limit()
        first = client.start(apns_headers(OK, auth), b"{}")
        second = client.start(apns_headers(OK, auth), b"{}")
        assert (await client.response(second)).reset_code == h2.errors.ErrorCodes.REFUSED_STREAM
        assert (await client.response(first)).status == 200
    finally:
        await client.close()


async def test_expired_jwt_via_clock_wedges_connection(sims: Simulators, apns: H2Client) -> None:
    sims.set_clock(offset_s=3601)
    resp = await apns.request(apns_headers(OK, apns.auth), b"{}")
    assert resp.status == 403 and reason(resp) == "ExpiredProviderToken"
    sims.set_clock(offset_s=0)
    resp = await apns.request(apns_headers(OK, apns.auth), b"{}")
    assert reason(resp) == "ExpiredProviderToken"  # wedged until the client reconnects


async def test_token_update_within_20_minutes(
    sims: Simulators, apns: H2Client, dev_setup: devkit.DevSetup
) -> None:
    newer = provider_token(dev_setup, iat=time.time() + 1)
    resp = await apns.request(apns_headers(OK, newer), b"{}")
    assert resp.status == 429 and reason(resp) == "TooManyProviderTokenUpdates"
    # 21 minutes later a fresh token is accepted on the same connection.
    offset = sims.set_clock(advance_s=21 * 60)
    fresh = provider_token(dev_setup, iat=time.time() + offset)
    assert (await apns.request(apns_headers(OK, fresh), b"{}")).status == 200
    assert (await apns.request(apns_headers(OK, fresh), b"{}")).status == 200
    assert sims.apns.counters["token_changes"] == 1
    assert sims.apns.counters["jwt_verifications"] == 3


async def test_key_and_team_rules(dev_setup: devkit.DevSetup, tmp_path: Any) -> None:
    other = devkit.generate_apns_key(tmp_path, "TEAM123456", "KEYOTHER01")
    sandbox_only = devkit.generate_apns_key(tmp_path, "TEAM123456", "KEYSANDBOX")
    stranger = devkit.generate_apns_key(tmp_path, "TEAM999999", "KEYSTRANGE")
    config: SimulatorConfig = dev_setup.config
    keys = config.teams["TEAM123456"]["keys"]
    keys["KEYOTHER01"] = {
        "public_key_pem": other.public_key_pem,
        "scope": "topic",
        "topics": ["com.example.app"],
        "env": "both",
    }
    keys["KEYSANDBOX"] = {"public_key_pem": sandbox_only.public_key_pem, "env": "sandbox"}
    config.teams["TEAM999999"] = {
        "topics": ["com.stranger.app"],
        "keys": {"KEYSTRANGE": {"public_key_pem": stranger.public_key_pem}},
    }
    async with Simulators(config) as sims:
        client = await H2Client.connect(sims.apns_production_port, sims.ca_file)
        try:
            first = provider_token(dev_setup)
            assert (await client.request(apns_headers(OK, first), b"{}")).status == 200

            async def with_key(key: devkit.ApnsKey, topic: str = "com.example.app") -> str:
                auth = provider_token(
                    dev_setup, key_file=key.key_file, key_id=key.key_id, team_id=key.team_id
                )
                return reason(await client.request(apns_headers(OK, auth, topic=topic), b"{}"))

            assert await with_key(other) == "UnrelatedKeyIdInToken"
            assert await with_key(stranger, "com.stranger.app") == "InvalidProviderToken"
        finally:
            await client.close()
        client = await H2Client.connect(sims.apns_production_port, sims.ca_file)
        try:
            auth = provider_token(dev_setup, key_file=sandbox_only.key_file, key_id="KEYSANDBOX")
            resp = await client.request(apns_headers(OK, auth), b"{}")
            assert reason(resp) == "BadEnvironmentKeyIdInToken"
        finally:
            await client.close()


async def test_registered_device_tokens(sims: Simulators, apns: H2Client) -> None:
    plain = "ab" * 32
    sandbox_token = "cd" * 32
    other_topic = "ef" * 32
    sims.register_tokens(
        {
            "apns": {
                plain: {"state": "unregistered", "timestamp_ms": 1763800000000},
                sandbox_token: {"env": "sandbox"},
                other_topic: {"topic": "com.other.app"},
            }
        }
    )
    resp = await apns.request(apns_headers(plain, apns.auth), b"{}")
    assert json.loads(resp.body) == {"reason": "Unregistered", "timestamp": 1763800000000}
    resp = await apns.request(apns_headers(sandbox_token, apns.auth), b"{}")
    assert reason(resp) == "BadDeviceToken"
    resp = await apns.request(apns_headers(other_topic, apns.auth), b"{}")
    assert reason(resp) == "DeviceTokenNotForTopic"
    sims.apns.patch({"unknown_token_policy": "bad_device_token"})
    resp = await apns.request(apns_headers("12" * 32, apns.auth), b"{}")
    assert reason(resp) == "BadDeviceToken"


async def test_flaky_refused_reset_and_blackhole_tokens(sims: Simulators, apns: H2Client) -> None:
    flaky = devkit.apns_token("flaky", 1)
    statuses = [
        (await apns.request(apns_headers(flaky, apns.auth), b"{}")).status for _ in range(3)
    ]
    assert statuses == [503, 503, 200]
    refused = devkit.apns_token("refused", 1)
    first = await apns.request(apns_headers(refused, apns.auth), b"{}")
    assert first.reset_code == h2.errors.ErrorCodes.REFUSED_STREAM
    assert (await apns.request(apns_headers(refused, apns.auth), b"{}")).status == 200
    reset = devkit.apns_token("reset", 1)
    resp = await apns.request(apns_headers(reset, apns.auth), b"{}")
    assert resp.reset_code == h2.errors.ErrorCodes.INTERNAL_ERROR
    blackhole = devkit.apns_token("blackhole", 1)
    sid = apns.start(apns_headers(blackhole, apns.auth), b"{}")
    with pytest.raises(TimeoutError):
        await apns.response(sid, timeout_s=0.3)
    apns.cancel(sid)
    assert (await apns.request(apns_headers(OK, apns.auth), b"{}")).status == 200
    counts = sims.accepted_counts()["apns"]
    assert counts[flaky] == 1 and counts[refused] == 1 and counts[reset] == 1
    assert blackhole not in counts
    while sims.apns.counters.get("client_resets") != 1:
        await asyncio.sleep(0.005)


async def test_shutdown_token_sends_graceful_goaway(sims: Simulators, apns: H2Client) -> None:
    resp = await apns.request(apns_headers(devkit.apns_token("Shutdown", 1), apns.auth), b"{}")
    assert resp.status == 503 and reason(resp) == "Shutdown"
    await asyncio.wait_for(apns.closed.wait(), 5)
    assert apns.goaway is not None and apns.goaway.additional_data == b'{"reason":"Shutdown"}'


async def test_goaway_after_streams(sims: Simulators, apns: H2Client) -> None:
    sims.apns.patch({"goaway_after_streams": 3})
    for _ in range(2):
        assert (await apns.request(apns_headers(OK, apns.auth), b"{}")).status == 200
    await asyncio.wait_for(apns.closed.wait(), 5)
    assert apns.goaway is not None
    assert apns.goaway.last_stream_id == 5  # the third stream, answered before the close
    assert apns.goaway.error_code == 0
    assert sims.accepted_counts()["apns"][OK] == 2


async def test_goaway_lower_leaves_in_flight_streams_unprocessed(
    sims: Simulators, apns: H2Client
) -> None:
    sims.apns.patch({"latency": {"dist": "fixed", "ms": 300}})
    sids = [
        apns.start(apns_headers(devkit.apns_token("ok", 100 + i), apns.auth), b"{}")
        for i in range(3)
    ]
    while sims.apns.counters.get("streams", 0) < 4:
        await asyncio.sleep(0.005)
    assert sims.goaway("apns_production", last_stream_mode="lower", reason="Shutdown") == 1
    await asyncio.wait_for(apns.closed.wait(), 5)
    assert apns.goaway is not None and apns.goaway.last_stream_id is not None
    assert apns.goaway.last_stream_id < min(sids)
    assert all(apns.streams[sid].status is None for sid in sids)
    assert set(sims.accepted_counts()["apns"]) == {devkit.apns_token("ok", 0)}


async def test_reset_connection_after_streams(sims: Simulators, apns: H2Client) -> None:
    sims.apns.patch({"reset_connection": {"after_streams": 3, "mode": "rst"}})
    assert (await apns.request(apns_headers(OK, apns.auth), b"{}")).status == 200
    sid = apns.start(apns_headers(OK, apns.auth), b"{}")
    await asyncio.wait_for(apns.closed.wait(), 5)
    assert apns.goaway is None and apns.streams[sid].status is None


async def test_fail_rates_latency_and_retry_after(sims: Simulators, apns: H2Client) -> None:
    sims.apns.patch({"fail_rates": {"503:ServiceUnavailable": 1.0}, "retry_after": {"value": 7}})
    resp = await apns.request(apns_headers(OK, apns.auth), b"{}")
    assert resp.status == 503 and reason(resp) == "ServiceUnavailable"
    assert resp.headers[b"retry-after"] == b"7"
    assert sims.apns.faults["503:ServiceUnavailable"] == 1
    sims.apns.patch({"fail_rates": {}, "latency": {"dist": "fixed", "ms": 150}})
    started = time.monotonic()
    assert (await apns.request(apns_headers(OK, apns.auth), b"{}")).status == 200
    assert time.monotonic() - started >= 0.15


async def test_scripts_per_token_and_global(sims: Simulators, apns: H2Client) -> None:
    sims.apns.script({OK: ["429:TooManyRequests", "200"], "*": ["500:InternalServerError"]})
    statuses = [(await apns.request(apns_headers(OK, apns.auth), b"{}")).status for _ in range(4)]
    assert statuses == [429, 200, 500, 200]


async def test_response_body_respects_client_window(
    sims: Simulators, dev_setup: devkit.DevSetup
) -> None:
    sims.apns.patch({"split_body_frames": 4})
    client = await H2Client.connect(sims.apns_production_port, sims.ca_file, initial_window_size=8)
    try:
        resp = await client.request(apns_headers(OK, None), b"{}")
        assert reason(resp) == "MissingProviderToken"
        assert resp.data_frames >= 6  # 4-byte frames, 8-byte window, credit returned
        assert sims.apns.counters["window_stalls"] >= 1
    finally:
        await client.close()


async def test_certificate_auth(sims: Simulators, dev_setup: devkit.DevSetup) -> None:
    client = await H2Client.connect(
        sims.apns_production_port,
        sims.ca_file,
        cert=(dev_setup.apns_cert_file, dev_setup.apns_cert_key_file),
    )
    try:
        assert client.limits == [1000]
        resp = await client.request(apns_headers(OK, None, topic=None), b"{}")
        assert resp.status == 200
        voip = await client.request(
            apns_headers(OK, None, topic="com.example.app.voip", apns_push_type="voip"), b"{}"
        )
        assert voip.status == 200
        other = await client.request(apns_headers(OK, None, topic="com.other.app"), b"{}")
        assert reason(other) == "TopicDisallowed"
    finally:
        await client.close()


async def test_prior_knowledge_h2_without_alpn(
    sims: Simulators, dev_setup: devkit.DevSetup
) -> None:
    client = await H2Client.connect(sims.apns_production_port, sims.ca_file, alpn=[])
    try:
        resp = await client.request(apns_headers(OK, provider_token(dev_setup)), b"{}")
        assert resp.status == 200
    finally:
        await client.close()
    assert sims.apns.counters["alpn_none"] == 1
