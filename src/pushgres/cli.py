"""The ``pushgres`` command: argument parsing, logging setup, the uvloop runner, exit codes.

Commands: ``migrate``, ``run``, ``enqueue``, ``status``, ``outcome``, ``simulate``, ``demo``.
Every expected failure (bad config, missing schema, bad input, unreachable database) ends
with one line on stderr naming the problem and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import logging
import os
import signal
import sys
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

import asyncpg
import uvloop

from . import codec
from .api import enqueue, outcome
from .config import load_config, resolve_dsn
from .daemon import Daemon
from .db.migrate import migrate
from .db.queries import QUERIES
from .exceptions import EnqueueError, PushgresError
from .models import Notification
from .observability.logging import setup_logging

__all__ = ["main"]

logger = logging.getLogger("pushgres")

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2


def _run(coro_factory: Callable[[], Coroutine[Any, Any, int]]) -> int:
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro_factory())


async def _connect(dsn: str) -> asyncpg.Connection:
    try:
        return await asyncpg.connect(dsn, timeout=10)
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        raise PushgresError(f"cannot connect to PostgreSQL: {type(exc).__name__}: {exc}") from None


async def _cmd_migrate(args: argparse.Namespace) -> int:
    conn = await _connect(resolve_dsn(args.dsn, args.config))
    try:
        applied = await migrate(conn)
    finally:
        await conn.close()
    if applied:
        print(f"applied migration(s): {', '.join(str(v) for v in applied)}")
    else:
        print("schema is up to date")
    return EXIT_OK


async def _cmd_run(args: argparse.Namespace) -> int:
    settings = load_config(args.config)
    setup_logging(settings.daemon.log_level)
    daemon = Daemon(settings)
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

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig.name)
    await daemon.run()
    return EXIT_OK


def _notification_from_flags(args: argparse.Namespace) -> Notification:
    if not (args.app and args.platform and args.token and args.payload):
        raise EnqueueError("give --app, --platform, --token and --payload, or --file")
    try:
        payload = codec.loads(args.payload)
    except codec.JSONDecodeError:
        raise EnqueueError("--payload is not valid JSON") from None
    data: dict[str, Any] = {
        "app": args.app,
        "platform": args.platform,
        "device_token": args.token,
        "payload": payload,
        "priority": args.priority,
        "push_type": args.push_type,
        "collapse_id": args.collapse_id,
        "topic": args.topic,
        "dedupe_key": args.dedupe_key,
        "max_attempts": args.max_attempts,
    }
    if args.expires_in is not None:
        data["expires_at"] = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=args.expires_in)
    if args.send_at is not None:
        data["send_at"] = args.send_at
    if args.metadata is not None:
        data["metadata"] = json.loads(args.metadata)
    try:
        return Notification.from_mapping({k: v for k, v in data.items() if v is not None})
    except (ValueError, TypeError) as exc:
        raise EnqueueError(str(exc)) from None


def _notifications_from_lines(lines: Sequence[str], source: str) -> list[Notification]:
    items = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            data = codec.loads(line)
        except codec.JSONDecodeError:
            raise EnqueueError(f"{source} line {number}: not valid JSON") from None
        if not isinstance(data, dict):
            raise EnqueueError(f"{source} line {number}: expected a JSON object")
        try:
            items.append(Notification.from_mapping(data))
        except (ValueError, TypeError) as exc:
            raise EnqueueError(f"{source} line {number}: {exc}") from None
    return items


def _read_text(path: str) -> str:
    with open(path, encoding="utf-8") as f:
        return f.read()


async def _cmd_enqueue(args: argparse.Namespace) -> int:
    if args.file:
        if args.file == "-":
            lines, source = sys.stdin.read().splitlines(), "stdin"
        else:
            try:
                text = await asyncio.to_thread(_read_text, args.file)
                lines, source = text.splitlines(), args.file
            except OSError as exc:
                raise EnqueueError(f"cannot read {args.file}: {exc.strerror}") from None
        items = _notifications_from_lines(lines, source)
    else:
        items = [_notification_from_flags(args)]
    conn = await _connect(resolve_dsn(args.dsn, args.config))
    try:
        ids = await enqueue(conn, items)
    finally:
        await conn.close()
    for nid in ids:
        print(nid)
    return EXIT_OK


async def _cmd_status(args: argparse.Namespace) -> int:
    conn = await _connect(resolve_dsn(args.dsn, args.config))
    try:
        depth = await conn.fetch(QUERIES["queue_depth"])
        recent = await conn.fetch(QUERIES["recent_outcomes"], float(args.window_s))
    finally:
        await conn.close()
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
    return EXIT_OK


async def _cmd_outcome(args: argparse.Namespace) -> int:
    conn = await _connect(resolve_dsn(args.dsn, args.config))
    try:
        found = await outcome(conn, args.ids)
    finally:
        await conn.close()
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
                    "status": o.status,
                    "provider_status": o.provider_status,
                    "reason": o.reason,
                    "provider_id": o.provider_id,
                    "attempts": o.attempts,
                    "enqueued_at": o.enqueued_at.isoformat(),
                    "finished_at": o.finished_at.isoformat() if o.finished_at else None,
                }
            )
        )
    return EXIT_OK


def _add_db_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="pushgres TOML config (for its database.dsn)")
    p.add_argument("--dsn", help="PostgreSQL DSN (default: $PUSHGRES_DSN or the config's)")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pushgres", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("migrate", help="create or upgrade the pushgres schema (idempotent)")
    _add_db_args(p)

    p = sub.add_parser("run", help="run the delivery daemon")
    p.add_argument("--config", required=True, help="pushgres TOML config")

    p = sub.add_parser("enqueue", help="enqueue one notification from flags, or JSON Lines")
    _add_db_args(p)
    p.add_argument("--file", help="JSON Lines file of notifications ('-' for stdin)")
    p.add_argument("--app")
    p.add_argument("--platform", choices=("apns", "fcm"))
    p.add_argument("--token", help="device token")
    p.add_argument("--payload", help="native payload as JSON")
    p.add_argument("--priority", type=int, default=10, choices=(10, 5, 1))
    p.add_argument("--push-type")
    p.add_argument("--collapse-id")
    p.add_argument("--topic")
    p.add_argument("--expires-in", type=float, help="seconds from now")
    p.add_argument("--send-at", help="ISO 8601 time, not before")
    p.add_argument("--dedupe-key")
    p.add_argument("--max-attempts", type=int, default=5)
    p.add_argument("--metadata", help="caller metadata as a JSON object")

    p = sub.add_parser("status", help="queue depth per app and recent outcomes")
    _add_db_args(p)
    p.add_argument("--window-s", type=float, default=60.0)

    p = sub.add_parser("outcome", help="print the outcome of notification ids as JSON lines")
    _add_db_args(p)
    p.add_argument("ids", type=int, nargs="+")

    sub.add_parser("simulate", help="run the APNs/FCM simulators", add_help=False)
    sub.add_parser("demo", help="the end-to-end demo on an embedded Postgres", add_help=False)
    return parser


_COMMANDS: dict[str, Callable[[argparse.Namespace], Coroutine[Any, Any, int]]] = {
    "migrate": _cmd_migrate,
    "run": _cmd_run,
    "enqueue": _cmd_enqueue,
    "status": _cmd_status,
    "outcome": _cmd_outcome,
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


if __name__ == "__main__":
    sys.exit(main())
