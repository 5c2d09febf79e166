"""End to end: Postgres → ``pushgres run`` → the sink, and what every process costs.

Postgres is an embedded ``pgserver`` in the run's temporary folder (``pushgres demo``'s
helper), or ``PUSHGRES_BENCH_DSN``. The step migrates with ``pushgres migrate``, enqueues
``rows`` notifications for one app (APNs token auth, or FCM with ``provider="fcm"``, its access
token from :class:`~benchmarks.oauth.TokenEndpoint`) through :func:`pushgres.api.enqueue`
(COPY, timed), runs ``ANALYZE`` and ``CHECKPOINT`` so the load phase's upkeep is not billed to
the daemon, writes a config that points the app at the sink and starts ``pushgres run``.

The measurement window opens when the first results appear and closes when ``target`` results
have been written; results are counted cheaply every 0.5 s from ``pg_stat_user_tables`` and
exactly (by status) at both ends. Within the window: sends/s, and CPU µs per notification of
the daemon, of all Postgres server processes (the postmaster and every descendant, exited
backends included) and of the sink. Then the daemon's peak RSS (``VmHWM``, with the rest of
the queue still waiting), a SIGTERM (the daemon drains), and enqueue→sent p50/p99 over every
notification sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import json
import os
import pathlib
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
import asyncpg
import uvloop

from pushgres.api import enqueue
from pushgres.config import load_config
from pushgres.db import store
from pushgres.demo import start_postgres
from pushgres.exceptions import ConfigError
from pushgres.simulator.devkit import free_port

from .oauth import TokenEndpoint
from .procs import Child, StepFailed, peak_rss_bytes, run_child, tree_cpu_s
from .sink import Sink
from .workload import APP, FCM_APP, FCM_PROJECT, TOPIC, Credentials, notification

__all__ = ["run_e2e"]

ENQUEUE_CHUNK = 10_000
POLL_S = 0.5
SCRAPE_S = 5.0  # how often the metrics-on run scrapes /metrics (Prometheus: 15-60 s)
MIGRATE_TIMEOUT_S = 120.0
MIN_ENQUEUE_PER_S = 1_000  # for the deadline only
INSERTED_SQL = """
SELECT coalesce(sum(s.n_tup_ins), 0)::bigint
FROM pg_stat_user_tables s JOIN pg_inherits i ON i.inhrelid = s.relid
WHERE i.inhparent = 'pushgres.results'::regclass
"""
COUNT_SQL = """
SELECT count(*) FILTER (WHERE status = 'sent') AS sent, count(*) AS total
FROM pushgres.results WHERE id BETWEEN $1 AND $2
"""
OTHER_STATUSES_SQL = """
SELECT status || coalesce(' ' || reason, '') AS outcome, count(*) AS n
FROM pushgres.results WHERE id BETWEEN $1 AND $2 AND status <> 'sent'
GROUP BY 1 ORDER BY 2 DESC LIMIT 5
"""


@dataclass(frozen=True, slots=True)
class _Sample:
    """One instant of the run: clock, CPU seconds of each party, results so far."""

    t: float
    daemon_cpu_s: float
    postgres_cpu_s: float | None
    sink_cpu_s: float
    sent: int
    total: int
    scrapes: int = 0


@dataclass(frozen=True, slots=True)
class _Queue:
    lo: int
    hi: int
    rows: int
    enqueue_s: float
    server_version: str
    postmaster_pid: int | None
    other_rows: int


def bench_database(state: pathlib.Path) -> tuple[str, Any]:
    """``PUSHGRES_BENCH_DSN``, else an embedded Postgres under ``state`` (its server to clean up)."""
    bench_dsn = os.environ.get("PUSHGRES_BENCH_DSN")
    if bench_dsn:
        return bench_dsn, None
    return start_postgres(state)


@dataclass
class Scene:
    """One step's database (migrated), daemon config and daemons (from :func:`scene`)."""

    state: pathlib.Path
    dsn: str
    config: pathlib.Path
    admin_port: int | None
    server: Any
    children: list[Child] = dataclasses.field(default_factory=list)

    def daemon(self, name: str) -> Child:
        """Start ``pushgres run`` on the step's config (stopped by the scene at the latest)."""
        child = Child(
            [sys.executable, "-m", "pushgres", "run", "--config", str(self.config)],
            log=self.state / f"{name}.log",
        )
        self.children.append(child)
        return child


@contextlib.contextmanager
def scene(
    workdir: pathlib.Path,
    name: str,
    sink: Sink,
    credentials: Credentials,
    *,
    codec: str,
    connections: int,
    streams: int,
    batch_size: int,
    metrics: bool = True,
    **config: Any,
) -> Iterator[Scene]:
    """A step's own Postgres (migrated) and a daemon config aimed at ``sink`` (``config``: more
    :func:`_write_config` keywords); on exit its daemons are stopped and Postgres removed."""
    state = workdir / name
    state.mkdir(parents=True, exist_ok=True)
    dsn, server = bench_database(state)
    found: Scene | None = None
    try:
        sink.ensure()
        admin_port = free_port() if metrics else None
        path = _write_config(
            state / "bench.toml",
            dsn,
            sink,
            credentials,
            codec=codec,
            connections=connections,
            streams=streams,
            batch_size=batch_size,
            admin_port=admin_port,
            **config,
        )
        migrate_database(dsn)
        found = Scene(state, dsn, path, admin_port, server)
        yield found
    finally:
        for child in found.children if found else ():
            if child.alive():
                child.stop()
        if server is not None:
            server.cleanup()


def migrate_database(dsn: str) -> None:
    """``pushgres migrate`` in a child process; raises :class:`StepFailed`."""
    migrated = run_child(
        [sys.executable, "-m", "pushgres", "migrate", "--dsn", dsn], timeout_s=MIGRATE_TIMEOUT_S
    )
    if migrated.returncode != 0:
        raise StepFailed(f"pushgres migrate failed: {migrated.stderr.strip()[-300:]}")


def run_e2e(
    sink: Sink,
    credentials: Credentials,
    workdir: pathlib.Path,
    *,
    rows: int,
    target: int,
    codec: str,
    connections: int,
    streams: int,
    batch_size: int,
    timeout_s: float,
    metrics: bool = True,
    provider: str = "apns",
) -> dict[str, Any]:
    """The end-to-end figures (see the module docstring); raises :class:`StepFailed`."""
    state = workdir / f"e2e-{provider}-{'metrics' if metrics else 'nometrics'}"
    state.mkdir(parents=True, exist_ok=True)
    dsn, server = bench_database(state)
    daemon: Child | None = None
    services = contextlib.ExitStack()
    try:
        if provider == "fcm":
            services.enter_context(TokenEndpoint(state, credentials))
        sink.ensure()
        admin_port = free_port() if metrics else None
        metrics_url = f"http://127.0.0.1:{admin_port}/metrics" if admin_port else None
        config = _write_config(
            state / "bench.toml",
            dsn,
            sink,
            credentials,
            codec=codec,
            connections=connections,
            streams=streams,
            batch_size=batch_size,
            admin_port=admin_port,
            provider=provider,
        )
        migrate_database(dsn)
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            filling = _fill(dsn, rows, provider)
            queue = runner.run(asyncio.wait_for(filling, 120 + rows / MIN_ENQUEUE_PER_S))
            if queue.postmaster_pid is None and server is not None:
                queue = dataclasses.replace(queue, postmaster_pid=server.get_pid())
            daemon = Child(
                [sys.executable, "-m", "pushgres", "run", "--config", str(config)],
                log=state / "daemon.log",
            )
            first, last = runner.run(
                _measure(dsn, queue, target, daemon, sink, timeout_s, metrics_url)
            )
            peak_rss = peak_rss_bytes(daemon.pid)
            stopping = time.monotonic()
            exit_status = daemon.stop()
            drain_s = time.monotonic() - stopping
            daemon = None
            latency, others = runner.run(_outcomes(dsn, queue))
    finally:
        if daemon is not None:
            daemon.stop()
        services.close()
        if server is not None:
            server.cleanup()
    sent = last.sent - first.sent
    window_s = last.t - first.t
    if sent <= 0 or window_s <= 0:
        raise StepFailed(f"nothing was sent within the window ({first}, {last}); raise --queued")
    where = "PUSHGRES_BENCH_DSN" if server is None else "embedded pgserver"
    result: dict[str, Any] = {
        "provider": provider,
        "postgres": f"{queue.server_version} ({where})",
        "codec": codec,
        "metrics": metrics,
        "scrapes": last.scrapes,
        "connections": connections,
        "streams": streams,
        "batch_size": batch_size,
        "queued": queue.rows,
        "target": target,
        "enqueue_s": queue.enqueue_s,
        "enqueue_per_s": queue.rows / queue.enqueue_s,
        "measured": sent,
        "window_s": window_s,
        "per_s": sent / window_s,
        "daemon_cpu_us": (last.daemon_cpu_s - first.daemon_cpu_s) / sent * 1e6,
        "postgres_cpu_us": None
        if last.postgres_cpu_s is None or first.postgres_cpu_s is None
        else (last.postgres_cpu_s - first.postgres_cpu_s) / sent * 1e6,
        "sink_cpu_us": (last.sink_cpu_s - first.sink_cpu_s) / sent * 1e6,
        "peak_rss_bytes": peak_rss,
        "latency_p50_s": latency["p50"],
        "latency_p99_s": latency["p99"],
        "latency_over": latency["n"],
        "daemon_exit": exit_status,
        "drain_s": drain_s,
        "not_sent": others,
    }
    if queue.other_rows:
        result["note"] = f"{queue.other_rows:,} rows of other apps were queued"
    if others or exit_status != 0:
        raise StepFailed(
            f"not every notification was sent ({others}) or the daemon exited {exit_status}",
            result,
        )
    return result


async def _fill(
    dsn: str, rows: int, provider: str = "apns", send_at: dt.datetime | None = None
) -> _Queue:
    """Enqueue ``rows`` notifications (timed; due at ``send_at``, default now), then ANALYZE
    and CHECKPOINT."""
    conn = await asyncpg.connect(dsn)
    try:
        app = FCM_APP if provider == "fcm" else APP
        await conn.execute("DELETE FROM pushgres.queue WHERE app = $1", app)  # an aborted run's
        other_rows = await conn.fetchval("SELECT count(*) FROM pushgres.queue")
        lo = hi = 0
        started = time.monotonic()
        for start in range(0, rows, ENQUEUE_CHUNK):
            end = min(start + ENQUEUE_CHUNK, rows)
            chunk = [notification(n, provider) for n in range(start, end)]
            if send_at is not None:
                chunk = [dataclasses.replace(item, send_at=send_at) for item in chunk]
            ids = await enqueue(conn, chunk)
            lo = min(ids) if start == 0 else lo
            hi = max(ids)
        enqueue_s = time.monotonic() - started
        await conn.execute("ANALYZE pushgres.queue")
        try:
            await conn.execute("CHECKPOINT")
        except asyncpg.PostgresError:
            pass  # a role without pg_checkpoint: the window may then include a checkpoint
        return _Queue(
            lo=lo,
            hi=hi,
            rows=rows,
            enqueue_s=enqueue_s,
            server_version=await conn.fetchval("SHOW server_version"),
            postmaster_pid=await _postmaster_pid(conn),
            other_rows=other_rows,
        )
    finally:
        await conn.close()


async def _postmaster_pid(conn: asyncpg.Connection) -> int | None:
    """The postmaster's pid if the server runs on this machine and we may read its folder."""
    try:
        data_directory = await conn.fetchval("SHOW data_directory")
        text = await asyncio.to_thread(pathlib.Path(data_directory, "postmaster.pid").read_text)
        pid = int(text.split()[0])
    except (asyncpg.PostgresError, OSError, ValueError, IndexError):
        return None
    return pid if tree_cpu_s(pid) is not None else None


def _write_config(
    path: pathlib.Path,
    dsn: str,
    sink: Sink,
    credentials: Credentials,
    *,
    codec: str,
    connections: int,
    streams: int,
    batch_size: int,
    admin_port: int | None,
    apps: Sequence[str] = (APP,),
    extra: str = "",
    provider: str = "apns",
    log_level: str = "warning",
) -> pathlib.Path:
    """The daemon's config: APNs token-auth apps (or one FCM app) aimed at the sink; validated.

    With ``admin_port``, the admin listener is on (metrics counted, scraped during the run).
    ``extra`` is more TOML (categories, say), appended as given.
    """
    admin = f'\n[admin]\nlisten = "127.0.0.1:{admin_port}"\n' if admin_port else ""
    pool = f"""endpoint = "https://127.0.0.1:{sink.port}"
tls_server_name = "localhost"
ca_file = {json.dumps(credentials.ca_file)}
max_connections = {connections}
max_streams_per_connection = {streams}
codec = {json.dumps(codec)}
"""
    fcm = f"""
[apps.{FCM_APP}]
platform = "fcm"
service_account_file = {json.dumps(credentials.service_account_file)}
project_id = {json.dumps(FCM_PROJECT)}
{pool}"""
    tables = (
        fcm
        if provider == "fcm"
        else "".join(
            f"""
[apps.{app}]
platform = "apns"
environment = "production"
topic = {json.dumps(TOPIC)}
auth = "token"
key_file = {json.dumps(credentials.key_file)}
key_id = {json.dumps(credentials.key_id)}
team_id = {json.dumps(credentials.team_id)}
{pool}"""
            for app in apps
        )
    )
    path.write_text(
        f"""# Written by `make bench`: {provider} apps against the sink.
[database]
dsn = {json.dumps(dsn)}

[daemon]
batch_size = {batch_size}
log_level = "{log_level}"
{tables}{admin}{extra}""",
        encoding="utf-8",
    )
    try:
        load_config(path)
    except ConfigError as exc:
        raise StepFailed(f"the daemon's config is invalid: {exc}") from exc
    return path


async def _sample(conn: asyncpg.Connection, queue: _Queue, daemon: Child, sink: Sink) -> _Sample:
    # Counted before the CPU is read: the CPU then covers at least the notifications counted.
    counts = await conn.fetchrow(COUNT_SQL, queue.lo, queue.hi)
    postmaster = queue.postmaster_pid
    return _Sample(
        t=time.monotonic(),
        daemon_cpu_s=daemon.cpu_s(),
        postgres_cpu_s=tree_cpu_s(postmaster) if postmaster is not None else None,
        sink_cpu_s=sink.cpu_s(),
        sent=counts["sent"],
        total=counts["total"],
    )


async def _measure(
    dsn: str,
    queue: _Queue,
    target: int,
    daemon: Child,
    sink: Sink,
    timeout_s: float,
    metrics_url: str | None,
) -> tuple[_Sample, _Sample]:
    """Poll until ``target`` results exist; the samples that open and close the window.

    With ``metrics_url``, ``/metrics`` is scraped every ``SCRAPE_S`` as Prometheus would.
    """
    conn = await asyncpg.connect(dsn)
    session = aiohttp.ClientSession() if metrics_url else None
    scrapes = 0
    next_scrape = time.monotonic()
    try:
        baseline = await conn.fetchval(INSERTED_SQL)
        deadline = time.monotonic() + timeout_s
        first: _Sample | None = None
        while True:
            await asyncio.sleep(POLL_S)
            if not daemon.alive():
                raise StepFailed(
                    f"the daemon exited with status {daemon.proc.returncode}: {daemon.log_tail()}"
                )
            # Scraped from the first results on: the listener is up by then.
            if (
                first is not None
                and session is not None
                and metrics_url
                and time.monotonic() >= next_scrape
            ):
                next_scrape = time.monotonic() + SCRAPE_S
                await _scrape(session, metrics_url)
                scrapes += 1
            written = await conn.fetchval(INSERTED_SQL) - baseline
            if first is None and written > 0:
                first = await _sample(conn, queue, daemon, sink)
            elif first is not None and written >= target:
                last = await _sample(conn, queue, daemon, sink)
                return first, dataclasses.replace(last, scrapes=scrapes)
            if time.monotonic() > deadline:
                counts = await conn.fetchrow(COUNT_SQL, queue.lo, queue.hi)
                raise StepFailed(
                    f"only {counts['sent']:,} of {target:,} sent within {timeout_s:.0f}s "
                    f"({counts['total']:,} results)"
                )
    finally:
        await conn.close()
        if session is not None:
            await session.close()


async def _scrape(session: aiohttp.ClientSession, url: str) -> None:
    try:
        async with session.get(url, timeout=aiohttp.ClientTimeout(total=10)) as resp:
            body = await resp.read()
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise StepFailed(f"scraping {url} failed: {type(exc).__name__}: {exc}") from exc
    if resp.status != 200 or b"pushgres_notifications_total" not in body:
        raise StepFailed(f"scraping {url}: HTTP {resp.status}, {len(body)} bytes")


async def _outcomes(dsn: str, queue: _Queue) -> tuple[dict[str, Any], dict[str, int]]:
    """Enqueue→sent percentiles over every sent notification, and what was not sent."""
    conn = await asyncpg.connect(dsn)
    try:
        timing = await store.results_timing(conn, queue.lo, queue.hi)
        counts = await conn.fetchrow(COUNT_SQL, queue.lo, queue.hi)
        rows = await conn.fetch(OTHER_STATUSES_SQL, queue.lo, queue.hi)
        others = {r["outcome"]: r["n"] for r in rows}
        return {"p50": timing["p50"], "p99": timing["p99"], "n": counts["sent"]}, others
    finally:
        await conn.close()
