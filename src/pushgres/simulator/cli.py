"""``pushgres simulate``: run the simulators as a process until SIGTERM/SIGINT.

Generates the dev credentials into ``--state-dir`` if missing (reused otherwise), applies an
optional ``--config`` file (TOML or JSON, see :mod:`pushgres.simulator.config`), starts APNs
(production and sandbox), FCM, OAuth and the control API on 127.0.0.1 under uvloop, and
writes ``simulator.json`` (ports, URLs, CA and key paths, identities) atomically once
everything listens. Exit status: 0 after a signal, 2 for a configuration error.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import pathlib
import signal
import sys
from collections.abc import Sequence

import uvloop

from pushgres.exceptions import ConfigError

from . import Simulators, devkit
from .config import SimulatorConfig, load_overrides

__all__ = ["main"]


async def _run(state: pathlib.Path, setup: devkit.DevSetup, config: SimulatorConfig) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with Simulators(config) as sims:
        info = {
            "apns_production_port": sims.apns_production_port,
            "apns_sandbox_port": sims.apns_sandbox_port,
            "fcm_port": sims.fcm_port,
            "oauth_port": sims.oauth_port,
            "oauth_url": sims.oauth_url,
            "control_port": sims.control_port,
            "control_url": sims.control_url,
            "ca_file": setup.ca_file,
            "apns_key_file": setup.apns_key_file,
            "apns_key_id": setup.apns_key_id,
            "apns_team_id": setup.apns_team_id,
            "apns_topic": setup.apns_topic,
            "apns_p12_file": setup.apns_p12_file,
            "apns_cert_file": setup.apns_cert_file,
            "apns_cert_key_file": setup.apns_cert_key_file,
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
    parser.add_argument(
        "--state-dir", default=".pushgres/sim", help="credentials and simulator.json"
    )
    parser.add_argument("--config", help="knobs, tokens and ports (.toml or .json)")
    parser.add_argument("--apns-port", type=int, help="APNs production port (default: free port)")
    parser.add_argument("--apns-sandbox-port", type=int)
    parser.add_argument("--fcm-port", type=int)
    parser.add_argument("--oauth-port", type=int, help="fixed in the service-account JSON")
    parser.add_argument("--control-port", type=int)
    parser.add_argument("--seed", type=int)
    args = parser.parse_args(list(argv) if argv is not None else None)
    state = pathlib.Path(args.state_dir).resolve()
    try:
        overrides = load_overrides(args.config) if args.config else {}
        oauth_port = args.oauth_port or overrides.get("ports", {}).get("oauth") or None
        setup = devkit.make_dev_setup(state, oauth_port=oauth_port)
        config = setup.config.merged(overrides)
        ports = {
            "apns_production_port": args.apns_port,
            "apns_sandbox_port": args.apns_sandbox_port,
            "fcm_port": args.fcm_port,
            "control_port": args.control_port,
        }
        for name, value in ports.items():
            if value is not None:
                setattr(config, name, value)
        if args.seed is not None:
            config.seed = args.seed
        config.oauth_port = setup.oauth_port
    except ConfigError as exc:
        print(f"pushgres simulate: {exc}", file=sys.stderr)
        return 2
    return uvloop.run(_run(state, setup, config))
