"""APNs requests and responses, pure: a claimed row → (headers, body); a response → Outcome.

Follows Apple's "Sending notification requests to APNs": every
``apns-*`` header, the topic suffix per push type, priority rules, the payload size limit
(4096 bytes, 5120 for VoIP) checked before a stream is opened, and an ``apns-id`` derived from
the notification id so a duplicate delivery is recognisable. A row with a portable message
(:mod:`pushgres.message`) is rendered first (:mod:`.render`), its payload merged over the
rendering as native overrides; the rendering is cached per builder, since a fan-out's rows
share one message. No I/O here.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping
from typing import Any

from ... import codec
from ...models import Action, ClaimedRow, Notification, Outcome, Request
from ..rendering import Renderings, check_enqueued
from .reasons import action_for, hint_for
from .render import render

__all__ = [
    "MAX_PAYLOAD_BYTES",
    "MAX_VOIP_PAYLOAD_BYTES",
    "NEVER_INDEXED_HEADERS",
    "PUSH_TYPES",
    "TOPIC_SUFFIXES",
    "ApnsRequestBuilder",
    "apns_id_for",
    "check_message",
    "check_notification",
    "parse_response",
]

PUSH_TYPES = frozenset(
    {
        "alert",
        "background",
        "complication",
        "controls",
        "fileprovider",
        "liveactivity",
        "location",
        "mdm",
        "pushtotalk",
        "voip",
        "widgets",
    }
)
"""The ``apns-push-type`` values Apple defines ("Sending notification requests to APNs")."""
_HEX = re.compile(r"^[0-9A-Fa-f]+$")
MAX_PAYLOAD_BYTES = 4096
MAX_VOIP_PAYLOAD_BYTES = 5120
MAX_COLLAPSE_ID_BYTES = 64
# Values that change per message would churn the peer's HPACK dynamic table (RFC 7541 7.1.3).
NEVER_INDEXED_HEADERS = frozenset({b":path", b"apns-id", b"apns-collapse-id", b"apns-expiration"})

# apns-push-type → suffix appended to the bundle id in apns-topic (Apple, "Sending notification
# requests to APNs": apns-push-type).
TOPIC_SUFFIXES: dict[str, str] = {
    "alert": "",
    "background": "",
    "complication": ".complication",
    "controls": ".push-type.controls",
    "fileprovider": ".pushkit.fileprovider",
    "liveactivity": ".push-type.liveactivity",
    "location": ".location-query",
    "mdm": "",
    "pushtotalk": ".voip-ptt",
    "voip": ".voip",
    "widgets": ".push-type.widgets",
}

_ID_PREFIX = b"70757368-6772-6573-"  # "pushgres" in hex


def apns_id_for(notification_id: int) -> str:
    """A canonical lowercase UUID that carries the notification id in its last 16 hex digits."""
    return _apns_id(notification_id).decode("ascii")


def _apns_id(notification_id: int) -> bytes:
    n = notification_id & 0xFFFFFFFFFFFFFFFF
    return _ID_PREFIX + b"%04x-%012x" % (n >> 48, n & 0xFFFFFFFFFFFF)


class ApnsRequestBuilder:
    """Builds requests for one app; the header pieces that repeat are built once and reused.

    Only ``:path`` (the device token), ``apns-id`` and the optional expiration and collapse id
    are made per notification; the ``apns-push-type``/``apns-topic``/``apns-priority`` trio is
    cached per combination (a handful per app), a native payload's checked body per text (the
    rows of a campaign share one), and a portable message's rendering per ``(message,
    overrides)`` text (the rows of a fan-out share one).
    """

    def __init__(self, *, authority: str, topic: str) -> None:
        self._topic = topic
        self._pseudo = (
            (b":method", b"POST"),
            (b":scheme", b"https"),
            (b":authority", authority.encode("ascii")),
        )
        self._trios: dict[tuple[str, str | None, int], tuple[tuple[bytes, bytes], ...]] = {}
        self._renderings = Renderings(_finish)
        self._natives: dict[str, tuple[bytes, str] | Outcome] = {}

    def _trio(
        self, push_type: str, topic: str | None, priority: int
    ) -> tuple[tuple[bytes, bytes], ...]:
        key = (push_type, topic, priority)
        trio = self._trios.get(key)
        if trio is None:
            if len(self._trios) >= 256:  # per-row topics: keep the cache bounded
                self._trios.clear()
            full_topic = topic or (self._topic + TOPIC_SUFFIXES[push_type])
            trio = self._trios[key] = (
                (b"apns-push-type", push_type.encode("ascii")),
                (b"apns-topic", full_topic.encode("ascii")),
                (b"apns-priority", str(priority).encode("ascii")),
            )
        return trio

    def build(self, row: ClaimedRow, *, now: dt.datetime) -> Request | Outcome:
        """The request for ``row``, or a FIX outcome naming what is wrong with the row."""
        if row.message is None:
            native = self._natives.get(row.payload)
            if native is None:
                if len(self._natives) >= _NATIVE_CACHE_LIMIT:  # per-row payloads: stay bounded
                    self._natives.clear()
                native = self._natives[row.payload] = _check_native(row.payload)
        else:
            native = self._renderings.get(row.message, row.payload)
        if isinstance(native, Outcome):
            return native
        body, default_push_type = native
        push_type = row.push_type or default_push_type
        if push_type not in TOPIC_SUFFIXES:
            return Outcome.invalid("InvalidPushType", f"unknown push type {push_type!r}")
        priority = row.priority
        if priority == 10 and push_type == "background":
            priority = 5
        if len(body) > MAX_PAYLOAD_BYTES:
            limit = MAX_VOIP_PAYLOAD_BYTES if push_type == "voip" else MAX_PAYLOAD_BYTES
            if len(body) > limit:
                return Outcome.invalid(
                    "PayloadTooLarge", f"payload is {len(body)} bytes, limit {limit}"
                )
        collapse_id = row.collapse_id
        if collapse_id is not None and len(collapse_id.encode()) > MAX_COLLAPSE_ID_BYTES:
            return Outcome.invalid("BadCollapseId", "collapse id longer than 64 bytes")
        headers = [
            *self._pseudo,
            (b":path", b"/3/device/" + row.device_token.lower().encode("ascii")),
            (b"apns-id", _apns_id(row.id)),
            *self._trio(push_type, row.topic, priority),
        ]
        if row.expires_at is not None:
            expiration = max(1, int(row.expires_at.timestamp()))
            headers.append((b"apns-expiration", str(expiration).encode("ascii")))
        if collapse_id is not None:
            headers.append((b"apns-collapse-id", collapse_id.encode("utf-8")))
        return Request(headers=headers, body=body)


_NATIVE_CACHE_LIMIT = 256


def _check_native(payload: str) -> tuple[bytes, str] | Outcome:
    """A native payload's text as a compact body and default push type, or what is wrong."""
    try:
        parsed = codec.loads(payload)
    except codec.JSONDecodeError:
        return Outcome.invalid("InvalidPayload", "payload is not valid JSON")
    aps = parsed.get("aps") if type(parsed) is dict else None
    if type(aps) is not dict:
        return Outcome.invalid(
            "InvalidPayload", "APNs payload must be an object with an 'aps' object"
        )
    return codec.dumps(parsed), _default_push_type(aps)


def _finish(message: dict[str, Any], overrides: dict[str, Any]) -> tuple[bytes, str] | Outcome:
    """A checked portable message and its overrides as a body and default push type."""
    payload = render(message, overrides)
    if isinstance(payload, str):
        return Outcome.invalid("InvalidMessage", payload)
    return codec.dumps(payload), _default_push_type(payload["aps"])


def _default_push_type(aps: Mapping[str, Any]) -> str:
    """``background`` for a content-available-only payload, else ``alert``."""
    if aps.get("content-available") == 1 and not ({"alert", "badge", "sound"} & set(aps)):
        return "background"
    return "alert"


def parse_response(status: int, headers: Mapping[bytes, bytes], body: bytes) -> Outcome:
    """Turn an APNs response into an :class:`Outcome` through the reason table."""
    apns_id = headers.get(b"apns-id")
    provider_id = apns_id.decode("ascii", "replace") if apns_id else None
    if status == 200:
        return Outcome(action=Action.SENT, provider_status=200, provider_id=provider_id)
    reason: str | None = None
    timestamp: dt.datetime | None = None
    if body:
        try:
            data = codec.loads(body)
        except codec.JSONDecodeError:
            data = None
        if isinstance(data, dict):
            raw_reason = data.get("reason")
            reason = raw_reason if isinstance(raw_reason, str) else None
            ts = data.get("timestamp")
            if isinstance(ts, int | float) and not isinstance(ts, bool) and ts > 0:
                timestamp = dt.datetime.fromtimestamp(ts / 1000, dt.UTC)
    action = action_for(status, reason)
    return Outcome(
        action=action,
        provider_status=status,
        reason=reason or f"HTTP{status}",
        provider_id=provider_id,
        provider_timestamp=timestamp,
        detail=hint_for(reason) if action is Action.CFG else None,
    )


def check_notification(n: Notification) -> str | None:
    """What is wrong with ``n`` for APNs at enqueue time, or None (generic checks done)."""
    if not _HEX.fullmatch(n.device_token):
        return "an APNs device_token is hexadecimal"
    if n.message is None:
        if not isinstance(n.payload.get("aps"), Mapping):
            return "an APNs payload must hold an 'aps' object"
    else:
        problem = check_message(n.message, n.payload)
        if problem is not None:
            return problem
    if n.push_type is not None:
        if n.push_type not in PUSH_TYPES:
            return f"push_type {n.push_type!r} is not an APNs push type"
        if n.push_type == "background" and n.priority == 10:
            return "a background push must have priority 5 or 1"
    return None


def check_message(message: object, overrides: object) -> str | None:
    """What is wrong with a portable message and its native overrides for this provider."""
    return check_enqueued(message, overrides, _finish)
