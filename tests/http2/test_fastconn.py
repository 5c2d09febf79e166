"""The fast codec at the frame level: RFC 9113 errors, CONTINUATION, padding, SETTINGS changes,
and property tests feeding its parser random, split and corrupted input.

Behaviour shared with the ``h2`` codec is tested for both in ``test_connection.py``; here the
server side is hand-built frames, so every corner the ``h2`` server would never produce can be
sent.
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

from pushgres.exceptions import LocalProtocolError, RemoteProtocolError
from pushgres.http2.events import (
    Event,
    PingAcknowledged,
    ResponseReceived,
    SettingsChanged,
    StreamRefused,
    StreamReset,
)
from pushgres.http2.fastconn import PREFACE, FastClientConnection, encode_integer

HEADERS = [
    (b":method", b"POST"),
    (b":scheme", b"https"),
    (b":authority", b"api.example"),
    (b":path", b"/3/device/abc"),
    (b"apns-topic", b"com.example.app"),
]


def frame(ftype: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    return (
        struct.pack(">I", len(payload))[1:]
        + bytes((ftype, flags))
        + struct.pack(">I", stream_id)
        + payload
    )


def settings_frame(**values: int) -> bytes:
    codes = {
        "header_table_size": 1,
        "enable_push": 2,
        "max_concurrent_streams": 3,
        "initial_window_size": 4,
        "max_frame_size": 5,
        "max_header_list_size": 6,
    }
    payload = b"".join(struct.pack(">HI", codes[k], v) for k, v in values.items())
    return frame(4, 0, 0, payload)


def response_block(status: int = 200, **headers: str) -> bytes:
    fields = [(b":status", str(status).encode())]
    fields += [(k.replace("_", "-").encode(), v.encode()) for k, v in headers.items()]
    return bytes(hpack.Encoder().encode(fields))


def ready_client(
    *, never_indexed: frozenset[bytes] = frozenset({b":path"}), **server_settings: int
) -> FastClientConnection:
    client = FastClientConnection(never_indexed=never_indexed)
    client.initiate()
    client.receive_data(settings_frame(**server_settings))
    client.data_to_send()
    return client


def frames_of(data: bytes) -> list[tuple[int, int, int, bytes]]:
    """Split bytes the client sent into (type, flags, stream id, payload)."""
    out = []
    if data.startswith(PREFACE):
        data = data[len(PREFACE) :]
    while data:
        length = int.from_bytes(data[:3], "big")
        out.append(
            (data[3], data[4], int.from_bytes(data[5:9], "big") & 0x7FFFFFFF, data[9 : 9 + length])
        )
        data = data[9 + length :]
    return out


def goaway_code(data: bytes) -> int:
    goaways = [p for t, _, _, p in frames_of(data) if t == 7]
    assert goaways, "no GOAWAY queued"
    return int.from_bytes(goaways[-1][4:8], "big")


# -- connection errors (RFC 9113 5.4.1) ---------------------------------------------------

VIOLATIONS = {
    "first frame not SETTINGS": (None, frame(6, 0, 0, b"x" * 8), 1),
    "DATA on stream 0": ("ready", frame(0, 0, 0, b"x"), 1),
    "zero WINDOW_UPDATE on the connection": ("ready", frame(8, 0, 0, b"\0\0\0\0"), 1),
    "PUSH_PROMISE": ("stream", frame(5, 4, 1, b"\0\0\0\2\x88"), 1),
    "frame above 16384": ("ready", frame(0, 0, 1, b"x" * 16385), 6),
    "SETTINGS length not a multiple of 6": ("ready", frame(4, 0, 0, b"\0\3\0\0\0"), 6),
    "SETTINGS on a stream": ("ready", frame(4, 0, 1, b""), 1),
    "SETTINGS ACK with payload": ("ready", frame(4, 1, 0, b"\0" * 6), 6),
    "PING of 7 bytes": ("ready", frame(6, 0, 0, b"x" * 7), 6),
    "PING on a stream": ("ready", frame(6, 0, 1, b"x" * 8), 1),
    "ENABLE_PUSH 1 from a server": ("ready", settings_frame(enable_push=1), 1),
    "MAX_FRAME_SIZE too small": ("ready", settings_frame(max_frame_size=100), 1),
    "INITIAL_WINDOW_SIZE above 2^31-1": ("ready", settings_frame(initial_window_size=1 << 31), 3),
    "HEADERS on an idle stream": ("ready", frame(1, 5, 3, b"\x88"), 1),
    "HEADERS on an even stream": ("stream", frame(1, 5, 2, b"\x88"), 1),
    "DATA on an idle stream": ("stream", frame(0, 1, 7, b"x"), 1),
    "RST_STREAM of 3 bytes": ("stream", frame(3, 0, 1, b"\0\0\0"), 6),
    "GOAWAY of 7 bytes": ("ready", frame(7, 0, 0, b"\0" * 7), 6),
    "GOAWAY on a stream": ("ready", frame(7, 0, 1, b"\0" * 8), 1),
    "CONTINUATION without HEADERS": ("stream", frame(9, 4, 1, b"\x88"), 1),
    "CONTINUATION interrupted by PING": (
        "stream",
        frame(1, 0, 1, b"\x88") + frame(6, 0, 0, b"x" * 8),
        1,
    ),
    "CONTINUATION on another stream": (
        "stream",
        frame(1, 0, 1, b"\x88") + frame(9, 4, 3, b""),
        1,
    ),
    "HPACK index out of range": ("stream", frame(1, 5, 1, b"\xff\x7f"), 9),
    "padding longer than the DATA frame": ("stream", frame(0, 8, 1, b"\x05ab"), 1),
    "padding longer than the HEADERS frame": ("stream", frame(1, 12, 1, b"\x09\x88"), 1),
    "DATA beyond the stream window": ("stream", frame(0, 0, 1, b"x" * 1001), 3),
    "connection window above 2^31-1": ("ready", frame(8, 0, 0, b"\x7f\xff\xff\xff"), 3),
}


@pytest.mark.parametrize("case", sorted(VIOLATIONS))
def test_peer_violations_are_connection_errors(case: str) -> None:
    setup, data, code = VIOLATIONS[case]
    client = FastClientConnection(initial_window_bytes=1000)
    client.initiate()
    if setup is not None:
        client.receive_data(settings_frame())
    if setup == "stream":
        client.start_request(HEADERS, b"")
        client.receive_data(frame(1, 4, 1, response_block()))
    client.data_to_send()
    with pytest.raises(RemoteProtocolError) as info:
        client.receive_data(data)
    assert info.value.error_code == code
    assert goaway_code(client.data_to_send()) == code
    assert client.is_closing and client.available_streams == 0
    assert client.receive_data(settings_frame()) == []  # nothing more is acted on


# -- CONTINUATION, padding, priority -----------------------------------------------------


def test_response_header_block_across_continuation_frames() -> None:
    client = ready_client()
    sid = client.start_request(HEADERS, b"")
    block = response_block(200, apns_id="a" * 40, x_long="v" * 3000)
    parts = [block[:10], block[10:1500], block[1500:]]
    data = frame(1, 0, sid, parts[0]) + frame(9, 0, sid, parts[1]) + frame(9, 4, sid, parts[2])
    data += frame(0, 1, sid, b"body")
    assert client.receive_data(data) == [
        ResponseReceived(sid, 200, ((b"apns-id", b"a" * 40), (b"x-long", b"v" * 3000)), b"body")
    ]


def test_padded_and_prioritised_frames() -> None:
    client = ready_client()
    sid = client.start_request(HEADERS, b"")
    block = response_block(410)
    headers = frame(1, 0x8 | 0x20 | 0x4, sid, b"\x03" + b"\0\0\0\0\x10" + block + b"\0\0\0")
    data = frame(0, 0x8 | 0x1, sid, b"\x02" + b'{"reason":"Unregistered"}' + b"\0\0")
    events = client.receive_data(headers + frame(2, 0, sid, b"\0" * 5) + data)
    assert events == [ResponseReceived(sid, 410, (), b'{"reason":"Unregistered"}')]


def test_large_request_headers_go_out_as_continuation() -> None:
    server = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
    server.initiate_connection()
    client = FastClientConnection()
    client.initiate()
    client.receive_data(server.data_to_send())
    big = [*HEADERS, (b"x-big", b"y" * 40_000)]
    sid = client.start_request(big, b"{}")
    sent = client.data_to_send()
    kinds = [t for t, _, _, _ in frames_of(sent)]
    assert kinds.count(9) == 2  # 40 KB of headers: HEADERS + 2 CONTINUATION at 16 KB each
    events = server.receive_data(sent)
    requests = [e for e in events if isinstance(e, h2.events.RequestReceived)]
    assert requests and requests[0].stream_id == sid
    assert dict(requests[0].headers)[b"x-big"] == b"y" * 40_000


def test_peer_header_list_limit_refuses_the_request_before_a_stream_opens() -> None:
    client = ready_client(max_header_list_size=300)
    with pytest.raises(LocalProtocolError, match="exceeds the peer's limit"):
        client.start_request([*HEADERS, (b"x", b"y" * 200)], b"")
    assert client.open_streams == 0
    assert client.start_request(HEADERS, b"") == 1


def test_header_table_size_change_is_acknowledged_in_the_next_block() -> None:
    client = ready_client()
    client.receive_data(settings_frame(header_table_size=0))
    client.data_to_send()
    client.start_request(HEADERS, b"")
    (ftype, _, _, block) = frames_of(client.data_to_send())[0]
    assert ftype == 1 and block[:1] == b"\x20"  # dynamic table size update to 0
    decoder = hpack.Decoder()
    decoder.header_table_size = 0
    assert decoder.decode(block, raw=True) == HEADERS


def test_informational_response_then_final_and_trailers() -> None:
    client = ready_client()
    sid = client.start_request(HEADERS, b"")
    data = frame(1, 4, sid, response_block(100)) + frame(1, 4, sid, response_block(200))
    data += frame(0, 0, sid, b"ab") + frame(
        1, 5, sid, bytes(hpack.Encoder().encode([(b"t", b"1")]))
    )
    assert client.receive_data(data) == [ResponseReceived(sid, 200, (), b"ab")]


def test_malformed_response_is_a_stream_error() -> None:
    client = ready_client()
    sid = client.start_request(HEADERS, b"")
    other = client.start_request(HEADERS, b"")
    client.data_to_send()
    no_status = bytes(hpack.Encoder().encode([(b"apns-id", b"x")]))
    events = client.receive_data(frame(1, 5, sid, no_status) + frame(1, 5, other, b"\x88"))
    assert events == [StreamReset(sid, 1), ResponseReceived(other, 200, (), b"")]
    assert [(t, s) for t, _, s, _ in frames_of(client.data_to_send())] == [(3, sid)]


# -- SETTINGS and flow control -------------------------------------------------------------


def test_initial_window_change_resumes_a_blocked_body() -> None:
    client = ready_client(initial_window_size=10)
    sid = client.start_request(HEADERS, b"z" * 100)
    sent = [f for f in frames_of(client.data_to_send()) if f[0] == 0]
    assert [len(p) for _, _, _, p in sent] == [10]
    events = client.receive_data(settings_frame(initial_window_size=1000))
    assert events == [SettingsChanged(500)]  # the local cap
    out = frames_of(client.data_to_send())
    data = [(flags, len(p)) for t, flags, _, p in out if t == 0]
    assert data == [(1, 90)]  # the rest, with END_STREAM
    assert (4, 1, 0, b"") in out  # SETTINGS ACK
    assert client.receive_data(frame(1, 5, sid, b"\x88")) == [ResponseReceived(sid, 200, (), b"")]


def test_window_shrunk_below_zero_waits_for_updates() -> None:
    client = ready_client()
    client.receive_data(frame(8, 0, 0, struct.pack(">I", 1_000_000)))
    sid = client.start_request(HEADERS, b"a" * 70_000)
    sent = [len(p) for t, _, _, p in frames_of(client.data_to_send()) if t == 0]
    assert sum(sent) == 65_535  # the stream window
    client.receive_data(settings_frame(initial_window_size=100))  # now 100 - 65,535
    client.data_to_send()
    second = client.start_request(HEADERS, b"b" * 50)
    assert [p for t, _, _, p in frames_of(client.data_to_send()) if t == 0] == [b"b" * 50]
    client.receive_data(frame(8, 0, sid, struct.pack(">I", 65_435)))  # back to 0: nothing
    assert not [f for f in frames_of(client.data_to_send()) if f[0] == 0]
    client.receive_data(frame(8, 0, sid, struct.pack(">I", 4_465)))
    rest = [(flags, len(p)) for t, flags, _, p in frames_of(client.data_to_send()) if t == 0]
    assert rest == [(1, 4_465)] and second == 3


def test_max_concurrent_streams_changes_and_frame_size() -> None:
    client = ready_client(max_concurrent_streams=1, max_frame_size=20_000)
    assert client.available_streams == 1
    client.start_request(HEADERS, b"q" * 30_000)
    data = [len(p) for t, _, _, p in frames_of(client.data_to_send()) if t == 0]
    assert data == [20_000, 10_000]
    with pytest.raises(LocalProtocolError):
        client.start_request(HEADERS, b"")
    assert client.receive_data(settings_frame(max_concurrent_streams=5)) == [SettingsChanged(5)]
    assert client.available_streams == 4


def test_received_data_is_credited_back() -> None:
    client = ready_client()
    sid = client.start_request(HEADERS, b"")
    client.data_to_send()
    client.receive_data(frame(1, 4, sid, b"\x88"))
    for _ in range(700):  # 11 MB through a 16 MB connection window: credit must come back
        client.receive_data(frame(0, 0, sid, b"d" * 16_384))
    updates = [
        (s, int.from_bytes(p, "big")) for t, _, s, p in frames_of(client.data_to_send()) if t == 8
    ]
    assert sum(n for s, n in updates if s == sid) == 700 * 16_384
    assert sum(n for s, n in updates if s == 0) >= (1 << 23)


def test_ping_rst_and_goaway() -> None:
    client = ready_client()
    a = client.start_request(HEADERS, b"")
    b = client.start_request(HEADERS, b"")
    c = client.start_request(HEADERS, b"")
    client.data_to_send()
    events = client.receive_data(
        frame(6, 0, 0, b"12345678")
        + frame(6, 1, 0, b"abcdefgh")
        + frame(3, 0, a, struct.pack(">I", 7))
        + frame(3, 0, b, struct.pack(">I", 2))
        + frame(7, 0, 0, struct.pack(">II", b, 0) + b"bye")
    )
    assert events[:3] == [PingAcknowledged(b"abcdefgh"), StreamRefused(a), StreamReset(b, 2)]
    assert events[3].unprocessed == (c,)  # type: ignore[union-attr]
    assert (6, 1, 0, b"12345678") in frames_of(client.data_to_send())
    assert client.is_closing


# -- property tests ------------------------------------------------------------------------


def _server_bytes(responses: list[tuple[int, bytes]]) -> bytes:
    """A server's answer to streams 1, 3, 5…: SETTINGS, PINGs, headers and bodies."""
    encoder = hpack.Encoder()
    out = [settings_frame(max_concurrent_streams=100), frame(4, 1, 0)]
    for index, (status, body) in enumerate(responses):
        sid = 2 * index + 1
        block = bytes(
            encoder.encode([(b":status", str(status).encode()), (b"apns-id", b"%d" % sid)])
        )
        out.append(frame(1, 4 if body else 5, sid, block))
        if body:
            out.append(frame(0, 1, sid, body))
        out.append(frame(6, 0, 0, b"%08d" % index))
    return b"".join(out)


def _client_with_streams(count: int) -> FastClientConnection:
    client = FastClientConnection()
    client.initiate()
    client.receive_data(settings_frame(max_concurrent_streams=100))
    for _ in range(count):
        client.start_request(HEADERS, b"{}")
    client.data_to_send()
    return client


responses = st.lists(
    st.tuples(st.sampled_from([200, 400, 410, 429, 500]), st.binary(max_size=300)),
    min_size=1,
    max_size=8,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(responses, st.data())
def test_split_input_gives_the_same_events(
    answers: list[tuple[int, bytes]], data: st.DataObject
) -> None:
    stream = _server_bytes(answers)
    whole = _client_with_streams(len(answers)).receive_data(stream)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=12)))
    client = _client_with_streams(len(answers))
    events: list[Event] = []
    for start, stop in zip([0, *cuts], [*cuts, len(stream)], strict=True):
        events += client.receive_data(stream[start:stop])
        assert len(client._buf) <= 16_384 + 9 + len(stream)
    assert events == whole
    assert [e.status for e in whole if isinstance(e, ResponseReceived)] == [s for s, _ in answers]


@settings(max_examples=300, deadline=None)
@given(responses, st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=6))
def test_corrupted_input_ends_in_events_or_a_connection_error(
    answers: list[tuple[int, bytes]], flips: list[tuple[int, int]]
) -> None:
    stream = bytearray(_server_bytes(answers))
    for position, value in flips:
        stream[position % len(stream)] = value
    client = _client_with_streams(len(answers))
    try:
        client.receive_data(bytes(stream))
    except RemoteProtocolError as exc:
        assert exc.error_code in {1, 3, 6, 9, 11}
        assert goaway_code(client.data_to_send()) == exc.error_code
    assert len(client._buf) <= 16_384 + 9


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2_000))
def test_random_bytes_never_crash_the_parser(garbage: bytes) -> None:
    client = _client_with_streams(3)
    try:
        client.receive_data(garbage)
        client.receive_data(garbage)
    except RemoteProtocolError:
        pass
    assert len(client._buf) <= 16_384 + 9


@given(st.integers(0, 1 << 30), st.integers(1, 8))
def test_hpack_integers_round_trip(value: int, prefix: int) -> None:
    encoded = encode_integer(value, prefix, 0)
    decoded, consumed = hpack.hpack.decode_integer(encoded, prefix)
    assert (decoded, consumed) == (value, len(encoded))


def test_repeated_blocks_follow_the_dynamic_table() -> None:
    """A block referring to the dynamic table is re-decoded once the table changes."""
    client = ready_client()

    def insert(value: bytes) -> bytes:  # :status 200, then x: value with incremental indexing
        return b"\x88\x40\x01x" + bytes((len(value),)) + value

    refer = b"\x88\xbe"  # :status 200, then dynamic entry 62 (the newest)
    expected = []
    data = b""
    for value in (b"1", b"2"):
        for block in (insert(value), refer, refer):
            sid = client.start_request(HEADERS, b"")
            data += frame(1, 5, sid, block)
            expected.append(ResponseReceived(sid, 200, ((b"x", value),), b""))
    assert client.receive_data(data) == expected


@pytest.mark.parametrize("size", [0, 1, 126, 127, 128, 300, 20_000])
def test_per_message_values_of_every_length_decode(size: int) -> None:
    client = ready_client(never_indexed=frozenset({b":path", b"apns-id", b"apns-collapse-id"}))
    fields = [*HEADERS[:3], (b":path", b"/" + b"p" * size), (b"apns-id", b"i" * size)]
    fields += [(b"apns-collapse-id", b"c" * size), (b"x-other", b"o" * size)]
    client.start_request(fields, b"")
    blocks = [p for t, _, _, p in frames_of(client.data_to_send()) if t in (1, 9)]
    decoded = hpack.Decoder()
    decoded.max_header_list_size = 1 << 20
    result = decoded.decode(b"".join(blocks), raw=True)
    assert result == fields
    never = {h[0] for h in result if isinstance(h, hpack.NeverIndexedHeaderTuple)}
    assert never == {b":path", b"apns-id", b"apns-collapse-id"}
