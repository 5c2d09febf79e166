"""The dashboard in headless Chromium, drawing from a real daemon while it drains.

Real PostgreSQL, the simulators over TLS, the daemon with its admin listener, Debian's
chromium; a screenshot is saved as a test artifact (``dashboard-live.png``).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import asyncpg

from pushgres.simulator import devkit

from ..support.chromium import Chromium, artifact_path
from .harness import apns, enqueue, fcm, running_daemon, settings_for, wait_terminal, write_config

STATE = """(() => {
  const d = window.pushgresDashboard;
  const cards = Object.fromEntries([...document.querySelectorAll('.app-card')].map((card) => {
    const text = {};
    for (const node of card.querySelectorAll('[data-field]')) text[node.dataset.field] = node.textContent;
    return [card.dataset.app, text];
  }));
  return {updates: d.updates, chart: {...d.charts.sendRate}, data: d.lastData, cards,
          state: document.getElementById('state').textContent};
})()"""


async def test_dashboard_draws_live_data_while_the_daemon_drains(
    env: dict[str, Any], chromium: Chromium
) -> None:
    sims, dsn, tmp = env["sims"], env["dsn"], env["tmp"]
    config = write_config(
        tmp / "live.toml",
        dsn=dsn,
        setup=env["setup"],
        sims=sims,
        apns="rate_limit_per_s = 400",
        fcm="rate_limit_per_s = 100",
    )
    config.write_text(
        config.read_text() + '\n[admin]\nlisten = "127.0.0.1:0"\nqueue_sample_interval_s = 1\n'
    )
    ios = [devkit.apns_token("ok", i) for i in range(6000)]
    ios += [devkit.apns_token("Unregistered", i) for i in range(300)]
    android = [devkit.fcm_token("ok", i) for i in range(1500)]
    async with running_daemon(settings_for(config)) as daemon:
        deadline = time.monotonic() + 10
        while daemon.admin_url is None:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)
        ids = await enqueue(dsn, [apns(t) for t in ios] + [fcm(t) for t in android])
        await chromium.navigate(f"{daemon.admin_url}/dashboard")
        await chromium.wait_for("document.body.dataset.ready === '1'")
        # The send-rate history is sampled every 5 s: two rates need three samples.
        await chromium.wait_for(
            "window.pushgresDashboard.charts.sendRate.points >= 4", timeout_s=20
        )
        first = await chromium.evaluate(STATE)
        await chromium.wait_for(f"window.pushgresDashboard.updates >= {first['updates'] + 2}")
        later = await chromium.evaluate(STATE)
        queue = await _queued(dsn)
        assert queue > 0, "the drain ended before the page was read: raise the rows"
        await chromium.screenshot(artifact_path("dashboard-live.png"))
        await wait_terminal(dsn, ids, timeout_s=60)
    assert chromium.console_errors == []
    assert all(url.startswith((daemon.admin_url, "data:")) for url in chromium.requests)
    assert later["state"].lower().startswith("running")
    assert later["chart"]["series"] == 2
    by_app = {app["name"]: app for app in later["data"]["apps"]}
    # Live: sends are counted between the two reads, and the chart shows a real rate.
    earlier = {app["name"]: app for app in first["data"]["apps"]}
    assert by_app["ios"]["outcomes"]["sent"] > earlier["ios"]["outcomes"]["sent"]
    rates = [rate for _, rate in by_app["ios"]["sent_per_s"]]
    assert max(rates) > 100
    # The card shows what the data says.
    card = later["cards"]["ios"]
    assert card, later["cards"]
    shown = " ".join(card.values())
    assert (
        f"{by_app['ios']['outcomes']['sent']:,}" in shown
        or str(by_app["ios"]["outcomes"]["sent"]) in shown
    )
    png = artifact_path("dashboard-live.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


async def _queued(dsn: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        return int(await conn.fetchval("SELECT count(*) FROM pushgres.queue"))
    finally:
        await conn.close()
