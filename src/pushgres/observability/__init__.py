"""Logging and redaction helpers."""

from __future__ import annotations

__all__: list[str] = []
