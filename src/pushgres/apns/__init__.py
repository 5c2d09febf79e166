"""Apple Push Notification service: request building, reason table, provider tokens, sender."""

from __future__ import annotations

__all__: list[str] = []
