"""APNs request building and response classification (pure)."""

from __future__ import annotations

import datetime as dt
import uuid

import pytest

from pushgres.models import Action, ClaimedRow, Outcome, Request
from pushgres.providers.apns.protocol import ApnsRequestBuilder, apns_id_for, parse_response
from pushgres.providers.apns.reasons import APNS_REASONS

NOW = dt.datetime(2026, 11, 23, tzinfo=dt.UTC)
TOKEN = "ab" * 32


def row(**overrides: object) -> ClaimedRow:
    """An APNs row as first claimed at ``NOW``; ``overrides`` change any column."""
    values: dict[str, object] = {
        "id": 42,
        "app": "ios",
        "platform": "apns",
        "device_token": TOKEN,
        "payload": '{"aps": {"alert": "hi"}}',
    }
    values.update(overrides)
    return ClaimedRow.fresh(now=NOW, **values)  # type: ignore[arg-type]


def build(**overrides: object) -> Request | Outcome:
    builder = ApnsRequestBuilder(authority="api.push.apple.com", topic="com.example.app")
    return builder.build(row(**overrides), now=NOW)


def test_apns_id_is_a_canonical_uuid_carrying_the_id() -> None:
    value = apns_id_for(42)
    assert str(uuid.UUID(value)) == value
    assert int(value.replace("-", "")[-16:], 16) == 42
    assert apns_id_for(43) != value


def test_headers_and_compact_body() -> None:
    req = build(collapse_id="c1", expires_at=NOW + dt.timedelta(hours=1))
    assert isinstance(req, Request)
    headers = dict(req.headers)
    assert headers[b":method"] == b"POST"
    assert headers[b":path"] == b"/3/device/" + TOKEN.encode()
    assert headers[b"apns-topic"] == b"com.example.app"
    assert headers[b"apns-push-type"] == b"alert"
    assert headers[b"apns-priority"] == b"10"
    assert headers[b"apns-collapse-id"] == b"c1"
    assert headers[b"apns-expiration"] == str(int(NOW.timestamp()) + 3600).encode()
    assert headers[b"apns-id"] == apns_id_for(42).encode()
    assert req.body == b'{"aps":{"alert":"hi"}}'
    assert len([n for n, _ in req.headers if n == b"apns-topic"]) == 1


@pytest.mark.parametrize(
    ("push_type", "topic"),
    [
        ("voip", "com.example.app.voip"),
        ("complication", "com.example.app.complication"),
        ("liveactivity", "com.example.app.push-type.liveactivity"),
        ("location", "com.example.app.location-query"),
        ("pushtotalk", "com.example.app.voip-ptt"),
        ("widgets", "com.example.app.push-type.widgets"),
        ("fileprovider", "com.example.app.pushkit.fileprovider"),
    ],
)
def test_topic_suffix_follows_push_type(push_type: str, topic: str) -> None:
    req = build(push_type=push_type)
    assert isinstance(req, Request)
    assert dict(req.headers)[b"apns-topic"] == topic.encode()


def test_topic_override_wins() -> None:
    req = build(topic="com.other.app")
    assert isinstance(req, Request)
    assert dict(req.headers)[b"apns-topic"] == b"com.other.app"


def test_content_available_only_payload_is_background_priority_5() -> None:
    req = build(payload='{"aps": {"content-available": 1}}')
    assert isinstance(req, Request)
    headers = dict(req.headers)
    assert headers[b"apns-push-type"] == b"background"
    assert headers[b"apns-priority"] == b"5"


def payload_of_size(size: int) -> str:
    skeleton = '{"aps":{"alert":""}}'
    return '{"aps":{"alert":"' + "x" * (size - len(skeleton)) + '"}}'


def test_payload_limit_4096_and_voip_5120() -> None:
    assert isinstance(build(payload=payload_of_size(4096)), Request)
    too_big = build(payload=payload_of_size(4097))
    assert isinstance(too_big, Outcome)
    assert too_big.action is Action.FIX and too_big.reason == "PayloadTooLarge"
    assert isinstance(build(payload=payload_of_size(5120), push_type="voip"), Request)
    assert isinstance(build(payload=payload_of_size(5121), push_type="voip"), Outcome)


def test_bad_rows_fail_with_a_reason() -> None:
    for payload in ('{"alert": 1}', "[1]", '{"aps": 3}'):
        out = build(payload=payload)
        assert isinstance(out, Outcome) and out.reason == "InvalidPayload"
    out = build(collapse_id="x" * 65)
    assert isinstance(out, Outcome) and out.reason == "BadCollapseId"


def test_success_response_keeps_apns_id() -> None:
    out = parse_response(200, {b"apns-id": b"abc"}, b"")
    assert out.action is Action.SENT and out.provider_id == "abc"


def test_410_keeps_apples_timestamp() -> None:
    out = parse_response(410, {}, b'{"reason":"Unregistered","timestamp":1763800000000}')
    assert out.action is Action.DEAD
    assert out.reason == "Unregistered"
    assert out.provider_timestamp == dt.datetime.fromtimestamp(1763800000, dt.UTC)


@pytest.mark.parametrize("reason", sorted(APNS_REASONS))
def test_every_documented_reason_maps_through_the_table(reason: str) -> None:
    out = parse_response(400, {}, ('{ "reason" : "' + reason + '" }').encode())
    assert out.reason == reason
    assert out.action is APNS_REASONS[reason]


def test_unknown_reason_falls_back_on_status() -> None:
    assert parse_response(503, {}, b'{"reason":"Brand New"}').action is Action.WAIT
    assert parse_response(400, {}, b"not json").action is Action.FIX
    assert parse_response(410, {}, b"").action is Action.DEAD
