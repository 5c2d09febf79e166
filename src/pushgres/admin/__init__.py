"""The admin HTTP listener: Prometheus metrics, health and readiness, and the live dashboard.

It serves operators, not devices: nothing it answers carries credentials, payloads or whole
device tokens.
"""

from __future__ import annotations

__all__: list[str] = []
