"""The supervisor: wires one lane per app from the config and owns every task.

``Daemon.run()`` builds each app's sender through its provider (``providers/``) and a
:class:`~pushgres.pipeline.lane.Lane` around it, then opens one TaskGroup holding, by name,
each lane's claimer (whose batches and late writer join the group), the LISTEN task, the
heartbeat, the maintenance task and the unknown-app sweeper (``housekeeping.py``) and the
report. What watches the
flow is an observer (``pipeline/observer.py``); the SQL is the store's (``db/store.py``).

``stop()`` (SIGTERM/SIGINT) stops claiming; batches on the wire and stragglers get
``shutdown_timeout_s`` to finish, after which their unfinished sends are cancelled and those
rows go back to the queue as they were. ``run()`` returns once every answer is written.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import socket
import uuid
from collections.abc import Sequence
from typing import Final

from .config import Settings
from .db.store import Store
from .housekeeping import Housekeeping
from .pipeline.capacity import Capacity
from .pipeline.lane import Lane, LaneSettings
from .pipeline.observer import DaemonStats, Observer, Observers, StatsObserver
from .pipeline.stages import NotSendable, Stage
from .providers import build_senders
from .providers.base import Sender

__all__ = ["Daemon", "DaemonStats"]

logger = logging.getLogger(__name__)

REPORT_INTERVAL_S: Final = 60.0
ABORT_DRAIN_S: Final = 10.0  # after the shutdown deadline: how long aborted sends may take
RESERVED_DB_CONNECTIONS: Final = 3  # LISTEN aside: heartbeat, sweeper, late writers


class Daemon:
    def __init__(
        self,
        settings: Settings,
        *,
        rng: random.Random | None = None,
        observers: Sequence[Observer] = (),
    ) -> None:
        self._settings = settings
        self._rng = rng or random.Random()
        self._stats = StatsObserver()
        self._observer = Observers([self._stats, *observers])
        self._stopping = asyncio.Event()
        self._lanes: list[Lane] = []
        self.id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"

    @property
    def stats(self) -> DaemonStats:
        return self._stats.stats

    @property
    def is_stopping(self) -> bool:
        return self._stopping.is_set()

    def stop(self) -> None:
        """Stop claiming and drain; in-flight sends get ``shutdown_timeout_s``."""
        if not self._stopping.is_set():
            logger.info("stopping: no new claims, draining in-flight batches")
            self._stopping.set()
            for lane in self._lanes:
                lane.poke()

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
        try:
            await store.check_schema()
            chores = Housekeeping(
                store,
                daemon_id=self.id,
                apps=[app.name for app in settings.apps],
                settings=settings.daemon,
                observer=self._observer,
            )
            await chores.maintain()
            abort: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            async with contextlib.AsyncExitStack() as stack:
                for sender in senders:
                    await stack.enter_async_context(sender)
                self._lanes = self._build_lanes(store, senders, abort)
                started = True
                logger.info(
                    "pushgres running: %d app(s): %s",
                    len(self._lanes),
                    ", ".join(lane.name for lane in self._lanes),
                    extra={"action": "start"},
                )
                await self._supervise(store, chores, abort)
                await chores.forget()
        finally:
            await store.close()
            if started:
                logger.info("pushgres stopped", extra={"action": "stop"})

    def _build_lanes(
        self, store: Store, senders: Sequence[Sender], abort: asyncio.Future[None]
    ) -> list[Lane]:
        settings = self._settings
        daemon = settings.daemon
        lane_settings = LaneSettings(
            batch_size=daemon.batch_size,
            poll_interval_s=daemon.poll_interval_s,
            notify_min_interval_s=daemon.notify_min_interval_s,
            request_timeout_s=daemon.request_timeout_s,
        )
        batch_slots = asyncio.Semaphore(
            max(1, settings.database.pool_size - RESERVED_DB_CONNECTIONS)
        )
        stages: list[Stage] = [NotSendable()]
        lanes = []
        for app, sender in zip(settings.apps, senders, strict=True):
            lanes.append(
                Lane(
                    app.name,
                    sender=sender,
                    store=store,
                    settings=lane_settings,
                    retry=settings.retry,
                    capacity=Capacity(
                        sender.capacity,
                        batch_size=daemon.batch_size,
                        rate_limit_per_s=app.rate_limit_per_s,
                    ),
                    stages=stages,
                    observer=self._observer,
                    batch_slots=batch_slots,
                    stopping=self._stopping,
                    abort=abort,
                    rng=self._rng,
                )
            )
        return lanes

    async def _supervise(
        self, store: Store, chores: Housekeeping, abort: asyncio.Future[None]
    ) -> None:
        async with asyncio.TaskGroup() as tg:
            background = [
                tg.create_task(store.listener(self._on_notify).run(), name="listen"),
                tg.create_task(chores.heartbeat(), name="heartbeat"),
                tg.create_task(chores.maintenance(), name="maintenance"),
                tg.create_task(chores.sweep_unknown_apps(), name="unknown-app-sweeper"),
                tg.create_task(self._report(), name="report"),
            ]
            claimers = [
                tg.create_task(lane.run(tg), name=f"claimer:{lane.name}") for lane in self._lanes
            ]
            await asyncio.gather(*claimers)
            await self._drain(abort)
            for task in background:
                task.cancel()
            # Batches and late writers still running are owned by the TaskGroup.

    def _on_notify(self) -> None:
        for lane in self._lanes:
            lane.wake()

    async def _drain(self, abort: asyncio.Future[None]) -> None:
        """After stop(): give the lanes the shutdown deadline, then abort their sends."""
        idle = [lane.wait_idle() for lane in self._lanes]
        try:
            async with asyncio.timeout(self._settings.daemon.shutdown_timeout_s):
                await asyncio.gather(*idle)
            return
        except TimeoutError:
            logger.warning(
                "shutdown deadline reached: cancelling unfinished sends, their rows stay queued"
            )
        abort.set_result(None)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(ABORT_DRAIN_S):
                await asyncio.gather(*(lane.wait_idle() for lane in self._lanes))

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
