"""kill -9 mid-drain, 20 times: how many notifications are delivered twice?

The daemon sends to pushgres's own APNs simulator (in this process, on loopback) rather than
the sink, because only the simulator counts what it accepted per ``apns-id`` (one per
notification: the daemon derives it from the row id; the simulator counts it when it answers).
A fixed response latency (``latency_ms``) keeps streams in flight, as Apple's does; the daemon
sends as fast as the simulator answers (the simulator, pure Python in this process, is the
bottleneck, so the daemon's streams are full). ``rows`` notifications are queued, then
``kills`` times over: a daemon starts, sends for a random 0.5-2 s after its first answer, and
is killed with SIGKILL. In flight at a kill: what the daemon itself counted on the wire
(``pushgres_http2_streams_open``: requests sent and not answered, scraped from its admin
listener just before the kill), and beside it the accepted sends its delivery journal had not
yet written down (``pushgres_delivery_journal_unwritten``, in the same scrape), which a kill
also sends again. The simulator's view is reported too (streams it had received and not
answered, plus requests it reads after the kill from socket buffers). A last daemon drains
the rest. The step runs as the daemon runs by default and again with ``delivery_journal =
true``. Delivered twice: every acceptance of an ``apns-id`` beyond its first. The target is at
most the streams that were in flight at the kills (their answers were lost with the process,
so resending them is the point of at-least-once delivery); anything above that is work the
daemon had finished and lost.
"""

from __future__ import annotations

import asyncio
import json
import pathlib
import random
import re
import signal
import sys
import time
from typing import Any

import aiohttp
import asyncpg
import uvloop

from pushgres.simulator import Simulators
from pushgres.simulator.devkit import free_port, make_dev_setup

from .e2e import _fill, bench_database, migrate_database
from .procs import Child, StepFailed
from .workload import APP, FCM_PROJECT, TOPIC, Credentials

__all__ = ["run_chaos"]

DONE_SQL = "SELECT count(*) FROM pushgres.results WHERE id BETWEEN $1 AND $2"


def _config(
    path: pathlib.Path,
    dsn: str,
    port: int,
    credentials: Credentials,
    batch: int,
    admin: int,
    journal: bool,
) -> None:
    path.write_text(
        f"""# Written by `make bench`'s chaos step: one APNs app against the simulator.
[database]
dsn = {json.dumps(dsn)}

[daemon]
batch_size = {batch}
log_level = "warning"
delivery_journal = {"true" if journal else "false"}

[apps.{APP}]
platform = "apns"
environment = "production"
topic = {json.dumps(TOPIC)}
key_file = {json.dumps(credentials.key_file)}
key_id = {json.dumps(credentials.key_id)}
team_id = {json.dumps(credentials.team_id)}
endpoint = "https://127.0.0.1:{port}"
tls_server_name = "localhost"
ca_file = {json.dumps(credentials.ca_file)}

[admin]
listen = "127.0.0.1:{admin}"
""",
        encoding="utf-8",
    )


def run_chaos(
    credentials: Credentials,
    workdir: pathlib.Path,
    *,
    rows: int,
    kills: int,
    latency_ms: float,
    batch_size: int,
    journal: bool = False,
    seed: int = 11,
) -> dict[str, Any]:
    """The kill loop (see the module docstring); raises :class:`StepFailed`."""
    state = workdir / ("chaos-journal" if journal else "chaos")
    state.mkdir(parents=True, exist_ok=True)
    dsn, server = bench_database(state)
    try:
        migrate_database(dsn)
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            return runner.run(
                _chaos(dsn, state, credentials, rows, kills, latency_ms, batch_size, journal, seed)
            )
    finally:
        if server is not None:
            server.cleanup()


async def _chaos(
    dsn: str,
    state: pathlib.Path,
    credentials: Credentials,
    rows: int,
    kills: int,
    latency_ms: float,
    batch_size: int,
    journal: bool,
    seed: int,
) -> dict[str, Any]:
    rng = random.Random(seed)
    setup = make_dev_setup(credentials.directory, apns_topic=TOPIC, fcm_project=FCM_PROJECT)
    async with Simulators(setup) as sims:
        sims.apns.patch({"latency": {"dist": "fixed", "ms": latency_ms}})
        config = state / "chaos.toml"
        metrics_url = f"http://127.0.0.1:{(admin := free_port())}/metrics"
        _config(config, dsn, sims.apns_production_port, credentials, batch_size, admin, journal)
        queue = await _fill(dsn, rows)
        conn = await asyncpg.connect(dsn)
        in_flight: list[int] = []
        unwritten: list[int] = []  # accepted sends the journal had not written down
        seen_by_simulator: list[int] = []
        try:
            for n in range(kills + 1):
                daemon = Child(
                    [sys.executable, "-m", "pushgres", "run", "--config", str(config)],
                    log=state / f"daemon-{n}.log",
                )
                try:
                    before = sum(sims.apns.accepted_ids.values())
                    deadline = time.monotonic() + 60
                    while sum(sims.apns.accepted_ids.values()) == before:
                        if not daemon.alive() or time.monotonic() > deadline:
                            raise StepFailed(f"daemon {n} sent nothing: {daemon.log_tail()}")
                        await asyncio.sleep(0.02)
                    if n == kills:  # the last one drains the rest
                        while await conn.fetchval(DONE_SQL, queue.lo, queue.hi) < rows:
                            if not daemon.alive() or time.monotonic() > deadline + rows / 500:
                                raise StepFailed(
                                    f"the last daemon did not drain: {daemon.log_tail()}"
                                )
                            await asyncio.sleep(0.2)
                        break
                    await asyncio.sleep(rng.uniform(0.5, 2.0))
                    # In flight as the daemon itself counts it (streams sent and not yet
                    # answered to it), read just before the kill.
                    streams, not_written = await _in_flight(metrics_url)
                    in_flight.append(streams)
                    unwritten.append(not_written)
                    received, unanswered = _requests(sims), _open_streams(sims)
                    daemon.proc.send_signal(signal.SIGKILL)
                    daemon.proc.wait()
                    # The simulator's view of the same: streams it had received and not
                    # answered, and requests still on their way to it (in socket buffers),
                    # which it reads once the connections close.
                    await _connections_closed(sims)
                    seen_by_simulator.append(unanswered + _requests(sims) - received)
                finally:
                    daemon.stop()
                if await conn.fetchval(DONE_SQL, queue.lo, queue.hi) >= rows:
                    raise StepFailed(f"the queue drained after {n + 1} kills: raise --chaos-rows")
            done = await conn.fetchrow(
                "SELECT count(*) FILTER (WHERE status = 'sent') AS sent, count(*) AS total "
                "FROM pushgres.results WHERE id BETWEEN $1 AND $2",
                queue.lo,
                queue.hi,
            )
        finally:
            await conn.close()
        accepted = dict(sims.apns.accepted_ids)
    twice = sum(n - 1 for n in accepted.values() if n > 1)
    result = {
        "rows": rows,
        "kills": kills,
        "latency_ms": latency_ms,
        "batch_size": batch_size,
        "delivery_journal": journal,
        "in_flight_at_kills": in_flight,
        "in_flight_total": sum(in_flight),
        "unanswered_at_simulator": seen_by_simulator,
        "unwritten_at_kills": unwritten,
        "unwritten_total": sum(unwritten),
        "delivered_twice": twice,
        "delivered": len(accepted),
        "sent_results": done["sent"],
        "excess": twice - sum(in_flight),
    }
    if done["total"] != rows or len(accepted) != rows:
        raise StepFailed(
            f"{done['total']:,} results and {len(accepted):,} delivered for {rows:,} rows", result
        )
    return result


_IN_FLIGHT = re.compile(r"^pushgres_http2_streams_open\{[^}]*\} ([0-9.e+]+)$", re.M)
_UNWRITTEN = re.compile(r"^pushgres_delivery_journal_unwritten ([0-9.e+]+)$", re.M)


async def _in_flight(url: str) -> tuple[int, int]:
    """The daemon's open streams, and the accepted sends its journal had not written down."""
    timeout = aiohttp.ClientTimeout(total=5)
    async with aiohttp.ClientSession() as session, session.get(url, timeout=timeout) as resp:
        text = await resp.text()
    streams = int(sum(float(v) for v in _IN_FLIGHT.findall(text)))
    return streams, int(sum(float(v) for v in _UNWRITTEN.findall(text)))


def _requests(sims: Simulators) -> int:
    return sims.apns.counters.get("requests", 0)


async def _connections_closed(sims: Simulators, timeout_s: float = 10.0) -> None:
    for _ in range(int(timeout_s / 0.02)):
        if not sims.apns.connections:
            return
        await asyncio.sleep(0.02)


def _open_streams(sims: Simulators) -> int:
    """Streams the simulator has received and not answered yet, on every connection."""
    return sum(len(c.protocol.open_streams) for c in sims.apns.connections.values())
