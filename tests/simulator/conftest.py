"""Fixtures for the simulator tests: one dev setup per session, fresh simulators per test."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from pushgres.simulator import Simulators, devkit

from .h2client import H2Client, apns_headers, provider_token


@pytest.fixture(scope="session")
def dev_setup(tmp_path_factory: pytest.TempPathFactory) -> devkit.DevSetup:
    return devkit.make_dev_setup(tmp_path_factory.mktemp("devkit"))


@pytest.fixture
async def sims(dev_setup: devkit.DevSetup) -> AsyncIterator[Simulators]:
    async with Simulators(dev_setup) as running:
        yield running


@pytest.fixture
async def apns(sims: Simulators, dev_setup: devkit.DevSetup) -> AsyncIterator[H2Client]:
    """A production APNs connection that has already passed authentication once."""
    client = await H2Client.connect(sims.apns_production_port, sims.ca_file)
    client.auth = provider_token(dev_setup)  # one JWT per connection, as APNs requires
    first = await client.request(apns_headers(devkit.apns_token("ok", 0), client.auth), b"{}")
    assert first.status == 200
    await client.wait_until(lambda: client.limits[-1] == 1000)
    try:
        yield client
    finally:
        await client.close()
