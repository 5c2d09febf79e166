"""Observers: what watches the flow (logs, counters, metrics) without being threaded through it.

A lane reports three events per batch to its :class:`Observer`: rows ``claimed``, the provider's
answers once ``sent``, and what was ``written`` (results, retries, dead tokens; late answers of
stragglers and rows of unknown apps are written events too). An observer only counts and logs:
no SQL, no lock, nothing that can fail the batch. :class:`Observers` fans one event out to
several; with none, a lane calls nothing.

:class:`StatsObserver` is the first observer: the counters behind ``Daemon.stats``, the
one-line report every minute, and the operator alert when a provider rejects an app's
credentials or configuration.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from ..models import Action, InvalidToken, Outcome, Requeue, ResultRecord

__all__ = ["DaemonStats", "Observer", "Observers", "StatsObserver"]

logger = logging.getLogger("pushgres.daemon")


class Observer(Protocol):
    def claimed(self, app: str, rows: int, seconds: float) -> None: ...

    def sent(self, app: str, outcomes: Sequence[Outcome], seconds: float) -> None: ...

    def written(
        self,
        app: str,
        results: Sequence[ResultRecord],
        requeues: Sequence[Requeue],
        invalid: Sequence[InvalidToken],
        seconds: float,
    ) -> None: ...


class Observers:
    """Several observers as one."""

    def __init__(self, observers: Sequence[Observer]) -> None:
        self._observers = tuple(observers)

    def claimed(self, app: str, rows: int, seconds: float) -> None:
        for o in self._observers:
            o.claimed(app, rows, seconds)

    def sent(self, app: str, outcomes: Sequence[Outcome], seconds: float) -> None:
        for o in self._observers:
            o.sent(app, outcomes, seconds)

    def written(
        self,
        app: str,
        results: Sequence[ResultRecord],
        requeues: Sequence[Requeue],
        invalid: Sequence[InvalidToken],
        seconds: float,
    ) -> None:
        for o in self._observers:
            o.written(app, results, requeues, invalid, seconds)


@dataclass(slots=True)
class DaemonStats:
    """Counters for the progress line, the logs and the tests."""

    claimed: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    reasons: Counter[str] = field(default_factory=Counter)
    retried: int = 0
    deferred: int = 0
    """Held back by a guardrail (quiet hours, local time, a frequency cap)."""
    batches: int = 0
    started: float = field(default_factory=time.monotonic)


class StatsObserver:
    """Counts what the lanes did, and alerts on provider configuration errors."""

    def __init__(self) -> None:
        self.stats = DaemonStats()

    def claimed(self, app: str, rows: int, seconds: float) -> None:
        self.stats.claimed += rows
        self.stats.batches += 1

    def sent(self, app: str, outcomes: Sequence[Outcome], seconds: float) -> None:
        config_errors: Counter[str] = Counter()
        fixes: dict[str, str] = {}
        for outcome in outcomes:
            if outcome.action is Action.CFG:
                reason = outcome.reason or "Unknown"
                config_errors[reason] += 1
                if outcome.detail:
                    fixes.setdefault(reason, outcome.detail)
        if config_errors:
            logger.error(
                "app %s: configuration or credential error from the provider: %s; "
                "fix the app's credentials/topic/project (the notifications are retried)",
                app,
                "; ".join(
                    f"{reason} x{n}" + (f" ({fixes[reason]})" if reason in fixes else "")
                    for reason, n in config_errors.items()
                ),
                extra={"action": "provider_config_error", "app": app},
            )

    def written(
        self,
        app: str,
        results: Sequence[ResultRecord],
        requeues: Sequence[Requeue],
        invalid: Sequence[InvalidToken],
        seconds: float,
    ) -> None:
        stats = self.stats
        for record in results:
            stats.outcomes[record.status] += 1
            if record.reason:
                stats.reasons[record.reason.split(":", 1)[0]] += 1
        deferred = sum(1 for q in requeues if q.deferred)
        stats.deferred += deferred
        stats.retried += len(requeues) - deferred

    def report(self, lanes: str) -> None:
        """The one-line summary the daemon logs every minute."""
        stats = self.stats
        logger.info(
            "claimed=%d %s retried=%d deferred=%d batches=%d %s",
            stats.claimed,
            " ".join(f"{k}={v}" for k, v in sorted(stats.outcomes.items())),
            stats.retried,
            stats.deferred,
            stats.batches,
            lanes,
            extra={"action": "report"},
        )
