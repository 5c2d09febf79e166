"""Fixtures for daemon tests: the simulators on loopback and a config pointing at them."""

from __future__ import annotations

import pathlib
from collections.abc import AsyncIterator
from typing import Any

import pytest

from pushgres.simulator import Simulators, devkit

from ..support.chromium import chromium
from .harness import write_config


@pytest.fixture
async def env(tmp_path: pathlib.Path, dsn: str) -> AsyncIterator[dict[str, Any]]:
    setup = devkit.make_dev_setup(tmp_path / "sim")
    async with Simulators(setup) as sims:
        config = write_config(tmp_path / "pushgres.toml", dsn=dsn, setup=setup, sims=sims)
        yield {"setup": setup, "sims": sims, "config": config, "dsn": dsn, "tmp": tmp_path}


__all__ = ["chromium", "env"]
