"""Stages: what a claimed batch passes through before it is sent.

A :class:`Stage` sees the rows still to send and may settle some of them with a
:class:`~pushgres.pipeline.decide.Decision` (skip, fail, defer); the rest go on to the next
stage and then to the provider. Frequency caps and quiet hours are stages
(:mod:`~pushgres.pipeline.guardrails`). A lane runs its stages in order once per batch, inside
the batch's claim transaction (which a stage may use through the ``claim`` it is given); a
stage a lane does not need is not in its list.

:class:`NotSendable` is the first stage of every lane: rows the provider accepted already (in
a batch that was rolled back, ``pushgres.delivered``), rows that expired, whose token a
provider had declared dead before they were enqueued, or whose attempts ran out.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

from ..models import ClaimedRow, ResultRecord, Status
from .decide import Decision

if TYPE_CHECKING:
    from .guardrails import CapStore

__all__ = ["NotSendable", "Stage", "run_stages"]


class Stage(Protocol):
    name: str

    async def sift(
        self, rows: list[ClaimedRow], now: dt.datetime, claim: CapStore
    ) -> tuple[list[ClaimedRow], list[Decision]]:
        """The rows to send on, and the decisions for the rows this stage settled."""
        ...


class NotSendable:
    """Settles rows that must not be sent at all."""

    name = "not-sendable"

    async def sift(
        self, rows: list[ClaimedRow], now: dt.datetime, claim: CapStore
    ) -> tuple[list[ClaimedRow], list[Decision]]:
        keep: list[ClaimedRow] = []
        settled: list[Decision] = []
        for row in rows:
            if row.delivered_attempt is not None:
                # Accepted before its batch could commit (a kill, a lost connection): sending
                # it again would deliver it twice.
                result = ResultRecord(
                    row, Status.SENT, 200, "AcceptedBeforeRollback", None, row.delivered_attempt
                )
            elif row.is_expired:
                result = ResultRecord(row, Status.EXPIRED, None, "Expired", None, row.attempts)
            elif row.is_token_invalid:
                result = ResultRecord(
                    row, Status.TOKEN_INVALID, None, "TokenInvalidated", None, row.attempts
                )
            elif row.attempts >= row.max_attempts:
                # A straggler's lease ran out on its last attempt: it had no answer.
                result = ResultRecord(
                    row, Status.FAILED, None, row.last_reason or "NoAnswer", None, row.attempts
                )
            else:
                keep.append(row)
                continue
            settled.append(Decision(result=result))
        return keep, settled


async def run_stages(
    stages: Sequence[Stage], rows: list[ClaimedRow], now: dt.datetime, claim: CapStore
) -> tuple[list[ClaimedRow], list[Decision]]:
    settled: list[Decision] = []
    for stage in stages:
        if not rows:
            break
        rows, decided = await stage.sift(rows, now, claim)
        settled += decided
    return rows, settled
