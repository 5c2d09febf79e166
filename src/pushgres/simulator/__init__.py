"""Local APNs and FCM simulators, for tests, the demo and benchmarks.

::

    from pushgres.simulator import Simulators, devkit

    setup = devkit.make_dev_setup(tmp_dir)          # CA, server cert, .p8 key, service account
    async with Simulators(setup) as sims:            # or Simulators(setup.config)
        sims.apns_production_port, sims.apns_sandbox_port, sims.fcm_port
        sims.oauth_url, sims.control_url, sims.ca_file
        sims.apns.patch({"latency": {"dist": "fixed", "ms": 50}})   # fault knobs
        sims.apns.script({token: ["503:ServiceUnavailable", "200"]})
        sims.accepted_counts()  # {"apns": {token: n}, "apns_ids": {id: n}, "fcm": {token: n}}

Listeners, all on 127.0.0.1: APNs production and sandbox (HTTP/2 over TLS, token or
certificate auth), FCM (HTTP/2, and HTTP/1.1 by ALPN), the OAuth token endpoint (HTTPS; ALPN
``h2`` and ``http/1.1`` as Google's, ``POST /token`` served over both by the shared h2 server;
``sims.oauth`` is the endpoint, ``sims.oauth_listener`` its connections and counters) and the
control API (plain HTTP/1.1 JSON, aiohttp). ``sims.apns`` is the
production host, ``sims.apns_sandbox`` the sandbox host. The control API's routes and the
Python methods of :class:`Simulators` do the same things; in the control API the service name
``apns`` means both APNs hosts, ``apns_production``/``apns_sandbox`` one of them. ``pushgres
simulate`` runs everything as a process (:mod:`pushgres.simulator.cli`).
"""

from __future__ import annotations

import asyncio
import ssl
from typing import Any

import orjson
from aiohttp import web

from . import devkit
from .apns import ApnsSimulator
from .config import SimulatorConfig
from .fcm import FcmSimulator, OAuthEndpoint, OAuthListener
from .server import H2ServerProtocol, Service, make_server_ssl

__all__ = [
    "ApnsSimulator",
    "FcmSimulator",
    "OAuthEndpoint",
    "OAuthListener",
    "SimulatorConfig",
    "Simulators",
    "devkit",
]

_SERVICE_NAMES = ("apns", "apns_production", "apns_sandbox", "fcm")


class Simulators:
    """APNs (production and sandbox), FCM, OAuth and the control API, on 127.0.0.1.

    ``source`` is a :class:`devkit.DevSetup` (its ``config`` is used) or a
    :class:`SimulatorConfig`. Port arguments override the configuration's (0: any free port;
    the OAuth port is fixed by the configuration because the service-account JSON names it).
    """

    def __init__(
        self,
        source: devkit.DevSetup | SimulatorConfig,
        *,
        apns_production_port: int | None = None,
        apns_sandbox_port: int | None = None,
        fcm_port: int | None = None,
        control_port: int | None = None,
        seed: int | None = None,
    ) -> None:
        if isinstance(source, devkit.DevSetup):
            self.setup: devkit.DevSetup | None = source
            config = source.config
        else:
            self.setup = None
            config = source
        self.config = config
        self.ca_file = config.ca_file
        base_seed = config.seed if seed is None else seed
        self.apns = ApnsSimulator(
            environment="production",
            teams=config.teams,
            certificates=config.certificates,
            seed=base_seed,
        )
        self.apns_sandbox = ApnsSimulator(
            environment="sandbox",
            teams=config.teams,
            certificates=config.certificates,
            seed=base_seed + 1,
        )
        self.oauth = OAuthEndpoint(
            token_uri=f"https://127.0.0.1:{config.oauth_port}/token",
            accounts=config.service_accounts,
        )
        self.oauth_listener = OAuthListener(self.oauth, seed=base_seed + 3)
        self.fcm = FcmSimulator(oauth=self.oauth, projects=config.projects, seed=base_seed + 2)
        self.apns.patch(config.apns_knobs)
        self.apns_sandbox.patch({**config.apns_knobs, **config.apns_sandbox_knobs})
        self.fcm.patch(config.fcm_knobs)
        self.oauth.patch(config.oauth_knobs)
        self.apns.register(config.apns_tokens)
        self.apns_sandbox.register(config.apns_tokens)
        self.fcm.register(config.fcm_tokens)
        self._ports = {
            "apns": config.apns_production_port
            if apns_production_port is None
            else apns_production_port,
            "apns_sandbox": config.apns_sandbox_port
            if apns_sandbox_port is None
            else apns_sandbox_port,
            "fcm": config.fcm_port if fcm_port is None else fcm_port,
            "oauth": config.oauth_port,
            "control": config.control_port if control_port is None else control_port,
        }
        self._servers: list[asyncio.Server] = []
        self._runners: list[web.AppRunner] = []
        self.apns_production_port = self.apns_sandbox_port = self.fcm_port = 0
        self.oauth_port = self.control_port = 0

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

    # -- lifecycle ----------------------------------------------------------------------

    async def _h2(self, service: Service, port: int, ctx: ssl.SSLContext) -> int:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(
            lambda: H2ServerProtocol(service), "127.0.0.1", port, ssl=ctx, backlog=1024
        )
        self._servers.append(server)
        return int(server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        """Bind every listener; on failure, close what was opened and re-raise."""
        c = self.config
        try:
            apns_ctx = make_server_ssl(
                c.server_cert_file, c.server_key_file, alpn=["h2"], client_ca_file=c.ca_file
            )
            # Google's hosts (FCM and the token endpoint) offer both; an h2-only client gets h2.
            google_ctx = make_server_ssl(
                c.server_cert_file, c.server_key_file, alpn=["h2", "http/1.1"]
            )
            self.apns_production_port = await self._h2(self.apns, self._ports["apns"], apns_ctx)
            self.apns_sandbox_port = await self._h2(
                self.apns_sandbox, self._ports["apns_sandbox"], apns_ctx
            )
            self.fcm_port = await self._h2(self.fcm, self._ports["fcm"], google_ctx)
            self.oauth_port = await self._h2(self.oauth_listener, self._ports["oauth"], google_ctx)
            self.oauth.token_uri = f"https://127.0.0.1:{self.oauth_port}/token"
            self.control_port = await self._site(self._control_app(), self._ports["control"], None)
        except BaseException:
            await self.stop()
            raise

    async def _site(self, app: web.Application, port: int, ctx: ssl.SSLContext | None) -> int:
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        self._runners.append(runner)
        site = web.TCPSite(runner, "127.0.0.1", port, ssl_context=ctx)
        await site.start()
        for address in runner.addresses:
            return int(address[1])
        raise RuntimeError("the listener has no address")

    async def stop(self) -> None:
        for service in (*self._services(), self.oauth_listener):
            for conn in list(service.connections.values()):
                conn.protocol.abort()
        for server in self._servers:
            server.close()
        for server in self._servers:
            await server.wait_closed()
        for runner in self._runners:
            await runner.cleanup()
        self._servers.clear()
        self._runners.clear()

    # -- observation --------------------------------------------------------------------

    def _services(self) -> tuple[ApnsSimulator, ApnsSimulator, FcmSimulator]:
        return (self.apns, self.apns_sandbox, self.fcm)

    def accepted_counts(self) -> dict[str, dict[str, int]]:
        """Accepted (200, not validate-only) per device token and per ``apns-id``."""
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
            "oauth": {**self.oauth.metrics(), "listener": self.oauth_listener.metrics()},
        }

    def state(self) -> dict[str, Any]:
        def one(service: Service) -> dict[str, Any]:
            return {
                "knobs": service.knobs,
                "connections": service.connection_states(),
                "registered_tokens": len(service.registry),
                "scripts": {"tokens": len(service.scripts), "global": len(service.global_script)},
            }

        return {
            "ports": {
                "apns_production": self.apns_production_port,
                "apns_sandbox": self.apns_sandbox_port,
                "fcm": self.fcm_port,
                "oauth": self.oauth_port,
                "control": self.control_port,
            },
            "apns": one(self.apns),
            "apns_sandbox": one(self.apns_sandbox),
            "fcm": one(self.fcm),
            "oauth": {
                "knobs": self.oauth.knobs,
                "token_uri": self.oauth.token_uri,
                "audiences": self.oauth.audiences(),
                "connections": self.oauth_listener.connection_states(),
            },
        }

    def requests(self, service: str = "apns", since: int = 0) -> list[dict[str, Any]]:
        """The request log of one service (entries with ``seq`` > ``since``)."""
        out: list[dict[str, Any]] = []
        for one in self.services(service):
            out += one.requests_since(since)
        return out

    # -- control ------------------------------------------------------------------------

    def services(self, name: str) -> list[ApnsSimulator | FcmSimulator]:
        """``apns`` (both hosts), ``apns_production``, ``apns_sandbox``, ``fcm`` or ``all``."""
        table: dict[str, list[ApnsSimulator | FcmSimulator]] = {
            "apns": [self.apns, self.apns_sandbox],
            "apns_production": [self.apns],
            "apns_sandbox": [self.apns_sandbox],
            "fcm": [self.fcm],
            "all": [self.apns, self.apns_sandbox, self.fcm],
        }
        if name not in table:
            raise KeyError(f"unknown service {name!r}; known: {sorted(table)}")
        return table[name]

    def patch(self, knobs_by_service: dict[str, dict[str, Any]]) -> None:
        """Patch knobs: ``{"apns": {...}, "fcm": {...}, "oauth": {...}}``; all-or-nothing."""
        for name, knobs in knobs_by_service.items():
            if name == "oauth":
                unknown = set(knobs) - set(self.oauth.default_knobs) - {"revoke_all"}
            else:
                self.services(name)
                unknown = set(knobs) - set(self.services(name)[0].default_knobs)
            if unknown:
                raise KeyError(f"unknown {name} knob(s): {sorted(unknown)}")
        for name, knobs in knobs_by_service.items():
            if name == "oauth":
                self.oauth.patch(knobs)
            else:
                for service in self.services(name):
                    service.patch(knobs)

    def script(self, scripts_by_service: dict[str, dict[str, list[str]]]) -> None:
        for name, scripts in scripts_by_service.items():
            for service in self.services(name):
                service.script(scripts)

    def register_tokens(self, tokens_by_service: dict[str, dict[str, Any]]) -> None:
        for name, tokens in tokens_by_service.items():
            for service in self.services(name):
                service.register(tokens)

    def set_clock(self, *, offset_s: float | None = None, advance_s: float = 0.0) -> float:
        """Set (or advance) the clock offset of every simulator; returns the new offset."""
        offset = self.oauth.clock_offset_s if offset_s is None else float(offset_s)
        offset += float(advance_s)
        for service in self._services():
            service.knobs["clock_offset_s"] = offset
        self.oauth.clock_offset_s = offset
        return offset

    def goaway(self, service: str = "all", **kwargs: Any) -> int:
        """GOAWAY on one or all connections (``error_code``, ``reason``, ``last_stream_mode``,
        ``graceful``, ``connection_id``); returns how many connections got one."""
        return sum(one.goaway(**kwargs) for one in self.services(service))

    def drop(
        self, service: str = "all", *, mode: str = "fin", connection_id: int | None = None
    ) -> int:
        """Abruptly close connections (``fin``, or ``rst`` for a TCP reset)."""
        return sum(
            one.drop(mode=mode, connection_id=connection_id) for one in self.services(service)
        )

    def send_settings(
        self, service: str = "all", *, max_concurrent_streams: int, connection_id: int | None = None
    ) -> None:
        for one in self.services(service):
            one.set_max_streams(max_concurrent_streams, connection_id)

    def reset(self) -> None:
        """Clear state, counters, scripts, registries and logs; knobs back to the config's."""
        for service in self._services():
            service.reset()
        self.oauth_listener.reset()
        self.oauth.reset()
        self.apns.patch(self.config.apns_knobs)
        self.apns_sandbox.patch({**self.config.apns_knobs, **self.config.apns_sandbox_knobs})
        self.fcm.patch(self.config.fcm_knobs)
        self.oauth.patch(self.config.oauth_knobs)
        self.apns.register(self.config.apns_tokens)
        self.apns_sandbox.register(self.config.apns_tokens)
        self.fcm.register(self.config.fcm_tokens)

    def _control_app(self) -> web.Application:
        app = web.Application()

        def reply(data: Any, status: int = 200) -> web.Response:
            return web.Response(
                status=status, body=orjson.dumps(data), content_type="application/json"
            )

        async def body_of(request: web.Request) -> dict[str, Any]:
            raw = await request.read()
            data = orjson.loads(raw) if raw else {}
            if not isinstance(data, dict):
                raise ValueError("the body must be a JSON object")
            return data

        def route(action: Any) -> Any:
            async def handler(request: web.Request) -> web.Response:
                try:
                    data = await body_of(request) if request.method == "POST" else {}
                    return reply(action(data, request))
                except (KeyError, ValueError, TypeError) as exc:
                    return reply({"error": f"{type(exc).__name__}: {exc}"}, 400)

            return handler

        def requests(_: dict[str, Any], request: web.Request) -> Any:
            since = int(request.query.get("since", "0"))
            return self.requests(request.query.get("service", "apns"), since)

        def config(data: dict[str, Any], _: web.Request) -> Any:
            self.patch(data)
            return {"ok": True}

        def script(data: dict[str, Any], _: web.Request) -> Any:
            self.script(data)
            return {"ok": True}

        def tokens(data: dict[str, Any], _: web.Request) -> Any:
            self.register_tokens(data)
            return {"ok": True}

        def clock(data: dict[str, Any], _: web.Request) -> Any:
            offset = self.set_clock(
                offset_s=data.get("offset_s"), advance_s=float(data.get("advance_s", 0))
            )
            return {"ok": True, "offset_s": offset}

        def goaway(data: dict[str, Any], _: web.Request) -> Any:
            sent = self.goaway(
                str(data.get("service", "all")),
                error_code=int(data.get("error_code", 0)),
                reason=str(data.get("reason", "")),
                last_stream_mode=str(data.get("last_stream_mode", "exact")),
                graceful=bool(data.get("graceful", True)),
                connection_id=data.get("connection"),
            )
            return {"ok": True, "connections": sent}

        def drop(data: dict[str, Any], _: web.Request) -> Any:
            dropped = self.drop(
                str(data.get("service", "all")),
                mode=str(data.get("mode", "fin")),
                connection_id=data.get("connection"),
            )
            return {"ok": True, "connections": dropped}

        def settings(data: dict[str, Any], _: web.Request) -> Any:
            self.send_settings(
                str(data.get("service", "all")),
                max_concurrent_streams=int(data["max_concurrent_streams"]),
                connection_id=data.get("connection"),
            )
            return {"ok": True}

        def reset(_: dict[str, Any], __: web.Request) -> Any:
            self.reset()
            return {"ok": True}

        app.router.add_get("/_sim/accepted", route(lambda _d, _r: self.accepted_counts()))
        app.router.add_get("/_sim/metrics", route(lambda _d, _r: self.metrics()))
        app.router.add_get("/_sim/state", route(lambda _d, _r: self.state()))
        app.router.add_get("/_sim/requests", route(requests))
        app.router.add_post("/_sim/config", route(config))
        app.router.add_post("/_sim/script", route(script))
        app.router.add_post("/_sim/tokens", route(tokens))
        app.router.add_post("/_sim/clock", route(clock))
        app.router.add_post("/_sim/goaway", route(goaway))
        app.router.add_post("/_sim/drop", route(drop))
        app.router.add_post("/_sim/settings", route(settings))
        app.router.add_post("/_sim/reset", route(reset))
        return app
