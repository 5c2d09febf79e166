"""The ``h2``-based codec: :class:`H2ClientConnection`, the implementation the fast codec is tested against.

:class:`H2ClientConnection` implements :class:`~pushgres.http2.streams.ClientConnection` on
the ``h2`` library's state machine, and this module owns only what ties the two together:
translating ``h2`` events into :mod:`pushgres.http2.events`, feeding request bodies to
``h2``'s flow control, and two adjustments to ``h2`` itself (:class:`_H2Connection`). Stream
limits, blocked bodies and GOAWAY are :class:`~pushgres.http2.streams.StreamBookkeeping`'s.

Named for its codec rather than ``connection``: :mod:`pushgres.http2.fastconn` is a client
connection as much as this one, and the two are interchangeable through
:mod:`pushgres.http2.codecs`. No I/O here.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, Final

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
from hpack import NeverIndexedHeaderTuple

from ..exceptions import LocalProtocolError, RemoteProtocolError
from .events import (
    Event,
    PingAcknowledged,
    ResponseReceived,
    SettingsChanged,
    StreamRefused,
    StreamReset,
)
from .streams import (
    DEFAULT_CONNECTION_WINDOW_BYTES,
    DEFAULT_INITIAL_WINDOW_BYTES,
    DEFAULT_MAX_STREAMS,
    DEFAULT_NEVER_INDEXED,
    MAX_STREAM_ID,
    RFC_INITIAL_WINDOW_BYTES,
    StreamBookkeeping,
    never_indexed_names,
)

__all__ = ["H2ClientConnection"]

_MAX_HEADER_LIST_BYTES: Final = 65_536  # h2's own default, kept when we replace the settings
_CANCEL: Final = h2.errors.ErrorCodes.CANCEL
_REFUSED_STREAM: Final = int(h2.errors.ErrorCodes.REFUSED_STREAM)


class _H2Connection(h2.connection.H2Connection):
    """``h2``'s state machine with two client-side adjustments.

    * ``open_outbound_streams`` is our own counter. ``h2`` scans every stream on each
      ``send_headers`` to count open ones, a cost that grows with the streams it remembers;
      we enforce the limit ourselves and drop finished streams from ``streams`` as they end.
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
    null = logging.getLogger("pushgres.http2.h2codec.null")
    null.addHandler(logging.NullHandler())
    null.propagate = False
    return null


class H2ClientConnection(StreamBookkeeping):
    """:class:`ClientConnection` on top of ``h2``.

    Parameters
    ----------
    max_streams:
        Local cap on concurrent streams; the effective limit is the smaller of this and the
        server's ``MAX_CONCURRENT_STREAMS`` (RFC 9113 section 5.1.2).
    initial_window_bytes:
        ``SETTINGS_INITIAL_WINDOW_SIZE`` we advertise for each stream.
    connection_window_bytes:
        Size the connection receive window is raised to right after the preface.
    never_indexed:
        Lowercase header names whose fields are sent as never-indexed literals (RFC 7541
        section 6.2.3): values that change per request, which would otherwise churn the
        peer's HPACK dynamic table or expose it to compression attacks (section 7.1.3).
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
        never_indexed: frozenset[bytes] = DEFAULT_NEVER_INDEXED,
        log: logging.Logger | None = None,
    ) -> None:
        super().__init__(max_streams, initial_window_bytes, connection_window_bytes)
        self._never_indexed = never_indexed_names(never_indexed)
        # Outbound validation re-checks every header of every request (a large share of
        # h2's per-request cost); our request builders emit valid headers.
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
        increment = self._connection_window - RFC_INITIAL_WINDOW_BYTES
        if increment > 0:
            h2c.increment_flow_control_window(increment)

    def start_request(self, headers: Sequence[tuple[bytes, bytes]], body: bytes) -> int:
        self._check_can_open()
        h2c = self._h2
        never = self._never_indexed
        encoded = [
            NeverIndexedHeaderTuple(name, value) if name in never else (name, value)
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
            # body must never shrink the window (RFC 9113 section 6.9).
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
