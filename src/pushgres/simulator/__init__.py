"""Local APNs and FCM simulators, for tests, the demo and benchmarks (protocol.md section D).

::

    from pushgres.simulator import Simulators, devkit

    setup = devkit.make_dev_setup(tmp_dir)          # CA, server cert, .p8 key, service account
    async with Simulators(setup) as sims:            # 127.0.0.1, ephemeral ports
        sims.apns_production_port, sims.apns_sandbox_port, sims.fcm_port
        sims.oauth_url, sims.control_url, sims.ca_file
        sims.apns.patch({"latency": {"dist": "fixed", "ms": 50}})   # fault knobs
        sims.apns.script({token: ["503:ServiceUnavailable", "200"]})
        sims.accepted_counts()  # {"apns": {token: n}, "apns_ids": {id: n}, "fcm": {token: n}}

Both simulators are HTTP/2 over TLS built on ``h2`` (server side), independent of the daemon's
client; the OAuth endpoint and the control API are HTTP/1.1 (aiohttp). ``pushgres simulate``
runs them as a process (see :mod:`pushgres.simulator.cli`).
"""

from __future__ import annotations

import asyncio
import ssl
from typing import Any

from aiohttp import web

from . import devkit
from .apns import ApnsSimulator
from .fcm import FcmSimulator, OAuthEndpoint
from .server import H2ServerProtocol, Service, make_server_ssl

__all__ = ["ApnsSimulator", "FcmSimulator", "OAuthEndpoint", "Simulators", "devkit"]


class Simulators:
    """APNs (production and sandbox), FCM, OAuth and the control API, on 127.0.0.1."""

    def __init__(
        self,
        setup: devkit.DevSetup,
        *,
        apns_production_port: int = 0,
        apns_sandbox_port: int = 0,
        fcm_port: int = 0,
        control_port: int = 0,
        seed: int = 1,
    ) -> None:
        self.setup = setup
        self.ca_file = setup.ca_file
        teams = {
            setup.apns_team_id: {
                "topics": [setup.apns_topic],
                "keys": {setup.apns_key_id: {"public_key_pem": setup.apns_public_key_pem}},
            }
        }
        self.apns = ApnsSimulator(environment="production", teams=teams, seed=seed)
        self.apns_sandbox = ApnsSimulator(environment="sandbox", teams=teams, seed=seed + 1)
        self.oauth = OAuthEndpoint(
            token_uri=f"https://127.0.0.1:{setup.oauth_port}/token",
            accounts={
                setup.client_email: {
                    "public_key_pem": setup.sa_public_key_pem,
                    "private_key_id": setup.private_key_id,
                }
            },
        )
        self.fcm = FcmSimulator(
            oauth=self.oauth,
            projects={
                setup.fcm_project: {
                    "number": "123456789012",
                    "service_accounts": [setup.client_email],
                }
            },
            seed=seed + 2,
        )
        self._ports = {
            "apns": apns_production_port,
            "apns_sandbox": apns_sandbox_port,
            "fcm": fcm_port,
            "control": control_port,
        }
        self._servers: list[asyncio.Server] = []
        self._runners: list[web.AppRunner] = []
        self.apns_production_port = self.apns_sandbox_port = self.fcm_port = 0
        self.control_port = 0

    @property
    def oauth_url(self) -> str:
        return self.oauth.token_uri

    @property
    def control_url(self) -> str:
        return f"http://127.0.0.1:{self.control_port}"

    async def __aenter__(self) -> Simulators:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _h2(self, service: Service, port: int, ctx: ssl.SSLContext) -> int:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(
            lambda: H2ServerProtocol(service), "127.0.0.1", port, ssl=ctx, backlog=256
        )
        self._servers.append(server)
        return int(server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        s = self.setup
        h2_ctx = make_server_ssl(s.server_cert_file, s.server_key_file, alpn=["h2"])
        apns_ctx = make_server_ssl(
            s.server_cert_file, s.server_key_file, alpn=["h2"], client_ca_file=s.ca_file
        )
        self.apns_production_port = await self._h2(self.apns, self._ports["apns"], apns_ctx)
        self.apns_sandbox_port = await self._h2(
            self.apns_sandbox, self._ports["apns_sandbox"], apns_ctx
        )
        self.fcm_port = await self._h2(self.fcm, self._ports["fcm"], h2_ctx)
        oauth_app = web.Application()
        oauth_app.router.add_post("/token", self.oauth.handle)
        http_ctx = make_server_ssl(s.server_cert_file, s.server_key_file, alpn=["http/1.1"])
        await self._site(oauth_app, s.oauth_port, http_ctx)
        self.control_port = await self._site(self._control_app(), self._ports["control"], None)

    async def _site(self, app: web.Application, port: int, ctx: ssl.SSLContext | None) -> int:
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", port, ssl_context=ctx)
        await site.start()
        self._runners.append(runner)
        server = site._server
        assert server is not None
        return int(server.sockets[0].getsockname()[1])  # type: ignore[attr-defined]

    async def stop(self) -> None:
        for service in (self.apns, self.apns_sandbox, self.fcm):
            for conn in list(service.connections.values()):
                conn.protocol.abort()
        for server in self._servers:
            server.close()
            await server.wait_closed()
        for runner in self._runners:
            await runner.cleanup()
        self._servers.clear()
        self._runners.clear()

    # -- observation and control ------------------------------------------------------------

    def accepted_counts(self) -> dict[str, dict[str, int]]:
        apns = dict(self.apns.accepted)
        for token, n in self.apns_sandbox.accepted.items():
            apns[token] = apns.get(token, 0) + n
        ids = dict(self.apns.accepted_ids)
        for apns_id, n in self.apns_sandbox.accepted_ids.items():
            ids[apns_id] = ids.get(apns_id, 0) + n
        return {"apns": apns, "apns_ids": ids, "fcm": dict(self.fcm.accepted)}

    def metrics(self) -> dict[str, Any]:
        return {
            "apns": self.apns.metrics(),
            "apns_sandbox": self.apns_sandbox.metrics(),
            "fcm": self.fcm.metrics(),
        }

    def state(self) -> dict[str, Any]:
        def conns(service: Service) -> list[dict[str, Any]]:
            return [
                {
                    "id": c.id,
                    "streams": c.streams_seen,
                    "open": len(c.protocol.open_streams),
                    "max_concurrent_seen": c.max_open_seen,
                    "team": c.state.get("team"),
                    "key_id": c.state.get("kid"),
                }
                for c in service.connections.values()
            ]

        return {
            "apns": {"knobs": self.apns.knobs, "connections": conns(self.apns)},
            "apns_sandbox": {
                "knobs": self.apns_sandbox.knobs,
                "connections": conns(self.apns_sandbox),
            },
            "fcm": {"knobs": self.fcm.knobs, "connections": conns(self.fcm)},
        }

    def _service(self, name: str) -> ApnsSimulator | FcmSimulator:
        services: dict[str, ApnsSimulator | FcmSimulator] = {
            "apns": self.apns,
            "apns_sandbox": self.apns_sandbox,
            "fcm": self.fcm,
        }
        return services[name]

    def reset(self) -> None:
        for name in ("apns", "apns_sandbox", "fcm"):
            self._service(name).reset()

    def _control_app(self) -> web.Application:
        app = web.Application()

        async def accepted(_: web.Request) -> web.Response:
            return web.json_response(self.accepted_counts())

        async def metrics(_: web.Request) -> web.Response:
            return web.json_response(self.metrics())

        async def state(_: web.Request) -> web.Response:
            return web.json_response(self.state())

        async def config(request: web.Request) -> web.Response:
            body = await request.json()
            try:
                for name, knobs in body.items():
                    self._service(name).patch(knobs)
            except KeyError as exc:
                return web.json_response({"error": str(exc)}, status=400)
            return web.json_response({"ok": True})

        async def script(request: web.Request) -> web.Response:
            body = await request.json()
            for name, scripts in body.items():
                self._service(name).script(scripts)
            return web.json_response({"ok": True})

        async def tokens(request: web.Request) -> web.Response:
            body = await request.json()
            for name, registered in body.items():
                self._service(name).register(registered)
            return web.json_response({"ok": True})

        async def clock(request: web.Request) -> web.Response:
            offset = float((await request.json())["offset_s"])
            for name in ("apns", "apns_sandbox", "fcm"):
                self._service(name).knobs["clock_offset_s"] = offset
            self.oauth.clock_offset_s = offset
            return web.json_response({"ok": True})

        async def goaway(request: web.Request) -> web.Response:
            body = await request.json()
            service = self._service(body.get("service", "apns"))
            for conn in list(service.connections.values()):
                conn.protocol.goaway(
                    int(body.get("error_code", 0)), str(body.get("reason", "")).encode()
                )
            return web.json_response({"ok": True})

        async def drop(request: web.Request) -> web.Response:
            body = await request.json()
            service = self._service(body.get("service", "apns"))
            for conn in list(service.connections.values()):
                conn.protocol.abort()
            return web.json_response({"ok": True})

        async def settings(request: web.Request) -> web.Response:
            body = await request.json()
            service = self._service(body.get("service", "apns"))
            for conn in list(service.connections.values()):
                conn.protocol.set_max_streams(int(body["max_concurrent_streams"]))
            return web.json_response({"ok": True})

        async def reset(_: web.Request) -> web.Response:
            self.reset()
            return web.json_response({"ok": True})

        app.router.add_get("/_sim/accepted", accepted)
        app.router.add_get("/_sim/metrics", metrics)
        app.router.add_get("/_sim/state", state)
        app.router.add_post("/_sim/config", config)
        app.router.add_post("/_sim/script", script)
        app.router.add_post("/_sim/tokens", tokens)
        app.router.add_post("/_sim/clock", clock)
        app.router.add_post("/_sim/goaway", goaway)
        app.router.add_post("/_sim/drop", drop)
        app.router.add_post("/_sim/settings", settings)
        app.router.add_post("/_sim/reset", reset)
        return app
