"""The sans-IO HTTP/2 client connection: streams, flow control, GOAWAY and the state table.

This module owns the byte-level protocol of one client connection and nothing else: it is
fed bytes (:meth:`ClientConnection.receive_data`), produces bytes
(:meth:`ClientConnection.data_to_send`) and reports what the peer did as values from
:mod:`pushgres.http2.events`. It never touches a socket or an event loop, so it is tested
by exchanging bytes with an in-memory server.

:class:`ClientConnection` is the narrow interface the asyncio adapter depends on;
:class:`H2ClientConnection` implements it on the ``h2`` library. The rules it follows come
from the APNs and FCM connection guidance (protocol.md A.3, A.9, A.10, B.1, E):

* no stream is opened before the server's first SETTINGS frame has been processed, and the
  number of open streams never exceeds ``min(server MAX_CONCURRENT_STREAMS, local cap)``;
* every received DATA frame is acknowledged at once, so error bodies never exhaust the
  receive window, and the connection window is enlarged right after the preface;
* request bodies respect the outbound window and maximum frame size; what does not fit
  waits for WINDOW_UPDATE;
* per-message header values (``:path``, ``apns-id``, ``apns-collapse-id``,
  ``apns-expiration``) are encoded never-indexed so they do not churn the HPACK table;
* after GOAWAY, streams above ``last_stream_id`` are reported as unprocessed and the rest
  may still complete.

The pooled connection's lifecycle is the table :data:`TRANSITIONS` over :class:`ConnState`
and :class:`ConnInput`; :func:`next_state` raises :class:`LocalProtocolError` for anything
not in it.
"""

from __future__ import annotations

import abc
import enum
import logging
from collections.abc import Sequence
from typing import Any, Final, Protocol

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
from hpack import NeverIndexedHeaderTuple

from ..exceptions import LocalProtocolError, RemoteProtocolError
from .events import (
    ConnectionClosed,
    Event,
    GoAwayReceived,
    PingAcknowledged,
    ResponseReceived,
    SettingsChanged,
    StreamRefused,
    StreamReset,
)

__all__ = [
    "DEFAULT_CONNECTION_WINDOW_BYTES",
    "DEFAULT_INITIAL_WINDOW_BYTES",
    "DEFAULT_MAX_STREAMS",
    "MAX_STREAM_ID",
    "NEVER_INDEXED_HEADERS",
    "TRANSITIONS",
    "ClientConnection",
    "ConnInput",
    "ConnState",
    "H2ClientConnection",
    "StreamBookkeeping",
    "next_state",
]

logger = logging.getLogger(__name__)

DEFAULT_MAX_STREAMS: Final = 500
DEFAULT_INITIAL_WINDOW_BYTES: Final = 1 << 20  # per stream, advertised in our SETTINGS
DEFAULT_CONNECTION_WINDOW_BYTES: Final = 1 << 24  # whole connection, via WINDOW_UPDATE
MAX_STREAM_ID: Final = (1 << 31) - 1
_DEFAULT_WINDOW_BYTES: Final = 65_535  # RFC 9113 initial connection window
_MAX_WINDOW_BYTES: Final = (1 << 31) - 1  # RFC 9113 6.9.1
_MAX_HEADER_LIST_BYTES: Final = 65_536  # h2's own default, kept when we replace the settings

# Values that change with every message: never-indexed keeps them out of the peer's small
# dynamic table (protocol.md A.3 "Frames and compression", A.10 rule 10).
NEVER_INDEXED_HEADERS: Final = frozenset(
    {b":path", b"apns-id", b"apns-collapse-id", b"apns-expiration"}
)

_NO_ERROR: Final = int(h2.errors.ErrorCodes.NO_ERROR)
_CANCEL: Final = h2.errors.ErrorCodes.CANCEL
_REFUSED_STREAM: Final = int(h2.errors.ErrorCodes.REFUSED_STREAM)


class ConnState(enum.Enum):
    """Lifecycle of a pooled connection."""

    CONNECTING = "connecting"  # socket open, server SETTINGS not yet processed
    READY = "ready"  # streams may be opened
    DRAINING = "draining"  # no new streams; in-flight streams may finish
    CLOSED = "closed"  # terminal


class ConnInput(enum.Enum):
    """What can happen to a pooled connection."""

    SETTINGS_RECEIVED = "settings_received"  # a SETTINGS frame from the server
    GOAWAY_RECEIVED = "goaway_received"
    DRAIN = "drain"  # local decision: retire, age limit, pool closing, GOAWAY sent
    LOST = "lost"  # socket closed, protocol error, or terminated by the peer


TRANSITIONS: Final[dict[tuple[ConnState, ConnInput], ConnState]] = {
    (ConnState.CONNECTING, ConnInput.SETTINGS_RECEIVED): ConnState.READY,
    (ConnState.CONNECTING, ConnInput.GOAWAY_RECEIVED): ConnState.DRAINING,
    (ConnState.CONNECTING, ConnInput.DRAIN): ConnState.DRAINING,
    (ConnState.CONNECTING, ConnInput.LOST): ConnState.CLOSED,
    (ConnState.READY, ConnInput.SETTINGS_RECEIVED): ConnState.READY,
    (ConnState.READY, ConnInput.GOAWAY_RECEIVED): ConnState.DRAINING,
    (ConnState.READY, ConnInput.DRAIN): ConnState.DRAINING,
    (ConnState.READY, ConnInput.LOST): ConnState.CLOSED,
    (ConnState.DRAINING, ConnInput.SETTINGS_RECEIVED): ConnState.DRAINING,
    (ConnState.DRAINING, ConnInput.GOAWAY_RECEIVED): ConnState.DRAINING,
    (ConnState.DRAINING, ConnInput.DRAIN): ConnState.DRAINING,
    (ConnState.DRAINING, ConnInput.LOST): ConnState.CLOSED,
}


def next_state(state: ConnState, event: ConnInput) -> ConnState:
    """The state after ``event``.

    Raises
    ------
    LocalProtocolError
        ``event`` is not allowed in ``state`` (everything is refused once CLOSED).
    """
    try:
        return TRANSITIONS[(state, event)]
    except KeyError:
        raise LocalProtocolError(f"{event.value} is not allowed in state {state.value}") from None


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
        if not 0 <= initial_window_bytes <= _MAX_WINDOW_BYTES:
            raise ValueError(f"initial_window_bytes out of range: {initial_window_bytes}")
        if not _DEFAULT_WINDOW_BYTES <= connection_window_bytes <= _MAX_WINDOW_BYTES:
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


class _H2Connection(h2.connection.H2Connection):
    """``h2``'s state machine with two client-side adjustments.

    * ``open_outbound_streams`` is our own counter. ``h2`` scans every stream on each
      ``send_headers`` to count open ones (protocol.md E, "Cost"); we enforce the limit
      ourselves and drop finished streams from ``streams`` as they end.
    * Receiving GOAWAY puts ``h2``'s connection state machine in CLOSED, after which frames
      for the streams the server promised to finish are rejected. RFC 9113 6.8 lets those
      streams complete, so the state is restored and :class:`H2ClientConnection` refuses new
      streams by itself.
    """

    open_count: int = 0

    @property
    def open_outbound_streams(self) -> int:
        return self.open_count

    def _receive_goaway_frame(self, frame: Any) -> tuple[list[Any], list[Any]]:
        before = self.state_machine.state
        result: tuple[list[Any], list[Any]] = super()._receive_goaway_frame(frame)
        if before in (
            h2.connection.ConnectionState.CLIENT_OPEN,
            h2.connection.ConnectionState.IDLE,  # GOAWAY before our first stream
        ):
            self.state_machine.state = before
        return result


class _Stream:
    """What we know about one of our streams."""

    __slots__ = ("chunks", "headers", "pending", "status")

    def __init__(self) -> None:
        self.status = 0
        self.headers: tuple[tuple[bytes, bytes], ...] = ()
        self.chunks: list[bytes] = []
        self.pending = b""  # body bytes waiting for flow-control credit


def _null_logger() -> logging.Logger:
    null = logging.getLogger("pushgres.http2.connection.null")
    null.addHandler(logging.NullHandler())
    null.propagate = False
    return null


class H2ClientConnection(StreamBookkeeping):
    """:class:`ClientConnection` on top of ``h2``.

    Parameters
    ----------
    max_streams:
        Local cap on concurrent streams; the effective limit is the smaller of this and the
        server's ``MAX_CONCURRENT_STREAMS`` (protocol.md A.10 rule 3).
    initial_window_bytes:
        ``SETTINGS_INITIAL_WINDOW_SIZE`` we advertise for each stream.
    connection_window_bytes:
        Size the connection receive window is raised to right after the preface.
    log:
        Logger for unexpected events; silent by default (the protocol layer takes an
        injected logger).
    """

    def __init__(
        self,
        *,
        max_streams: int = DEFAULT_MAX_STREAMS,
        initial_window_bytes: int = DEFAULT_INITIAL_WINDOW_BYTES,
        connection_window_bytes: int = DEFAULT_CONNECTION_WINDOW_BYTES,
        log: logging.Logger | None = None,
    ) -> None:
        super().__init__(max_streams, initial_window_bytes, connection_window_bytes)
        # Outbound validation re-checks every header of every request (a large share of
        # h2's per-request cost, protocol.md E); our request builders emit valid headers.
        # Inbound validation stays on: the peer is not trusted.
        config = h2.config.H2Configuration(
            client_side=True, header_encoding=None, validate_outbound_headers=False
        )
        self._h2 = _H2Connection(config=config)
        self._log = log if log is not None else _null_logger()

    # -- commands -------------------------------------------------------------------------

    def initiate(self) -> None:
        h2c = self._h2
        h2c.local_settings = h2.settings.Settings(
            client=True,
            initial_values={
                h2.settings.SettingCodes.ENABLE_PUSH: 0,
                h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: self._initial_window,
                h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: _MAX_HEADER_LIST_BYTES,
            },
        )
        h2c.initiate_connection()
        increment = self._connection_window - _DEFAULT_WINDOW_BYTES
        if increment > 0:
            h2c.increment_flow_control_window(increment)

    def start_request(self, headers: Sequence[tuple[bytes, bytes]], body: bytes) -> int:
        self._check_can_open()
        h2c = self._h2
        encoded = [
            NeverIndexedHeaderTuple(name, value) if name in NEVER_INDEXED_HEADERS else (name, value)
            for name, value in headers
        ]
        stream_id: int = h2c.get_next_available_stream_id()
        try:
            h2c.send_headers(stream_id, encoded, end_stream=not body)
        except h2.exceptions.ProtocolError as exc:
            raise LocalProtocolError(f"cannot open a stream: {exc}") from exc
        stream = _Stream()
        self._streams[stream_id] = stream
        h2c.open_count = len(self._streams)
        if body:
            stream.pending = body
            self._send_pending(stream_id, stream)
        return stream_id

    def data_to_send(self) -> bytes:
        data: bytes = self._h2.data_to_send()
        return data

    def cancel(self, stream_id: int) -> None:
        if self._streams.pop(stream_id, None) is None:
            return
        self._h2.open_count = len(self._streams)
        self._blocked.pop(stream_id, None)
        if not (self._goaway_sent or self._terminated):
            try:
                self._h2.reset_stream(stream_id, _CANCEL)
            except h2.exceptions.ProtocolError:  # already closed by the peer
                pass
        self._forget(stream_id)

    def ping(self, data: bytes) -> None:
        if self._goaway_sent or self._terminated:
            raise LocalProtocolError("the connection is closed")
        try:
            self._h2.ping(data)
        except (ValueError, h2.exceptions.ProtocolError) as exc:
            raise LocalProtocolError(f"cannot send PING: {exc}") from exc

    def close(self, error_code: int = 0) -> None:
        if self._goaway_sent:
            return
        self._goaway_sent = True
        self._blocked.clear()
        try:
            self._h2.close_connection(error_code=error_code)
        except h2.exceptions.ProtocolError:  # h2 already terminated the connection
            pass

    # -- input ----------------------------------------------------------------------------

    def receive_data(self, data: bytes) -> list[Event]:
        if self._goaway_sent or self._terminated:
            return []  # we are closing: nothing the peer says can be acted on
        try:
            raw = self._h2.receive_data(data)
        except h2.exceptions.ProtocolError as exc:
            self._terminated = True
            code = int(getattr(exc, "error_code", 1) or 1)
            try:
                self._h2.close_connection(error_code=code)
            except h2.exceptions.ProtocolError:
                pass
            raise RemoteProtocolError(f"peer violated HTTP/2: {exc}", error_code=code) from exc
        events: list[Event] = []
        for event in raw:
            self._handle(event, events)
        return events

    def _handle(self, event: Any, out: list[Event]) -> None:
        h2c = self._h2
        if isinstance(event, h2.events.DataReceived):
            stream = self._streams.get(event.stream_id)
            if stream is not None:
                stream.chunks.append(event.data)
            # Credit goes back at once, even for streams we no longer track: an unread error
            # body must never shrink the window (protocol.md A.3 "Flow control").
            h2c.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        elif isinstance(event, h2.events.ResponseReceived):
            stream = self._streams.get(event.stream_id)
            if stream is not None:
                status = 0
                headers: list[tuple[bytes, bytes]] = []
                for name, value in event.headers:
                    if name == b":status":
                        status = int(value)
                    elif not name.startswith(b":"):
                        headers.append((bytes(name), bytes(value)))
                stream.status = status
                stream.headers = tuple(headers)
        elif isinstance(event, h2.events.StreamEnded):
            self._on_stream_ended(event.stream_id, out)
        elif isinstance(event, h2.events.StreamReset):
            if self._streams.pop(event.stream_id, None) is not None:
                h2c.open_count = len(self._streams)
                self._blocked.pop(event.stream_id, None)
                code = int(event.error_code)
                if code == _REFUSED_STREAM:
                    out.append(StreamRefused(event.stream_id))
                else:
                    out.append(StreamReset(event.stream_id, code))
            self._forget(event.stream_id)
        elif isinstance(event, h2.events.WindowUpdated):
            self._resume_blocked()
        elif isinstance(event, h2.events.RemoteSettingsChanged):
            self._is_ready = True
            self._limit = min(h2c.remote_settings.max_concurrent_streams, self._cap)
            self._resume_blocked()
            out.append(SettingsChanged(self.max_concurrent_streams))
        elif isinstance(event, h2.events.PingAckReceived):
            out.append(PingAcknowledged(bytes(event.ping_data)))
        elif isinstance(event, h2.events.ConnectionTerminated):
            self._on_goaway(event, out)
        elif isinstance(
            event,
            h2.events.SettingsAcknowledged
            | h2.events.PingReceived
            | h2.events.InformationalResponseReceived
            | h2.events.TrailersReceived
            | h2.events.PriorityUpdated
            | h2.events.AlternativeServiceAvailable
            | h2.events.UnknownFrameReceived,
        ):
            pass  # h2 answers PINGs and SETTINGS itself; the rest carries nothing we use
        else:
            self._log.warning("unexpected HTTP/2 event %r", event)

    def _on_stream_ended(self, stream_id: int, out: list[Event]) -> None:
        stream = self._streams.pop(stream_id, None)
        if stream is None:
            return
        self._h2.open_count = len(self._streams)
        if stream_id in self._blocked:
            del self._blocked[stream_id]
            # The server answered before reading the whole body: stop sending it.
            try:
                self._h2.reset_stream(stream_id, _CANCEL)
            except h2.exceptions.ProtocolError:
                pass
        body = stream.chunks[0] if len(stream.chunks) == 1 else b"".join(stream.chunks)
        out.append(ResponseReceived(stream_id, stream.status, stream.headers, bytes(body)))
        self._forget(stream_id)

    def _on_goaway(self, event: Any, out: list[Event]) -> None:
        self._goaway(
            int(event.last_stream_id),
            int(event.error_code),
            bytes(event.additional_data or b""),
            out,
        )
        self._h2.open_count = len(self._streams)

    def _dropped(self, stream_id: int) -> None:
        self._forget(stream_id)

    # -- flow control ---------------------------------------------------------------------

    def _send_pending(self, stream_id: int, stream: _Stream) -> None:
        h2c = self._h2
        data = stream.pending
        try:
            while data:
                window = h2c.local_flow_control_window(stream_id)
                if window <= 0:
                    break
                size = min(window, len(data), h2c.max_outbound_frame_size)
                h2c.send_data(stream_id, data[:size], end_stream=size == len(data))
                data = data[size:]
        except h2.exceptions.ProtocolError as exc:
            raise LocalProtocolError(f"cannot send the body of stream {stream_id}: {exc}") from exc
        stream.pending = data
        if data:
            self._blocked[stream_id] = None
        else:
            self._blocked.pop(stream_id, None)

    def _connection_window_empty(self) -> bool:
        window: int = self._h2.outbound_flow_control_window
        return window <= 0

    def _forget(self, stream_id: int) -> None:
        """Drop a closed stream from h2's table (it no longer scans for closed streams)."""
        h2c = self._h2
        stream = h2c.streams.get(stream_id)
        if stream is not None and stream.closed:
            del h2c.streams[stream_id]
            h2c._closed_streams[stream_id] = stream.closed_by

    @property
    def next_stream_id_exhausted(self) -> bool:
        highest: int | None = self._h2.highest_outbound_stream_id
        return (highest or -1) + 2 > MAX_STREAM_ID
