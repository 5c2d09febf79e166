"""The daemon's chores beside the lanes: heartbeat, maintenance, and the unknown-app sweep.

:class:`Housekeeping` holds one loop per chore; the daemon runs each as a named task of its
TaskGroup. None of them stops the daemon on a database error: an outage is logged once by the
store, any other failure once per attempt, and the chore tries again on its next round.

* heartbeat — this daemon and its apps in ``pushgres.daemons`` every ``HEARTBEAT_S``, so other
  daemons on the database know which apps are served; the live daemons it reads back go to
  ``on_peers`` (the daemon splits each app's queue shards by them, ``pipeline/shards.py``);
* maintenance — result partitions ahead, old partitions, dedupe keys and daemon rows pruned;
* unknown-app sweep — rows of apps no live daemon serves are failed (``UnknownApp``) once they
  are older than ``daemon.unknown_app_grace_s``;
* queue vacuum — every ``QUEUE_VACUUM_CHECK_S``, once the queue holds
  ``daemon.queue_vacuum_dead_rows`` dead rows, or a tenth of its rows if that is more (every
  claimed row leaves one; :func:`vacuum_threshold`), ``VACUUM`` it:
  autovacuum visits a table at most once per ``autovacuum_naptime`` (a minute by default),
  and a fast drain leaves millions of dead rows meanwhile, which every claim's index scan
  steps over. ``SKIP_LOCKED`` makes it a no-op while autovacuum or another daemon vacuums it;
* uninstall probes — for each app that opted in (``uninstall_probe_after_days``), a silent
  push (:data:`PROBE_MESSAGE`: an APNs background push, an FCM data-only message, priority 5)
  to devices not seen for that long, once per ``uninstall_probe_every_days`` at most, at most
  ``uninstall_probe_per_minute`` a minute; a dead-token answer marks the device uninstalled.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import socket
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Final

from .config import DaemonConfig, ProbeConfig
from .db.store import Store
from .exceptions import StoreError
from .models import ResultRecord
from .pipeline.observer import Observer

__all__ = ["HEARTBEAT_LIVE_S", "HEARTBEAT_S", "Housekeeping", "vacuum_threshold"]

logger = logging.getLogger("pushgres.daemon")

MAINTENANCE_INTERVAL_S: Final = 600.0
HEARTBEAT_S: Final = 5.0
HEARTBEAT_LIVE_S: Final = 30.0  # a daemon silent for longer no longer serves its apps
UNKNOWN_APP_SWEEP_S: Final = 10.0
UNKNOWN_APP_SWEEP_LIMIT: Final = 1000
PROBE_INTERVAL_S: Final = 60.0
QUEUE_VACUUM_CHECK_S: Final = 2.0
QUEUE_VACUUM_SCALE: Final = 0.1  # of the rows queued, the dead rows that also trigger a vacuum
PROBE_MESSAGE: Final = '{"data": {"pushgres": "uninstall-probe"}}'
"""What an uninstall probe sends: data only, which each provider renders as a silent push."""


class Housekeeping:
    def __init__(
        self,
        store: Store,
        *,
        daemon_id: str,
        apps: Sequence[str],
        settings: DaemonConfig,
        observer: Observer,
        stale_days: Mapping[str, int] | None = None,
        probes: Mapping[str, ProbeConfig] | None = None,
        groups: Mapping[str, Sequence[str]] | None = None,
        categories: Mapping[str, bool] | None = None,
        on_peers: Callable[[Mapping[str, Sequence[str]]], None] | None = None,
    ) -> None:
        self._store = store
        self._on_peers = on_peers
        self._categories: dict[str, bool] = dict(categories or {})
        self._id = daemon_id
        self._apps = list(apps)
        self._stale_days: dict[str, int] = dict(stale_days or {})
        self._probes: dict[str, ProbeConfig] = dict(probes or {})
        self._groups: dict[str, Sequence[str]] = dict(groups or {})
        self.device_counts: dict[tuple[str, str], int] = {}
        """Registered devices by (app, state), as of the last maintenance round."""
        self._settings = settings
        self._observer = observer

    def serve(
        self,
        apps: Sequence[str],
        stale_days: Mapping[str, int] | None = None,
        probes: Mapping[str, ProbeConfig] | None = None,
        groups: Mapping[str, Sequence[str]] | None = None,
    ) -> None:
        """The apps this daemon serves from now on (after a reload), as the next heartbeat says,
        after how many days without contact each app's devices are stale, which apps probe
        for uninstalls and the groups of apps fan-outs can name."""
        self._apps = list(apps)
        if stale_days is not None:
            self._stale_days = dict(stale_days)
        if probes is not None:
            self._probes = dict(probes)
        if groups is not None:
            self._groups = dict(groups)

    async def sync_groups(self) -> None:
        """Write the config's groups of apps where ``pushgres.send_to_users`` finds them, and
        its categories where enqueues are checked against them."""
        await self._store.sync_app_groups(self._groups, self._apps)
        await self._store.sync_categories(self._categories)

    def declare(self, categories: Mapping[str, bool]) -> None:
        """The config's categories from now on (name: transactional), after a reload."""
        self._categories = dict(categories)

    async def maintain(self) -> None:
        """One round of maintenance (also run once at start, before the lanes)."""
        await self._store.maintenance(
            retention_days=self._settings.results_retention_days,
            dedupe_retention_days=self._settings.dedupe_retention_days,
            device_retention_days=self._settings.device_retention_days,
        )
        for app, days in self._stale_days.items():
            marked = await self._store.mark_stale_devices(app, days)
            if marked:
                logger.info(
                    "app %s: %d device(s) not seen for %d days marked stale",
                    app,
                    marked,
                    days,
                    extra={"action": "stale_devices", "app": app},
                )
        self.device_counts = await self._store.device_counts()
        await self.sync_groups()

    async def maintenance(self) -> None:
        while True:
            await asyncio.sleep(MAINTENANCE_INTERVAL_S)
            try:
                await self.maintain()
            except StoreError as exc:
                _log_failure("maintenance", exc)

    async def vacuum_round(self) -> bool | None:
        """Vacuum the queue if it holds enough dead rows: whether it did, or None when this
        role may not (it does not own the queue)."""
        dead, live, may_vacuum = await self._store.queue_dead_rows()
        if not may_vacuum:
            return None
        if dead < vacuum_threshold(self._settings.queue_vacuum_dead_rows, live):
            return False
        started = time.monotonic()
        await self._store.vacuum_queue()
        logger.debug(
            "vacuumed the queue: %d dead row(s), %.1f s",
            dead,
            time.monotonic() - started,
            extra={"action": "vacuum"},
        )
        return True

    async def vacuum_queue(self) -> None:
        told = False
        while True:
            await asyncio.sleep(QUEUE_VACUUM_CHECK_S)
            if self._settings.queue_vacuum_dead_rows == 0:
                continue
            try:
                done = await self.vacuum_round()
            except StoreError as exc:
                _log_failure("queue vacuum", exc)
                continue
            if done is None and not told:
                logger.warning(
                    "queue vacuum left to autovacuum: this role does not own pushgres.queue "
                    "(set autovacuum_naptime lower, or daemon.queue_vacuum_dead_rows = 0)",
                    extra={"action": "vacuum"},
                )
            told = told or done is None

    async def probe_round(self) -> int:
        """One round of uninstall probes for every app that asks for them; how many queued."""
        queued = 0
        for app, probe in self._probes.items():
            n = await self._store.probe_devices(
                app, probe.after_days, probe.every_days, probe.per_minute, PROBE_MESSAGE
            )
            if n:
                logger.info(
                    "app %s: %d uninstall probe(s) queued for devices not seen for %d days",
                    app,
                    n,
                    probe.after_days,
                    extra={"action": "uninstall_probes", "app": app},
                )
            queued += n
        return queued

    async def uninstall_probes(self) -> None:
        while True:
            try:
                await self.probe_round()
            except StoreError as exc:
                _log_failure("uninstall probes", exc)
            await asyncio.sleep(PROBE_INTERVAL_S)

    async def heartbeat(self) -> None:
        host, pid = socket.gethostname(), os.getpid()
        while True:
            try:
                live = await self._store.heartbeat(
                    self._id, host, pid, self._apps, HEARTBEAT_LIVE_S
                )
                if self._on_peers is not None:
                    self._on_peers(live)
            except StoreError as exc:
                _log_failure("heartbeat", exc)
            await asyncio.sleep(HEARTBEAT_S)

    async def forget(self) -> None:
        """Remove this daemon's heartbeat row (at a clean stop; best effort)."""
        try:
            await self._store.forget_daemon(self._id)
        except StoreError as exc:
            _log_failure("removing the heartbeat", exc)

    async def sweep_unknown_apps(self) -> None:
        grace = self._settings.unknown_app_grace_s
        while True:
            try:
                failed = await self._store.fail_unserved_apps(
                    self._apps, HEARTBEAT_LIVE_S, grace, UNKNOWN_APP_SWEEP_LIMIT
                )
            except StoreError as exc:
                _log_failure("unknown-app sweep", exc)
                failed = []
            for record in failed[:5]:
                logger.error(
                    "notification %d names app %r, which no running daemon serves: "
                    "failed (UnknownApp)",
                    record.row.id,
                    record.row.app,
                    extra={"action": "sweep"},
                )
            by_app: dict[str, list[ResultRecord]] = {}
            for record in failed:
                by_app.setdefault(record.row.app, []).append(record)
            for app, records in by_app.items():
                self._observer.written(app, records, (), (), 0.0)
            if not failed:
                await asyncio.sleep(max(1.0, min(UNKNOWN_APP_SWEEP_S, grace)))


def vacuum_threshold(dead_rows: int, live: int) -> float:
    """The dead rows at which the queue is vacuumed: ``dead_rows``, or a tenth of the rows
    queued if that is more (infinite when ``dead_rows`` is 0: never).

    A vacuum reads every index of the queue whole, so it costs in proportion to the rows
    queued; the dead rows it removes cost every claim in proportion to their number. The
    tenth keeps the first from swamping the second on a big backlog (measured on 10,000,000
    rows, see the README's Performance section), as autovacuum's scale factor does."""
    if dead_rows == 0:
        return math.inf
    return max(dead_rows, live * QUEUE_VACUUM_SCALE)


def _log_failure(chore: str, exc: StoreError) -> None:
    if not exc.unavailable:  # an outage is logged once, by the store
        logger.error("%s failed: %s", chore, exc, extra={"action": "housekeeping"})
