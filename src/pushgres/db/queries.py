"""Loads ``queries.sql`` once into a name → statement mapping.

Statements are written under ``-- name: <query_name>`` headers; nothing in pushgres builds
SQL by concatenation.
"""

from __future__ import annotations

import importlib.resources
import re
from typing import LiteralString, cast

__all__ = ["QUERIES", "load_queries", "migration_files"]

_HEADER = re.compile(r"^-- name: (\w+)\s*$", re.MULTILINE)


def load_queries(text: str) -> dict[str, LiteralString]:
    """Split a SQL catalogue into statements keyed by their header name."""
    parts = _HEADER.split(text)
    queries: dict[str, LiteralString] = {}
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        statement = body.strip()
        if name in queries:
            raise ValueError(f"duplicate query name {name!r} in queries.sql")
        queries[name] = cast(LiteralString, statement)
    return queries


def migration_files() -> list[tuple[int, str, str]]:
    """The packaged migrations as (version, name, sql), in version order."""
    folder = importlib.resources.files("pushgres.db").joinpath("migrations")
    found = []
    for entry in folder.iterdir():
        match = re.fullmatch(r"(\d{4})_(\w+)\.sql", entry.name)
        if match:
            found.append((int(match[1]), match[2], entry.read_text(encoding="utf-8")))
    return sorted(found)


QUERIES = load_queries(
    importlib.resources.files("pushgres.db").joinpath("queries.sql").read_text(encoding="utf-8")
)
