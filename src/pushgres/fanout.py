"""Sending to people: fan-outs to every active device of users, and a fan-out's outcome.

``await send_to_users(conn, target, user_ids, message)`` enqueues one notification per active
device of each user on each app of ``target`` (an app, or a group of apps named in the
config's ``[groups]``), all in one transaction, and returns a :class:`FanOut`: the group id
and how many users, users without an active device and notifications it came to. The portable
``message`` (:mod:`pushgres.message`) is rendered by each provider at send time; ``overrides``
(``{"apns": {...}, "fcm": {...}}``) are merged over its native rendering. Stale, invalid,
uninstalled and unregistered devices are skipped. Large lists go to the database in chunks of
``CHUNK_USERS`` user ids (one array each), inside the one transaction.

``await group_outcome(conn, group_id, per_user=False)`` returns the :class:`GroupOutcome`:
counts by status and reason (per user if asked), ``queued`` for those not finished yet.

Both are the SQL functions ``pushgres.send_to_users`` and ``pushgres.group_outcome``, which
other services may call directly.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import asyncpg

from . import codec
from . import message as portable
from .db import store
from .exceptions import EnqueueError

__all__ = [
    "CHUNK_USERS",
    "FanOut",
    "GroupCount",
    "GroupOutcome",
    "group_outcome",
    "send_to_user",
    "send_to_users",
]

CHUNK_USERS: Final = 100_000
_SQLSTATE_INVALID_PARAMETER: Final = "22023"


@dataclass(frozen=True, slots=True, kw_only=True)
class FanOut:
    """What one fan-out came to. ``duplicate``: its dedupe key was used before, nothing was
    enqueued, and the counts are those of the first fan-out, ``group_id`` its group."""

    group_id: int
    duplicate: bool
    users: int
    users_without_device: int
    notifications: int


@dataclass(frozen=True, slots=True)
class GroupCount:
    user_id: str | None  # None unless the outcome was asked per user
    status: str  # queued | sent | failed | token_invalid | expired
    reason: str | None
    count: int


@dataclass(frozen=True, slots=True, kw_only=True)
class GroupOutcome:
    group_id: int
    target: str
    apps: tuple[str, ...]
    created_at: dt.datetime
    users: int
    users_without_device: int
    notifications: int
    counts: tuple[GroupCount, ...] = field(default=())

    def by_status(self) -> dict[str, int]:
        """Notifications per status."""
        totals: dict[str, int] = {}
        for c in self.counts:
            totals[c.status] = totals.get(c.status, 0) + c.count
        return totals

    @property
    def done(self) -> bool:
        """Every notification of the group is in a terminal state."""
        return all(c.status != "queued" for c in self.counts)


async def send_to_users(
    conn: asyncpg.Connection | asyncpg.Pool,
    target: str,
    user_ids: Iterable[str],
    message: Mapping[str, Any],
    *,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
    send_at: dt.datetime | None = None,
    dedupe_key: str | None = None,
    metadata: Mapping[str, Any] | None = None,
    max_attempts: int = 5,
) -> FanOut:
    """Fan ``message`` out to every active device of each of ``user_ids`` on ``target``."""
    problem = portable.check(message)
    if problem is not None:
        raise EnqueueError(f"message: {problem}")
    users = list(user_ids)
    for i, user in enumerate(users):
        if not isinstance(user, str) or not 1 <= len(user) <= 256 or "\x00" in user:
            raise EnqueueError(f"user {i}: a user id is a string of 1-256 characters, got {user!r}")
    if send_at is not None and send_at.tzinfo is None:
        raise EnqueueError("send_at must be a timezone-aware datetime")
    if isinstance(max_attempts, bool) or not 1 <= max_attempts <= 100:
        raise EnqueueError("max_attempts must be 1..100")
    arguments = (
        _json(message, "message"),
        _json(overrides, "overrides"),
        send_at,
        dedupe_key,
        _json(metadata, "metadata"),
    )
    if isinstance(conn, asyncpg.Pool):
        async with conn.acquire() as c:
            return await _fan_out(c, target, users, arguments, max_attempts)
    return await _fan_out(conn, target, users, arguments, max_attempts)


async def send_to_user(
    conn: asyncpg.Connection | asyncpg.Pool,
    target: str,
    user_id: str,
    message: Mapping[str, Any],
    **options: Any,
) -> FanOut:
    """:func:`send_to_users` for one user."""
    return await send_to_users(conn, target, [user_id], message, **options)


async def _fan_out(
    conn: asyncpg.Connection,
    target: str,
    users: list[str],
    arguments: tuple[Any, ...],
    max_attempts: int,
) -> FanOut:
    text, overrides, send_at, dedupe_key, metadata = arguments
    group_id: int | None = None
    totals = [0, 0, 0]
    try:
        with store.schema_required():
            async with conn.transaction():
                for start in range(0, max(1, len(users)), CHUNK_USERS):
                    chunk = users[start : start + CHUNK_USERS]
                    record = await store.send_to_users(
                        conn,
                        target,
                        chunk,
                        text,
                        overrides,
                        send_at,
                        dedupe_key,
                        metadata,
                        group_id,
                        max_attempts,
                    )
                    if record["duplicate"]:
                        return _fanout(record, duplicate=True)
                    group_id = int(record["group_id"])
                    totals[0] += int(record["users"])
                    totals[1] += int(record["users_without_device"])
                    totals[2] += int(record["notifications"])
    except asyncpg.PostgresError as exc:
        if exc.sqlstate == _SQLSTATE_INVALID_PARAMETER or isinstance(
            exc, asyncpg.IntegrityConstraintViolationError | asyncpg.DataError
        ):
            raise EnqueueError(f"the fan-out was refused: {exc.args[0]}") from None
        raise
    assert group_id is not None  # at least one chunk ran
    return FanOut(
        group_id=group_id,
        duplicate=False,
        users=totals[0],
        users_without_device=totals[1],
        notifications=totals[2],
    )


def _fanout(record: asyncpg.Record, *, duplicate: bool) -> FanOut:
    return FanOut(
        group_id=int(record["group_id"]),
        duplicate=duplicate,
        users=int(record["users"]),
        users_without_device=int(record["users_without_device"]),
        notifications=int(record["notifications"]),
    )


def _json(value: Mapping[str, Any] | None, name: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise EnqueueError(f"{name} must be a JSON object")
    try:
        return codec.dumps(value).decode()
    except TypeError as exc:
        raise EnqueueError(f"{name} is not JSON: {exc}") from None


async def group_outcome(
    conn: asyncpg.Connection | asyncpg.Pool, group_id: int, *, per_user: bool = False
) -> GroupOutcome | None:
    """The outcome of fan-out ``group_id`` (None if there is no such group)."""
    if isinstance(conn, asyncpg.Pool):
        async with conn.acquire() as c:
            return await _group_outcome(c, group_id, per_user)
    return await _group_outcome(conn, group_id, per_user)


async def _group_outcome(
    conn: asyncpg.Connection, group_id: int, per_user: bool
) -> GroupOutcome | None:
    with store.schema_required():
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            group = await store.fanout_group(conn, group_id)
            if group is None:
                return None
            rows = await store.group_outcome(conn, group_id, per_user)
    return GroupOutcome(
        group_id=group_id,
        target=group["target"],
        apps=tuple(group["apps"]),
        created_at=group["created_at"],
        users=int(group["users"]),
        users_without_device=int(group["users_without_device"]),
        notifications=int(group["notifications"]),
        counts=tuple(
            GroupCount(r["user_id"], r["status"], r["reason"], int(r["count"])) for r in rows
        ),
    )
