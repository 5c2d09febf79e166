"""Metrics: an observer that counts what the lanes do, and the Prometheus view of it.

:class:`MetricsObserver` is an :class:`~pushgres.pipeline.observer.Observer`: per batch it adds
to plain per-app counters and :class:`Histogram` buckets -- no SQL, no lock, no
``prometheus_client`` call per notification. :class:`Collector` turns those counters, and what
the daemon reports of its state at that moment (:class:`StateSource`: connections, in-flight,
readiness, queue samples, credential expiry, alerts), into Prometheus metric families when
``/metrics`` is scraped. :class:`History` keeps the last 15 minutes of per-app rates for the
dashboard.

Names and units follow the Prometheus conventions (``pushgres_`` prefix, ``_total`` counters,
``_seconds``); the README's "Operating pushgres" section lists every metric.
"""

from __future__ import annotations

import bisect
import datetime as dt
import itertools
import platform as python_platform
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final, Protocol

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector as _Collector

from .. import __version__
from ..models import Action, InvalidToken, Outcome, Requeue, ResultRecord, Status

__all__ = [
    "AppState",
    "Collector",
    "Histogram",
    "History",
    "MetricsObserver",
    "QueueSample",
    "StateSource",
]

# Provider answers usually take milliseconds; a request deadline is seconds.
RESPONSE_BUCKETS: Final = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# Enqueue to sent covers scheduled sends and backlogs: up to an hour.
LATENCY_BUCKETS: Final = (
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0
)  # fmt: skip
DB_BUCKETS: Final = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)
HISTORY_WINDOW_S: Final = 900.0
CONFIG_ERRORS_KEPT: Final = 20
UNSERVED_APP: Final = "(unserved)"


class Histogram:
    """Bucket counts and a sum: one bisect and two additions per observation."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)  # the last one is +Inf
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value

    @property
    def count(self) -> int:
        return sum(self.counts)

    def cumulative(self) -> list[tuple[str, float]]:
        """Prometheus buckets: ``(le, observations <= le)``, ending with ``+Inf``."""
        out: list[tuple[str, float]] = []
        total = 0
        for bound, n in zip((*self.bounds, float("inf")), self.counts, strict=True):
            total += n
            out.append(("+Inf" if bound == float("inf") else repr(bound), float(total)))
        return out


@dataclass(slots=True)
class _AppCounters:
    platform: str
    outcomes: Counter[tuple[str, str]] = field(default_factory=Counter)
    retries: Counter[str] = field(default_factory=Counter)
    deferred: Counter[str] = field(default_factory=Counter)
    """Rows held back by a guardrail, by reason (QuietHours, LocalTime, FrequencyCap)."""
    invalidated: int = 0
    claimed: int = 0
    probes: Counter[str] = field(default_factory=Counter)
    """Uninstall probes' outcomes by status."""
    config_errors: Counter[str] = field(default_factory=Counter)
    response: Histogram = field(default_factory=lambda: Histogram(RESPONSE_BUCKETS))
    latency: Histogram = field(default_factory=lambda: Histogram(LATENCY_BUCKETS))
    claim: Histogram = field(default_factory=lambda: Histogram(DB_BUCKETS))
    write: Histogram = field(default_factory=lambda: Histogram(DB_BUCKETS))


@dataclass(frozen=True, slots=True)
class ConfigErrorEvent:
    at: float
    app: str
    reason: str
    count: int
    hint: str | None


def _reason_name(reason: str | None) -> str:
    """The reason code of a stored reason (``"BadDeviceToken: ..."`` is ``BadDeviceToken``)."""
    if not reason:
        return ""
    return reason.split(":", 1)[0]


class MetricsObserver:
    """Counts per app what the lanes claimed, sent and wrote (see the module docstring)."""

    def __init__(self, *, clock: Callable[[], float] = time.time) -> None:
        self._apps: dict[str, _AppCounters] = {}
        self._clock = clock
        self.config_errors: deque[ConfigErrorEvent] = deque(maxlen=CONFIG_ERRORS_KEPT)
        """The latest provider configuration errors, newest last (for the dashboard)."""

    def app(self, name: str, platform: str) -> _AppCounters:
        """An app's counters (created at its first event, or when its lane is built)."""
        counters = self._apps.get(name)
        if counters is None:
            counters = self._apps[name] = _AppCounters(platform)
        return counters

    def _unserved(self) -> _AppCounters:
        """Where the rows of apps no lane serves are counted (failed as UnknownApp): one
        label value for all of them, however many names the queue holds."""
        return self.app(UNSERVED_APP, "")

    def response_times(self, name: str, platform: str) -> Histogram:
        """The histogram an app's sender fills with provider response times."""
        return self.app(name, platform).response

    @property
    def apps(self) -> Mapping[str, _AppCounters]:
        return self._apps

    def claimed(self, app: str, rows: int, seconds: float) -> None:
        counters = self._apps.get(app) or self._unserved()
        counters.claimed += rows
        counters.claim.observe(seconds)

    def sent(self, app: str, outcomes: Sequence[Outcome], seconds: float) -> None:
        errors: Counter[str] | None = None
        hints: dict[str, str | None] = {}
        for outcome in outcomes:
            if outcome.action is Action.CFG:
                reason = outcome.reason or "Unknown"
                if errors is None:
                    errors = Counter()
                errors[reason] += 1
                hints.setdefault(reason, outcome.detail)
        if errors:
            counters = self._apps.get(app) or self._unserved()
            counters.config_errors.update(errors)
            now = self._clock()
            for reason, n in errors.items():
                self.config_errors.append(ConfigErrorEvent(now, app, reason, n, hints[reason]))

    def written(
        self,
        app: str,
        results: Sequence[ResultRecord],
        requeues: Sequence[Requeue],
        invalid: Sequence[InvalidToken],
        seconds: float,
    ) -> None:
        counters = self._apps.get(app) or self._unserved()
        counters.write.observe(seconds)
        outcomes = counters.outcomes
        now = self._clock()
        latency = counters.latency
        bounds, buckets = latency.bounds, latency.counts
        total = 0.0
        plain = 0  # sent, no reason: the common case, counted once per batch
        sent = Status.SENT.value
        # Rows enqueued together share their enqueued_at (one transaction's now()).
        last_enqueued: dt.datetime | None = None
        waited = 0.0
        for record in results:
            status = record.status
            reason = record.reason
            if record.row.probe:  # counted apart: never part of an app's rates or alerts
                counters.probes[status] += 1
                continue
            if status == sent:
                if reason is None:
                    plain += 1
                else:
                    outcomes[status, _reason_name(reason)] += 1
                enqueued = record.row.enqueued_at
                if enqueued != last_enqueued:
                    last_enqueued = enqueued
                    waited = now - enqueued.timestamp()
                buckets[bisect.bisect_left(bounds, waited)] += 1
                total += waited
            else:
                outcomes[status, _reason_name(reason)] += 1
        if plain:
            outcomes[sent, ""] += plain
        latency.sum += total
        for requeue in requeues:
            if requeue.deferred:
                counters.deferred[_reason_name(requeue.reason)] += 1
            elif not requeue.row.probe:
                counters.retries[_reason_name(requeue.reason)] += 1
        counters.invalidated += sum(1 for token in invalid if not token.probe)


@dataclass(frozen=True, slots=True)
class QueueSample:
    depth: int
    ready: int
    oldest_ready_age_s: float
    sampled_at: float


@dataclass(frozen=True, slots=True, kw_only=True)
class AppState:
    """One app as the daemon sees it at a scrape."""

    name: str
    platform: str
    in_flight: int
    connection: Mapping[str, int]
    problem: str | None
    credential_kind: str | None = None
    credential_expires_at: float | None = None
    alerts: tuple[tuple[str, str], ...] = ()
    """Active alerts: (name, message)."""
    pace_per_s: float | None = None
    """The pace quota throttling set (None: not paced)."""
    paced_devices: int = 0


class StateSource(Protocol):
    """What the daemon answers when asked for its state (cheap: no I/O)."""

    @property
    def phase(self) -> str:
        """``starting`` | ``running`` | ``draining``."""
        ...

    @property
    def started_at(self) -> float: ...

    def app_states(self) -> list[AppState]: ...

    def database_state(self) -> tuple[int, int, int]:
        """The daemon's database connections: open, in use, the most allowed."""
        ...

    def database_problem(self) -> str | None:
        """Why the database cannot be said to answer now, or None."""
        ...

    def queue_samples(self) -> Mapping[str, QueueSample]: ...

    def device_counts(self) -> Mapping[tuple[str, str], int]:
        """Registered devices by (app, state), as of the last maintenance round."""
        ...

    def journal_state(self) -> tuple[int, int] | None:
        """The delivery journal's accepted sends not yet written down, and those never
        written down (dropped); None when the journal is off."""
        ...


class Collector(_Collector):
    """The Prometheus view of a :class:`MetricsObserver` and a :class:`StateSource`."""

    def __init__(self, metrics: MetricsObserver, source: StateSource) -> None:
        self._metrics = metrics
        self._source = source

    def collect(self) -> Iterator[Metric]:
        yield from self._build_info()
        yield from self._counted()
        yield from self._state()

    def _build_info(self) -> Iterator[Metric]:
        info = GaugeMetricFamily(
            "pushgres_build_info",
            "pushgres version and Python version; always 1",
            labels=["version", "python"],
        )
        info.add_metric([__version__, python_platform.python_version()], 1)
        yield info

    def _counted(self) -> Iterator[Metric]:
        notifications = CounterMetricFamily(
            "pushgres_notifications",
            "Notifications that reached a terminal status, by status and reason",
            labels=["app", "platform", "status", "reason"],
        )
        deferred = CounterMetricFamily(
            "pushgres_deferred",
            "Notifications held back by a guardrail before any attempt (QuietHours, LocalTime, "
            "FrequencyCap), by reason",
            labels=["app", "platform", "reason"],
        )
        retries = CounterMetricFamily(
            "pushgres_retries",
            "Sends that went back to the queue to be retried, by reason",
            labels=["app", "platform", "reason"],
        )
        invalidated = CounterMetricFamily(
            "pushgres_tokens_invalidated",
            "Device tokens the provider declared dead (recorded in pushgres.invalid_tokens)",
            labels=["app", "platform"],
        )
        claimed = CounterMetricFamily(
            "pushgres_claimed", "Rows claimed from the queue", labels=["app", "platform"]
        )
        config = CounterMetricFamily(
            "pushgres_provider_config_errors",
            "Provider answers that blame the app's credentials or configuration, by reason",
            labels=["app", "platform", "reason"],
        )
        probes = CounterMetricFamily(
            "pushgres_uninstall_probes",
            "Uninstall probes (silent pushes to quiet devices) by status: token_invalid means "
            "the app was found uninstalled; not counted in pushgres_notifications_total",
            labels=["app", "platform", "status"],
        )
        histograms = {
            "response": HistogramMetricFamily(
                "pushgres_provider_response_seconds",
                "Time from a request's stream opening to the provider's response",
                labels=["app", "platform"],
            ),
            "latency": HistogramMetricFamily(
                "pushgres_enqueue_to_sent_seconds",
                "Time from enqueue to the provider accepting the notification",
                labels=["app", "platform"],
            ),
            "claim": HistogramMetricFamily(
                "pushgres_claim_duration_seconds",
                "Duration of one claim query (a batch of rows locked)",
                labels=["app", "platform"],
            ),
            "write": HistogramMetricFamily(
                "pushgres_write_duration_seconds",
                "Duration of one batch's write-back of results and retries",
                labels=["app", "platform"],
            ),
        }
        for name, c in sorted(self._metrics.apps.items()):
            labels = [name, c.platform]
            for (status, reason), n in sorted(c.outcomes.items()):
                notifications.add_metric([*labels, status, reason], n)
            for reason, n in sorted(c.retries.items()):
                retries.add_metric([*labels, reason], n)
            for reason, n in sorted(c.deferred.items()):
                deferred.add_metric([*labels, reason], n)
            for reason, n in sorted(c.config_errors.items()):
                config.add_metric([*labels, reason], n)
            for status, n in sorted(c.probes.items()):
                probes.add_metric([*labels, status], n)
            invalidated.add_metric(labels, c.invalidated)
            claimed.add_metric(labels, c.claimed)
            for key, family in histograms.items():
                histogram: Histogram = getattr(c, key)
                family.add_metric(labels, histogram.cumulative(), histogram.sum)
        yield notifications
        yield retries
        yield deferred
        yield invalidated
        yield claimed
        yield config
        yield probes
        yield from histograms.values()

    def _state(self) -> Iterator[Metric]:
        source = self._source
        apps = source.app_states()
        gauges = {
            "in_flight": GaugeMetricFamily(
                "pushgres_in_flight", "Notifications on the wire now", labels=["app", "platform"]
            ),
            "connections": GaugeMetricFamily(
                "pushgres_http2_connections",
                "Open HTTP/2 connections to the provider",
                labels=["app", "platform"],
            ),
            "streams_open": GaugeMetricFamily(
                "pushgres_http2_streams_open",
                "Requests sent to the provider and not answered yet (open HTTP/2 streams)",
                labels=["app", "platform"],
            ),
            "stream_limit": GaugeMetricFamily(
                "pushgres_http2_stream_limit",
                "Concurrent streams the open connections allow, summed",
                labels=["app", "platform"],
            ),
            "ready": GaugeMetricFamily(
                "pushgres_app_ready",
                "1 when the app has a usable connection and accepted credentials",
                labels=["app", "platform"],
            ),
            "pace": GaugeMetricFamily(
                "pushgres_pace_per_second",
                "The send rate the provider's quota throttling set for the app (0: not paced)",
                labels=["app", "platform"],
            ),
            "paced_devices": GaugeMetricFamily(
                "pushgres_paced_devices",
                "Devices held back after the provider answered TooManyRequests for them",
                labels=["app", "platform"],
            ),
        }
        counters = {
            "goaways": ("pushgres_http2_goaways", "GOAWAY frames received"),
            "reconnects": (
                "pushgres_http2_reconnects",
                "Connections opened after an earlier one of the app closed",
            ),
            "connect_failures": ("pushgres_http2_connect_failures", "Failed connection attempts"),
            "resets": ("pushgres_http2_stream_resets", "Streams reset by the provider"),
            "timeouts": ("pushgres_http2_request_timeouts", "Requests unanswered by the deadline"),
        }
        counter_families = {
            key: CounterMetricFamily(name, text, labels=["app", "platform"])
            for key, (name, text) in counters.items()
        }
        expiry = GaugeMetricFamily(
            "pushgres_credential_expiry_timestamp_seconds",
            "When the app's credential (an APNs certificate) expires, Unix time",
            labels=["app", "platform", "credential"],
        )
        alerts = GaugeMetricFamily(
            "pushgres_alert",
            "1 while a diagnosis holds for the app (see the daemon's log for the advice)",
            labels=["app", "platform", "alert"],
        )
        for app in apps:
            labels = [app.name, app.platform]
            gauges["in_flight"].add_metric(labels, app.in_flight)
            gauges["connections"].add_metric(labels, app.connection.get("connections", 0))
            gauges["streams_open"].add_metric(labels, app.connection.get("in_flight", 0))
            gauges["stream_limit"].add_metric(labels, app.connection.get("stream_limit", 0))
            gauges["ready"].add_metric(labels, 0 if app.problem else 1)
            gauges["pace"].add_metric(labels, app.pace_per_s or 0.0)
            gauges["paced_devices"].add_metric(labels, app.paced_devices)
            for key, family in counter_families.items():
                family.add_metric(labels, app.connection.get(key, 0))
            if app.credential_expires_at is not None:
                expiry.add_metric([*labels, app.credential_kind or ""], app.credential_expires_at)
            for alert, _ in app.alerts:
                alerts.add_metric([*labels, alert], 1)
        yield from gauges.values()
        yield from counter_families.values()
        yield expiry
        yield alerts

        platforms = {app.name: app.platform for app in apps}
        depth = GaugeMetricFamily(
            "pushgres_queue_depth", "Rows in the queue (sampled)", labels=["app", "platform"]
        )
        ready = GaugeMetricFamily(
            "pushgres_queue_ready", "Rows due to be sent now (sampled)", labels=["app", "platform"]
        )
        oldest = GaugeMetricFamily(
            "pushgres_queue_oldest_ready_age_seconds",
            "How long the oldest due row has been due (sampled)",
            labels=["app", "platform"],
        )
        sampled = GaugeMetricFamily(
            "pushgres_queue_sampled_timestamp_seconds",
            "When the queue gauges were sampled, Unix time",
        )
        samples = source.queue_samples()
        latest = 0.0
        for name, sample in sorted(samples.items()):
            labels = [name, platforms.get(name, "")]
            depth.add_metric(labels, sample.depth)
            ready.add_metric(labels, sample.ready)
            oldest.add_metric(labels, sample.oldest_ready_age_s)
            latest = max(latest, sample.sampled_at)
        if latest:
            sampled.add_metric([], latest)
        yield depth
        yield ready
        yield oldest
        yield sampled

        devices = GaugeMetricFamily(
            "pushgres_devices",
            "Registered devices by state (counted at each maintenance round)",
            labels=["app", "state"],
        )
        for (app_name, state), n in sorted(source.device_counts().items()):
            devices.add_metric([app_name, state], n)
        yield devices

        size, in_use, max_size = source.database_state()
        up = source.database_problem() is None
        pool = GaugeMetricFamily(
            "pushgres_db_pool_connections",
            "The daemon's database connections, by state",
            labels=["state"],
        )
        pool.add_metric(["in_use"], in_use)
        pool.add_metric(["idle"], size - in_use)
        yield pool
        yield GaugeMetricFamily(
            "pushgres_db_pool_max_connections", "database.pool_size", value=max_size
        )
        yield GaugeMetricFamily(
            "pushgres_database_up",
            "1 while the database answers (as /readyz judges it)",
            value=1 if up else 0,
        )
        journal = source.journal_state()
        if journal is not None:
            unwritten, dropped = journal
            yield GaugeMetricFamily(
                "pushgres_delivery_journal_unwritten",
                "Accepted sends not yet written to pushgres.delivered (a kill now resends them)",
                value=unwritten,
            )
            yield CounterMetricFamily(
                "pushgres_delivery_journal_dropped",
                "Accepted sends never written to pushgres.delivered (refused, or too many)",
                value=dropped,
            )
        yield GaugeMetricFamily(
            "pushgres_draining",
            "1 while the daemon drains to stop",
            value=1 if source.phase == "draining" else 0,
        )
        yield GaugeMetricFamily(
            "pushgres_start_time_seconds",
            "When the daemon started, Unix time",
            value=source.started_at,
        )


@dataclass(slots=True)
class _Point:
    at: float
    sent: int
    finished: int
    invalid: int


class History:
    """Per-app cumulative counts sampled every ``interval_s``, the last 15 minutes of them."""

    def __init__(self, metrics: MetricsObserver, *, interval_s: float = 5.0) -> None:
        self._metrics = metrics
        self.interval_s = interval_s
        self._points: dict[str, deque[_Point]] = {}
        self._maxlen = int(HISTORY_WINDOW_S / interval_s) + 1

    def sample(self, now: float) -> None:
        sent_status = Status.SENT.value
        invalid_status = Status.TOKEN_INVALID.value
        for name, c in self._metrics.apps.items():
            sent = finished = invalid = 0
            for (status, _), n in c.outcomes.items():
                finished += n
                if status == sent_status:
                    sent += n
                elif status == invalid_status:
                    invalid += n
            points = self._points.get(name)
            if points is None:
                points = self._points[name] = deque(maxlen=self._maxlen)
            points.append(_Point(now, sent, finished, invalid))

    def rates(self, app: str) -> list[tuple[float, float]]:
        """Sends per second between consecutive samples: ``(time, rate)``, oldest first."""
        points = list(self._points.get(app, ()))
        return [
            (b.at, round((b.sent - a.sent) / (b.at - a.at), 3))
            for a, b in itertools.pairwise(points)
            if b.at > a.at
        ]

    def dead_token_rate(self, app: str) -> float | None:
        """Dead tokens among the notifications finished over the window, or None if none did."""
        points = self._points.get(app)
        if not points or len(points) < 2:
            return None
        first, last = points[0], points[-1]
        finished = last.finished - first.finished
        return (last.invalid - first.invalid) / finished if finished else None
