"""The delivery journal against a real PostgreSQL: what a rolled-back batch had delivered is
not sent again, and the journal empties itself."""

from __future__ import annotations

import asyncio
import datetime as dt

import asyncpg
import pytest

from pushgres.api import enqueue
from pushgres.db.store import Store
from pushgres.models import Notification, ResultRecord, Status
from pushgres.pipeline.journal import DeliveryJournal
from pushgres.pipeline.stages import NotSendable
from pushgres.simulator import devkit

APP = "ios"
BATCH = 4242
TIMEOUTS = {"idle_in_transaction_timeout_s": 60.0, "statement_timeout_s": 30.0}


class Boom(Exception):
    pass


def _apns(n: int) -> Notification:
    return Notification(
        app=APP, platform="apns", device_token=devkit.apns_token("ok", n), payload={"aps": {}}
    )


async def _three_queued(dsn: str) -> tuple[list[int], Store]:
    """Three notifications queued, and a store on their database."""
    conn = await asyncpg.connect(dsn)
    try:
        ids = await enqueue(conn, [_apns(n) for n in range(3)])
    finally:
        await conn.close()
    return ids, await Store.open(dsn, max_size=3, **TIMEOUTS)


async def test_a_delivery_written_before_a_rollback_is_recorded_not_resent(dsn: str) -> None:
    ids, store = await _three_queued(dsn)
    journal = DeliveryJournal(store)
    try:
        with pytest.raises(Boom):
            async with store.claim(APP, 10) as claim:
                assert sorted(r.id for r in claim.rows) == ids
                assert all(r.delivered_attempt is None for r in claim.rows)
                accepted = [r for r in claim.rows if r.id != ids[2]]
                for row in accepted:  # the provider accepted two; the third was in flight
                    journal.record(BATCH, row)
                writer = asyncio.get_running_loop().create_task(journal.run())
                await journal.settled()
                writer.cancel()
                raise Boom  # kill -9 before the batch commits
        async with store.claim(APP, 10) as claim:
            by_id = {r.id: r for r in claim.rows}
            assert {i: by_id[i].delivered_attempt for i in ids} == {
                ids[0]: 1,
                ids[1]: 1,
                ids[2]: None,
            }
            keep, settled = await NotSendable().sift(
                list(claim.rows), dt.datetime.now(dt.UTC), claim
            )
            assert [r.id for r in keep] == [ids[2]]  # only the one in flight is sent again
            results = [d.result for d in settled if d.result is not None]
            assert {(r.row.id, r.status, r.reason, r.attempts) for r in results} == {
                (ids[0], Status.SENT, "AcceptedBeforeRollback", 1),
                (ids[1], Status.SENT, "AcceptedBeforeRollback", 1),
            }
            sent = ResultRecord(keep[0], Status.SENT, 200, None, None, 1)
            await claim.write([*results, sent], [], [], delivered_batch=BATCH)
        conn = await asyncpg.connect(dsn)
        try:
            # The batch's commit forgot its deliveries; every row has one result.
            assert await conn.fetchval("SELECT count(*) FROM pushgres.delivered") == 0
            assert await conn.fetchval("SELECT count(*) FROM pushgres.results") == 3
        finally:
            await conn.close()
    finally:
        await store.close()


async def test_maintenance_prunes_deliveries_whose_rows_left_the_queue(dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        (queued,) = await enqueue(conn, [_apns(7)])
        await conn.execute(
            "INSERT INTO pushgres.delivered (batch, ids, attempts, written_at) VALUES "
            "(1, $1, '{1}', now() - interval '1 hour'), "  # a row still queued: kept
            "(2, $2, '{1,1}', now() - interval '1 hour'), "  # committed, never forgotten
            "(3, $2, '{1,1}', now())",  # recent: kept (its batch may still commit)
            [queued],
            [queued + 1000, queued + 1001],
        )
        store = await Store.open(dsn, max_size=2, **TIMEOUTS)
        try:
            await store.maintenance(
                retention_days=7, dedupe_retention_days=7, device_retention_days=30
            )
        finally:
            await store.close()
        left = [r["batch"] for r in await conn.fetch("SELECT batch FROM pushgres.delivered")]
    finally:
        await conn.close()
    assert sorted(left) == [1, 3]


async def test_deliveries_of_a_batch_in_flight_are_not_read_by_other_claims(dsn: str) -> None:
    ids, store = await _three_queued(dsn)
    try:
        with pytest.raises(Boom):
            async with store.claim(APP, 1, delivered_batch=BATCH) as live:
                [mine] = [r.id for r in live.rows]
                other_id, third = [i for i in ids if i != mine]
                # Written under the live batch's key (as a late answer's could be).
                await store.write_delivered([(BATCH, [other_id], [1])])
                with pytest.raises(Boom):
                    async with store.claim(APP, 10) as other:
                        by_id = {r.id: r.delivered_attempt for r in other.rows}
                        assert by_id == {other_id: None, third: None}  # its key is locked
                        raise Boom
                raise Boom  # the live batch ends without committing
        async with store.claim(APP, 10) as after:
            by_id = {r.id: r.delivered_attempt for r in after.rows}
        assert by_id == {mine: None, other_id: 1, third: None}
    finally:
        await store.close()
