"""Everything that touches PostgreSQL: migrations, the SQL catalogue and the store."""

from __future__ import annotations

__all__: list[str] = []
