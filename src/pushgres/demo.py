"""``make demo``: the main job end to end on one machine, and a check that it was delivered.

Starts an embedded PostgreSQL (``pgserver``, data under ``.pushgres/``) unless ``PUSHGRES_DSN``
is set, starts the simulators in their own process and migrates. Then it goes through the
device registry as a backend would: about 67,000 people get devices on an iOS app (APNs, token
auth) and an Android app (FCM) of one product -- every other one on both -- with about 2% dead
tokens, a few devices not seen for three months (stale), anonymous devices nobody logged in on,
and shared devices whose user logged out (some then logged in as someone else). It starts the
daemon in its own process (which marks the stale devices and learns the product's group of
apps), sends one portable message to all those people through the group -- a fan-out of about
100,000 notifications -- and prints a progress line until it is delivered. It then prints the
group's outcome by status and reason, sends per second and enqueue→sent latency p50/p99, and
checks that the simulators accepted exactly the notifications recorded as sent, that nothing
reached a device after its user logged out, and that the registry now knows the dead tokens.
A second marketing message to the same people then meets the config's daily cap (one a person
a day over the product's apps): every one of its notifications ends suppressed, none is sent.
Exits 0 only if those checks hold.

The daemon's admin listener is on (loopback): the demo prints the dashboard's and the metrics'
addresses. With ``--serve`` the daemon and the simulators keep running after the check, fed a
trickle of notifications (some to dead tokens, some failing and retried), until Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import pathlib
import random
import signal
import subprocess
import sys
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
import asyncpg
import uvloop

from . import devices, fanout
from .api import enqueue
from .config import env_flag
from .db import store
from .db.migrate import migrate
from .models import Notification
from .simulator.devkit import apns_token, fcm_token, free_port

__all__ = ["main", "start_postgres", "stop_process"]

APNS_APP = "demo-ios"
FCM_APP = "demo-android"
GROUP = "demo-shop"
DEVICES_PER_USER = 1.5  # every person has a phone, every other one a second on the other platform
STALE_EVERY = 100  # one device in a hundred was last seen three months ago
ANONYMOUS_EVERY = 20  # one anonymous device for twenty people
SHARED_EVERY = 100  # one shared device (logged out) for a hundred people
IMPORT_CHUNK = 20_000
MESSAGE = {
    "title": "Your cart misses you",
    "body": "3 items are still waiting",
    "data": {"campaign": "cart-recovery"},
    "link": "demo-shop://cart",
    "thread": "cart",
    "badge": 1,
    "ttl": 86_400,
    "collapse_key": "cart-recovery",
}
OVERRIDES: dict[str, dict[str, Any]] = {
    "apns": {"aps": {"interruption-level": "active"}},
    "fcm": {"android": {"notification": {"channel_id": "cart"}}},
}
REMINDER = {"title": "Still thinking about it?", "body": "Your cart is still here", "ttl": 86_400}
STARTUP_TIMEOUT_S = 60.0
DRAIN_TIMEOUT_S = 1800.0


def _log(message: str) -> None:
    print(message, flush=True)


def start_postgres(state: pathlib.Path) -> tuple[str, Any]:
    given = env_flag("PUSHGRES_DSN")
    if given:
        return given, None
    with warnings.catch_warnings():
        # pgserver resolves a runtime folder at import and warns when XDG_RUNTIME_DIR is unset.
        warnings.simplefilter("ignore")
        import pgserver

    # pgserver re-exports get_server without __all__.
    server = pgserver.get_server(state / "pgdata", cleanup_mode="stop")  # type: ignore[attr-defined]
    return server.get_uri(), server


def _wait_for_file(path: pathlib.Path, proc: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while not path.exists():
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with status {proc.returncode}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not start within {STARTUP_TIMEOUT_S:.0f}s")
        time.sleep(0.2)


def _write_config(
    state: pathlib.Path, dsn: str, sim: dict[str, Any], admin_port: int
) -> pathlib.Path:
    config = state / "demo.toml"
    config.write_text(
        f"""# Written by `pushgres demo`: two apps against the local simulators.
[database]
dsn = {json.dumps(dsn)}
pool_size = 12

[daemon]
batch_size = 1000
poll_interval_s = 0.5
shutdown_timeout_s = 10
log_level = "warning"

[retry]
base_s = 0.5
max_s = 5

[admin]
listen = "127.0.0.1:{admin_port}"
queue_sample_interval_s = 2

[groups]
{GROUP} = [{json.dumps(APNS_APP)}, {json.dumps(FCM_APP)}]

# Guardrails: marketing is capped at one notification per person a day over the product's
# apps; transactional notifications are exempt.
[guardrails]
default_category = "marketing"

[categories.marketing]

[categories.receipts]
transactional = true

[caps.daily]
group = "{GROUP}"
limit = 1
window = "24h"

[apps.{APNS_APP}]
platform = "apns"
environment = "production"
topic = {json.dumps(sim["apns_topic"])}
auth = "token"
key_file = {json.dumps(sim["apns_key_file"])}
key_id = {json.dumps(sim["apns_key_id"])}
team_id = {json.dumps(sim["apns_team_id"])}
endpoint = "https://127.0.0.1:{sim["apns_production_port"]}"
tls_server_name = "localhost"
ca_file = {json.dumps(sim["ca_file"])}
max_connections = 2
max_streams_per_connection = 500

[apps.{FCM_APP}]
platform = "fcm"
service_account_file = {json.dumps(sim["service_account_file"])}
endpoint = "https://127.0.0.1:{sim["fcm_port"]}"
tls_server_name = "localhost"
ca_file = {json.dumps(sim["ca_file"])}
max_connections = 4
max_streams_per_connection = 100
""",
        encoding="utf-8",
    )
    return config


@dataclass(frozen=True, slots=True)
class Registry:
    """The people and devices the demo registered, and what they should get."""

    users: list[str]
    logged_out: list[tuple[str, str]]  # (platform, token): logged out, no one since
    moved: list[tuple[str, str]]  # (platform, token): logged out, then someone else's
    invalid_before: int  # the registry's invalid devices of the demo's apps before the send


def _registry_rows(
    users: int, dead_ratio: float, run_id: int
) -> tuple[list[str], list[dict[str, Any]]]:
    """The people (ids) and their devices, as import rows; about 2% of the tokens are dead."""
    rng = random.Random(run_id)
    now = dt.datetime.now(dt.UTC)
    stale_seen = now - dt.timedelta(days=90)
    dead_seen = now - dt.timedelta(days=7)
    people = [f"demo{run_id}-user-{i}" for i in range(users)]
    rows: list[dict[str, Any]] = []
    n = run_id * 10_000_000

    def device(app: str, user: str | None) -> None:
        nonlocal n
        n += 1
        dead = rng.random() < dead_ratio
        if app == APNS_APP:
            platform, token = "apns", apns_token("Unregistered" if dead else "ok", n)
        else:
            platform, token = "fcm", fcm_token("UNREGISTERED" if dead else "ok", n)
        row: dict[str, Any] = {"app": app, "platform": platform, "token": token}
        if user is not None:
            row["user_id"] = user
        if len(rows) % STALE_EVERY == STALE_EVERY - 1:
            row["last_seen_at"] = stale_seen
        elif dead:  # the app was uninstalled a while ago: last seen before its token died
            row["last_seen_at"] = dead_seen
        rows.append(row)

    for i, user in enumerate(people):
        device(APNS_APP if i % 2 == 0 else FCM_APP, user)
        if i % 2 == 0:
            device(FCM_APP, user)
    for i in range(users // ANONYMOUS_EVERY):
        device(APNS_APP if i % 2 == 0 else FCM_APP, None)
    return people, rows


async def _register(conn: asyncpg.Connection, count: int, dead_ratio: float) -> Registry:
    """Register the demo's people and devices: a bulk import, then shared devices one by one."""
    run_id = int(time.time()) % 100_000
    users = max(4, round(count / DEVICES_PER_USER))
    people, rows = _registry_rows(users, dead_ratio, run_id)
    invalid_before = _invalid(await store.device_counts_of(conn))
    t0 = time.monotonic()
    for start in range(0, len(rows), IMPORT_CHUNK):
        await devices.import_devices(conn, rows[start : start + IMPORT_CHUNK])
    # Shared devices: someone logs in, sees their cart, logs out; on some, someone else logs in.
    logged_out: list[tuple[str, str]] = []
    moved: list[tuple[str, str]] = []
    shared = max(2, users // SHARED_EVERY)
    for i in range(shared):
        n = run_id * 10_000_000 + 9_000_000 + i
        app, platform, token = (
            (APNS_APP, "apns", apns_token("ok", n))
            if i % 2 == 0
            else (FCM_APP, "fcm", fcm_token("ok", n))
        )
        await devices.register(conn, app, platform, token, user_id=people[i])
        await devices.logout(conn, app, token)
        if i % 4 < 2:
            logged_out.append((platform, token))
        else:
            await devices.identify(conn, app, token, people[-1 - i])
            moved.append((platform, token))
    _log(
        f"registered {len(rows) + shared:,} devices of {users:,} people in "
        f"{time.monotonic() - t0:.1f}s: {users // ANONYMOUS_EVERY:,} anonymous, "
        f"{len(rows) // STALE_EVERY:,} not seen for 90 days, {shared:,} shared and logged out "
        f"({len(moved):,} of them now someone else's)"
    )
    return Registry(people, logged_out, moved, invalid_before)


def _invalid(counts: dict[tuple[str, str], int]) -> int:
    return sum(counts.get((app, "invalid"), 0) for app in (APNS_APP, FCM_APP))


async def _prepare(dsn: str, count: int, dead_ratio: float) -> Registry:
    conn = await asyncpg.connect(dsn)
    try:
        await migrate(conn)
        return await _register(conn, count, dead_ratio)
    finally:
        await conn.close()


async def _send(dsn: str, registry: Registry) -> tuple[int, int, int, int]:
    """Fan the message out to every person; returns (group id, lowest id, highest id, count)."""
    conn = await asyncpg.connect(dsn)
    try:
        t0 = time.monotonic()
        done = await fanout.send_to_users(
            conn, GROUP, registry.users, MESSAGE, overrides=OVERRIDES, metadata={"demo": True}
        )
        _log(
            f"fan-out (group {done.group_id}): {done.notifications:,} notifications to "
            f"{done.users - done.users_without_device:,} of {done.users:,} people in "
            f"{time.monotonic() - t0:.1f}s ({done.users_without_device:,} have no active device)"
        )
        span = await store.group_id_range(conn, done.group_id)
        if span is None:
            raise RuntimeError("the fan-out enqueued nothing")
        return done.group_id, span[0], span[1], done.notifications
    finally:
        await conn.close()


async def _remind(dsn: str, registry: Registry, daemon: subprocess.Popen[bytes]) -> int:
    """A second marketing message to the same people the same day: the daily cap holds every
    one of them back. Returns the reminder's group id once all of it has an outcome."""
    conn = await asyncpg.connect(dsn)
    try:
        done = await fanout.send_to_users(conn, GROUP, registry.users, REMINDER)
        deadline = time.monotonic() + DRAIN_TIMEOUT_S
        while True:
            outcome = await fanout.group_outcome(conn, done.group_id)
            if outcome is not None and outcome.done:
                return done.group_id
            if daemon.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the reminder did not get its outcomes; see daemon.log")
            await asyncio.sleep(0.5)
    finally:
        await conn.close()


async def _ready(admin: str, daemon: subprocess.Popen[bytes]) -> None:
    """Wait until the daemon is ready: its groups written and its stale pass done."""
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:
        while True:
            if daemon.poll() is not None:
                raise RuntimeError(f"the daemon exited with status {daemon.returncode}")
            try:
                async with session.get(f"{admin}/readyz") as resp:
                    if resp.status == 200:
                        return
            except (aiohttp.ClientError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"the daemon was not ready within {STARTUP_TIMEOUT_S:.0f}s")
            await asyncio.sleep(0.2)


async def _accepted(control_url: str) -> dict[str, Any]:
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session,
        session.get(f"{control_url}/_sim/accepted") as resp,
    ):
        resp.raise_for_status()
        data: dict[str, Any] = await resp.json()
        return data


async def _progress(
    dsn: str, lo: int, hi: int, total: int, daemon: subprocess.Popen[bytes]
) -> bool:
    """Print a live progress line until every notification has a result."""
    conn = await asyncpg.connect(dsn)
    started = time.monotonic()
    try:
        done = 0
        while done < total:
            await asyncio.sleep(0.5)
            done = await store.results_done(conn, lo, hi)
            elapsed = time.monotonic() - started
            rate = done / elapsed if elapsed else 0.0
            sys.stdout.write(
                f"\r  delivered {done:>7,}/{total:,}  {rate:>7,.0f}/s  {elapsed:6.1f}s "
            )
            sys.stdout.flush()
            if daemon.poll() is not None:
                _log(f"\nthe daemon exited early ({daemon.returncode}); see daemon.log")
                return False
            if elapsed > DRAIN_TIMEOUT_S:
                _log("\nthe queue did not drain in time")
                return False
        _log("")
        return True
    finally:
        await conn.close()


def _trickle_item(rng: random.Random, n: int) -> Notification:
    """One notification of the --serve trickle: mostly fine, some dead, some failing."""
    roll = rng.random()
    if n % 2 == 0:
        kind = "Unregistered" if roll < 0.04 else "flaky" if roll < 0.10 else "ok"
        if roll > 0.995:
            kind = "BadDeviceToken"
        return Notification(
            app=APNS_APP,
            platform="apns",
            device_token=apns_token(kind, n),
            payload={"aps": {"alert": {"title": "Back in stock", "body": "It is here"}}},
        )
    kind = "UNREGISTERED" if roll < 0.04 else "UNAVAILABLE" if roll < 0.07 else "ok"
    return Notification(
        app=FCM_APP,
        platform="fcm",
        device_token=fcm_token(kind, n),
        payload={"notification": {"title": "Reorder?"}},
    )


async def _trickle(dsn: str, daemon: subprocess.Popen[bytes]) -> None:
    """A few dozen notifications a second, in bursts, until cancelled or the daemon exits."""
    rng = random.Random()
    conn = await asyncpg.connect(dsn)
    n = int(time.time()) % 100_000 * 10_000_000 + 5_000_000
    try:
        while daemon.poll() is None:
            burst = rng.randint(5, 80)
            await enqueue(conn, [_trickle_item(rng, n + i) for i in range(burst)])
            n += burst
            await asyncio.sleep(rng.uniform(0.2, 1.5))
        _log(f"the daemon exited ({daemon.returncode}); see daemon.log")
    finally:
        await conn.close()


def _serve(runner: asyncio.Runner, dsn: str, admin: str, daemon: subprocess.Popen[bytes]) -> None:
    _log(f"serving: watch {admin}/dashboard/ (a trickle of traffic, some failing); Ctrl-C stops")
    try:
        runner.run(_trickle(dsn, daemon))
    except KeyboardInterrupt:
        _log("\nstopping")


def _cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a live process (Linux /proc), else None."""
    try:
        fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def stop_process(proc: subprocess.Popen[bytes] | None) -> int | None:
    if proc is None:
        return None
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


def _demo(args: argparse.Namespace, runner: asyncio.Runner) -> int:
    state = pathlib.Path(args.state_dir).resolve()
    state.mkdir(parents=True, exist_ok=True)
    dsn, server = start_postgres(state)
    where = "PUSHGRES_DSN" if server is None else f"embedded, {state / 'pgdata'}"
    _log(f"postgres: {where}")
    sim_dir = state / "sim"
    sim_file = sim_dir / "simulator.json"
    sim_file.unlink(missing_ok=True)
    daemon_proc: subprocess.Popen[bytes] | None = None
    with open(state / "simulator.log", "wb") as sim_log, open(state / "daemon.log", "wb") as log:
        sim_proc = subprocess.Popen(
            [sys.executable, "-m", "pushgres", "simulate", "--state-dir", str(sim_dir)],
            stdout=sim_log,
            stderr=subprocess.STDOUT,
        )
        try:
            _wait_for_file(sim_file, sim_proc, "the simulators")
            sim = json.loads(sim_file.read_text())
            _log(f"simulators: APNs :{sim['apns_production_port']}, FCM :{sim['fcm_port']}")
            registry = runner.run(_prepare(dsn, args.count, args.dead_ratio))
            admin_port = args.admin_port or free_port()
            config = _write_config(state, dsn, sim, admin_port)
            daemon_proc = subprocess.Popen(
                [sys.executable, "-m", "pushgres", "run", "--config", str(config)],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            admin = f"http://127.0.0.1:{admin_port}"
            runner.run(_ready(admin, daemon_proc))
            _log(f"dashboard: {admin}/dashboard/   metrics: {admin}/metrics")
            group_id, lo, hi, total = runner.run(_send(dsn, registry))
            if not runner.run(_progress(dsn, lo, hi, total, daemon_proc)):
                return 1
            reminder = runner.run(_remind(dsn, registry, daemon_proc))
            run = Run(registry, group_id, lo, hi, total, reminder)
            if args.serve:
                rc = runner.run(_summary(dsn, sim, run, 0))
                _serve(runner, dsn, admin, daemon_proc)
                daemon_rc = stop_process(daemon_proc)
                return rc or (1 if daemon_rc else 0)
            for name, proc in (("daemon", daemon_proc), ("simulators", sim_proc)):
                cpu_s = _cpu_seconds(proc.pid)
                if cpu_s is not None:
                    _log(
                        f"{name} CPU: {cpu_s:.1f}s, "
                        f"{cpu_s / run.total * 1e6:,.0f} µs per notification"
                    )
            daemon_rc = stop_process(daemon_proc)
            return runner.run(_summary(dsn, sim, run, daemon_rc or 0))
        finally:
            stop_process(daemon_proc)
            stop_process(sim_proc)
            if server is not None:
                server.cleanup()


@dataclass(frozen=True, slots=True)
class Run:
    """One demo run: the registry it built and the fan-out's group and notification ids."""

    registry: Registry
    group_id: int
    lo: int
    hi: int
    total: int
    reminder_id: int
    """The second message's group: held back by the daily cap."""


async def _summary(dsn: str, sim: dict[str, Any], run: Run, daemon_rc: int) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        return await _report(conn, sim, run, daemon_rc)
    finally:
        await conn.close()


async def _report(conn: asyncpg.Connection, sim: dict[str, Any], run: Run, daemon_rc: int) -> int:
    outcome = await fanout.group_outcome(conn, run.group_id)
    assert outcome is not None  # the demo made it
    reached = outcome.users - outcome.users_without_device
    _log(
        f"group {run.group_id} outcome ({outcome.notifications:,} notifications, "
        f"{reached:,} of {outcome.users:,} people reached):"
    )
    for c in sorted(outcome.counts, key=lambda c: -c.count):
        reason = f" ({c.reason})" if c.reason else ""
        _log(f"  {c.status:<14}{reason:<28} {c.count:>8,}")
    by_status = outcome.by_status()
    timing = await store.results_timing(conn, run.lo, run.hi)
    first, last = timing["first"], timing["last"]
    span = (last - first).total_seconds() if first and last else 0.0
    sent_total = 0
    sent: dict[tuple[str, str], int] = {}
    for r in await store.results_sent_tokens(conn, run.lo, run.hi):
        sent[(r["platform"], r["device_token"])] = r["n"]
        sent_total += r["n"]
    rate = run.total / span if span > 0 else float("nan")
    delivery = by_status.get("sent", 0) / run.total if run.total else 0.0
    _log(
        f"delivery rate: {delivery:.1%} sent; sends per second: {rate:,.0f} "
        f"({run.total:,} notifications in {span:.1f}s)"
    )
    _log(f"enqueue→sent latency: p50 {timing['p50'] or 0:.2f}s, p99 {timing['p99'] or 0:.2f}s")
    accepted = await _accepted(sim["control_url"])
    mismatches = 0
    accepted_total = 0
    for platform in ("apns", "fcm"):
        counts: dict[str, int] = accepted.get(platform, {})
        ours = {tok: n for (plat, tok), n in sent.items() if plat == platform}
        for token, n in counts.items():
            if token in ours or n:
                accepted_total += n
            if ours.get(token, 0) != n:
                mismatches += 1
        mismatches += sum(1 for tok in ours if tok not in counts)
    registry = run.registry
    after_logout = sum(accepted.get(p, {}).get(t, 0) for p, t in registry.logged_out)
    moved = sum(1 for p, t in registry.moved if accepted.get(p, {}).get(t, 0) == 1)
    newly_invalid = _invalid(await store.device_counts_of(conn)) - registry.invalid_before
    dead = by_status.get("token_invalid", 0)
    reminder = await fanout.group_outcome(conn, run.reminder_id)
    assert reminder is not None
    held = reminder.by_status()
    _log(
        f"reminder (group {run.reminder_id}): {reminder.notifications:,} notifications to the "
        f"same people: {held.get('suppressed', 0):,} suppressed "
        f"(FrequencyCap: daily (1 per 24h)), {held.get('sent', 0):,} sent"
    )
    ok = (
        mismatches == 0
        and accepted_total == sent_total
        and daemon_rc == 0
        and after_logout == 0
        and moved == len(registry.moved)
        and newly_invalid == dead
        and outcome.done
        and held.get("suppressed", 0) == reminder.notifications
    )
    verdict = "OK" if ok else "FAILED"
    _log(
        f"check: simulators accepted {accepted_total:,}, results say sent {sent_total:,}, "
        f"{mismatches} token mismatches; {after_logout} sent to {len(registry.logged_out):,} "
        f"logged-out devices, {moved:,}/{len(registry.moved):,} moved devices got their new "
        f"user's; registry marked {newly_invalid:,} invalid for {dead:,} dead answers; "
        f"daemon exit {daemon_rc}: {verdict}"
    )
    return 0 if ok else 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pushgres demo", description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=100_000)
    parser.add_argument("--dead-ratio", type=float, default=0.02)
    parser.add_argument("--state-dir", default=os.path.join(os.getcwd(), ".pushgres"))
    parser.add_argument(
        "--serve",
        action="store_true",
        help="after the check, keep the daemon and the simulators running with a trickle of "
        "traffic (some failing) for the dashboard, until Ctrl-C",
    )
    parser.add_argument(
        "--admin-port",
        type=int,
        default=0,
        help="the daemon's admin listener port on 127.0.0.1 (default: a free one)",
    )
    args = parser.parse_args(argv)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        try:
            return _demo(args, runner)
        except (RuntimeError, OSError, asyncpg.PostgresError) as exc:
            print(f"pushgres demo: {exc}", file=sys.stderr)
            return 1
