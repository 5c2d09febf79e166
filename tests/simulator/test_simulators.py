"""The simulators on their own: wire behaviour, auth checks, error bodies, control API."""

from __future__ import annotations

import asyncio
import json
import pathlib
import ssl
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import h2.connection
import h2.events
import jwt
import pytest
from cryptography.hazmat.primitives import serialization

from pushgres.http2.pool import Http2Pool, PoolSettings, Response
from pushgres.http2.tls import make_http1_ssl_context, make_ssl_context
from pushgres.providers.apns.auth import ProviderToken
from pushgres.providers.fcm.auth import ServiceAccount, TokenSource
from pushgres.simulator import Simulators, devkit

TOPIC = "com.example.app"


@pytest.fixture
async def sims(tmp_path: pathlib.Path) -> AsyncIterator[Simulators]:
    async with Simulators(devkit.make_dev_setup(tmp_path)) as running:
        yield running


def dev(sims: Simulators) -> devkit.DevSetup:
    assert sims.setup is not None
    return sims.setup


def apns_headers(
    sims: Simulators, token: str, auth: bytes, **extra: bytes
) -> list[tuple[bytes, bytes]]:
    headers = [
        (b":method", b"POST"),
        (b":scheme", b"https"),
        (b":path", b"/3/device/" + token.encode()),
        (b":authority", b"localhost"),
        (b"authorization", auth),
        (b"apns-topic", TOPIC.encode()),
        (b"apns-push-type", b"alert"),
    ]
    headers += [(k.replace("_", "-").encode(), v) for k, v in extra.items()]
    return headers


def provider_token(sims: Simulators) -> ProviderToken:
    s = dev(sims)
    return ProviderToken(
        key_file=s.apns_key_file, key_id=s.apns_key_id, team_id=s.apns_team_id, refresh_s=2700
    )


async def send(pool: Http2Pool, headers: list[tuple[bytes, bytes]], body: bytes) -> Response:
    return await pool.request(headers, body, timeout_s=5)


def apns_pool(sims: Simulators, *, connections: int = 1) -> Http2Pool:
    return Http2Pool(
        "test",
        "127.0.0.1",
        sims.apns_production_port,
        server_hostname="localhost",
        authority="localhost",
        ssl_context=make_ssl_context(ca_file=sims.ca_file),
        settings=PoolSettings(max_connections=connections),
    )


async def test_token_connection_allows_one_stream_until_authenticated(sims: Simulators) -> None:
    """APNs token connections: MAX_CONCURRENT_STREAMS is 1 until a request with a valid token.

    Apple, "Establishing a token-based connection to APNs": APNs allows one stream on a token
    connection until a request carrying a valid provider token has been posted.
    """
    ctx = ssl.create_default_context(cafile=sims.ca_file)
    ctx.set_alpn_protocols(["h2"])
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", sims.apns_production_port, ssl=ctx, server_hostname="localhost"
    )
    conn = h2.connection.H2Connection()
    conn.initiate_connection()
    writer.write(conn.data_to_send())
    limits: list[int] = []
    statuses: list[int] = []

    async def pump(until: int) -> None:
        while len(statuses) < until:
            data = await asyncio.wait_for(reader.read(65536), 5)
            assert data, "connection closed"
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.RemoteSettingsChanged):
                    changed = event.changed_settings.get(
                        h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS
                    )
                    if changed is not None:
                        limits.append(changed.new_value)
                elif isinstance(event, h2.events.ResponseReceived):
                    statuses.append(int(dict(event.headers)[b":status"]))
            writer.write(conn.data_to_send())

    token = provider_token(sims).header()
    sid = conn.get_next_available_stream_id()
    conn.send_headers(sid, apns_headers(sims, devkit.apns_token("ok", 1), token))
    conn.send_data(sid, b'{"aps":{}}', end_stream=True)
    writer.write(conn.data_to_send())
    await pump(1)
    writer.close()
    assert statuses == [200]
    assert limits[0] == 1 and limits[-1] == 1000


async def test_apns_checks_and_error_bodies(sims: Simulators) -> None:
    auth = provider_token(sims).header()
    ok = devkit.apns_token("ok", 2)
    async with apns_pool(sims) as pool:
        resp = await send(pool, apns_headers(sims, ok, auth, apns_id=b"not-a-uuid"), b"{}")
        assert resp.status == 400 and json.loads(resp.body) == {"reason": "BadMessageId"}
        resp = await send(pool, apns_headers(sims, ok, auth, apns_priority=b"7"), b"{}")
        assert json.loads(resp.body)["reason"] == "BadPriority"
        resp = await send(pool, apns_headers(sims, ok, auth), b"x" * 4097)
        assert resp.status == 413
        resp = await send(pool, apns_headers(sims, ok, auth), b"")
        assert json.loads(resp.body)["reason"] == "PayloadEmpty"
        resp = await send(pool, apns_headers(sims, "abc", auth), b"{}")
        assert json.loads(resp.body)["reason"] == "BadDeviceToken"
        dead = devkit.apns_token("Unregistered", 2)
        resp = await send(pool, apns_headers(sims, dead, auth), b"{}")
        body = json.loads(resp.body)
        assert resp.status == 410 and body["reason"] == "Unregistered"
        assert body["timestamp"] < time.time() * 1000
        resp = await send(pool, apns_headers(sims, ok, b"bearer nonsense"), b"{}")
        assert resp.status == 403
    assert sims.accepted_counts()["apns"] == {}


async def test_expired_provider_token_wedges_the_connection(sims: Simulators) -> None:
    token = provider_token(sims)
    ok = devkit.apns_token("ok", 3)
    async with apns_pool(sims) as pool:
        assert (await send(pool, apns_headers(sims, ok, token.header()), b"{}")).status == 200
        sims.apns.patch({"clock_offset_s": 3700})
        resp = await send(pool, apns_headers(sims, ok, token.header()), b"{}")
        assert json.loads(resp.body)["reason"] == "ExpiredProviderToken"
        sims.apns.patch({"clock_offset_s": 0})
        resp = await send(pool, apns_headers(sims, ok, token.header()), b"{}")
        assert json.loads(resp.body)["reason"] == "ExpiredProviderToken"  # wedged
        # A new connection with a fresh token works again.
        pool.retire(resp.connection_id)
        token.force_refresh()
        await asyncio.sleep(1.1)  # a new iat second
        token.force_refresh()
        assert (await send(pool, apns_headers(sims, ok, token.header()), b"{}")).status == 200


async def test_changing_token_within_20_minutes_is_refused(sims: Simulators) -> None:
    token = provider_token(sims)
    ok = devkit.apns_token("ok", 4)
    async with apns_pool(sims) as pool:
        assert (await send(pool, apns_headers(sims, ok, token.header()), b"{}")).status == 200
        await asyncio.sleep(1.1)
        token.force_refresh()
        resp = await send(pool, apns_headers(sims, ok, token.header()), b"{}")
        assert resp.status == 429
        assert json.loads(resp.body)["reason"] == "TooManyProviderTokenUpdates"
    assert sims.apns.metrics()["token_updates_rejected"] == 1


async def test_oauth_endpoint_issues_and_rejects(sims: Simulators, tmp_path: pathlib.Path) -> None:
    account = ServiceAccount(dev(sims).service_account_file)
    ctx = make_http1_ssl_context(ca_file=sims.ca_file)  # aiohttp speaks HTTP/1.1 only
    source = TokenSource(account, ca_file=sims.ca_file)
    try:
        header = await source.header()
        assert header.startswith(b"Bearer ya29.sim-")
        assert await source.header() is header  # cached
        assert sims.oauth.issued == 1
    finally:
        await source.aclose()
    data = json.loads(pathlib.Path(dev(sims).service_account_file).read_text())
    key = serialization.load_pem_private_key(data["private_key"].encode(), password=None)
    now = int(time.time())
    cases: dict[str, dict[str, Any]] = {
        "Invalid JWT: Failed audience check.": {"aud": "https://elsewhere/token"},
        "Invalid grant: account not found": {"iss": "nobody@x.iam.gserviceaccount.com"},
        "Invalid OAuth scope or ID token audience provided.": {"scope": "email"},
        "Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable "
        "timeframe. Check your iat and exp values in the JWT claim.": {"exp": now + 7200},
    }
    async with aiohttp.ClientSession() as session:
        for description, override in cases.items():
            claims: dict[str, Any] = {
                "iss": account.client_email,
                "scope": "https://www.googleapis.com/auth/firebase.messaging",
                "aud": account.token_uri,
                "iat": now,
                "exp": now + 3600,
                **override,
            }
            assertion = jwt.encode(claims, key, algorithm="RS256")  # type: ignore[arg-type]
            form = {
                "grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer",
                "assertion": assertion,
            }
            async with session.post(account.token_uri, data=form, ssl=ctx) as resp:
                body = await resp.json()
                assert resp.status == 400, description
                assert body["error_description"] == description


async def test_fcm_rejects_missing_or_unknown_access_tokens(sims: Simulators) -> None:
    pool = Http2Pool(
        "fcm",
        "127.0.0.1",
        sims.fcm_port,
        server_hostname="localhost",
        authority="localhost",
        ssl_context=make_ssl_context(ca_file=sims.ca_file),
        settings=PoolSettings(max_connections=1),
    )
    base = [
        (b":method", b"POST"),
        (b":scheme", b"https"),
        (b":path", f"/v1/projects/{dev(sims).fcm_project}/messages:send".encode()),
        (b":authority", b"localhost"),
    ]
    body = json.dumps({"message": {"token": devkit.fcm_token("ok", 1)}}).encode()
    async with pool:
        resp = await send(pool, base, body)
        error = json.loads(resp.body)["error"]
        assert resp.status == 401 and error["status"] == "UNAUTHENTICATED"
        assert error["message"].startswith("Request is missing required authentication")
        resp = await send(pool, [*base, (b"authorization", b"Bearer ya29.forged")], body)
        assert json.loads(resp.body)["error"]["message"].startswith("Request had invalid")
    assert sims.accepted_counts()["fcm"] == {}


async def test_control_api(sims: Simulators) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.post(
            f"{sims.control_url}/_sim/config", json={"apns": {"no_such_knob": 1}}
        ) as resp:
            assert resp.status == 400
        async with session.post(
            f"{sims.control_url}/_sim/config", json={"fcm": {"goaway_after_streams": 5}}
        ) as resp:
            assert resp.status == 200
        assert sims.fcm.knobs["goaway_after_streams"] == 5
        async with session.get(f"{sims.control_url}/_sim/accepted") as resp:
            assert await resp.json() == {"apns": {}, "apns_ids": {}, "fcm": {}}
        async with session.get(f"{sims.control_url}/_sim/metrics") as resp:
            assert set(await resp.json()) == {"apns", "apns_sandbox", "fcm", "oauth"}


def test_device_token_scheme() -> None:
    assert devkit.apns_token("ok", 1) != devkit.apns_token("ok", 2)
    assert len(devkit.apns_token("Unregistered", 10**30)) == 64
    assert devkit.apns_kind(devkit.apns_token("Shutdown", 3)) == "Shutdown"
    assert devkit.apns_kind("ab" * 32) == "ok"
    for kind in devkit.FCM_KINDS:
        assert devkit.fcm_kind(devkit.fcm_token(kind, 12)) == kind


async def test_token_registry_and_unknown_token_policy(sims: Simulators) -> None:
    auth = provider_token(sims).header()
    plain = "ab" * 32
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{sims.control_url}/_sim/tokens", json={"apns": {plain: "Unregistered"}}
        ) as http_resp,
    ):
        assert http_resp.status == 200
    async with apns_pool(sims) as pool:
        resp = await send(pool, apns_headers(sims, plain, auth), b"{}")
        assert resp.status == 410
        sims.apns.patch({"unknown_token_policy": "bad_device_token"})
        other = devkit.apns_token("ok", 9)
        resp = await send(pool, apns_headers(sims, other, auth), b"{}")
        assert json.loads(resp.body)["reason"] == "BadDeviceToken"
        sims.apns.register({other: "ok"})
        assert (await send(pool, apns_headers(sims, other, auth), b"{}")).status == 200
