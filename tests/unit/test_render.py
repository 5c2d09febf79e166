"""The portable message: its checks, its merge, and each provider's rendering (pure)."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import pytest

from pushgres import message as portable
from pushgres.models import Action, Notification, Outcome, Request
from pushgres.providers.apns import protocol as apns
from pushgres.providers.apns.render import render as render_apns
from pushgres.providers.fcm import protocol as fcm
from pushgres.providers.fcm.render import render as render_fcm

from .test_apns_protocol import NOW, TOKEN, row

FULL = {
    "title": "Your cart",
    "subtitle": "2 items",
    "body": "Still thinking it over?",
    "data": {"cart": "c-1", "items": 2},
    "badge": 3,
    "sound": "default",
    "image": "https://cdn.example.com/cart.png",
    "link": "shop://cart/c-1",
    "thread": "cart",
}


# -- check and split ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("message", "problem"),
    [
        ([], "a message is a JSON object, got an array"),
        ({}, "nothing to send: give at least one of title"),
        ({"titel": "x"}, "unknown key 'titel' (known: title, subtitle"),
        ({"ttl": 60}, "nothing to send"),
        ({"title": 1}, "'title' must be a string, got a number"),
        ({"sound": ""}, "'sound' must be a non-empty string, got an empty string"),
        ({"data": ["a"]}, "'data' must be an object, got an array"),
        ({"badge": -1}, "'badge' must be an integer >= 0, got -1"),
        ({"badge": True}, "'badge' must be an integer >= 0, got a boolean"),
        ({"badge": 2**31}, "'badge' must be an integer >= 0"),
        ({"image": "http://cdn.example.com/a.png"}, "'image' must be an https URL"),
        ({"image": "https:///a.png"}, "'image' must be an https URL"),
        ({"body": "x", "collapse_key": "k" * 65}, "'collapse_key' must be a string of 1-64"),
        ({"body": "x", "collapse_key": "é" * 33}, "'collapse_key' must be a string of 1-64"),
        ({"body": "x", "ttl": -1}, "'ttl' must be whole seconds 1..2419200, got -1"),
        ({"body": "x", "ttl": 0}, "'ttl' must be whole seconds 1..2419200, got 0"),
        ({"image": "https://cdn.example.com/a.png"}, "'image' is shown with an alert"),
        ({"body": "x", "ttl": 2_419_201}, "'ttl' must be whole seconds"),
        ({"body": "x", "ttl": 1.5}, "'ttl' must be whole seconds"),
        ({"body": "x", "priority": 10}, '\'priority\' must be "high" or "normal", got 10'),
    ],
)
def test_check_names_the_key_and_the_problem(message: object, problem: str) -> None:
    found = portable.check(message)
    assert found is not None and found.startswith(problem), found


def test_a_full_message_passes_and_splits_into_content_and_columns() -> None:
    message = {**FULL, "collapse_key": "cart-c-1", "ttl": 3600, "priority": "normal"}
    assert portable.check(message) is None
    content, delivery = portable.split(message)
    assert content == FULL
    assert delivery == portable.Delivery(collapse_id="cart-c-1", ttl_s=3600, priority=5)
    assert delivery.expires_at(NOW) == NOW + dt.timedelta(hours=1)
    assert portable.split({"body": "x"})[1] == portable.Delivery()
    assert portable.Delivery().expires_at(NOW) is None


def test_split_refuses_what_check_refuses() -> None:
    with pytest.raises(ValueError, match="unknown key 'tilte'"):
        portable.split({"tilte": "x"})


def test_a_stored_message_carries_no_delivery_keys() -> None:
    assert portable.render_check({"body": "x"}) is None
    problem = portable.render_check({"body": "x", "ttl": 60})
    assert problem is not None and problem.startswith("'ttl' is an enqueue option")


# RFC 7396, Appendix A: the merge's examples, each (target, patch, result).
RFC_7396_EXAMPLES: list[tuple[dict[str, Any], dict[str, Any], dict[str, Any]]] = [
    ({"a": "b"}, {"a": "c"}, {"a": "c"}),
    ({"a": "b"}, {"b": "c"}, {"a": "b", "b": "c"}),
    ({"a": "b"}, {"a": None}, {}),
    ({"a": "b", "b": "c"}, {"a": None}, {"b": "c"}),
    ({"a": ["b"]}, {"a": "c"}, {"a": "c"}),
    ({"a": "c"}, {"a": ["b"]}, {"a": ["b"]}),
    ({"a": {"b": "c"}}, {"a": {"b": "d", "c": None}}, {"a": {"b": "d"}}),
    ({"a": [{"b": "c"}]}, {"a": [1]}, {"a": [1]}),
    ({"e": None}, {"a": 1}, {"e": None, "a": 1}),
    ({"a": "foo"}, {"a": {"bb": {"ccc": None}}}, {"a": {"bb": {}}}),
]


@pytest.mark.parametrize(("target", "patch", "result"), RFC_7396_EXAMPLES)
def test_merge_follows_rfc_7396(
    target: dict[str, Any], patch: dict[str, Any], result: dict[str, Any]
) -> None:
    before = json.dumps(target)
    assert portable.merge(target, patch) == result
    assert json.dumps(target) == before  # the base is not changed


# -- APNs rendering ---------------------------------------------------------------------------


def test_apns_renders_every_key_where_apple_documents_it() -> None:
    assert render_apns(FULL, {}) == {
        "aps": {
            "alert": {
                "title": "Your cart",
                "subtitle": "2 items",
                "body": "Still thinking it over?",
            },
            "badge": 3,
            "sound": "default",
            "thread-id": "cart",
            "mutable-content": 1,
        },
        "image": "https://cdn.example.com/cart.png",
        "link": "shop://cart/c-1",
        "cart": "c-1",
        "items": 2,
    }


def test_apns_data_only_is_a_background_update() -> None:
    assert render_apns({"data": {"sync": "1"}}, {}) == {
        "aps": {"content-available": 1},
        "sync": "1",
    }


def test_apns_overrides_merge_over_the_rendering() -> None:
    rendered = render_apns(
        {"body": "x", "sound": "default"},
        {"aps": {"interruption-level": "time-sensitive", "sound": None}},
    )
    assert rendered == {"aps": {"alert": {"body": "x"}, "interruption-level": "time-sensitive"}}


@pytest.mark.parametrize(
    ("message", "overrides", "problem"),
    [
        ({"body": "x", "data": {"aps": 1}}, {}, "data key 'aps' is reserved"),
        ({"body": "x", "link": "a://b", "data": {"link": "c"}}, {}, "data key 'link' clashes"),
        ({"body": "x"}, {"aps": None}, "the overrides must leave an 'aps' object"),
        ({"body": "x"}, {"aps": "x"}, "the overrides must leave an 'aps' object"),
    ],
)
def test_apns_rendering_problems_are_named(
    message: dict[str, Any], overrides: dict[str, Any], problem: str
) -> None:
    rendered = render_apns(message, overrides)
    assert isinstance(rendered, str) and rendered.startswith(problem), rendered


def test_apns_builder_sends_the_rendering_with_its_push_type() -> None:
    builder = apns.ApnsRequestBuilder(authority="api.push.apple.com", topic="com.example.app")
    stored = json.dumps({"data": {"sync": "1"}})
    request = builder.build(row(message=stored, payload="{}", priority=10), now=NOW)
    assert isinstance(request, Request)
    headers = dict(request.headers)
    assert headers[b"apns-push-type"] == b"background"
    assert headers[b"apns-priority"] == b"5"  # Apple: background pushes at priority 5
    assert json.loads(request.body) == {"aps": {"content-available": 1}, "sync": "1"}
    alert = builder.build(
        row(message=json.dumps({"body": "hi"}), payload='{"aps": {"badge": 1}}'), now=NOW
    )
    assert isinstance(alert, Request)
    assert dict(alert.headers)[b"apns-push-type"] == b"alert"
    assert json.loads(alert.body) == {"aps": {"alert": {"body": "hi"}, "badge": 1}}


@pytest.mark.parametrize(
    ("stored", "overrides", "reason", "detail"),
    [
        ("{", "{}", "InvalidMessage", "message is not valid JSON"),
        ('{"titel": "x"}', "{}", "InvalidMessage", "unknown key 'titel'"),
        ('{"body": "x", "ttl": 1}', "{}", "InvalidMessage", "'ttl' is an enqueue option"),
        ('{"body": "x"}', "[", "InvalidPayload", "payload (native overrides) is not valid JSON"),
        ('{"body": "x"}', "[]", "InvalidPayload", "payload (native overrides) must be an object"),
        ('{"body": "x"}', '{"aps": null}', "InvalidMessage", "the overrides must leave"),
    ],
)
def test_a_stored_message_that_cannot_be_rendered_fails_the_row(
    stored: str, overrides: str, reason: str, detail: str
) -> None:
    for builder in (
        apns.ApnsRequestBuilder(authority="api.push.apple.com", topic="com.example.app"),
        fcm.FcmRequestBuilder(authority="fcm.googleapis.com", project_id="p"),
    ):
        if detail.startswith("the overrides") and isinstance(builder, fcm.FcmRequestBuilder):
            continue  # an FCM message has no top-level 'aps' to keep
        outcome = builder.build(row(message=stored, payload=overrides), now=NOW)
        assert isinstance(outcome, Outcome)
        assert outcome.action is Action.FIX and outcome.reason == reason
        assert outcome.detail is not None and outcome.detail.startswith(detail), outcome.detail


# -- FCM rendering ----------------------------------------------------------------------------


def test_fcm_renders_every_key_where_google_documents_it() -> None:
    assert render_fcm(FULL, {}) == {
        "notification": {
            "title": "Your cart",
            "body": "Still thinking it over?",
            "image": "https://cdn.example.com/cart.png",
        },
        "android": {"notification": {"sound": "default", "notification_count": 3}},
        "data": {"cart": "c-1", "items": "2", "link": "shop://cart/c-1"},
        "apns": {
            "payload": {
                "aps": {
                    "alert": {"subtitle": "2 items"},
                    "badge": 3,
                    "sound": "default",
                    "thread-id": "cart",
                }
            }
        },
    }


def test_fcm_data_only_has_no_notification() -> None:
    assert render_fcm({"data": {"pushgres": "uninstall-probe"}}, {}) == {
        "data": {"pushgres": "uninstall-probe"}
    }


def test_fcm_overrides_merge_and_may_not_name_a_target() -> None:
    rendered = render_fcm({"body": "x"}, {"android": {"notification": {"channel_id": "orders"}}})
    assert rendered == {
        "notification": {"body": "x"},
        "android": {"notification": {"channel_id": "orders"}},
    }
    problem = render_fcm({"body": "x"}, {"topic": "news"})
    assert isinstance(problem, str) and problem.startswith("the overrides name a target ('topic')")


def test_fcm_builder_fills_each_row_without_touching_the_shared_rendering() -> None:
    builder = fcm.FcmRequestBuilder(authority="fcm.googleapis.com", project_id="p")
    stored = json.dumps({"title": "Hi", "sound": "default"})
    first = builder.build(
        row(
            platform="fcm",
            device_token="tok-1",
            message=stored,
            payload="{}",
            priority=5,
            collapse_id="c",
            expires_at=NOW + dt.timedelta(seconds=60),
        ),
        now=NOW,
    )
    second = builder.build(
        row(platform="fcm", device_token="tok-2", message=stored, payload="{}"), now=NOW
    )
    assert isinstance(first, Request) and isinstance(second, Request)
    assert json.loads(first.body)["message"] == {
        "notification": {"title": "Hi"},
        "android": {
            "notification": {"sound": "default"},
            "priority": "NORMAL",
            "collapse_key": "c",
            "ttl": "60s",
        },
        "apns": {"payload": {"aps": {"sound": "default"}}},
        "token": "tok-1",
    }
    assert json.loads(second.body)["message"] == {
        "notification": {"title": "Hi"},
        "android": {"notification": {"sound": "default"}, "priority": "HIGH"},
        "apns": {"payload": {"aps": {"sound": "default"}}},
        "token": "tok-2",
    }


def test_fcm_builder_checks_the_rendering_as_a_native_message() -> None:
    builder = fcm.FcmRequestBuilder(authority="fcm.googleapis.com", project_id="p")
    reserved = builder.build(
        row(platform="fcm", device_token="t", message='{"data": {"from": "x"}}', payload="{}"),
        now=NOW,
    )
    assert isinstance(reserved, Outcome) and reserved.reason == "InvalidPayload"
    assert reserved.detail == "message.data.from is a reserved key"
    large = builder.build(
        row(
            platform="fcm", device_token="t", message=json.dumps({"body": "x" * 5000}), payload="{}"
        ),
        now=NOW,
    )
    assert isinstance(large, Outcome) and large.reason == "PayloadTooLarge"


def test_renderings_are_cached_and_bounded() -> None:
    builder = fcm.FcmRequestBuilder(authority="fcm.googleapis.com", project_id="p")
    cache = builder._renderings
    stored = json.dumps({"body": "x"})
    cache.get(stored, "{}")
    assert cache.get(stored, "{}") is cache.get(stored, "{}")
    for i in range(300):
        cache.get(json.dumps({"body": str(i)}), "{}")
    assert len(cache._cache) <= 256


# -- enqueue-time checks ------------------------------------------------------------------------


def notification(platform: str, message: object, payload: object) -> Notification:
    token = TOKEN if platform == "apns" else "fcm-token-1"
    return Notification(
        app="a",
        platform=platform,
        device_token=token,
        payload=payload,  # type: ignore[arg-type]
        message=message,  # type: ignore[arg-type]
    )


@pytest.mark.parametrize(
    ("platform", "message", "payload", "problem"),
    [
        ("apns", {"body": "x"}, {}, None),
        ("apns", {"body": "x", "ttl": 60, "priority": "high"}, {}, None),
        ("apns", {"bdy": "x"}, {}, "message: unknown key 'bdy'"),
        ("apns", {"body": "x"}, [], "payload (native overrides) must be an object"),
        ("apns", {"body": "x", "data": {"aps": 1}}, {}, "data key 'aps' is reserved"),
        ("fcm", {"body": "x"}, {}, None),
        ("fcm", {"body": "x"}, {"token": "t"}, "the overrides name a target ('token')"),
        ("fcm", {"data": {"google.x": "1"}}, {}, "message.data.google.x is a reserved key"),
        ("fcm", {"body": "x" * 5000}, {}, "message content is"),
    ],
)
def test_enqueue_checks_render_the_message(
    platform: str, message: object, payload: object, problem: str | None
) -> None:
    check = apns.check_notification if platform == "apns" else fcm.check_notification
    found = check(notification(platform, message, payload))
    if problem is None:
        assert found is None
    else:
        assert found is not None and found.startswith(problem), found
