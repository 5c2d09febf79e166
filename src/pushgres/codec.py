"""JSON at the edges: the only module that imports orjson.

Payloads are parsed once per row, validated, and serialized compactly once; the bytes go
straight to the HTTP/2 layer.
"""

from __future__ import annotations

from typing import Any

import orjson

__all__ = ["JSONDecodeError", "dumps", "loads"]

JSONDecodeError = orjson.JSONDecodeError


def dumps(value: Any) -> bytes:
    """Compact UTF-8 JSON bytes (no spaces), as APNs and FCM size limits count them."""
    return orjson.dumps(value)


def loads(data: bytes | str) -> Any:
    return orjson.loads(data)
