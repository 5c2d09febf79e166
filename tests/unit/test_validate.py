"""Enqueue validation: every rule names the notification's index and the field."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from pushgres.api import validate
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


def test_from_mapping_parses_times_and_rejects_unknown_fields() -> None:
    n = Notification.from_mapping({**GOOD, "expires_at": "2030-01-01T00:00:00", "send_at": 0})
    assert n.expires_at == dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
    assert n.send_at == dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
    with pytest.raises(ValueError, match="missing field"):
        Notification.from_mapping({"app": "a"})
    with pytest.raises(ValueError, match="not an ISO 8601 time"):
        Notification.from_mapping({**GOOD, "send_at": "tomorrow"})
