"""The fast codec against RFC 9113 and RFC 7541 corners not covered in ``test_fastconn.py``.

Hand-built server frames (the helpers of ``test_fastconn.py``) reach what an ``h2`` server
never sends: flow control on closed streams and padding, stream-level errors that leave the
connection usable, settings that overflow open windows, unknown frames, oversized header
lists. The encoder's output is checked byte for byte against the representations it promises
(static index, literal without indexing, never indexed; no Huffman, no dynamic table). The
property tests build random frame *sequences* and check invariants of the stream bookkeeping
and the receive buffer's bound.
"""

from __future__ import annotations

import struct

import h2.config
import h2.connection
import h2.events
import hpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pushgres.exceptions import RemoteProtocolError
from pushgres.http2.events import (
    ConnectionClosed,
    Event,
    GoAwayReceived,
    ResponseReceived,
    StreamRefused,
    StreamReset,
)
from pushgres.http2.fastconn import FastClientConnection

from .test_fastconn import (
    HEADERS,
    frame,
    frames_of,
    goaway_code,
    ready_client,
    response_block,
    settings_frame,
)

DATA, HEADERS_T, PRIORITY, RST, SETTINGS, PUSH, PING, GOAWAY, WINDOW, CONT = range(10)
BUFFER_BOUND = 16_384 + 9  # one incomplete frame of our maximum size, header included


def window_updates(data: bytes) -> dict[int, int]:
    """Total WINDOW_UPDATE increments the client sent, by stream id."""
    totals: dict[int, int] = {}
    for ftype, _, sid, payload in frames_of(data):
        if ftype == WINDOW:
            totals[sid] = totals.get(sid, 0) + int.from_bytes(payload, "big")
    return totals


# -- receive-side flow control ---------------------------------------------------------------


def test_data_for_a_cancelled_stream_still_credits_the_connection() -> None:
    client = FastClientConnection(connection_window_bytes=65_535)
    client.initiate()
    client.receive_data(settings_frame())
    sid = client.start_request(HEADERS, b"")
    other = client.start_request(HEADERS, b"")
    client.receive_data(frame(HEADERS_T, 4, sid, response_block()))
    client.cancel(sid)
    assert (RST, 0, sid, struct.pack(">I", 8)) in frames_of(client.data_to_send())
    # Four times the connection window arrives for the stream we gave up on.
    for _ in range(16):
        assert client.receive_data(frame(DATA, 0, sid, b"x" * 16_384)) == []
    credit = window_updates(client.data_to_send())
    assert sid not in credit  # a closed stream gets no stream credit...
    assert credit[0] >= 16 * 16_384 - 65_535  # ...but the connection window stays open
    events = client.receive_data(frame(HEADERS_T, 4, other, response_block()))
    events += client.receive_data(frame(DATA, 1, other, b"y" * 16_384))
    assert events == [ResponseReceived(other, 200, (), b"y" * 16_384)]


def test_padding_counts_toward_flow_control() -> None:
    client = FastClientConnection(connection_window_bytes=65_535, initial_window_bytes=65_535)
    client.initiate()
    client.receive_data(settings_frame())
    sid = client.start_request(HEADERS, b"")
    client.receive_data(frame(HEADERS_T, 4, sid, response_block()))
    client.data_to_send()
    padded = frame(DATA, 0x8, sid, b"\xff" + b"d" * 100 + b"\0" * 255)  # 356 bytes, 100 data
    for _ in range(200):  # 71,200 flow-controlled bytes: more than either window
        client.receive_data(padded)
    credit = window_updates(client.data_to_send())
    assert credit[sid] == 200 * 356
    assert credit[0] >= 200 * 356 - 65_535
    events = client.receive_data(frame(DATA, 0x9, sid, b"\x03end\0\0\0"))
    assert events == [ResponseReceived(sid, 200, (), b"d" * 20_000 + b"end")]


# -- stream errors keep the connection -------------------------------------------------------


@pytest.mark.parametrize(
    ("increment", "code"),
    [(0, 1), ((1 << 31) - 1, 3)],
    ids=["zero increment", "window above 2^31-1"],
)
def test_bad_stream_window_update_resets_only_that_stream(increment: int, code: int) -> None:
    client = ready_client()
    sid = client.start_request(HEADERS, b"")
    other = client.start_request(HEADERS, b"")
    client.data_to_send()
    events = client.receive_data(frame(WINDOW, 0, sid, struct.pack(">I", increment)))
    assert events == [StreamReset(sid, code)]
    assert (RST, 0, sid, struct.pack(">I", code)) in frames_of(client.data_to_send())
    assert client.open_streams == 1 and not client.is_closing
    events = client.receive_data(frame(HEADERS_T, 5, other, response_block(204)))
    assert events == [ResponseReceived(other, 204, (), b"")]


def test_initial_window_raise_overflowing_an_open_stream_is_a_connection_error() -> None:
    client = ready_client()
    sid = client.start_request(HEADERS, b"")
    client.receive_data(frame(WINDOW, 0, sid, struct.pack(">I", (1 << 31) - 1 - 65_535)))
    client.data_to_send()
    with pytest.raises(RemoteProtocolError) as info:
        client.receive_data(settings_frame(initial_window_size=65_536))
    assert info.value.error_code == 3
    assert goaway_code(client.data_to_send()) == 3


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (frame(RST, 0, 9, struct.pack(">I", 8)), 1),
        (frame(WINDOW, 0, 9, struct.pack(">I", 1)), 1),
        (frame(WINDOW, 0, 2, struct.pack(">I", 1)), 1),
        (frame(RST, 0, 0, struct.pack(">I", 8)), 1),
        (frame(PRIORITY, 0, 0, b"\0" * 5), 1),
        (frame(WINDOW, 0, 0, b"\0\0\0"), 6),
        (settings_frame(max_frame_size=1 << 24), 1),
        (settings_frame(enable_push=2), 1),
        (frame(0xA, 0, 0, b""), None),
    ],
    ids=[
        "RST_STREAM on an idle stream",
        "WINDOW_UPDATE on an idle stream",
        "WINDOW_UPDATE on an even stream",
        "RST_STREAM on stream 0",
        "PRIORITY on stream 0",
        "WINDOW_UPDATE of 3 bytes",
        "MAX_FRAME_SIZE above 2^24-1",
        "ENABLE_PUSH 2",
        "unknown frame type (not an error)",
    ],
)
def test_more_connection_errors(data: bytes, code: int | None) -> None:
    client = ready_client()
    client.start_request(HEADERS, b"")
    client.data_to_send()
    if code is None:
        assert client.receive_data(data) == []
        assert not client.is_closing
        return
    with pytest.raises(RemoteProtocolError) as info:
        client.receive_data(data)
    assert info.value.error_code == code
    assert goaway_code(client.data_to_send()) == code
    assert client.receive_data(frame(PING, 0, 0, b"x" * 8)) == []


def test_unknown_frames_and_settings_are_ignored_between_and_not_inside_blocks() -> None:
    client = ready_client()
    sid = client.start_request(HEADERS, b"")
    client.data_to_send()
    unknown = frame(0xFB, 0xFF, sid, b"extension") + frame(0x10, 0, 0, b"")
    odd_setting = frame(SETTINGS, 0, 0, struct.pack(">HI", 0x99, 12345))
    events = client.receive_data(unknown + odd_setting + unknown)
    assert len(events) == 1 and client.max_concurrent_streams == 500
    assert (SETTINGS, 1, 0, b"") in frames_of(client.data_to_send())
    with pytest.raises(RemoteProtocolError) as info:  # RFC 9113 6.10: nothing interleaves
        client.receive_data(frame(HEADERS_T, 0, sid, b"\x88") + unknown)
    assert info.value.error_code == 1


def test_response_header_list_above_our_limit_is_refused() -> None:
    client = ready_client()
    sid = client.start_request(HEADERS, b"")
    client.data_to_send()
    fields = [(b":status", b"200")] + [(b"x-%d" % n, b"v" * 14_000) for n in range(5)]
    block = bytes(hpack.Encoder().encode(fields))  # 70 KB of header list
    parts = [block[i : i + 16_384] for i in range(0, len(block), 16_384)]
    data = frame(HEADERS_T, 0, sid, parts[0])
    data += b"".join(frame(CONT, 0, sid, p) for p in parts[1:-1])
    data += frame(CONT, 4, sid, parts[-1])
    with pytest.raises(RemoteProtocolError) as info:
        client.receive_data(data)
    assert goaway_code(client.data_to_send()) == info.value.error_code != 0


def test_padded_headers_followed_by_continuation_and_end_stream() -> None:
    client = ready_client()
    sid = client.start_request(HEADERS, b"")
    block = response_block(429, retry_after="30", apns_id="z" * 100)
    first = frame(HEADERS_T, 0x8 | 0x1, sid, b"\x10" + block[:20] + b"\0" * 16)
    rest = frame(CONT, 0, sid, block[20:60]) + frame(CONT, 4, sid, block[60:])
    events = client.receive_data(first + rest)
    expected = ((b"retry-after", b"30"), (b"apns-id", b"z" * 100))
    assert events == [ResponseReceived(sid, 429, expected, b"")]


def test_frames_for_finished_streams_are_tolerated() -> None:
    client = ready_client()
    sid = client.start_request(HEADERS, b"")
    assert client.receive_data(frame(HEADERS_T, 5, sid, response_block())) == [
        ResponseReceived(sid, 200, (), b"")
    ]
    late = (
        frame(DATA, 0, sid, b"late")
        + frame(WINDOW, 0, sid, struct.pack(">I", 10))
        + frame(RST, 0, sid, struct.pack(">I", 8))
        + frame(HEADERS_T, 5, sid, response_block(500))
        + frame(PRIORITY, 0, sid, b"\0\0\0\0\x10")
    )
    assert client.receive_data(late) == []
    assert not client.is_closing and client.open_streams == 0


def test_second_goaway_lowers_last_stream_id_and_error_goaway_closes() -> None:
    client = ready_client()
    ids = [client.start_request(HEADERS, b"") for _ in range(4)]
    client.data_to_send()
    first = client.receive_data(frame(GOAWAY, 0, 0, struct.pack(">II", ids[2], 0)))
    assert first == [GoAwayReceived(ids[2], 0, b"", (ids[3],))]
    second = client.receive_data(frame(GOAWAY, 0, 0, struct.pack(">II", ids[0], 0) + b"again"))
    assert second == [GoAwayReceived(ids[0], 0, b"again", (ids[1], ids[2]))]
    assert client.receive_data(frame(HEADERS_T, 5, ids[0], response_block())) == [
        ResponseReceived(ids[0], 200, (), b"")
    ]
    fatal = client.receive_data(frame(GOAWAY, 0, 0, struct.pack(">II", 0, 11) + b"calm"))
    assert fatal == [GoAwayReceived(0, 11, b"calm", ()), ConnectionClosed(11, "calm")]
    assert client.receive_data(frame(PING, 0, 0, b"x" * 8)) == []
    assert client.data_to_send() == b""  # no PING ACK, no GOAWAY of ours after theirs


def test_close_cancel_and_ping_frames() -> None:
    client = ready_client()
    sid = client.start_request(HEADERS, b"")
    client.data_to_send()
    client.ping(b"\x00\x01\x02\x03\x04\x05\x06\x07")
    client.cancel(sid)
    client.close(error_code=2)
    assert frames_of(client.data_to_send()) == [
        (PING, 0, 0, b"\x00\x01\x02\x03\x04\x05\x06\x07"),
        (RST, 0, sid, struct.pack(">I", 8)),
        (GOAWAY, 0, 0, struct.pack(">II", 0, 2)),
    ]


# -- what the encoder emits -----------------------------------------------------------------


def test_request_header_representations() -> None:
    client = ready_client(never_indexed=frozenset({b":path", b"apns-id"}))
    client.start_request(
        [
            (b":method", b"POST"),  # static 3: indexed
            (b":scheme", b"https"),  # static 7: indexed
            (b":authority", b"api.push.apple.com"),  # static name 1, literal value
            (b":path", b"/3/device/ab"),  # never indexed, static name 4
            (b"authorization", b"bearer x"),  # static name 23, literal value
            (b"apns-id", b"u"),  # never indexed, literal name
            (b"apns-topic", b"t"),  # literal name, without indexing
        ],
        b"",
    )
    ((ftype, flags, _, block),) = frames_of(client.data_to_send())
    assert (ftype, flags) == (HEADERS_T, 0x5)
    assert block == (
        b"\x83\x87"
        + b"\x01\x12api.push.apple.com"
        + b"\x14\x0c/3/device/ab"
        + b"\x0f\x08\x08bearer x"
        + b"\x10\x07apns-id\x01u"
        + b"\x00\x0aapns-topic\x01t"
    )


def test_the_encoder_keeps_no_state_in_the_peer_table_and_its_cache_is_bounded() -> None:
    client = ready_client()
    decoder = hpack.Decoder()
    decoder.max_header_list_size = 1 << 20
    blocks = []
    for n in range(3_000):
        headers = [*HEADERS, (b"authorization", b"bearer %d" % n), (b"apns-id", b"%d" % n)]
        client.cancel(client.start_request(headers, b""))
        sent = frames_of(client.data_to_send())
        blocks.append((headers, b"".join(p for t, _, _, p in sent if t in (HEADERS_T, CONT))))
        assert len(client._cache) <= 512
    for headers, block in blocks:
        assert decoder.decode(block, raw=True) == headers
    assert len(decoder.header_table.dynamic_entries) == 0  # nothing was ever inserted


def test_large_header_block_without_body_ends_the_stream_on_the_first_frame() -> None:
    server = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
    server.initiate_connection()
    client = FastClientConnection()
    client.initiate()
    client.receive_data(server.data_to_send())
    sid = client.start_request([*HEADERS, (b"x-big", b"y" * 20_000)], b"")
    wire = client.data_to_send()
    headers = [(t, flags) for t, flags, s, _ in frames_of(wire) if s == sid]
    assert headers == [(HEADERS_T, 0x1), (CONT, 0x4)]  # END_STREAM first, END_HEADERS last
    events = server.receive_data(wire)
    assert any(isinstance(e, h2.events.StreamEnded) and e.stream_id == sid for e in events)


# -- property tests: random frame sequences --------------------------------------------------

STREAMS = (1, 3, 5)
frame_types = st.sampled_from(
    [DATA] * 6
    + [HEADERS_T] * 4
    + [WINDOW] * 3
    + [RST, RST, PRIORITY, SETTINGS, SETTINGS]
    + [PING, PING, GOAWAY, CONT, PUSH, 0xA, 0xFF]
)
stream_ids = st.sampled_from([0, 0, 1, 1, 3, 5, 2, 7, 99, (1 << 31) - 1])


@st.composite
def payloads(draw: st.DrawFn, ftype: int) -> bytes:
    """Mostly well-formed payloads for the type, sometimes anything."""
    if draw(st.integers(0, 9)) == 0:
        return draw(st.binary(max_size=60))
    if ftype in (HEADERS_T, CONT):
        status = draw(st.sampled_from([100, 200, 204, 400, 410, 500]))
        return response_block(status, apns_id=draw(st.text("abc", max_size=5)))
    if ftype == SETTINGS:
        values = st.one_of(st.integers(0, 1 << 16), st.integers(0, (1 << 32) - 1))
        pairs = draw(st.lists(st.tuples(st.integers(0, 8), values), max_size=4))
        return b"".join(struct.pack(">HI", k, v) for k, v in pairs)
    if ftype == WINDOW:
        return struct.pack(
            ">I", draw(st.one_of(st.integers(0, 1 << 20), st.integers(0, (1 << 32) - 1)))
        )
    if ftype == RST:
        return struct.pack(">I", draw(st.integers(0, 13)))
    if ftype == PING:
        return draw(st.binary(min_size=8, max_size=8))
    if ftype == GOAWAY:
        last = draw(st.sampled_from([0, 1, 3, 5, 99]))
        code = draw(st.sampled_from([0, 0, 0, 2, 11]))
        return struct.pack(">II", last, code) + draw(st.binary(max_size=8))
    if ftype == PRIORITY:
        return draw(st.binary(min_size=5, max_size=5))
    return draw(st.binary(max_size=300))


CONNECTION_TYPES = (SETTINGS, PING, GOAWAY)
TYPE_FLAGS = {
    DATA: [0, 1, 8, 9],
    HEADERS_T: [4, 5, 0x24, 0x0D],
    CONT: [0, 4],
    SETTINGS: [0, 0, 1],
    PING: [0, 1],
}


@st.composite
def frame_sequences(draw: st.DrawFn) -> bytes:
    """Frames that are mostly valid in isolation (right stream, flags, payload), in any order.

    One frame in ten is anything at all; the rest only break the protocol through their
    order or values, so sequences get deep into the stream bookkeeping before an error.
    """
    out = []
    if draw(st.booleans()):  # responses started, so DATA and trailers are in order
        out += [frame(HEADERS_T, 4, sid, response_block()) for sid in STREAMS]
    for _ in range(draw(st.integers(1, 8))):
        ftype = draw(frame_types)
        if draw(st.integers(0, 9)) == 0:
            flags = draw(st.integers(0, 255))
            stream_id = draw(stream_ids)
        else:
            flags = draw(st.sampled_from(TYPE_FLAGS.get(ftype, [0])))
            stream_id = 0 if ftype in CONNECTION_TYPES else draw(st.sampled_from(STREAMS))
            if ftype == WINDOW:
                stream_id = draw(st.sampled_from([0, *STREAMS]))
        payload = draw(payloads(ftype))
        if flags & 0x8 and ftype in (DATA, HEADERS_T) and len(payload) < 255:
            payload = bytes((draw(st.integers(0, 3)),)) + payload + b"\0" * 3
        if ftype == HEADERS_T and flags & 0x4 and not flags & 0x28 and draw(st.booleans()):
            cut = draw(st.integers(0, len(payload)))  # the same block over CONTINUATION
            out.append(frame(HEADERS_T, flags & 0x1, stream_id, payload[:cut]))
            ftype, flags, payload = CONT, 0x4, payload[cut:]
        out.append(frame(ftype, flags, stream_id, payload))
    return b"".join(out)


def _client_with_open_streams() -> FastClientConnection:
    client = ready_client(max_concurrent_streams=10)
    for _ in STREAMS:
        client.start_request(HEADERS, b"body")
    client.data_to_send()
    return client


def _feed(client: FastClientConnection, data: bytes, cuts: list[int]) -> list[Event]:
    events: list[Event] = []
    for start, stop in zip([0, *cuts], [*cuts, len(data)], strict=True):
        events += client.receive_data(data[start:stop])
        assert len(client._buf) <= BUFFER_BOUND
    return events


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(frame_sequences(), st.data())
def test_random_frame_sequences_keep_the_bookkeeping_consistent(
    data: bytes, draw: st.DataObject
) -> None:
    cuts = sorted(draw.draw(st.lists(st.integers(0, len(data)), max_size=6)))
    client = _client_with_open_streams()
    try:
        events = _feed(client, data, cuts)
    except RemoteProtocolError as exc:
        assert 1 <= exc.error_code <= 13
        assert goaway_code(client.data_to_send()) == exc.error_code
        assert client.is_closing and client.available_streams == 0
        assert client.receive_data(frame(SETTINGS, 0, 0)) == []
        return
    finished: list[int] = []
    for event in events:
        if isinstance(event, ResponseReceived | StreamReset | StreamRefused):
            finished.append(event.stream_id)
        elif isinstance(event, GoAwayReceived):
            finished.extend(event.unprocessed)
    assert len(finished) == len(set(finished)), "a stream ended twice"
    assert set(finished) <= set(STREAMS)
    if not any(isinstance(e, ConnectionClosed) for e in events):
        assert client.open_streams == len(STREAMS) - len(finished)
        # What the client queued in answer is a clean sequence of whole frames.
        sent = client.data_to_send()
        assert b"".join(frame(*f) for f in frames_of(sent)) == sent


def _server_flight() -> bytes:
    """A realistic answer to streams 1, 3, 5: maximum-size DATA frames among small ones."""
    out = [settings_frame(max_concurrent_streams=10), frame(SETTINGS, 1, 0)]
    for sid, size in zip(STREAMS, (40_000, 16_384, 27), strict=True):
        out.append(frame(HEADERS_T, 4, sid, response_block(200, apns_id=str(sid))))
        body = bytes(range(256)) * (size // 256 + 1)
        chunks = [body[i : i + 16_384] for i in range(0, size, 16_384)]
        for n, chunk in enumerate(chunks):
            out.append(frame(DATA, 1 if n == len(chunks) - 1 else 0, sid, chunk))
        out.append(frame(PING, 0, 0, b"%08d" % sid))
    return b"".join(out)


FLIGHT = _server_flight()


@settings(max_examples=150, deadline=None)
@given(st.lists(st.integers(0, len(FLIGHT)), max_size=20))
def test_split_flights_give_the_same_events_within_the_buffer_bound(cuts: list[int]) -> None:
    whole = _client_with_open_streams().receive_data(FLIGHT)
    assert [e.stream_id for e in whole if isinstance(e, ResponseReceived)] == list(STREAMS)
    client = _client_with_open_streams()
    assert _feed(client, FLIGHT, sorted(cuts)) == whole
    assert len(client._buf) == 0


def test_every_single_byte_split_of_a_short_flight() -> None:
    block = response_block(200, apns_id="y" * 30)
    flight = (
        settings_frame(max_concurrent_streams=10)
        + frame(HEADERS_T, 0x8 | 0x4, 1, b"\x02" + response_block(410) + b"\0\0")
        + frame(DATA, 0x8 | 0x1, 1, b"\x01" + b'{"reason":"Unregistered"}' + b"\0")
        + frame(PING, 0, 0, b"pingpong")
        + frame(HEADERS_T, 0x1, 3, block[:7])
        + frame(CONT, 0x4, 3, block[7:])
        + frame(RST, 0, 5, struct.pack(">I", 7))
    )
    whole = _client_with_open_streams().receive_data(flight)
    assert whole[1:] == [
        ResponseReceived(1, 410, (), b'{"reason":"Unregistered"}'),
        ResponseReceived(3, 200, ((b"apns-id", b"y" * 30),), b""),
        StreamRefused(5),
    ]
    for cut in range(len(flight) + 1):
        for second in (cut, min(len(flight), cut + 5)):
            client = _client_with_open_streams()
            assert _feed(client, flight, [cut, second]) == whole


@pytest.mark.parametrize("length", [16_385, (1 << 24) - 1])
def test_an_oversized_frame_is_refused_from_its_header_alone(length: int) -> None:
    client = _client_with_open_streams()
    header = length.to_bytes(3, "big") + bytes((DATA, 0)) + struct.pack(">I", 1)
    with pytest.raises(RemoteProtocolError) as info:
        client.receive_data(header + b"x" * 100)  # the payload has not arrived yet
    assert info.value.error_code == 6
    assert len(client._buf) == 0
    assert goaway_code(client.data_to_send()) == 6


def test_the_buffer_is_released_after_an_error_goaway() -> None:
    client = _client_with_open_streams()
    events = client.receive_data(frame(GOAWAY, 0, 0, struct.pack(">II", 0, 2)) + b"\0" * 70_000)
    assert isinstance(events[-1], ConnectionClosed)
    assert len(client._buf) <= BUFFER_BOUND
