"""The portable message rendered as an FCM HTTP v1 message, pure.

The result is the v1 ``message`` object without ``token`` (Google, "FCM HTTP v1 API",
``projects.messages`` resource: Message, Notification, AndroidConfig, AndroidNotification,
ApnsConfig). ``title``, ``body`` and ``image`` go to the cross-platform ``notification``;
``sound`` and ``badge`` to ``android.notification`` (``sound``, ``notification_count``);
``link`` and ``data`` to ``data``, whose values FCM takes as strings only (anything else is
sent as its compact JSON text). What Android has no field for (``subtitle``, ``thread``), and
``badge``/``sound`` for iOS devices reached through FCM, goes to ``apns.payload.aps`` (Apple's
payload keys ``alert.subtitle``, ``thread-id``, ``badge``, ``sound``), only when present. A
message without ``title``, ``body`` or ``image`` is a data-only message (no ``notification``,
no ``android.notification``): the app handles it silently. The notification's native overrides
are merged last (:func:`pushgres.message.merge`); the request builder then adds the token and
the row's priority, expiry and collapse key, and checks the result as it checks a native
message.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ... import codec
from ...message import merge

__all__ = ["TARGETS", "render"]

_NOTIFICATION_KEYS = ("title", "body", "image")
TARGETS = ("token", "topic", "condition", "fid")
"""The v1 message's target fields: the row's device token is the target, so none may be given."""


def render(message: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any] | str:
    """The FCM v1 message (without ``token``) for a checked portable ``message``, or a problem.

    ``message`` has passed :func:`pushgres.message.render_check`; ``overrides`` is a native v1
    message fragment (``{"android": {"notification": {"channel_id": "orders"}}}``) merged over
    the rendering.
    """
    result: dict[str, Any] = {}
    notification = {key: message[key] for key in _NOTIFICATION_KEYS if key in message}
    if notification:
        result["notification"] = notification
        android_notification: dict[str, Any] = {}
        if "sound" in message:
            android_notification["sound"] = message["sound"]
        if "badge" in message:
            android_notification["notification_count"] = message["badge"]
        if android_notification:
            result["android"] = {"notification": android_notification}
    data = message.get("data")
    if data is not None or "link" in message:
        strings: dict[str, str] = {}
        for key, value in (data or {}).items():
            strings[key] = value if isinstance(value, str) else codec.dumps(value).decode()
        if "link" in message:
            if "link" in strings:
                return "data key 'link' clashes with the message's 'link'"
            strings["link"] = message["link"]
        result["data"] = strings
    aps: dict[str, Any] = {}
    if "subtitle" in message:
        aps["alert"] = {"subtitle": message["subtitle"]}
    if "badge" in message:
        aps["badge"] = message["badge"]
    if "sound" in message:
        aps["sound"] = message["sound"]
    if "thread" in message:
        aps["thread-id"] = message["thread"]
    if aps:
        result["apns"] = {"payload": {"aps": aps}}
    if overrides:
        result = merge(result, overrides)
        named = [key for key in TARGETS if key in result]
        if named:
            return (
                f"the overrides name a target ({named[0]!r}): the row's device token is the target"
            )
    return result
