"""The metrics' cost per notification, in process: the daemon's observers with metrics on vs off.

One run times the same batches through what a lane calls after each claim, send and write --
``Observers`` of the daemon without metrics (the stats and the diagnoses) and with them (plus
:class:`~pushgres.observability.metrics.MetricsObserver` and the response-time histogram the
pool fills once per response) -- alternating rounds so both see the same machine. Batches are
as the daemon sees them: 1,000 rows enqueued by one COPY transaction (one ``enqueued_at``),
and a second shape with a distinct ``enqueued_at`` per row. CPU time (``process_time``), best
of the rounds; the difference is the metrics' cost.
"""

from __future__ import annotations

import datetime as dt
import time
from typing import Any

from pushgres.models import Action, ClaimedRow, Outcome, ResultRecord
from pushgres.observability.diagnosis import Diagnosis, DiagnosisObserver
from pushgres.observability.metrics import MetricsObserver
from pushgres.pipeline.observer import Observers, StatsObserver

BATCH = 1000
BATCHES = 400
ROUNDS = 5


def _batch(distinct: bool) -> tuple[list[Outcome], list[ResultRecord]]:
    now = dt.datetime.now(dt.UTC)
    rows = [
        ClaimedRow.fresh(
            id=i,
            app="ios",
            platform="apns",
            device_token=f"{i:064x}",
            payload="{}",
            now=now + dt.timedelta(microseconds=i) if distinct else now,
        )
        for i in range(BATCH)
    ]
    outcomes = [Outcome(action=Action.SENT, provider_status=200) for _ in rows]
    results = [ResultRecord(r, "sent", 200, None, None, 1) for r in rows]
    return outcomes, results


def _observers(metrics: bool) -> tuple[Observers, Any]:
    diagnosis = DiagnosisObserver(
        {"ios": [Diagnosis(name="environment_mismatch", reason="BadDeviceToken", message="m")]}
    )
    if not metrics:
        return Observers([StatsObserver(), diagnosis]), None
    observer = MetricsObserver()
    observer.app("ios", "apns")
    return Observers([StatsObserver(), diagnosis, observer]), observer.response_times("ios", "apns")


def _time(metrics: bool, outcomes: list[Outcome], results: list[ResultRecord]) -> float:
    observers, response = _observers(metrics)
    started = time.process_time()
    for _ in range(BATCHES):
        observers.claimed("ios", BATCH, 0.002)
        if response is not None:
            observe = response.observe
            for _ in outcomes:
                observe(0.004)  # what the pool does per response
        observers.sent("ios", outcomes, 0.05)
        observers.written("ios", results, (), (), 0.003)
    return (time.process_time() - started) / (BATCHES * BATCH) * 1e6


def run_observers() -> dict[str, Any]:
    """µs of CPU per notification with metrics off and on, for both batch shapes."""
    result: dict[str, Any] = {"batch": BATCH, "notifications": BATCHES * BATCH, "rounds": ROUNDS}
    for shape, distinct in (("copy", False), ("distinct", True)):
        outcomes, results = _batch(distinct)
        off, on = [], []
        for _ in range(ROUNDS):
            off.append(_time(False, outcomes, results))
            on.append(_time(True, outcomes, results))
        result[f"{shape}_off_us"] = min(off)
        result[f"{shape}_on_us"] = min(on)
        result[f"{shape}_metrics_us"] = min(on) - min(off)
    result["metrics_us"] = max(result["copy_metrics_us"], result["distinct_metrics_us"])
    return result
