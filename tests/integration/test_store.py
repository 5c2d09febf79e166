"""The daemon's store against a real PostgreSQL: session settings that hold for every use."""

from __future__ import annotations

from pushgres.db.store import Store

SETTINGS_SQL = (
    "SELECT current_setting('pushgres.daemon', true) AS mark,"
    " current_setting('statement_timeout') AS statement,"
    " current_setting('idle_in_transaction_session_timeout') AS idle,"
    " pg_backend_pid() AS pid"
)


async def test_session_settings_hold_on_every_use_of_a_connection(dsn: str) -> None:
    store = await Store.open(
        dsn, max_size=1, idle_in_transaction_timeout_s=45, statement_timeout_s=7
    )
    try:
        seen = []
        for _ in range(3):  # one connection, released (RESET ALL) and acquired again
            async with store._pool.acquire() as conn:
                seen.append(await conn.fetchrow(SETTINGS_SQL))
            async with store.claim("ios", 10) as claim:  # the claim transaction too
                assert claim.rows == []
                seen.append(await claim._conn.fetchrow(SETTINGS_SQL))
    finally:
        await store.close()
    assert len({r["pid"] for r in seen}) == 1
    for r in seen:
        assert (r["mark"], r["statement"], r["idle"]) == ("on", "7s", "45s")
