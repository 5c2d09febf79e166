"""The supervisor: wires one lane per app from the config and owns every task.

``Daemon.run()`` builds each app's sender through its provider (``providers/``) and a
:class:`~pushgres.pipeline.lane.Lane` around it, then opens one TaskGroup holding, by name,
each lane's claimer (whose batches and late writer join the group), the LISTEN task, the
heartbeat, the maintenance task and the unknown-app sweeper (``housekeeping.py``), the report,
the credential-expiry watch, and -- when configured -- the metrics sampler behind the admin
listener (``admin/``) and the systemd watchdog (``systemd.py``). What watches the flow is an
observer (``pipeline/observer.py``, ``observability/metrics.py``); the SQL is the store's.

``reload()`` (SIGHUP) applies a new config's apps without a restart: added apps get a lane,
removed ones stop claiming, changed ones (credentials, endpoint, rate limit) get a new lane
first and the old one finishes its in-flight sends on its own connections. A config that does
not parse or whose credentials cannot be read is refused and the running one stays.

``stop()`` (SIGTERM/SIGINT) stops claiming; batches on the wire and stragglers get
``shutdown_timeout_s`` to finish, after which their unfinished sends are cancelled and those
rows go back to the queue as they were. ``run()`` returns once every answer is written.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import logging
import os
import random
import socket
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Final

from .admin.server import AdminServer
from .config import AppConfig, ProbeConfig, Settings
from .db.store import ACQUIRE_TIMEOUT_S, Listener, Store
from .exceptions import ConfigError, StoreError
from .expiry import ExpiryWatch
from .housekeeping import Housekeeping
from .observability.diagnosis import DiagnosisObserver
from .observability.metrics import AppState, History, MetricsObserver, QueueSample
from .pipeline.capacity import Capacity
from .pipeline.guardrails import CapCoverage, FrequencyCaps, Timing, category_policies
from .pipeline.journal import DeliveryJournal
from .pipeline.lane import Lane, LaneSettings
from .pipeline.observer import DaemonStats, Observer, Observers, StatsObserver
from .pipeline.pacing import Pacing
from .pipeline.shards import share
from .pipeline.slots import FairSlots
from .pipeline.stages import NotSendable, Stage
from .providers import PROVIDERS, build_senders
from .providers.base import Sender
from .systemd import SystemdNotifier

__all__ = ["Daemon", "DaemonStats"]

logger = logging.getLogger(__name__)

REPORT_INTERVAL_S: Final = 60.0
ABORT_DRAIN_S: Final = 10.0  # after the shutdown deadline: how long aborted sends may take
# Besides the batches' (LISTEN has its own): heartbeat, sweeper, late writers, journal, vacuum.
RESERVED_DB_CONNECTIONS: Final = 4
EXPIRY_CHECK_S: Final = 86400.0
STATUS_INTERVAL_S: Final = 10.0
HISTORY_INTERVAL_S: Final = 5.0
READY_RETRY_S: Final = 30.0
STALL_MARGIN_S: Final = 60.0
_RESTART_SECTIONS: Final = ("database", "daemon", "retry", "admin")


def stale_days(apps: Iterable[AppConfig]) -> dict[str, int]:
    """After how many days without contact each app's registered devices are stale: the app's
    ``stale_after_days``, capped by its provider's token lifetime."""
    found = {}
    for app in apps:
        lifetime = PROVIDERS[app.platform].token_lifetime_days
        found[app.name] = min(app.stale_after_days, lifetime or app.stale_after_days)
    return found


def _categories(settings: Settings) -> dict[str, bool]:
    """The config's categories, name: transactional (what the database checks enqueues by)."""
    return {name: c.transactional for name, c in settings.categories.items()}


def probes(apps: Iterable[AppConfig]) -> dict[str, ProbeConfig]:
    """The apps that probe their quiet devices for uninstalls, and how."""
    return {app.name: app.probe for app in apps if app.probe is not None}


def stalled_lanes(ticks: Mapping[str, float | None], *, now: float, stall_s: float) -> list[str]:
    """The lanes whose last tick is older than ``stall_s`` (None: the loop ended)."""
    return sorted(name for name, tick in ticks.items() if tick is None or now - tick > stall_s)


@dataclasses.dataclass(slots=True, eq=False)
class _Running:
    """One app's lane, with the sender and config it was built from."""

    app: AppConfig
    sender: Sender
    lane: Lane
    stop: asyncio.Event
    task: asyncio.Task[None] | None = None
    expires_at: float | None = None


class Daemon:
    def __init__(
        self,
        settings: Settings,
        *,
        rng: random.Random | None = None,
        observers: Sequence[Observer] = (),
        notifier: SystemdNotifier | None = None,
        reload_config: Callable[[], Settings] | None = None,
        clock: Callable[[], dt.datetime] | None = None,
    ) -> None:
        self._settings = settings
        self._clock = clock
        """The lanes' wall clock (None: the system's); tests move it to judge guardrails."""
        self._rng = rng or random.Random()
        self._live_daemons: dict[str, list[str]] = {}  # as of the last heartbeat
        self._journal: DeliveryJournal | None = None  # with the store
        self._stats = StatsObserver()
        self.metrics = MetricsObserver() if settings.admin.listen is not None else None
        """The metrics observer, when the admin listener is configured."""
        self._history = (
            History(self.metrics, interval_s=HISTORY_INTERVAL_S) if self.metrics else None
        )
        self._diagnosis = DiagnosisObserver()
        extra = [self.metrics] if self.metrics is not None else []
        self._observer = Observers([self._stats, self._diagnosis, *extra, *observers])
        self._notifier = notifier or SystemdNotifier(None)
        self._reload_config = reload_config
        self._reload = asyncio.Event()
        self._stopping = asyncio.Event()
        self._running: dict[str, _Running] = {}
        self._retiring: set[_Running] = set()
        self._queue: dict[str, QueueSample] = {}
        self._expiry = ExpiryWatch()
        self._phase = "starting"
        self._store: Store | None = None
        self._listener: Listener | None = None
        self._chores: Housekeeping | None = None
        self._tg: asyncio.TaskGroup | None = None
        self._abort: asyncio.Future[None] | None = None
        self._batch_slots = FairSlots(max(1, settings.database.pool_size - RESERVED_DB_CONNECTIONS))
        self.started_at = time.time()
        self.admin_url: str | None = None
        """The admin listener's base URL once it listens."""
        self.id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"

    # -- what the admin listener and the tests see ----------------------------------------

    @property
    def stats(self) -> DaemonStats:
        return self._stats.stats

    @property
    def is_stopping(self) -> bool:
        return self._stopping.is_set()

    @property
    def phase(self) -> str:
        return self._phase

    @property
    def _lanes(self) -> list[Lane]:
        return [r.lane for r in self._running.values()]

    def app_states(self) -> list[AppState]:
        states = []
        for name, running in sorted(self._running.items()):
            states.append(
                AppState(
                    name=name,
                    platform=running.app.platform,
                    in_flight=running.lane.capacity.in_flight,
                    connection=running.sender.stats(),
                    problem=running.sender.problem(),
                    credential_kind="certificate" if running.expires_at is not None else None,
                    credential_expires_at=running.expires_at,
                    alerts=self._diagnosis.active(name),
                    pace_per_s=running.lane.capacity.pace_per_s,
                    paced_devices=len(running.lane.pacing.devices) if running.lane.pacing else 0,
                )
            )
        return states

    def database_state(self) -> tuple[int, int, int]:
        if self._store is None:
            return 0, 0, self._settings.database.pool_size
        return self._store.pool_stats()

    def queue_samples(self) -> Mapping[str, QueueSample]:
        return self._queue

    def device_counts(self) -> Mapping[tuple[str, str], int]:
        return self._chores.device_counts if self._chores is not None else {}

    def journal_state(self) -> tuple[int, int] | None:
        journal = self._journal
        return None if journal is None else (journal.unwritten, journal.dropped)

    def database_problem(self) -> str | None:
        """Why the database cannot be said to answer, or None: from the LISTEN connection's
        keepalive and the outcome of the last operation (no query, no pooled connection)."""
        if self._store is None or self._listener is None:
            return "not connected yet"
        if not self._store.is_available:
            return "the last database operation failed"
        return self._listener.problem()

    # -- control ---------------------------------------------------------------------------

    def stop(self) -> None:
        """Stop claiming and drain; in-flight sends get ``shutdown_timeout_s``."""
        if not self._stopping.is_set():
            logger.info("stopping: no new claims, draining in-flight batches")
            self._stopping.set()
            self._phase = "draining"
            self._notifier.stopping("draining in-flight sends")
            for running in (*self._running.values(), *self._retiring):
                running.stop.set()
                running.lane.poke()

    def reload(self) -> None:
        """Re-read the config (SIGHUP) and apply its apps; see the module docstring."""
        if self._reload_config is None:
            logger.warning("reload requested, but this daemon has no config file to re-read")
            return
        self._reload.set()

    # -- running ---------------------------------------------------------------------------

    async def run(self) -> None:
        settings = self._settings
        timeout_s = settings.daemon.request_timeout_s
        senders = build_senders(settings.apps, request_timeout_s=timeout_s)
        store = await Store.open(
            settings.database.dsn,
            max_size=settings.database.pool_size,
            idle_in_transaction_timeout_s=timeout_s * 3 + settings.daemon.shutdown_timeout_s + 30,
            statement_timeout_s=settings.database.statement_timeout_s,
        )
        started = False
        admin = None
        try:
            await store.check_schema()
            self._store = store
            if settings.daemon.delivery_journal:
                self._journal = DeliveryJournal(store)
            chores = Housekeeping(
                store,
                daemon_id=self.id,
                apps=[app.name for app in settings.apps],
                settings=settings.daemon,
                observer=self._observer,
                stale_days=stale_days(settings.apps),
                probes=probes(settings.apps),
                groups=settings.groups,
                categories=_categories(settings),
                on_peers=self._share_shards,
            )
            self._chores = chores
            await chores.maintain()
            admin = await self._start_admin()
            self._abort = asyncio.get_running_loop().create_future()
            try:
                async with asyncio.TaskGroup() as tg:
                    self._tg = tg
                    for app, sender in zip(settings.apps, senders, strict=True):
                        await self._enter(app, sender)
                    started = True
                    self._phase = "running"
                    logger.info(
                        "pushgres running: %d app(s): %s",
                        len(self._running),
                        ", ".join(self._running),
                        extra={"action": "start"},
                    )
                    await self._supervise(store, chores, tg)
                    await chores.forget()
            finally:
                self._tg = None
                for running in [*self._running.values(), *self._retiring]:
                    await self._close_sender(running)
        finally:
            if admin is not None:
                await admin.close()
            await store.close()
            self._notifier.close()
            if started:
                logger.info("pushgres stopped", extra={"action": "stop"})

    async def _start_admin(self) -> AdminServer | None:
        listen = self._settings.admin.listen
        if listen is None or self.metrics is None or self._history is None:
            return None
        server = AdminServer(
            listen,
            source=self,
            metrics=self.metrics,
            history=self._history,
        )
        await server.start()
        self.admin_url = server.url
        return server

    async def _enter(self, app: AppConfig, sender: Sender) -> _Running:
        """Open ``app``'s sender and start its lane (the claimer joins the TaskGroup)."""
        await sender.__aenter__()
        if self.metrics is not None:
            self.metrics.app(app.name, app.platform)
            sender.record_response_times(self.metrics.response_times(app.name, app.platform))
        self._diagnosis.watch(app.name, PROVIDERS[app.platform].diagnoses(app))
        stop = asyncio.Event()
        if self._stopping.is_set():
            stop.set()
        running = _Running(
            app=app, sender=sender, lane=self._build_lane(app, sender, stop), stop=stop
        )
        expiry = PROVIDERS[app.platform].credential_expiry(app)
        running.expires_at = expiry.timestamp() if expiry is not None else None
        previous = self._running.get(app.name)
        if previous is not None:
            self._retiring.add(previous)
        self._running[app.name] = running
        assert self._tg is not None
        running.task = self._tg.create_task(running.lane.run(self._tg), name=f"claimer:{app.name}")
        self._check_expiry(running)
        return running

    def _share_shards(self, live: Mapping[str, Sequence[str]]) -> None:
        """Split each app's queue shards between the live daemons serving it (after a heartbeat)."""
        self._live_daemons = {d: list(apps) for d, apps in live.items()}
        for lane in self._lanes:
            self._assign_shards(lane)

    def _assign_shards(self, lane: Lane) -> None:
        peers = [d for d, apps in self._live_daemons.items() if lane.name in apps]
        own = share(self.id, peers)
        if lane.shards.assign(own, len({*peers, self.id})):
            logger.info(
                "app %s: claiming shards %s first (%d daemon(s) serve it)",
                lane.name,
                ",".join(map(str, own)) or "none",
                lane.shards.peers,
                extra={"action": "shards", "app": lane.name},
            )

    def _build_lane(self, app: AppConfig, sender: Sender, stop: asyncio.Event) -> Lane:
        settings = self._settings
        daemon = settings.daemon
        assert self._store is not None and self._abort is not None
        lane_settings = LaneSettings(
            batch_size=daemon.batch_size,
            poll_interval_s=daemon.poll_interval_s,
            notify_min_interval_s=daemon.notify_min_interval_s,
            request_timeout_s=daemon.request_timeout_s,
        )
        policies = category_policies(app, settings.categories, settings.caps)
        pacing = Pacing(PROVIDERS[app.platform].pace_scopes)
        stages: list[Stage] = [NotSendable(), Timing(app, policies), pacing.devices]
        if any(p.caps for p in policies.values()):
            coverage = CapCoverage(settings.categories, settings.caps)
            stages.append(FrequencyCaps(policies, coverage))
        lane = Lane(
            app.name,
            sender=sender,
            store=self._store,
            settings=lane_settings,
            retry=settings.retry,
            capacity=Capacity(
                sender.capacity,
                batch_size=daemon.batch_size,
                rate_limit_per_s=app.rate_limit_per_s,
                pace=pacing.project,
            ),
            stages=stages,
            observer=self._observer,
            batch_slots=self._batch_slots.lane(app.name, app.weight),
            stopping=stop,
            abort=self._abort,
            rng=self._rng,
            clock=self._clock,
            pacing=pacing,
            journal=self._journal,
        )
        self._assign_shards(lane)
        return lane

    async def _close_sender(self, running: _Running) -> None:
        try:
            await running.sender.__aexit__(None, None, None)
        except Exception:
            logger.exception("app %s: closing its connections failed", running.app.name)

    async def _supervise(self, store: Store, chores: Housekeeping, tg: asyncio.TaskGroup) -> None:
        self._listener = store.listener(self._on_notify)
        background = [
            tg.create_task(self._listener.run(), name="listen"),
            tg.create_task(chores.heartbeat(), name="heartbeat"),
            tg.create_task(chores.maintenance(), name="maintenance"),
            tg.create_task(chores.sweep_unknown_apps(), name="unknown-app-sweeper"),
            tg.create_task(chores.uninstall_probes(), name="uninstall-probes"),
            tg.create_task(chores.vacuum_queue(), name="queue-vacuum"),
            tg.create_task(self._report(), name="report"),
            tg.create_task(self._keep_ready(), name="readiness"),
            tg.create_task(self._watch_expiry(), name="credential-expiry"),
            tg.create_task(self._reloader(chores), name="reloader"),
        ]
        if self._journal is not None:
            background.append(tg.create_task(self._journal.run(), name="delivery-journal"))
        if self._history is not None:
            background.append(
                tg.create_task(self._sample(store, self._history), name="metrics-sampler")
            )
        if self._notifier.enabled:
            background.append(tg.create_task(self._systemd(), name="systemd"))
        await self._stopping.wait()
        while True:  # a reload may have started lanes meanwhile: wait for every claimer
            claimers = [
                r.task for r in (*self._running.values(), *self._retiring) if r.task is not None
            ]
            if all(task.done() for task in claimers):
                break
            await asyncio.wait(claimers)
        await self._drain()
        for task in background:
            task.cancel()
        # Batches, late writers and retiring lanes still running are owned by the TaskGroup.

    def _on_notify(self) -> None:
        for lane in self._lanes:
            lane.wake()

    async def _drain(self) -> None:
        """After stop(): give the lanes the shutdown deadline, then abort their sends."""
        lanes = [r.lane for r in (*self._running.values(), *self._retiring)]
        try:
            async with asyncio.timeout(self._settings.daemon.shutdown_timeout_s):
                await asyncio.gather(*(lane.wait_idle() for lane in lanes))
            return
        except TimeoutError:
            logger.warning(
                "shutdown deadline reached: cancelling unfinished sends, their rows stay queued"
            )
        assert self._abort is not None
        self._abort.set_result(None)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(ABORT_DRAIN_S):
                await asyncio.gather(*(lane.wait_idle() for lane in lanes))

    # -- readiness, systemd ----------------------------------------------------------------

    async def _warm_up(self, apps: Sequence[_Running], *, notify: bool) -> None:
        """Credentials and a first connection for each app; then READY=1 if ``notify``."""
        timeout_s = self._settings.daemon.ready_timeout_s
        problems = await asyncio.gather(
            *(r.sender.warm_up(timeout_s) for r in apps), return_exceptions=True
        )
        for name, problem in zip((r.app.name for r in apps), problems, strict=True):
            if isinstance(problem, asyncio.CancelledError):
                raise problem
            if isinstance(problem, BaseException):
                problem = f"{type(problem).__name__}: {problem}"
            if not problem:
                continue
            logger.warning(
                "app %s is not ready: %s (its notifications wait; retrying)",
                name,
                problem,
                extra={"action": "not_ready", "app": name},
            )
        if notify and not self._stopping.is_set():
            self._notifier.ready(self._status_line())

    async def _keep_ready(self) -> None:
        """Warm every app up once, then retry the ones not ready every ``READY_RETRY_S``.

        Without it, an app whose provider was down at start would stay not ready until a
        notification came for it.
        """
        await self._warm_up(list(self._running.values()), notify=True)
        while True:
            await asyncio.sleep(READY_RETRY_S)
            waiting = [
                r for r in self._running.values() if not r.stop.is_set() and r.sender.problem()
            ]
            if waiting:
                await self._warm_up(waiting, notify=False)

    def _status_line(self) -> str:
        stats = self.stats
        elapsed = max(1e-9, time.monotonic() - stats.started)
        sent = stats.outcomes.get("sent", 0)
        not_ready = [r.app.name for r in self._running.values() if r.sender.problem()]
        line = (
            f"{self._phase}: {len(self._running)} app(s), {sent} sent "
            f"({sent / elapsed:.0f}/s since start)"
        )
        if not_ready:
            line += f"; not ready: {', '.join(not_ready)}"
        return line

    def _stalled(self) -> list[str]:
        """The apps whose claim loop should be going round and has not lately (or died)."""
        # The longest a healthy claim-loop turn may take: a batch slot freed by a batch on the
        # wire (its deadline), then a connection from a busy pool, then a slow claim.
        daemon = self._settings.daemon
        stall_s = (
            2 * daemon.request_timeout_s
            + ACQUIRE_TIMEOUT_S
            + self._settings.database.statement_timeout_s
            + STALL_MARGIN_S
        )
        return stalled_lanes(
            {
                name: None if r.task is not None and r.task.done() else r.lane.last_tick
                for name, r in self._running.items()
                if not r.stop.is_set()
            },
            now=time.monotonic(),
            stall_s=stall_s,
        )

    async def _systemd(self) -> None:
        """WATCHDOG=1 while the claim loops are healthy; STATUS= with the current rate."""
        interval = self._notifier.watchdog_interval_s
        tick = min(interval, STATUS_INTERVAL_S) if interval else STATUS_INTERVAL_S
        last_sent, last_at = 0, time.monotonic()
        next_status = 0.0
        while True:
            now = time.monotonic()
            if interval is not None:
                stalled = self._stalled()
                if not stalled:
                    self._notifier.watchdog()
                else:
                    logger.error(
                        "claim loop of %s stalled: withholding the systemd watchdog",
                        ", ".join(stalled),
                        extra={"action": "watchdog"},
                    )
            if now >= next_status:
                sent = self.stats.outcomes.get("sent", 0)
                rate = (sent - last_sent) / max(1e-9, now - last_at)
                last_sent, last_at = sent, now
                self._notifier.status(f"{self._status_line()}; {rate:.0f} sent/s now")
                next_status = now + STATUS_INTERVAL_S
            await asyncio.sleep(tick)

    # -- metrics and credentials -----------------------------------------------------------

    async def _sample(self, store: Store, history: History) -> None:
        """The dashboard's history every few seconds; the queue gauges on their interval."""
        interval = self._settings.admin.queue_sample_interval_s
        loop = asyncio.get_running_loop()
        next_history = next_queue = loop.time()
        while True:
            now = loop.time()
            if now >= next_history:
                history.sample(time.time())
                next_history = now + history.interval_s
            if now >= next_queue:
                next_queue = now + interval
                await self._sample_queue(store, interval)
            await asyncio.sleep(max(0.0, min(next_history, next_queue) - loop.time()))

    async def _sample_queue(self, store: Store, timeout_s: float) -> None:
        try:
            async with asyncio.timeout(timeout_s):
                samples = await store.queue_sample()
        except TimeoutError:
            logger.warning("queue sample took over %gs", timeout_s, extra={"action": "sample"})
            return
        except StoreError as exc:
            if not exc.unavailable:  # an outage is logged once, by the store
                logger.warning("queue sample failed: %s", exc, extra={"action": "sample"})
            return
        taken = time.time()
        empty = (0, 0, 0.0)
        self._queue = {
            app: QueueSample(*samples.get(app, empty), taken)
            for app in sorted({*self._running, *samples})
        }

    def _check_expiry(self, running: _Running) -> None:
        message = self._expiry.check(running.app.name, running.expires_at, time.time())
        if message:
            logger.warning(message, extra={"action": "credential_expiry", "app": running.app.name})

    async def _watch_expiry(self) -> None:
        """Daily: the expiry of the credential each app uses (read when its lane started; a
        file renewed on disk counts once it is reloaded)."""
        while True:
            await asyncio.sleep(EXPIRY_CHECK_S)
            for running in list(self._running.values()):
                self._check_expiry(running)

    # -- reload ----------------------------------------------------------------------------

    async def _reloader(self, chores: Housekeeping) -> None:
        while True:
            await self._reload.wait()
            self._reload.clear()
            if self._stopping.is_set():
                return
            self._notifier.reloading()
            try:
                await self._apply(chores)
            except Exception:
                # A reload must never take the running daemon down with it.
                logger.exception(
                    "config reload failed; the running config stays",
                    extra={"action": "reload_refused"},
                )
            finally:
                if not self._stopping.is_set():
                    self._notifier.ready(self._status_line())

    async def _apply(self, chores: Housekeeping) -> None:
        assert self._reload_config is not None
        try:
            new = self._reload_config()
        except ConfigError as exc:
            logger.error(
                "config reload refused: %s; the running config stays",
                exc,
                extra={"action": "reload_refused"},
            )
            return
        old = self._settings
        for section in _RESTART_SECTIONS:
            if getattr(old, section) != getattr(new, section):
                logger.warning(
                    "config reload: [%s] changed; it takes effect at the next restart",
                    section,
                    extra={"action": "reload"},
                )
        wanted = {app.name: app for app in new.apps}
        current = {name: r.app for name, r in self._running.items()}
        added = [app for name, app in wanted.items() if name not in current]
        guardrails = (new.categories, new.caps) != (old.categories, old.caps)
        changed = [
            app
            for name, app in wanted.items()
            if name in current and (current[name] != app or guardrails)
        ]
        removed = [name for name in current if name not in wanted]
        if guardrails or new.groups != old.groups:
            # Written before any lane is built: the new lanes (with guardrails changed, every
            # app's) are built from them.
            self._settings = old = dataclasses.replace(
                old, groups=new.groups, categories=new.categories, caps=new.caps
            )
            chores.serve(list(self._running), groups=new.groups)
            chores.declare(_categories(new))
            try:
                await chores.sync_groups()
            except StoreError as exc:  # maintenance writes them again in a while
                logger.error("config reload: app groups and categories not written: %s", exc)
            logger.info(
                "config reloaded: app groups %s; categories %s; caps %s",
                ", ".join(new.groups) or "none",
                ", ".join(new.categories) or "none",
                ", ".join(c.name for c in new.caps) or "none",
                extra={"action": "reload"},
            )
        if not (added or changed or removed):
            logger.info("config reloaded: no app changed", extra={"action": "reload"})
            return
        fresh = added + changed
        try:
            senders = build_senders(fresh, request_timeout_s=old.daemon.request_timeout_s)
        except ConfigError as exc:
            logger.error(
                "config reload refused: %s; the running config stays",
                exc,
                extra={"action": "reload_refused"},
            )
            return
        started: list[_Running] = []
        for app, sender in zip(fresh, senders, strict=True):
            started.append(await self._enter(app, sender))
        for name in removed:
            running = self._running.pop(name)
            self._retiring.add(running)
        assert self._tg is not None
        for running in list(self._retiring):
            if not running.stop.is_set():
                running.stop.set()
                running.lane.poke()
                self._tg.create_task(self._retire(running), name=f"retire:{running.app.name}")
        self._settings = dataclasses.replace(old, apps=tuple(r.app for r in self._running.values()))
        running_apps = [r.app for r in self._running.values()]
        chores.serve(
            list(self._running), stale_days(running_apps), probes(running_apps), new.groups
        )
        logger.info(
            "config reloaded: added %s; changed %s; removed %s",
            ", ".join(a.name for a in added) or "none",
            ", ".join(a.name for a in changed) or "none",
            ", ".join(removed) or "none",
            extra={"action": "reload"},
        )
        if started:
            await self._warm_up(started, notify=False)

    async def _retire(self, running: _Running) -> None:
        """A replaced or removed app's lane: let its in-flight sends finish, then close it."""
        if running.task is not None:
            await asyncio.wait([running.task])
        await running.lane.wait_idle()
        self._retiring.discard(running)
        await self._close_sender(running)

    async def _report(self) -> None:
        """One INFO line a minute: what was done, and each lane's connections."""
        while True:
            await asyncio.sleep(REPORT_INTERVAL_S)
            self._stats.report(
                " ".join(
                    f"{lane.name}:{lane.sender.describe()},in_flight={lane.capacity.in_flight}"
                    for lane in self._lanes
                )
            )
