"""FCM HTTP v1 requests and responses, pure: a claimed row → (headers, body); response → Outcome.

The stored payload is the v1 ``message`` object without ``token``; the daemon adds the token and,
when the caller left them out, ``android.priority`` from the row's priority, ``android.ttl``
from its expiry and ``android.collapse_key`` from its collapse id. Local checks before sending
(Google, "FCM HTTP v1 API", Message resource): ``data`` values are strings, no reserved data keys, TTL range, size.
A row with a portable message (:mod:`pushgres.message`) is rendered first (:mod:`.render`), its
payload merged over the rendering as native overrides, then checked as a native message; the
checked rendering is cached per builder, since a fan-out's rows share one message.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping
from typing import Any

from ... import codec
from ...models import Action, ClaimedRow, Notification, Outcome, Request
from ...retry import parse_retry_after
from ..rendering import Renderings, check_enqueued
from .reasons import action_for, hint_for
from .render import TARGETS, render

__all__ = [
    "MAX_PAYLOAD_BYTES",
    "FcmRequestBuilder",
    "check_message",
    "check_notification",
    "parse_response",
]

_TOKEN = re.compile(r"^[A-Za-z0-9_:.-]+$")

MAX_PAYLOAD_BYTES = 4096
MAX_TTL_S = 2_419_200
_RESERVED_DATA_KEYS = ("from", "message_type")
_RESERVED_DATA_PREFIXES = ("google", "gcm")
_FCM_ERROR_TYPE = "type.googleapis.com/google.firebase.fcm.v1.FcmError"
_APNS_ERROR_TYPE = "type.googleapis.com/google.firebase.fcm.v1.ApnsError"


class FcmRequestBuilder:
    """Builds requests for one app (one Firebase project); the header list is built once.

    Every header of an FCM request is the same for the app (the per-message values travel in
    the body), so each request shares one header list. A native payload is parsed and checked
    once per distinct text (the rows of a campaign share one); when it sets no ``android``
    object, which is the common case, the row's body is spliced from the checked payload's
    encoded members, the token and the row's Android delivery fields, with no per-row parse or
    encode of the payload. A portable message's checked rendering is cached per ``(message,
    overrides)`` text; each row gets a shallow copy (of the message and its ``android``
    object) to add its token and Android delivery fields to.
    """

    def __init__(self, *, authority: str, project_id: str) -> None:
        self._static = [
            (b":method", b"POST"),
            (b":scheme", b"https"),
            (b":path", f"/v1/projects/{project_id}/messages:send".encode("ascii")),
            (b":authority", authority.encode("ascii")),
            (b"content-type", b"application/json"),
        ]
        self._renderings = Renderings(_finish)
        self._natives: dict[str, _Native | Outcome] = {}

    def _native(self, payload: str) -> _Native | Outcome:
        native = self._natives.get(payload)
        if native is None:
            if len(self._natives) >= _NATIVE_CACHE_LIMIT:  # per-row payloads: stay bounded
                self._natives.clear()
            native = self._natives[payload] = _check_native(payload)
        return native

    def build(self, row: ClaimedRow, *, now: dt.datetime) -> Request | Outcome:
        if row.message is None:
            native = self._native(row.payload)
            if isinstance(native, Outcome):
                return native
            if native.members is not None:
                return Request(
                    headers=self._static,
                    body=b'{"message":{"token":'
                    + codec.dumps(row.device_token)
                    + b',"android":'
                    + codec.dumps(_delivery({}, row, now))
                    + native.members
                    + b"}}",
                )
            message = dict(native.message)
            android = message.get("android")
            message["android"] = dict(android) if isinstance(android, dict) else android
        else:
            rendered = self._renderings.get(row.message, row.payload)
            if isinstance(rendered, Outcome):
                return rendered
            message = dict(rendered)
            android = rendered.get("android")
            message["android"] = {} if android is None else dict(android)
        android = message.get("android")
        if android is None:
            android = {}
            message["android"] = android
        if not isinstance(android, dict):
            return Outcome.invalid("InvalidPayload", "message.android must be an object")
        _delivery(android, row, now)
        message["token"] = row.device_token
        return Request(headers=self._static, body=codec.dumps({"message": message}))


_NATIVE_CACHE_LIMIT = 256


class _Native:
    """A checked native payload: the message, and its members encoded for splicing (``,``
    and the members without braces; empty for ``{}``) when it sets no ``android`` object."""

    __slots__ = ("members", "message")

    def __init__(self, message: dict[str, Any]) -> None:
        self.message = message
        self.members: bytes | None = None
        if "android" not in message:
            inner = codec.dumps(message)[1:-1]
            self.members = b"," + inner if inner else b""


def _check_native(payload: str) -> _Native | Outcome:
    try:
        message = codec.loads(payload)
    except codec.JSONDecodeError:
        return Outcome.invalid("InvalidPayload", "payload is not valid JSON")
    if not isinstance(message, dict):
        return Outcome.invalid("InvalidPayload", "FCM payload must be a v1 message object")
    return _refusal(message) or _Native(message)


def _delivery(android: dict[str, Any], row: ClaimedRow, now: dt.datetime) -> dict[str, Any]:
    """``android`` with the row's priority, collapse key and TTL where the caller left them out."""
    android.setdefault("priority", "HIGH" if row.priority == 10 else "NORMAL")
    if row.collapse_id is not None:
        android.setdefault("collapse_key", row.collapse_id)
    if row.expires_at is not None and "ttl" not in android:
        remaining = int((row.expires_at - now).total_seconds())
        android["ttl"] = f"{max(0, min(remaining, MAX_TTL_S))}s"
    return android


def _finish(message: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any] | Outcome:
    """A checked portable message and its overrides as a checked v1 message (without token)."""
    rendered = render(message, overrides)
    if isinstance(rendered, str):
        return Outcome.invalid("InvalidMessage", rendered)
    android = rendered.get("android")
    if android is not None and not isinstance(android, dict):
        return Outcome.invalid("InvalidPayload", "message.android must be an object")
    return _refusal(rendered) or rendered


def _refusal(message: Mapping[str, Any]) -> Outcome | None:
    """The outcome failing a v1 message before it is sent (bad content, too large), or None."""
    problem = _check_message(message)
    if problem is not None:
        return Outcome.invalid("InvalidPayload", problem)
    size = _content_size(message)
    if size > MAX_PAYLOAD_BYTES:
        return Outcome.invalid("PayloadTooLarge", f"message content is {size} bytes, limit 4096")
    return None


def _check_message(message: Mapping[str, Any]) -> str | None:
    data = message.get("data")
    if data is not None:
        if not isinstance(data, dict):
            return "message.data must be an object of strings"
        for key, value in data.items():
            if not isinstance(value, str):
                return f"message.data.{key} must be a string, got {type(value).__name__}"
            if key in _RESERVED_DATA_KEYS or key.startswith(_RESERVED_DATA_PREFIXES):
                return f"message.data.{key} is a reserved key"
    android = message.get("android")
    if isinstance(android, dict):
        ttl = android.get("ttl")
        if ttl is not None:
            if not isinstance(ttl, str) or not ttl.endswith("s"):
                return "message.android.ttl must be a duration string such as '3600s'"
            try:
                seconds = float(ttl[:-1])
            except ValueError:
                return f"message.android.ttl is not a duration: {ttl!r}"
            if not 0 <= seconds <= MAX_TTL_S:
                return "message.android.ttl must be 0s..2419200s"
    return None


def _content_size(message: Mapping[str, Any]) -> int:
    size = 0
    for key in ("data", "notification"):
        if key in message:
            size += len(codec.dumps(message[key]))
    apns = message.get("apns")
    if isinstance(apns, dict) and "payload" in apns:
        size = max(size, len(codec.dumps(apns["payload"])))
    return size


def parse_response(status: int, headers: Mapping[bytes, bytes], body: bytes) -> Outcome:
    """Classify an FCM response (errorCode, else envelope status, else HTTP status)."""
    try:
        data = codec.loads(body) if body else None
    except codec.JSONDecodeError:
        data = None
    if status == 200:
        name = data.get("name") if isinstance(data, dict) else None
        return Outcome(
            action=Action.SENT,
            provider_status=200,
            provider_id=name if isinstance(name, str) else None,
        )
    error = data.get("error") if isinstance(data, dict) else None
    error_code = envelope_status = message = apns_reason = None
    if isinstance(error, dict):
        envelope_status = error.get("status") if isinstance(error.get("status"), str) else None
        message = error.get("message") if isinstance(error.get("message"), str) else None
        details = error.get("details")
        for detail in details if isinstance(details, list) else []:
            if not isinstance(detail, dict):
                continue
            if detail.get("@type") == _FCM_ERROR_TYPE and isinstance(detail.get("errorCode"), str):
                error_code = detail["errorCode"]
            elif detail.get("@type") == _APNS_ERROR_TYPE and isinstance(detail.get("reason"), str):
                apns_reason = detail["reason"]
    action = action_for(status, error_code, envelope_status, message, apns_reason)
    reason = error_code or envelope_status or f"HTTP{status}"
    if action is Action.DEAD and error_code == "INVALID_ARGUMENT" and apns_reason:
        reason = f"INVALID_ARGUMENT/{apns_reason}"
    if action is Action.CFG:
        hint = hint_for(reason)
        if hint:
            message = f"{message} ({hint})" if message else hint
    return Outcome(
        action=action,
        provider_status=status,
        reason=reason,
        retry_after_s=parse_retry_after(headers.get(b"retry-after")),
        detail=message,
    )


def check_notification(n: Notification) -> str | None:
    """What is wrong with ``n`` for FCM at enqueue time, or None (generic checks done)."""
    if not _TOKEN.fullmatch(n.device_token):
        return "an FCM device_token holds only A-Z a-z 0-9 _ : . -"
    if n.message is None:
        if any(key in n.payload for key in TARGETS):
            return "an FCM payload is the v1 message without a target (token/topic/condition)"
    else:
        problem = check_message(n.message, n.payload)
        if problem is not None:
            return problem
    if n.push_type is not None:
        return "push_type applies to APNs only"
    return None


def check_message(message: object, overrides: object) -> str | None:
    """What is wrong with a portable message and its native overrides for this provider."""
    return check_enqueued(message, overrides, _finish)
