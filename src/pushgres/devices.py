"""The device registry's Python API: which tokens belong to whom, and in what state.

Every function takes an asyncpg connection (or pool) and runs one registry function of the
schema (``pushgres.register_device``, ``identify_device``, ``logout_device``,
``rotate_device_token``, ``unregister_devices``), so it takes effect in the caller's
transaction when there is one, and the same rules hold from SQL:

* :func:`register` upserts a device and refreshes its last-seen time. A token the provider
  declared dead becomes active again only when registered after the provider's timestamp
  (Apple's rule for 410); with an ``installation_id``, a new token replaces the installation's
  previous one, whose user moves to it.
* :func:`identify` attaches a device to a user (login, checkout); a token belongs to one user
  per app, so identifying it for another user moves it. :func:`logout` detaches it: a shared
  device stops receiving the previous user's notifications.
* :func:`rotate` replaces a token by a new one explicitly; :func:`unregister` and
  :func:`unregister_many` (one statement for any number) retire tokens the app no longer uses.
* :func:`user_devices`, :func:`device` and :func:`history` read it back.

Bad input raises :class:`~pushgres.exceptions.DeviceError` naming the token (shortened) and
the reason; a database without this version's schema raises
:class:`~pushgres.exceptions.SchemaError`.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias

import asyncpg

from . import codec
from .db import store
from .exceptions import DeviceError
from .observability.logging import short_token

__all__ = [
    "Device",
    "DeviceEvent",
    "Registered",
    "device",
    "history",
    "identify",
    "logout",
    "register",
    "rotate",
    "unregister",
    "unregister_many",
    "user_devices",
]

_APP = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_CONSTRAINTS = {
    "devices_platform": "platform must be apns or fcm",
    "devices_environment": "environment must be production or sandbox",
    "devices_token_length": "a device token is 1-4096 characters",
    "devices_apns_token_hex": "an APNs device token is hexadecimal",
    "devices_fcm_token_chars": "an FCM device token holds only A-Z a-z 0-9 _ : . -",
    "devices_user_length": "a user id is 1-256 characters",
    "devices_attributes_object": "attributes must be a JSON object",
}

Conn: TypeAlias = "asyncpg.Connection | asyncpg.Pool"


@dataclass(frozen=True, slots=True)
class Registered:
    """What :func:`register` did: the device's ``state`` afterwards and the ``event``.

    Events: ``registered`` (new), ``seen`` (known; last seen refreshed), ``identified``,
    ``moved`` (now another user's), ``rotated`` (replaced its installation's previous token),
    ``reactivated`` (registered after its invalidation, or seen again after being stale,
    uninstalled or unregistered), ``still_invalid`` (registered before its invalidation).
    """

    state: str
    event: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Device:
    app: str
    platform: str
    token: str
    user_id: str | None
    installation_id: str | None
    environment: str | None
    timezone: str | None
    locale: str | None
    app_version: str | None
    attributes: Mapping[str, Any]
    state: str
    state_reason: str | None
    invalidated_at: dt.datetime | None
    registered_at: dt.datetime
    last_seen_at: dt.datetime
    state_changed_at: dt.datetime


@dataclass(frozen=True, slots=True, kw_only=True)
class DeviceEvent:
    at: dt.datetime
    event: str
    user_id: str | None
    detail: Mapping[str, Any] | None


def _check_app(app: str) -> None:
    if not isinstance(app, str) or not _APP.fullmatch(app):
        raise DeviceError(f"app {app!r} is not an app name (1-64 of A-Z a-z 0-9 _ . -)")


def _check_token(token: str) -> None:
    if not isinstance(token, str) or not token:
        raise DeviceError("a device token is a non-empty string")


@contextlib.contextmanager
def _errors(token: str | None) -> Iterator[None]:
    """Turn the registry's refusals into :class:`DeviceError`, the schema's absence into
    :class:`SchemaError`."""
    where = f"device {short_token(token)}: " if token else ""
    try:
        with store.schema_required():
            yield
    except asyncpg.CheckViolationError as exc:
        reason = _CONSTRAINTS.get(exc.constraint_name or "", str(exc))
        raise DeviceError(f"{where}{reason}") from None
    except (asyncpg.InvalidParameterValueError, asyncpg.DataError) as exc:
        message = str(exc)
        if token:  # the registry names the whole token; keep only its prefix
            message = message.replace(token, short_token(token))
        raise DeviceError(
            message if message.startswith("device ") else f"{where}{message}"
        ) from None


async def register(
    conn: Conn,
    app: str,
    platform: str,
    token: str,
    *,
    user_id: str | None = None,
    installation_id: str | None = None,
    environment: str | None = None,
    timezone: str | None = None,
    locale: str | None = None,
    app_version: str | None = None,
    attributes: Mapping[str, Any] | None = None,
    registered_at: dt.datetime | None = None,
) -> Registered:
    """Register or refresh one device (see the module docstring)."""
    _check_app(app)
    _check_token(token)
    if attributes is not None and not isinstance(attributes, Mapping):
        raise DeviceError(f"device {short_token(token)}: attributes must be a JSON object")
    with _errors(token):
        record = await _one_connection_call(
            conn,
            store.register_device,
            app,
            platform,
            token,
            user_id,
            installation_id,
            environment,
            timezone,
            locale,
            app_version,
            None if attributes is None else codec.dumps(dict(attributes)).decode(),
            registered_at,
        )
    return Registered(record["state"], record["event"])


async def identify(conn: Conn, app: str, token: str, user_id: str) -> bool:
    """Attach ``token`` to ``user_id``; False when the registry does not know the token."""
    _check_app(app)
    _check_token(token)
    if not isinstance(user_id, str) or not user_id:
        raise DeviceError(f"device {short_token(token)}: identify needs a user id")
    with _errors(token):
        return bool(await _one_connection_call(conn, store.identify_device, app, token, user_id))


async def logout(conn: Conn, app: str, token: str) -> bool:
    """Detach ``token`` from its user; False when the registry does not know the token."""
    _check_app(app)
    _check_token(token)
    with _errors(token):
        return bool(await _one_connection_call(conn, store.logout_device, app, token))


async def rotate(conn: Conn, app: str, old_token: str, new_token: str) -> str | None:
    """Replace ``old_token`` by ``new_token``; the new token's event, or None if the old one is
    unknown."""
    _check_app(app)
    _check_token(old_token)
    _check_token(new_token)
    with _errors(new_token):
        event = await _one_connection_call(
            conn, store.rotate_device_token, app, old_token, new_token
        )
    return None if event is None else str(event)


async def unregister(conn: Conn, app: str, token: str) -> bool:
    """Retire one token; False when it is unknown or was unregistered already."""
    return await unregister_many(conn, app, [token]) == 1


async def unregister_many(conn: Conn, app: str, tokens: Sequence[str]) -> int:
    """Retire many tokens in one statement; how many were known and not unregistered yet."""
    _check_app(app)
    for token in tokens:
        _check_token(token)
    with _errors(None):
        return int(await _one_connection_call(conn, store.unregister_devices, app, tokens))


async def user_devices(conn: Conn, app: str, user_id: str) -> list[Device]:
    """The user's devices of ``app``, most recently seen first (every state)."""
    _check_app(app)
    with _errors(None):
        records = await _one_connection_call(conn, store.user_devices, app, user_id)
    return [_device(r) for r in records]


async def device(conn: Conn, app: str, token: str) -> Device | None:
    """One device, or None when the registry does not know it."""
    _check_app(app)
    with _errors(None):
        record = await _one_connection_call(conn, store.device, app, token)
    return None if record is None else _device(record)


async def history(conn: Conn, app: str, token: str) -> list[DeviceEvent]:
    """What happened to a token, oldest first."""
    _check_app(app)
    with _errors(None):
        records = await _one_connection_call(conn, store.device_history, app, token)
    return [
        DeviceEvent(
            at=r["at"],
            event=r["event"],
            user_id=r["user_id"],
            detail=None if r["detail"] is None else codec.loads(r["detail"]),
        )
        for r in records
    ]


def _device(record: asyncpg.Record) -> Device:
    fields = dict(record)
    fields["attributes"] = codec.loads(fields["attributes"])
    return Device(**fields)


async def _one_connection_call(conn: Conn, function: Any, *args: Any) -> Any:
    """Call a store function with a connection: ``conn`` itself, or one from the pool."""
    if isinstance(conn, asyncpg.Pool):
        async with conn.acquire() as acquired:
            return await function(acquired, *args)
    return await function(conn, *args)
