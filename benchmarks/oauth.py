"""The OAuth2 token endpoint the FCM end-to-end daemon gets its access token from.

The sink answers FCM sends, but an access token comes from the service account's
``token_uri``: an HTTPS endpoint that checks a signed JWT assertion (RFC 7523). nghttpd cannot
be that, so :class:`TokenEndpoint` runs ``python -m benchmarks.oauth <devkit folder>`` as a
child: pushgres's own simulators on the run's devkit (the sink's CA, the service account whose
``token_uri`` names the port). The daemon asks it once per start and then every 55 minutes,
so its CPU is in no figure.
"""

from __future__ import annotations

import asyncio
import pathlib
import signal
import socket
import sys
import time

import uvloop

from pushgres.simulator import Simulators
from pushgres.simulator.devkit import make_dev_setup

from .procs import Child, StepFailed
from .workload import FCM_PROJECT, TOPIC, Credentials

__all__ = ["TokenEndpoint"]

LISTEN_TIMEOUT_S = 30.0


class TokenEndpoint:
    """The simulators' OAuth endpoint in a child process, for ``with``."""

    def __init__(self, workdir: pathlib.Path, credentials: Credentials) -> None:
        self._workdir = workdir
        self._credentials = credentials
        self._child: Child | None = None

    def __enter__(self) -> TokenEndpoint:
        self._child = Child(
            [sys.executable, "-m", "benchmarks.oauth", self._credentials.directory],
            log=self._workdir / "oauth.log",
        )
        deadline = time.monotonic() + LISTEN_TIMEOUT_S
        while True:
            if not self._child.alive():
                raise StepFailed(f"the OAuth endpoint exited: {self._child.log_tail()}")
            try:
                with socket.create_connection(("127.0.0.1", self._credentials.oauth_port), 1.0):
                    return self
            except OSError:
                if time.monotonic() > deadline:
                    self.__exit__()
                    raise StepFailed(f"the OAuth endpoint did not listen in {LISTEN_TIMEOUT_S}s")
                time.sleep(0.1)

    def __exit__(self, *exc: object) -> None:
        if self._child is not None:
            self._child.stop()
            self._child = None


async def _serve(directory: str) -> None:
    setup = make_dev_setup(directory, apns_topic=TOPIC, fcm_project=FCM_PROJECT)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with Simulators(setup):
        await stop.wait()


if __name__ == "__main__":
    uvloop.run(_serve(sys.argv[1]))
