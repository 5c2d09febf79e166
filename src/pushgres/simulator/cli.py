"""``pushgres simulate``: run the simulators as a process until SIGTERM/SIGINT.

Generates the dev credentials into ``--state-dir`` if missing, starts APNs (production and
sandbox), FCM, OAuth and the control API on 127.0.0.1, and writes ``simulator.json`` (ports,
URLs, CA and key paths, identities) once everything listens.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import pathlib
import signal
from collections.abc import Sequence

import uvloop

from . import Simulators, devkit

__all__ = ["main"]


async def _run(args: argparse.Namespace, state: pathlib.Path, setup: devkit.DevSetup) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with Simulators(
        setup,
        apns_production_port=args.apns_port,
        apns_sandbox_port=args.apns_sandbox_port,
        fcm_port=args.fcm_port,
        control_port=args.control_port,
    ) as sims:
        info = {
            "apns_production_port": sims.apns_production_port,
            "apns_sandbox_port": sims.apns_sandbox_port,
            "fcm_port": sims.fcm_port,
            "oauth_url": sims.oauth_url,
            "control_url": sims.control_url,
            "ca_file": setup.ca_file,
            "apns_key_file": setup.apns_key_file,
            "apns_key_id": setup.apns_key_id,
            "apns_team_id": setup.apns_team_id,
            "apns_topic": setup.apns_topic,
            "service_account_file": setup.service_account_file,
            "fcm_project": setup.fcm_project,
            "pid": os.getpid(),
        }
        tmp = state / "simulator.json.tmp"
        tmp.write_text(json.dumps(info, indent=2))
        tmp.replace(state / "simulator.json")
        print(json.dumps(info), flush=True)
        await stop.wait()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pushgres simulate", description=__doc__.split("\n")[0])
    parser.add_argument("--state-dir", default=".pushgres/sim")
    parser.add_argument("--apns-port", type=int, default=0)
    parser.add_argument("--apns-sandbox-port", type=int, default=0)
    parser.add_argument("--fcm-port", type=int, default=0)
    parser.add_argument("--oauth-port", type=int, default=0)
    parser.add_argument("--control-port", type=int, default=0)
    args = parser.parse_args(argv)
    state = pathlib.Path(args.state_dir).resolve()
    setup = devkit.make_dev_setup(state, oauth_port=args.oauth_port or None)
    return uvloop.run(_run(args, state, setup))
