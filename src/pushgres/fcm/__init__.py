"""Firebase Cloud Messaging HTTP v1: message building, error table, OAuth tokens, sender."""

from __future__ import annotations

__all__: list[str] = []
