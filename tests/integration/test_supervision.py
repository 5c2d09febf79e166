"""`pushgres run` under a supervisor: systemd notify on a real AF_UNIX socket, SIGHUP, JSON logs.

The daemon is a real process; NOTIFY_SOCKET names a datagram socket this test reads, as
systemd would (sd_notify(3)); WATCHDOG_USEC asks for watchdog pings.
"""

from __future__ import annotations

import asyncio
import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import tempfile
import time
from typing import Any

import pytest

from pushgres.simulator import devkit

from .harness import apns, enqueue, stop_process, wait_terminal, write_config


class _NotifySocket:
    def __init__(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="pushgres-notify-")
        self.path = os.path.join(self.dir, "notify")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.setblocking(False)
        self.seen: list[str] = []

    async def wait_for(
        self, wanted: str, timeout_s: float, proc: subprocess.Popen[bytes]
    ) -> list[str]:
        """Read datagrams until one has the line ``wanted``; return that datagram's lines.

        Without blocking the loop: the simulators run in it.
        """
        loop = asyncio.get_running_loop()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                data = (await asyncio.wait_for(loop.sock_recv(self.sock, 4096), 0.2)).decode()
            except TimeoutError:
                assert proc.poll() is None, "the daemon exited"
                continue
            self.seen.append(data)
            lines = data.split("\n")
            if wanted in lines:
                return lines
        raise AssertionError(f"no {wanted!r} within {timeout_s}s; saw {self.seen[-10:]}")

    def close(self) -> None:
        self.sock.close()
        os.unlink(self.path)
        os.rmdir(self.dir)


def _start(config: pathlib.Path, log: pathlib.Path, notify_socket: str) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if k != "WATCHDOG_PID"}
    env.update(PYTHONUNBUFFERED="1", NOTIFY_SOCKET=notify_socket, WATCHDOG_USEC="1000000")
    with open(log, "ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "pushgres", "run", "--config", str(config)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )


@pytest.fixture
def notify() -> Any:
    sock = _NotifySocket()
    yield sock
    sock.close()


async def test_systemd_notify_reload_and_json_logs(
    env: dict[str, Any], notify: _NotifySocket
) -> None:
    sims, dsn, setup, tmp = env["sims"], env["dsn"], env["setup"], env["tmp"]
    config = write_config(
        tmp / "run.toml",
        dsn=dsn,
        setup=setup,
        sims=sims,
        daemon='log_format = "json"\nlog_level = "info"',
    )
    log = tmp / "daemon.log"
    proc = _start(config, log, notify.path)
    try:
        ready = await notify.wait_for("READY=1", 30, proc)
        status = [line for line in ready if line.startswith("STATUS=")]
        assert status and "running: 2 app(s)" in status[0]
        # Watchdog pings at half of WATCHDOG_USEC while the claim loops are healthy.
        await notify.wait_for("WATCHDOG=1", 5, proc)
        await notify.wait_for("WATCHDOG=1", 5, proc)
        ids = await enqueue(dsn, [apns(devkit.apns_token("ok", i)) for i in range(50)])
        await wait_terminal(dsn, ids)

        # SIGHUP: RELOADING=1, then READY=1 once the new config's apps run.
        config.write_text(
            config.read_text().replace(
                'platform = "apns"', 'platform = "apns"\nrate_limit_per_s = 500'
            )
        )
        proc.send_signal(signal.SIGHUP)
        reloading = await notify.wait_for("RELOADING=1", 10, proc)
        assert any(line.startswith("MONOTONIC_USEC=") for line in reloading)
        await notify.wait_for("READY=1", 15, proc)
        more = await enqueue(dsn, [apns(devkit.apns_token("ok", 1000 + i)) for i in range(20)])
        found = await wait_terminal(dsn, more)
        assert all(o.status == "sent" for o in found.values())

        proc.send_signal(signal.SIGTERM)
        await notify.wait_for("STOPPING=1", 10, proc)
        assert proc.wait(timeout=30) == 0
    finally:
        stop_process(proc, signal.SIGKILL)
    records = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    assert records, "no log lines"
    for record in records:
        assert list(record)[:4] == ["ts", "level", "logger", "msg"]
    messages = [r["msg"] for r in records]
    assert any("SIGHUP received" in m for m in messages)
    assert any("config reloaded: added none; changed ios; removed none" in m for m in messages)
    assert any(r.get("action") == "stop" for r in records)
    text = log.read_text()
    assert pathlib.Path(setup.apns_key_file).read_text().splitlines()[1] not in text
    assert devkit.apns_token("ok", 7) not in text
