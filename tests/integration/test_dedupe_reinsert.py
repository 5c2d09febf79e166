"""The dedupe trigger: a row coming back with its own id and key is no duplicate of itself."""

from __future__ import annotations

import asyncpg

import pushgres

INSERT = (
    "INSERT INTO pushgres.queue (id, app, platform, device_token, payload, dedupe_key)"
    " VALUES ($1, 'ios', 'apns', 'aa', '{\"aps\": {}}', $2) RETURNING id"
)


async def test_a_reinserted_row_keeps_its_place_and_a_new_one_is_a_duplicate(
    conn: asyncpg.Connection,
) -> None:
    (first,) = await pushgres.enqueue(
        conn,
        [
            {
                "app": "ios",
                "platform": "apns",
                "device_token": "aa",
                "payload": {"aps": {}},
                "dedupe_key": "k1",
            }
        ],
    )
    # The daemon's claim deletes the row; an interrupted send re-inserts it, attempts = 0.
    await conn.execute("DELETE FROM pushgres.queue WHERE id = $1", first)
    assert await conn.fetchval(INSERT, first, "k1") == first
    assert await conn.fetchval("SELECT count(*) FROM pushgres.queue WHERE id = $1", first) == 1
    # Any other row with the same key is still a duplicate: the insert affects no row.
    assert await conn.fetchval(INSERT, first + 1000, "k1") is None
    assert await conn.fetchval("SELECT count(*) FROM pushgres.queue") == 1
