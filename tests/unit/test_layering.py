"""Protocol modules are sans-IO: they never import asyncio or a network/database library."""

from __future__ import annotations

import ast
import pathlib
import re

import pytest

SRC = pathlib.Path(__file__).resolve().parents[2] / "src" / "pushgres"
PURE = [
    "providers/apns/protocol.py",
    "providers/apns/reasons.py",
    "providers/fcm/protocol.py",
    "providers/fcm/reasons.py",
    "http2/codecs.py",
    "http2/events.py",
    "http2/fastconn.py",
    "http2/h2codec.py",
    "http2/lifecycle.py",
    "http2/streams.py",
    "pipeline/capacity.py",
    "pipeline/decide.py",
    "pipeline/stages.py",
    "models.py",
    "retry.py",
    "der.py",
]
FORBIDDEN = {"asyncio", "aiohttp", "asyncpg", "uvloop", "socket", "ssl"}


@pytest.mark.parametrize("module", PURE)
def test_pure_module_imports(module: str) -> None:
    tree = ast.parse((SRC / module).read_text())
    imported: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            imported.add(node.module.split(".")[0])
    assert not imported & FORBIDDEN, f"{module} imports {imported & FORBIDDEN}"


def test_every_module_states_its_job() -> None:
    for path in SRC.rglob("*.py"):
        doc = ast.get_docstring(ast.parse(path.read_text()))
        assert doc, f"{path.relative_to(SRC)} has no module docstring"


def test_sql_runs_only_in_the_store() -> None:
    # The store (db/) is the one place that runs SQL: no other module holds a statement or
    # reaches for the query catalogue.
    statement = re.compile(
        r"\b(SELECT\s.+\sFROM|INSERT\s+INTO|DELETE\s+FROM|UPDATE\s+\S+\s+SET|"
        r"CREATE\s+(TABLE|INDEX|FUNCTION|SCHEMA|DATABASE)|DROP\s+(TABLE|DATABASE))\b",
        re.S,
    )
    for path in SRC.rglob("*.py"):
        relative = path.relative_to(SRC).as_posix()
        if relative.startswith("db/"):
            continue
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module:
                assert not node.module.endswith("queries"), f"{relative} imports the queries"
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                if ast.get_docstring(tree) == node.value:
                    continue
                assert not statement.search(node.value), f"{relative}: SQL {node.value[:40]!r}"
