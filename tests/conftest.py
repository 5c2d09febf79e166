"""Shared fixtures: a real PostgreSQL for every test that needs one.

``PUSHGRES_TEST_DSN`` points at any server (the role must be allowed to create databases);
otherwise an embedded ``pgserver`` is started once per session under a temporary directory.
Each test gets a fresh database cloned from a migrated template.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

TEMPLATE = "pushgres_test_template"


def _with_database(dsn: str, database: str) -> str:
    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(path=f"/{database}"))


@pytest.fixture(scope="session")
def pg_server_dsn() -> Iterator[str]:
    given = os.environ.get("PUSHGRES_TEST_DSN")
    if given:
        yield given
        return
    import pgserver

    tmp = tempfile.mkdtemp(prefix="pushgres-test-pg-")
    server = pgserver.get_server(os.path.join(tmp, "data"), cleanup_mode="delete")
    try:
        yield server.get_uri()
    finally:
        server.cleanup()


@pytest.fixture(scope="session")
def pg_template(pg_server_dsn: str) -> str:
    import asyncio

    from pushgres.db.migrate import migrate

    async def build() -> None:
        conn = await asyncpg.connect(pg_server_dsn)
        try:
            await conn.execute(f"DROP DATABASE IF EXISTS {TEMPLATE}")
            await conn.execute(f"CREATE DATABASE {TEMPLATE}")
        finally:
            await conn.close()
        conn = await asyncpg.connect(_with_database(pg_server_dsn, TEMPLATE))
        try:
            await migrate(conn)
        finally:
            await conn.close()

    asyncio.run(build())
    return TEMPLATE


@contextlib.asynccontextmanager
async def _scratch_database(server_dsn: str, template: str | None) -> AsyncIterator[str]:
    name = f"pushgres_t_{uuid.uuid4().hex[:12]}"
    clause = f" TEMPLATE {template}" if template else ""
    admin = await asyncpg.connect(server_dsn)
    try:
        await admin.execute(f"CREATE DATABASE {name}{clause}")
    finally:
        await admin.close()
    try:
        yield _with_database(server_dsn, name)
    finally:
        admin = await asyncpg.connect(server_dsn)
        try:
            await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        finally:
            await admin.close()


@pytest.fixture
async def dsn(pg_server_dsn: str, pg_template: str) -> AsyncIterator[str]:
    """A fresh, migrated database for this test."""
    async with _scratch_database(pg_server_dsn, pg_template) as url:
        yield url


@pytest.fixture
async def empty_dsn(pg_server_dsn: str) -> AsyncIterator[str]:
    """A fresh database without the pushgres schema."""
    async with _scratch_database(pg_server_dsn, None) as url:
        yield url


@pytest.fixture
async def conn(dsn: str) -> AsyncIterator[asyncpg.Connection]:
    c = await asyncpg.connect(dsn)
    try:
        yield c
    finally:
        await c.close()
