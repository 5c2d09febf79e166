"""Sending to people: fan-outs to every active device of users, and a fan-out's outcome.

``await send_to_users(conn, target, user_ids, message)`` enqueues one notification per active
device of each user on each app of ``target`` (an app, or a group of apps named in the
config's ``[groups]``), all in one transaction, and returns a :class:`FanOut`: the group id
and how many users, users without an active device and notifications it came to. The portable
``message`` (:mod:`pushgres.message`) is rendered by each provider at send time; ``overrides``
(``{"apns": {...}, "fcm": {...}}``) are merged over its native rendering. Stale, invalid,
uninstalled and unregistered devices are skipped.

The users go to the database in slices of ``SLICE_USERS`` (one array each). With
``connections=N`` and a pool, N slices are enqueued at once on N connections, each in its own
transaction -- one Postgres session inserts about 40,000 rows a second, two about 60,000 --
and the first slices may be sent while the last are enqueued. Such a fan-out is resumable:
if it stops (a lost connection), calling it again with the same users in the same order and
the same ``dedupe_key`` enqueues only the slices that were not (``pushgres.group_slices``).

``await group_outcome(conn, group_id, per_user=False)`` returns the :class:`GroupOutcome`:
counts by status and reason (per user if asked), ``queued`` for those not finished yet.

Both are the SQL functions ``pushgres.send_to_users`` and ``pushgres.group_outcome``, which
other services may call directly.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import asyncpg

from . import codec
from . import message as portable
from .api import json_text
from .db import store
from .exceptions import EnqueueError
from .providers import PROVIDERS

__all__ = [
    "SLICE_USERS",
    "FanOut",
    "GroupCount",
    "GroupOutcome",
    "group_outcome",
    "send_to_user",
    "send_to_users",
]

ACQUIRE_TIMEOUT_S: Final = 30.0
SLICE_USERS: Final = 250_000
"""Users per slice: large enough that a slice's one pass over the registry stays cheap."""
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
    status: str  # queued | sent | failed | token_invalid | expired | suppressed
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
    complete: bool = True  # False while a fan-out in slices is still being enqueued
    counts: tuple[GroupCount, ...] = field(default=())

    def by_status(self) -> dict[str, int]:
        """Notifications per status."""
        totals: dict[str, int] = {}
        for c in self.counts:
            totals[c.status] = totals.get(c.status, 0) + c.count
        return totals

    @property
    def done(self) -> bool:
        """The group is complete and every notification of it is in a terminal state."""
        return self.complete and all(c.status != "queued" for c in self.counts)


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
    connections: int = 1,
    category: str | None = None,
    local_send_at: dt.datetime | None = None,
) -> FanOut:
    """Fan ``message`` out to every active device of each of ``user_ids`` on ``target``.

    ``category`` is one of the config's categories (None: each app's default);
    ``local_send_at`` a wall-clock time (naive) at which each device gets it in its own time
    zone (see the README's "Guardrails").

    A user given twice is counted and sent to once. With ``connections`` > 1 (``conn`` must
    be a pool), slices are enqueued on that many connections at once, each slice committed by
    itself (see the module docstring); else everything is one transaction.

    Raises:
        EnqueueError: the message, a user id, the target or an option is refused (nothing is
            enqueued); or a fan-out over several connections stopped part-way (the error names
            its group and how far it got).
    """
    problem = portable.check(message)
    if problem is not None:
        raise EnqueueError(f"message: {problem}")
    users = list(dict.fromkeys(user_ids))
    for i, user in enumerate(users):
        if not isinstance(user, str) or not 1 <= len(user) <= 256 or "\x00" in user:
            raise EnqueueError(f"user {i}: a user id is a string of 1-256 characters, got {user!r}")
    if send_at is not None and send_at.tzinfo is None:
        raise EnqueueError("send_at must be a timezone-aware datetime")
    if isinstance(max_attempts, bool) or not 1 <= max_attempts <= 100:
        raise EnqueueError("max_attempts must be 1..100")
    if isinstance(connections, bool) or not 1 <= connections <= 16:
        raise EnqueueError("connections must be 1..16")
    if local_send_at is not None and (
        not isinstance(local_send_at, dt.datetime) or local_send_at.tzinfo is not None
    ):
        raise EnqueueError(
            "local_send_at must be a wall-clock time without a UTC offset, such as "
            "'2026-12-24T09:00' (it is read in each device's own time zone)"
        )
    opening = (
        target,
        json_text(message, "message"),
        json_text(overrides, "overrides"),
        dedupe_key,
        json_text(metadata, "metadata"),
        category,
        local_send_at,
    )
    slices = [users[i : i + SLICE_USERS] for i in range(0, len(users), SLICE_USERS)]
    with _refusals(), store.schema_required():
        if connections > 1:
            if not isinstance(conn, asyncpg.Pool):
                raise EnqueueError("a fan-out over several connections needs a pool")
            return await _fan_out_parallel(
                conn, opening, slices, send_at, max_attempts, connections
            )
        if isinstance(conn, asyncpg.Pool):
            async with conn.acquire(timeout=ACQUIRE_TIMEOUT_S) as c:
                return await _fan_out(c, opening, slices, send_at, max_attempts)
        return await _fan_out(conn, opening, slices, send_at, max_attempts)


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
    opening: tuple[Any, ...],
    slices: Sequence[list[str]],
    send_at: dt.datetime | None,
    max_attempts: int,
) -> FanOut:
    """The whole fan-out in one transaction (the caller's, when there is one)."""
    async with conn.transaction():
        await _check_rendering(conn, opening)
        group = await store.open_fanout(conn, *opening)
        group_id = int(group["group_id"])
        if group["complete"]:
            return _fanout(group_id, group, duplicate=True)
        added = False
        for number, users in enumerate(slices):
            done = await store.fanout_slice(conn, group_id, users, number, send_at, max_attempts)
            added = added or not done["duplicate"]
        totals = await store.close_fanout(conn, group_id)
    return _fanout(group_id, totals, duplicate=bool(group["duplicate"]) and not added)


async def _fan_out_parallel(
    pool: asyncpg.Pool,
    opening: tuple[Any, ...],
    slices: Sequence[list[str]],
    send_at: dt.datetime | None,
    max_attempts: int,
    connections: int,
) -> FanOut:
    """Slices on several connections at once, each slice its own transaction."""
    async with pool.acquire(timeout=ACQUIRE_TIMEOUT_S) as conn:
        await _check_rendering(conn, opening)
        group = await store.open_fanout(conn, *opening)
    group_id = int(group["group_id"])
    if group["complete"]:
        return _fanout(group_id, group, duplicate=True)
    pending = iter(enumerate(slices))
    added: list[bool] = []

    async def worker() -> None:
        async with pool.acquire(timeout=ACQUIRE_TIMEOUT_S) as conn:
            for number, users in pending:  # shared: each slice goes to one worker
                async with conn.transaction():
                    done = await store.fanout_slice(
                        conn, group_id, users, number, send_at, max_attempts
                    )
                added.append(not done["duplicate"])

    try:
        async with asyncio.TaskGroup() as tasks:
            for n in range(min(connections, len(slices))):
                tasks.create_task(worker(), name=f"fan-out {group_id} #{n}")
    except* (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as failures:
        reason = failures.exceptions[0]
        raise EnqueueError(
            f"fan-out group {group_id} stopped after {len(added)} of {len(slices)} slices "
            f"({reason}); what was enqueued will be sent"
            + (
                ": call it again with the same users and dedupe_key to finish it"
                if opening[3] is not None
                else " (a fan-out given a dedupe_key can be finished by calling it again)"
            )
        ) from None
    async with pool.acquire(timeout=ACQUIRE_TIMEOUT_S) as conn:
        totals = await store.close_fanout(conn, group_id)
    return _fanout(group_id, totals, duplicate=bool(group["duplicate"]) and not any(added))


async def _check_rendering(conn: asyncpg.Connection, opening: tuple[Any, ...]) -> None:
    """Refuse a message that a provider of the target could not render (an FCM reserved data
    key, overrides removing APNs's ``aps``, too large), before anything is queued."""
    target, message_text, overrides_text = opening[:3]
    message = codec.loads(message_text)
    overrides = codec.loads(overrides_text) if overrides_text is not None else {}
    for platform in await store.target_platforms(conn, target):
        provider = PROVIDERS.get(platform)
        if provider is None:
            continue
        problem = provider.check_message(message, overrides.get(platform, {}))
        if problem is not None:
            raise EnqueueError(f"the fan-out was refused for {platform}: {problem}")


@contextlib.contextmanager
def _refusals() -> Iterator[None]:
    """The database's refusals of a fan-out (bad message, unknown target) as EnqueueError."""
    try:
        yield
    except asyncpg.PostgresError as exc:
        if exc.sqlstate == _SQLSTATE_INVALID_PARAMETER or isinstance(
            exc, asyncpg.IntegrityConstraintViolationError | asyncpg.DataError
        ):
            raise EnqueueError(f"the fan-out was refused: {exc.args[0]}") from None
        raise


def _fanout(group_id: int, record: asyncpg.Record, *, duplicate: bool) -> FanOut:
    return FanOut(
        group_id=group_id,
        duplicate=duplicate,
        users=int(record["users"]),
        users_without_device=int(record["users_without_device"]),
        notifications=int(record["notifications"]),
    )


async def group_outcome(
    conn: asyncpg.Connection | asyncpg.Pool, group_id: int, *, per_user: bool = False
) -> GroupOutcome | None:
    """The outcome of fan-out ``group_id`` (None if there is no such group)."""
    if isinstance(conn, asyncpg.Pool):
        async with conn.acquire(timeout=ACQUIRE_TIMEOUT_S) as c:
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
        complete=bool(group["complete"]),
        counts=tuple(
            GroupCount(r["user_id"], r["status"], r["reason"], int(r["count"])) for r in rows
        ),
    )
