"""What happens to a row after an attempt: a terminal result, or a retry after a delay. Pure.

* SENT → ``sent``; DEAD → ``token_invalid`` and the token is recorded invalid for the app;
  FIX → ``failed`` with the reason;
* WAIT / CFG / AUTH / CONN → retried with exponential backoff and full jitter (``Retry-After``
  honoured, FCM quota errors without one wait ``quota_default_s``; CONN and AUTH at once),
  until ``max_attempts`` — then ``failed`` with the last reason — or until the retry would
  land after the notification's expiry — then ``expired``.
* An interrupted attempt (shutdown) goes back at once and does not count as an attempt.
"""

from __future__ import annotations

import datetime as dt
import random
from dataclasses import dataclass

from ..config import RetryConfig
from ..models import Action, ClaimedRow, InvalidToken, Outcome, Requeue, ResultRecord, Status
from ..retry import backoff_s

__all__ = ["Decision", "decide"]

CFG_MIN_DELAY_S = 30.0
QUOTA_REASONS = frozenset({"QUOTA_EXCEEDED", "RESOURCE_EXHAUSTED"})


@dataclass(slots=True)  # one per notification: a plain record, cheaper than frozen
class Decision:
    result: ResultRecord | None = None
    requeue: Requeue | None = None
    invalid_token: InvalidToken | None = None


def _reason_text(outcome: Outcome) -> str:
    reason = outcome.reason or outcome.action.value
    if outcome.note:
        return f"{reason}: {outcome.note}"
    if outcome.provider_status is None and outcome.detail:
        return f"{reason}: {outcome.detail}"
    return reason


def decide(
    row: ClaimedRow,
    outcome: Outcome,
    *,
    now: dt.datetime,
    retry: RetryConfig,
    rng: random.Random,
) -> Decision:
    attempts = row.attempts + 1
    if outcome.action is Action.SENT:
        return Decision(
            result=ResultRecord(row, Status.SENT, 200, None, outcome.provider_id, attempts)
        )
    reason = _reason_text(outcome)
    if outcome.action is Action.DEAD:
        return Decision(
            result=ResultRecord(
                row, Status.TOKEN_INVALID, outcome.provider_status, reason, None, attempts
            ),
            invalid_token=InvalidToken(
                row.app,
                row.device_token,
                outcome.reason or reason,
                outcome.provider_timestamp,
                row.probe,
            ),
        )
    if outcome.action is Action.FIX:
        return Decision(
            result=ResultRecord(row, Status.FAILED, outcome.provider_status, reason, None, attempts)
        )
    if outcome.reason == "Interrupted":
        return Decision(requeue=Requeue(row, 0.0, row.last_reason or "Interrupted", row.attempts))
    if attempts >= row.max_attempts:
        return Decision(
            result=ResultRecord(row, Status.FAILED, outcome.provider_status, reason, None, attempts)
        )
    delay = _delay_s(outcome, attempts, retry, rng)
    if row.expires_at is not None and now + dt.timedelta(seconds=delay) >= row.expires_at:
        return Decision(
            result=ResultRecord(
                row, Status.EXPIRED, outcome.provider_status, reason, None, attempts
            )
        )
    return Decision(requeue=Requeue(row, delay, reason, attempts))


def _delay_s(outcome: Outcome, attempts: int, retry: RetryConfig, rng: random.Random) -> float:
    if outcome.action in (Action.CONN, Action.AUTH):
        return 0.0
    jitter = backoff_s(attempts, base_s=retry.base_s, max_s=retry.max_s, rng=rng)
    if outcome.retry_after_s is not None:
        return outcome.retry_after_s + rng.uniform(0, min(1.0, retry.base_s))
    if outcome.reason in QUOTA_REASONS:
        return retry.quota_default_s + rng.uniform(0, min(1.0, retry.base_s))
    if outcome.action is Action.CFG:
        return max(CFG_MIN_DELAY_S, jitter)
    return jitter
