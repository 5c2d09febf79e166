"""Diagnoses: an observer that notices when one provider reason takes over an app's answers.

A provider names, per app, the answers that mean a misconfiguration rather than bad luck
(:class:`Diagnosis`: for APNs, ``BadDeviceToken`` on most sends means the app's tokens belong
to the other environment). :class:`DiagnosisObserver` keeps, per app and diagnosis, a sliding
window over the latest sends (batch by batch); once at least ``min_sends`` were answered and
the reason's share reaches ``share``, it logs one alert with the provider's advice and holds
it -- for the metrics (``pushgres_alert``) and the dashboard -- until the share falls below
half of that, when it logs that the alert cleared. Counting is one comparison per answer.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from ..models import InvalidToken, Outcome, Requeue, ResultRecord

__all__ = ["Diagnosis", "DiagnosisObserver"]

logger = logging.getLogger("pushgres.daemon")


@dataclass(frozen=True, slots=True, kw_only=True)
class Diagnosis:
    name: str
    """Its label in metrics (``environment_mismatch``)."""
    reason: str
    """The provider reason that points at it."""
    message: str
    """The alert, advice included, for this app."""
    min_sends: int = 20
    share: float = 0.5
    window: int = 1000
    """How many of the latest sends the share is taken over."""


@dataclass(slots=True)
class _Window:
    diagnosis: Diagnosis
    batches: deque[tuple[int, int]] = field(default_factory=deque)  # (answers, matches)
    answers: int = 0
    matches: int = 0
    active: bool = False

    def add(self, answers: int, matches: int) -> None:
        self.batches.append((answers, matches))
        self.answers += answers
        self.matches += matches
        limit = self.diagnosis.window
        while len(self.batches) > 1 and self.answers - self.batches[0][0] >= limit:
            old_answers, old_matches = self.batches.popleft()
            self.answers -= old_answers
            self.matches -= old_matches


class DiagnosisObserver:
    """Watches each app's answers for its provider's diagnoses (see the module docstring)."""

    def __init__(self, diagnoses: Mapping[str, Sequence[Diagnosis]] | None = None) -> None:
        self._windows: dict[str, list[_Window]] = {}
        for app, found in (diagnoses or {}).items():
            self.watch(app, found)

    def watch(self, app: str, diagnoses: Sequence[Diagnosis]) -> None:
        """Watch ``app`` for ``diagnoses`` from now on (afresh, after a reload)."""
        if diagnoses:
            self._windows[app] = [_Window(d) for d in diagnoses]
        else:
            self._windows.pop(app, None)

    def active(self, app: str) -> tuple[tuple[str, str], ...]:
        """The app's diagnoses that hold now: ``(name, message)``."""
        return tuple(
            (w.diagnosis.name, w.diagnosis.message) for w in self._windows.get(app, ()) if w.active
        )

    def claimed(self, app: str, rows: int, seconds: float) -> None:
        return None

    def sent(self, app: str, outcomes: Sequence[Outcome], seconds: float) -> None:
        windows = self._windows.get(app)
        if not windows:
            return
        for window in windows:
            diagnosis = window.diagnosis
            reason = diagnosis.reason
            matches = 0
            for outcome in outcomes:
                if outcome.reason == reason:
                    matches += 1
            window.add(len(outcomes), matches)
            if window.answers < diagnosis.min_sends:
                continue
            share = window.matches / window.answers
            if not window.active and share >= diagnosis.share:
                window.active = True
                logger.error(
                    "app %s: %s (%s on %d of the last %d sends)",
                    app,
                    diagnosis.message,
                    reason,
                    window.matches,
                    window.answers,
                    extra={"action": "diagnosis", "app": app, "diagnosis": diagnosis.name},
                )
            elif window.active and share < diagnosis.share / 2:
                window.active = False
                logger.info(
                    "app %s: %s has cleared (%s on %d of the last %d sends)",
                    app,
                    diagnosis.name,
                    reason,
                    window.matches,
                    window.answers,
                    extra={"action": "diagnosis_cleared", "app": app},
                )

    def written(
        self,
        app: str,
        results: Sequence[ResultRecord],
        requeues: Sequence[Requeue],
        invalid: Sequence[InvalidToken],
        seconds: float,
    ) -> None:
        return None
