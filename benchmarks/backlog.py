"""A big backlog, then a soak: does the daemon stay as fast at the end of 10,000,000 rows as at
the start, and does its memory stay flat under hours of traffic?

**Drain.** ``rows`` notifications of one APNs app are inserted by Postgres itself (``INSERT …
SELECT generate_series``: the same tokens and payload as :mod:`benchmarks.e2e`, in 1,000,000-row
statements), then ``ANALYZE`` and ``CHECKPOINT``; one daemon (metrics on) drains them to the
sink. Every second the harness reads the results inserted so far (``pg_stat_user_tables``),
the daemon's claim-time histogram (``pushgres_claim_duration_seconds`` from ``/metrics``), its
resident memory and its open file descriptors. Three windows, each a tenth of the rows, at the
start, the middle and the end of the drain, give sends/s and the mean claim time; the target is
that each stays within 20 % of the others. The daemon's peak RSS (``VmHWM``) covers the whole
drain.

**Soak.** Then producers insert 100 notifications per statement, open loop, at ``soak_per_s``
for ``soak_s`` seconds while the same daemon sends them; RSS and file descriptors are sampled
every ``SOAK_SAMPLE_S``. Flat means: the last fifth's mean RSS within 10 % of the first fifth's
(after a minute's warm-up), and no more file descriptors at the end than at the start.
"""

from __future__ import annotations

import asyncio
import os
import pathlib
import re
import time
from typing import Any

import aiohttp
import asyncpg
import uvloop

from pushgres import codec
from pushgres.simulator.devkit import APNS_KINDS

from .e2e import scene
from .fairness import _until
from .latency import _Producer
from .procs import Child, StepFailed, peak_rss_bytes
from .sink import Sink
from .workload import APP, PAYLOAD, TOKEN_RING, Credentials

__all__ = ["run_backlog"]

FILL_CHUNK = 1_000_000
SAMPLE_S = 1.0
SOAK_SAMPLE_S = 10.0
WINDOW_SHARE = 0.1  # each of the start/middle/end windows is this share of the rows
MAX_SPREAD = 0.2
FILL_SQL = """
INSERT INTO pushgres.queue (app, platform, device_token, payload)
SELECT $1, 'apns', $2 || lpad(to_hex(n % $3), 56, '0'), $4::jsonb
FROM generate_series($5::bigint, $6::bigint) AS n
"""
INSERTED_SQL = """
SELECT coalesce(sum(s.n_tup_ins), 0)::bigint
FROM pg_stat_user_tables s JOIN pg_inherits i ON i.inhrelid = s.relid
WHERE i.inhparent = 'pushgres.results'::regclass
"""
QUEUED_SQL = "SELECT count(*) FROM pushgres.queue"
_CLAIM = re.compile(r"^pushgres_claim_duration_seconds_(sum|count)\{[^}]*\} ([0-9.e+-]+)$", re.M)


def _rss_fds(pid: int) -> tuple[int, int]:
    rss = 0
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1]) * 1024
    return rss, len(os.listdir(f"/proc/{pid}/fd"))


async def _claims(session: aiohttp.ClientSession, url: str) -> tuple[float, float]:
    """The claim histogram's (sum of seconds, count) over every app."""
    async with session.get(url, timeout=aiohttp.ClientTimeout(total=10)) as resp:
        text = await resp.text()
    total = {"sum": 0.0, "count": 0.0}
    for kind, value in _CLAIM.findall(text):
        total[kind] += float(value)
    return total["sum"], total["count"]


async def _fill(dsn: str, rows: int) -> float:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("DELETE FROM pushgres.queue")
        payload = codec.dumps(PAYLOAD).decode()
        started = time.monotonic()
        for start in range(0, rows, FILL_CHUNK):
            end = min(start + FILL_CHUNK, rows) - 1
            await conn.execute(
                FILL_SQL, APP, APNS_KINDS["ok"], TOKEN_RING, payload, start, end, timeout=3600
            )
        fill_s = time.monotonic() - started
        await conn.execute("ANALYZE pushgres.queue")
        try:
            await conn.execute("CHECKPOINT")
        except asyncpg.PostgresError:
            pass
        return fill_s
    finally:
        await conn.close()


async def _drain(dsn: str, rows: int, daemon: Child, metrics_url: str) -> dict[str, Any]:
    """Sample once a second until every row has a result; the three windows' figures."""
    conn = await asyncpg.connect(dsn)
    samples: list[tuple[float, int, float, float, int, int]] = []
    try:
        base = await conn.fetchval(INSERTED_SQL)
        async with aiohttp.ClientSession() as session:
            deadline = time.monotonic() + 120 + rows / 2_000
            while True:
                await asyncio.sleep(SAMPLE_S)
                if not daemon.alive():
                    raise StepFailed(f"the daemon exited: {daemon.log_tail()}")
                done = await conn.fetchval(INSERTED_SQL) - base
                claim_sum, claim_count = await _claims(session, metrics_url)
                rss, fds = _rss_fds(daemon.pid)
                samples.append((time.monotonic(), done, claim_sum, claim_count, rss, fds))
                if done >= rows:
                    break
                if time.monotonic() > deadline:
                    raise StepFailed(f"only {done:,} of {rows:,} drained in time")
    finally:
        await conn.close()
    windows: dict[str, dict[str, float | None]] = {}
    rates: list[float] = []
    claims_ms: list[float] = []
    for name, centre in (("start", 0.1), ("middle", 0.5), ("end", 0.9)):
        lo = (centre - WINDOW_SHARE / 2) * rows
        hi = (centre + WINDOW_SHARE / 2) * rows
        inside = [s for s in samples if lo <= s[1] <= hi]
        if len(inside) < 2:
            raise StepFailed(f"too few samples in the {name} window: raise --backlog-rows")
        first, last = inside[0], inside[-1]
        claims = last[3] - first[3]
        rate = (last[1] - first[1]) / (last[0] - first[0])
        claim_ms = (last[2] - first[2]) / claims * 1000 if claims else None
        windows[name] = {"sends_per_s": rate, "claim_ms": claim_ms}
        rates.append(rate)
        if claim_ms is not None:
            claims_ms.append(claim_ms)
    return {
        "windows": windows,
        "drain_s": samples[-1][0] - samples[0][0],
        "sends_spread": max(rates) / min(rates) - 1,
        "claim_spread": max(claims_ms) / min(claims_ms) - 1 if claims_ms else None,
        "rss_bytes_end": samples[-1][4],
        "fds_end": samples[-1][5],
    }


async def _soak(dsn: str, daemon: Child, per_s: float, soak_s: float) -> dict[str, Any]:
    pool = await asyncpg.create_pool(dsn, min_size=4, max_size=8)
    producer = _Producer(pool, 100)
    samples: list[tuple[float, int, int]] = []
    tasks: set[asyncio.Task[None]] = set()
    try:
        started = time.monotonic()
        next_sample = started
        issued = 0
        while (now := time.monotonic()) - started < soak_s:
            if not daemon.alive():
                raise StepFailed(f"the daemon exited during the soak: {daemon.log_tail()}")
            due = int((now - started) * per_s / 100) + 1
            for _ in range(due - issued):
                task = asyncio.create_task(producer.one())
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            issued = due
            if now >= next_sample:
                samples.append((now - started, *_rss_fds(daemon.pid)))
                next_sample += SOAK_SAMPLE_S
            await asyncio.sleep(0.01)
        await asyncio.wait_for(asyncio.gather(*tasks), 60)
        samples.append((time.monotonic() - started, *_rss_fds(daemon.pid)))

        async def drained() -> bool:
            return bool(await pool.fetchval(QUEUED_SQL) == 0)

        await _until(drained, 120, "the soak's notifications to be sent")
    finally:
        await pool.close()
    warm = [s for s in samples if s[0] >= min(60.0, soak_s / 5)]
    fifth = max(1, len(warm) // 5)
    first = sum(s[1] for s in warm[:fifth]) / fifth
    last = sum(s[1] for s in warm[-fifth:]) / fifth
    return {
        "per_s": per_s,
        "soak_s": soak_s,
        "notifications": len(producer.ids),
        "rss_first_bytes": first,
        "rss_last_bytes": last,
        "rss_growth": last / first - 1,
        "rss_max_bytes": max(s[1] for s in samples),
        "fds_start": warm[0][2],
        "fds_end": samples[-1][2],
        "fds_max": max(s[2] for s in samples),
        "samples": [[round(t), rss, fds] for t, rss, fds in samples],
    }


def run_backlog(
    sink: Sink,
    credentials: Credentials,
    workdir: pathlib.Path,
    *,
    rows: int,
    soak_s: float,
    soak_per_s: float,
    codec_name: str,
    connections: int,
    streams: int,
    batch_size: int,
) -> dict[str, Any]:
    """The drain's three windows, the peak RSS, and the soak (see the module docstring)."""
    with (
        scene(
            workdir,
            "backlog",
            sink,
            credentials,
            codec=codec_name,
            connections=connections,
            streams=streams,
            batch_size=batch_size,
        ) as here,
        asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner,
    ):
        fill_s = runner.run(_fill(here.dsn, rows))
        daemon = here.daemon("backlog")
        metrics_url = f"http://127.0.0.1:{here.admin_port}/metrics"
        drain = runner.run(_drain(here.dsn, rows, daemon, metrics_url))
        drain["peak_rss_bytes"] = peak_rss_bytes(daemon.pid)
        soak = runner.run(_soak(here.dsn, daemon, soak_per_s, soak_s)) if soak_s > 0 else None
    return {"rows": rows, "fill_s": fill_s, "fill_per_s": rows / fill_s, **drain, "soak": soak}
