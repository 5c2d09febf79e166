"""The portable message: one provider-neutral notification, rendered per provider at send time.

A portable message is a JSON object of **content keys**, which each provider renders into its
native payload (``providers/apns/render.py``, ``providers/fcm/render.py``):

========== ============================== ===========================================
key        value                          meaning
========== ============================== ===========================================
title      string                         the alert's title
subtitle   string                         a second line under the title
body       string                         the alert's text
data       object                         custom key/values for the app
badge      integer >= 0                   the app icon's badge count
sound      non-empty string               the sound to play ("default" or a file name)
image      https URL                      a picture to show with the alert
link       non-empty string               a deep link for the app to open
thread     non-empty string               groups related notifications together
========== ============================== ===========================================

and, at enqueue only, **delivery keys**, which are not rendered: the enqueue path turns them
into the row's columns (:func:`split`) and stores the message without them:

============= ================================ =====================================
collapse_key  string of 1-64 UTF-8 bytes       the row's collapse id
ttl           integer seconds, 1..2419200      the row's expiry: now (or send_at) + ttl
priority      "high" or "normal"               the row's priority, 10 or 5
============= ================================ =====================================

:func:`check` judges a message as a caller hands it in, delivery keys allowed;
:func:`render_check` judges a stored message, content keys only. :func:`merge` lays a
notification's native overrides over a rendering (RFC 7396, JSON Merge Patch). Nothing here
knows a provider.
"""

from __future__ import annotations

import datetime as dt
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "CONTENT_KEYS",
    "DELIVERY_KEYS",
    "MAX_COLLAPSE_KEY_BYTES",
    "MAX_TTL_S",
    "Delivery",
    "check",
    "merge",
    "render_check",
    "split",
]

CONTENT_KEYS = (
    "title",
    "subtitle",
    "body",
    "data",
    "badge",
    "sound",
    "image",
    "link",
    "thread",
)
"""The keys a provider renders, in the order problems are reported."""
DELIVERY_KEYS = ("collapse_key", "ttl", "priority")
"""The keys the enqueue path turns into the row's columns; never stored with the message."""

MAX_COLLAPSE_KEY_BYTES = 64  # Apple's apns-collapse-id limit, the stricter of the two
MAX_TTL_S = 2_419_200  # 28 days: FCM's longest android.ttl
MAX_BADGE = 2**31 - 1  # FCM's notification_count is an int32
_PRIORITIES = {"high": 10, "normal": 5}
_TEXT_KEYS = ("title", "subtitle", "body")
_NAME_KEYS = ("sound", "link", "thread")
_CONTENT = frozenset(CONTENT_KEYS)
_DELIVERY = frozenset(DELIVERY_KEYS)
_KNOWN = ", ".join((*CONTENT_KEYS, *DELIVERY_KEYS))


@dataclass(frozen=True, slots=True)
class Delivery:
    """A message's delivery keys as the row's columns (None: the key was absent)."""

    collapse_id: str | None = None
    ttl_s: int | None = None
    priority: int | None = None  # 10 ("high") or 5 ("normal")

    def expires_at(self, start: dt.datetime) -> dt.datetime | None:
        """The row's expiry for a message sent from ``start`` (None without a ``ttl``)."""
        if self.ttl_s is None:
            return None
        return start + dt.timedelta(seconds=self.ttl_s)


def check(message: object) -> str | None:
    """What is wrong with a message as a caller enqueues it (delivery keys allowed), or None.

    The problem names the key: ``"unknown key 'titel' (known: …)"``, ``"'badge' must be an
    integer >= 0, got -1"``.
    """
    return _check(message, stored=False)


def render_check(message: object) -> str | None:
    """What is wrong with a stored message (content keys only), or None.

    A delivery key in a stored message means the enqueue path did not :func:`split` it.
    """
    return _check(message, stored=True)


def split(message: Mapping[str, Any]) -> tuple[dict[str, Any], Delivery]:
    """The content to store and the delivery keys as columns.

    Raises:
        ValueError: the message fails :func:`check` (the text is its problem).
    """
    problem = check(message)
    if problem is not None:
        raise ValueError(problem)
    content = {key: value for key, value in message.items() if key not in _DELIVERY}
    priority = message.get("priority")
    delivery = Delivery(
        collapse_id=message.get("collapse_key"),
        ttl_s=message.get("ttl"),
        priority=None if priority is None else _PRIORITIES[priority],
    )
    return content, delivery


def merge(base: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """``overrides`` laid over ``base`` as a JSON Merge Patch (RFC 7396, section 2).

    Objects merge key by key, any other value (arrays included) replaces, and a null deletes
    the key. Returns a new dict; neither argument is changed (parts of ``base`` that the
    overrides leave alone are shared with the result).
    """
    result = dict(base)
    for key, value in overrides.items():
        if value is None:
            result.pop(key, None)
        elif isinstance(value, Mapping):
            current = result.get(key)
            result[key] = merge(current if isinstance(current, Mapping) else {}, value)
        else:
            result[key] = value
    return result


def _check(message: object, *, stored: bool) -> str | None:
    if not isinstance(message, Mapping):
        return f"a message is a JSON object, got {_kind(message)}"
    content = False
    for key in message:
        if key in _CONTENT:
            content = True
        elif key in _DELIVERY:
            if stored:
                return (
                    f"{key!r} is an enqueue option: the enqueue path turns it into the row's "
                    "columns and stores the message without it"
                )
        else:
            return f"unknown key {key!r} (known: {_KNOWN})"
    if not content:
        return "nothing to send: give at least one of " + ", ".join(CONTENT_KEYS)
    for key in _TEXT_KEYS:
        if key in message and not isinstance(message[key], str):
            return f"{key!r} must be a string, got {_kind(message[key])}"
    for key in _NAME_KEYS:
        if key in message:
            value = message[key]
            if not isinstance(value, str) or not value:
                return f"{key!r} must be a non-empty string, got {_kind(value)}"
    if "data" in message:
        data = message["data"]
        if not isinstance(data, Mapping):
            return f"'data' must be an object, got {_kind(data)}"
        for name in data:
            if not isinstance(name, str):
                return f"'data' keys must be strings, got {_kind(name)}"
    if "badge" in message:
        badge = message["badge"]
        if not _is_int(badge) or not 0 <= badge <= MAX_BADGE:
            return f"'badge' must be an integer >= 0, got {_shown(badge)}"
    if "image" in message:
        image = message["image"]
        if not isinstance(image, str) or not _is_https_url(image):
            return f"'image' must be an https URL, got {_shown(image)}"
        if "title" not in message and "body" not in message:
            return "'image' is shown with an alert: give a 'title' or a 'body' too"
    return None if stored else _check_delivery(message)


def _check_delivery(message: Mapping[str, Any]) -> str | None:
    if "collapse_key" in message:
        key = message["collapse_key"]
        if not isinstance(key, str) or not 1 <= len(key.encode()) <= MAX_COLLAPSE_KEY_BYTES:
            return (
                f"'collapse_key' must be a string of 1-{MAX_COLLAPSE_KEY_BYTES} UTF-8 bytes, "
                f"got {_shown(key)}"
            )
    if "ttl" in message:
        ttl = message["ttl"]
        if not _is_int(ttl) or not 1 <= ttl <= MAX_TTL_S:
            return f"'ttl' must be whole seconds 1..{MAX_TTL_S}, got {_shown(ttl)}"
    if "priority" in message and message["priority"] not in _PRIORITIES:
        return f'\'priority\' must be "high" or "normal", got {_shown(message["priority"])}'
    return None


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_https_url(value: str) -> bool:
    try:
        parts = urllib.parse.urlsplit(value)
    except ValueError:
        return False
    return parts.scheme == "https" and bool(parts.hostname) and not any(c.isspace() for c in value)


def _kind(value: object) -> str:
    """The JSON name of a value's type, for problem texts."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string" if value else "an empty string"
    if isinstance(value, Mapping):
        return "an object"
    if isinstance(value, list | tuple):
        return "an array"
    return type(value).__name__


def _shown(value: object) -> str:
    """A short rendering of a bad value: the value for numbers and short strings."""
    if isinstance(value, bool) or value is None:
        return _kind(value)
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str) and len(value) <= 80:
        return repr(value)
    return _kind(value)
