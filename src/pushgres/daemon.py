"""The supervisor: wires the store, the per-app pools and senders, and owns every task.

``Daemon.run()`` opens one TaskGroup holding, by name, a claimer per app, the LISTEN task, the
maintenance task, the unknown-app sweeper and every in-flight batch. A claimer waits for send
capacity (HTTP/2 stream credit summed over the app's pool, and the app's rate limit) *before*
claiming, and claims no more rows than that capacity plus one batch of look-ahead (claimed
while the previous batch is on the wire, it takes the stream slots that batch's responses free
up, so claims never leave the connections idle). Each batch holds its claim transaction while
its rows are sent, then writes the outcomes and commits (see ``db/store.py``).

``stop()`` (SIGTERM/SIGINT) stops claiming; in-flight batches get ``shutdown_timeout_s`` to
finish, after which their unfinished sends are cancelled and those rows go back to the queue
untouched. ``run()`` returns once every batch is written.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import random
import ssl
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from .apns.auth import ProviderToken, load_client_certificate
from .apns.protocol import ApnsRequestBuilder
from .config import AppConfig, PoolConfig, Settings
from .db.store import Claim, Store
from .exceptions import StoreError
from .fcm.auth import ServiceAccount, TokenSource
from .fcm.protocol import FcmRequestBuilder
from .http2.pool import Http2Pool, PoolSettings
from .http2.tls import make_ssl_context
from .models import Action, ClaimedRow, InvalidToken, Outcome, Requeue, ResultRecord
from .pipeline.decide import decide, skip_reason
from .pipeline.ratelimit import TokenBucket
from .pipeline.sender import ApnsSender, FcmSender, Sender

__all__ = ["Daemon", "DaemonStats"]

logger = logging.getLogger(__name__)

MIN_CLAIM_FRACTION = 4  # wait for at least batch_size / 4 free slots before claiming
MAX_BATCHES_PER_APP = 8
LOOKAHEAD_BATCHES = 1  # batches claimed beyond the pool's stream capacity
MAINTENANCE_INTERVAL_S = 600.0
UNKNOWN_APP_SWEEP_S = 10.0
UNKNOWN_APP_SWEEP_LIMIT = 1000
STORE_RETRY_S = 2.0
REPORT_INTERVAL_S = 60.0


@dataclass(slots=True)
class DaemonStats:
    """Counters for the progress line and the logs."""

    claimed: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    reasons: Counter[str] = field(default_factory=Counter)
    retried: int = 0
    batches: int = 0
    started: float = field(default_factory=time.monotonic)


def _pool_settings(pool: PoolConfig) -> PoolSettings:
    return PoolSettings(
        max_connections=pool.max_connections,
        max_streams_per_connection=pool.max_streams_per_connection,
        connect_timeout_s=pool.connect_timeout_s,
        max_connection_age_s=pool.max_connection_age_s,
        codec=pool.codec,
    )


def _authority(pool: PoolConfig) -> str:
    return pool.server_hostname if pool.port == 443 else f"{pool.server_hostname}:{pool.port}"


def _pool(app: AppConfig, ssl_context: ssl.SSLContext) -> Http2Pool:
    return Http2Pool(
        f"{app.platform}:{app.name}",
        app.pool.host,
        app.pool.port,
        server_hostname=app.pool.server_hostname,
        authority=_authority(app.pool),
        ssl_context=ssl_context,
        settings=_pool_settings(app.pool),
    )


def build_sender(app: AppConfig, request_timeout_s: float) -> Sender:
    """The pool and sender of one app, from its config (keys are read here, once)."""
    authority = _authority(app.pool)
    if app.apns is not None:
        apns = app.apns
        cert = None
        token = None
        if apns.auth == "certificate":
            cert = load_client_certificate(
                p12_file=apns.p12_file,
                p12_password=apns.p12_password,
                cert_file=apns.cert_file,
                cert_key_file=apns.cert_key_file,
            )
        else:
            assert apns.key_file and apns.key_id and apns.team_id
            token = ProviderToken(
                key_file=apns.key_file,
                key_id=apns.key_id,
                team_id=apns.team_id,
                refresh_s=apns.token_refresh_s,
            )
        ssl_context = make_ssl_context(
            ca_file=app.pool.ca_file,
            client_cert_pem=cert.cert_pem if cert else None,
            client_key_pem=cert.key_pem if cert else None,
        )
        return ApnsSender(
            pool=_pool(app, ssl_context),
            builder=ApnsRequestBuilder(authority=authority, topic=apns.topic),
            token=token,
            request_timeout_s=request_timeout_s,
        )
    assert app.fcm is not None
    account = ServiceAccount(app.fcm.service_account_file, token_uri=app.fcm.token_uri)
    ssl_context = make_ssl_context(ca_file=app.pool.ca_file)
    return FcmSender(
        pool=_pool(app, ssl_context),
        builder=FcmRequestBuilder(
            authority=authority, project_id=app.fcm.project_id or account.project_id
        ),
        tokens=TokenSource(account, ssl_context=ssl_context),
        request_timeout_s=request_timeout_s,
    )


class _AppRuntime:
    """One app's moving parts: its sender, in-flight count and wake-up event."""

    def __init__(self, config: AppConfig, sender: Sender) -> None:
        self.config = config
        self.sender = sender
        self.in_flight = 0
        self.batches = 0
        self.changed = asyncio.Event()  # set when a batch finishes (capacity freed)
        self.wake = asyncio.Event()  # set by LISTEN/NOTIFY
        self.bucket = TokenBucket(config.rate_limit_per_s) if config.rate_limit_per_s else None


class Daemon:
    def __init__(self, settings: Settings, *, rng: random.Random | None = None) -> None:
        self._settings = settings
        self._rng = rng or random.Random()
        self._stopping = asyncio.Event()
        self._abort: asyncio.Future[None] | None = None  # done at the shutdown deadline
        self._batch_done = asyncio.Event()
        self._apps: list[_AppRuntime] = []
        self._store: Store | None = None
        self.stats = DaemonStats()

    @property
    def is_stopping(self) -> bool:
        return self._stopping.is_set()

    def stop(self) -> None:
        """Stop claiming and drain; in-flight sends get ``shutdown_timeout_s``."""
        if not self._stopping.is_set():
            logger.info("stopping: no new claims, draining in-flight batches")
            self._stopping.set()
            for app in self._apps:
                app.wake.set()
                app.changed.set()

    async def run(self) -> None:
        settings = self._settings
        self._abort = asyncio.get_running_loop().create_future()
        senders = [build_sender(app, settings.daemon.request_timeout_s) for app in settings.apps]
        self._apps = [
            _AppRuntime(app, sender) for app, sender in zip(settings.apps, senders, strict=True)
        ]
        store = await Store.open(
            settings.database.dsn,
            max_size=settings.database.pool_size,
            idle_in_transaction_timeout_s=settings.daemon.request_timeout_s * 3
            + settings.daemon.shutdown_timeout_s
            + 30,
            statement_timeout_s=settings.database.statement_timeout_s,
        )
        self._store = store
        try:
            await store.check_schema()
            await store.maintenance(
                retention_days=settings.daemon.results_retention_days,
                dedupe_retention_days=settings.daemon.dedupe_retention_days,
            )
            async with contextlib.AsyncExitStack() as stack:
                for app in self._apps:
                    await stack.enter_async_context(app.sender.pool)
                    stack.push_async_callback(app.sender.aclose)
                listener = await store.listen(settings.database.dsn, self._on_notify)
                stack.push_async_callback(listener.close)
                logger.info(
                    "pushgres running: %d app(s): %s",
                    len(self._apps),
                    ", ".join(a.config.name for a in self._apps),
                    extra={"action": "start"},
                )
                await self._supervise(store)
        finally:
            await store.close()
            logger.info("pushgres stopped", extra={"action": "stop"})

    def _on_notify(self) -> None:
        for app in self._apps:
            app.wake.set()

    async def _supervise(self, store: Store) -> None:
        batch_slots = asyncio.Semaphore(max(1, self._settings.database.pool_size - 3))
        async with asyncio.TaskGroup() as tg:
            background = [
                tg.create_task(self._maintenance(store), name="maintenance"),
                tg.create_task(self._sweep_unknown_apps(store), name="unknown-app-sweeper"),
                tg.create_task(self._report(), name="report"),
            ]
            claimers = [
                tg.create_task(
                    self._claimer(store, app, tg, batch_slots), name=f"claimer:{app.config.name}"
                )
                for app in self._apps
            ]
            await asyncio.gather(*claimers)
            await self._drain()
            for task in background:
                task.cancel()
            # Batches still running are owned by the TaskGroup, which waits for them here.

    async def _drain(self) -> None:
        """After stop(): give in-flight batches the shutdown deadline, then abort their sends."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._settings.daemon.shutdown_timeout_s
        while any(app.batches for app in self._apps):
            remaining = deadline - loop.time()
            if remaining <= 0:
                logger.warning(
                    "shutdown deadline reached: cancelling unfinished sends, their rows stay queued"
                )
                if self._abort is not None and not self._abort.done():
                    self._abort.set_result(None)
                return
            self._batch_done.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(remaining):
                    await self._batch_done.wait()

    async def _claimer(
        self,
        store: Store,
        app: _AppRuntime,
        tg: asyncio.TaskGroup,
        batch_slots: asyncio.Semaphore,
    ) -> None:
        daemon = self._settings.daemon
        name = app.config.name
        while not self._stopping.is_set():
            pool = app.sender.pool
            capacity = pool.capacity()
            # One batch of look-ahead: the next batch is claimed while the current one is on
            # the wire, and takes the stream slots its responses free up.
            free = capacity + min(daemon.batch_size, capacity) * LOOKAHEAD_BATCHES - app.in_flight
            wanted = min(daemon.batch_size, free)
            floor = max(1, min(daemon.batch_size, capacity) // MIN_CLAIM_FRACTION)
            if wanted < floor or app.batches >= MAX_BATCHES_PER_APP:
                app.changed.clear()
                await self._wait(app.changed, daemon.poll_interval_s)
                continue
            if app.bucket is not None:
                # Claim only what the rate limit lets us send now, in worthwhile batches.
                enough = min(wanted, floor, int(app.bucket.capacity))
                granted = app.bucket.take(wanted)
                if granted < enough:
                    app.bucket.give_back(granted)
                    await self._wait(self._stopping, app.bucket.wait_s(enough))
                    continue
                wanted = granted
            await batch_slots.acquire()
            if self._stopping.is_set():
                batch_slots.release()
                break
            app.wake.clear()
            try:
                claimed = await self._start_batch(store, app, wanted, tg, batch_slots)
            except StoreError as exc:
                # The batch task released its slot already.
                logger.error("app %s: %s", name, exc, extra={"action": "claim_batch"})
                await self._wait(app.wake, STORE_RETRY_S)
                continue
            if app.bucket is not None and claimed < wanted:
                app.bucket.give_back(wanted - claimed)
            if claimed < wanted:
                # The queue is drained for now: wait for a NOTIFY or the polling interval.
                await self._wait(app.wake, daemon.poll_interval_s)
                if app.wake.is_set() and daemon.notify_min_interval_s:
                    await self._wait(self._stopping, daemon.notify_min_interval_s)

    async def _wait(self, event: asyncio.Event, timeout_s: float) -> None:
        """Wait for ``event``, the stop signal, or ``timeout_s``, whichever comes first."""
        if self._stopping.is_set() and event is not self._stopping:
            return
        waiters = [
            asyncio.ensure_future(event.wait()),
            asyncio.ensure_future(self._stopping.wait()),
        ]
        try:
            await asyncio.wait(waiters, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()

    async def _start_batch(
        self,
        store: Store,
        app: _AppRuntime,
        limit: int,
        tg: asyncio.TaskGroup,
        batch_slots: asyncio.Semaphore,
    ) -> int:
        """Claim up to ``limit`` rows and hand them to a batch task; returns rows claimed."""
        claimed: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        app.in_flight += limit  # reserve the capacity before the claim returns
        app.batches += 1
        self.stats.batches += 1
        tg.create_task(
            self._batch(store, app, limit, claimed, batch_slots),
            name=f"batch:{app.config.name}:{self.stats.batches}",
        )
        return await claimed

    async def _batch(
        self,
        store: Store,
        app: _AppRuntime,
        limit: int,
        claimed: asyncio.Future[int],
        batch_slots: asyncio.Semaphore,
    ) -> None:
        reserved = [limit]

        def release() -> None:
            # Send capacity returns as soon as the sends are done, before the write-back,
            # so the next batch is claimed while this one commits.
            app.in_flight -= reserved[0]
            reserved[0] = 0
            app.changed.set()

        try:
            async with store.claim(app.config.name, limit) as claim:
                rows = claim.rows
                app.in_flight -= limit - len(rows)
                reserved[0] = len(rows)
                claimed.set_result(len(rows))
                if rows:
                    self.stats.claimed += len(rows)
                    await self._send_and_write(app, claim, release)
        except StoreError as exc:
            if not claimed.done():
                claimed.set_exception(exc)
            else:
                logger.error(
                    "app %s: batch not written, its rows return to the queue: %s",
                    app.config.name,
                    exc,
                    extra={"action": "write_results"},
                )
        except Exception:
            # A bug, not a provider answer: the transaction rolled back, the rows are queued.
            logger.exception(
                "app %s: batch failed, its rows return to the queue",
                app.config.name,
                extra={"action": "batch"},
            )
        finally:
            if not claimed.done():
                claimed.set_exception(StoreError("the batch ended before its claim returned"))
            release()
            app.batches -= 1
            batch_slots.release()
            self._batch_done.set()

    async def _send_and_write(
        self, app: _AppRuntime, claim: Claim, release: Callable[[], None]
    ) -> None:
        now = dt.datetime.now(dt.UTC)
        results: list[ResultRecord] = []
        requeues: list[Requeue] = []
        invalid: list[InvalidToken] = []
        to_send: list[ClaimedRow] = []
        for row in claim.rows:
            skipped = skip_reason(row)
            if skipped is not None:
                results.append(skipped)
            else:
                to_send.append(row)
        outcomes = await self._send_all(app.sender, to_send, now)
        release()
        now = dt.datetime.now(dt.UTC)
        retry = self._settings.retry
        for row, outcome in zip(to_send, outcomes, strict=True):
            decision = decide(row, outcome, now=now, retry=retry, rng=self._rng)
            if decision.result is not None:
                results.append(decision.result)
            if decision.requeue is not None:
                requeues.append(decision.requeue)
            if decision.invalid_token is not None:
                invalid.append(decision.invalid_token)
        await claim.write(results, requeues, invalid)
        config_errors = Counter(o.reason for o in outcomes if o.action is Action.CFG)
        if config_errors:
            logger.error(
                "app %s: configuration or credential error from the provider: %s; "
                "fix the app's credentials/topic/project (the notifications are retried)",
                app.config.name,
                ", ".join(f"{reason} x{n}" for reason, n in config_errors.items()),
                extra={"action": "provider_config_error"},
            )
        for record in results:
            self.stats.outcomes[record.status] += 1
            if record.reason:
                self.stats.reasons[record.reason.split(":", 1)[0]] += 1
        self.stats.retried += len(requeues)

    async def _send_all(
        self, sender: Sender, rows: list[ClaimedRow], now: dt.datetime
    ) -> list[Outcome]:
        """Send the batch; past the shutdown deadline (``_abort``) unfinished sends give up."""
        if not rows:
            return []
        try:
            return await sender.send_batch(rows, now=now, abort=self._abort)
        except Exception as exc:
            # A bug, not a provider answer: every row of the batch is retried later.
            logger.error(
                "app batch of %d notifications (first id %d): send failed unexpectedly: %r",
                len(rows),
                rows[0].id,
                exc,
                exc_info=exc,
                extra={"action": "send"},
            )
            return [Outcome(action=Action.WAIT, reason="InternalError")] * len(rows)

    async def _report(self) -> None:
        """One INFO line a minute: what was done, and each pool's connections."""
        while True:
            await asyncio.sleep(REPORT_INTERVAL_S)
            stats = self.stats
            pools = " ".join(
                f"{a.config.name}:conns={a.sender.pool.stats()['connections']},"
                f"in_flight={a.in_flight}"
                for a in self._apps
            )
            logger.info(
                "claimed=%d %s retried=%d batches=%d %s",
                stats.claimed,
                " ".join(f"{k}={v}" for k, v in sorted(stats.outcomes.items())),
                stats.retried,
                stats.batches,
                pools,
                extra={"action": "report"},
            )

    async def _maintenance(self, store: Store) -> None:
        while True:
            await asyncio.sleep(MAINTENANCE_INTERVAL_S)
            try:
                await store.maintenance(
                    retention_days=self._settings.daemon.results_retention_days,
                    dedupe_retention_days=self._settings.daemon.dedupe_retention_days,
                )
            except StoreError as exc:
                logger.error("maintenance failed: %s", exc, extra={"action": "maintain"})

    async def _sweep_unknown_apps(self, store: Store) -> None:
        known = [app.config.name for app in self._apps]
        grace = self._settings.daemon.unknown_app_grace_s
        while True:
            try:
                failed = await store.fail_unknown_apps(known, grace, UNKNOWN_APP_SWEEP_LIMIT)
            except StoreError as exc:
                logger.error("unknown-app sweep failed: %s", exc, extra={"action": "sweep"})
                failed = []
            for item in failed[:5]:
                logger.error(
                    "notification %d names unknown app %r: failed (UnknownApp)",
                    item["id"],
                    item["app"],
                    extra={"action": "sweep"},
                )
            if failed:
                self.stats.outcomes["failed"] += len(failed)
                self.stats.reasons["UnknownApp"] += len(failed)
            else:
                await asyncio.sleep(max(1.0, min(UNKNOWN_APP_SWEEP_S, grace)))
