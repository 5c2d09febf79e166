"""Config reload (SIGHUP) in a running daemon: apps added, changed and removed, nothing dropped.

Real PostgreSQL and the simulators over TLS; the daemon runs in this loop and
``Daemon.reload()`` is what the SIGHUP handler calls (tests/integration/test_processes.py
sends the real signal).
"""

from __future__ import annotations

import asyncio
import logging
import pathlib
import time
from typing import Any

import asyncpg
import pytest

from pushgres.config import load_config
from pushgres.daemon import Daemon
from pushgres.simulator import devkit

from .harness import (
    apns,
    config_with_apps,
    daemon_rows,
    enqueue,
    fcm,
    wait_terminal,
    write_config,
)


def _open_streams(sims: Any) -> int:
    state = sims.state()
    return sum(c["open"] for c in state["apns"]["connections"])


async def _wait(predicate: Any, what: str, timeout_s: float = 20) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.02)


async def test_reload_adds_changes_and_removes_apps_without_dropping_sends(
    env: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    sims, dsn, setup, tmp = env["sims"], env["dsn"], env["setup"], env["tmp"]
    sims.patch({"apns": {"latency": {"dist": "fixed", "ms": 400}}})
    live = tmp / "live.toml"

    def write(path: pathlib.Path, **kwargs: Any) -> pathlib.Path:
        return write_config(path, dsn=dsn, setup=setup, sims=sims, **kwargs)

    config_with_apps(write(tmp / "full.toml"), live, ["ios"])
    daemon = Daemon(
        load_config(live, environ={}), reload_config=lambda: load_config(live, environ={})
    )
    task = asyncio.create_task(daemon.run())
    caplog.set_level(logging.INFO, logger="pushgres")
    try:
        first = await enqueue(dsn, [apns(devkit.apns_token("ok", i)) for i in range(600)])
        await _wait(lambda: _open_streams(sims) >= 50, "no ios sends in flight")
        # While ios sends are on the wire: ios changes (certificate auth and a rate limit)
        # and android is added.
        write(tmp / "changed.toml", apns_auth="p12", apns="rate_limit_per_s = 2000")
        live.write_text((tmp / "changed.toml").read_text())
        daemon.reload()
        await _wait(
            lambda: "android" in [a.name for a in daemon.app_states()], "android never started"
        )
        second = await enqueue(dsn, [fcm(devkit.fcm_token("ok", i)) for i in range(100)])
        third = await enqueue(dsn, [apns(devkit.apns_token("ok", 10_000 + i)) for i in range(100)])
        found = await wait_terminal(dsn, first + second + third)
        assert all(o.status == "sent" for o in found.values())
        # The sends in flight during the reload finished on their old connections: none
        # was cut off and retried, none delivered twice.
        assert all(o.attempts == 1 for o in found.values())
        counts = sims.accepted_counts()
        assert set(counts["apns"].values()) == {1} and len(counts["apns"]) == 700
        assert len(counts["fcm"]) == 100
        # The change took effect: the later ios sends went over certificate connections.
        assert sims.apns.counters.get("cert_connections", 0) >= 1
        running = daemon._running["ios"]
        assert running.app.rate_limit_per_s == 2000
        assert "config reloaded: added android; changed ios; removed none" in caplog.text

        # A broken config is refused; the running one stays and keeps sending.
        live.write_text("[database\n")
        daemon.reload()
        await _wait(lambda: "config reload refused" in caplog.text, "no refusal logged")
        assert "is not valid TOML" in caplog.text
        # Nor does a file that is not UTF-8 (a Latin-1 comment) take the daemon down.
        live.write_bytes((tmp / "changed.toml").read_bytes() + "# caf\xe9\n".encode("latin-1"))
        caplog.clear()
        daemon.reload()
        await _wait(lambda: "is not UTF-8 text" in caplog.text, "latin-1 config not refused")
        more = await enqueue(dsn, [fcm(devkit.fcm_token("ok", 500 + i)) for i in range(20)])
        found = await wait_terminal(dsn, more)
        assert all(o.status == "sent" for o in found.values())

        # Credentials that cannot be read are refused as well, naming the file.
        write(tmp / "badcred.toml", apns_auth="p12", apns='p12_password = "hunter2-not-it"')
        live.write_text((tmp / "badcred.toml").read_text())
        caplog.clear()
        daemon.reload()
        await _wait(lambda: "config reload refused" in caplog.text, "bad p12 not refused")
        assert "hunter2" not in caplog.text  # the password is never logged
        assert daemon._running["ios"] is running

        # Removing android: its lane stops, the heartbeat stops advertising it, and its
        # rows are left to a daemon that serves it (here none: they fail as UnknownApp).
        config_with_apps(tmp / "changed.toml", live, ["ios"])
        caplog.clear()
        daemon.reload()
        await _wait(lambda: "removed android" in caplog.text, "android not removed")
        await _wait(
            lambda: "android" not in [a.name for a in daemon.app_states()], "android still listed"
        )

        async def advertised() -> list[str]:
            rows = await daemon_rows(dsn)
            return list(rows[0]["apps"]) if rows else []

        deadline = time.monotonic() + 15
        while await advertised() != ["ios"]:
            assert time.monotonic() < deadline, await advertised()
            await asyncio.sleep(0.2)
        orphans = await enqueue(dsn, [fcm(devkit.fcm_token("ok", 900 + i)) for i in range(5)])
        found = await wait_terminal(dsn, orphans)
        assert {(o.reason or "").split(":")[0] for o in found.values()} == {"UnknownApp"}
    finally:
        daemon.stop()
        await asyncio.wait_for(task, 30)
    conn = await asyncpg.connect(dsn)
    try:
        assert await conn.fetchval("SELECT count(*) FROM pushgres.queue") == 0
    finally:
        await conn.close()
