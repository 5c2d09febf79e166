"""A lane's logic on the in-memory store and the fake sender: stages, decisions, stragglers, drain.

No network and no PostgreSQL (``pushgres.testing``); the same flows against the real store and
the provider simulators are in ``tests/integration``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import functools
import random
import time
from collections.abc import AsyncIterator, Callable, Sequence

import pytest

from pushgres.config import RetryConfig
from pushgres.exceptions import StoreError
from pushgres.models import (
    Action,
    ClaimedRow,
    InvalidToken,
    Outcome,
    Requeue,
    ResultRecord,
    Status,
)
from pushgres.pipeline import lane as lane_module
from pushgres.pipeline.capacity import MAX_BATCHES_PER_LANE, Capacity
from pushgres.pipeline.decide import Decision
from pushgres.pipeline.guardrails import CapStore
from pushgres.pipeline.lane import Lane, LaneSettings
from pushgres.pipeline.observer import Observer, Observers, StatsObserver
from pushgres.pipeline.stages import NotSendable, Stage, run_stages
from pushgres.testing import (
    INTERRUPTED,
    STRAGGLE,
    TIMED_OUT,
    FakeSender,
    Late,
    ManualClock,
    MemoryClaim,
    MemoryStore,
    memory_shard,
    sent,
)

APP = "app"
RETRY = RetryConfig(base_s=1.0, max_s=10.0, quota_default_s=60.0)
TIMEOUT_S = 5.0
RESERVED_DB_CONNECTIONS = 3  # as in daemon.py (not imported: it wires the real providers)
UNREGISTERED = Outcome(action=Action.DEAD, provider_status=410, reason="Unregistered")
BAD_PAYLOAD = Outcome(action=Action.FIX, provider_status=400, reason="PayloadTooLarge")
UNAVAILABLE = Outcome(
    action=Action.WAIT, provider_status=503, reason="ServiceUnavailable", retry_after_s=30.0
)


@dataclasses.dataclass
class Rig:
    store: MemoryStore
    clock: ManualClock
    sender: FakeSender
    lane: Lane
    stopping: asyncio.Event
    abort: asyncio.Future[None]
    observer: StatsObserver

    @property
    def capacity(self) -> Capacity:
        return self.lane.capacity

    def stop(self) -> None:
        """What ``Daemon.stop`` does for each lane."""
        self.stopping.set()
        self.lane.poke()


def rig(
    handler: Callable[[ClaimedRow], Outcome | Late] = sent,
    *,
    streams: int = 100,
    batch_size: int = 10,
    pool_size: int = 10,
    rate_limit_per_s: float | None = None,
    rate_clock: Callable[[], float] | None = None,
    stages: Sequence[Stage] | None = None,
    observers: Sequence[Observer] = (),
) -> Rig:
    """A lane built as ``Daemon._build_lanes`` builds one, on the fakes."""
    clock = ManualClock()
    store = MemoryStore(clock=clock)
    sender = FakeSender(handler, streams=streams)
    stopping = asyncio.Event()
    abort: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    stats = StatsObserver()
    settings = LaneSettings(
        batch_size=batch_size,
        poll_interval_s=0.01,
        notify_min_interval_s=0.0,
        request_timeout_s=TIMEOUT_S,
    )
    lane = Lane(
        APP,
        sender=sender,
        store=store,
        settings=settings,
        retry=RETRY,
        capacity=Capacity(
            sender.capacity,
            batch_size=batch_size,
            rate_limit_per_s=rate_limit_per_s,
            clock=rate_clock or time.monotonic,  # the default, unless a test holds time still
        ),
        stages=[NotSendable()] if stages is None else stages,
        observer=Observers([stats, *observers]),  # as the daemon wires its observers
        batch_slots=asyncio.Semaphore(max(1, pool_size - RESERVED_DB_CONNECTIONS)),
        stopping=stopping,
        abort=abort,
        rng=random.Random(7),
    )
    return Rig(store, clock, sender, lane, stopping, abort, stats)


@contextlib.asynccontextmanager
async def running(r: Rig) -> AsyncIterator[None]:
    """Run the lane for the block; then stop, drain, and check nothing is lost or left over."""
    async with asyncio.timeout(10), asyncio.TaskGroup() as tg:
        tg.create_task(r.lane.run(tg), name="claimer")
        try:
            yield
        except BaseException:
            r.stop()
            r.sender.release()
            raise
        r.stop()
        await r.lane.wait_idle()
    assert (r.capacity.in_flight, r.capacity.batches) == (0, 0)
    assert not r.lane.is_busy
    r.store.check()


async def until(condition: Callable[[], object], timeout_s: float = 3.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not condition():
            await asyncio.sleep(0.001)


async def quiet() -> None:
    """Long enough for the lane to do what it would (several polling intervals)."""
    await asyncio.sleep(0.05)


def statuses(store: MemoryStore) -> dict[int, str]:
    return {r.row.id: r.status for r in store.results}


def lease_reason() -> str:
    return f"RequestTimeout: no response within {TIMEOUT_S:g}s"


# -- the fakes themselves ---------------------------------------------------------------------


async def test_memory_store_claims_shard_by_shard_in_the_order_given() -> None:
    store = MemoryStore()
    by_shard: dict[int, list[int]] = {}
    for n in range(40):
        token = f"device-{n}"
        by_shard.setdefault(memory_shard(token), []).append(store.add(device_token=token))
    a, b = sorted(by_shard, key=lambda s: -len(by_shard[s]))[:2]
    async with store.claim(APP, len(by_shard[a]) + 1, (b, a)) as claim:
        ids = [r.id for r in claim.rows]
    # All of the first shard, in order, then the first row of the second: nothing else.
    assert ids == [*by_shard[b], by_shard[a][0]]
    async with store.claim(APP, 100, (a,)) as claim:
        assert [r.id for r in claim.rows] == by_shard[a][1:]


async def test_memory_store_claims_ready_rows_by_priority_send_at_and_id() -> None:
    clock = ManualClock()
    store = MemoryStore(clock=clock)
    now = clock()
    add = functools.partial(store.add, device_token="one-device")  # one shard
    later = add(send_at=now + dt.timedelta(seconds=5))
    low = add(priority=5)
    old = add(send_at=now - dt.timedelta(seconds=1))
    first, second = add(), add()
    other = store.add("other", device_token="one-device")
    async with store.claim(APP, 3) as claim:
        assert [r.id for r in claim.rows] == [old, first, second]
        assert set(store.in_claims) == {old, first, second}
        await claim.write(
            [ResultRecord(row, Status.SENT, 200, None, None, 1) for row in claim.rows], [], []
        )
        assert store.results == []  # not before the commit
    assert [r.row.id for r in store.results] == [old, first, second]
    clock.advance(5)
    with pytest.raises(RuntimeError):
        async with store.claim(APP, 10) as claim:
            assert [r.id for r in claim.rows] == [later, low]  # 10 > 5 first, then by send_at
            raise RuntimeError("roll back")
    assert set(store.queued) == {later, low, other}
    store.check()
    with pytest.raises(AssertionError, match="not queued, 0 results"):
        async with store.claim(APP, 1):
            pass  # claimed, nothing written: the commit loses the row
        store.check()


async def test_memory_store_rolls_back_on_an_exception() -> None:
    store = MemoryStore()
    ids = store.add_many(3)
    before = store.queued
    with pytest.raises(RuntimeError):
        async with store.claim(APP, 10) as claim:
            await claim.write([], [Requeue(claim.rows[0], 0.0, "x", 1)], [])
            raise RuntimeError("boom")
    assert store.queued == before and set(store.queued) == set(ids)
    store.fail_next("write")
    with pytest.raises(StoreError):
        async with store.claim(APP, 10) as claim:
            await claim.write(
                [ResultRecord(claim.rows[0], Status.SENT, 200, None, None, 1)], [], []
            )
    assert store.queued == before and store.results == []
    store.check()


async def test_memory_store_takes_back_only_rows_still_leased_with_that_attempt() -> None:
    store = MemoryStore()
    a, b, c = store.add_many(3)
    async with store.claim(APP, 10) as claim:
        rows = {r.id: r for r in claim.rows}
        leases = [Requeue(rows[i], 60.0, "lease", 1) for i in (a, b)]
        await claim.write([], [*leases, Requeue(rows[c], 0.0, "lease ran out", 1)], [])
    async with store.claim(APP, 10) as claim:  # c is claimed again and put back meanwhile
        assert [r.id for r in claim.rows] == [c]
        await claim.write([], [Requeue(claim.rows[0], 60.0, "lease", 2)], [])
    results = [ResultRecord(rows[i], Status.SENT, 200, None, None, 1) for i in (a, b, c)]
    ours = await store.take_back([rows[a], rows[c]], results, [], [])
    assert ours == {a}
    assert [r.row.id for r in store.results] == [a]  # b was not handed back; c not ours
    assert set(store.queued) == {b, c} and store.queued[c].attempts == 2
    store.check()


async def test_fake_sender_answers_stragglers_exactly_once() -> None:
    answers: dict[int, Outcome | Late] = {1: STRAGGLE, 2: Late(UNREGISTERED, after_s=0.0)}
    sender = FakeSender(lambda row: answers.get(row.id) or sent(row))
    rows = [_row(1), _row(2), _row(3)]
    now = dt.datetime.now(dt.UTC)
    async with sender:
        # Without on_late the batch waits for its answers (none comes for a straggler).
        assert await sender.send_batch(rows, now=now) == [TIMED_OUT, UNREGISTERED, sent(rows[2])]
        late: list[tuple[int, Outcome]] = []
        outcomes = await sender.send_batch(rows, now=now, on_late=lambda i, o: late.append((i, o)))
        assert outcomes == [None, None, sent(rows[2])]
        assert sender.in_flight == 2
        await until(lambda: late == [(1, UNREGISTERED)])
        assert [row.id for row in sender.stragglers] == [1]
    assert late == [(1, UNREGISTERED), (0, INTERRUPTED)]  # closing cut the last one off
    assert sender.answer_stragglers(sent) == 0 and sender.in_flight == 0


# -- stages -------------------------------------------------------------------------------------


def _row(row_id: int, **fields: object) -> ClaimedRow:
    values: dict[str, object] = {
        "app": APP,
        "platform": "apns",
        "device_token": f"token-{row_id}",
        "payload": "{}",
        **fields,
    }
    return ClaimedRow.fresh(id=row_id, now=dt.datetime.now(dt.UTC), **values)  # type: ignore[arg-type]


async def test_not_sendable_settles_expired_dead_token_and_exhausted_rows() -> None:
    rows = [
        _row(1),
        _row(2, is_expired=True),
        _row(3, is_token_invalid=True),
        _row(4, attempts=5, max_attempts=5, last_reason=lease_reason()),
        _row(5, attempts=3, max_attempts=3),
        _row(6, attempts=4, max_attempts=5),
    ]
    keep, settled = await NotSendable().sift(rows, dt.datetime.now(dt.UTC), _no_claim())
    assert [r.id for r in keep] == [1, 6]
    found = {d.result.row.id: d.result for d in settled if d.result is not None}
    assert len(found) == len(settled) == 4
    assert all(d.requeue is None and d.invalid_token is None for d in settled)
    assert (found[2].status, found[2].reason) == (Status.EXPIRED, "Expired")
    assert (found[3].status, found[3].reason) == (Status.TOKEN_INVALID, "TokenInvalidated")
    assert (found[4].status, found[4].reason) == (Status.FAILED, lease_reason())
    assert (found[5].status, found[5].reason) == (Status.FAILED, "NoAnswer")
    assert [found[i].attempts for i in (2, 3, 4, 5)] == [0, 0, 5, 3]  # no attempt made


class QuietHours:
    """A custom stage: defers rows for ``night-`` tokens, fails ``blocked-`` ones."""

    name = "quiet-hours"

    def __init__(self) -> None:
        self.seen: list[int] = []

    async def sift(
        self, rows: list[ClaimedRow], now: dt.datetime, claim: CapStore
    ) -> tuple[list[ClaimedRow], list[Decision]]:
        self.seen += [r.id for r in rows]
        keep: list[ClaimedRow] = []
        settled: list[Decision] = []
        for row in rows:
            if row.device_token.startswith("night-"):
                settled.append(Decision(requeue=Requeue(row, 3600.0, "QuietHours", row.attempts)))
            elif row.device_token.startswith("blocked-"):
                result = ResultRecord(row, Status.FAILED, None, "Blocked", None, row.attempts)
                settled.append(Decision(result=result))
            else:
                keep.append(row)
        return keep, settled


def _no_claim() -> MemoryClaim:
    return MemoryClaim([], MemoryStore())


async def test_run_stages_in_order_and_stops_once_nothing_is_left() -> None:
    quiet_hours, after = QuietHours(), QuietHours()
    rows = [_row(1, is_expired=True), _row(2, device_token="night-2"), _row(3)]
    now = dt.datetime.now(dt.UTC)
    keep, settled = await run_stages([NotSendable(), quiet_hours], rows, now, _no_claim())
    assert [r.id for r in keep] == [3] and len(settled) == 2
    assert quiet_hours.seen == [2, 3]  # the expired row was settled before it
    keep, settled = await run_stages(
        [NotSendable(), after], [_row(4, is_expired=True)], now, _no_claim()
    )
    assert keep == [] and len(settled) == 1 and after.seen == []


async def test_lane_settles_unsendable_rows_without_sending_them() -> None:
    r = rig()
    now = r.clock()
    r.store.invalidate_token(APP, "dead", reason="Unregistered")
    r.clock.advance(1)
    expired = r.store.add(expires_at=now)
    dead = r.store.add(device_token="dead")
    exhausted = r.store.add(attempts=5, max_attempts=5, last_reason=lease_reason())
    good = r.store.add()
    async with running(r):
        await until(lambda: len(r.store.results) == 4)
    assert statuses(r.store) == {
        expired: Status.EXPIRED,
        dead: Status.TOKEN_INVALID,
        exhausted: Status.FAILED,
        good: Status.SENT,
    }
    assert r.store.result(dead).reason == "TokenInvalidated"
    assert r.store.result(exhausted).reason == lease_reason()
    assert [row.id for row in r.sender.sent] == [good]


async def test_lane_with_a_custom_stage_that_defers_and_fails_rows() -> None:
    stage = QuietHours()
    r = rig(stages=[NotSendable(), stage])
    night = r.store.add(device_token="night-1", attempts=1, last_reason="ServiceUnavailable")
    blocked = r.store.add(device_token="blocked-1")
    day = r.store.add()
    async with running(r):
        await until(lambda: len(r.store.results) == 2)
        await quiet()
    assert statuses(r.store) == {blocked: Status.FAILED, day: Status.SENT}
    assert r.store.result(blocked).reason == "Blocked"
    deferred = r.store.queued[night]
    assert deferred.send_at == r.clock() + dt.timedelta(seconds=3600)
    assert (deferred.attempts, deferred.last_reason) == (1, "QuietHours")
    assert [row.id for row in r.sender.sent] == [day]


# -- draining a queue ---------------------------------------------------------------------------


async def test_lane_drains_the_queue_in_batches() -> None:
    r = rig(batch_size=10)
    ids = r.store.add_many(25)
    async with running(r):
        await until(lambda: len(r.store.results) == 25)
    assert set(statuses(r.store)) == set(ids)
    assert all(res.status == Status.SENT and res.attempts == 1 for res in r.store.results)
    assert all(res.provider_id == f"fake-{res.row.id}" for res in r.store.results)
    assert r.store.queued == {}
    assert all(len(batch) <= 10 for batch in r.sender.batches)
    assert sorted(row.id for row in r.sender.sent) == ids  # each sent once
    assert r.observer.stats.claimed == 25 and r.observer.stats.outcomes == {"sent": 25}


async def test_every_outcome_kind_goes_through_decide() -> None:
    answers = {"dead": UNREGISTERED, "fix": BAD_PAYLOAD}

    def handler(row: ClaimedRow) -> Outcome:
        if row.device_token == "retry" and row.attempts == 0:
            return UNAVAILABLE
        return answers.get(row.device_token) or sent(row)

    r = rig(handler)
    ok = r.store.add(device_token="ok")
    dead = r.store.add(device_token="dead")
    fix = r.store.add(device_token="fix")
    retry = r.store.add(device_token="retry")
    async with running(r):
        await until(lambda: len(r.store.results) == 3 and retry in r.store.queued)
        assert statuses(r.store) == {
            ok: Status.SENT,
            dead: Status.TOKEN_INVALID,
            fix: Status.FAILED,
        }
        assert r.store.result(dead).reason == "Unregistered"
        assert r.store.result(fix).reason == "PayloadTooLarge"
        assert set(r.store.invalid_tokens) == {(APP, "dead")}
        retried = r.store.queued[retry]
        assert (retried.attempts, retried.last_reason) == (1, "ServiceUnavailable")
        wait = (retried.send_at - r.clock()).total_seconds()
        assert 30.0 <= wait <= 31.0  # Retry-After, plus jitter
        await quiet()
        assert retry not in statuses(r.store)  # not before its time
        r.clock.advance(31)
        # A notification enqueued after the token died is not sent at all.
        again = r.store.add(device_token="dead")
        await until(lambda: len(r.store.results) == 5)
    assert r.store.result(retry).status == Status.SENT
    assert r.store.result(retry).attempts == 2
    assert r.store.result(again).status == Status.TOKEN_INVALID
    assert r.store.result(again).reason == "TokenInvalidated"
    assert [row.device_token for row in r.sender.sent].count("dead") == 1


async def test_a_failed_write_puts_the_batch_back_and_it_is_sent_again() -> None:
    r = rig()
    ids = r.store.add_many(4)
    r.store.fail_next("write")
    async with running(r):
        await until(lambda: len(r.store.results) == 4)
    assert sorted(row.id for row in r.sender.sent) == sorted(ids * 2)
    assert all(res.attempts == 1 for res in r.store.results)  # the lost write counted nothing


async def test_a_failed_claim_is_retried(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lane_module, "STORE_RETRY_S", 0.01)
    r = rig()
    r.store.add_many(3)
    r.store.fail_next("claim")
    async with running(r):
        await until(lambda: len(r.store.results) == 3)


# -- capacity, as the lane uses it -------------------------------------------------------------


async def test_lane_claims_one_batch_beyond_its_streams() -> None:
    r = rig(streams=10, batch_size=10)
    r.store.add_many(50)
    async with running(r):
        r.sender.hold()
        await r.sender.wait_held(2)
        await quiet()
        assert r.sender.held == 2 and len(r.sender.sent) == 20
        assert (r.capacity.in_flight, r.capacity.batches) == (20, 2)
        r.sender.release()
        await until(lambda: len(r.store.results) == 50)


async def test_lane_has_at_most_max_batches_on_the_wire() -> None:
    r = rig(streams=1000, batch_size=5, pool_size=20)
    r.store.add_many(100)
    async with running(r):
        r.sender.hold()
        await r.sender.wait_held(MAX_BATCHES_PER_LANE)
        await quiet()
        assert r.sender.held == MAX_BATCHES_PER_LANE == r.capacity.batches
        r.sender.release()
        await until(lambda: len(r.store.results) == 100)


async def test_rate_limit_paces_the_lane() -> None:
    monotonic = [0.0]
    r = rig(rate_limit_per_s=50.0, rate_clock=lambda: monotonic[0], batch_size=10)
    r.store.add_many(120)
    async with running(r):
        await until(lambda: len(r.store.results) == 50)
        await quiet()
        assert len(r.sender.sent) == 50  # the clock stands still: no more tokens
        monotonic[0] += 1.0
        await until(lambda: len(r.store.results) == 100)
        await quiet()
        assert len(r.sender.sent) == 100
        monotonic[0] += 1.0
        await until(lambda: len(r.store.results) == 120)


async def test_claims_finding_fewer_rows_give_their_tokens_back() -> None:
    r = rig(rate_limit_per_s=100.0, rate_clock=lambda: 0.0, batch_size=50)
    r.store.add_many(10)
    async with running(r):
        await until(lambda: len(r.store.results) == 10)
        await quiet()  # the lane goes on granting and claiming nothing
    assert r.store.claims > 1
    bucket = r.capacity.bucket
    assert bucket is not None and bucket.take(1000) == 90  # only the 10 sent are spent


# -- stragglers -------------------------------------------------------------------------------


def straggling(ids: set[int]) -> Callable[[ClaimedRow], Outcome | Late]:
    """Hold back the first attempt of the rows ``ids``; send everything else."""

    def handler(row: ClaimedRow) -> Outcome | Late:
        return STRAGGLE if row.id in ids and row.attempts == 0 else sent(row)

    return handler


async def test_stragglers_are_leased_while_their_batch_is_written() -> None:
    r = rig(straggling({3, 7}))
    r.store.add_many(10)
    async with running(r):
        await until(lambda: len(r.store.results) == 8)
        assert set(r.store.queued) == {3, 7}
        for lease in r.store.queued.values():
            assert lease.attempts == 1 and lease.last_reason == lease_reason()
            assert lease.send_at == r.clock() + dt.timedelta(seconds=r.lane.lease_s)
        assert r.lane.lease_s == TIMEOUT_S + lane_module.LEASE_MARGIN_S
        await quiet()
        assert r.capacity.in_flight == 2  # each straggler keeps its slot until answered
        assert r.lane.is_busy
        r.sender.answer_stragglers(lambda row: UNREGISTERED if row.id == 7 else sent(row))
        await until(lambda: len(r.store.results) == 10)
        assert r.capacity.in_flight == 0
    assert r.store.queued == {}
    assert r.store.result(3).status == Status.SENT and r.store.result(3).attempts == 1
    assert r.store.result(7).status == Status.TOKEN_INVALID
    assert set(r.store.invalid_tokens) == {(APP, "token-7")}
    assert len(r.sender.sent) == 10


async def test_a_late_retry_answer_replaces_the_lease() -> None:
    r = rig(straggling({1}))
    r.store.add_many(2)
    async with running(r):
        await until(lambda: len(r.store.results) == 1 and r.sender.stragglers)
        r.sender.answer_stragglers(UNAVAILABLE)
        await until(lambda: r.store.take_backs == 1)
        retried = r.store.queued[1]
        assert (retried.attempts, retried.last_reason) == (1, "ServiceUnavailable")
        assert 30 <= (retried.send_at - r.clock()).total_seconds() <= 31
        r.clock.advance(31)
        await until(lambda: len(r.store.results) == 2)
    assert r.store.result(1).attempts == 2


async def test_a_late_answer_that_comes_before_the_commit_waits_for_it() -> None:
    r = rig(lambda row: Late(sent(row), after_s=0.0) if row.id == 2 else sent(row))
    r.store.add_many(3)
    r.store.hold("commit")
    async with running(r):
        await until(lambda: len(r.sender.late) == 1 and r.store.waiting["commit"] == 1)
        await quiet()
        assert r.store.take_backs == 0 and r.store.results == []
        r.store.release("commit")
        await until(lambda: len(r.store.results) == 3)
    assert r.store.result(2).attempts == 1 and r.store.queued == {}
    assert r.store.take_backs == 1


async def test_a_late_timeout_leaves_the_lease_to_run_out() -> None:
    r = rig(straggling({1}))
    r.store.add_many(3)
    async with running(r):
        await until(lambda: len(r.store.results) == 2 and r.sender.stragglers)
        lease = r.store.queued[1]
        r.sender.answer_stragglers(TIMED_OUT)
        await until(lambda: r.capacity.in_flight == 0 and not r.lane.is_busy)
        await quiet()
        assert r.store.queued == {1: lease}  # no write for a timeout
        assert r.store.take_backs == 0
        r.clock.advance(r.lane.lease_s)  # the lease runs out: claimed and sent again
        await until(lambda: len(r.store.results) == 3)
    assert r.store.result(1).status == Status.SENT
    assert r.store.result(1).attempts == 2
    assert [row.id for row in r.sender.sent].count(1) == 2


async def test_a_late_answer_after_the_lease_ran_out_is_dropped() -> None:
    r = rig(straggling({1}))
    r.store.add(max_attempts=5)
    async with running(r):
        await until(lambda: 1 in r.store.queued and r.sender.stragglers)
        r.clock.advance(r.lane.lease_s)
        await until(lambda: len(r.store.results) == 1)  # claimed again, sent
        r.sender.answer_stragglers(sent)
        await until(lambda: r.store.take_backs == 1 and not r.lane.is_busy)
    assert r.store.result(1).attempts == 2  # one result: the second attempt's
    assert len(r.sender.late) == 1
    assert r.observer.stats.outcomes == {"sent": 1}  # observers see what was written


class Written:
    """An observer keeping what each ``written`` event reported."""

    def __init__(self) -> None:
        self.results: list[ResultRecord] = []
        self.requeues: list[Requeue] = []
        self.invalid: list[InvalidToken] = []

    def claimed(self, app: str, rows: int, seconds: float) -> None:
        pass

    def sent(self, app: str, outcomes: Sequence[Outcome], seconds: float) -> None:
        pass

    def written(
        self,
        app: str,
        results: Sequence[ResultRecord],
        requeues: Sequence[Requeue],
        invalid: Sequence[InvalidToken],
        seconds: float,
    ) -> None:
        self.results += results
        self.requeues += requeues
        self.invalid += invalid


async def test_observers_see_only_the_dead_tokens_a_late_answer_wrote() -> None:
    written = Written()
    r = rig(lambda row: STRAGGLE if row.attempts == 0 else UNREGISTERED, observers=[written])
    r.store.add()
    async with running(r):
        await until(lambda: 1 in r.store.queued and r.sender.stragglers)
        r.clock.advance(r.lane.lease_s)  # the lease runs out: sent again, the token is dead
        await until(lambda: len(r.store.results) == 1)
        r.sender.answer_stragglers(UNREGISTERED)  # the first attempt's answer: not ours now
        await until(lambda: r.store.take_backs == 1 and not r.lane.is_busy)
    assert len(r.store.invalid_tokens) == 1 and len(written.results) == 1
    assert len(written.invalid) == 1


async def test_a_late_answer_not_recorded_leaves_the_lease() -> None:
    r = rig(straggling({1}))
    r.store.add_many(2)
    r.store.fail_next("take_back")
    async with running(r):
        await until(lambda: len(r.store.results) == 1 and r.sender.stragglers)
        lease = r.store.queued[1]
        r.sender.answer_stragglers(sent)
        await until(lambda: r.capacity.in_flight == 0 and not r.lane.is_busy)
        await quiet()
        assert r.store.queued == {1: lease}
        r.clock.advance(r.lane.lease_s)
        await until(lambda: len(r.store.results) == 2)
    assert r.store.result(1).attempts == 2


async def test_a_late_answer_of_a_batch_whose_write_failed_is_dropped() -> None:
    r = rig(straggling({2}))
    ids = r.store.add_many(4)
    before = r.store.queued
    r.sender.hold()
    r.store.fail_next("write")
    async with running(r):
        await r.sender.wait_held(1)
        r.stop()  # nothing is claimed again: the rows stay as the rollback leaves them
        r.sender.release()
        await until(lambda: set(r.store.queued) == set(ids) and r.sender.stragglers)
        assert r.store.queued == before
        r.sender.answer_stragglers(sent)
        await r.lane.wait_idle()
    assert r.store.queued == before  # back as they were: attempts 0, same send_at
    assert r.store.results == [] and r.store.take_backs == 0
    assert len(r.sender.late) == 1


# -- drain --------------------------------------------------------------------------------------


async def test_wait_idle_returns_once_the_batch_on_the_wire_is_written() -> None:
    r = rig()
    r.store.add_many(5)
    r.sender.hold()
    async with running(r):
        await r.sender.wait_held(1)
        r.stop()
        idle = asyncio.create_task(r.lane.wait_idle())
        await quiet()
        assert not idle.done()
        r.sender.release()
        await idle
        assert len(r.store.results) == 5
        assert r.capacity.in_flight == 0


async def test_wait_idle_returns_once_the_stragglers_are_answered() -> None:
    r = rig(straggling({1}))
    r.store.add_many(3)
    async with running(r):
        await until(lambda: len(r.store.results) == 2 and r.sender.stragglers)
        r.stop()
        idle = asyncio.create_task(r.lane.wait_idle())
        await quiet()
        assert not idle.done()
        r.sender.answer_stragglers(sent)
        await idle
        assert len(r.store.results) == 3 and r.store.queued == {}


async def test_wait_idle_returns_only_once_the_late_answers_are_written() -> None:
    r = rig(straggling({1}))
    r.store.add_many(2)
    async with running(r):
        await until(lambda: len(r.store.results) == 1 and r.sender.stragglers)
        r.store.hold("take_back")
        r.sender.answer_stragglers(sent)
        await until(lambda: r.store.waiting["take_back"] == 1)
        r.stop()
        idle = asyncio.create_task(r.lane.wait_idle())
        await quiet()
        done_early = idle.done()
        r.store.release("take_back")
        await idle
        assert not done_early, "wait_idle returned with a late answer not written yet"
    assert len(r.store.results) == 2


async def test_abort_interrupts_held_sends_and_their_rows_go_back_as_they_were() -> None:
    r = rig(straggling({1}))
    r.store.add_many(4)
    async with running(r):
        await until(lambda: len(r.store.results) == 3 and r.sender.stragglers)
        r.sender.hold()
        held = r.store.add_many(3, last_reason="ServiceUnavailable", attempts=2)
        r.lane.wake()
        await r.sender.wait_held(1)
        r.stop()
        idle = asyncio.create_task(r.lane.wait_idle())
        await quiet()
        assert not idle.done()
        r.abort.set_result(None)  # the shutdown deadline passed
        await idle
    assert set(r.store.queued) == {1, *held}
    assert all(row.send_at == r.clock() for row in r.store.queued.values())
    assert r.store.queued[1].attempts == 0 and r.store.queued[1].last_reason == "Interrupted"
    for row_id in held:
        row = r.store.queued[row_id]
        assert (row.attempts, row.last_reason) == (2, "ServiceUnavailable")
    assert [o for _, o in r.sender.late] == [INTERRUPTED]
    assert len(r.store.results) == 3
