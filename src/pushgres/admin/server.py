"""The admin HTTP listener: ``/metrics``, ``/healthz``, ``/readyz`` and the live dashboard.

:class:`AdminServer` serves, on the ``[admin] listen`` address (loopback unless configured
otherwise), from what the daemon reports (:class:`~pushgres.observability.metrics.StateSource`)
and what the metrics observer counted:

* ``GET /metrics`` -- Prometheus exposition (``prometheus_client``'s aiohttp handler over a
  registry of its own: pushgres's collector and the process collector);
* ``GET /healthz`` -- 200 while the process and its event loop run, draining included;
* ``GET /readyz`` -- 200 only when the database answers and every app can send; else 503 with
  a JSON body naming what is not ready;
* ``GET /dashboard/`` -- the page (``admin/dashboard.py``) and ``/dashboard/data.json``, the
  live data it polls.

Nothing served carries a credential, a payload or a whole device token: the data are counts,
reason codes, connection states and the problems the senders and the database report, whose
texts name hosts and reasons only.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Final

from aiohttp import web
from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector
from prometheus_client.aiohttp import make_aiohttp_handler

from .. import __version__, codec
from ..exceptions import ConfigError
from ..observability.metrics import Collector, History, MetricsObserver, StateSource
from . import dashboard

__all__ = ["AdminServer", "dashboard_data"]

logger = logging.getLogger(__name__)

_SECURITY_HEADERS: Final = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
_PAGE_HEADERS: Final = {
    **_SECURITY_HEADERS,
    # The page loads only its own script, style and data.
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
}


def dashboard_data(
    source: StateSource, metrics: MetricsObserver, history: History, *, now: float
) -> dict[str, Any]:
    """The dashboard's live data (the schema its script reads)."""
    apps = []
    samples = source.queue_samples()
    not_ready: dict[str, str | None] = {}
    for app in source.app_states():
        counters = metrics.apps.get(app.name)
        outcomes: dict[str, int] = {}
        reasons: dict[str, int] = {}
        retried = 0
        if counters is not None:
            for (status, reason), n in counters.outcomes.items():
                status = str(status)
                outcomes[status] = outcomes.get(status, 0) + n
                if reason:
                    reasons[reason] = reasons.get(reason, 0) + n
            retried = sum(counters.retries.values())
        sample = samples.get(app.name)
        expires = app.credential_expires_at
        not_ready[app.name] = app.problem
        apps.append(
            {
                "name": app.name,
                "platform": app.platform,
                "sent_per_s": history.rates(app.name),
                "outcomes": outcomes,
                "reasons": dict(sorted(reasons.items(), key=lambda kv: -kv[1])),
                "dead_token_rate": history.dead_token_rate(app.name),
                "retried": retried,
                "queue": None
                if sample is None
                else {
                    "depth": sample.depth,
                    "ready": sample.ready,
                    "oldest_ready_age_s": round(sample.oldest_ready_age_s, 3),
                    "sampled_at": sample.sampled_at,
                },
                "in_flight": app.in_flight,
                "connections": {
                    "open": app.connection.get("connections", 0),
                    "stream_limit": app.connection.get("stream_limit", 0),
                    "goaways": app.connection.get("goaways", 0),
                    "reconnects": app.connection.get("reconnects", 0),
                },
                "credential": {
                    "kind": app.credential_kind,
                    "expires_at": expires,
                    "days_left": None if expires is None else round((expires - now) / 86400, 1),
                },
                "problem": app.problem,
                "alerts": [message for _, message in app.alerts],
            }
        )
    database = source.database_problem()
    return {
        "version": __version__,
        "now": now,
        "started_at": source.started_at,
        "state": source.phase,
        "ready": source.phase == "running" and database is None and not any(not_ready.values()),
        "not_ready": {"database": database, "apps": not_ready},
        "interval_s": history.interval_s,
        "apps": apps,
        "config_errors": [
            {"at": e.at, "app": e.app, "reason": e.reason, "count": e.count, "hint": e.hint}
            for e in reversed(metrics.config_errors)
        ],
    }


class AdminServer:
    """The listener; ``start()`` binds it, ``close()`` stops it."""

    def __init__(
        self,
        listen: tuple[str, int],
        *,
        source: StateSource,
        metrics: MetricsObserver,
        history: History,
    ) -> None:
        self._listen = listen
        self._source = source
        self._metrics = metrics
        self._history = history
        self._runner: web.AppRunner | None = None
        self.address: tuple[str, int] | None = None
        """Where it listens, once started (the port the system chose for port 0)."""
        registry = CollectorRegistry(auto_describe=False)
        registry.register(Collector(metrics, source))
        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)
        GCCollector(registry=registry)
        self.registry = registry

    @property
    def url(self) -> str:
        assert self.address is not None, "not started"
        host, port = self.address
        return f"http://{f'[{host}]' if ':' in host else host}:{port}"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/metrics", make_aiohttp_handler(self.registry))
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/", self._to_dashboard)
        app.router.add_get("/dashboard", self._to_dashboard)
        app.router.add_get("/dashboard/", self._page)
        app.router.add_get("/dashboard/data.json", self._data)
        app.router.add_get("/dashboard/{name}", self._asset)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        host, port = self._listen
        site = web.TCPSite(runner, host, port, reuse_address=True)
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            raise ConfigError(
                f"admin.listen {host}:{port} cannot be bound: {exc.strerror or exc}"
            ) from None
        self._runner = runner
        server = site._server
        sockets = getattr(server, "sockets", None) or ()
        bound = sockets[0].getsockname() if sockets else (host, port)
        self.address = (str(bound[0]), int(bound[1]))
        logger.info(
            "admin listener on %s (metrics /metrics, dashboard /dashboard/)",
            self.url,
            extra={"action": "admin_listen"},
        )

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # -- handlers --------------------------------------------------------------------------

    @staticmethod
    def _json(body: Any, status: int = 200) -> web.Response:
        return web.Response(
            body=codec.dumps(body),
            status=status,
            content_type="application/json",
            headers=_SECURITY_HEADERS,
        )

    async def _healthz(self, request: web.Request) -> web.Response:
        source = self._source
        return self._json(
            {
                "status": "ok",
                "state": source.phase,
                "uptime_s": round(time.time() - source.started_at, 3),
            }
        )

    async def _readyz(self, request: web.Request) -> web.Response:
        source = self._source
        database = source.database_problem()
        apps = {app.name: app.problem for app in source.app_states()}
        ready = source.phase == "running" and database is None and not any(apps.values())
        body = {
            "ready": ready,
            "state": source.phase,
            "database": database,
            "apps": apps,
        }
        return self._json(body, 200 if ready else 503)

    async def _to_dashboard(self, request: web.Request) -> web.Response:
        raise web.HTTPFound("/dashboard/")

    async def _page(self, request: web.Request) -> web.Response:
        return web.Response(
            body=dashboard.page(), content_type="text/html", charset="utf-8", headers=_PAGE_HEADERS
        )

    async def _asset(self, request: web.Request) -> web.Response:
        found = dashboard.asset(request.match_info["name"])
        if found is None:
            raise web.HTTPNotFound()
        body, content_type = found
        mime, _, _ = content_type.partition(";")
        return web.Response(body=body, content_type=mime, charset="utf-8", headers=_PAGE_HEADERS)

    async def _data(self, request: web.Request) -> web.Response:
        return self._json(
            dashboard_data(self._source, self._metrics, self._history, now=time.time())
        )
