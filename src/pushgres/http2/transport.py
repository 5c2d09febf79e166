"""The asyncio adapter for one HTTP/2 socket: bytes in and out, per-stream futures, state.

:class:`Http2Protocol` is a thin :class:`asyncio.Protocol` around a sans-IO
:class:`~pushgres.http2.streams.ClientConnection`. It feeds received bytes to the
connection, resolves each stream's future from the events that come back, keeps the
pooled-connection state (:class:`~pushgres.http2.lifecycle.ConnState`) and tells its
listener (the pool) when slots free up or the state changes.

Writes are coalesced: one ``transport.write`` per received chunk and one per
loop iteration of submits, scheduled once with ``call_soon``. Failures map onto the
transport error tree (RFC 9113 section 8.7): REFUSED_STREAM and streams above a GOAWAY's
``last_stream_id`` fail with :class:`StreamRefused` (safe to resend at once), other resets
with :class:`StreamReset`, and a lost socket with :class:`ConnectionLost` for every stream
still in flight.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol, cast

from ..exceptions import (
    ConnectError,
    ConnectionLost,
    LocalProtocolError,
    ProtocolError,
    StreamRefused,
    StreamReset,
    TransportError,
)
from .events import (
    ConnectionClosed,
    GoAwayReceived,
    PingAcknowledged,
    ResponseReceived,
    SettingsChanged,
)
from .events import StreamRefused as StreamRefusedEvent
from .events import StreamReset as StreamResetEvent
from .lifecycle import ConnInput, ConnState, next_state
from .streams import ClientConnection

__all__ = ["ConnectionListener", "Http2Protocol", "ResultCallback"]

logger = logging.getLogger(__name__)

ResultCallback = Callable[[Any, "ResponseReceived | TransportError", "Http2Protocol"], None]
"""Called once per stream, from ``data_received`` or when the socket dies, as
``callback(token, result, connection)``: the response, or the transport error that ended the
stream. Not called after :meth:`Http2Protocol.cancel`."""


def _resolve_future(
    future: asyncio.Future[ResponseReceived],
    result: ResponseReceived | TransportError,
    conn: Http2Protocol,
) -> None:
    if future.done():
        return
    if isinstance(result, ResponseReceived):
        future.set_result(result)
    else:
        future.set_exception(result)


class ConnectionListener(Protocol):
    """What the owner of an :class:`Http2Protocol` is told."""

    def slots_freed(self, conn: Http2Protocol, count: int) -> None:
        """``count`` streams finished on ``conn`` (only called while it is READY)."""

    def state_changed(self, conn: Http2Protocol) -> None:
        """``conn`` became READY, changed its stream limit, started draining or closed."""

    def goaway_received(self, conn: Http2Protocol, event: GoAwayReceived) -> None:
        """The peer sent GOAWAY on ``conn``."""


class Http2Protocol(asyncio.Protocol):
    """One HTTP/2 client connection on one socket.

    Parameters
    ----------
    conn:
        The sans-IO connection; owned by this protocol from now on.
    connection_id:
        Identifier reported in responses so callers can retire a specific connection.
    listener:
        Receives slot and state notifications.
    """

    def __init__(
        self, conn: ClientConnection, *, connection_id: int, listener: ConnectionListener
    ) -> None:
        self.conn = conn
        self.connection_id = connection_id
        self.state = ConnState.CONNECTING
        self.created_at = time.monotonic()
        self.last_received_at = self.created_at
        self._listener = listener
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._streams: dict[int, tuple[ResultCallback, Any]] = {}
        self._pings: dict[bytes, asyncio.Future[bool]] = {}
        # Results, never exceptions: nobody may be awaiting them when the socket dies.
        self._ready: asyncio.Future[BaseException | None] = self._loop.create_future()
        self._closed: asyncio.Future[None] = self._loop.create_future()
        self._flush_scheduled = False
        self._ping_counter = 0

    # -- public API used by the pool ------------------------------------------------------

    @property
    def in_flight(self) -> int:
        """Streams waiting for their response."""
        return len(self._streams)

    @property
    def available_streams(self) -> int:
        """Streams that may be opened now (0 unless READY)."""
        if self.state is not ConnState.READY:
            return 0
        return self.conn.available_streams

    @property
    def stream_limit(self) -> int:
        """The connection's effective concurrent-stream limit."""
        return self.conn.max_concurrent_streams

    @property
    def is_closed(self) -> bool:
        """Whether the connection reached CLOSED (no streams, no further events)."""
        return self.state is ConnState.CLOSED

    @property
    def is_socket_closed(self) -> bool:
        """Whether asyncio reported the socket closed (or it never opened)."""
        return self._transport is None or self._closed.done()

    def get_extra_info(self, name: str) -> object:
        """``transport.get_extra_info(name)``, or ``None`` without a transport."""
        return None if self._transport is None else self._transport.get_extra_info(name)

    async def wait_ready(self) -> None:
        """Wait for the server's first SETTINGS (the caller applies the connect deadline).

        Raises
        ------
        ConnectError
            The connection closed or failed before it became ready.
        """
        error = await asyncio.shield(self._ready)
        if error is not None:
            raise ConnectError(
                f"connection closed before the server's SETTINGS: {error}"
            ) from error

    async def wait_closed(self) -> None:
        """Wait until the socket is closed (returns at once if it never opened)."""
        if self._transport is not None:
            await asyncio.shield(self._closed)

    def submit(
        self,
        headers: Sequence[tuple[bytes, bytes]],
        body: bytes,
        callback: ResultCallback,
        token: Any,
    ) -> int:
        """Open a stream; ``callback(token, result, self)`` receives its outcome; return its id.

        The bytes are written at the end of this loop iteration, together with every other
        submit of the same iteration.

        Raises
        ------
        LocalProtocolError
            The connection cannot take a stream now.
        """
        if self.state is not ConnState.READY:
            raise LocalProtocolError(f"connection {self.connection_id} is {self.state.value}")
        stream_id = self.conn.start_request(headers, body)
        self._streams[stream_id] = (callback, token)
        self._schedule_flush()
        return stream_id

    def submit_future(
        self, headers: Sequence[tuple[bytes, bytes]], body: bytes
    ) -> tuple[int, asyncio.Future[ResponseReceived]]:
        """:meth:`submit` with a future for the response (resolved with the transport error)."""
        future: asyncio.Future[ResponseReceived] = self._loop.create_future()
        return self.submit(headers, body, _resolve_future, future), future

    def cancel(self, stream_id: int) -> None:
        """Reset ``stream_id`` with CANCEL and free its slot (no-op once it finished).

        The stream's callback is not called: the caller gave up on it.
        """
        if self._streams.pop(stream_id, None) is None:
            return
        if self.state is not ConnState.CLOSED:
            self.conn.cancel(stream_id)
            self._schedule_flush()
        self._after_streams_finished(1)

    def ping(self) -> asyncio.Future[bool]:
        """Send a PING; the future becomes ``True`` on the ACK, ``False`` if the socket closes."""
        self._ping_counter += 1
        data = self._ping_counter.to_bytes(8, "big")
        future: asyncio.Future[bool] = self._loop.create_future()
        if self.state is ConnState.CLOSED:
            future.set_result(False)
            return future
        self.conn.ping(data)
        self._pings[data] = future
        self._schedule_flush()
        return future

    def drain(self) -> None:
        """Open no new streams; close once the in-flight streams have finished."""
        if self.state is ConnState.CLOSED:
            return
        if self.state is not ConnState.DRAINING:
            self._set_state(ConnInput.DRAIN)
        if not self._streams:
            self.close()

    def close(self, error_code: int = 0) -> None:
        """Send GOAWAY and close the socket; streams still in flight fail with ConnectionLost."""
        if self.state is ConnState.CLOSED:
            return
        self.conn.close(error_code)
        transport = self._transport
        if transport is not None and not transport.is_closing():
            data = self.conn.data_to_send()
            if data:
                transport.write(data)
            transport.close()
        self._lost(f"connection {self.connection_id} closed locally", None)

    def abort(self, reason: str) -> None:
        """Drop the socket at once; streams in flight fail with ConnectionLost."""
        if self._transport is not None:
            self._transport.abort()
        self._lost(f"connection {self.connection_id} aborted: {reason}", None)

    # -- asyncio.Protocol -----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's TLS transport is not an asyncio.Transport subclass, but has its methods.
        transport = cast(asyncio.Transport, transport)
        self._transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except (OSError, AttributeError):  # not a TCP socket (tests over pipes)
                pass
        self.conn.initiate()
        transport.write(self.conn.data_to_send())

    def data_received(self, data: bytes) -> None:
        self.last_received_at = time.monotonic()
        try:
            events = self.conn.receive_data(data)
        except ProtocolError as exc:
            logger.warning(
                "HTTP/2 protocol error; dropping the connection",
                extra={"action": "h2_protocol_error", "connection_id": self.connection_id},
                exc_info=exc,
            )
            self._write_pending()
            if self._transport is not None:
                self._transport.close()
            self._lost(f"connection {self.connection_id}: protocol error: {exc}", exc)
            return
        freed = 0
        changed = False
        for event in events:
            if isinstance(event, ResponseReceived):
                entry = self._streams.pop(event.stream_id, None)
                if entry is not None:
                    freed += 1
                    entry[0](entry[1], event, self)
            elif isinstance(event, StreamRefusedEvent):
                freed += self._fail(
                    event.stream_id, StreamRefused(f"stream {event.stream_id} refused by the peer")
                )
            elif isinstance(event, StreamResetEvent):
                freed += self._fail(
                    event.stream_id,
                    StreamReset(
                        f"stream {event.stream_id} reset by the peer (error code "
                        f"{event.error_code})",
                        error_code=event.error_code,
                    ),
                )
            elif isinstance(event, SettingsChanged):
                if self.state is ConnState.CONNECTING and not self._ready.done():
                    self._ready.set_result(None)
                if self.state is not ConnState.CLOSED:
                    self._set_state(ConnInput.SETTINGS_RECEIVED)
                changed = True
            elif isinstance(event, GoAwayReceived):
                self._on_goaway(event)
                changed = True
            elif isinstance(event, PingAcknowledged):
                ping = self._pings.pop(event.data, None)
                if ping is not None and not ping.done():
                    ping.set_result(True)
            elif isinstance(event, ConnectionClosed):
                self._write_pending()
                if self._transport is not None:
                    self._transport.close()
                self._lost(
                    f"connection {self.connection_id} terminated by the peer: {event.reason}", None
                )
                return
        self._write_pending()
        if freed:
            self._after_streams_finished(freed)
        if changed and self.state is not ConnState.CLOSED:
            self._listener.state_changed(self)

    def eof_received(self) -> bool:
        return False  # close the transport; connection_lost fails what is left

    def connection_lost(self, exc: Exception | None) -> None:
        reason = f": {exc}" if exc is not None else ""
        self._lost(f"connection {self.connection_id} lost{reason}", exc)
        if not self._closed.done():
            self._closed.set_result(None)

    # -- internals ------------------------------------------------------------------------

    def _on_goaway(self, event: GoAwayReceived) -> None:
        debug = event.debug_data[:200].decode("utf-8", "replace")
        logger.info(
            "GOAWAY received",
            extra={
                "action": "h2_goaway",
                "connection_id": self.connection_id,
                "last_stream_id": event.last_stream_id,
                "error_code": event.error_code,
                "debug": debug,
                "unprocessed": len(event.unprocessed),
            },
        )
        for stream_id in event.unprocessed:
            self._fail(
                stream_id,
                StreamRefused(
                    f"stream {stream_id} above GOAWAY last_stream_id {event.last_stream_id}"
                ),
            )
        if self.state is not ConnState.CLOSED:
            self._set_state(ConnInput.GOAWAY_RECEIVED)
        self._listener.goaway_received(self, event)
        if not self._streams and self.state is ConnState.DRAINING:
            self.close()

    def _fail(self, stream_id: int, exc: TransportError) -> int:
        entry = self._streams.pop(stream_id, None)
        if entry is None:
            return 0
        entry[0](entry[1], exc, self)
        return 1

    def _after_streams_finished(self, count: int) -> None:
        if self.state is ConnState.DRAINING and not self._streams:
            self.close()
        elif self.state is ConnState.READY:
            self._listener.slots_freed(self, count)

    def _set_state(self, event: ConnInput) -> None:
        self.state = next_state(self.state, event)

    def _schedule_flush(self) -> None:
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self.state is not ConnState.CLOSED:
            self._write_pending()

    def _write_pending(self) -> None:
        data = self.conn.data_to_send()
        transport = self._transport
        if data and transport is not None and not transport.is_closing():
            transport.write(data)

    def _lost(self, message: str, cause: BaseException | None) -> None:
        """Terminal: fail everything in flight, resolve the waiters, tell the listener once."""
        if self.state is ConnState.CLOSED:
            return
        self.state = next_state(self.state, ConnInput.LOST)
        streams, self._streams = self._streams, {}
        for callback, token in streams.values():
            error = ConnectionLost(message)
            error.__cause__ = cause
            callback(token, error, self)
        pings, self._pings = self._pings, {}
        for ping in pings.values():
            if not ping.done():
                ping.set_result(False)
        if not self._ready.done():
            self._ready.set_result(cause or ConnectionLost(message))
        self._listener.state_changed(self)
