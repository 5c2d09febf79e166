"""Migrations, plain-SQL and API enqueue, CHECK constraints, dedupe, outcomes (real Postgres)."""

from __future__ import annotations

import asyncio
import datetime as dt

import asyncpg
import pytest

import pushgres
from pushgres.db.migrate import SCHEMA_VERSION, check_schema, migrate
from pushgres.exceptions import EnqueueError, SchemaError

TOKEN = "ab" * 32


async def test_migrate_is_idempotent_and_safe_concurrently(empty_dsn: str) -> None:
    conns = [await asyncpg.connect(empty_dsn) for _ in range(3)]
    try:
        applied = await asyncio.gather(*(migrate(c) for c in conns))
        assert sorted(len(a) for a in applied) == [0, 0, SCHEMA_VERSION]
        assert await check_schema(conns[0]) == SCHEMA_VERSION
        assert await migrate(conns[0]) == []
    finally:
        for c in conns:
            await c.close()


async def test_check_schema_refuses_missing_and_newer(empty_dsn: str) -> None:
    conn = await asyncpg.connect(empty_dsn)
    try:
        with pytest.raises(SchemaError, match="pushgres migrate"):
            await check_schema(conn)
        await migrate(conn)
        await conn.execute(
            "INSERT INTO pushgres.schema_migrations (version, name) VALUES ($1, 'future')",
            SCHEMA_VERSION + 1,
        )
        with pytest.raises(SchemaError, match="upgrade pushgres"):
            await check_schema(conn)
        with pytest.raises(SchemaError, match="newer"):
            await migrate(conn)
    finally:
        await conn.close()


async def test_plain_insert_with_defaults(conn: asyncpg.Connection) -> None:
    nid = await conn.fetchval(
        "INSERT INTO pushgres.queue (app, platform, device_token, payload) "
        "VALUES ('ios', 'apns', $1, '{\"aps\":{\"alert\":\"hi\"}}') RETURNING id",
        TOKEN,
    )
    row = await conn.fetchrow("SELECT * FROM pushgres.queue WHERE id = $1", nid)
    assert row["priority"] == 10 and row["max_attempts"] == 5 and row["attempts"] == 0
    out = await pushgres.outcome(conn, [nid])
    assert out[nid].status == "queued"


@pytest.mark.parametrize(
    ("sql", "constraint"),
    [
        ("('ios', 'apns', 'zz-not-hex', '{\"aps\":{}}')", "queue_apns_token_hex"),
        ("('ios', 'apns', 'abcd', '{\"alert\":1}')", "queue_apns_payload_has_aps"),
        ("('ios', 'web', 'abcd', '{\"aps\":{}}')", "queue_platform"),
        ("('and', 'fcm', 'tok', '{\"token\":\"x\"}')", "queue_fcm_payload_no_target"),
        ("('and', 'fcm', 'tok', '[1]')", "queue_payload_object"),
        ("('bad app!', 'fcm', 'tok', '{}')", "queue_app_name"),
    ],
)
async def test_checks_reject_bad_rows_at_insert(
    conn: asyncpg.Connection, sql: str, constraint: str
) -> None:
    with pytest.raises(asyncpg.CheckViolationError) as info:
        await conn.execute(
            "INSERT INTO pushgres.queue (app, platform, device_token, payload) VALUES " + sql
        )
    assert info.value.constraint_name == constraint


async def test_invalid_json_is_rejected_at_insert(conn: asyncpg.Connection) -> None:
    with pytest.raises(asyncpg.InvalidTextRepresentationError):
        await conn.execute(
            "INSERT INTO pushgres.queue (app, platform, device_token, payload) "
            "VALUES ('ios', 'apns', 'abcd', '{not json')"
        )


async def test_sql_bulk_function_and_dedupe(conn: asyncpg.Connection) -> None:
    ids = await conn.fetch(
        "SELECT * FROM pushgres.enqueue_many($1, $2, $3, $4::jsonb[], dedupe_keys => $5)",
        ["ios", "ios", "ios"],
        ["apns"] * 3,
        [TOKEN] * 3,
        ['{"aps":{}}'] * 3,
        ["k1", "k2", "k1"],
    )
    assert len(ids) == 2
    again = await conn.fetch(
        "SELECT * FROM pushgres.enqueue_many($1, $2, $3, $4::jsonb[], dedupe_keys => $5)",
        ["ios"],
        ["apns"],
        [TOKEN],
        ['{"aps":{}}'],
        ["k2"],
    )
    assert again == []
    assert await conn.fetchval("SELECT count(*) FROM pushgres.queue") == 2


@pytest.mark.parametrize("count", [3, 2500])
async def test_python_enqueue_returns_ids_in_order_and_dedupes(
    conn: asyncpg.Connection, count: int
) -> None:
    notes = [
        pushgres.Notification(
            app="and",
            platform="fcm",
            device_token=f"tok-{i}",
            payload={"data": {"i": str(i)}},
            dedupe_key=f"d{i % (count - 1)}",
            metadata={"i": i},
            send_at=dt.datetime.now(dt.UTC),
        )
        for i in range(count)
    ]
    ids = await pushgres.enqueue(conn, notes)
    assert len(ids) == count
    assert ids[-1] == ids[0]  # same dedupe key as the first: the first's id
    assert len(set(ids)) == count - 1
    assert await conn.fetchval("SELECT count(*) FROM pushgres.queue") == count - 1
    tokens = dict(await conn.fetch("SELECT id, device_token FROM pushgres.queue"))
    assert tokens[ids[1]] == "tok-1"
    again = await pushgres.enqueue(conn, notes[:2])
    assert again == ids[:2]


async def test_python_enqueue_names_the_bad_notification(conn: asyncpg.Connection) -> None:
    good = {"app": "ios", "platform": "apns", "device_token": TOKEN, "payload": {"aps": {}}}
    bad = {**good, "payload": {"alert": "no aps"}}
    with pytest.raises(EnqueueError, match="notification 1: an APNs payload must hold"):
        await pushgres.enqueue(conn, [good, bad])
    with pytest.raises(EnqueueError, match="notification 0: unknown field"):
        await pushgres.enqueue(conn, [{**good, "colour": "red"}])
    assert await conn.fetchval("SELECT count(*) FROM pushgres.queue") == 0


async def test_enqueue_wakes_listeners_once_per_statement(
    conn: asyncpg.Connection, dsn: str
) -> None:
    listener = await asyncpg.connect(dsn)
    got: list[str] = []
    try:
        await listener.add_listener("pushgres_enqueued", lambda *a: got.append(a[2]))
        await pushgres.enqueue(
            conn,
            [
                {"app": "ios", "platform": "apns", "device_token": TOKEN, "payload": {"aps": {}}}
                for _ in range(50)
            ],
        )
        await asyncio.sleep(0.3)
        assert len(got) == 1
    finally:
        await listener.close()
