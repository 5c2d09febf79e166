"""FCM message building and error classification (pure)."""

from __future__ import annotations

import datetime as dt
import json

import pytest

from pushgres.models import Action, Outcome, Request
from pushgres.providers.fcm.protocol import FcmRequestBuilder, parse_response

from .test_apns_protocol import NOW, row


def build(payload: object, **overrides: object) -> Request | Outcome:
    builder = FcmRequestBuilder(authority="fcm.googleapis.com", project_id="p1")
    return builder.build(
        row(platform="fcm", device_token="tok:1", payload=json.dumps(payload), **overrides),
        now=NOW,
    )


def test_message_gets_token_and_android_defaults() -> None:
    req = build(
        {"notification": {"title": "t"}, "data": {"k": "v"}},
        collapse_id="orders",
        expires_at=NOW + dt.timedelta(seconds=90),
        priority=5,
    )
    assert isinstance(req, Request)
    headers = dict(req.headers)
    assert headers[b":path"] == b"/v1/projects/p1/messages:send"
    body = json.loads(req.body)
    assert body["message"]["token"] == "tok:1"
    assert body["message"]["android"] == {
        "priority": "NORMAL",
        "collapse_key": "orders",
        "ttl": "90s",
    }


def test_caller_android_settings_are_kept() -> None:
    req = build({"android": {"priority": "normal", "ttl": "10s"}})
    assert isinstance(req, Request)
    assert json.loads(req.body)["message"]["android"] == {"priority": "normal", "ttl": "10s"}


@pytest.mark.parametrize(
    "payload",
    [
        {"data": {"n": 1}},
        {"data": {"google.x": "v"}},
        {"data": {"from": "v"}},
        {"android": {"ttl": "forever"}},
        {"android": {"ttl": "9999999s"}},
        [1, 2],
    ],
)
def test_invalid_messages_fail_locally(payload: object) -> None:
    out = build(payload)
    assert isinstance(out, Outcome)
    assert out.action is Action.FIX and out.reason == "InvalidPayload"


def test_size_limit() -> None:
    ok = build({"data": {"k": "x" * 4000}})
    assert isinstance(ok, Request)
    big = build({"data": {"k": "x" * 4100}})
    assert isinstance(big, Outcome) and big.reason == "PayloadTooLarge"


def envelope(
    code: int, status: str, error_code: str | None, message: str = "m", **extra: object
) -> bytes:
    details: list[dict[str, object]] = []
    if error_code:
        details.append(
            {
                "@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError",
                "errorCode": error_code,
            }
        )
    if extra.get("apns_reason"):
        details.append(
            {
                "@type": "type.googleapis.com/google.firebase.fcm.v1.ApnsError",
                "statusCode": 410,
                "reason": extra["apns_reason"],
            }
        )
    return json.dumps(
        {"error": {"code": code, "message": message, "status": status, "details": details}}
    ).encode()


def test_success_keeps_message_name() -> None:
    out = parse_response(200, {}, b'{"name":"projects/p1/messages/0:1"}')
    assert out.action is Action.SENT and out.provider_id == "projects/p1/messages/0:1"


@pytest.mark.parametrize(
    ("status", "env_status", "code", "message", "apns_reason", "action"),
    [
        (404, "NOT_FOUND", "UNREGISTERED", "Requested entity was not found.", None, Action.DEAD),
        (403, "PERMISSION_DENIED", "SENDER_ID_MISMATCH", "SenderId mismatch", None, Action.DEAD),
        (400, "INVALID_ARGUMENT", "INVALID_ARGUMENT", "bad ttl", None, Action.FIX),
        (
            400,
            "INVALID_ARGUMENT",
            "INVALID_ARGUMENT",
            "The registration token is not a valid FCM registration token",
            None,
            Action.DEAD,
        ),
        (
            400,
            "INVALID_ARGUMENT",
            "INVALID_ARGUMENT",
            "APNs device token is disabled.",
            "Unregistered",
            Action.DEAD,
        ),
        (429, "RESOURCE_EXHAUSTED", "QUOTA_EXCEEDED", "quota", None, Action.WAIT),
        (503, "UNAVAILABLE", "UNAVAILABLE", "x", None, Action.WAIT),
        (500, "INTERNAL", "INTERNAL", "x", None, Action.WAIT),
        (
            401,
            "UNAUTHENTICATED",
            "THIRD_PARTY_AUTH_ERROR",
            "Auth error from APNS",
            None,
            Action.CFG,
        ),
        (
            401,
            "UNAUTHENTICATED",
            None,
            "Request had invalid authentication credentials.",
            None,
            Action.AUTH,
        ),
        (403, "PERMISSION_DENIED", None, "Permission denied", None, Action.CFG),
        (404, "NOT_FOUND", None, "not found", None, Action.CFG),
        (400, "INVALID_ARGUMENT", None, "Invalid JSON payload received.", None, Action.FIX),
    ],
)
def test_error_classification(
    status: int,
    env_status: str,
    code: str | None,
    message: str,
    apns_reason: str | None,
    action: Action,
) -> None:
    out = parse_response(
        status, {}, envelope(status, env_status, code, message, apns_reason=apns_reason)
    )
    assert out.action is action
    assert out.provider_status == status


def test_retry_after_seconds_and_date() -> None:
    out = parse_response(
        429, {b"retry-after": b"7"}, envelope(429, "RESOURCE_EXHAUSTED", "QUOTA_EXCEEDED")
    )
    assert out.retry_after_s == 7.0
    date = b"Wed, 21 Oct 2099 07:28:00 GMT"
    out = parse_response(
        429, {b"retry-after": date}, envelope(429, "RESOURCE_EXHAUSTED", "QUOTA_EXCEEDED")
    )
    assert out.retry_after_s is not None and out.retry_after_s > 1000


@pytest.mark.parametrize(
    "payload",
    [{}, {"data": {"k": "v"}}, {"notification": {"title": 'é "q"'}, "apns": {"headers": {}}}],
)
def test_a_campaign_shares_one_checked_payload_and_each_row_gets_its_own_fields(
    payload: dict[str, object],
) -> None:
    builder = FcmRequestBuilder(authority="fcm.googleapis.com", project_id="p1")
    text = json.dumps(payload)
    first = builder.build(row(platform="fcm", device_token="a:1", payload=text), now=NOW)
    second = builder.build(
        row(
            platform="fcm",
            device_token="b:2",
            payload=text,
            priority=5,
            collapse_id="c",
            expires_at=NOW + dt.timedelta(seconds=30),
        ),
        now=NOW,
    )
    assert isinstance(first, Request) and isinstance(second, Request)
    assert json.loads(first.body) == {
        "message": {**payload, "token": "a:1", "android": {"priority": "HIGH"}}
    }
    assert json.loads(second.body) == {
        "message": {
            **payload,
            "token": "b:2",
            "android": {"priority": "NORMAL", "collapse_key": "c", "ttl": "30s"},
        }
    }
    # The cached payload is not changed by a row's fields.
    again = builder.build(row(platform="fcm", device_token="a:1", payload=text), now=NOW)
    assert isinstance(again, Request) and again.body == first.body


def test_a_bad_payload_is_refused_every_time_it_comes() -> None:
    builder = FcmRequestBuilder(authority="fcm.googleapis.com", project_id="p1")
    for _ in range(2):
        refused = builder.build(row(platform="fcm", payload='{"data": {"n": 1}}'), now=NOW)
        assert isinstance(refused, Outcome) and refused.reason == "InvalidPayload"
