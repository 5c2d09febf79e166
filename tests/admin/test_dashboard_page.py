"""The dashboard page in headless Chromium, fed by a fake ``data.json`` that moves at each poll.

The page and its assets come from :mod:`pushgres.admin.dashboard`, served by a real aiohttp
server on 127.0.0.1 laid out as the admin listener lays it out (``/dashboard`` redirecting
to ``/dashboard/``, ``/dashboard/{asset}``, ``/dashboard/data.json``). The fake daemon has two apps whose series grow
by one point per poll, and strings with markup in them where the page must show text.
"""

from __future__ import annotations

import datetime as dt
import math
import pathlib
import re
import struct
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
from aiohttp import web

from pushgres.admin import dashboard

from ..support.chromium import Chromium, artifact_path

START = 1764650000.0
INTERVAL_S = 5.0
HISTORY_POINTS = 60
WINDOW_S = 15 * 60
MAX_POINTS = int(WINDOW_S / INTERVAL_S)

HTML_APP = 'android <b class="injected">bold</b><img src="http://example.invalid/x.png">'
HTML_REASON = "<script>window.pwned = 1</script>"
HTML_PROBLEM = "<i>quota</i> exhausted for project <u>demo</u>"
HTML_HINT = '<a href="http://example.invalid/">fix</a> the server key'


class FakeDaemon:
    """``data.json`` as the admin listener writes it, one step further at each request."""

    def __init__(self) -> None:
        self.polls = 0

    def snapshot(self) -> dict[str, Any]:
        self.polls += 1
        step = HISTORY_POINTS + self.polls
        now = START + step * INTERVAL_S
        first = max(0, step - MAX_POINTS + 1)
        times = [START + i * INTERVAL_S for i in range(first, step + 1)]
        ios_rate = [[t, round(1200 + 300 * math.sin(t / 35), 1)] for t in times]
        android_rate = [[t, round(500 + 180 * math.cos(t / 25), 1)] for t in times]
        return {
            "version": "0.1.0",
            "now": now,
            "started_at": START - 3725.0,
            "state": "running",
            "ready": True,
            "not_ready": {
                "database": None,
                "apps": {HTML_APP: "cannot connect to fcm.googleapis.com:443: refused"},
            },
            "interval_s": INTERVAL_S,
            "apps": [
                {
                    "name": "ios",
                    "platform": "apns",
                    "sent_per_s": ios_rate,
                    "outcomes": {
                        "sent": 120_000 + 6000 * self.polls,
                        "failed": 2,
                        "token_invalid": 5 + self.polls,
                        "expired": 0,
                    },
                    "reasons": {"BadDeviceToken": 3 + self.polls, "Unregistered": 2},
                    "dead_token_rate": 0.04,
                    "retried": 7,
                    "queue": {
                        "depth": 10_000 + 37 * self.polls,
                        "ready": 9_000 + 30 * self.polls,
                        "oldest_ready_age_s": 1.2,
                        "sampled_at": now - 2.0,
                    },
                    "in_flight": 640 + self.polls,
                    "connections": {
                        "open": 2,
                        "stream_limit": 1000,
                        "goaways": 0,
                        "reconnects": 1,
                    },
                    "credential": {
                        "kind": "certificate",
                        "expires_at": now + 27.2 * 86400,
                        "days_left": 27.2,
                    },
                    "problem": None,
                    "alerts": [
                        "tokens of app ios look like sandbox tokens sent to production: "
                        "check `environment`"
                    ],
                },
                {
                    "name": HTML_APP,
                    "platform": "fcm",
                    "sent_per_s": android_rate,
                    "outcomes": {"sent": 40_000, "failed": 130, "token_invalid": 0, "expired": 4},
                    "reasons": {HTML_REASON: 100, "UNREGISTERED": 30},
                    "dead_token_rate": None,
                    "retried": 0,
                    "queue": {
                        "depth": 250,
                        "ready": 250,
                        "oldest_ready_age_s": 95.0,
                        "sampled_at": now - 1.0,
                    },
                    "in_flight": 0,
                    "connections": {
                        "open": 0,
                        "stream_limit": 100,
                        "goaways": 3,
                        "reconnects": 4,
                    },
                    "credential": {
                        "kind": "service_account",
                        "expires_at": now + 3.5 * 86400,
                        "days_left": 3.5,
                    },
                    "problem": HTML_PROBLEM,
                    "alerts": [],
                },
            ],
            "config_errors": [
                {
                    "at": now - 65.0,
                    "app": HTML_APP,
                    "reason": "THIRD_PARTY_AUTH_ERROR",
                    "count": 12,
                    "hint": HTML_HINT,
                },
                {
                    "at": now - 600.0,
                    "app": "ios",
                    "reason": "BadCertificateEnvironment",
                    "count": 3,
                    "hint": "the certificate is for the sandbox; set environment = sandbox",
                },
            ],
        }


@dataclass
class Served:
    base: str
    daemon: FakeDaemon
    runner: web.AppRunner
    port: int

    async def stop(self) -> None:
        await self.runner.cleanup()

    async def restart(self) -> None:
        self.runner = await _start(_app(self.daemon), self.port)


def _app(daemon: FakeDaemon) -> web.Application:
    async def page(request: web.Request) -> web.Response:
        return web.Response(body=dashboard.page(), content_type="text/html", charset="utf-8")

    async def data(request: web.Request) -> web.Response:
        return web.json_response(daemon.snapshot(), headers={"Cache-Control": "no-store"})

    async def asset(request: web.Request) -> web.Response:
        found = dashboard.asset(request.match_info["name"])
        if found is None:
            raise web.HTTPNotFound()
        body, content_type = found
        return web.Response(body=body, headers={"Content-Type": content_type})

    async def to_page(request: web.Request) -> web.Response:
        raise web.HTTPFound("/dashboard/")

    app = web.Application()
    app.router.add_get("/dashboard", to_page)
    app.router.add_get("/dashboard/", page)
    app.router.add_get("/dashboard/data.json", data)
    app.router.add_get("/dashboard/{name}", asset)
    return app


async def _start(app: web.Application, port: int = 0) -> web.AppRunner:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port, reuse_address=True).start()
    return runner


@pytest.fixture
async def served() -> AsyncIterator[Served]:
    daemon = FakeDaemon()
    runner = await _start(_app(daemon))
    port = runner.addresses[0][1]
    served = Served(f"http://127.0.0.1:{port}", daemon, runner, port)
    try:
        yield served
    finally:
        await served.runner.cleanup()


# One evaluation, so the DOM and the JSON it was drawn from are read in the same instant.
SNAPSHOT = """(() => {
  const d = window.pushgresDashboard;
  const cards = [...document.querySelectorAll('.app-card')].map((card) => {
    const text = {}, tone = {};
    for (const node of card.querySelectorAll('[data-field]')) {
      const key = node.dataset.field;
      if (key in text) { text[key] += '\\n' + node.textContent; continue; }
      text[key] = node.textContent;
      const tile = node.closest('.tile');
      tone[key] = tile ? tile.className : '';
    }
    return {app: card.dataset.app, name: card.querySelector('.app-name').textContent, text, tone};
  });
  return {
    updates: d.updates, data: d.lastData, chart: {...d.charts.sendRate}, cards,
    version: document.getElementById('version').textContent,
    state: document.getElementById('state').textContent,
    ready: document.getElementById('ready').textContent,
    uptime: document.getElementById('uptime').textContent,
    updated: document.getElementById('updated').textContent,
    readiness: document.getElementById('readiness').textContent,
    configErrors: [...document.querySelectorAll('.config-error')].map((e) => e.textContent),
    legend: document.getElementById('legend').textContent,
  };
})()"""

# Pixels of the chart canvas that are painted at all, and those near each series' colour.
PIXELS = """(() => {
  const canvas = document.getElementById('send-rate');
  const {data} = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height);
  const colors = Object.entries(window.pushgresDashboard.charts.sendRate.colors).map(
    ([name, hex]) => [name, [1, 3, 5].map((i) => parseInt(hex.slice(i, i + 2), 16))]);
  const near = Object.fromEntries(colors.map(([name]) => [name, 0]));
  let painted = 0;
  for (let i = 0; i < data.length; i += 4) {
    if (data[i + 3] === 0) continue;
    painted += 1;
    if (data[i + 3] < 200) continue;
    for (const [name, [r, g, b]] of colors) {
      if (Math.abs(data[i] - r) + Math.abs(data[i + 1] - g) + Math.abs(data[i + 2] - b) < 40) {
        near[name] += 1;
      }
    }
  }
  return {painted, near, width: canvas.width, height: canvas.height};
})()"""


def _percent(rate: float | None) -> str:
    if rate is None:
        return "\u2013"
    if rate == 0:
        return "0%"
    percent = rate * 100
    return f"{percent:.2f}%" if percent < 1 else f"{percent:.1f}%"


def _points_in_window(data: dict[str, Any]) -> tuple[int, int]:
    t0, t1 = data["now"] - WINDOW_S, data["now"] + data["interval_s"]
    counts = [sum(1 for t, _ in app["sent_per_s"] if t0 <= t <= t1) for app in data["apps"]]
    return sum(counts), sum(1 for c in counts if c)


def _png_size(path: pathlib.Path) -> tuple[int, int]:
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    assert head[12:16] == b"IHDR"
    width, height = struct.unpack(">II", head[16:24])
    return width, height


async def _open(chromium: Chromium, served: Served) -> None:
    await chromium.navigate(f"{served.base}/dashboard")
    await chromium.wait_for("document.body.dataset.ready === '1'")


async def test_page_draws_live_data_and_matches_it(chromium: Chromium, served: Served) -> None:
    await _open(chromium, served)
    first = await chromium.evaluate(SNAPSHOT)
    await chromium.wait_for(f"window.pushgresDashboard.updates >= {first['updates'] + 2}")
    shot = await chromium.evaluate(SNAPSHOT)
    data = shot["data"]

    # the chart drew every point of both apps in the window, and more than at the first poll
    assert (shot["chart"]["points"], shot["chart"]["series"]) == _points_in_window(data)
    assert shot["chart"]["series"] == 2
    assert shot["chart"]["points"] > first["chart"]["points"]
    pixels = await chromium.evaluate(PIXELS)
    assert pixels["painted"] > 2000, pixels
    assert all(count > 150 for count in pixels["near"].values()), pixels
    assert set(pixels["near"]) == {"ios", HTML_APP}

    assert shot["version"] == "v0.1.0"
    assert shot["updated"].startswith("updated ")
    assert (shot["state"], shot["ready"]) == ("running", "ready")
    up_s = int(data["now"] - data["started_at"])
    assert shot["uptime"] == f"{up_s // 3600}h {up_s % 3600 // 60:02d}m"

    ios, android = shot["cards"]
    ios_data, android_data = data["apps"]
    assert ios["app"] == "ios"
    assert ios["text"]["queue-depth"] == f"{ios_data['queue']['depth']:,}"
    assert ios["text"]["queue-ready"] == f"{ios_data['queue']['ready']:,}"
    assert ios["text"]["in-flight"] == f"{ios_data['in_flight']:,}"
    assert ios["text"]["outcome-sent"] == f"{ios_data['outcomes']['sent']:,}"
    assert ios["text"]["outcome-token_invalid"] == str(ios_data["outcomes"]["token_invalid"])
    assert ios["text"]["dead-token-rate"] == _percent(ios_data["dead_token_rate"]) == "4.0%"
    assert ios["text"]["connections"] == "2"
    assert (ios["text"]["reconnects"], ios["text"]["goaways"]) == ("1", "0 GOAWAYs")
    assert ios["text"]["send-rate"] == f"{math.floor(ios_data['sent_per_s'][-1][1] + 0.5):,}"
    assert ios["text"]["credential"] == "27 days left"
    assert "warn" in ios["tone"]["credential"].split()
    expires = dt.datetime.fromtimestamp(ios_data["credential"]["expires_at"], dt.UTC)
    assert ios["text"]["expires"] == f"until {expires:%Y-%m-%d}"
    assert ios["text"]["alert"] == ios_data["alerts"][0]
    assert "problem" not in ios["text"]
    assert ios["text"]["reason"].splitlines()[0].startswith("BadDeviceToken")

    assert android["text"]["queue-depth"] == f"{android_data['queue']['depth']:,}"
    assert android["text"]["outcome-failed"] == f"{android_data['outcomes']['failed']:,}"
    assert android["text"]["dead-token-rate"] == "\u2013"
    assert android["text"]["credential"] == "3 days left"
    assert "danger" in android["tone"]["credential"].split()
    assert "warn" in android["tone"]["oldest-age"].split()
    assert android["text"]["oldest-age"] == "1m 35s"
    assert (android["text"]["reconnects"], android["text"]["goaways"]) == ("4", "3 GOAWAYs")
    assert f"\u00d7{data['config_errors'][0]['count']}" in shot["configErrors"][0]

    # markup in daemon strings is shown as text, never parsed
    assert android["app"] == android["name"] == HTML_APP
    assert android["text"]["problem"] == HTML_PROBLEM
    assert android["text"]["reason"].splitlines()[0].startswith(HTML_REASON)
    assert HTML_HINT in shot["configErrors"][0]
    assert HTML_APP in shot["readiness"] and HTML_APP in shot["legend"]
    injected = await chromium.evaluate(
        "[document.querySelectorAll('img, a, i, u, b.injected').length,"
        " document.scripts.length, typeof window.pwned]"
    )
    assert injected == [0, 1, "undefined"]

    # only the test server was asked for anything, and the page logged no error
    assert chromium.requests
    outside = [url for url in chromium.requests if not url.startswith(served.base + "/")]
    assert outside == []
    assert chromium.console_errors == []

    path = await chromium.screenshot(artifact_path("dashboard-unit.png"))
    assert _png_size(path) == (1280, 800)


async def test_page_marks_stale_data_and_recovers(chromium: Chromium, served: Served) -> None:
    await _open(chromium, served)
    before = await chromium.evaluate(SNAPSHOT)
    await served.stop()
    await chromium.wait_for("document.body.dataset.stale === '1'", timeout_s=15)
    stale = await chromium.evaluate(SNAPSHOT)
    banner = await chromium.evaluate(
        "[document.getElementById('banner').hidden, document.getElementById('banner').textContent,"
        " document.getElementById('link-text').textContent]"
    )
    assert banner[0] is False
    assert banner[1].startswith("The daemon is not answering")
    assert "cannot connect" in banner[1]
    assert "Showing its data of" in banner[1]
    assert banner[2] == "stale"
    # the last data stays on the page
    assert stale["updates"] >= before["updates"]
    assert stale["data"] is not None and len(stale["cards"]) == 2
    assert stale["cards"][0]["text"]["queue-depth"] == (
        f"{stale['data']['apps'][0]['queue']['depth']:,}"
    )
    assert stale["chart"]["series"] == 2
    await chromium.screenshot(artifact_path("dashboard-unit-stale.png"))
    # the failed polls are the only errors the page reports
    assert all(
        re.match(r"log\.network: .*ERR_CONNECTION_REFUSED", e) for e in chromium.console_errors
    ), chromium.console_errors

    updates = stale["updates"]
    await served.restart()
    await chromium.wait_for("document.body.dataset.stale === '0'", timeout_s=15)
    assert await chromium.evaluate("window.pushgresDashboard.updates") > updates
    assert await chromium.evaluate("document.getElementById('banner').hidden") is True


def test_assets_are_served_by_name_only() -> None:
    html = dashboard.page()
    assert html.startswith(b"<!doctype html>")
    assert b'src="dashboard.js"' in html
    assert b'href="dashboard.css"' in html
    script = dashboard.asset("dashboard.js")
    style = dashboard.asset("dashboard.css")
    assert script is not None and script[1].startswith("text/javascript")
    assert style is not None and style[1].startswith("text/css")
    for name in ("dashboard.html", "../dashboard.py", "", "data.json", "static/dashboard.js"):
        assert dashboard.asset(name) is None


def test_static_files_reach_no_other_host_and_build_no_markup() -> None:
    files = {
        "dashboard.html": dashboard.page(),
        **{name: content for name, (content, _) in _assets().items()},
    }
    for name, content in files.items():
        text = content.decode()
        assert not re.search(r"(https?:)?//[\w.-]+\.\w", text), name
        assert "@import" not in text and "@font-face" not in text, name
    script = files["dashboard.js"].decode()
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
        assert sink not in script, sink


def _assets() -> dict[str, tuple[bytes, str]]:
    found = {}
    for name in dashboard.ASSET_TYPES:
        asset = dashboard.asset(name)
        assert asset is not None
        found[name] = asset
    return found
