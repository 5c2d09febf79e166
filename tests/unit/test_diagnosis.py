"""The diagnosis observer: one alert when a reason takes over an app's answers, and its clearing."""

from __future__ import annotations

import logging

import pytest

from pushgres.models import Action, Outcome
from pushgres.observability.diagnosis import Diagnosis, DiagnosisObserver

BAD = Outcome(action=Action.DEAD, reason="BadDeviceToken")
OK = Outcome(action=Action.SENT)
MISMATCH = Diagnosis(
    name="environment_mismatch",
    reason="BadDeviceToken",
    message="tokens look like sandbox tokens sent to production",
    min_sends=20,
    share=0.5,
    window=100,
)


def test_alerts_once_when_the_share_is_reached_and_clears_below_half(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    observer = DiagnosisObserver({"ios": [MISMATCH]})
    observer.sent("ios", [BAD] * 15, 0.0)  # too few sends to judge
    assert observer.active("ios") == ()
    observer.sent("ios", [BAD] * 10 + [OK] * 5, 0.0)  # 25 of 30
    assert observer.active("ios") == (("environment_mismatch", MISMATCH.message),)
    for _ in range(5):
        observer.sent("ios", [BAD] * 10, 0.0)
    alerts = [r for r in caplog.records if getattr(r, "action", "") == "diagnosis"]
    assert len(alerts) == 1 and "25 of the last 30" in alerts[0].getMessage()
    # Fixed: the window slides over good answers until the share is below half the threshold.
    for _ in range(10):
        observer.sent("ios", [OK] * 10, 0.0)
    assert observer.active("ios") == ()
    assert any(getattr(r, "action", "") == "diagnosis_cleared" for r in caplog.records)


def test_a_normal_share_never_alerts() -> None:
    observer = DiagnosisObserver({"ios": [MISMATCH]})
    for _ in range(100):
        observer.sent("ios", [BAD] * 2 + [OK] * 48, 0.0)
    assert observer.active("ios") == ()


def test_apps_without_diagnoses_are_not_watched() -> None:
    observer = DiagnosisObserver()
    observer.sent("android", [BAD] * 100, 0.0)
    assert observer.active("android") == ()
    observer.watch("ios", [MISMATCH])
    observer.sent("ios", [BAD] * 100, 0.0)
    assert observer.active("ios")
    observer.watch("ios", [MISMATCH])  # after a reload: judged afresh
    assert observer.active("ios") == ()
