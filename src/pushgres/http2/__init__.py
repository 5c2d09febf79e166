"""The HTTP/2 client layer: sans-IO connection, asyncio transport, pool and TLS context.

Named ``http2`` (not ``h2``) so it never shadows the ``h2`` library it builds on.
"""

from __future__ import annotations

__all__: list[str] = []
