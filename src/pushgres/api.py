"""The Python API for other services: ``enqueue`` notifications and read their ``outcome``.

``await enqueue_detailed(conn_or_pool, notifications)`` validates every notification (errors
name its index and the field), inserts them in one statement — or with ``COPY`` for large
lists — inside one transaction, and returns one :class:`Enqueued` per notification in input
order: its ``id`` and whether it was a ``duplicate``. A notification whose ``(app,
dedupe_key)`` was enqueued before — or earlier in the same call — is not inserted again: it
gets the id of the notification holding the key and ``duplicate=True``, so the caller can
still read that notification's outcome. ``await enqueue(...)`` is the same and returns just the
ids. The database wakes the daemon with one NOTIFY per statement.

``await outcome(conn, ids)`` returns each id's current :class:`NotificationOutcome`, in the
order of ``ids``.

Both raise :class:`~pushgres.exceptions.SchemaError` on a database without the pushgres
schema, and :class:`~pushgres.exceptions.EnqueueError` for a notification that is invalid.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg

from . import codec
from . import message as portable
from .config import is_time_zone
from .db import store
from .exceptions import EnqueueError
from .models import Notification
from .providers import PROVIDERS

__all__ = [
    "COPY_THRESHOLD",
    "Enqueued",
    "NotificationOutcome",
    "as_notification",
    "enqueue",
    "enqueue_detailed",
    "outcome",
    "validate",
]

COPY_THRESHOLD = store.COPY_THRESHOLD
EARLIEST_OFFSET = dt.timedelta(hours=14)  # the furthest time zone ahead of UTC (Pacific/Kiritimati)
LATEST_OFFSET = dt.timedelta(hours=12)  # the furthest behind (Etc/GMT+12)
_APP = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_TOPIC = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass(frozen=True, slots=True, kw_only=True)
class Enqueued:
    """What became of one notification handed to :func:`enqueue_detailed`.

    ``id`` is the notification's id: the new row's, or — when ``duplicate`` is true — the id of
    the notification already enqueued with the same ``(app, dedupe_key)``, whose outcome
    :func:`outcome` reports.
    """

    id: int
    duplicate: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class NotificationOutcome:
    id: int
    app: str
    platform: str
    status: str  # queued | sent | failed | token_invalid | expired | suppressed
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
    if n.platform not in PROVIDERS:
        known = " or ".join(repr(p) for p in sorted(PROVIDERS))
        raise bad(f"platform must be {known}, got {n.platform!r}")
    token = n.device_token
    if not isinstance(token, str) or not 1 <= len(token) <= 4096:
        raise bad("device_token must be a string of 1-4096 characters")
    if not isinstance(n.payload, Mapping):
        raise bad("payload must be a JSON object")
    if isinstance(n.priority, bool) or n.priority not in (1, 5, 10):
        raise bad(f"priority must be 10, 5 or 1, got {n.priority!r}")
    if n.push_type is not None and not isinstance(n.push_type, str):
        raise bad(f"push_type must be a string, got {n.push_type!r}")
    problem = PROVIDERS[n.platform].check(n)
    if problem is not None:
        raise bad(problem)
    if n.collapse_id is not None:
        _check_text(n.collapse_id, "collapse_id", bad)
        if not 1 <= len(n.collapse_id.encode()) <= 64:
            raise bad("collapse_id must be 1-64 bytes")
    if n.topic is not None:
        _check_text(n.topic, "topic", bad)
        if not _TOPIC.fullmatch(n.topic):
            raise bad(
                "topic must start with A-Z a-z 0-9 and hold only A-Z a-z 0-9 _ . -, "
                f"got {n.topic!r}"
            )
    if n.dedupe_key is not None:
        _check_text(n.dedupe_key, "dedupe_key", bad)
        if not 1 <= len(n.dedupe_key) <= 256:
            raise bad("dedupe_key must be 1-256 characters")
    if (
        isinstance(n.max_attempts, bool)
        or not isinstance(n.max_attempts, int)
        or not 1 <= n.max_attempts <= 100
    ):
        raise bad("max_attempts must be 1..100")
    if n.metadata is not None and not isinstance(n.metadata, Mapping):
        raise bad("metadata must be a JSON object")
    if n.message is not None and not isinstance(n.message, Mapping):
        raise bad("message must be a JSON object")
    for name in ("expires_at", "send_at"):
        value = getattr(n, name)
        if value is not None and (not isinstance(value, dt.datetime) or value.tzinfo is None):
            raise bad(f"{name} must be a timezone-aware datetime")
    if n.category is not None and (
        not isinstance(n.category, str) or not _APP.fullmatch(n.category)
    ):
        raise bad(f"category must be 1-64 of A-Z a-z 0-9 _ . -, got {n.category!r}")
    if n.timezone is not None and (not isinstance(n.timezone, str) or not is_time_zone(n.timezone)):
        raise bad(
            f"timezone must be an IANA time zone name such as 'Europe/Paris', got {n.timezone!r}"
        )
    local = n.local_send_at
    if local is not None and (not isinstance(local, dt.datetime) or local.tzinfo is not None):
        raise bad(
            "local_send_at must be a wall-clock time without a UTC offset, such as "
            "'2026-12-24T09:00' (it is read in each device's own time zone)"
        )


def _check_text(value: object, name: str, bad: Callable[[str], EnqueueError]) -> None:
    if not isinstance(value, str):
        raise bad(f"{name} must be a string, got {value!r}")
    if "\x00" in value:
        raise bad(f"{name} must not contain a NUL character (PostgreSQL text cannot hold one)")


def _has_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, Mapping):
        return any(_has_nul(k) or _has_nul(v) for k, v in value.items())
    if isinstance(value, list | tuple):
        return any(_has_nul(v) for v in value)
    return False


def as_notification(item: Notification | Mapping[str, Any], index: int = 0) -> Notification:
    """``item`` as a :class:`Notification`; :class:`EnqueueError` names its index and field."""
    if isinstance(item, Notification):
        return item
    if not isinstance(item, Mapping):
        raise EnqueueError(
            f"notification {index}: expected a Notification or a mapping, "
            f"got {type(item).__name__}",
            index=index,
        )
    for key in ("expires_at", "send_at"):
        value = item.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool):
            try:
                dt.datetime.fromtimestamp(value, dt.UTC)
            except (OverflowError, OSError, ValueError):
                raise EnqueueError(
                    f"notification {index}: {key}: {value!r} is not a Unix time in years 1-9999",
                    index=index,
                ) from None
    try:
        return Notification.from_mapping(item)
    except (ValueError, TypeError) as exc:
        raise EnqueueError(f"notification {index}: {exc}", index=index) from None


def json_text(value: Mapping[str, Any] | None, field: str, index: int | None = None) -> str | None:
    """``value`` as the JSON text a jsonb parameter takes (None stays None).

    Raises:
        EnqueueError: it is not JSON, or holds U+0000 (named with ``field``, and the
            notification's ``index`` when given).
    """
    if value is None:
        return None
    where = "" if index is None else f"notification {index}: "
    if not isinstance(value, Mapping):
        raise EnqueueError(f"{where}{field} must be a JSON object", index=index)
    try:
        text = codec.dumps(value).decode()
    except TypeError as exc:
        raise EnqueueError(f"{where}{field} is not JSON: {exc}", index=index) from None
    # jsonb cannot hold U+0000; the escape in the text is only a hint (it may be an escaped
    # backslash followed by "u0000"), the value itself decides.
    if "\\u0000" in text and _has_nul(value):
        raise EnqueueError(
            f"{where}{field} contains a NUL character (\\u0000), which PostgreSQL jsonb "
            "cannot hold",
            index=index,
        )
    return text


async def enqueue(
    conn: asyncpg.Connection | asyncpg.Pool,
    notifications: Iterable[Notification | Mapping[str, Any]],
) -> list[int]:
    """Enqueue notifications atomically; returns their ids in input order.

    A duplicate (by ``dedupe_key``) gets the id of the notification it duplicates; use
    :func:`enqueue_detailed` to know which ones were duplicates.
    """
    return [e.id for e in await enqueue_detailed(conn, notifications)]


async def enqueue_detailed(
    conn: asyncpg.Connection | asyncpg.Pool,
    notifications: Iterable[Notification | Mapping[str, Any]],
) -> list[Enqueued]:
    """Enqueue notifications atomically; one :class:`Enqueued` per notification, in order."""
    items = [as_notification(item, i) for i, item in enumerate(notifications)]
    for i, n in enumerate(items):
        validate(n, i)
    if not items:
        return []
    columns = [_columns(n, i) for i, n in enumerate(items)]
    if isinstance(conn, asyncpg.Pool):
        async with conn.acquire() as c:
            return await _enqueue(c, items, columns)
    return await _enqueue(conn, items, columns)


def _columns(n: Notification, i: int) -> tuple[Any, ...]:
    """A notification as the row an enqueue writes (``ENQUEUE_COLUMNS`` but ``id``).

    A portable message's delivery keys become the row's columns (they win over the fields):
    ``collapse_key`` its collapse id, ``priority`` its priority, ``ttl`` its expiry.
    """
    priority, collapse_id, expires_at, content = n.priority, n.collapse_id, n.expires_at, None
    send_at = n.send_at
    if send_at is None and n.local_send_at is not None:
        # The first moment that wall-clock time happens anywhere (UTC+14): the daemon then
        # holds each row until it happens in the row's own time zone.
        send_at = n.local_send_at.replace(tzinfo=dt.UTC) - EARLIEST_OFFSET
    if n.message is not None:
        content, delivery = portable.split(n.message)
        priority = delivery.priority or priority
        collapse_id = delivery.collapse_id or collapse_id
        if delivery.ttl_s is not None:
            start = send_at or dt.datetime.now(dt.UTC)
            if n.send_at is None and n.local_send_at is not None:
                # The ttl counts from the last moment that local time happens (UTC-12): every
                # device gets the whole ttl from its own local time at least.
                start = n.local_send_at.replace(tzinfo=dt.UTC) + LATEST_OFFSET
            expires_at = delivery.expires_at(start)
    return (
        n.app,
        n.platform,
        n.device_token,
        json_text(n.payload, "payload", i),
        priority,
        n.push_type,
        collapse_id,
        expires_at,
        n.topic,
        send_at,
        n.dedupe_key,
        n.max_attempts,
        json_text(n.metadata, "metadata", i),
        json_text(content, "message", i),
        n.category,
        n.timezone,
        n.local_send_at,
    )


async def _enqueue(
    conn: asyncpg.Connection, items: Sequence[Notification], rows: list[tuple[Any, ...]]
) -> list[Enqueued]:
    try:
        with store.schema_required():
            return await _insert(conn, items, rows)
    except asyncpg.IntegrityConstraintViolationError as exc:
        raise EnqueueError(f"the database rejected the notifications: {exc.args[0]}") from None
    except asyncpg.DataError as exc:  # validate() refuses what PostgreSQL would: a last resort
        raise EnqueueError(
            f"the database could not take the notifications: {exc.args[0]}"
        ) from None


async def _insert(
    conn: asyncpg.Connection, items: Sequence[Notification], rows: list[tuple[Any, ...]]
) -> list[Enqueued]:
    async with conn.transaction():
        named = {n.category for n in items if n.category is not None}
        if named:
            known = await store.category_names(conn)
            for i, n in enumerate(items):
                if n.category is not None and n.category not in known:
                    raise EnqueueError(
                        f"notification {i}: unknown category {n.category!r} (declared: "
                        f"{', '.join(sorted(known)) or 'none'}; categories are declared as "
                        "[categories.<name>] in the daemon's config)",
                        index=i,
                    )
        ids = await store.insert_notifications(conn, rows)
        return await _resolve_duplicates(conn, items, ids)


async def _resolve_duplicates(
    conn: asyncpg.Connection, items: Sequence[Notification], ids: list[int | None]
) -> list[Enqueued]:
    """The inserted rows' ids, and for each skipped one the id holding its dedupe key."""
    missing: dict[str, list[str]] = {}
    for n, rid in zip(items, ids, strict=True):
        if rid is None and n.dedupe_key is not None:
            missing.setdefault(n.app, []).append(n.dedupe_key)
    found: dict[tuple[str, str], int] = {}
    for app, keys in missing.items():
        for dedupe_key, holder in (await store.dedupe_holders(conn, app, keys)).items():
            found[(app, dedupe_key)] = holder
    result = []
    for i, (n, rid) in enumerate(zip(items, ids, strict=True)):
        if rid is not None:
            result.append(Enqueued(id=rid, duplicate=False))
            continue
        key = (n.app, n.dedupe_key or "")
        if key not in found:
            raise EnqueueError(f"notification {i} was not inserted", index=i)
        result.append(Enqueued(id=found[key], duplicate=True))
    return result


async def outcome(
    conn: asyncpg.Connection | asyncpg.Pool, ids: Sequence[int]
) -> dict[int, NotificationOutcome]:
    """The current outcome of each id, in the order of ``ids`` (unknown ids are absent)."""
    with store.schema_required():
        records = await store.fetch_outcomes(conn, ids)
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
