"""The guardrail stages' cost per notification, in process: caps and quiet hours on vs off.

One run times the same claimed batches through a lane's stages as the daemon builds them --
without guardrails (the first stage and the timing stage with nothing to hold back) and with
them (quiet hours outside their window, a local-time row in twenty, and two frequency caps:
3 per 24 h and 1 per 10 minutes, over people who each have a few messages counted already) --
alternating rounds so both see the same machine. The caps' ledger is answered by an in-memory
stand-in, so the figure is the daemon's Python CPU: what PostgreSQL spends locking and writing
the ledger is Postgres CPU, measured end to end. CPU time (``process_time``), best of the
rounds; the difference is the guardrails' cost.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import Sequence
from typing import Any

from pushgres.config import AppConfig, CapRule, PoolConfig, QuietHours
from pushgres.models import ClaimedRow
from pushgres.pipeline.guardrails import (
    CapCoverage,
    CapsAdded,
    FrequencyCaps,
    LedgerRecord,
    Timing,
    category_policies,
)
from pushgres.pipeline.stages import NotSendable, Stage, run_stages

BATCH = 500
BATCHES = 200
ROUNDS = 5
PEOPLE = 20_000
APP = "ios"
KIND = f"{APP}/"


class _Ledger:
    """The caps' ledger in memory: what ``Claim.lock_caps`` and ``write_caps`` return and take."""

    def __init__(self, now: dt.datetime) -> None:
        earlier = [(now - dt.timedelta(hours=5)).timestamp()]
        self.earlier = earlier

    async def lock_caps(self, subjects: Sequence[str]) -> Sequence[LedgerRecord]:
        # Everyone has one message counted five hours ago: the daily cap has room, and the
        # cooldown's window has passed.
        return [(subject, list(self.earlier), [1], [KIND]) for subject in subjects]

    async def write_caps(self, now: float, keep_s: float, added: CapsAdded) -> None:
        return None


def _rows(now: dt.datetime, start: int) -> list[ClaimedRow]:
    rows = []
    for i in range(start, start + BATCH):
        extra: dict[str, Any] = {"user_id": f"user-{i % PEOPLE}"}
        if i % 20 == 0:
            extra["local_send_at"] = dt.datetime(2026, 1, 1, 9)
            extra["timezone"] = "Europe/Paris"
        rows.append(
            ClaimedRow.fresh(
                id=i,
                app=APP,
                platform="apns",
                device_token=f"{i:064x}",
                payload="{}",
                now=now,
                **extra,
            )
        )
    return rows


def _stages(guardrails: bool) -> list[Stage]:
    pool = PoolConfig(host="localhost", port=443, server_hostname="localhost")
    if not guardrails:
        app = AppConfig(name=APP, platform="apns", pool=pool)
        return [NotSendable(), Timing(app, category_policies(app, {}, []))]
    app = AppConfig(
        name=APP,
        platform="apns",
        pool=pool,
        quiet_hours=QuietHours(dt.time(21), dt.time(8)),
        timezone="Europe/Paris",
    )
    caps = [
        CapRule(name="daily", apps=frozenset({APP}), categories=None, limit=3, window_s=86400),
        CapRule(
            name="cooldown",
            apps=frozenset({APP}),
            categories=None,
            limit=1,
            window_s=600,
            over="defer",
        ),
    ]
    policies = category_policies(app, {}, caps)
    return [NotSendable(), Timing(app, policies), FrequencyCaps(policies, CapCoverage({}, caps))]


async def _time(guardrails: bool, batches: list[list[ClaimedRow]], now: dt.datetime) -> float:
    stages = _stages(guardrails)
    ledger = _Ledger(now)
    started = time.process_time()
    for rows in batches:
        await run_stages(stages, list(rows), now, ledger)
    return (time.process_time() - started) / (len(batches) * BATCH) * 1e6


async def _measure() -> dict[str, Any]:
    now = dt.datetime(2026, 7, 1, 10, tzinfo=dt.UTC)  # noon in Paris: outside quiet hours
    batches = [_rows(now, 1 + b * BATCH) for b in range(BATCHES)]
    off, on = [], []
    for _ in range(ROUNDS):
        for rows in batches:  # the stages set each row's category: start each round afresh
            for row in rows:
                row.category = None
        off.append(await _time(False, batches, now))
        on.append(await _time(True, batches, now))
    return {
        "batch": BATCH,
        "notifications": BATCHES * BATCH,
        "rounds": ROUNDS,
        "off_us": min(off),
        "on_us": min(on),
        "guardrails_us": min(on) - min(off),
    }


def run_guardrails() -> dict[str, Any]:
    """µs of daemon CPU per notification through the stages, guardrails off and on."""
    return asyncio.run(_measure())
