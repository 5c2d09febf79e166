"""The client connection's interface and the stream bookkeeping every codec shares.

This module owns what is the same whichever codec encodes the frames:

* :class:`ClientConnection`, the narrow sans-IO interface the asyncio adapter drives: it is
  fed bytes (:meth:`~ClientConnection.receive_data`), produces bytes
  (:meth:`~ClientConnection.data_to_send`) and reports what the peer did as values from
  :mod:`pushgres.http2.events`;
* :class:`StreamBookkeeping`, the base both codecs build on: open streams, bodies waiting for
  flow-control credit, readiness, GOAWAY;
* the defaults and limits every codec shares (stream cap, windows, never-indexed names).

Every codec follows the same rules (RFC 9113 unless noted):

* no stream is opened before the server's first SETTINGS frame has been processed, and the
  number of open streams never exceeds ``min(server MAX_CONCURRENT_STREAMS, local cap)``
  (sections 5.1.2, 6.5.2);
* every received DATA frame is acknowledged at once, so unread bodies never exhaust the
  receive window, and the connection window is enlarged right after the preface (6.9);
* request bodies respect the outbound windows and the maximum frame size; what does not fit
  waits for WINDOW_UPDATE (4.2, 6.9.1);
* header names the connection is given as ``never_indexed`` are encoded as never-indexed
  literals (RFC 7541 sections 6.2.3, 7.1.3); which names those are is the caller's choice;
* after GOAWAY, streams above ``last_stream_id`` are reported as unprocessed and the rest
  may still complete (6.8).

No I/O here, and no codec: the wire format lives in :mod:`pushgres.http2.h2codec` and
:mod:`pushgres.http2.fastconn`.
"""

from __future__ import annotations

import abc
from collections.abc import Iterable, Sequence
from typing import Any, Final, Protocol

from ..exceptions import LocalProtocolError
from .events import ConnectionClosed, Event, GoAwayReceived

__all__ = [
    "DEFAULT_CONNECTION_WINDOW_BYTES",
    "DEFAULT_INITIAL_WINDOW_BYTES",
    "DEFAULT_MAX_STREAMS",
    "DEFAULT_NEVER_INDEXED",
    "MAX_STREAM_ID",
    "MAX_WINDOW_BYTES",
    "RFC_INITIAL_WINDOW_BYTES",
    "ClientConnection",
    "StreamBookkeeping",
    "never_indexed_names",
]

DEFAULT_MAX_STREAMS: Final = 500
DEFAULT_INITIAL_WINDOW_BYTES: Final = 1 << 20  # per stream, advertised in our SETTINGS
DEFAULT_CONNECTION_WINDOW_BYTES: Final = 1 << 24  # whole connection, via WINDOW_UPDATE
DEFAULT_NEVER_INDEXED: Final = frozenset({b":path"})  # the request target differs per request
MAX_STREAM_ID: Final = (1 << 31) - 1
RFC_INITIAL_WINDOW_BYTES: Final = 65_535  # RFC 9113 6.9.2: every window starts here
MAX_WINDOW_BYTES: Final = (1 << 31) - 1  # RFC 9113 6.9.1
_NO_ERROR: Final = 0  # RFC 9113 section 7


def never_indexed_names(names: Iterable[bytes]) -> frozenset[bytes]:
    """``names`` as a frozenset, checked: non-empty lowercase header names.

    Raises
    ------
    ValueError
        A name is not bytes, is empty or has uppercase letters (RFC 9113 8.2.1: field names
        are lowercase on the wire, so such a name would never match a header).
    """
    checked = frozenset(names)
    for name in checked:
        if not isinstance(name, bytes) or not name or name != name.lower():
            raise ValueError(f"never-indexed header names must be lowercase bytes: {name!r}")
    return checked


class ClientConnection(Protocol):
    """The sans-IO client connection the asyncio adapter drives.

    Implementations never block and never perform I/O: outbound bytes accumulate until
    :meth:`data_to_send` is called.
    """

    def initiate(self) -> None:
        """Queue the client preface and our SETTINGS, and enlarge the connection window."""

    def start_request(self, headers: Sequence[tuple[bytes, bytes]], body: bytes) -> int:
        """Open a stream with ``headers`` then ``body`` (END_STREAM); return its id.

        Raises :class:`LocalProtocolError` when no stream may be opened now (not ready,
        closing, at the stream limit, or stream ids exhausted).
        """
        ...

    def receive_data(self, data: bytes) -> list[Event]:
        """Process bytes from the peer; raises :class:`RemoteProtocolError` on violations."""
        ...

    def data_to_send(self) -> bytes:
        """Return and clear the bytes waiting to be written to the socket."""
        ...

    def cancel(self, stream_id: int) -> None:
        """Reset ``stream_id`` with CANCEL and forget it; no-op for unknown streams."""

    def ping(self, data: bytes) -> None:
        """Queue a PING with 8 bytes of opaque ``data``."""

    def close(self, error_code: int = 0) -> None:
        """Queue GOAWAY; no new streams may be opened afterwards."""

    @property
    def is_ready(self) -> bool:
        """Whether the server's first SETTINGS frame has been processed."""
        ...

    @property
    def max_concurrent_streams(self) -> int:
        """The server's current stream limit, capped by the local cap; 0 before ready."""
        ...

    @property
    def open_streams(self) -> int:
        """Streams opened by us and not yet finished, reset or cancelled."""
        ...

    @property
    def available_streams(self) -> int:
        """How many more streams may be opened right now."""
        ...

    @property
    def is_closing(self) -> bool:
        """Whether GOAWAY was received or sent."""
        ...

    @property
    def next_stream_id_exhausted(self) -> bool:
        """Whether the stream id space is used up (a new connection is needed)."""
        ...


class StreamBookkeeping(abc.ABC):
    """What every codec tracks the same way: open streams, blocked bodies, readiness, closing.

    Subclasses own the wire format; they fill ``_streams`` (objects with a ``pending``
    attribute holding body bytes not yet sent) and implement :meth:`_send_pending`,
    :meth:`_connection_window_empty` and :attr:`next_stream_id_exhausted`.
    """

    def __init__(
        self, max_streams: int, initial_window_bytes: int, connection_window_bytes: int
    ) -> None:
        if max_streams < 1:
            raise ValueError(f"max_streams must be >= 1, got {max_streams}")
        if not 0 <= initial_window_bytes <= MAX_WINDOW_BYTES:
            raise ValueError(f"initial_window_bytes out of range: {initial_window_bytes}")
        if not RFC_INITIAL_WINDOW_BYTES <= connection_window_bytes <= MAX_WINDOW_BYTES:
            raise ValueError(f"connection_window_bytes out of range: {connection_window_bytes}")
        self._cap = max_streams
        self._initial_window = initial_window_bytes  # advertised per stream
        self._connection_window = connection_window_bytes  # the connection's receive window
        self._streams: dict[int, Any] = {}
        self._blocked: dict[int, None] = {}  # ordered set of streams with a pending body
        self._is_ready = False
        self._limit = 0  # min(server MAX_CONCURRENT_STREAMS, cap), refreshed on SETTINGS
        self._goaway_received = False
        self._goaway_sent = False
        self._terminated = False

    def _check_can_open(self) -> None:
        """Raise :class:`LocalProtocolError` unless a new stream may be opened now."""
        if not self._is_ready:
            raise LocalProtocolError("no stream may be opened before the server's SETTINGS")
        if self.is_closing:
            raise LocalProtocolError("the connection is closing")
        if len(self._streams) >= self._limit:
            raise LocalProtocolError(
                f"stream limit reached ({len(self._streams)} of {self._limit})"
            )
        if self.next_stream_id_exhausted:
            raise LocalProtocolError("stream ids exhausted")

    def _goaway(self, last: int, code: int, debug: bytes, out: list[Event]) -> None:
        """The peer sent GOAWAY: forget streams above ``last``, report, maybe terminate."""
        self._goaway_received = True
        unprocessed = tuple(sid for sid in self._streams if sid > last)
        for sid in unprocessed:
            del self._streams[sid]
            self._blocked.pop(sid, None)
            self._dropped(sid)
        out.append(GoAwayReceived(last, code, debug, unprocessed))
        if code != _NO_ERROR:
            # RFC 9113 5.4.1: the peer closes the socket after an error GOAWAY.
            self._terminated = True
            reason = debug.decode("utf-8", "replace") or f"GOAWAY error code {code}"
            out.append(ConnectionClosed(code, reason))

    def _dropped(self, stream_id: int) -> None:  # noqa: B027 - an optional hook
        """Called for each stream forgotten because of GOAWAY."""

    @abc.abstractmethod
    def _send_pending(self, stream_id: int, stream: Any) -> None:
        """Send as much of ``stream.pending`` as the windows allow; track it in ``_blocked``."""

    @abc.abstractmethod
    def _connection_window_empty(self) -> bool:
        """Whether the connection's send window is used up."""

    def _resume_blocked(self) -> None:
        if not self._blocked or self._goaway_sent or self._terminated:
            return
        for stream_id in list(self._blocked):
            stream = self._streams.get(stream_id)
            if stream is None:
                self._blocked.pop(stream_id, None)
                continue
            self._send_pending(stream_id, stream)
            if stream.pending and self._connection_window_empty():
                break  # the connection window is empty: later streams cannot move either

    @property
    def is_ready(self) -> bool:
        return self._is_ready

    @property
    def max_concurrent_streams(self) -> int:
        return self._limit

    @property
    def open_streams(self) -> int:
        return len(self._streams)

    @property
    def available_streams(self) -> int:
        if not self._is_ready or self.is_closing or self.next_stream_id_exhausted:
            return 0
        return max(0, self._limit - len(self._streams))

    @property
    def is_closing(self) -> bool:
        return self._goaway_received or self._goaway_sent or self._terminated

    @property
    @abc.abstractmethod
    def next_stream_id_exhausted(self) -> bool:
        """Whether the stream id space is used up (a new connection is needed)."""
