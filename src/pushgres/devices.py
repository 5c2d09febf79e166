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
* :func:`import_devices` bulk-loads devices from another system (one ``COPY`` and one
  set-based upsert, every row checked first); :func:`export_devices` streams them all out.

Bad input raises :class:`~pushgres.exceptions.DeviceError` naming the token (shortened) and
the reason; a database without this version's schema raises
:class:`~pushgres.exceptions.SchemaError`.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import re
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Callable,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from dataclasses import dataclass
from typing import Any, Final, TypeAlias

import asyncpg

from . import codec
from .db import store
from .exceptions import DeviceError
from .observability.logging import short_token

__all__ = [
    "EXPORT_FIELDS",
    "IMPORT_FIELDS",
    "STATES",
    "Device",
    "DeviceEvent",
    "ImportReport",
    "Registered",
    "as_dict",
    "device",
    "export_devices",
    "history",
    "identify",
    "import_devices",
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


# -- bulk import and export -----------------------------------------------------------------

# The fields of a row, in the order of its record for the store (after its number).
IMPORT_FIELDS: Final = store.DEVICE_IMPORT_COLUMNS[1:]
STATE_FIELDS: Final = ("state", "state_reason", "invalidated_at", "state_changed_at")
EXPORT_FIELDS: Final = (*IMPORT_FIELDS, *STATE_FIELDS)
STATES: Final = ("active", "invalid", "stale", "uninstalled", "unregistered")
_TIME_FIELDS = ("registered_at", "last_seen_at", "invalidated_at", "state_changed_at")
_FREE_TEXT = ("user_id", "installation_id", "timezone", "locale", "app_version")
_TOKEN_CHARS = {
    "apns": (re.compile(r"[0-9A-Fa-f]+"), "devices_apns_token_hex"),
    "fcm": (re.compile(r"[A-Za-z0-9_:.-]+"), "devices_fcm_token_chars"),
}
_JSON_NUL = re.compile(r"(?<!\\)(?:\\\\)*\\u0000")  # an escaped U+0000, not "\\u0000"


@dataclass(frozen=True, slots=True)
class ImportReport:
    """What :func:`import_devices` did, one count per row: devices ``inserted`` (new),
    ``updated`` (known: the same user, or none before) and ``moved`` (known as another
    user's, now the row's)."""

    inserted: int
    updated: int
    moved: int


async def import_devices(
    conn: Conn, rows: Iterable[Mapping[str, Any]], *, default_app: str | None = None
) -> ImportReport:
    """Load many devices at once, from another system or an earlier registry.

    Each row is a mapping of :data:`IMPORT_FIELDS`: ``app`` (else ``default_app``),
    ``platform`` and ``token``, and optionally ``user_id`` (a string, or an integer),
    ``installation_id``, ``environment``, ``timezone`` (an IANA name), ``locale``,
    ``app_version``, ``attributes`` (a JSON object, or its text), ``registered_at`` and
    ``last_seen_at`` (datetimes, ISO 8601 text -- no zone: UTC -- or Unix seconds). An empty
    string is a value not given. A device appears once.

    Every row is checked before anything is written: the first bad one raises
    :class:`DeviceError` naming its number (from 1) and the field, and nothing is imported.
    The rows are then copied into the database and applied by one statement, in one
    transaction (the caller's, when there is one):

    * a new device is inserted, active -- or invalid, when a provider declared its token dead
      after the row's ``last_seen_at``;
    * a known one is updated as :func:`register` would: the given fields filled in,
      ``attributes`` merged, ``last_seen_at`` the later of both and ``registered_at`` the
      earlier; a token of another user
      moves to the row's; an invalid, stale, uninstalled or unregistered device becomes
      active when the row saw it after its state changed (for an invalid one, after the
      provider's timestamp: Apple's rule). An installation's other tokens are not retired.

    Each device gets a history event: ``imported``, or ``moved``. Rows without times count as
    seen now. The state of an export (``state``, ``state_reason``, ...) is refused: the
    registry decides states.
    """
    if default_app is not None:
        _check_app(default_app)
    records = _import_records(rows, default_app)
    if not records:
        return ImportReport(0, 0, 0)
    async with _connection(conn) as acquired:
        with _errors(None):
            async with acquired.transaction():
                await store.load_device_import(acquired, records)
                problem = await store.device_import_problem(acquired)
                if problem is not None:
                    number, field, value = problem
                    reason = (
                        f"{value!r} is not an IANA time zone name"
                        if field == "timezone"
                        else f"the device is registered for {value} already"
                    )
                    raise DeviceError(f"row {number}: {field}: {reason}")
                inserted, updated, moved = await store.apply_device_import(acquired)
    return ImportReport(inserted, updated, moved)


async def export_devices(
    conn: Conn, app: str | None = None, *, states: Sequence[str] | None = None
) -> AsyncGenerator[dict[str, Any], None]:
    """Every device of ``app`` (None: every app) in ``states`` (None: any), in (app, token)
    order, each as :func:`as_dict` gives it.

    The devices stream from a server-side cursor, in one transaction (a consistent snapshot,
    however many there are), which stays open until the iteration ends: close the iterator
    (``contextlib.aclosing``) when stopping early. The arguments are checked when the
    iteration starts.
    """
    if app is not None:
        _check_app(app)
    if states is not None:
        if isinstance(states, str):
            raise DeviceError("states is a list of states, not one string")
        for state in states:
            if state not in STATES:
                raise DeviceError(f"{state!r} is not a device state ({', '.join(STATES)})")
    async with _connection(conn) as acquired:
        with _errors(None):
            async with contextlib.aclosing(store.export_devices(acquired, app, states)) as found:
                async for record in found:
                    yield as_dict(_device(record))


def as_dict(device: Device) -> dict[str, Any]:
    """A device as plain JSON data, with the keys of :data:`EXPORT_FIELDS`: what
    :func:`import_devices` takes, then the state; times as ISO 8601 text."""
    values: dict[str, Any] = {name: getattr(device, name) for name in EXPORT_FIELDS}
    values["attributes"] = dict(device.attributes)
    for name in _TIME_FIELDS:
        if values[name] is not None:
            values[name] = values[name].isoformat()
    return values


def _import_records(
    rows: Iterable[Mapping[str, Any]], default_app: str | None
) -> list[tuple[Any, ...]]:
    """The rows as ``store.DEVICE_IMPORT_COLUMNS`` records; DeviceError names the first bad."""
    records = []
    first_row: dict[tuple[str, str], int] = {}
    for number, row in enumerate(rows, start=1):
        record = _import_record(number, row, default_app)
        first = first_row.setdefault((record[1], record[3]), number)
        if first != number:
            raise DeviceError(
                f"row {number}: token: the same device (app and token) as row {first}"
            )
        records.append(record)
    return records


def _import_record(number: int, row: object, default_app: str | None) -> tuple[Any, ...]:
    def bad(field: str, reason: str) -> DeviceError:
        return DeviceError(f"row {number}: {field}: {reason}")

    if not isinstance(row, Mapping):
        raise DeviceError(
            f"row {number}: expected field names and values, got {type(row).__name__}"
        )
    for key in row:
        if key in STATE_FIELDS:
            raise bad(key, "not imported: the registry decides a device's state")
        if key not in IMPORT_FIELDS:
            raise bad(str(key), f"not a device field (the fields: {', '.join(IMPORT_FIELDS)})")
    values: dict[str, Any] = {k: None if v == "" else v for k, v in row.items()}
    app = values.get("app") or default_app
    if app is None:
        raise bad("app", "missing (give it in each row, or a default app)")
    if not isinstance(app, str) or not _APP.fullmatch(app):
        raise bad("app", f"{app!r} is not an app name (1-64 of A-Z a-z 0-9 _ . -)")
    platform = values.get("platform")
    if not isinstance(platform, str) or platform not in _TOKEN_CHARS:
        raise bad("platform", "missing" if platform is None else _CONSTRAINTS["devices_platform"])
    token = values.get("token")
    if not isinstance(token, str):
        raise bad("token", "missing" if token is None else "must be a string")
    pattern, constraint = _TOKEN_CHARS[platform]
    if len(token) > 4096:
        raise bad("token", _CONSTRAINTS["devices_token_length"])
    if not pattern.fullmatch(token):
        raise bad("token", _CONSTRAINTS[constraint])
    if isinstance(values.get("user_id"), int) and not isinstance(values["user_id"], bool):
        values["user_id"] = str(values["user_id"])
    for field in _FREE_TEXT:
        text = values.get(field)
        if text is not None and not isinstance(text, str):
            raise bad(field, f"must be a string, got {type(text).__name__}")
        if text is not None and "\x00" in text:
            raise bad(field, "holds a NUL character, which PostgreSQL text cannot")
    user_id = values.get("user_id")
    if user_id is not None and len(user_id) > 256:
        raise bad("user_id", _CONSTRAINTS["devices_user_length"])
    environment = values.get("environment")
    if environment not in (None, "production", "sandbox"):
        raise bad("environment", _CONSTRAINTS["devices_environment"])
    return (
        number,
        app,
        platform,
        token,
        user_id,
        values.get("installation_id"),
        environment,
        values.get("timezone"),
        values.get("locale"),
        values.get("app_version"),
        _attributes_text(values.get("attributes"), bad),
        _time(values.get("registered_at"), "registered_at", bad),
        _time(values.get("last_seen_at"), "last_seen_at", bad),
    )


def _attributes_text(value: object, bad: Callable[[str, str], DeviceError]) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = codec.loads(value)
        except codec.JSONDecodeError:
            raise bad("attributes", "not valid JSON") from None
    if not isinstance(value, Mapping):
        raise bad("attributes", _CONSTRAINTS["devices_attributes_object"])
    try:
        text = codec.dumps(dict(value)).decode()
    except TypeError as exc:
        raise bad("attributes", f"not JSON data: {exc}") from None
    if _JSON_NUL.search(text):
        raise bad("attributes", "holds a NUL character (\\u0000), which PostgreSQL jsonb cannot")
    return text


def _time(value: object, field: str, bad: Callable[[str, str], DeviceError]) -> dt.datetime | None:
    if value is None:
        return None
    if isinstance(value, dt.datetime):
        parsed = value
    elif isinstance(value, str):
        try:
            parsed = dt.datetime.fromisoformat(value)
        except ValueError:
            raise bad(field, f"not an ISO 8601 time: {value!r}") from None
    elif isinstance(value, int | float) and not isinstance(value, bool):
        try:
            parsed = dt.datetime.fromtimestamp(value, dt.UTC)
        except (OverflowError, OSError, ValueError):
            raise bad(field, f"{value!r} is not a Unix time in years 1-9999") from None
    else:
        raise bad(field, f"must be an ISO 8601 time or Unix seconds, got {type(value).__name__}")
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=dt.UTC)


def _device(record: asyncpg.Record) -> Device:
    fields = dict(record)
    fields["attributes"] = codec.loads(fields["attributes"])
    return Device(**fields)


async def _one_connection_call(conn: Conn, function: Any, *args: Any) -> Any:
    """Call a store function with a connection: ``conn`` itself, or one from the pool."""
    async with _connection(conn) as acquired:
        return await function(acquired, *args)


@contextlib.asynccontextmanager
async def _connection(conn: Conn) -> AsyncIterator[asyncpg.Connection]:
    """``conn`` itself, or a connection of the pool for the block."""
    if isinstance(conn, asyncpg.Pool):
        async with conn.acquire() as acquired:
            yield acquired
    else:
        yield conn
