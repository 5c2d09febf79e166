"""The SQL statements name exactly the columns of ``db/columns.py``, in the same order."""

from __future__ import annotations

import dataclasses
import re

from pushgres.db.columns import CLAIM_FLAGS, QUEUE_COLUMNS, REQUEUE_COLUMNS, RESULT_COLUMNS
from pushgres.db.queries import QUERIES
from pushgres.models import ClaimedRow, ResultRecord


def _returning_names(sql: str) -> list[str]:
    returning = sql.split("RETURNING", 1)[1]
    names, depth, current = [], 0, ""
    for char in returning:  # split on top-level commas only
        depth += (char == "(") - (char == ")")
        if char == "," and depth == 0:
            names.append(current)
            current = ""
        else:
            current += char
    names.append(current)
    out = []
    for expression in names:
        alias = re.search(r"\bAS\s+(\w+)\s*$", expression.strip(), re.S)
        out.append(alias.group(1) if alias else expression.strip().split(".")[-1])
    return out


def test_claims_return_the_claimed_row_fields_in_order() -> None:
    fields = [f.name for f in dataclasses.fields(ClaimedRow)]
    assert fields == [*QUEUE_COLUMNS, *CLAIM_FLAGS]
    assert _returning_names(QUERIES["claim_batch"]) == fields
    assert _returning_names(QUERIES["claim_unknown_app"]) == fields


def test_requeue_takes_its_arrays_in_column_order() -> None:
    alias = re.search(r"AS t\(([^)]*)\)", QUERIES["requeue"])
    assert alias is not None
    assert [c.strip() for c in alias.group(1).split(",")] == list(REQUEUE_COLUMNS)
    assert tuple("delay_s" if c == "send_at" else c for c in QUEUE_COLUMNS) == REQUEUE_COLUMNS


def test_result_columns_are_the_row_then_the_outcome() -> None:
    outcome = [f.name for f in dataclasses.fields(ResultRecord) if f.name != "row"]
    assert list(RESULT_COLUMNS[-len(outcome) :]) == outcome
    assert set(RESULT_COLUMNS[: -len(outcome)]) <= set(QUEUE_COLUMNS)
