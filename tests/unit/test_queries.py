"""The claim query returns its columns in :class:`ClaimedRow`'s field order (rows are built
positionally from claimed records)."""

from __future__ import annotations

import dataclasses
import re

from pushgres.db.queries import QUERIES
from pushgres.models import ClaimedRow


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


def test_claim_batch_returns_the_fields_in_order() -> None:
    fields = [f.name for f in dataclasses.fields(ClaimedRow)]
    assert _returning_names(QUERIES["claim_batch"]) == fields
