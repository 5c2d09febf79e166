"""The FCM simulator and its OAuth endpoint, through a bare h2 client."""

from __future__ import annotations

import email.utils
import json
import ssl
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from pushgres.simulator import Simulators, devkit

from .h2client import H2Client, Stream, assertion, fcm_headers, oauth_exchange, oauth_token

FCM_ERROR = "type.googleapis.com/google.firebase.fcm.v1.FcmError"
APNS_ERROR = "type.googleapis.com/google.firebase.fcm.v1.ApnsError"
PROJECT = "demo-project"


@pytest.fixture
async def fcm(sims: Simulators) -> AsyncIterator[H2Client]:
    client = await H2Client.connect(sims.fcm_port, sims.ca_file)
    client.auth = (await oauth_token(sims)).encode()
    try:
        yield client
    finally:
        await client.close()


async def send(client: H2Client, message: dict[str, Any], **top: Any) -> Stream:
    body = json.dumps({"message": message, **top}).encode()
    return await client.request(fcm_headers(PROJECT, client.auth.decode()), body)


def error(resp: Stream) -> dict[str, Any]:
    assert resp.headers[b"content-type"] == b"application/json; charset=UTF-8"
    result: dict[str, Any] = json.loads(resp.body)["error"]
    assert result["code"] == resp.status
    return result


def error_code(resp: Stream) -> str | None:
    for detail in error(resp)["details"]:
        if detail["@type"] == FCM_ERROR:
            return str(detail["errorCode"])
    return None


async def test_accepted_message_is_named_and_counted(sims: Simulators, fcm: H2Client) -> None:
    token = devkit.fcm_token("ok", 1)
    resp = await send(fcm, {"token": token, "data": {"k": "v"}})
    assert resp.status == 200
    assert json.loads(resp.body)["name"].startswith(f"projects/{PROJECT}/messages/")
    assert fcm.limits == [100]
    dry = await send(fcm, {"token": token}, validate_only=True)
    assert json.loads(dry.body) == {"name": f"projects/{PROJECT}/messages/fake_message_id"}
    assert sims.accepted_counts()["fcm"] == {token: 1}


KINDS = [
    # (kind, status, google status, errorCode, ApnsError detail)
    ("UNREGISTERED", 404, "NOT_FOUND", "UNREGISTERED", None),
    ("INVALID_ARGUMENT", 400, "INVALID_ARGUMENT", "INVALID_ARGUMENT", None),
    ("SENDER_ID_MISMATCH", 403, "PERMISSION_DENIED", "SENDER_ID_MISMATCH", None),
    (
        "THIRD_PARTY_AUTH_ERROR",
        401,
        "UNAUTHENTICATED",
        "THIRD_PARTY_AUTH_ERROR",
        {"statusCode": 403, "reason": "InvalidProviderToken"},
    ),
    (
        "apns_unregistered",
        400,
        "INVALID_ARGUMENT",
        "INVALID_ARGUMENT",
        {"statusCode": 410, "reason": "Unregistered"},
    ),
    ("QUOTA_EXCEEDED", 429, "RESOURCE_EXHAUSTED", "QUOTA_EXCEEDED", None),
    ("UNAVAILABLE", 503, "UNAVAILABLE", "UNAVAILABLE", None),
    ("INTERNAL", 500, "INTERNAL", "INTERNAL", None),
]


@pytest.mark.parametrize(
    ("kind", "status", "google", "code", "apns"), KINDS, ids=[k[0] for k in KINDS]
)
async def test_error_envelope_per_token_kind(
    sims: Simulators,
    fcm: H2Client,
    kind: str,
    status: int,
    google: str,
    code: str,
    apns: dict[str, Any] | None,
) -> None:
    resp = await send(fcm, {"token": devkit.fcm_token(kind, 3)})
    body = error(resp)
    assert resp.status == status and body["status"] == google
    assert body["details"][0] == {"@type": FCM_ERROR, "errorCode": code}
    if apns is not None:
        assert {"@type": APNS_ERROR, **apns} in body["details"]
    if status in (429, 503):
        assert resp.headers[b"retry-after"] == b"1"
    assert b"date" in resp.headers and b"server" in resp.headers
    assert sims.accepted_counts()["fcm"] == {}


async def test_messages(fcm: H2Client) -> None:
    assert error(await send(fcm, {"token": devkit.fcm_token("ok", 1)}, extra=1))["message"] == (
        'Invalid JSON payload received. Unknown name "extra": Cannot find field.'
    )
    resp = await send(fcm, {"token": devkit.fcm_token("ok", 1), "colour": "red"})
    assert error(resp)["message"] == (
        "Invalid JSON payload received. Unknown name \"colour\" at 'message': Cannot find field."
    )
    assert error_code(resp) is None
    resp = await send(fcm, {"token": devkit.fcm_token("ok", 1), "data": {"n": 12}})
    assert error(resp)["message"] == "Invalid value at 'message.data[0].value' (TYPE_STRING), 12"
    assert error_code(resp) == "INVALID_ARGUMENT"
    for bad in (
        {"token": devkit.fcm_token("ok", 1), "topic": "news"},
        {},
        {"token": devkit.fcm_token("ok", 1), "android": {"ttl": "3600"}},
        {"token": devkit.fcm_token("ok", 1), "android": {"ttl": "2419201s"}},
        {"token": devkit.fcm_token("ok", 1), "android": {"priority": "urgent"}},
        {"token": devkit.fcm_token("ok", 1), "data": {"google.x": "1"}},
        {"token": devkit.fcm_token("ok", 1), "apns": {"headers": {"apns-priority": 10}}},
        {"topic": "bad topic!"},
        {"token": "short"},
    ):
        resp = await send(fcm, bad)
        assert resp.status == 400 and error_code(resp) == "INVALID_ARGUMENT", bad
    raw = await fcm.request(fcm_headers(PROJECT, fcm.auth.decode()), b"{not json")
    assert raw.status == 400 and error(raw)["status"] == "INVALID_ARGUMENT"


async def test_payload_size_limits(fcm: H2Client) -> None:
    token = devkit.fcm_token("ok", 1)
    overhead = len(json.dumps({"k": ""}, separators=(",", ":")))
    fits = {"token": token, "data": {"k": "x" * (4096 - overhead)}}
    assert (await send(fcm, fits)).status == 200
    too_big = {"token": token, "data": {"k": "x" * (4097 - overhead)}}
    assert error_code(await send(fcm, too_big)) == "INVALID_ARGUMENT"
    topic = {"topic": "news", "data": {"k": "x" * (2049 - overhead)}}
    assert error_code(await send(fcm, topic)) == "INVALID_ARGUMENT"


async def test_authentication_and_project_checks(sims: Simulators, fcm: H2Client) -> None:
    body = json.dumps({"message": {"token": devkit.fcm_token("ok", 1)}}).encode()
    resp = await fcm.request(fcm_headers(PROJECT, None), body)
    assert resp.status == 401 and error(resp)["message"].startswith("Request is missing required")
    resp = await fcm.request(fcm_headers(PROJECT, "ya29.forged"), body)
    assert resp.status == 401 and error(resp)["message"].startswith("Request had invalid")
    resp = await fcm.request(fcm_headers("someone-else", fcm.auth.decode()), body)
    assert resp.status == 403 and error(resp)["status"] == "PERMISSION_DENIED"
    by_number = await fcm.request(fcm_headers("123456789012", fcm.auth.decode()), body)
    assert by_number.status == 200
    sims.fcm.projects[PROJECT]["api_enabled"] = False
    resp = await fcm.request(fcm_headers(PROJECT, fcm.auth.decode()), body)
    assert resp.status == 403 and error(resp)["details"][0]["reason"] == "SERVICE_DISABLED"
    sims.fcm.projects[PROJECT]["api_enabled"] = True
    # Access tokens expire (clock) and can be revoked.
    sims.set_clock(advance_s=3600)
    assert (await fcm.request(fcm_headers(PROJECT, fcm.auth.decode()), body)).status == 401
    sims.set_clock(offset_s=0)
    sims.patch({"oauth": {"revoke_all": True}})
    assert (await fcm.request(fcm_headers(PROJECT, fcm.auth.decode()), body)).status == 401


async def test_registered_tokens(sims: Simulators, fcm: H2Client) -> None:
    mismatch = "a" * 30
    package = "b" * 30
    third_party = "c" * 30
    sims.register_tokens(
        {
            "fcm": {
                mismatch: {"project": "other-project"},
                package: {"package": "com.example.app"},
                third_party: {
                    "state": "third_party_auth",
                    "apns_reason": "BadEnvironmentKeyInToken",
                },
            }
        }
    )
    assert error_code(await send(fcm, {"token": mismatch})) == "SENDER_ID_MISMATCH"
    wrong = {"token": package, "android": {"restricted_package_name": "com.other"}}
    assert error_code(await send(fcm, wrong)) == "INVALID_ARGUMENT"
    assert (await send(fcm, {"token": package})).status == 200
    resp = await send(fcm, {"token": third_party})
    assert {"@type": APNS_ERROR, "statusCode": 403, "reason": "BadEnvironmentKeyInToken"} in error(
        resp
    )["details"]
    sims.fcm.patch({"unknown_token_policy": "unregistered"})
    assert error_code(await send(fcm, {"token": "d" * 30})) == "UNREGISTERED"


async def test_quota_window_and_retry_after_modes(sims: Simulators, fcm: H2Client) -> None:
    sims.fcm.patch({"quota_per_minute": 2})
    token = devkit.fcm_token("ok", 1)
    assert (await send(fcm, {"token": token})).status == 200
    assert (await send(fcm, {"token": "short"})).status == 400  # client errors count
    resp = await send(fcm, {"token": token})
    assert resp.status == 429 and error_code(resp) == "QUOTA_EXCEEDED"
    assert 55 <= int(resp.headers[b"retry-after"]) <= 60
    assert any(d["@type"].endswith("QuotaFailure") for d in error(resp)["details"])
    sims.fcm.patch({"retry_after_mode": "http-date"})
    resp = await send(fcm, {"token": token})
    when = email.utils.parsedate_to_datetime(resp.headers[b"retry-after"].decode())
    assert 50 <= when.timestamp() - time.time() <= 61
    sims.fcm.patch({"retry_after_mode": "none"})
    assert b"retry-after" not in (await send(fcm, {"token": token})).headers
    sims.set_clock(advance_s=61)  # the window refills all at once
    assert (await send(fcm, {"token": token})).status == 200
    assert sims.fcm.counters["quota_rejections"] == 3


async def test_injected_faults_and_scripts(sims: Simulators, fcm: H2Client) -> None:
    token = devkit.fcm_token("ok", 1)
    sims.fcm.patch({"fail_rates": {"503:UNAVAILABLE": 1.0}, "retry_after": {"value": 7}})
    resp = await send(fcm, {"token": token})
    assert resp.status == 503 and resp.headers[b"retry-after"] == b"7"
    sims.fcm.patch({"fail_rates": {}})
    sims.fcm.script({token: ["429:QUOTA_EXCEEDED", "500:INTERNAL", "200"]})
    statuses = [(await send(fcm, {"token": token})).status for _ in range(4)]
    assert statuses == [429, 500, 200, 200]
    flaky = devkit.fcm_token("flaky", 1)
    assert [(await send(fcm, {"token": flaky})).status for _ in range(3)] == [503, 503, 200]
    assert sims.accepted_counts()["fcm"] == {token: 2, flaky: 1}


async def test_http1_on_the_fcm_port(sims: Simulators) -> None:
    access_token = await oauth_token(sims)
    ctx = ssl.create_default_context(cafile=sims.ca_file)
    url = f"https://127.0.0.1:{sims.fcm_port}/v1/projects/{PROJECT}/messages:send"
    token = devkit.fcm_token("ok", 8)
    async with aiohttp.ClientSession() as session:
        for _ in range(2):  # keep-alive
            async with session.post(
                url,
                json={"message": {"token": token}},
                headers={"authorization": f"Bearer {access_token}"},
                ssl=ctx,
            ) as resp:
                assert resp.status == 200
                assert (await resp.json())["name"].startswith("projects/")
        async with session.post(url, json={}, ssl=ctx) as resp:
            assert resp.status == 401
    assert sims.accepted_counts()["fcm"] == {token: 2}


async def test_oauth_endpoint_rules(sims: Simulators, dev_setup: devkit.DevSetup) -> None:
    grant = "urn:ietf:params:oauth:grant-type:jwt-bearer"
    status, body = await oauth_exchange(
        sims, {"grant_type": grant, "assertion": assertion(dev_setup, sims.oauth_url)}
    )
    assert status == 200 and body["token_type"] == "Bearer" and body["expires_in"] == 3599
    assert body["access_token"].startswith("ya29.sim-")
    now = int(time.time())
    cases: list[tuple[dict[str, Any], int, str, str | None]] = [
        (
            {"aud": "https://elsewhere/token"},
            400,
            "invalid_grant",
            "Invalid JWT: Failed audience check.",
        ),
        (
            {"iss": "nobody@x.iam.gserviceaccount.com"},
            400,
            "invalid_grant",
            "Invalid grant: account not found",
        ),
        (
            {"scope": "email"},
            400,
            "invalid_scope",
            "Invalid OAuth scope or ID token audience provided.",
        ),
        ({"exp": now + 7200}, 400, "invalid_grant", None),
        ({"iat": now - 7200, "exp": now - 3600}, 400, "invalid_grant", None),
    ]
    for override, want_status, want_error, description in cases:
        status, body = await oauth_exchange(
            sims,
            {"grant_type": grant, "assertion": assertion(dev_setup, sims.oauth_url, **override)},
        )
        assert (status, body["error"]) == (want_status, want_error), override
        if description:
            assert body["error_description"] == description
    status, body = await oauth_exchange(sims, {"grant_type": "password", "assertion": "x"})
    assert (status, body["error"]) == (400, "unsupported_grant_type")
    # Signed with a key that is not the account's.
    import jwt

    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    forged = jwt.encode(
        {
            "iss": dev_setup.client_email,
            "aud": sims.oauth_url,
            "scope": "https://www.googleapis.com/auth/cloud-platform",
            "iat": now,
            "exp": now + 600,
        },
        stranger,
        algorithm="RS256",
    )
    status, body = await oauth_exchange(sims, {"grant_type": grant, "assertion": forged})
    assert (status, body["error_description"]) == (400, "Invalid JWT Signature.")
    sims.oauth.accounts[dev_setup.client_email]["disabled"] = True
    status, body = await oauth_exchange(
        sims, {"grant_type": grant, "assertion": assertion(dev_setup, sims.oauth_url)}
    )
    assert (status, body["error"]) == (401, "invalid_client")
    sims.oauth.accounts[dev_setup.client_email]["disabled"] = False
    sims.patch({"oauth": {"token_lifetime_s": 60}})
    status, body = await oauth_exchange(
        sims, {"grant_type": grant, "assertion": assertion(dev_setup, sims.oauth_url)}
    )
    assert body["expires_in"] == 60
    assert sims.metrics()["oauth"]["tokens_issued"] == 2
