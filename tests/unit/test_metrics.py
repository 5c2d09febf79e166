"""The metrics observer and its Prometheus view, on in-memory events (pure logic)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from pushgres.models import Action, ClaimedRow, InvalidToken, Outcome, Requeue, ResultRecord
from pushgres.observability.metrics import (
    AppState,
    Collector,
    Histogram,
    History,
    MetricsObserver,
    QueueSample,
)

NOW = 1_800_000_000.0


def _row(i: int, enqueued: float) -> ClaimedRow:
    row = ClaimedRow.fresh(
        id=i,
        app="ios",
        platform="apns",
        device_token=f"{i:064x}",
        payload="{}",
        now=dt.datetime.fromtimestamp(enqueued, dt.UTC),
    )
    return row


def _result(
    i: int, status: str, reason: str | None = None, enqueued: float = NOW - 2
) -> ResultRecord:
    return ResultRecord(
        row=_row(i, enqueued),
        status=status,
        provider_status=200,
        reason=reason,
        provider_id=None,
        attempts=1,
    )


class _Source:
    phase = "running"
    started_at = NOW - 60

    def app_states(self) -> list[AppState]:
        return [
            AppState(
                name="ios",
                platform="apns",
                in_flight=7,
                connection={"connections": 2, "stream_limit": 1000, "goaways": 1, "reconnects": 3},
                problem=None,
                credential_kind="certificate",
                credential_expires_at=NOW + 86400,
                alerts=(("environment_mismatch", "tokens look like sandbox tokens"),),
            ),
            AppState(
                name="android",
                platform="fcm",
                in_flight=0,
                connection={},
                problem="cannot connect",
            ),
        ]

    def database_state(self) -> tuple[int, int, int]:
        return 5, 2, 12

    def database_problem(self) -> str | None:
        return None

    def queue_samples(self) -> Mapping[str, QueueSample]:
        return {"ios": QueueSample(10, 4, 1.5, NOW)}

    def device_counts(self) -> Mapping[tuple[str, str], int]:
        return {("ios", "active"): 40, ("ios", "stale"): 2}

    def journal_state(self) -> tuple[int, int] | None:
        return self.journal

    journal: tuple[int, int] | None = (120, 3)


def _scrape(
    metrics: MetricsObserver, source: _Source | None = None
) -> dict[str, list[tuple[dict[str, str], float]]]:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(Collector(metrics, source or _Source()))
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for sample in family.samples:
            out.setdefault(sample.name, []).append((dict(sample.labels), sample.value))
    return out


def _one(samples: dict[str, list[tuple[dict[str, str], float]]], name: str, **labels: str) -> float:
    found = [v for lab, v in samples[name] if all(lab.get(k) == x for k, x in labels.items())]
    assert len(found) == 1, (name, labels, found)
    return found[0]


def test_histogram_buckets_are_cumulative_and_inclusive() -> None:
    h = Histogram((0.1, 1.0))
    for value in (0.05, 0.1, 0.5, 1.0, 7.0):
        h.observe(value)
    assert h.cumulative() == [("0.1", 2.0), ("1.0", 4.0), ("+Inf", 5.0)]
    assert h.count == 5 and abs(h.sum - 8.65) < 1e-9


def test_observer_counts_per_batch_and_the_collector_exposes_it() -> None:
    metrics = MetricsObserver(clock=lambda: NOW)
    metrics.app("ios", "apns")
    metrics.claimed("ios", 5, 0.003)
    metrics.sent(
        "ios",
        [Outcome(action=Action.SENT)] * 3
        + [
            Outcome(
                action=Action.CFG, reason="BadCertificateEnvironment", detail="check environment"
            )
        ]
        * 2,
        0.05,
    )
    results = [
        _result(1, "sent"),
        _result(2, "sent"),
        _result(3, "sent", enqueued=NOW - 30),
        _result(4, "token_invalid", "Unregistered"),
        _result(5, "failed", "BadDeviceToken: not a production token"),
    ]
    requeue = Requeue(row=_row(6, NOW), delay_s=1.0, reason="ServiceUnavailable: busy", attempts=2)
    invalid = InvalidToken(
        app="ios", device_token="ab" * 32, reason="Unregistered", provider_timestamp=None
    )
    metrics.written("ios", results, [requeue], [invalid], 0.004)
    metrics.response_times("ios", "apns").observe(0.02)

    s = _scrape(metrics)
    assert _one(s, "pushgres_notifications_total", app="ios", status="sent", reason="") == 3
    assert _one(s, "pushgres_notifications_total", app="ios", status="failed") == 1
    assert _one(s, "pushgres_notifications_total", status="failed", reason="BadDeviceToken") == 1
    assert _one(s, "pushgres_retries_total", app="ios", reason="ServiceUnavailable") == 1
    assert _one(s, "pushgres_tokens_invalidated_total", app="ios") == 1
    assert _one(s, "pushgres_claimed_total", app="ios") == 5
    assert (
        _one(
            s,
            "pushgres_provider_config_errors_total",
            app="ios",
            reason="BadCertificateEnvironment",
        )
        == 2
    )
    # Enqueue→sent: only sent rows, each with its own wait.
    assert _one(s, "pushgres_enqueue_to_sent_seconds_count", app="ios") == 3
    assert abs(_one(s, "pushgres_enqueue_to_sent_seconds_sum", app="ios") - 34.0) < 1e-6
    assert _one(s, "pushgres_enqueue_to_sent_seconds_bucket", app="ios", le="2.5") == 2
    assert _one(s, "pushgres_provider_response_seconds_count", app="ios") == 1
    assert _one(s, "pushgres_claim_duration_seconds_count", app="ios") == 1
    assert _one(s, "pushgres_write_duration_seconds_count", app="ios") == 1
    # What the daemon reports at the scrape.
    assert _one(s, "pushgres_in_flight", app="ios") == 7
    assert _one(s, "pushgres_http2_connections", app="ios") == 2
    assert _one(s, "pushgres_http2_goaways_total", app="ios") == 1
    assert _one(s, "pushgres_http2_reconnects_total", app="ios") == 3
    assert _one(s, "pushgres_app_ready", app="ios") == 1
    assert _one(s, "pushgres_app_ready", app="android") == 0
    assert _one(s, "pushgres_credential_expiry_timestamp_seconds", app="ios") == NOW + 86400
    assert _one(s, "pushgres_alert", app="ios", alert="environment_mismatch") == 1
    assert _one(s, "pushgres_queue_depth", app="ios", platform="apns") == 10
    assert _one(s, "pushgres_queue_oldest_ready_age_seconds", app="ios") == 1.5
    assert _one(s, "pushgres_db_pool_connections", state="in_use") == 2
    assert _one(s, "pushgres_db_pool_connections", state="idle") == 3
    assert _one(s, "pushgres_database_up") == 1
    assert _one(s, "pushgres_devices", app="ios", state="stale") == 2
    assert s["pushgres_build_info"][0][1] == 1
    # The config errors the dashboard lists, with the provider's hint.
    event = metrics.config_errors[-1]
    assert (event.app, event.reason, event.count, event.hint) == (
        "ios",
        "BadCertificateEnvironment",
        2,
        "check environment",
    )


def test_history_gives_rates_and_the_dead_token_rate() -> None:
    metrics = MetricsObserver(clock=lambda: NOW)
    history = History(metrics, interval_s=5.0)
    metrics.app("ios", "apns")
    history.sample(NOW)
    metrics.written("ios", [_result(i, "sent") for i in range(50)], [], [], 0.0)
    history.sample(NOW + 5)
    metrics.written(
        "ios",
        [_result(i, "sent") for i in range(90)]
        + [_result(99, "token_invalid", "Unregistered")] * 10,
        [],
        [],
        0.0,
    )
    history.sample(NOW + 10)
    assert history.rates("ios") == [(NOW + 5, 10.0), (NOW + 10, 18.0)]
    assert history.dead_token_rate("ios") == 10 / 150
    assert history.rates("nope") == [] and history.dead_token_rate("nope") is None


def test_history_keeps_fifteen_minutes() -> None:
    metrics = MetricsObserver()
    history = History(metrics, interval_s=5.0)
    metrics.app("ios", "apns")
    for i in range(1000):
        history.sample(NOW + 5 * i)
    rates = history.rates("ios")
    assert len(rates) == 180 and rates[-1][0] - rates[0][0] == 895


def test_apps_no_lane_serves_share_one_label() -> None:
    # Rows naming apps nobody serves (failed as UnknownApp) must not grow the metrics.
    metrics = MetricsObserver(clock=lambda: NOW)
    metrics.app("ios", "apns")
    for i in range(100):
        metrics.written(f"typo-{i}", [_result(i, "failed", "UnknownApp: no daemon")], [], [], 0.0)
    assert sorted(metrics.apps) == ["(unserved)", "ios"]
    s = _scrape(metrics)
    assert _one(s, "pushgres_notifications_total", app="(unserved)", status="failed") == 100


def test_uninstall_probes_are_counted_apart_from_notifications() -> None:
    metrics = MetricsObserver(clock=lambda: NOW)
    metrics.app("ios", "apns")
    probe = ClaimedRow.fresh(
        id=9, app="ios", platform="apns", device_token="cd" * 32, payload="{}",
        now=dt.datetime.fromtimestamp(NOW - 1, dt.UTC), probe=True,
    )  # fmt: skip
    dead_probe = ResultRecord(
        row=probe, status="token_invalid", provider_status=410, reason="Unregistered",
        provider_id=None, attempts=1,
    )  # fmt: skip
    metrics.written(
        "ios",
        [_result(1, "sent"), dead_probe],
        [Requeue(row=probe, delay_s=1.0, reason="ServiceUnavailable", attempts=1)],
        [InvalidToken(app="ios", device_token="cd" * 32, reason="Unregistered",
                      provider_timestamp=None, probe=True)],
        0.001,
    )  # fmt: skip
    s = _scrape(metrics)
    assert _one(s, "pushgres_uninstall_probes_total", app="ios", status="token_invalid") == 1
    assert _one(s, "pushgres_notifications_total", app="ios", status="sent") == 1
    assert not [v for labels, v in s.get("pushgres_notifications_total", [])
                if labels.get("status") == "token_invalid"]  # fmt: skip
    assert not s.get("pushgres_retries_total")
    assert _one(s, "pushgres_tokens_invalidated_total", app="ios") == 0


def test_the_delivery_journal_is_shown_only_when_it_is_on() -> None:
    samples = _scrape(MetricsObserver())
    assert _one(samples, "pushgres_delivery_journal_unwritten") == 120
    assert _one(samples, "pushgres_delivery_journal_dropped_total") == 3
    off = _Source()
    off.journal = None
    samples = _scrape(MetricsObserver(), off)
    assert "pushgres_delivery_journal_unwritten" not in samples
    assert "pushgres_delivery_journal_dropped_total" not in samples
