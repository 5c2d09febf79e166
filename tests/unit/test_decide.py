"""Retry and terminal-state decisions (pure)."""

from __future__ import annotations

import datetime as dt
import random

from pushgres.config import RetryConfig
from pushgres.models import Action, Outcome, Status
from pushgres.pipeline.decide import decide
from pushgres.pipeline.stages import NotSendable
from pushgres.retry import backoff_s, parse_retry_after
from pushgres.testing import MemoryClaim, MemoryStore

from .test_apns_protocol import NOW, row

RETRY = RetryConfig(base_s=2.0, max_s=300.0, quota_default_s=60.0)


def run(outcome: Outcome, **overrides: object):  # type: ignore[no-untyped-def]
    return decide(row(**overrides), outcome, now=NOW, retry=RETRY, rng=random.Random(1))


def test_sent_is_terminal_with_provider_id() -> None:
    d = run(Outcome(action=Action.SENT, provider_status=200, provider_id="x"))
    assert d.result is not None and d.result.status == Status.SENT
    assert d.result.provider_id == "x" and d.result.attempts == 1


def test_dead_token_is_recorded_invalid() -> None:
    ts = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    d = run(
        Outcome(
            action=Action.DEAD, provider_status=410, reason="Unregistered", provider_timestamp=ts
        )
    )
    assert d.result is not None and d.result.status == Status.TOKEN_INVALID
    assert d.invalid_token is not None and d.invalid_token.provider_timestamp == ts


def test_wait_retries_with_backoff_until_max_attempts() -> None:
    out = Outcome(action=Action.WAIT, provider_status=503, reason="ServiceUnavailable")
    d = run(out, attempts=1)
    assert d.requeue is not None and d.requeue.attempts == 2
    assert 0 <= d.requeue.delay_s <= 4
    d = run(out, attempts=4, max_attempts=5)
    assert d.result is not None and d.result.status == Status.FAILED
    assert d.result.reason == "ServiceUnavailable"


def test_retry_after_is_honoured() -> None:
    d = run(
        Outcome(action=Action.WAIT, provider_status=429, reason="QUOTA_EXCEEDED", retry_after_s=7)
    )
    assert d.requeue is not None and 7 <= d.requeue.delay_s <= 8
    d = run(Outcome(action=Action.WAIT, provider_status=429, reason="QUOTA_EXCEEDED"))
    assert d.requeue is not None and 60 <= d.requeue.delay_s <= 61


def test_retry_past_expiry_is_expired() -> None:
    out = Outcome(
        action=Action.WAIT, provider_status=429, reason="QUOTA_EXCEEDED", retry_after_s=60
    )
    d = run(out, expires_at=NOW + dt.timedelta(seconds=30))
    assert d.result is not None and d.result.status == Status.EXPIRED


def test_interrupted_goes_back_without_counting() -> None:
    d = run(Outcome(action=Action.CONN, reason="Interrupted"), attempts=2)
    assert d.requeue is not None and d.requeue.attempts == 2 and d.requeue.delay_s == 0


def test_local_failure_reason_carries_detail() -> None:
    d = run(Outcome(action=Action.FIX, reason="PayloadTooLarge", detail="payload is 5000 bytes"))
    assert d.result is not None and d.result.reason == "PayloadTooLarge: payload is 5000 bytes"


async def test_the_first_stage_settles_rows_that_must_not_be_sent() -> None:
    rows = [
        row(id=1),
        row(id=2, is_expired=True),
        row(id=3, is_token_invalid=True),
        # A straggler's lease ran out on its last attempt.
        row(id=4, attempts=3, max_attempts=3, last_reason="RequestTimeout: no response"),
    ]
    keep, settled = await NotSendable().sift(rows, NOW, MemoryClaim([], MemoryStore()))
    assert [r.id for r in keep] == [1]
    results = [d.result for d in settled]
    assert [(r.row.id, r.status) for r in results if r is not None] == [
        (2, Status.EXPIRED),
        (3, Status.TOKEN_INVALID),
        (4, Status.FAILED),
    ]
    assert results[2] is not None and results[2].reason == "RequestTimeout: no response"
    assert all(d.requeue is None for d in settled)


def test_backoff_is_bounded_full_jitter() -> None:
    rng = random.Random(3)
    values = [backoff_s(10, base_s=1, max_s=30, rng=rng) for _ in range(200)]
    assert max(values) <= 30 and min(values) >= 0 and max(values) > 15


def test_parse_retry_after() -> None:
    assert parse_retry_after(b"12") == 12
    assert parse_retry_after(b"garbage") is None
    assert parse_retry_after(None) is None
    assert parse_retry_after("Thu, 01 Jan 1970 00:00:00 GMT") == 0
