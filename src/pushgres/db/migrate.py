"""Schema migrations: apply the packaged ``migrations/*.sql`` in order, and check the version.

``pushgres migrate`` is idempotent and serialized by an advisory lock, so several daemons
starting at once cannot race. ``pushgres run`` calls :func:`check_schema` and refuses to start
on a missing or newer schema.
"""

from __future__ import annotations

import logging

import asyncpg

from ..exceptions import SchemaError
from .queries import QUERIES, migration_files

__all__ = ["SCHEMA_VERSION", "check_schema", "migrate"]

logger = logging.getLogger(__name__)

SCHEMA_VERSION = max(version for version, _, _ in migration_files())


async def migrate(conn: asyncpg.Connection) -> list[int]:
    """Apply every migration the database lacks; returns the versions applied."""
    applied_now: list[int] = []
    await conn.execute(QUERIES["migrate_lock"])
    try:
        await conn.execute(QUERIES["create_schema"])
        await conn.execute(QUERIES["migrations_table"])
        done = {row[0] for row in await conn.fetch(QUERIES["applied_versions"])}
        newer = [v for v in done if v > SCHEMA_VERSION]
        if newer:
            raise SchemaError(
                f"the database has pushgres schema version {max(newer)}, newer than this "
                f"pushgres ({SCHEMA_VERSION}); upgrade pushgres instead of migrating"
            )
        for version, name, sql in migration_files():
            if version in done:
                continue
            async with conn.transaction():
                await conn.execute(sql)
                await conn.execute(QUERIES["record_migration"], version, name)
            logger.info("applied migration %04d_%s", version, name, extra={"action": "migrate"})
            applied_now.append(version)
    finally:
        await conn.execute(QUERIES["migrate_unlock"])
    return applied_now


async def check_schema(conn: asyncpg.Connection) -> int:
    """Raise :class:`SchemaError` unless the database is at exactly this build's version."""
    has_table = await conn.fetchval(QUERIES["has_migrations_table"])
    version = await conn.fetchval(QUERIES["schema_version"]) if has_table else 0
    if version == 0:
        raise SchemaError(
            "the pushgres schema is missing from this database; run `pushgres migrate` first"
        )
    if version < SCHEMA_VERSION:
        raise SchemaError(
            f"the database has pushgres schema version {version}, this pushgres needs "
            f"{SCHEMA_VERSION}; run `pushgres migrate`"
        )
    if version > SCHEMA_VERSION:
        raise SchemaError(
            f"the database has pushgres schema version {version}, newer than this pushgres "
            f"({SCHEMA_VERSION}); upgrade pushgres"
        )
    return int(version)
