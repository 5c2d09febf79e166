"""Events emitted by the sans-IO HTTP/2 client connections (:mod:`pushgres.http2.streams`).

Each event is a frozen, slotted value describing something the peer did. The asyncio
adapter (:mod:`pushgres.http2.transport`) turns them into resolved futures and pool state
changes. The events are deliberately independent of the ``h2`` library so a second codec can
emit the same values.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "ConnectionClosed",
    "Event",
    "GoAwayReceived",
    "PingAcknowledged",
    "ResponseReceived",
    "SettingsChanged",
    "StreamRefused",
    "StreamReset",
]


@dataclass(frozen=True, slots=True)
class ResponseReceived:
    """A complete response: emitted once per stream, when the peer ends the stream.

    ``headers`` excludes pseudo-headers (``:status`` is ``status``); ``body`` is the
    concatenation of every DATA frame of the stream.
    """

    stream_id: int
    status: int
    headers: tuple[tuple[bytes, bytes], ...]
    body: bytes


@dataclass(frozen=True, slots=True)
class StreamRefused:
    """The peer reset the stream with ``REFUSED_STREAM``: it was not processed (RFC 9113 8.7)."""

    stream_id: int


@dataclass(frozen=True, slots=True)
class StreamReset:
    """The peer reset the stream with another error code: the outcome is unknown."""

    stream_id: int
    error_code: int


@dataclass(frozen=True, slots=True)
class GoAwayReceived:
    """The peer sent GOAWAY.

    Streams above ``last_stream_id`` were not processed; their ids are listed in
    ``unprocessed`` and the connection has already forgotten them. Streams at or below it may
    still be answered.
    """

    last_stream_id: int
    error_code: int
    debug_data: bytes
    unprocessed: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class SettingsChanged:
    """The peer's SETTINGS changed; ``max_concurrent_streams`` is the effective (capped) limit."""

    max_concurrent_streams: int


@dataclass(frozen=True, slots=True)
class PingAcknowledged:
    """The peer acknowledged one of our PINGs carrying ``data``."""

    data: bytes


@dataclass(frozen=True, slots=True)
class ConnectionClosed:
    """The connection is finished: the peer terminated it with an error code.

    Every stream still in flight is lost; the socket should be closed.
    """

    error_code: int
    reason: str


Event = (
    ResponseReceived
    | StreamRefused
    | StreamReset
    | GoAwayReceived
    | SettingsChanged
    | PingAcknowledged
    | ConnectionClosed
)
