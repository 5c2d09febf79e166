"""The ``pushgres`` command: argument parsing, logging setup, the uvloop runner, exit codes.

Commands: ``migrate``, ``run``, ``enqueue``, ``status``, ``outcome``, ``check-credentials``,
``devices`` (``register``, ``identify``, ``logout``, ``rotate``, ``unregister``, ``show``,
``history``, ``import``, ``export``, ``uninstalls``), ``send`` (a fan-out to users),
``group`` (a fan-out's outcome), ``simulate``, ``demo``.
Every expected failure (bad config, missing schema, bad input, unreachable database) ends
with one line on stderr naming the problem and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import dataclasses
import datetime as dt
import gc
import io
import json
import logging
import math
import os
import pathlib
import signal
import sys
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator, Sequence
from typing import Any, Final

import asyncpg
import uvloop

from . import __version__, codec, devices, fanout
from .api import as_notification, enqueue_detailed, outcome, validate
from .config import load_config, resolve_dsn
from .db import store
from .db.migrate import check_schema, migrate
from .exceptions import DeviceError, EnqueueError, PushgresError
from .models import Notification
from .observability.logging import setup_logging, short_token
from .providers.credentials import DEFAULT_TIMEOUT_S as DEFAULT_CHECK_TIMEOUT_S
from .providers.credentials import DEFAULT_WARN_DAYS, check_apps, exit_status, format_table, to_json

__all__ = ["GC_THRESHOLDS", "collect_less", "main"]

logger = logging.getLogger("pushgres")

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
BIGINT_MAX = 2**63 - 1


def _run(coro_factory: Callable[[], Coroutine[Any, Any, int]]) -> int:
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro_factory())


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


async def _connect(dsn: str) -> asyncpg.Connection:
    try:
        return await asyncpg.connect(dsn, timeout=10)
    except asyncpg.ClientConfigurationError as exc:
        raise PushgresError(f"the PostgreSQL DSN is not valid: {_first_line(exc)}") from None
    except ValueError:
        # urllib and asyncpg's own parsing (a port that is not a number, a stray bracket...).
        # Their messages may quote pieces of the DSN, password included: they are not shown.
        raise PushgresError(
            "the PostgreSQL DSN cannot be parsed (check the host and port, and percent-encode "
            "special characters in the user name and password)"
        ) from None
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
        raise PushgresError(
            f"cannot connect to PostgreSQL: {type(exc).__name__}: {_first_line(exc)}"
        ) from None


@contextlib.contextmanager
def _db_errors(action: str) -> Iterator[None]:
    """One line for a database failure past the connection (lost server, permissions...)."""
    try:
        yield
    except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError) as exc:
        raise PushgresError(f"{action} failed: {type(exc).__name__}: {_first_line(exc)}") from None


@contextlib.asynccontextmanager
async def _database(args: argparse.Namespace, action: str) -> AsyncIterator[asyncpg.Connection]:
    """A connection to a database holding this build's schema (else SchemaError)."""
    conn = await _connect(resolve_dsn(args.dsn, args.config))
    try:
        with _db_errors(action):
            await check_schema(conn)
            yield conn
    finally:
        with contextlib.suppress(asyncpg.InterfaceError, OSError):
            await conn.close()


async def _cmd_migrate(args: argparse.Namespace) -> int:
    conn = await _connect(resolve_dsn(args.dsn, args.config))
    try:
        with _db_errors("migrating"):
            applied = await migrate(conn)
    finally:
        with contextlib.suppress(asyncpg.InterfaceError, OSError):
            await conn.close()
    if applied:
        print(f"applied migration(s): {', '.join(str(v) for v in applied)}")
    else:
        print("schema is up to date")
    return EXIT_OK


async def _cmd_run(args: argparse.Namespace) -> int:
    # Imported here: the tool commands need none of the delivery stack (and start faster).
    from .daemon import Daemon
    from .systemd import SystemdNotifier

    settings = load_config(args.config)
    setup_logging(settings.daemon.log_level, settings.daemon.log_format)
    daemon = Daemon(
        settings,
        notifier=SystemdNotifier.from_environ(),
        reload_config=lambda: load_config(args.config),
    )
    loop = asyncio.get_running_loop()
    signals = 0

    def on_signal(signame: str) -> None:
        nonlocal signals
        signals += 1
        if signals == 1:
            logger.info("%s received: draining (send it again to exit at once)", signame)
            daemon.stop()
        else:
            logger.warning("second signal: exiting now; open batches roll back and stay queued")
            logging.shutdown()
            os._exit(EXIT_ERROR)

    def on_hangup() -> None:
        logger.info("SIGHUP received: reloading %s", args.config, extra={"action": "reload"})
        daemon.reload()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig.name)
    loop.add_signal_handler(signal.SIGHUP, on_hangup)
    collect_less()
    await daemon.run()
    return EXIT_OK


GC_THRESHOLDS: Final = (20_000, 20, 20)


def collect_less() -> None:
    """The daemon's garbage-collector policy (Python docs, ``gc.freeze`` and
    ``gc.set_threshold``): what is loaded at start moves to the permanent generation, so no
    full collection walks it again, and a young collection runs after 20,000 container
    allocations instead of 700. A batch makes a few thousand short-lived containers (rows,
    requests, responses, outcomes) that reference counting frees; collecting every 700
    allocations walked each of them several times while it was alive. Cycles are still
    collected, less often."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def _json_object_flag(text: str, flag: str) -> dict[str, Any]:
    try:
        value = codec.loads(text)
    except codec.JSONDecodeError:
        raise EnqueueError(f"{flag} is not valid JSON") from None
    if not isinstance(value, dict):
        raise EnqueueError(f"{flag} must be a JSON object")
    return value


def _notification_from_flags(args: argparse.Namespace) -> Notification:
    if not (args.app and args.platform and args.token and args.payload):
        raise EnqueueError("give --app, --platform, --token and --payload, or --file")
    data: dict[str, Any] = {
        "app": args.app,
        "platform": args.platform,
        "device_token": args.token,
        "payload": _json_object_flag(args.payload, "--payload"),
        "priority": args.priority,
        "push_type": args.push_type,
        "collapse_id": args.collapse_id,
        "topic": args.topic,
        "dedupe_key": args.dedupe_key,
        "max_attempts": args.max_attempts,
    }
    if args.expires_in is not None:
        try:
            data["expires_at"] = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=args.expires_in)
        except OverflowError:
            raise EnqueueError(f"--expires-in {args.expires_in:g} is too far ahead") from None
    if args.send_at is not None:
        data["send_at"] = args.send_at
    if args.metadata is not None:
        data["metadata"] = _json_object_flag(args.metadata, "--metadata")
    data["category"] = args.category
    data["timezone"] = args.timezone
    data["local_send_at"] = args.local_send_at
    try:
        return as_notification({k: v for k, v in data.items() if v is not None})
    except EnqueueError as exc:
        raise _relabel(exc, [""]) from None


def _notifications_from_lines(
    lines: Sequence[bytes], source: str
) -> tuple[list[Notification], list[str]]:
    """The notifications of a JSON Lines text, and for each where it came from."""
    items: list[Notification] = []
    where: list[str] = []
    for number, raw in enumerate(lines, start=1):
        label = f"{source} line {number}"
        try:
            line = raw.decode("utf-8-sig" if number == 1 else "utf-8")
        except UnicodeDecodeError:
            raise EnqueueError(f"{label}: not valid UTF-8") from None
        data = _json_object(line, label, EnqueueError)
        if data is None:
            continue
        where.append(label)
        try:
            items.append(as_notification(data, len(items)))
        except EnqueueError as exc:
            raise _relabel(exc, where) from None
    return items, where


def _json_object(line: str, label: str, error: type[PushgresError]) -> dict[str, Any] | None:
    """One line of JSON Lines as an object, None when blank; else ``error`` naming ``label``."""
    if not line.strip():
        return None
    try:
        data = codec.loads(line)
    except codec.JSONDecodeError:
        raise error(f"{label}: not valid JSON") from None
    if not isinstance(data, dict):
        raise error(f"{label}: expected a JSON object")
    return data


def _relabel(exc: EnqueueError, where: Sequence[str]) -> EnqueueError:
    """Name a bad notification by its line (or, for flags, by nothing) instead of its index."""
    if exc.index is None or not 0 <= exc.index < len(where):
        return exc
    reason = str(exc).removeprefix(f"notification {exc.index}: ")
    label = where[exc.index]
    return EnqueueError(f"{label}: {reason}" if label else reason, index=exc.index)


async def _cmd_enqueue(args: argparse.Namespace) -> int:
    if args.file:
        if args.file == "-":
            data, source = sys.stdin.buffer.read(), "stdin"
        else:
            try:
                data = await asyncio.to_thread(pathlib.Path(args.file).read_bytes)
            except OSError as exc:
                raise EnqueueError(f"cannot read {args.file}: {exc.strerror}") from None
            source = args.file
        items, where = _notifications_from_lines(data.splitlines(), source)
    else:
        items, where = [_notification_from_flags(args)], [""]
    try:
        for i, n in enumerate(items):  # bad input is refused before connecting
            validate(n, i)
        async with _database(args, "enqueueing") as conn:
            done = await enqueue_detailed(conn, items)
    except EnqueueError as exc:
        raise _relabel(exc, where) from None
    for e in done:
        print(f"{e.id} duplicate" if e.duplicate else e.id)
    return EXIT_OK


async def _cmd_status(args: argparse.Namespace) -> int:
    async with _database(args, "reading the queue") as conn:
        depth = await store.queue_depth(conn)
        recent = await store.recent_outcomes(conn, float(args.window_s))
        registry = await store.device_counts_of(conn)
    print("queue:")
    if not depth:
        print("  (empty)")
    for r in depth:
        print(
            f"  {r['app']:<24} {r['platform']:<5} depth={r['depth']:<8} ready={r['ready']:<8} "
            f"oldest={r['oldest_age_s']:.1f}s"
        )
    print(f"outcomes in the last {args.window_s:g}s:")
    if not recent:
        print("  (none)")
    for r in recent:
        reason = f" {r['reason']}" if r["reason"] else ""
        print(f"  {r['app']:<24} {r['status']:<14}{reason:<32} {r['n']}")
    print("devices:")
    if not registry:
        print("  (none registered)")
    apps = sorted({app for app, _ in registry})
    for app in apps:
        counts = " ".join(f"{state}={n}" for (a, state), n in sorted(registry.items()) if a == app)
        print(f"  {app:<24} {counts}")
    return EXIT_OK


async def _cmd_outcome(args: argparse.Namespace) -> int:
    async with _database(args, "reading outcomes") as conn:
        found = await outcome(conn, args.ids)
    for nid in args.ids:
        o = found.get(nid)
        if o is None:
            print(json.dumps({"id": nid, "status": "unknown"}))
            continue
        print(
            json.dumps(
                {
                    "id": o.id,
                    "app": o.app,
                    "platform": o.platform,
                    "status": o.status,
                    "provider_status": o.provider_status,
                    "reason": o.reason,
                    "provider_id": o.provider_id,
                    "attempts": o.attempts,
                    "enqueued_at": o.enqueued_at.isoformat(),
                    "finished_at": o.finished_at.isoformat() if o.finished_at else None,
                    "metadata": o.metadata,
                }
            )
        )
    return EXIT_OK


async def _cmd_check_credentials(args: argparse.Namespace) -> int:
    settings = load_config(args.config)
    # The pools' connect warnings would interleave with the report; failures are in it.
    setup_logging("error")
    apps = list(settings.apps)
    if args.app:
        known = {app.name: app for app in apps}
        for name in args.app:
            if name not in known:
                raise PushgresError(
                    f"{args.config} has no app {name!r} (apps: {', '.join(sorted(known))})"
                )
        apps = [known[name] for name in dict.fromkeys(args.app)]
    now = dt.datetime.now(dt.UTC)
    reports = await check_apps(apps, timeout_s=args.timeout_s, now=now)
    if args.json:
        print(to_json(reports, warn_days=args.warn_days, now=now))
    else:
        print(format_table(reports, warn_days=args.warn_days, now=now))
    return exit_status(reports, args.warn_days, now=now)


# -- pushgres devices ---------------------------------------------------------------------------


async def _cmd_devices(args: argparse.Namespace) -> int:
    return await _DEVICE_COMMANDS[args.devices_command](args)


def _unknown_device(app: str, token: str) -> PushgresError:
    return PushgresError(f"app {app!r} has no device {short_token(token)} in the registry")


def _json_line(value: Any) -> str:
    return codec.dumps(value).decode()


async def _devices_register(args: argparse.Namespace) -> int:
    attributes = (
        None if args.attributes is None else _json_object_flag(args.attributes, "--attributes")
    )
    async with _database(args, "registering the device") as conn:
        done = await devices.register(
            conn,
            args.app,
            args.platform,
            args.token,
            user_id=args.user,
            installation_id=args.installation,
            environment=args.environment,
            timezone=args.timezone,
            locale=args.locale,
            app_version=args.app_version,
            attributes=attributes,
        )
    print(done.event, done.state)
    return EXIT_OK


async def _devices_identify(args: argparse.Namespace) -> int:
    async with _database(args, "identifying the device") as conn:
        if not await devices.identify(conn, args.app, args.token, args.user):
            raise _unknown_device(args.app, args.token)
    return EXIT_OK


async def _devices_logout(args: argparse.Namespace) -> int:
    async with _database(args, "logging the device out") as conn:
        if not await devices.logout(conn, args.app, args.token):
            raise _unknown_device(args.app, args.token)
    return EXIT_OK


async def _devices_rotate(args: argparse.Namespace) -> int:
    async with _database(args, "rotating the token") as conn:
        event = await devices.rotate(conn, args.app, args.old_token, args.new_token)
    if event is None:
        raise _unknown_device(args.app, args.old_token)
    print(event)
    return EXIT_OK


async def _devices_unregister(args: argparse.Namespace) -> int:
    if args.token is not None:
        tokens = [args.token]
    else:
        text, _ = await _read_text(args.file)
        tokens = [line.strip() for line in text.splitlines() if line.strip()]
    async with _database(args, "unregistering devices") as conn:
        count = await devices.unregister_many(conn, args.app, tokens)
    print(count)
    return EXIT_OK


async def _devices_show(args: argparse.Namespace) -> int:
    async with _database(args, "reading the registry") as conn:
        if args.user is not None:
            found = await devices.user_devices(conn, args.app, args.user)
        else:
            one = await devices.device(conn, args.app, args.token)
            if one is None:
                raise _unknown_device(args.app, args.token)
            found = [one]
    for device in found:
        print(_json_line(devices.as_dict(device)))
    return EXIT_OK


async def _devices_history(args: argparse.Namespace) -> int:
    async with _database(args, "reading the device's history") as conn:
        events = await devices.history(conn, args.app, args.token)
        if not events and await devices.device(conn, args.app, args.token) is None:
            raise _unknown_device(args.app, args.token)
    for e in events:
        line = {"at": e.at.isoformat(), "event": e.event, "user_id": e.user_id, "detail": e.detail}
        print(_json_line(line))
    return EXIT_OK


async def _devices_import(args: argparse.Namespace) -> int:
    text, source = await _read_text(args.file)
    is_csv = args.format == "csv" or (args.format is None and args.file.lower().endswith(".csv"))
    rows = _csv_rows(text, source) if is_csv else _json_rows(text, source)
    async with _database(args, "importing devices") as conn:
        report = await devices.import_devices(conn, rows, default_app=args.app)
    print(f"inserted {report.inserted}, updated {report.updated}, moved {report.moved}")
    return EXIT_OK


async def _devices_export(args: argparse.Namespace) -> int:
    async with _database(args, "exporting devices") as conn:
        found = devices.export_devices(conn, args.app, states=args.state)
        async with contextlib.aclosing(found):
            if args.format == "csv":
                writer = csv.writer(sys.stdout, lineterminator="\n")
                writer.writerow(devices.EXPORT_FIELDS)
                async for device in found:
                    writer.writerow(_csv_cells(device))
            else:
                async for device in found:
                    sys.stdout.write(_json_line(device) + "\n")
    return EXIT_OK


async def _devices_uninstalls(args: argparse.Namespace) -> int:
    async with _database(args, "reading the registry") as conn:
        found = await store.uninstalls_by_day(conn, args.days, args.app)
    if args.json:
        for r in found:
            print(_json_line({"day": r["day"].isoformat(), "app": r["app"], "uninstalls": r["n"]}))
        return EXIT_OK
    if not found:
        print(f"no uninstalls found in the last {args.days} days")
    for r in found:
        print(f"{r['day'].isoformat()}  {r['app']:<24} {r['n']}")
    return EXIT_OK


_DEVICE_COMMANDS: dict[str, Callable[[argparse.Namespace], Coroutine[Any, Any, int]]] = {
    "uninstalls": _devices_uninstalls,
    "register": _devices_register,
    "identify": _devices_identify,
    "logout": _devices_logout,
    "rotate": _devices_rotate,
    "unregister": _devices_unregister,
    "show": _devices_show,
    "history": _devices_history,
    "import": _devices_import,
    "export": _devices_export,
}


async def _read_text(path: str) -> tuple[str, str]:
    """A UTF-8 file's text ('-': stdin's) and the name to give it in errors."""
    if path == "-":
        data, source = sys.stdin.buffer.read(), "stdin"
    else:
        try:
            data = await asyncio.to_thread(pathlib.Path(path).read_bytes)
        except OSError as exc:
            raise DeviceError(f"cannot read {path}: {exc.strerror}") from None
        source = path
    try:
        return data.decode("utf-8-sig"), source
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise DeviceError(f"{source} line {line}: not valid UTF-8") from None


def _csv_rows(text: str, source: str) -> list[dict[str, str]]:
    """The rows of a CSV text under its header row (blank lines skipped)."""
    reader = csv.DictReader(io.StringIO(text, newline=""))
    rows = []
    try:
        for row in reader:
            if None in row:
                raise DeviceError(f"{source} line {reader.line_num}: more cells than the header")
            rows.append(row)
    except csv.Error as exc:
        raise DeviceError(f"{source} line {reader.line_num}: not valid CSV ({exc})") from None
    return rows


def _json_rows(text: str, source: str) -> list[dict[str, Any]]:
    """The objects of a JSON Lines text (blank lines skipped)."""
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        row = _json_object(line, f"{source} line {number}", DeviceError)
        if row is not None:
            rows.append(row)
    return rows


def _csv_cells(device: dict[str, Any]) -> list[str]:
    cells = []
    for name in devices.EXPORT_FIELDS:
        value = device[name]
        if name == "attributes":
            cells.append(_json_line(value))
        else:
            cells.append("" if value is None else str(value))
    return cells


# ---------------------------------------------------------------------------------------------
# Argument parsing: the texts below are what `pushgres … --help` shows.

DESCRIPTION = """\
Deliver APNs and FCM push notifications queued in PostgreSQL.

Other services queue notifications in the pushgres.queue table (plain SQL, the Python API or
`pushgres enqueue`); `pushgres run` sends them and records every outcome.

Database commands take the database from --dsn, else $PUSHGRES_DSN, else the database.dsn of
the --config file. Errors are one line on stderr; the exit status is 0 on success, 1 on an
error, 2 on a usage error."""

EPILOG = "Run `pushgres COMMAND --help` for a command's options."

MIGRATE = """\
Create the pushgres schema in the database, or upgrade it to this version of pushgres.

Idempotent, and safe to run from several hosts at once (an advisory lock serializes them).
Prints the migration versions applied, or that the schema is up to date. Refuses a database
whose schema is newer than this pushgres."""

RUN = """\
Run the delivery daemon: claim queued notifications, send them to APNs and FCM, and write
their outcomes to pushgres.results.

Refuses to start on an invalid config or on a database without this version's schema (run
`pushgres migrate` first). SIGTERM or SIGINT drains: no new claims, in-flight sends finish
within daemon.shutdown_timeout_s, the rest stays queued, exit 0. A second signal exits at once
(open batches roll back and stay queued).

SIGHUP re-reads the config file: apps added, removed or changed (credentials, endpoint, rate
limit) take effect without a restart and without dropping sends in flight; a config that does
not load is refused with an error line and the running one stays. Under systemd (Type=notify)
it reports READY=1, STATUS=, WATCHDOG=1 and STOPPING=1; with [admin] listen it serves
/metrics, /healthz, /readyz and /dashboard/."""

ENQUEUE = """\
Enqueue one notification given by flags, or many from JSON Lines (--file).

Each JSON line is one notification object with the columns of pushgres.queue: app, platform,
device_token, payload, and optionally priority, push_type, collapse_id, expires_at, topic,
send_at (ISO 8601 or Unix seconds), dedupe_key, max_attempts, metadata, category, timezone,
local_send_at (a wall-clock time without a zone, read in the device's). Blank lines are
skipped. Every notification is checked before anything is written, and all are enqueued in
one transaction: a bad one (named by its line) enqueues none.

Prints one line per notification, in input order: its id, or `ID duplicate` when its
(app, dedupe_key) was enqueued before -- or earlier in the same input -- in which case nothing
new was queued and ID is the notification that holds the key (`pushgres outcome ID` reads its
outcome)."""

STATUS = """\
Print the queue depth per app and platform (all rows, rows ready to send, age of the oldest),
the outcomes of the last --window-s seconds per app, status and reason, and the registered
devices per app by state (active, invalid, stale, uninstalled, unregistered)."""

OUTCOME = """\
Print the outcome of each notification id as one JSON object per line, in the order given:
id, app, platform, status (queued, sent, failed, token_invalid, expired or suppressed),
provider_status (the HTTP status), reason, provider_id (the apns-id or the FCM message name), attempts,
enqueued_at, finished_at and metadata (the caller's JSON object, or null). An id the database
does not know prints {"id": ID, "status": "unknown"}."""

SEND = """\
Send a portable message to users: one notification per active device of each user, on each
app of the target (an app, or a group of apps from the config's [groups]; with --config, that
file's groups are written to the database first). Stale, dead, uninstalled and unregistered
devices are skipped, and so is a device whose user logged out of it. Prints the fan-out's
group id and counts; `pushgres group ID` shows its outcome later.

  pushgres send --config pushgres.toml --to shop --user 42 --user 43 \\
      --title "Your cart misses you" --body "3 items are waiting" --data '{"cart": 7}'"""

GROUP = """\
Print a fan-out's outcome: its notifications by status (queued while not finished, then sent,
failed, token_invalid, expired or suppressed) and reason, per user with --per-user."""

CHECK_CREDENTIALS = """\
Check every app's credential and whether its provider accepts it, delivering nothing.

For each app of the config (or each --app): what the credential is, when it expires, and
one live request over the app's own endpoint, CA file and pool settings, as the daemon
would send it:

  APNs token key    the .p8 key is an EC P-256 key, the key id and team id are well formed;
  APNs certificate  its subject, its topic (UID, or the topics of a Sandbox & Production
                    certificate) against `topic`, the environment it is for against
                    `environment`, and its expiry;
                    then, for both, a push to a device token that cannot exist: APNs
                    answering BadDeviceToken proves the credential and topic are accepted,
                    any other answer (InvalidProviderToken, BadCertificateEnvironment,
                    TopicDisallowed, ...) names what is wrong.
  FCM               the service-account file, the OAuth token exchange, then a
                    validate_only send to a dummy registration token: FCM answering that
                    the token is invalid proves the account may send for the project;
                    PERMISSION_DENIED, SENDER_ID_MISMATCH or NOT_FOUND name what is wrong.

Prints a table, then for each app that needs attention what to fix (--json: a JSON array,
one object per app with every check). Secrets (keys, passwords, tokens) are never printed.
Every app is checked at once, each within --timeout-s. Needs the config file, not the
database.

Exit status: 0 when every credential works and none expires within --warn-days days, 1
otherwise (or on an error), 2 on a usage error."""

DEVICES = """\
Keep the device registry (pushgres.devices): which device tokens each app has, whose they
are, and whether they can still receive notifications.

The subcommands do what the Python API (pushgres.devices) and the registry's SQL functions
do: register and refresh devices, attach them to users and detach them, replace and retire
tokens, read devices and their history, and move whole registries in (import) and out
(export). Each takes --dsn or --config like the other database commands. Errors are one line
on stderr and exit 1; so is a token the registry does not know, for identify, logout,
rotate, show --token and history."""

DEVICES_REGISTER = """\
Register a device, or refresh one the registry knows: its last-seen time, and the fields
given (the others keep their values; --attributes is merged into the device's).

A token belongs to one user per app: registering it with another --user moves it. A token a
provider declared dead becomes active again, since it is registered after the provider's
timestamp (Apple's rule). With --installation, a new token replaces the installation's
previous one, whose user moves to it.

Prints what happened and the device's state afterwards, such as `registered active`:
registered (new), seen (known, nothing else changed), identified, moved (from another
user), rotated (replaced the installation's previous token) or reactivated (it was invalid,
stale, uninstalled or unregistered)."""

DEVICES_IDENTIFY = """\
Attach a device to a user (at login or checkout): the user's notifications go to it. A
token belongs to one user per app, so identifying it for another user moves it.

Prints nothing; exit 1 when the registry does not know the token."""

DEVICES_LOGOUT = """\
Detach a device from its user (at logout): it stays registered, anonymous, and stops
receiving that user's notifications -- a shared device gets nothing of the previous user's.

Prints nothing; exit 1 when the registry does not know the token."""

DEVICES_ROTATE = """\
Replace a device's token by a new one (the app was given a new token by APNs or FCM): the
old token is retired (unregistered), the new one takes its user and its fields, and is
registered if new.

Prints the new token's event (registered, seen, moved, ...); exit 1 when the registry does
not know the old token."""

DEVICES_UNREGISTER = """\
Retire tokens the app no longer uses (the user opted out, the app was reinstalled): they
receive nothing more, until registered again. --token names one; --file reads one token per
line (blank lines skipped; '-' reads stdin), all retired in one statement.

Prints how many devices were unregistered: the tokens known and not unregistered already."""

DEVICES_SHOW = """\
Print a user's devices (--user; most recently seen first, in every state) or one device
(--token), one JSON object per line: app, platform, token, user_id, installation_id,
environment, timezone, locale, app_version, attributes, registered_at, last_seen_at, state
(active, invalid, stale, uninstalled or unregistered), state_reason, invalidated_at and
state_changed_at. Times are ISO 8601; tokens are printed whole.

A user without devices prints nothing; a --token the registry does not know exits 1."""

DEVICES_HISTORY = """\
Print what happened to a device, oldest first, one JSON object per line: at, event
(registered, imported, identified, moved, logged_out, rotated, invalidated, reactivated,
unregistered), user_id (whose it was then) and detail (null, or an object: the previous
user of a move, the new token of a rotation, the provider's reason of an invalidation).

Exit 1 when the registry does not know the token."""

DEVICES_IMPORT = """\
Load devices from another system, or from another registry, in one transaction: a CSV file
with a header row (--format csv, the default for a .csv file) or JSON Lines (one device
object per line, the default otherwise and for stdin).

The fields (CSV columns, JSON keys): app (or --app for the rows without one), platform
(apns or fcm), token, and optionally user_id, installation_id, environment (production or
sandbox), timezone (an IANA name, such as Europe/Paris), locale, app_version, attributes (a
JSON object; in CSV, its JSON text), registered_at and last_seen_at (ISO 8601; no zone:
UTC). An empty cell is a value not given; any other column is refused, the state columns of
an export too (the registry decides states). A device appears once.

Every row is checked first: a bad one is named by its number (rows count from 1; the CSV
header and blank lines do not count) and its field, and nothing is imported. New devices
are inserted, active -- or invalid, when a provider declared the token dead after the row's
last_seen_at. Known devices are updated as `register` would: the given fields filled in,
attributes merged, last seen the later time, a token of another user moved to the row's; a
device not active becomes active when the row saw it after its state changed (an invalid
one: after the provider's timestamp). A row without times counts as seen now. Each device's
history gets `imported`, or `moved`.

Prints the counts: inserted (new devices), updated (known ones) and moved (known as another
user's)."""

DEVICES_EXPORT = """\
Print every device (of --app; in the --state states) to stdout: JSON Lines, or CSV with a
header row (--format csv: attributes as JSON text, an empty cell for null).

The fields are those `import` takes, then state, state_reason, invalidated_at and
state_changed_at; times are ISO 8601 in UTC; tokens are printed whole. The devices come in
(app, token) order from one consistent snapshot, through a server-side cursor, so a registry
of millions streams in little memory. To load an export into another registry, drop its
state columns (import refuses them)."""


DEVICES_UNINSTALLS = """\
Print how many devices were found uninstalled per day and app: devices whose uninstall probe
(a silent push to a device not seen for [apps.<name>] uninstall_probe_after_days) was answered
with a dead token. Newest day first."""


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text!r}")
    return value


def _notification_id(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a notification id: {text!r}") from None
    if not -BIGINT_MAX - 1 <= value <= BIGINT_MAX:
        raise argparse.ArgumentTypeError(f"not a notification id: {text!r} (out of range)")
    return value


def _days(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of days: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more days, got {text!r}")
    return value


def _add_command(sub: Any, name: str, summary: str, description: str) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = sub.add_parser(
        name,
        help=summary,
        description=description,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    return parser


def _add_db_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config", metavar="FILE", help="pushgres TOML config whose database.dsn to use"
    )
    p.add_argument(
        "--dsn",
        help="PostgreSQL connection URI, postgresql://user:password@host:port/database "
        "(default: $PUSHGRES_DSN, else the --config file's database.dsn)",
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pushgres",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "-V",
        "--version",
        action="version",
        version=f"%(prog)s {__version__}",
        help="print the pushgres version and exit",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", title="commands")

    p = _add_command(sub, "migrate", "create or upgrade the pushgres schema", MIGRATE)
    _add_db_args(p)

    p = _add_command(sub, "run", "run the delivery daemon", RUN)
    p.add_argument(
        "--config",
        required=True,
        metavar="FILE",
        help="pushgres TOML config (every key: config/pushgres.example.toml)",
    )

    p = _add_command(
        sub, "enqueue", "enqueue notifications from flags or JSON Lines; print their ids", ENQUEUE
    )
    _add_db_args(p)
    p.add_argument(
        "--file",
        metavar="PATH",
        help="JSON Lines file, one notification object per line ('-' reads stdin); "
        "replaces the notification flags below",
    )
    p.add_argument("--app", help="the app: names an [apps.<name>] table of the daemon's config")
    p.add_argument("--platform", choices=("apns", "fcm"), help="the app's provider")
    p.add_argument("--token", help="device token (APNs: hexadecimal; FCM: the registration token)")
    p.add_argument(
        "--payload",
        metavar="JSON",
        help="native payload as a JSON object: for APNs the whole body with 'aps', for FCM "
        "the HTTP v1 message without 'token'",
    )
    p.add_argument(
        "--priority",
        type=int,
        default=10,
        choices=(10, 5, 1),
        help="10 sends at once, 5 and 1 save power (FCM: 10 is HIGH, else NORMAL); default 10",
    )
    p.add_argument(
        "--push-type",
        help="APNs apns-push-type (alert, background, voip, ...); default: derived from the "
        "payload",
    )
    p.add_argument(
        "--collapse-id",
        help="notifications with one collapse id replace each other on the device (<= 64 "
        "bytes; FCM collapse_key)",
    )
    p.add_argument("--topic", help="APNs topic, overriding the app's configured topic")
    p.add_argument(
        "--expires-in",
        type=_seconds,
        metavar="SECONDS",
        help="expire this many seconds from now: not sent after that (APNs apns-expiration, "
        "FCM TTL)",
    )
    p.add_argument(
        "--send-at", metavar="TIME", help="ISO 8601 time before which it is not sent (no zone: UTC)"
    )
    _add_guardrail_flags(p)
    p.add_argument(
        "--timezone",
        metavar="ZONE",
        help="the device's IANA time zone for quiet hours and --local-send-at (default: the "
        "registry's for the token, else the app's)",
    )
    p.add_argument(
        "--dedupe-key",
        metavar="KEY",
        help="idempotency key (1-256 characters): enqueueing the same (app, key) again "
        "queues nothing and prints the first one's id marked duplicate",
    )
    p.add_argument(
        "--max-attempts",
        type=int,
        default=5,
        metavar="N",
        help="give up after N attempts (1-100); default 5",
    )
    p.add_argument(
        "--metadata",
        metavar="JSON",
        help="caller data as a JSON object, copied to the outcome (never sent)",
    )

    p = _add_command(sub, "status", "queue depth per app and recent outcomes", STATUS)
    _add_db_args(p)
    p.add_argument(
        "--window-s",
        type=_seconds,
        default=60.0,
        metavar="SECONDS",
        help="how far back to count outcomes; default 60",
    )

    p = _add_command(sub, "outcome", "print notifications' outcomes as JSON lines", OUTCOME)
    _add_db_args(p)
    p.add_argument("ids", type=_notification_id, nargs="+", metavar="ID", help="notification id(s)")

    p = _add_command(
        sub,
        "check-credentials",
        "check each app's credential with its provider, delivering nothing",
        CHECK_CREDENTIALS,
    )
    p.add_argument(
        "--config",
        required=True,
        metavar="FILE",
        help="pushgres TOML config whose apps to check",
    )
    p.add_argument(
        "--app",
        action="append",
        metavar="NAME",
        help="check only this app (an [apps.<name>] table); repeat for several; default: all",
    )
    p.add_argument(
        "--json",
        action="store_true",
        help="print a JSON array (one object per app) instead of a table",
    )
    p.add_argument(
        "--warn-days",
        type=_days,
        default=DEFAULT_WARN_DAYS,
        metavar="N",
        help=f"fail when a credential expires within N days; default {DEFAULT_WARN_DAYS}",
    )
    p.add_argument(
        "--timeout-s",
        type=_seconds,
        default=DEFAULT_CHECK_TIMEOUT_S,
        metavar="SECONDS",
        help=f"how long each app's check may take; default {DEFAULT_CHECK_TIMEOUT_S:g}",
    )

    _add_devices_command(sub)
    _add_send_commands(sub)

    # These two parse their own arguments (see `pushgres simulate --help`).
    sub.add_parser("simulate", help="run local APNs/FCM simulators for development", add_help=False)
    sub.add_parser("demo", help="the end-to-end demo on an embedded PostgreSQL", add_help=False)
    return parser


def _add_guardrail_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--category",
        metavar="NAME",
        help="one of the config's [categories] (default: the app's default category)",
    )
    p.add_argument(
        "--local-send-at",
        type=_local_time_flag,
        metavar="LOCAL_TIME",
        help="a wall-clock time such as 2026-12-24T09:00 (no zone): sent when it is that time "
        "in each device's own time zone",
    )


def _local_time_flag(value: str) -> dt.datetime:
    try:
        parsed = dt.datetime.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not an ISO 8601 local time such as 2026-12-24T09:00: {value!r}"
        ) from None
    if parsed.tzinfo is not None:
        raise argparse.ArgumentTypeError(
            "a wall-clock time, without a UTC offset: it is read in each device's time zone"
        )
    return parsed


def _add_send_commands(sub: Any) -> None:
    p = _add_command(sub, "send", "send a portable message to users' devices (a fan-out)", SEND)
    _add_db_args(p)
    p.add_argument(
        "--to",
        required=True,
        metavar="APP_OR_GROUP",
        help="an app, or a group of apps from the config's [groups]",
    )
    p.add_argument("--user", action="append", metavar="USER_ID", help="a user; repeatable")
    p.add_argument("--users-file", metavar="PATH", help="user ids, one per line ('-' reads stdin)")
    p.add_argument(
        "--message", metavar="JSON", help="the portable message as a JSON object (flags add to it)"
    )
    for key in _MESSAGE_FLAGS:
        p.add_argument(f"--{key}", help=f"the message's {key}")
    p.add_argument("--data", metavar="JSON", help="custom data, a JSON object")
    p.add_argument("--badge", type=int, metavar="N", help="the app icon's badge number")
    p.add_argument("--collapse-key", help="a newer message with this key replaces an older one")
    p.add_argument("--ttl", type=int, metavar="SECONDS", help="give up after this long")
    p.add_argument(
        "--priority",
        dest="message_priority",
        choices=("high", "normal"),
        help="high (default) sends at once; normal lets the device save power",
    )
    p.add_argument(
        "--overrides",
        metavar="JSON",
        help='native pieces per platform merged over the rendering: {"apns": {...}, "fcm": {...}}',
    )
    p.add_argument("--send-at", metavar="TIME", help="ISO 8601 time before which it is not sent")
    _add_guardrail_flags(p)
    p.add_argument(
        "--dedupe-key",
        metavar="KEY",
        help="a fan-out repeating (target, key) queues nothing and names the first one's group",
    )
    p.add_argument("--metadata", metavar="JSON", help="caller data copied to every outcome")
    p.add_argument("--max-attempts", type=int, default=5, metavar="N", help="default 5")
    p.add_argument(
        "--connections",
        type=int,
        default=1,
        metavar="N",
        help="enqueue in slices of 250,000 users on N connections at once, each slice its own "
        "transaction (resumable with --dedupe-key); default 1: one transaction",
    )
    p.add_argument(
        "--wait",
        type=_seconds,
        metavar="SECONDS",
        help="then wait up to this long for the group to finish and print its outcome",
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of text")

    p = _add_command(sub, "group", "a fan-out's outcome by status and reason", GROUP)
    _add_db_args(p)
    p.add_argument(
        "group_id", type=_notification_id, metavar="GROUP_ID", help="the fan-out's group id"
    )
    p.add_argument("--per-user", action="store_true", help="counts per user")
    p.add_argument(
        "--wait", type=_seconds, metavar="SECONDS", help="wait up to this long for it to finish"
    )
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")


def _add_devices_command(sub: Any) -> None:
    p = _add_command(
        sub, "devices", "the device registry: register, look up, import, export", DEVICES
    )
    commands = p.add_subparsers(
        dest="devices_command",
        required=True,
        metavar="SUBCOMMAND",
        title="subcommands",
        help="what to do with the registry",
    )

    def command(name: str, summary: str, description: str) -> argparse.ArgumentParser:
        q = _add_command(commands, name, summary, description)
        _add_db_args(q)
        return q

    def app(q: Any, *, required: bool = True) -> None:
        q.add_argument("--app", required=required, help="the app (1-64 of A-Z a-z 0-9 _ . -)")

    def token(q: Any, *, required: bool = True) -> None:
        q.add_argument(
            "--token",
            required=required,
            help="the device token (APNs: hexadecimal; FCM: the registration token)",
        )

    def user(q: Any, *, required: bool = True) -> None:
        q.add_argument("--user", required=required, metavar="USER_ID", help="the user's id")

    q = command("register", "register or refresh a device", DEVICES_REGISTER)
    app(q)
    q.add_argument("--platform", required=True, choices=("apns", "fcm"), help="its provider")
    token(q)
    user(q, required=False)
    q.add_argument(
        "--installation",
        metavar="ID",
        help="the app installation's id: a new token of the same installation replaces the "
        "previous one",
    )
    q.add_argument(
        "--environment",
        choices=("production", "sandbox"),
        help="the APNs environment the token is for",
    )
    q.add_argument("--timezone", metavar="ZONE", help="IANA time zone name (Europe/Paris)")
    q.add_argument("--locale", help="the device's locale (fr-FR)")
    q.add_argument("--app-version", metavar="VERSION", help="the app version it runs")
    q.add_argument(
        "--attributes",
        metavar="JSON",
        help="free attributes as a JSON object, merged into the device's",
    )

    q = command("identify", "attach a device to a user", DEVICES_IDENTIFY)
    app(q)
    token(q)
    user(q)

    q = command("logout", "detach a device from its user", DEVICES_LOGOUT)
    app(q)
    token(q)

    q = command("rotate", "replace a device's token by a new one", DEVICES_ROTATE)
    app(q)
    q.add_argument("--old-token", required=True, metavar="TOKEN", help="the token replaced")
    q.add_argument("--new-token", required=True, metavar="TOKEN", help="the token replacing it")

    q = command("unregister", "retire tokens the app no longer uses", DEVICES_UNREGISTER)
    app(q)
    which = q.add_mutually_exclusive_group(required=True)
    token(which, required=False)
    which.add_argument(
        "--file", metavar="PATH", help="file of tokens, one per line ('-' reads stdin)"
    )

    q = command("show", "print a user's devices, or one device, as JSON lines", DEVICES_SHOW)
    app(q)
    which = q.add_mutually_exclusive_group(required=True)
    user(which, required=False)
    token(which, required=False)

    q = command("history", "print a device's history as JSON lines", DEVICES_HISTORY)
    app(q)
    token(q)

    q = command("import", "load devices from CSV or JSON Lines", DEVICES_IMPORT)
    q.add_argument(
        "--file", required=True, metavar="PATH", help="the file to import ('-' reads stdin)"
    )
    q.add_argument(
        "--format",
        choices=("csv", "jsonl"),
        help="csv (with a header row) or jsonl; default: csv for a .csv file, else jsonl",
    )
    q.add_argument("--app", help="the app of the rows that name none")

    q = command("export", "print every device as JSON lines or CSV", DEVICES_EXPORT)
    app(q, required=False)
    q.add_argument(
        "--state",
        action="append",
        choices=devices.STATES,
        help="only devices in this state; repeat for several; default: every state",
    )
    q.add_argument(
        "--format",
        choices=("jsonl", "csv"),
        default="jsonl",
        help="jsonl (one object per line) or csv (with a header row); default jsonl",
    )

    q = command("uninstalls", "devices found uninstalled, per day and app", DEVICES_UNINSTALLS)
    app(q, required=False)
    q.add_argument(
        "--days", type=_days, default=30, metavar="N", help="the last N days; default 30"
    )
    q.add_argument("--json", action="store_true", help="print JSON lines instead of text")


# -- pushgres send / pushgres group ---------------------------------------------------------

_MESSAGE_FLAGS = ("title", "subtitle", "body", "sound", "image", "link", "thread")


def _time_flag(text: str, flag: str) -> dt.datetime:
    try:
        value = dt.datetime.fromisoformat(text)
    except ValueError:
        raise EnqueueError(f"{flag}: not an ISO 8601 time: {text!r}") from None
    return value if value.tzinfo is not None else value.replace(tzinfo=dt.UTC)


def _message_from_flags(args: argparse.Namespace) -> dict[str, Any]:
    message = _json_object_flag(args.message, "--message") if args.message else {}
    for key in _MESSAGE_FLAGS:
        value = getattr(args, key)
        if value is not None:
            message[key] = value
    if args.data is not None:
        message["data"] = _json_object_flag(args.data, "--data")
    for key, value in (
        ("badge", args.badge),
        ("collapse_key", args.collapse_key),
        ("ttl", args.ttl),
        ("priority", args.message_priority),
    ):
        if value is not None:
            message[key] = value
    return message


async def _cmd_send(args: argparse.Namespace) -> int:
    users = list(args.user or [])
    if args.users_file:
        text, _ = await _read_text(args.users_file)
        users += [line.strip() for line in text.splitlines() if line.strip()]
    if not users:
        raise EnqueueError("give --user (repeatable) or --users-file")
    message = _message_from_flags(args)
    overrides = _json_object_flag(args.overrides, "--overrides") if args.overrides else None
    metadata = _json_object_flag(args.metadata, "--metadata") if args.metadata else None
    send_at = _time_flag(args.send_at, "--send-at") if args.send_at else None
    config = load_config(args.config) if args.config else None
    async with _database(args, "sending") as conn:
        if config is not None and config.groups:  # for a send before any daemon wrote them
            await store.sync_app_groups(conn, config.groups, [a.name for a in config.apps])
        options: dict[str, Any] = {
            "overrides": overrides,
            "send_at": send_at,
            "dedupe_key": args.dedupe_key,
            "metadata": metadata,
            "max_attempts": args.max_attempts,
            "category": args.category,
            "local_send_at": args.local_send_at,
        }
        if args.connections == 1:
            done = await fanout.send_to_users(conn, args.to, users, message, **options)
        else:
            if not 2 <= args.connections <= 16:
                raise EnqueueError("--connections must be 1..16")
            pool = await asyncpg.create_pool(
                resolve_dsn(args.dsn, args.config),
                min_size=args.connections,
                max_size=args.connections,
                timeout=10,
            )
            try:
                done = await fanout.send_to_users(
                    pool, args.to, users, message, connections=args.connections, **options
                )
            finally:
                await pool.close()
        if args.json:
            print(_json_line(dataclasses.asdict(done)))
        else:
            repeated = " (duplicate: nothing new queued)" if done.duplicate else ""
            print(
                f"group {done.group_id}: {done.notifications} notification(s) to "
                f"{done.users - done.users_without_device} of {done.users} user(s); "
                f"{done.users_without_device} without an active device{repeated}"
            )
        if args.wait is None:
            return EXIT_OK
        return await _print_group(
            conn, done.group_id, per_user=False, as_json=args.json, wait_s=args.wait
        )


async def _cmd_group(args: argparse.Namespace) -> int:
    async with _database(args, "reading the group") as conn:
        return await _print_group(
            conn, args.group_id, per_user=args.per_user, as_json=args.json, wait_s=args.wait
        )


async def _print_group(
    conn: asyncpg.Connection, group_id: int, *, per_user: bool, as_json: bool, wait_s: float | None
) -> int:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + (wait_s or 0.0)
    while True:
        found = await fanout.group_outcome(conn, group_id, per_user=per_user)
        if found is None:
            raise PushgresError(f"no fan-out group {group_id}")
        if found.done or loop.time() >= deadline:
            break
        await asyncio.sleep(min(0.5, max(0.0, deadline - loop.time())))
    if as_json:
        print(
            _json_line(
                {
                    "group_id": found.group_id,
                    "target": found.target,
                    "apps": list(found.apps),
                    "created_at": found.created_at.isoformat(),
                    "users": found.users,
                    "users_without_device": found.users_without_device,
                    "notifications": found.notifications,
                    "complete": found.complete,
                    "done": found.done,
                    "by_status": found.by_status(),
                    "counts": [dataclasses.asdict(c) for c in found.counts],
                }
            )
        )
    else:
        print(
            f"group {found.group_id} to {found.target} ({', '.join(found.apps)}), "
            f"{found.created_at:%Y-%m-%d %H:%M:%S}: {found.notifications} notification(s), "
            f"{found.users} user(s), {found.users_without_device} without an active device"
        )
        for c in found.counts:
            who = f"{c.user_id:<24} " if per_user else ""
            print(f"  {who}{c.status:<14} {c.reason or '':<32} {c.count}")
        if not found.complete:
            print("  (still being enqueued: a fan-out in slices that has not finished)")
        elif not found.done:
            print("  (not finished: some are still queued)")
    return EXIT_OK


_COMMANDS: dict[str, Callable[[argparse.Namespace], Coroutine[Any, Any, int]]] = {
    "send": _cmd_send,
    "group": _cmd_group,
    "migrate": _cmd_migrate,
    "run": _cmd_run,
    "enqueue": _cmd_enqueue,
    "status": _cmd_status,
    "outcome": _cmd_outcome,
    "check-credentials": _cmd_check_credentials,
    "devices": _cmd_devices,
}


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list and args_list[0] == "simulate":
        from .simulator.cli import main as simulate_main

        return int(simulate_main(args_list[1:]))
    if args_list and args_list[0] == "demo":
        from .demo import main as demo_main

        return int(demo_main(args_list[1:]))
    args = _parser().parse_args(args_list)
    try:
        return _run(lambda: _COMMANDS[args.command](args))
    except PushgresError as exc:
        print(f"pushgres {args.command}: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return EXIT_ERROR
    except BrokenPipeError:
        # The reader of stdout went away (`pushgres outcome … | head`): stop quietly, and keep
        # Python from reporting the pipe again when it flushes stdout at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
