"""The fast sans-IO HTTP/2 client connection: a codec specialised for sending requests.

:class:`FastClientConnection` implements
:class:`~pushgres.http2.streams.ClientConnection` with the same rules and events as the
``h2``-based :class:`~pushgres.http2.h2codec.H2ClientConnection`, at a fraction of its CPU
cost per request:

* header blocks are built from cached pieces: every ``(name, value)`` pair that repeats
  (``:method``, ``:authority``, ``authorization``…) is encoded once; fields whose name the
  connection was given as ``never_indexed`` are written as never-indexed literals (RFC 7541
  section 6.2.3) from a name prefix built once per connection. The encoder never inserts
  into the dynamic table and never Huffman-codes, so encoding keeps no state;
* response header blocks are decoded by the ``hpack`` library's decoder, and a block that
  leaves the dynamic table as it was is decoded once while the table stays the same;
* frames are parsed straight from the receive buffer, with no frame objects.

It is a complete HTTP/2 client per RFC 9113: connection and stream flow control in both
directions, SETTINGS (mid-connection changes of MAX_CONCURRENT_STREAMS,
INITIAL_WINDOW_SIZE, MAX_FRAME_SIZE, HEADER_TABLE_SIZE), PING, GOAWAY with last-stream-id,
RST_STREAM, CONTINUATION both ways, padding, header-list limits, and connection errors that
queue GOAWAY with the right code and raise :class:`RemoteProtocolError`. No I/O here.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Sequence
from typing import Final

import hpack
from hpack.table import HeaderTable

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
    StreamBookkeeping,
    never_indexed_names,
)

__all__ = ["FastClientConnection", "encode_integer"]

PREFACE: Final = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

# Frame types (RFC 9113 section 6) and flags.
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY = range(8)
WINDOW_UPDATE, CONTINUATION = 8, 9
END_STREAM = ACK = 0x1
END_HEADERS = 0x4
PADDED = 0x8
PRIORITY_FLAG = 0x20
_PLAIN_HEADERS_MASK = END_HEADERS | PADDED | PRIORITY_FLAG

# Error codes (RFC 9113 section 7).
NO_ERROR, PROTOCOL_ERROR, INTERNAL_ERROR, FLOW_CONTROL_ERROR = 0, 1, 2, 3
FRAME_SIZE_ERROR, REFUSED_STREAM, CANCEL, COMPRESSION_ERROR = 6, 7, 8, 9
ENHANCE_YOUR_CALM = 11

# SETTINGS identifiers.
S_HEADER_TABLE_SIZE, S_ENABLE_PUSH, S_MAX_CONCURRENT_STREAMS = 1, 2, 3
S_INITIAL_WINDOW_SIZE, S_MAX_FRAME_SIZE, S_MAX_HEADER_LIST_SIZE = 4, 5, 6

MAX_WINDOW: Final = (1 << 31) - 1
DEFAULT_WINDOW: Final = 65_535
DEFAULT_FRAME_SIZE: Final = 16_384
MAX_FRAME_SIZE_LIMIT: Final = (1 << 24) - 1
MAX_HEADER_LIST_BYTES: Final = 65_536  # what we advertise, as the h2 codec does
MAX_HEADER_BLOCK_BYTES: Final = 2 * MAX_HEADER_LIST_BYTES  # bound on a CONTINUATION run
_CACHE_LIMIT: Final = 512
_DECODED_LIMIT: Final = 64
_DECODED_MAX_BLOCK: Final = 1024  # bytes: the cache stays under 64 KiB

_FRAME = struct.Struct(">HBBBL")  # length (high 16 bits, low 8 bits), type, flags, stream id
_U32 = struct.Struct(">L")
_SETTING = struct.Struct(">HL")


def _frame(ftype: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    n = len(payload)
    return _FRAME.pack(n >> 8, n & 0xFF, ftype, flags, stream_id) + payload


def encode_integer(value: int, prefix_bits: int, first: int) -> bytes:
    """HPACK integer (RFC 7541 5.1): ``first`` holds the bits above the prefix."""
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes((first | value,))
    out = bytearray((first | limit,))
    value -= limit
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


_STATIC_FIELDS: dict[tuple[bytes, bytes], int] = {}
_STATIC_NAMES: dict[bytes, int] = {}
for _index, (_name, _value) in enumerate(HeaderTable.STATIC_TABLE, start=1):
    _STATIC_FIELDS.setdefault((_name, _value), _index)
    _STATIC_NAMES.setdefault(_name, _index)


def _literal(name: bytes, value: bytes, never_indexed: bool) -> bytes:
    """A literal field without indexing (0000) or never indexed (0001), raw strings."""
    flags = 0x10 if never_indexed else 0x00
    index = _STATIC_NAMES.get(name)
    if index is not None:
        head = encode_integer(index, 4, flags)
    else:
        head = bytes((flags,)) + encode_integer(len(name), 7, 0) + name
    return head + encode_integer(len(value), 7, 0) + value


def _never_indexed_prefixes(names: frozenset[bytes]) -> dict[bytes, bytes]:
    """Each name's never-indexed representation up to the value's length."""
    return {name: _literal(name, b"", True)[:-1] for name in names}


_LENGTHS: Final = [bytes((n,)) for n in range(127)]


class _Stream:
    __slots__ = ("body", "chunks", "headers", "pending", "recv_window", "send_window", "status")

    def __init__(self, send_window: int, recv_window: int) -> None:
        self.status = 0
        self.headers: tuple[tuple[bytes, bytes], ...] = ()
        self.body = b""  # the first DATA payload; most responses have one or none
        self.chunks: list[bytes] | None = None  # every payload, once a second one comes
        self.pending = b""  # body bytes waiting for flow-control credit
        self.send_window = send_window
        self.recv_window = recv_window


class _ConnectionError(Exception):
    """Internal: a connection error (RFC 9113 5.4.1) found while parsing."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


class FastClientConnection(StreamBookkeeping):
    """:class:`~pushgres.http2.streams.ClientConnection` without ``h2``.

    Parameters are those of :class:`~pushgres.http2.h2codec.H2ClientConnection`.
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
        del log  # accepted for the shared signature: nothing here is worth logging
        self._never_prefixes = _never_indexed_prefixes(never_indexed_names(never_indexed))
        self._out: list[bytes] = []
        self._buf = bytearray()
        self._streams: dict[int, _Stream] = {}
        self._next_id = 1
        self._decoder = hpack.Decoder()
        self._decoder.max_header_list_size = MAX_HEADER_LIST_BYTES
        self._cache: dict[tuple[bytes, bytes], bytes] = {}
        self._decoded: dict[bytes, tuple[int, tuple[tuple[bytes, bytes], ...]]] = {}
        self._table_size_update = b""  # prefix for the next header block, after a change
        # Peer settings.
        self._peer_max_streams = MAX_WINDOW  # unlimited until the server says otherwise
        self._peer_initial_window = DEFAULT_WINDOW
        self._peer_max_frame = DEFAULT_FRAME_SIZE
        self._peer_max_header_list: int | None = None
        # Windows.
        self._send_conn_window = DEFAULT_WINDOW
        self._recv_conn_window = DEFAULT_WINDOW
        self._recv_conn_unacked = 0
        # CONTINUATION state.
        self._cont_stream = 0
        self._cont_flags = 0
        self._cont_block: list[bytes] = []
        self._cont_size = 0
        self._seen_settings = False

    # -- commands -------------------------------------------------------------------------

    def initiate(self) -> None:
        settings = b"".join(
            _SETTING.pack(key, value)
            for key, value in (
                (S_ENABLE_PUSH, 0),
                (S_INITIAL_WINDOW_SIZE, self._initial_window),
                (S_MAX_HEADER_LIST_SIZE, MAX_HEADER_LIST_BYTES),
            )
        )
        self._out.append(PREFACE + _frame(SETTINGS, 0, 0, settings))
        increment = self._connection_window - DEFAULT_WINDOW
        if increment > 0:
            self._recv_conn_window += increment
            self._out.append(_frame(WINDOW_UPDATE, 0, 0, _U32.pack(increment)))

    def _encode(self, headers: Sequence[tuple[bytes, bytes]]) -> bytes:
        cache = self._cache
        never = self._never_prefixes
        parts = [self._table_size_update] if self._table_size_update else []
        self._table_size_update = b""
        for pair in headers:
            piece = cache.get(pair)
            if piece is None:
                name, value = pair
                prefix = never.get(name)
                if prefix is not None:
                    # Per-message values: the name piece is ready, the value goes out raw.
                    size = len(value)
                    if size < 127:
                        parts.append(prefix + _LENGTHS[size] + value)
                    else:
                        parts.append(prefix + encode_integer(size, 7, 0) + value)
                    continue
                index = _STATIC_FIELDS.get(pair)
                piece = (
                    bytes((0x80 | index,)) if index is not None else _literal(name, value, False)
                )
                if len(cache) >= _CACHE_LIMIT:
                    cache.clear()
                cache[pair] = piece
            parts.append(piece)
        return b"".join(parts)

    def start_request(self, headers: Sequence[tuple[bytes, bytes]], body: bytes) -> int:
        self._check_can_open()
        stream_id = self._next_id
        if self._peer_max_header_list is not None:
            size = sum(len(n) + len(v) + 32 for n, v in headers)
            if size > self._peer_max_header_list:
                raise LocalProtocolError(
                    f"header list of {size} bytes exceeds the peer's limit of "
                    f"{self._peer_max_header_list}"
                )
        block = self._encode(headers)
        self._next_id = stream_id + 2
        flags = END_HEADERS if body else END_HEADERS | END_STREAM
        max_frame = self._peer_max_frame
        stream = _Stream(self._peer_initial_window, self._initial_window)
        self._streams[stream_id] = stream
        size = len(body)
        if len(block) <= max_frame:
            n = len(block)
            frames = _FRAME.pack(n >> 8, n & 0xFF, HEADERS, flags, stream_id) + block
            if (
                0 < size <= max_frame
                and size <= stream.send_window
                and size <= self._send_conn_window
            ):
                # The common case: the whole body fits the windows, one DATA frame.
                stream.send_window -= size
                self._send_conn_window -= size
                self._out.append(
                    frames + _FRAME.pack(size >> 8, size & 0xFF, DATA, END_STREAM, stream_id) + body
                )
                return stream_id
            self._out.append(frames)
        else:
            self._out.append(_frame(HEADERS, flags & END_STREAM, stream_id, block[:max_frame]))
            for start in range(max_frame, len(block), max_frame):
                chunk = block[start : start + max_frame]
                last = start + max_frame >= len(block)
                self._out.append(_frame(CONTINUATION, END_HEADERS if last else 0, stream_id, chunk))
        if body:
            stream.pending = body
            self._send_pending(stream_id, stream)
        return stream_id

    def data_to_send(self) -> bytes:
        out = self._out
        if not out:
            return b""
        data = out[0] if len(out) == 1 else b"".join(out)
        out.clear()
        return data

    def cancel(self, stream_id: int) -> None:
        if self._streams.pop(stream_id, None) is None:
            return
        self._blocked.pop(stream_id, None)
        if not (self._goaway_sent or self._terminated):
            self._out.append(_frame(RST_STREAM, 0, stream_id, _U32.pack(CANCEL)))

    def ping(self, data: bytes) -> None:
        if self._goaway_sent or self._terminated:
            raise LocalProtocolError("the connection is closed")
        if len(data) != 8:
            raise LocalProtocolError(f"PING data must be 8 bytes, got {len(data)}")
        self._out.append(_frame(PING, 0, 0, bytes(data)))

    def close(self, error_code: int = 0) -> None:
        if self._goaway_sent:
            return
        self._goaway_sent = True
        self._blocked.clear()
        if not self._terminated:
            self._out.append(_frame(GOAWAY, 0, 0, _U32.pack(0) + _U32.pack(error_code)))

    # -- input ----------------------------------------------------------------------------

    def receive_data(self, data: bytes) -> list[Event]:
        if self._goaway_sent or self._terminated:
            return []  # we are closing: nothing the peer says can be acted on
        buf = self._buf
        buf += data
        events: list[Event] = []
        streams = self._streams
        pos = 0
        end = len(buf)
        try:
            while end - pos >= 9:
                length = buf[pos] << 16 | buf[pos + 1] << 8 | buf[pos + 2]
                if length > DEFAULT_FRAME_SIZE:  # our SETTINGS_MAX_FRAME_SIZE
                    raise _ConnectionError(
                        FRAME_SIZE_ERROR, f"frame of {length} bytes exceeds 16384"
                    )
                if end - pos - 9 < length:
                    break
                ftype = buf[pos + 3]
                flags = buf[pos + 4]
                stream_id = _U32.unpack_from(buf, pos + 5)[0] & 0x7FFFFFFF
                payload = bytes(buf[pos + 9 : pos + 9 + length])
                pos += 9 + length
                if (
                    ftype == HEADERS
                    and flags & _PLAIN_HEADERS_MASK == END_HEADERS
                    and not self._cont_stream
                    and stream_id in streams
                ):
                    # The common case (a response to an open stream, no padding, priority
                    # or CONTINUATION): every check of _frame_received holds already.
                    self._header_block(stream_id, flags, payload, events)
                    continue
                self._frame_received(ftype, flags, stream_id, payload, events)
                if self._terminated:
                    break
        except _ConnectionError as exc:
            del buf[:]
            self._terminated = True
            self._out.append(_frame(GOAWAY, 0, 0, _U32.pack(0) + _U32.pack(exc.code)))
            raise RemoteProtocolError(f"peer violated HTTP/2: {exc}", error_code=exc.code) from None
        if self._terminated:
            del buf[:]  # after an error GOAWAY nothing more will be read
        else:
            del buf[:pos]
        return events

    def _frame_received(
        self, ftype: int, flags: int, stream_id: int, payload: bytes, out: list[Event]
    ) -> None:
        if self._cont_stream:
            if ftype != CONTINUATION or stream_id != self._cont_stream:
                raise _ConnectionError(
                    PROTOCOL_ERROR, "a header block was interrupted (CONTINUATION expected)"
                )
        elif not self._seen_settings and ftype != SETTINGS:
            raise _ConnectionError(PROTOCOL_ERROR, "the server preface must be SETTINGS")
        if ftype == HEADERS:
            self._on_headers(flags, stream_id, payload, out)
        elif ftype == DATA:
            self._on_data(flags, stream_id, payload, out)
        elif ftype == WINDOW_UPDATE:
            self._on_window_update(stream_id, payload, out)
        elif ftype == RST_STREAM:
            self._on_rst_stream(stream_id, payload, out)
        elif ftype == SETTINGS:
            self._on_settings(flags, stream_id, payload, out)
        elif ftype == PING:
            if stream_id:
                raise _ConnectionError(PROTOCOL_ERROR, "PING on a stream")
            if len(payload) != 8:
                raise _ConnectionError(FRAME_SIZE_ERROR, "PING payload is not 8 bytes")
            if flags & ACK:
                out.append(PingAcknowledged(payload))
            else:
                self._out.append(_frame(PING, ACK, 0, payload))
        elif ftype == GOAWAY:
            self._on_goaway(stream_id, payload, out)
        elif ftype == CONTINUATION:
            if not self._cont_stream:
                raise _ConnectionError(PROTOCOL_ERROR, "CONTINUATION without a header block")
            self._cont_block.append(payload)
            self._cont_size += len(payload)
            if self._cont_size > MAX_HEADER_BLOCK_BYTES:
                raise _ConnectionError(ENHANCE_YOUR_CALM, "header block too large")
            if flags & END_HEADERS:
                block = b"".join(self._cont_block)
                sid, hflags = self._cont_stream, self._cont_flags
                self._cont_stream = 0
                self._cont_block = []
                self._cont_size = 0
                self._header_block(sid, hflags, block, out)
        elif ftype == PRIORITY:
            if not stream_id:
                raise _ConnectionError(PROTOCOL_ERROR, "PRIORITY on stream 0")
            if len(payload) != 5:
                raise _ConnectionError(FRAME_SIZE_ERROR, "PRIORITY payload is not 5 bytes")
        elif ftype == PUSH_PROMISE:
            raise _ConnectionError(PROTOCOL_ERROR, "PUSH_PROMISE received with push disabled")
        # Unknown frame types are ignored (RFC 9113 5.5).

    def _check_stream(self, stream_id: int, what: str) -> None:
        if not stream_id:
            raise _ConnectionError(PROTOCOL_ERROR, f"{what} on stream 0")
        if not stream_id & 1 or stream_id >= self._next_id:
            raise _ConnectionError(PROTOCOL_ERROR, f"{what} on idle stream {stream_id}")

    def _on_headers(self, flags: int, stream_id: int, payload: bytes, out: list[Event]) -> None:
        self._check_stream(stream_id, "HEADERS")
        start, stop = 0, len(payload)
        if flags & (PADDED | PRIORITY_FLAG):
            if flags & PADDED:
                if not payload:
                    raise _ConnectionError(FRAME_SIZE_ERROR, "padded HEADERS without a length")
                start = 1
                stop -= payload[0]
            if flags & PRIORITY_FLAG:
                start += 5
            if stop < start:
                raise _ConnectionError(PROTOCOL_ERROR, "HEADERS padding exceeds the payload")
            payload = payload[start:stop]
        if flags & END_HEADERS:
            self._header_block(stream_id, flags, payload, out)
        else:
            self._cont_stream = stream_id
            self._cont_flags = flags
            self._cont_block = [payload]
            self._cont_size = len(payload)

    def _decode(self, block: bytes) -> tuple[int, tuple[tuple[bytes, bytes], ...]]:
        """``(status, headers)`` of a response header block; status -1 when malformed.

        Blocks that leave the HPACK dynamic table untouched decode the same way until the
        table next changes, so their result is kept, keyed by the block's bytes: a server
        answering with the same indexed headers costs one dictionary lookup per response.
        Any block that changes the table empties the cache.
        """
        cached = self._decoded.get(block)
        if cached is not None:
            return cached
        table = self._decoder.header_table
        entries = table.dynamic_entries
        first = entries[0] if entries else None
        count, maxsize = len(entries), table.maxsize
        try:
            fields = self._decoder.decode(block, raw=True)
        except hpack.OversizedHeaderListError as exc:
            raise _ConnectionError(PROTOCOL_ERROR, f"header list too large: {exc}") from None
        except hpack.HPACKError as exc:
            raise _ConnectionError(COMPRESSION_ERROR, f"HPACK: {exc}") from None
        status = 0
        headers: list[tuple[bytes, bytes]] = []
        for name, value in fields:
            if name == b":status":
                status = int(value) if len(value) == 3 and value.isdigit() else -1
            elif name[:1] == b":":
                status = -1
                break
            else:
                headers.append((bytes(name), bytes(value)))
        result = (status if status >= 100 else -1, tuple(headers))
        unchanged = (
            len(entries) == count
            and table.maxsize == maxsize
            and (entries[0] if entries else None) is first
        )
        if not unchanged:
            self._decoded.clear()
        elif len(block) <= _DECODED_MAX_BLOCK:
            if len(self._decoded) >= _DECODED_LIMIT:
                self._decoded.clear()
            self._decoded[block] = result
        return result

    def _header_block(self, stream_id: int, flags: int, block: bytes, out: list[Event]) -> None:
        status, headers = self._decode(block)  # always: the decoder must see every block
        stream = self._streams.get(stream_id)
        if stream is None:
            return  # a stream we cancelled or that ended: the block only fed the decoder
        if not stream.status:
            if status < 0:
                self._stream_error(stream_id, PROTOCOL_ERROR, out)  # malformed (8.1.1)
                return
            if status < 200:
                if flags & END_STREAM:
                    self._stream_error(stream_id, PROTOCOL_ERROR, out)
                return  # informational: the final response follows
            stream.status = status
            stream.headers = headers
        elif not flags & END_STREAM:
            self._stream_error(stream_id, PROTOCOL_ERROR, out)  # trailers must end the stream
            return
        if flags & END_STREAM:
            self._stream_ended(stream_id, stream, out)

    def _on_data(self, flags: int, stream_id: int, payload: bytes, out: list[Event]) -> None:
        self._check_stream(stream_id, "DATA")
        length = len(payload)
        self._recv_conn_window -= length
        if self._recv_conn_window < 0:
            raise _ConnectionError(FLOW_CONTROL_ERROR, "DATA beyond the connection window")
        # Connection credit goes back in halves of the window, every byte of it: an unread
        # error body or a cancelled stream never shrinks the window (RFC 9113 section 6.9).
        self._recv_conn_unacked += length
        if self._recv_conn_unacked >= self._connection_window >> 1:
            self._out.append(_frame(WINDOW_UPDATE, 0, 0, _U32.pack(self._recv_conn_unacked)))
            self._recv_conn_window += self._recv_conn_unacked
            self._recv_conn_unacked = 0
        if flags & PADDED:
            if not payload or payload[0] >= length:
                raise _ConnectionError(PROTOCOL_ERROR, "DATA padding exceeds the payload")
            data = payload[1 : length - payload[0]]
        else:
            data = payload
        stream = self._streams.get(stream_id)
        if stream is None:
            return  # closed or cancelled by us: credited above, otherwise ignored
        if not stream.status:
            self._stream_error(stream_id, PROTOCOL_ERROR, out)  # DATA before HEADERS
            return
        stream.recv_window -= length
        if stream.recv_window < 0:
            raise _ConnectionError(FLOW_CONTROL_ERROR, f"DATA beyond stream {stream_id}'s window")
        if data:
            if stream.chunks is not None:
                stream.chunks.append(data)
            elif stream.body:
                stream.chunks = [stream.body, data]
            else:
                stream.body = data
        if flags & END_STREAM:
            self._stream_ended(stream_id, stream, out)
        elif length:
            stream.recv_window += length
            self._out.append(_frame(WINDOW_UPDATE, 0, stream_id, _U32.pack(length)))

    def _stream_ended(self, stream_id: int, stream: _Stream, out: list[Event]) -> None:
        del self._streams[stream_id]
        if stream_id in self._blocked:
            del self._blocked[stream_id]
            # The server answered before reading the whole body: stop sending it.
            self._out.append(_frame(RST_STREAM, 0, stream_id, _U32.pack(CANCEL)))
        chunks = stream.chunks
        body = stream.body if chunks is None else b"".join(chunks)
        out.append(ResponseReceived(stream_id, stream.status, stream.headers, body))

    def _stream_error(self, stream_id: int, code: int, out: list[Event]) -> None:
        """A stream error (RFC 9113 5.4.2): reset it and report it reset."""
        if self._streams.pop(stream_id, None) is not None:
            self._blocked.pop(stream_id, None)
            out.append(StreamReset(stream_id, code))
        self._out.append(_frame(RST_STREAM, 0, stream_id, _U32.pack(code)))

    def _on_rst_stream(self, stream_id: int, payload: bytes, out: list[Event]) -> None:
        self._check_stream(stream_id, "RST_STREAM")
        if len(payload) != 4:
            raise _ConnectionError(FRAME_SIZE_ERROR, "RST_STREAM payload is not 4 bytes")
        if self._streams.pop(stream_id, None) is None:
            return
        self._blocked.pop(stream_id, None)
        code = _U32.unpack(payload)[0]
        out.append(
            StreamRefused(stream_id) if code == REFUSED_STREAM else StreamReset(stream_id, code)
        )

    def _on_window_update(self, stream_id: int, payload: bytes, out: list[Event]) -> None:
        if len(payload) != 4:
            raise _ConnectionError(FRAME_SIZE_ERROR, "WINDOW_UPDATE payload is not 4 bytes")
        increment = _U32.unpack(payload)[0] & 0x7FFFFFFF
        if not stream_id:
            if not increment:
                raise _ConnectionError(PROTOCOL_ERROR, "WINDOW_UPDATE of 0 on the connection")
            self._send_conn_window += increment
            if self._send_conn_window > MAX_WINDOW:
                raise _ConnectionError(FLOW_CONTROL_ERROR, "connection window above 2^31-1")
        else:
            if not stream_id & 1 or stream_id >= self._next_id:
                raise _ConnectionError(PROTOCOL_ERROR, f"WINDOW_UPDATE on idle stream {stream_id}")
            stream = self._streams.get(stream_id)
            if stream is None:
                return
            if not increment:
                self._stream_error(stream_id, PROTOCOL_ERROR, out)
                return
            stream.send_window += increment
            if stream.send_window > MAX_WINDOW:
                self._stream_error(stream_id, FLOW_CONTROL_ERROR, out)
                return
        self._resume_blocked()

    def _on_settings(self, flags: int, stream_id: int, payload: bytes, out: list[Event]) -> None:
        if stream_id:
            raise _ConnectionError(PROTOCOL_ERROR, "SETTINGS on a stream")
        if flags & ACK:
            if payload:
                raise _ConnectionError(FRAME_SIZE_ERROR, "SETTINGS ACK with a payload")
            return
        if len(payload) % 6:
            raise _ConnectionError(FRAME_SIZE_ERROR, "SETTINGS payload not a multiple of 6")
        for offset in range(0, len(payload), 6):
            key, value = _SETTING.unpack_from(payload, offset)
            if key == S_MAX_CONCURRENT_STREAMS:
                self._peer_max_streams = value
            elif key == S_INITIAL_WINDOW_SIZE:
                if value > MAX_WINDOW:
                    raise _ConnectionError(FLOW_CONTROL_ERROR, "INITIAL_WINDOW_SIZE above 2^31-1")
                delta = value - self._peer_initial_window
                self._peer_initial_window = value
                for stream in self._streams.values():
                    stream.send_window += delta
                    if stream.send_window > MAX_WINDOW:
                        raise _ConnectionError(FLOW_CONTROL_ERROR, "a stream window overflowed")
            elif key == S_MAX_FRAME_SIZE:
                if not DEFAULT_FRAME_SIZE <= value <= MAX_FRAME_SIZE_LIMIT:
                    raise _ConnectionError(PROTOCOL_ERROR, f"invalid MAX_FRAME_SIZE {value}")
                self._peer_max_frame = value
            elif key == S_MAX_HEADER_LIST_SIZE:
                self._peer_max_header_list = value
            elif key == S_ENABLE_PUSH:
                if value != 0:  # 1 is invalid from a server, other values from anyone
                    raise _ConnectionError(PROTOCOL_ERROR, f"invalid ENABLE_PUSH {value}")
            elif key == S_HEADER_TABLE_SIZE:
                # Our encoder never uses the dynamic table; say so at the start of the next
                # block so a smaller table is acknowledged (RFC 7541 4.2).
                self._table_size_update = b"\x20"
        self._out.append(_frame(SETTINGS, ACK, 0))
        self._seen_settings = True
        self._is_ready = True
        self._limit = min(self._peer_max_streams, self._cap)
        self._resume_blocked()
        out.append(SettingsChanged(self._limit))

    def _on_goaway(self, stream_id: int, payload: bytes, out: list[Event]) -> None:
        if stream_id:
            raise _ConnectionError(PROTOCOL_ERROR, "GOAWAY on a stream")
        if len(payload) < 8:
            raise _ConnectionError(FRAME_SIZE_ERROR, "GOAWAY payload shorter than 8 bytes")
        last = _U32.unpack_from(payload, 0)[0] & 0x7FFFFFFF
        code = _U32.unpack_from(payload, 4)[0]
        self._goaway(last, code, payload[8:], out)

    # -- flow control ---------------------------------------------------------------------

    def _send_pending(self, stream_id: int, stream: _Stream) -> None:
        data = stream.pending
        max_frame = self._peer_max_frame
        out = self._out
        while data:
            size = min(stream.send_window, self._send_conn_window, len(data), max_frame)
            if size <= 0:
                break
            last = size == len(data)
            chunk = data if last else data[:size]
            out.append(
                _FRAME.pack(size >> 8, size & 0xFF, DATA, END_STREAM if last else 0, stream_id)
                + chunk
            )
            stream.send_window -= size
            self._send_conn_window -= size
            data = b"" if last else data[size:]
        stream.pending = data
        if data:
            self._blocked[stream_id] = None
        else:
            self._blocked.pop(stream_id, None)

    def _connection_window_empty(self) -> bool:
        return self._send_conn_window <= 0

    @property
    def next_stream_id_exhausted(self) -> bool:
        return self._next_id > MAX_STREAM_ID
