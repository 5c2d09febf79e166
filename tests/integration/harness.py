"""Helpers for daemon tests: simulators on loopback, a config pointing at them, a daemon run.

Everything is real: PostgreSQL, HTTP/2 over TLS, JWT and OAuth verification by the simulators.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
import pathlib
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from typing import Any

import asyncpg

import pushgres
from pushgres.config import Settings, load_config
from pushgres.daemon import Daemon

APNS_APP = "ios"
FCM_APP = "android"
TERMINAL = {"sent", "failed", "token_invalid", "expired", "suppressed"}


def write_config(
    path: pathlib.Path,
    *,
    dsn: str,
    setup: Any,
    sims: Any,
    daemon: str = "",
    apns: str = "",
    fcm: str = "",
    apns_auth: str = "token",
) -> pathlib.Path:
    if apns_auth == "token":
        credentials = (
            f'key_file = "{setup.apns_key_file}"\nkey_id = "{setup.apns_key_id}"\n'
            f'team_id = "{setup.apns_team_id}"'
        )
    elif apns_auth == "p12":
        credentials = (
            f'auth = "certificate"\np12_file = "{setup.apns_p12_file}"\n'
            f'p12_password = "{setup.apns_p12_password}"'
        )
    else:
        credentials = (
            f'auth = "certificate"\ncert_file = "{setup.apns_cert_file}"\n'
            f'cert_key_file = "{setup.apns_cert_key_file}"'
        )
    text = f"""
[database]
dsn = "{dsn}"
pool_size = 8

[daemon]
batch_size = 200
poll_interval_s = 0.2
shutdown_timeout_s = 5
request_timeout_s = 3
unknown_app_grace_s = 0.5
log_level = "warning"
{daemon}

[retry]
base_s = 0.05
max_s = 0.2
quota_default_s = 0.5

[apps.{APNS_APP}]
platform = "apns"
environment = "production"
topic = "{setup.apns_topic}"
{credentials}
endpoint = "https://127.0.0.1:{sims.apns_production_port}"
tls_server_name = "localhost"
ca_file = "{setup.ca_file}"
max_connections = 2
{apns}

[apps.{FCM_APP}]
platform = "fcm"
service_account_file = "{setup.service_account_file}"
endpoint = "https://127.0.0.1:{sims.fcm_port}"
tls_server_name = "localhost"
ca_file = "{setup.ca_file}"
max_connections = 2
{fcm}
"""
    path.write_text(_last_key_wins(text))
    return path


def _last_key_wins(text: str) -> str:
    """Let override lines replace the defaults above them within a table."""
    out: list[str] = []
    for line in text.splitlines():
        if line.startswith("["):
            out.append(line)
            continue
        key = line.split("=", 1)[0].strip() if "=" in line else None
        if key:
            start = max((i for i, x in enumerate(out) if x.startswith("[")), default=0)
            out = out[:start] + [x for x in out[start:] if x.split("=", 1)[0].strip() != key]
        out.append(line)
    return "\n".join(out) + "\n"


def settings_for(path: pathlib.Path) -> Settings:
    return load_config(path, environ={})


async def wait_terminal(
    dsn: str, ids: Sequence[int], *, timeout_s: float = 60.0
) -> dict[int, pushgres.NotificationOutcome]:
    """Poll until every id has a terminal outcome; fail the test on timeout."""
    conn = await asyncpg.connect(dsn)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            found = await pushgres.outcome(conn, ids)
            if len(found) == len(set(ids)) and all(o.status in TERMINAL for o in found.values()):
                return found
            if time.monotonic() > deadline:
                pending = [i for i in ids if i not in found or found[i].status not in TERMINAL]
                raise AssertionError(f"{len(pending)} notifications not terminal: {pending[:10]}")
            await asyncio.sleep(0.1)
    finally:
        await conn.close()


async def assert_each_row_queued_or_done(dsn: str, ids: Sequence[int]) -> None:
    """Nothing is lost: every id is in exactly one of the queue and the results."""
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "SELECT i.id, (SELECT count(*) FROM pushgres.queue q WHERE q.id = i.id) AS queued,"
            " (SELECT count(*) FROM pushgres.results r WHERE r.id = i.id) AS done"
            " FROM unnest($1::bigint[]) AS i(id)",
            list(ids),
        )
    finally:
        await conn.close()
    wrong = [(r["id"], r["queued"], r["done"]) for r in rows if r["queued"] + r["done"] != 1]
    assert not wrong, f"{len(wrong)} rows not exactly once in queue or results: {wrong[:10]}"


@contextlib.asynccontextmanager
async def running_daemon(
    settings: Settings, *, clock: Callable[[], dt.datetime] | None = None
) -> AsyncIterator[Daemon]:
    """A daemon running in this event loop (its lanes on ``clock``, if given); stopped
    (drained) when the block exits."""
    daemon = Daemon(settings, clock=clock)
    task = asyncio.create_task(daemon.run(), name="test-daemon")
    try:
        yield daemon
    finally:
        daemon.stop()
        await asyncio.wait_for(task, 30)


async def enqueue(dsn: str, items: Iterable[dict[str, Any]]) -> list[int]:
    conn = await asyncpg.connect(dsn)
    try:
        return await pushgres.enqueue(conn, list(items))
    finally:
        await conn.close()


def apns(token: str, **extra: Any) -> dict[str, Any]:
    return {
        "app": APNS_APP,
        "platform": "apns",
        "device_token": token,
        "payload": {"aps": {"alert": "hello"}},
        **extra,
    }


def fcm(token: str, **extra: Any) -> dict[str, Any]:
    return {
        "app": FCM_APP,
        "platform": "fcm",
        "device_token": token,
        "payload": {"notification": {"title": "hello"}},
        **extra,
    }


def start_daemon_process(config: pathlib.Path, log: pathlib.Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "pushgres", "run", "--config", str(config)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )


def stop_process(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> int:
    if proc.poll() is None:
        proc.send_signal(sig)
    try:
        return proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


def config_with_apps(config: pathlib.Path, path: pathlib.Path, keep: Iterable[str]) -> pathlib.Path:
    """A copy of ``config`` whose ``[apps.*]`` tables are only those named in ``keep``."""
    kept = set(keep)
    out: list[str] = []
    dropping = False
    for line in config.read_text().splitlines():
        if line.startswith("["):
            name = line.strip().strip("[]")
            dropping = name.startswith("apps.") and name.removeprefix("apps.") not in kept
        if not dropping:
            out.append(line)
    path.write_text("\n".join(out) + "\n")
    return path


async def daemon_rows(dsn: str) -> list[asyncpg.Record]:
    """The daemons recorded in pushgres.daemons (id, host, pid, apps, heartbeat age in s)."""
    conn = await asyncpg.connect(dsn)
    try:
        rows: list[asyncpg.Record] = await conn.fetch(
            "SELECT id, host, pid, apps, extract(epoch FROM now() - heartbeat_at) AS age_s"
            " FROM pushgres.daemons ORDER BY pid"
        )
        return rows
    finally:
        await conn.close()
