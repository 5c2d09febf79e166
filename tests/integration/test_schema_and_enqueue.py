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


async def test_sql_bulk_function_reports_every_element_and_its_duplicates(
    conn: asyncpg.Connection,
) -> None:
    rows = await conn.fetch(
        "SELECT * FROM pushgres.enqueue_many($1, $2, $3, $4::jsonb[], dedupe_keys => $5)",
        ["ios"] * 4,
        ["apns"] * 4,
        [TOKEN] * 4,
        ['{"aps":{}}'] * 4,
        ["k1", "k2", "k1", None],
    )
    assert [tuple(r) for r in rows] == [
        (1, rows[0]["id"], False),
        (2, rows[1]["id"], False),
        (3, rows[0]["id"], True),  # the same key as element 1 in the same call
        (4, rows[3]["id"], False),
    ]
    assert len({rows[0]["id"], rows[1]["id"], rows[3]["id"]}) == 3
    again = await conn.fetch(
        "SELECT * FROM pushgres.enqueue_many($1, $2, $3, $4::jsonb[], dedupe_keys => $5)",
        ["ios", "ios"],
        ["apns", "apns"],
        [TOKEN, TOKEN],
        ['{"aps":{}}', '{"aps":{}}'],
        ["k3", "k2"],
    )
    assert [r["ord"] for r in again] == [1, 2]
    assert [r["duplicate"] for r in again] == [False, True]
    assert again[1]["id"] == rows[1]["id"]
    assert await conn.fetchval("SELECT count(*) FROM pushgres.queue") == 4
    queued = await conn.fetchval(
        "SELECT dedupe_key FROM pushgres.queue WHERE id = $1", again[0]["id"]
    )
    assert queued == "k3"


async def test_sql_bulk_function_names_an_array_of_the_wrong_length(
    conn: asyncpg.Connection,
) -> None:
    with pytest.raises(asyncpg.InvalidParameterValueError, match="device_tokens has 1"):
        await conn.fetch(
            "SELECT * FROM pushgres.enqueue_many($1, $2, $3, $4::jsonb[])",
            ["ios", "ios"],
            ["apns", "apns"],
            [TOKEN],
            ['{"aps":{}}', '{"aps":{}}'],
        )
    with pytest.raises(asyncpg.InvalidParameterValueError, match="priorities has 3"):
        await conn.fetch(
            "SELECT * FROM pushgres.enqueue_many($1, $2, $3, $4::jsonb[], priorities => $5)",
            ["ios"],
            ["apns"],
            [TOKEN],
            ['{"aps":{}}'],
            [10, 10, 10],
        )
    assert await conn.fetchval("SELECT count(*) FROM pushgres.queue") == 0


async def test_sql_outcome_keeps_the_input_order(conn: asyncpg.Connection) -> None:
    ids = await pushgres.enqueue(
        conn,
        [
            {"app": "ios", "platform": "apns", "device_token": TOKEN, "payload": {"aps": {}}}
            for _ in range(3)
        ],
    )
    # The middle one is done: its outcome comes from pushgres.results, the others' from the queue.
    await conn.execute(
        "WITH d AS (DELETE FROM pushgres.queue WHERE id = $1 RETURNING *) "
        "INSERT INTO pushgres.results (id, app, platform, device_token, status, attempts, "
        "enqueued_at) SELECT id, app, platform, device_token, 'sent', 1, enqueued_at FROM d",
        ids[1],
    )
    order = [ids[2], 999_999, ids[1], ids[0]]
    rows = await conn.fetch("SELECT id, status FROM pushgres.outcome($1::bigint[])", order)
    assert [(r["id"], r["status"]) for r in rows] == [
        (ids[2], "queued"),
        (ids[1], "sent"),
        (ids[0], "queued"),
    ]
    found = await pushgres.outcome(conn, order)
    assert list(found) == [ids[2], ids[1], ids[0]]


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
    done = await pushgres.enqueue_detailed(conn, notes)
    ids = [e.id for e in done]
    assert len(ids) == count
    assert ids[-1] == ids[0]  # same dedupe key as the first: the first's id
    assert [e.duplicate for e in done] == [False] * (count - 1) + [True]
    assert len(set(ids)) == count - 1
    assert await conn.fetchval("SELECT count(*) FROM pushgres.queue") == count - 1
    tokens = dict(await conn.fetch("SELECT id, device_token FROM pushgres.queue"))
    assert tokens[ids[1]] == "tok-1"
    again = await pushgres.enqueue_detailed(conn, notes[:2])
    assert again == [pushgres.Enqueued(id=i, duplicate=True) for i in ids[:2]]
    assert await pushgres.enqueue(conn, notes[:2]) == ids[:2]  # plain ids, as before


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


async def test_nul_characters_are_refused_before_the_database(conn: asyncpg.Connection) -> None:
    good = {"app": "ios", "platform": "apns", "device_token": TOKEN, "payload": {"aps": {}}}
    with pytest.raises(EnqueueError, match="notification 1: payload contains a NUL character"):
        await pushgres.enqueue(conn, [good, {**good, "payload": {"aps": {"alert": "a\u0000"}}}])
    with pytest.raises(EnqueueError, match="notification 0: metadata contains a NUL character"):
        await pushgres.enqueue(conn, [{**good, "metadata": {"k\u0000": 1}}])
    # A backslash followed by "u0000" is ordinary text, not a NUL.
    ids = await pushgres.enqueue(conn, [{**good, "payload": {"aps": {"alert": "\\u0000"}}}])
    assert len(ids) == 1


async def test_api_without_the_schema_raises_schema_error(empty_dsn: str) -> None:
    conn = await asyncpg.connect(empty_dsn)
    try:
        good = {"app": "ios", "platform": "apns", "device_token": TOKEN, "payload": {"aps": {}}}
        with pytest.raises(SchemaError, match="run `pushgres migrate` first"):
            await pushgres.enqueue(conn, [good])
        with pytest.raises(SchemaError, match="run `pushgres migrate` first"):
            await pushgres.outcome(conn, [1])
    finally:
        await conn.close()
