"""The control API, the request log, and ``pushgres simulate`` as a process."""

from __future__ import annotations

import asyncio
import json
import os
import pathlib
import signal
import sys
from typing import Any

import aiohttp

from pushgres.simulator import Simulators, devkit

from .h2client import H2Client, apns_headers


async def call(sims: Simulators, path: str, body: Any = None) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as session:
        if body is None:
            async with session.get(sims.control_url + path) as resp:
                return resp.status, await resp.json()
        async with session.post(sims.control_url + path, json=body) as resp:
            return resp.status, await resp.json()


async def test_control_routes(sims: Simulators, apns: H2Client) -> None:
    ok = devkit.apns_token("ok", 3)
    status, _ = await call(sims, "/_sim/config", {"apns": {"no_such_knob": 1}})
    assert status == 400
    status, _ = await call(sims, "/_sim/config", {"nowhere": {}})
    assert status == 400
    assert (await call(sims, "/_sim/config", {"apns": {"blackhole_rate": 0.0}}))[0] == 200
    assert (await call(sims, "/_sim/tokens", {"apns": {ok: "Unregistered"}}))[0] == 200
    assert (await apns.request(apns_headers(ok, apns.auth), b"{}")).status == 410
    assert (await call(sims, "/_sim/script", {"apns": {"*": ["500:InternalServerError"]}}))[
        0
    ] == 200
    other = devkit.apns_token("ok", 4)
    assert (await apns.request(apns_headers(other, apns.auth), b"{}")).status == 500

    _, accepted = await call(sims, "/_sim/accepted")
    assert accepted["apns"] == {devkit.apns_token("ok", 0): 1}
    _, metrics = await call(sims, "/_sim/metrics")
    assert metrics["apns"]["responses"]["410:Unregistered"] == 1
    assert metrics["apns"]["max_concurrent_seen"] == 1
    _, state = await call(sims, "/_sim/state")
    [conn] = state["apns"]["connections"]
    assert conn["team"] == "TEAM123456" and conn["max_concurrent_streams"] == 1000
    _, log = await call(sims, "/_sim/requests?service=apns_production&since=1")
    assert [entry["status"] for entry in log] == [410, 500]

    _, clock = await call(sims, "/_sim/clock", {"advance_s": 10})
    assert clock["offset_s"] == 10 and sims.fcm.knobs["clock_offset_s"] == 10

    assert (await call(sims, "/_sim/settings", {"service": "apns", "max_concurrent_streams": 7}))[
        0
    ] == 200
    await apns.wait_until(lambda: apns.limits[-1] == 7)
    _, goaway = await call(sims, "/_sim/goaway", {"service": "apns", "reason": "Maintenance"})
    assert goaway["connections"] == 1
    await asyncio.wait_for(apns.closed.wait(), 5)
    assert apns.goaway is not None and apns.goaway.additional_data == b'{"reason":"Maintenance"}'

    assert (await call(sims, "/_sim/reset", {}))[0] == 200
    _, accepted = await call(sims, "/_sim/accepted")
    assert accepted == {"apns": {}, "apns_ids": {}, "fcm": {}}
    assert sims.fcm.knobs["clock_offset_s"] == 0.0


async def test_drop_connections(sims: Simulators, apns: H2Client) -> None:
    _, dropped = await call(sims, "/_sim/drop", {"service": "all"})
    assert dropped["connections"] == 1
    await asyncio.wait_for(apns.closed.wait(), 5)
    assert apns.goaway is None


async def test_simulate_command(tmp_path: pathlib.Path) -> None:
    config = tmp_path / "sim.toml"
    config.write_text(
        "seed = 3\n[fcm]\nmax_concurrent_streams = 50\n[apns]\nstreams_after_auth = 500\n"
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        "import sys; from pushgres.simulator.cli import main; sys.exit(main(sys.argv[1:]))",
        "--state-dir",
        str(tmp_path / "state"),
        "--config",
        str(config),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        info_file = tmp_path / "state" / "simulator.json"
        for _ in range(300):
            if info_file.exists() or proc.returncode is not None:
                break
            await asyncio.sleep(0.05)
        info = json.loads(info_file.read_text())
        assert info["apns_team_id"] == "TEAM123456" and info["fcm_project"] == "demo-project"
        account = json.loads(pathlib.Path(info["service_account_file"]).read_text())
        assert account["token_uri"] == info["oauth_url"]
        async with (
            aiohttp.ClientSession() as session,
            session.get(info["control_url"] + "/_sim/state") as resp,
        ):
            state = await resp.json()
        assert state["fcm"]["knobs"]["max_concurrent_streams"] == 50
        assert state["apns"]["knobs"]["streams_after_auth"] == 500
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.wait_for(proc.communicate(), 10)
    assert proc.returncode == 0, stderr.decode()


def test_simulate_rejects_bad_config(tmp_path: pathlib.Path) -> None:
    from pushgres.simulator.cli import main

    config = tmp_path / "sim.json"
    config.write_text('{"nonsense": {}}')
    assert main(["--state-dir", str(tmp_path / "state"), "--config", str(config)]) == 2
