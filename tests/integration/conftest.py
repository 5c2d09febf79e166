"""Fixtures for daemon tests: the simulators on loopback and a config pointing at them."""

from __future__ import annotations

import errno
import pathlib
from collections.abc import AsyncIterator
from typing import Any

import pytest

from pushgres.simulator import Simulators, devkit

from ..support.chromium import chromium
from .harness import write_config


@pytest.fixture
async def env(tmp_path: pathlib.Path, dsn: str) -> AsyncIterator[dict[str, Any]]:
    # The OAuth listener's port is written into the service account when the setup is made,
    # and bound later; another process may take it between the two (outgoing connections
    # draw from the same range), so a setup whose port was taken is made again.
    for attempt in range(3):
        setup = devkit.make_dev_setup(tmp_path / ("sim" if not attempt else f"sim{attempt}"))
        sims = Simulators(setup)
        try:
            await sims.start()
        except OSError as exc:
            await sims.stop()
            if exc.errno != errno.EADDRINUSE or attempt == 2:
                raise
            continue
        break
    try:
        config = write_config(tmp_path / "pushgres.toml", dsn=dsn, setup=setup, sims=sims)
        yield {"setup": setup, "sims": sims, "config": config, "dsn": dsn, "tmp": tmp_path}
    finally:
        await sims.stop()


__all__ = ["chromium", "env"]
