"""The portable message rendered as an APNs payload, pure.

Follows Apple's "Generating a remote notification" and its payload key reference
("Payload key reference"): the alert strings go to ``aps.alert`` (``title``, ``subtitle``,
``body``), ``badge`` and ``sound`` to ``aps``, ``thread`` to ``aps.thread-id``. An ``image``
sets ``aps.mutable-content`` so the app's Notification Service Extension ("Modifying content
in newly delivered notifications") runs and can fetch the top-level ``image`` URL; ``link``
is a top-level custom key, and ``data``'s keys are top-level custom keys beside ``aps``. A
message with no alert, badge or sound is a background update (``aps.content-available`` = 1,
"Pushing background updates to your App"), which the request builder sends with push type
``background`` and priority 5. The notification's native overrides are merged last
(:func:`pushgres.message.merge`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ...message import merge

__all__ = ["render"]

_ALERT_KEYS = ("title", "subtitle", "body")


def render(message: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any] | str:
    """The APNs JSON payload for a checked portable ``message``, or what is wrong.

    ``message`` has passed :func:`pushgres.message.render_check`; ``overrides`` is a native
    APNs payload fragment (``{"aps": {"interruption-level": "time-sensitive"}}``) merged over
    the rendering. The result always holds an ``aps`` object.
    """
    aps: dict[str, Any] = {}
    alert = {key: message[key] for key in _ALERT_KEYS if key in message}
    if alert:
        aps["alert"] = alert
    if "badge" in message:
        aps["badge"] = message["badge"]
    if "sound" in message:
        aps["sound"] = message["sound"]
    if not aps:
        aps["content-available"] = 1
    if "thread" in message:
        aps["thread-id"] = message["thread"]
    payload: dict[str, Any] = {"aps": aps}
    if "image" in message:
        aps["mutable-content"] = 1
        payload["image"] = message["image"]
    if "link" in message:
        payload["link"] = message["link"]
    data = message.get("data")
    if data:
        for key, value in data.items():
            if key in payload:
                if key == "aps":
                    return "data key 'aps' is reserved: APNs keeps its own keys in 'aps'"
                return f"data key {key!r} clashes with the message's {key!r}"
            payload[key] = value
    if overrides:
        payload = merge(payload, overrides)
        if type(payload.get("aps")) is not dict:
            return "the overrides must leave an 'aps' object in the APNs payload"
    return payload
