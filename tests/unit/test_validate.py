"""Enqueue validation: every rule names the notification's index and the field."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from pushgres.api import as_notification, validate
from pushgres.exceptions import EnqueueError
from pushgres.models import Notification

TOKEN = "ab" * 32
GOOD: dict[str, Any] = {
    "app": "ios",
    "platform": "apns",
    "device_token": TOKEN,
    "payload": {"aps": {"alert": "hi"}},
}


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"app": "bad app"}, "app must be 1-64"),
        ({"platform": "web"}, "platform must be 'apns' or 'fcm'"),
        ({"device_token": ""}, "device_token must be a string of 1-4096"),
        ({"device_token": "xyz"}, "an APNs device_token is hexadecimal"),
        ({"platform": "fcm", "device_token": "a b"}, "an FCM device_token holds only"),
        ({"payload": [1]}, "payload must be a JSON object"),
        ({"payload": {"alert": 1}}, "an APNs payload must hold an 'aps' object"),
        ({"platform": "fcm", "device_token": "t", "payload": {"topic": "x"}}, "without a target"),
        ({"priority": 7}, "priority must be 10, 5 or 1"),
        (
            {"platform": "fcm", "device_token": "t", "payload": {}, "push_type": "alert"},
            "APNs only",
        ),
        ({"push_type": "shout"}, "is not an APNs push type"),
        ({"push_type": "background"}, "background push must have priority 5 or 1"),
        ({"collapse_id": "x" * 65}, "collapse_id must be 1-64 bytes"),
        ({"max_attempts": 0}, "max_attempts must be 1..100"),
        ({"metadata": [1]}, "metadata must be a JSON object"),
        ({"send_at": dt.datetime(2030, 1, 1)}, "send_at must be a timezone-aware datetime"),
        ({"priority": True}, "priority must be 10, 5 or 1, got True"),
        ({"max_attempts": True}, "max_attempts must be 1..100"),
        ({"push_type": ["alert"]}, "push_type must be a string"),
        ({"collapse_id": 5}, "collapse_id must be a string"),
        ({"collapse_id": "a\x00"}, "collapse_id must not contain a NUL character"),
        ({"topic": 5}, "topic must be a string"),
        ({"topic": "com.example app"}, "topic must start with A-Z a-z 0-9"),
        ({"topic": ".com.example"}, "topic must start with A-Z a-z 0-9"),
        ({"dedupe_key": 5}, "dedupe_key must be a string"),
        ({"dedupe_key": ""}, "dedupe_key must be 1-256 characters"),
        ({"dedupe_key": "k" * 257}, "dedupe_key must be 1-256 characters"),
        ({"dedupe_key": "a\x00"}, "dedupe_key must not contain a NUL character"),
    ],
)
def test_each_rule(changes: dict[str, Any], message: str) -> None:
    notification = Notification(**{**GOOD, **changes})
    with pytest.raises(EnqueueError, match=message) as info:
        validate(notification, 3)
    assert str(info.value).startswith("notification 3: ")
    assert info.value.index == 3


def test_good_notifications_pass() -> None:
    validate(Notification(**GOOD))
    validate(Notification(**{**GOOD, "push_type": "background", "priority": 5}))
    validate(Notification(app="a", platform="fcm", device_token="x:1", payload={}))
    validate(Notification(**GOOD, topic="com.example.app-1_x", dedupe_key="k" * 256))


def test_from_mapping_parses_times_and_rejects_unknown_fields() -> None:
    n = Notification.from_mapping({**GOOD, "expires_at": "2030-01-01T00:00:00", "send_at": 0})
    assert n.expires_at == dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
    assert n.send_at == dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
    with pytest.raises(ValueError, match="missing field"):
        Notification.from_mapping({"app": "a"})
    with pytest.raises(ValueError, match="not an ISO 8601 time"):
        Notification.from_mapping({**GOOD, "send_at": "tomorrow"})


def test_as_notification_names_the_index_and_field() -> None:
    assert as_notification(GOOD, 0) == Notification(**GOOD)
    with pytest.raises(EnqueueError, match=r"notification 2: send_at: 1e\+20 is not a Unix time"):
        as_notification({**GOOD, "send_at": 1e20}, 2)
    with pytest.raises(EnqueueError, match="notification 1: expires_at: -1e\\+20 is not a Unix"):
        as_notification({**GOOD, "expires_at": -1e20}, 1)
    with pytest.raises(EnqueueError, match="notification 0: expected a Notification or a mapping"):
        as_notification([1, 2], 0)  # type: ignore[arg-type]
    with pytest.raises(EnqueueError, match="notification 4: unknown field"):
        as_notification({**GOOD, "colour": 1}, 4)
