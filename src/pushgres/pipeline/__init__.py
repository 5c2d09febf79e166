"""The delivery pipeline: claim with backpressure, send, decide, write back."""

from __future__ import annotations

__all__: list[str] = []
