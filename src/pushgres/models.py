"""Domain values shared by every layer: notifications, claimed rows and provider outcomes.

Outcomes are values, not exceptions: a dead token in a batch of 1,000 is routine and is
returned as an :class:`Outcome`, never raised.
"""

from __future__ import annotations

import datetime as dt
import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "QUEUE_SHARDS",
    "Action",
    "ClaimedRow",
    "InvalidToken",
    "Notification",
    "Outcome",
    "Platform",
    "Request",
    "Requeue",
    "ResultRecord",
    "Status",
]


QUEUE_SHARDS = 16
"""The queue's shards: a row's is ``hashtext(device_token)`` modulo this (schema 0009,
``pushgres.queue_shards()``)."""


class Platform(enum.StrEnum):
    APNS = "apns"
    FCM = "fcm"


class Status(enum.StrEnum):
    """A notification's recorded state; every state but QUEUED is terminal."""

    QUEUED = "queued"
    SENT = "sent"
    FAILED = "failed"
    TOKEN_INVALID = "token_invalid"
    EXPIRED = "expired"
    SUPPRESSED = "suppressed"  # held back by a frequency cap, never sent


class Action(enum.StrEnum):
    """What the daemon does with a provider answer."""

    SENT = "sent"  # accepted by the provider
    DEAD = "dead"  # the device token is invalid: record it, never retry
    FIX = "fix"  # permanent for this message (bad input): fail it
    CFG = "cfg"  # credential/configuration problem: retry with backoff, alert the operator
    AUTH = "auth"  # refresh credentials and/or move to a new connection, then retry
    WAIT = "wait"  # transient: retry later with backoff
    CONN = "conn"  # connection-level: retry at once on another connection


@dataclass(frozen=True, slots=True, kw_only=True)
class Notification:
    """One notification as another service enqueues it.

    ``payload`` is the provider's native payload: for APNs the whole JSON body with ``aps``;
    for FCM the HTTP v1 ``message`` object without ``token``. With a portable ``message``
    (:mod:`pushgres.message`), the provider renders the native payload from it at send time
    and ``payload`` holds only native overrides merged over the rendering (``{}``, the
    default: none).
    """

    app: str
    platform: str
    device_token: str
    payload: Mapping[str, Any] = field(default_factory=dict)
    priority: int = 10
    push_type: str | None = None
    collapse_id: str | None = None
    expires_at: dt.datetime | None = None
    topic: str | None = None
    send_at: dt.datetime | None = None
    dedupe_key: str | None = None
    max_attempts: int = 5
    metadata: Mapping[str, Any] | None = None
    message: Mapping[str, Any] | None = None
    category: str | None = None
    """One of the config's ``[categories]``; None: the app's default category."""
    timezone: str | None = None
    """The device's IANA time zone for quiet hours and local time; None: the registry's, else
    the app's."""
    local_send_at: dt.datetime | None = None
    """A wall-clock time (naive) at which to send in the device's time zone."""

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> Notification:
        """Build from a dict (JSON Lines input, Python callers); unknown keys are an error."""
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown field(s): {', '.join(unknown)}")
        required: tuple[str, ...] = ("app", "platform", "device_token")
        if data.get("message") is None:
            required += ("payload",)
        missing = [k for k in required if k not in data]
        if missing:
            raise ValueError(f"missing field(s): {', '.join(missing)}")
        values = dict(data)
        if values.get("payload") is None and values.get("message") is not None:
            values["payload"] = {}  # no native overrides
        local = values.get("local_send_at")
        if isinstance(local, str):
            try:
                values["local_send_at"] = dt.datetime.fromisoformat(local)
            except ValueError as exc:
                raise ValueError(f"local_send_at: not an ISO 8601 local time: {local!r}") from exc
        for key in ("expires_at", "send_at"):
            value = values.get(key)
            if isinstance(value, str):
                values[key] = _parse_time(value, key)
            elif isinstance(value, int | float) and not isinstance(value, bool):
                values[key] = dt.datetime.fromtimestamp(value, dt.UTC)
        return cls(**values)


def _parse_time(value: str, key: str) -> dt.datetime:
    try:
        parsed = dt.datetime.fromisoformat(value)
    except ValueError as exc:
        raise ValueError(f"{key}: not an ISO 8601 time: {value!r}") from exc
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.UTC)
    return parsed


@dataclass(slots=True)
class ClaimedRow:
    """A queue row claimed by the daemon for one send attempt.

    The fields are in the order of ``claim_batch``'s RETURNING list, so a claimed record
    becomes a row positionally (``ClaimedRow(*record)``).
    """

    id: int
    app: str
    platform: str
    device_token: str
    payload: str
    priority: int
    push_type: str | None
    collapse_id: str | None
    expires_at: dt.datetime | None
    topic: str | None
    send_at: dt.datetime
    dedupe_key: str | None
    max_attempts: int
    metadata: str | None
    message: str | None
    attempts: int
    last_reason: str | None
    enqueued_at: dt.datetime
    user_id: str | None
    group_id: int | None
    probe: bool
    category: str | None = None
    timezone: str | None = None
    local_send_at: dt.datetime | None = None
    transactional: bool = False
    is_expired: bool = False
    is_token_invalid: bool = False
    device_user: str | None = None
    device_timezone: str | None = None
    delivered_attempt: int | None = None
    """The attempt the provider accepted already, in a batch that never committed, if any."""

    @classmethod
    def fresh(
        cls,
        *,
        id: int,
        app: str,
        platform: str,
        device_token: str,
        payload: str,
        now: dt.datetime,
        **fields: Any,
    ) -> ClaimedRow:
        """A row as first claimed: enqueued and due at ``now``, defaults for the rest.

        For tests, fakes and benchmarks; ``fields`` override any other column.
        """
        values: dict[str, Any] = {
            "priority": 10,
            "push_type": None,
            "collapse_id": None,
            "expires_at": None,
            "topic": None,
            "send_at": now,
            "dedupe_key": None,
            "max_attempts": 5,
            "metadata": None,
            "message": None,
            "attempts": 0,
            "last_reason": None,
            "enqueued_at": now,
            "user_id": None,
            "group_id": None,
            "probe": False,
        }
        values.update(fields)
        return cls(
            id=id, app=app, platform=platform, device_token=device_token, payload=payload, **values
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class Outcome:
    """What one send attempt came to.

    ``provider_status`` is the HTTP status (None when no response came back); ``reason`` the
    provider's reason string or ours; ``retry_after_s`` a server-requested wait;
    ``provider_timestamp`` APNs's 410 timestamp. ``detail`` is for logs (and, for outcomes
    found without a response, the result); ``note`` is what the result records after the
    provider's reason when the provider's code alone would mislead.
    """

    action: Action
    provider_status: int | None = None
    reason: str | None = None
    provider_id: str | None = None
    retry_after_s: float | None = None
    provider_timestamp: dt.datetime | None = None
    # Extra detail for logs (never credentials).
    detail: str | None = field(default=None, compare=False)
    # Recorded with the reason in the notification's result ("BadDeviceToken: <note>").
    note: str | None = field(default=None, compare=False)

    @classmethod
    def invalid(cls, reason: str, detail: str) -> Outcome:
        """A row that cannot be sent as it is (found before any network call)."""
        return cls(action=Action.FIX, reason=reason, detail=detail)


# Request and ResultRecord are made once per notification on the hot path: plain slotted
# records (a frozen dataclass costs four times as much to build), never mutated after.


@dataclass(slots=True)
class Request:
    """One provider request, ready for the HTTP/2 layer."""

    headers: list[tuple[bytes, bytes]]
    body: bytes


@dataclass(slots=True)
class ResultRecord:
    """One terminal outcome to append to ``pushgres.results``."""

    row: ClaimedRow
    status: str
    provider_status: int | None
    reason: str | None
    provider_id: str | None
    attempts: int


@dataclass(frozen=True, slots=True)
class Requeue:
    """A row going back to the queue for another attempt after ``delay_s`` -- or, when
    ``deferred``, held back by a guardrail (quiet hours, local time, a frequency cap) before
    any attempt."""

    row: ClaimedRow
    delay_s: float
    reason: str
    attempts: int
    deferred: bool = False


@dataclass(frozen=True, slots=True)
class InvalidToken:
    app: str
    device_token: str
    reason: str
    provider_timestamp: dt.datetime | None
    # An uninstall probe's answer: the device is marked uninstalled, not invalid.
    probe: bool = False
