"""PostgreSQL restarting under a draining daemon: nothing lost, every connection comes back.

These tests run their own embedded PostgreSQL (``pgserver``), since they stop and start it.
"""

from __future__ import annotations

import asyncio
import logging
import pathlib
import shlex
import tempfile
import time
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from pushgres.db.migrate import migrate
from pushgres.simulator import Simulators, devkit

from .harness import (
    apns,
    assert_each_row_queued_or_done,
    enqueue,
    running_daemon,
    settings_for,
    wait_terminal,
    write_config,
)


class OwnPostgres:
    """An embedded server this test may stop and start again, with the same address."""

    def __init__(self, directory: pathlib.Path) -> None:
        import pgserver

        self._pgserver = pgserver
        self.server = pgserver.get_server(directory, cleanup_mode="delete")
        self.dsn = self.server.get_uri()
        # The options it was started with, to start it again the same way.
        opts = (directory / "postmaster.opts").read_text().strip()
        args = shlex.split(opts)[1:]
        at = args.index("-D")
        self._options = shlex.join(args[:at] + args[at + 2 :])

    def _pg_ctl(self, *args: str) -> None:
        self._pgserver.pg_ctl(
            list(args), pgdata=self.server.pgdata, user=self.server.system_user, timeout=30
        )

    def stop(self) -> None:
        self._pg_ctl("-w", "stop", "-m", "fast")

    def start(self) -> None:
        self._pg_ctl("-w", "start", "-o", self._options, "-l", str(self.server.log))


@pytest.fixture
async def outage_env(tmp_path: pathlib.Path) -> AsyncIterator[dict[str, Any]]:
    # Not under tmp_path: the server runs as another user, who must reach its folder.
    directory = pathlib.Path(tempfile.mkdtemp(prefix="pushgres-outage-pg-")) / "data"
    pg = await asyncio.to_thread(OwnPostgres, directory)
    try:
        conn = await asyncpg.connect(pg.dsn)
        try:
            await migrate(conn)
        finally:
            await conn.close()
        setup = devkit.make_dev_setup(tmp_path / "sim")
        async with Simulators(setup) as sims:
            config = write_config(
                tmp_path / "pushgres.toml",
                dsn=pg.dsn,
                setup=setup,
                sims=sims,
                daemon="poll_interval_s = 30",  # only NOTIFY wakes it up soon
            )
            yield {"pg": pg, "sims": sims, "config": config, "dsn": pg.dsn}
    finally:
        await asyncio.to_thread(pg.server.cleanup)


async def _notify_latency(dsn: str, token: str) -> float:
    started = time.monotonic()
    ids = await enqueue(dsn, [apns(token)])
    await wait_terminal(dsn, ids, timeout_s=20)
    return time.monotonic() - started


async def test_a_postgres_restart_mid_drain_loses_nothing_and_listen_comes_back(
    outage_env: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    env = outage_env
    pg: OwnPostgres = env["pg"]
    env["sims"].apns.patch({"latency": {"dist": "fixed", "ms": 20}})
    tokens = [devkit.apns_token("ok", 60_000 + i) for i in range(4000)]
    caplog.set_level(logging.INFO)
    async with running_daemon(settings_for(env["config"])) as daemon:
        before = await _notify_latency(env["dsn"], devkit.apns_token("ok", 59_999))
        ids = await enqueue(env["dsn"], [apns(t) for t in tokens])
        while daemon.stats.outcomes["sent"] < 1000:
            await asyncio.sleep(0.02)
        await asyncio.to_thread(pg.stop)
        await asyncio.sleep(5)  # the outage: every claim, write and the LISTEN fail
        await asyncio.to_thread(pg.start)
        found = await wait_terminal(env["dsn"], ids, timeout_s=60)
        await asyncio.sleep(1.5)  # the LISTEN connection is back within a second
        after = await _notify_latency(env["dsn"], devkit.apns_token("ok", 59_998))
    assert all(o.status == "sent" for o in found.values())
    await assert_each_row_queued_or_done(env["dsn"], ids)
    accepted = env["sims"].accepted_counts()["apns"]
    assert all(accepted.get(t, 0) >= 1 for t in tokens)
    assert before < 2 and after < 2, (before, after)  # NOTIFY, not the 30 s poll
    messages = [r.getMessage() for r in caplog.records if r.name.startswith("pushgres")]
    # One line per state change, no traceback.
    assert sum("PostgreSQL is unavailable" in m for m in messages) == 1, messages
    assert sum("PostgreSQL is available again" in m for m in messages) == 1, messages
    assert sum("LISTEN connection to PostgreSQL lost" in m for m in messages) == 1, messages
    assert sum("LISTEN connection to PostgreSQL is back" in m for m in messages) == 1, messages
    # No traceback from pushgres or asyncpg. (asyncio itself may report a future inside
    # asyncpg that a dropped connection failed after its waiter was gone: rare, not ours.)
    tracebacks = [
        r.getMessage()
        for r in caplog.records
        if (r.exc_info or "Traceback" in r.getMessage())
        and not (r.name == "asyncio" and "Future exception was never retrieved" in r.getMessage())
    ]
    assert not tracebacks, tracebacks
    assert not [m for m in messages if "released back to the pool" in m]
