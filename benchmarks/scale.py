"""Many daemons: 1, 2 and 4 ``pushgres run`` processes draining one app on one database.

For each count, ``rows`` notifications of one APNs app are queued (COPY, then ANALYZE and
CHECKPOINT, as :mod:`benchmarks.e2e` does), then that many daemons start at once, each with its
own admin listener, all aimed at the one sink. The window opens at the first result and closes
when every row has one. Within it: the aggregate sends/s, Postgres CPU per notification, and
lock waits, sampled from ``pg_stat_activity`` every 50 ms (progress from
``pg_stat_user_tables``, with exact counts at the start and over the last tenth, since those
statistics lag a busy backend by a second or more): the mean number of backends
waiting on a heavyweight lock (``Lock``: what contending claims would queue on) and on a
lightweight one (``LWLock``: buffer and index page contention). The daemons split the app's
queue shards between them (``pipeline/shards.py``); the rows are enqueued due a few seconds
after the daemons start, once each has counted the others, and each one's share is read from
its log ("all" if it never changed). Duplicates: the ``sent`` notifications the daemons counted
(``pushgres_notifications_total`` scraped from each before it stops) minus the distinct ids
with a ``sent`` result; with no kill it must be 0. On a 2-core machine the aggregate cannot
grow much: the point is that it does not fall, and that the daemons do not wait on each other.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import pathlib
import re
import sys
import time
from typing import Any

import aiohttp
import asyncpg
import uvloop

from pushgres.simulator.devkit import free_port

from .e2e import INSERTED_SQL, _fill, _write_config, bench_database, migrate_database
from .procs import Child, StepFailed, tree_cpu_s
from .sink import Sink
from .workload import Credentials

__all__ = ["DAEMON_COUNTS", "run_scale"]

DAEMON_COUNTS = (1, 2, 4)
SAMPLE_S = 0.05
SETTLE_S = 15.0  # after the fill: the daemons start, heartbeat, and see each other
START_TIMEOUT_S = 60.0
MIN_RATE_PER_S = 1_000  # for the deadline only
DONE_SQL = "SELECT count(*) FROM pushgres.results WHERE id BETWEEN $1 AND $2"
SENT_SQL = """
SELECT count(*) FILTER (WHERE status = 'sent') AS sent,
       count(DISTINCT id) FILTER (WHERE status = 'sent') AS distinct_sent,
       count(*) AS total
FROM pushgres.results WHERE id BETWEEN $1 AND $2
"""
WAITS_SQL = """
SELECT count(*) FILTER (WHERE wait_event_type = 'Lock') AS lock,
       count(*) FILTER (WHERE wait_event_type = 'LWLock') AS lwlock
FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()
"""
_SENT = re.compile(r'^pushgres_notifications_total\{[^}]*status="sent"[^}]*\} ([0-9.e+]+)$', re.M)
_SHARES = re.compile(r"claiming shards ([\d,]+|none) first \((\d+) daemon")


def run_scale(
    sink: Sink,
    credentials: Credentials,
    workdir: pathlib.Path,
    *,
    rows: int,
    codec: str,
    connections: int,
    streams: int,
    batch_size: int,
    counts: tuple[int, ...] = DAEMON_COUNTS,
) -> dict[str, Any]:
    """The figures per daemon count (see the module docstring); raises :class:`StepFailed`."""
    state = workdir / "scale"
    state.mkdir(parents=True, exist_ok=True)
    dsn, server = bench_database(state)
    found: dict[str, Any] = {"rows": rows, "runs": {}}
    try:
        sink.ensure()
        migrate_database(dsn)
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            for count in counts:
                # Due once every daemon has started and counted the others (a heartbeat every
                # 5 s): the window measures the settled split, not the daemons' arrival.
                due = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=SETTLE_S + rows / 40_000)
                queue = runner.run(_fill(dsn, rows, send_at=due))
                postmaster = queue.postmaster_pid
                if postmaster is None and server is not None:
                    postmaster = server.get_pid()
                configs = []
                for n in range(count):
                    port = free_port()
                    path = _write_config(
                        state / f"scale-{count}-{n}.toml",
                        dsn,
                        sink,
                        credentials,
                        codec=codec,
                        connections=connections,
                        streams=streams,
                        batch_size=batch_size,
                        admin_port=port,
                        log_level="info",  # each daemon logs its share of the shards
                    )
                    configs.append((path, port))
                run = runner.run(_drain(dsn, queue, configs, postmaster, state, count))
                found["runs"][str(count)] = run
                if run["duplicates"] or run["not_sent"]:
                    raise StepFailed(
                        f"{count} daemons: {run['duplicates']} duplicates, "
                        f"{run['not_sent']} not sent",
                        found,
                    )
    finally:
        if server is not None:
            server.cleanup()
    one = found["runs"][str(counts[0])]["per_s"]
    found["scaling"] = {k: r["per_s"] / one for k, r in found["runs"].items()}
    return found


@dataclasses.dataclass
class _Waits:
    samples: int = 0
    lock: int = 0
    lwlock: int = 0


async def _drain(
    dsn: str,
    queue: Any,
    configs: list[tuple[pathlib.Path, int]],
    postmaster: int | None,
    state: pathlib.Path,
    count: int,
) -> dict[str, Any]:
    conn = await asyncpg.connect(dsn)
    daemons: list[Child] = []
    waits = _Waits()
    try:
        for n, (path, _) in enumerate(configs):
            log = state / f"scale-{count}-{n}.log"
            daemons.append(
                Child([sys.executable, "-m", "pushgres", "run", "--config", str(path)], log=log)
            )
        inserted0 = await conn.fetchval(INSERTED_SQL)
        deadline = time.monotonic() + START_TIMEOUT_S + queue.rows / MIN_RATE_PER_S
        first_t = first_cpu = None
        first_done = 0
        while True:
            await asyncio.sleep(SAMPLE_S)
            for daemon in daemons:
                if not daemon.alive():
                    raise StepFailed(f"a daemon exited: {daemon.log_tail()}")
            if first_t is None:
                done = await conn.fetchval(DONE_SQL, queue.lo, queue.hi)  # none yet: cheap
                if done > 0:
                    first_t, first_done = time.monotonic(), done
                    first_cpu = tree_cpu_s(postmaster) if postmaster else None
                continue
            # The statistics lag up to a second or more behind a busy backend: they say when
            # the end is near, exact counts then say when it is reached.
            done = await conn.fetchval(INSERTED_SQL) - inserted0
            if done >= queue.rows * 0.9:
                done = await conn.fetchval(DONE_SQL, queue.lo, queue.hi)
            sample = await conn.fetchrow(WAITS_SQL)
            waits.samples += 1
            waits.lock += sample["lock"]
            waits.lwlock += sample["lwlock"]
            if done >= queue.rows:
                break
            if time.monotonic() > deadline:
                raise StepFailed(f"{count} daemons: {done:,} of {queue.rows:,} done in time")
        last_t = time.monotonic()
        last_cpu = tree_cpu_s(postmaster) if postmaster else None
        counted = [await _sent_counted(port) for _, port in configs]
        shares = [_share(state / f"scale-{count}-{n}.log") for n in range(count)]
        outcome = await conn.fetchrow(SENT_SQL, queue.lo, queue.hi)
    finally:
        exits = [d.stop() for d in daemons]
        await conn.close()
    measured = queue.rows - first_done
    window = last_t - first_t
    return {
        "daemons": count,
        "per_s": measured / window,
        "window_s": window,
        "measured": measured,
        "postgres_cpu_us": None
        if first_cpu is None or last_cpu is None
        else (last_cpu - first_cpu) / measured * 1e6,
        "lock_waiting": waits.lock / max(1, waits.samples),
        "lwlock_waiting": waits.lwlock / max(1, waits.samples),
        "wait_samples": waits.samples,
        "sent_counted": sum(counted),
        "duplicates": sum(counted)
        - outcome["distinct_sent"]
        + outcome["sent"]
        - outcome["distinct_sent"],
        "not_sent": queue.rows - outcome["distinct_sent"],
        "shares": shares,
        "exits": exits,
    }


async def _sent_counted(port: int) -> int:
    url = f"http://127.0.0.1:{port}/metrics"
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession() as session, session.get(url, timeout=timeout) as resp:
        text = await resp.text()
    return int(sum(float(v) for v in _SENT.findall(text)))


def _share(log: pathlib.Path) -> str:
    found = _SHARES.findall(log.read_text(errors="replace")) if log.exists() else []
    return f"{found[-1][0]} of {found[-1][1]}" if found else "all"
