"""Sans-IO tests: every codec against an in-memory h2 server, exchanging bytes.

Each test runs once per registered codec (``fast`` and ``h2``): both implement the same
:class:`~pushgres.http2.streams.ClientConnection` behaviour.
"""

from __future__ import annotations

from typing import Any

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.settings
import pytest
from hpack import NeverIndexedHeaderTuple
from hypothesis import given
from hypothesis import strategies as st

from pushgres.exceptions import LocalProtocolError, RemoteProtocolError
from pushgres.http2.codecs import CODECS
from pushgres.http2.events import (
    ConnectionClosed,
    Event,
    GoAwayReceived,
    PingAcknowledged,
    ResponseReceived,
    SettingsChanged,
    StreamRefused,
    StreamReset,
)
from pushgres.http2.h2codec import H2ClientConnection
from pushgres.http2.lifecycle import TRANSITIONS, ConnInput, ConnState, next_state
from pushgres.http2.streams import ClientConnection

from .servers import exhaust_stream_ids

SC = h2.settings.SettingCodes
HEADERS = [
    (b":method", b"POST"),
    (b":scheme", b"https"),
    (b":authority", b"api.example"),
    (b":path", b"/3/device/abc"),
    (b"apns-topic", b"com.example.app"),
    (b"apns-id", b"6f0a7c1e-0000-0000-0000-000000000001"),
]
NEVER_INDEXED = frozenset({b":path", b"apns-id"})  # what a caller with per-message ids passes


_CODEC = ["fast"]


@pytest.fixture(autouse=True, params=sorted(CODECS))
def codec(request: pytest.FixtureRequest) -> str:
    _CODEC[0] = request.param
    return _CODEC[0]


def new_client(**kwargs: Any) -> ClientConnection:
    """A client connection of the codec under test."""
    client: ClientConnection = CODECS[_CODEC[0]](**kwargs)
    return client


def assert_h2_forgot_streams(client: ClientConnection) -> None:
    """The h2 codec drops finished streams from h2's own table (no per-send scan)."""
    if isinstance(client, H2ClientConnection):
        assert len(client._h2.streams) == 0


class Server:
    """The server half of a connection: h2 in server mode, driven by hand."""

    def __init__(self, *, auto_ack: bool = True, **settings: int) -> None:
        config = h2.config.H2Configuration(client_side=False, header_encoding=None)
        self.h2 = h2.connection.H2Connection(config=config)
        self.auto_ack = auto_ack
        self.headers: dict[int, list[tuple[bytes, bytes]]] = {}
        self.bodies: dict[int, bytes] = {}
        self.ended: list[int] = []
        self.events: list[h2.events.Event] = []
        settings.setdefault("max_concurrent_streams", 1000)
        initial = {getattr(SC, name.upper()): value for name, value in settings.items()}
        self.h2.local_settings = h2.settings.Settings(client=False, initial_values=initial)

    def start(self) -> None:
        self.h2.initiate_connection()

    def receive(self, data: bytes) -> None:
        for event in self.h2.receive_data(data):
            self.events.append(event)
            if isinstance(event, h2.events.RequestReceived):
                self.headers[event.stream_id] = list(event.headers)
                self.bodies[event.stream_id] = b""
            elif isinstance(event, h2.events.DataReceived):
                self.bodies[event.stream_id] += event.data
                if self.auto_ack:
                    self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, h2.events.StreamEnded):
                self.ended.append(event.stream_id)

    def respond(self, stream_id: int, status: int, body: bytes = b"", *, chunk: int = 0) -> None:
        headers = [(b":status", str(status).encode()), (b"apns-id", b"x")]
        self.h2.send_headers(stream_id, headers, end_stream=not body)
        if not body:
            return
        size = chunk or len(body)
        for offset in range(0, len(body), size):
            piece = body[offset : offset + size]
            self.h2.send_data(stream_id, piece, end_stream=offset + size >= len(body))


def exchange(client: ClientConnection, server: Server) -> list[Event]:
    """Move bytes both ways until both sides are quiet; return the client's events."""
    events: list[Event] = []
    for _ in range(1000):
        to_server = client.data_to_send()
        to_client = server.h2.data_to_send()
        if not to_server and not to_client:
            return events
        if to_server:
            server.receive(to_server)
        if to_client:
            events.extend(client.receive_data(to_client))
    raise AssertionError("the two sides never went quiet")


def connected(
    server: Server | None = None,
    *,
    connection_window_bytes: int = 1 << 24,
    initial_window_bytes: int = 1 << 20,
    never_indexed: frozenset[bytes] | None = None,
) -> tuple[ClientConnection, Server]:
    extra: dict[str, Any] = {} if never_indexed is None else {"never_indexed": never_indexed}
    client = new_client(
        connection_window_bytes=connection_window_bytes,
        initial_window_bytes=initial_window_bytes,
        **extra,
    )
    server = server or Server()
    client.initiate()
    server.start()
    exchange(client, server)
    return client, server


def test_no_stream_before_server_settings() -> None:
    client = new_client()
    client.initiate()
    assert not client.is_ready
    assert client.available_streams == 0
    assert client.max_concurrent_streams == 0
    with pytest.raises(LocalProtocolError):
        client.start_request(HEADERS, b"{}")
    server = Server()
    server.start()
    events = exchange(client, server)
    assert client.is_ready
    assert any(isinstance(e, SettingsChanged) for e in events)


def test_our_settings_and_connection_window() -> None:
    client, server = connected()
    remote = server.h2.remote_settings
    assert remote.enable_push == 0
    assert remote.initial_window_size >= 1 << 20
    assert server.h2.outbound_flow_control_window == 1 << 24
    # Local cap applies when the server allows more.
    assert client.max_concurrent_streams == 500


def test_response_reassembled_from_many_data_frames() -> None:
    client, server = connected()
    stream_id = client.start_request(HEADERS, b'{"aps":{}}')
    exchange(client, server)
    assert server.bodies[stream_id] == b'{"aps":{}}'
    assert stream_id in server.ended
    body = bytes(range(256)) * 400  # 100 KiB
    server.respond(stream_id, 200, body, chunk=1000)
    events = exchange(client, server)
    responses = [e for e in events if isinstance(e, ResponseReceived)]
    assert responses == [ResponseReceived(stream_id, 200, ((b"apns-id", b"x"),), body)]
    assert client.open_streams == 0
    assert_h2_forgot_streams(client)  # finished streams are dropped at once


def test_headers_only_response_and_empty_body_request() -> None:
    client, server = connected()
    stream_id = client.start_request([*HEADERS[:3], (b":path", b"/x")], b"")
    exchange(client, server)
    assert stream_id in server.ended and server.bodies[stream_id] == b""
    server.respond(stream_id, 200)
    events = exchange(client, server)
    assert events == [ResponseReceived(stream_id, 200, ((b"apns-id", b"x"),), b"")]


def never_indexed_names(client: ClientConnection, server: Server) -> set[bytes]:
    """The header names of one request the server received as never-indexed literals."""
    stream_id = client.start_request(HEADERS, b"{}")
    exchange(client, server)
    return {h[0] for h in server.headers[stream_id] if isinstance(h, NeverIndexedHeaderTuple)}


def test_the_headers_the_caller_names_are_never_indexed() -> None:
    client, server = connected(never_indexed=NEVER_INDEXED)
    assert never_indexed_names(client, server) == {b":path", b"apns-id"}


def test_by_default_only_the_path_is_never_indexed() -> None:
    client, server = connected()
    assert never_indexed_names(client, server) == {b":path"}


def test_an_empty_set_indexes_nothing() -> None:
    client, server = connected(never_indexed=frozenset())
    assert never_indexed_names(client, server) == set()


@pytest.mark.parametrize("names", [{b"Apns-Id"}, {b""}, {"x-id"}])
def test_rejects_never_indexed_names_that_cannot_match(names: set[Any]) -> None:
    with pytest.raises(ValueError):
        new_client(never_indexed=frozenset(names))


@pytest.mark.parametrize("window", [65_535, 1 << 24])
def test_ten_thousand_error_responses_never_stall(window: int) -> None:
    """Flow-control credit comes back for every error body (RFC 9113 section 6.9)."""
    client, server = connected(
        Server(max_concurrent_streams=100),
        connection_window_bytes=window,
        initial_window_bytes=65_535,
    )
    error = b'{"reason":"BadDeviceToken"}' * 8  # 216 bytes: 10,000 of them are 2 MiB
    done = 0
    while done < 10_000:
        ids = [client.start_request(HEADERS, b"{}") for _ in range(client.available_streams)]
        exchange(client, server)
        for stream_id in ids:
            server.respond(stream_id, 400, error)
        events = exchange(client, server)
        finished = [e for e in events if isinstance(e, ResponseReceived)]
        assert len(finished) == len(ids)
        assert all(e.status == 400 and e.body == error for e in finished)
        done += len(ids)
    assert client.open_streams == 0
    assert_h2_forgot_streams(client)


def test_max_concurrent_streams_one_then_raised() -> None:
    client, server = connected(Server(max_concurrent_streams=1))
    assert client.max_concurrent_streams == 1
    first = client.start_request(HEADERS, b"{}")
    assert client.available_streams == 0
    with pytest.raises(LocalProtocolError):
        client.start_request(HEADERS, b"{}")
    server.h2.update_settings({SC.MAX_CONCURRENT_STREAMS: 1000})
    events = exchange(client, server)
    assert SettingsChanged(500) in events  # capped by our local cap
    assert client.available_streams == 499
    server.respond(first, 200)
    exchange(client, server)
    assert client.available_streams == 500


def test_limit_lowered_below_open_count() -> None:
    client, server = connected(Server(max_concurrent_streams=10))
    ids = [client.start_request(HEADERS, b"{}") for _ in range(5)]
    exchange(client, server)
    server.h2.update_settings({SC.MAX_CONCURRENT_STREAMS: 2})
    assert SettingsChanged(2) in exchange(client, server)
    assert client.open_streams == 5 and client.available_streams == 0
    for stream_id in ids[:3]:
        server.respond(stream_id, 200)
    exchange(client, server)
    assert client.open_streams == 2 and client.available_streams == 0
    server.respond(ids[3], 200)
    exchange(client, server)
    assert client.available_streams == 1
    client.start_request(HEADERS, b"{}")


def _server_goaway(server: Server, last_stream_id: int, error_code: int = 0) -> None:
    server.h2.close_connection(
        error_code=error_code,
        additional_data=b'{"reason":"Shutdown"}',
        last_stream_id=last_stream_id,
    )
    # h2 refuses to send after its own GOAWAY; a real server finishes streams <= last.
    server.h2.state_machine.state = h2.connection.ConnectionState.SERVER_OPEN


def test_goaway_below_in_flight_streams() -> None:
    client, server = connected()
    ids = [client.start_request(HEADERS, b"{}") for _ in range(4)]  # 1, 3, 5, 7
    exchange(client, server)
    _server_goaway(server, last_stream_id=ids[1])
    server.respond(ids[0], 200, b"ok")  # same flight as the GOAWAY
    events = exchange(client, server)
    assert events[0] == GoAwayReceived(ids[1], 0, b'{"reason":"Shutdown"}', (ids[2], ids[3]))
    assert ResponseReceived(ids[0], 200, ((b"apns-id", b"x"),), b"ok") in events
    assert client.is_closing and client.available_streams == 0
    assert client.open_streams == 1
    with pytest.raises(LocalProtocolError):
        client.start_request(HEADERS, b"{}")
    server.respond(ids[1], 410, b'{"reason":"Unregistered"}')
    events = exchange(client, server)
    assert [e.stream_id for e in events if isinstance(e, ResponseReceived)] == [ids[1]]
    assert client.open_streams == 0


def test_error_goaway_terminates() -> None:
    client, server = connected()
    stream_id = client.start_request(HEADERS, b"{}")
    exchange(client, server)
    _server_goaway(server, last_stream_id=0, error_code=int(h2.errors.ErrorCodes.ENHANCE_YOUR_CALM))
    events = exchange(client, server)
    assert isinstance(events[0], GoAwayReceived) and events[0].unprocessed == (stream_id,)
    assert isinstance(events[1], ConnectionClosed)
    assert events[1].error_code == 11 and "Shutdown" in events[1].reason
    assert client.receive_data(b"anything") == []


def test_refused_stream_versus_other_reset_codes() -> None:
    client, server = connected()
    refused = client.start_request(HEADERS, b"{}")
    reset = client.start_request(HEADERS, b"{}")
    exchange(client, server)
    server.h2.reset_stream(refused, h2.errors.ErrorCodes.REFUSED_STREAM)
    server.h2.reset_stream(reset, h2.errors.ErrorCodes.INTERNAL_ERROR)
    events = exchange(client, server)
    assert events == [StreamRefused(refused), StreamReset(reset, 2)]
    assert client.open_streams == 0
    assert_h2_forgot_streams(client)


def test_small_stream_window_buffers_the_body() -> None:
    server = Server(auto_ack=False, initial_window_size=10)
    client, server = connected(server)
    body = b"0123456789abcdefghij-tail"
    stream_id = client.start_request(HEADERS, body)
    exchange(client, server)
    assert server.bodies[stream_id] == body[:10]
    assert stream_id not in server.ended
    server.h2.increment_flow_control_window(5, stream_id=stream_id)
    exchange(client, server)
    assert server.bodies[stream_id] == body[:15] and stream_id not in server.ended
    server.h2.increment_flow_control_window(1000, stream_id=stream_id)
    exchange(client, server)
    assert server.bodies[stream_id] == body and stream_id in server.ended


def test_small_connection_window_buffers_across_streams() -> None:
    client, server = connected(Server(auto_ack=False))
    big = b"x" * 60_000
    first = client.start_request(HEADERS, big)
    second = client.start_request(HEADERS, big)  # only 5,535 bytes fit in the window
    exchange(client, server)
    assert server.bodies[first] == big and len(server.bodies[second]) == 5_535
    server.h2.acknowledge_received_data(65_535, first)  # connection-level credit
    exchange(client, server)
    assert server.bodies[second] == big and second in server.ended


def test_response_before_body_is_sent_cancels_the_rest() -> None:
    client, server = connected(Server(auto_ack=False, initial_window_size=4))
    stream_id = client.start_request(HEADERS, b"a long body that will not fit")
    exchange(client, server)
    server.respond(stream_id, 413, b"too large")
    events = exchange(client, server)
    assert events == [ResponseReceived(stream_id, 413, ((b"apns-id", b"x"),), b"too large")]
    assert any(isinstance(e, h2.events.StreamReset) for e in server.events)
    assert client.open_streams == 0


def test_cancel_sends_rst_and_late_data_is_ignored() -> None:
    client, server = connected()
    stream_id = client.start_request(HEADERS, b"{}")
    exchange(client, server)
    server.h2.send_headers(stream_id, [(b":status", b"200")])
    server.h2.send_data(stream_id, b"y" * 10_000)
    late = server.h2.data_to_send()  # in flight when the client gives up
    client.cancel(stream_id)
    client.cancel(stream_id)  # idempotent
    assert client.open_streams == 0 and client.available_streams == 500
    server.receive(client.data_to_send())
    resets = [e for e in server.events if isinstance(e, h2.events.StreamReset)]
    assert [r.error_code for r in resets] == [h2.errors.ErrorCodes.CANCEL]
    assert client.receive_data(late) == []
    assert exchange(client, server) == []


def test_ping_is_acknowledged() -> None:
    client, server = connected()
    client.ping(b"12345678")
    assert exchange(client, server) == [PingAcknowledged(b"12345678")]
    with pytest.raises(LocalProtocolError):
        client.ping(b"short")


def test_close_sends_goaway() -> None:
    client, server = connected()
    client.close()
    client.close()
    assert client.is_closing and client.available_streams == 0
    server.receive(client.data_to_send())
    assert any(isinstance(e, h2.events.ConnectionTerminated) for e in server.events)
    assert client.receive_data(b"ignored after our GOAWAY") == []
    with pytest.raises(LocalProtocolError):
        client.start_request(HEADERS, b"{}")


def test_peer_protocol_violation_raises_remote_protocol_error() -> None:
    client, _ = connected()
    with pytest.raises(RemoteProtocolError) as info:
        client.receive_data(
            b"\x00\x00\x04\x08\x00\x00\x00\x00\x00\x00\x00\x00\x00"
        )  # WINDOW_UPDATE of 0
    assert info.value.error_code == 1
    assert client.is_closing
    assert client.data_to_send()  # GOAWAY queued for the peer


def test_stream_ids_exhausted() -> None:
    client, _ = connected()
    assert not client.next_stream_id_exhausted
    exhaust_stream_ids(client)
    assert client.next_stream_id_exhausted
    assert client.available_streams == 0
    with pytest.raises(LocalProtocolError):
        client.start_request(HEADERS, b"{}")


def test_rejects_invalid_cap() -> None:
    with pytest.raises(ValueError):
        new_client(max_streams=0)


# -- the state table ---------------------------------------------------------------------

EXPECTED = {
    ConnState.CONNECTING: {
        ConnInput.SETTINGS_RECEIVED: ConnState.READY,
        ConnInput.GOAWAY_RECEIVED: ConnState.DRAINING,
        ConnInput.DRAIN: ConnState.DRAINING,
        ConnInput.LOST: ConnState.CLOSED,
    },
    ConnState.READY: {
        ConnInput.SETTINGS_RECEIVED: ConnState.READY,
        ConnInput.GOAWAY_RECEIVED: ConnState.DRAINING,
        ConnInput.DRAIN: ConnState.DRAINING,
        ConnInput.LOST: ConnState.CLOSED,
    },
    ConnState.DRAINING: {
        ConnInput.SETTINGS_RECEIVED: ConnState.DRAINING,
        ConnInput.GOAWAY_RECEIVED: ConnState.DRAINING,
        ConnInput.DRAIN: ConnState.DRAINING,
        ConnInput.LOST: ConnState.CLOSED,
    },
    ConnState.CLOSED: {},
}


@given(st.sampled_from(ConnState), st.sampled_from(ConnInput))
def test_every_state_input_pair(state: ConnState, event: ConnInput) -> None:
    expected = EXPECTED[state].get(event)
    if expected is None:
        assert (state, event) not in TRANSITIONS
        with pytest.raises(LocalProtocolError):
            next_state(state, event)
    else:
        assert next_state(state, event) is expected


def test_table_has_no_extra_entries() -> None:
    assert len(TRANSITIONS) == sum(len(v) for v in EXPECTED.values())


def test_settings_and_ping_after_a_goaway_before_any_stream() -> None:
    """RFC 9113 6.8: after GOAWAY the connection still carries SETTINGS and PING."""
    client, server = connected()
    _server_goaway(server, last_stream_id=0)
    events = exchange(client, server)
    assert any(isinstance(e, GoAwayReceived) for e in events)
    server.h2.update_settings({SC.MAX_CONCURRENT_STREAMS: 7})
    server.h2.ping(b"87654321")
    events = exchange(client, server)  # no RemoteProtocolError
    assert SettingsChanged(7) in events
    assert client.is_closing and client.available_streams == 0
