"""The Python API for other services: ``enqueue`` notifications and read their ``outcome``.

``await enqueue(conn_or_pool, notifications)`` validates every notification (errors name its
index and the field), inserts them in one statement — or with ``COPY`` for large lists — inside
one transaction, and returns their ids in input order. A notification whose ``dedupe_key`` was
enqueued before for the same app is not inserted again; the id of the first one is returned.
The database wakes the daemon with one NOTIFY per statement.

``await outcome(conn, ids)`` returns each id's current :class:`NotificationOutcome`.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg

from . import codec
from .db.queries import QUERIES
from .exceptions import EnqueueError
from .models import PUSH_TYPES, Notification

__all__ = ["COPY_THRESHOLD", "NotificationOutcome", "enqueue", "outcome", "validate"]

COPY_THRESHOLD = 1000
_APP = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_HEX = re.compile(r"^[0-9A-Fa-f]+$")
_FCM_TOKEN = re.compile(r"^[A-Za-z0-9_:.-]+$")
_COPY_COLUMNS = [
    "id",
    "app",
    "platform",
    "device_token",
    "payload",
    "priority",
    "push_type",
    "collapse_id",
    "expires_at",
    "topic",
    "send_at",
    "dedupe_key",
    "max_attempts",
    "metadata",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class NotificationOutcome:
    id: int
    app: str
    platform: str
    status: str  # queued | sent | failed | token_invalid | expired
    provider_status: int | None
    reason: str | None
    provider_id: str | None
    attempts: int
    enqueued_at: dt.datetime
    finished_at: dt.datetime | None
    metadata: dict[str, Any] | None


def validate(n: Notification, index: int = 0) -> None:
    """Raise :class:`EnqueueError` naming the index and field of the first problem."""

    def bad(message: str) -> EnqueueError:
        return EnqueueError(f"notification {index}: {message}", index=index)

    if not isinstance(n.app, str) or not _APP.fullmatch(n.app):
        raise bad(f"app must be 1-64 of A-Z a-z 0-9 _ . -, got {n.app!r}")
    if n.platform not in ("apns", "fcm"):
        raise bad(f"platform must be 'apns' or 'fcm', got {n.platform!r}")
    token = n.device_token
    if not isinstance(token, str) or not 1 <= len(token) <= 4096:
        raise bad("device_token must be a string of 1-4096 characters")
    if n.platform == "apns" and not _HEX.fullmatch(token):
        raise bad("an APNs device_token is hexadecimal")
    if n.platform == "fcm" and not _FCM_TOKEN.fullmatch(token):
        raise bad("an FCM device_token holds only A-Z a-z 0-9 _ : . -")
    if not isinstance(n.payload, Mapping):
        raise bad("payload must be a JSON object")
    if n.platform == "apns" and not isinstance(n.payload.get("aps"), Mapping):
        raise bad("an APNs payload must hold an 'aps' object")
    if n.platform == "fcm" and {"token", "topic", "condition", "fid"} & set(n.payload):
        raise bad("an FCM payload is the v1 message without a target (token/topic/condition)")
    if n.priority not in (1, 5, 10):
        raise bad(f"priority must be 10, 5 or 1, got {n.priority!r}")
    if n.push_type is not None:
        if n.platform != "apns":
            raise bad("push_type applies to APNs only")
        if n.push_type not in PUSH_TYPES:
            raise bad(f"push_type {n.push_type!r} is not an APNs push type")
        if n.push_type == "background" and n.priority == 10:
            raise bad("a background push must have priority 5 or 1")
    if n.collapse_id is not None and not 1 <= len(n.collapse_id.encode()) <= 64:
        raise bad("collapse_id must be 1-64 bytes")
    if not isinstance(n.max_attempts, int) or not 1 <= n.max_attempts <= 100:
        raise bad("max_attempts must be 1..100")
    if n.metadata is not None and not isinstance(n.metadata, Mapping):
        raise bad("metadata must be a JSON object")
    for name in ("expires_at", "send_at"):
        value = getattr(n, name)
        if value is not None and (not isinstance(value, dt.datetime) or value.tzinfo is None):
            raise bad(f"{name} must be a timezone-aware datetime")


def _as_notification(item: Notification | Mapping[str, Any], index: int) -> Notification:
    if isinstance(item, Notification):
        return item
    try:
        return Notification.from_mapping(item)
    except (ValueError, TypeError) as exc:
        raise EnqueueError(f"notification {index}: {exc}", index=index) from None


def _json(value: Mapping[str, Any] | None, index: int, field: str) -> str | None:
    if value is None:
        return None
    try:
        return codec.dumps(value).decode()
    except TypeError as exc:
        raise EnqueueError(
            f"notification {index}: {field} is not JSON: {exc}", index=index
        ) from None


async def enqueue(
    conn: asyncpg.Connection | asyncpg.Pool,
    notifications: Iterable[Notification | Mapping[str, Any]],
) -> list[int]:
    """Enqueue notifications atomically; returns their ids in input order."""
    items = [_as_notification(item, i) for i, item in enumerate(notifications)]
    for i, n in enumerate(items):
        validate(n, i)
    if not items:
        return []
    columns = [
        (
            n.app,
            n.platform,
            n.device_token,
            _json(n.payload, i, "payload"),
            n.priority,
            n.push_type,
            n.collapse_id,
            n.expires_at,
            n.topic,
            n.send_at,
            n.dedupe_key,
            n.max_attempts,
            _json(n.metadata, i, "metadata"),
        )
        for i, n in enumerate(items)
    ]
    if isinstance(conn, asyncpg.Pool):
        async with conn.acquire() as c:
            return await _enqueue(c, items, columns)
    return await _enqueue(conn, items, columns)


async def _enqueue(
    conn: asyncpg.Connection, items: Sequence[Notification], rows: list[tuple[Any, ...]]
) -> list[int]:
    try:
        async with conn.transaction():
            reserved = [r[0] for r in await conn.fetch(QUERIES["reserve_ids"], len(rows))]
            if len(rows) >= COPY_THRESHOLD:
                now = dt.datetime.now(dt.UTC)
                records = [
                    (rid, *row[:9], row[9] or now, *row[10:])
                    for rid, row in zip(reserved, rows, strict=True)
                ]
                await conn.copy_records_to_table(
                    "queue", schema_name="pushgres", columns=_COPY_COLUMNS, records=records
                )
            else:
                await conn.execute(
                    QUERIES["enqueue_rows"], reserved, *map(list, zip(*rows, strict=True))
                )
            inserted = {r[0] for r in await conn.fetch(QUERIES["inserted_ids"], reserved)}
            ids = [rid if rid in inserted else None for rid in reserved]
            return await _resolve_duplicates(conn, items, ids)
    except asyncpg.IntegrityConstraintViolationError as exc:
        raise EnqueueError(f"the database rejected the notifications: {exc}") from None


async def _resolve_duplicates(
    conn: asyncpg.Connection, items: Sequence[Notification], ids: list[int | None]
) -> list[int]:
    missing: dict[str, list[str]] = {}
    for n, rid in zip(items, ids, strict=True):
        if rid is None and n.dedupe_key is not None:
            missing.setdefault(n.app, []).append(n.dedupe_key)
    found: dict[tuple[str, str], int] = {}
    for app, keys in missing.items():
        for record in await conn.fetch(QUERIES["dedupe_lookup"], keys, app):
            found[(app, record["dedupe_key"])] = int(record["id"])
    result = []
    for i, (n, rid) in enumerate(zip(items, ids, strict=True)):
        if rid is None:
            key = (n.app, n.dedupe_key or "")
            if key not in found:
                raise EnqueueError(f"notification {i} was not inserted", index=i)
            rid = found[key]
        result.append(rid)
    return result


async def outcome(
    conn: asyncpg.Connection | asyncpg.Pool, ids: Sequence[int]
) -> dict[int, NotificationOutcome]:
    """The current outcome of each id (ids unknown to the database are absent)."""
    records = await conn.fetch(QUERIES["outcome"], list(ids))
    return {
        int(r["id"]): NotificationOutcome(
            id=int(r["id"]),
            app=r["app"],
            platform=r["platform"],
            status=r["status"],
            provider_status=r["provider_status"],
            reason=r["reason"],
            provider_id=r["provider_id"],
            attempts=int(r["attempts"]),
            enqueued_at=r["enqueued_at"],
            finished_at=r["finished_at"],
            metadata=codec.loads(r["metadata"]) if r["metadata"] else None,
        )
        for r in records
    }
