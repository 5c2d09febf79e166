"""Http2Protocol over a recording fake transport: write coalescing, GOAWAY, loss, errors."""

from __future__ import annotations

import asyncio

import h2.connection
import h2.errors
import h2.events
import pytest

from pushgres.exceptions import ConnectionLost, LocalProtocolError, StreamRefused, StreamReset
from pushgres.http2.events import GoAwayReceived
from pushgres.http2.h2codec import H2ClientConnection
from pushgres.http2.lifecycle import ConnState
from pushgres.http2.transport import Http2Protocol

from .test_connection import HEADERS, Server


class FakeTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.closed = False
        self.aborted = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.writes.append(bytes(data))

    def is_closing(self) -> bool:
        return self.closed or self.aborted

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = True


class Listener:
    def __init__(self) -> None:
        self.freed = 0
        self.changes: list[ConnState] = []
        self.goaways: list[GoAwayReceived] = []

    def slots_freed(self, conn: Http2Protocol, count: int) -> None:
        self.freed += count

    def state_changed(self, conn: Http2Protocol) -> None:
        self.changes.append(conn.state)

    def goaway_received(self, conn: Http2Protocol, event: GoAwayReceived) -> None:
        self.goaways.append(event)


def pump(proto: Http2Protocol, transport: FakeTransport, server: Server) -> None:
    """Deliver what the client wrote to the server and the server's answers back, until quiet."""
    for _ in range(100):
        data = b"".join(transport.writes)
        transport.writes.clear()
        if data:
            server.receive(data)
        answer = server.h2.data_to_send()
        if answer:
            proto.data_received(answer)
        if not data and not answer:
            return
    raise AssertionError("never went quiet")


async def connected(
    server: Server | None = None,
) -> tuple[Http2Protocol, FakeTransport, Server, Listener]:
    listener = Listener()
    proto = Http2Protocol(H2ClientConnection(), connection_id=7, listener=listener)
    transport = FakeTransport()
    proto.connection_made(transport)
    server = server or Server()
    server.start()
    pump(proto, transport, server)
    await proto.wait_ready()
    return proto, transport, server, listener


async def test_submits_in_one_loop_turn_are_one_write() -> None:
    proto, transport, server, _ = await connected()
    assert proto.state is ConnState.READY
    futures = [proto.submit_future(HEADERS, b"{}")[1] for _ in range(10)]
    assert transport.writes == []  # nothing until the loop turns
    await asyncio.sleep(0)
    assert len(transport.writes) == 1
    pump(proto, transport, server)
    assert len(server.ended) == 10
    for stream_id in server.ended:
        server.respond(stream_id, 200, b"ok")
    answer = server.h2.data_to_send()
    proto.data_received(answer)
    assert len(transport.writes) <= 1  # window updates for the whole chunk: one write at most
    assert [f.result().status for f in futures] == [200] * 10
    assert proto.in_flight == 0


async def test_goaway_refuses_streams_above_last_and_drains() -> None:
    proto, transport, server, listener = await connected()
    submitted = [proto.submit_future(HEADERS, b"{}") for _ in range(3)]
    await asyncio.sleep(0)
    pump(proto, transport, server)
    (first, f1), (_, f2), (_, f3) = submitted
    server.h2.close_connection(last_stream_id=first)
    server.h2.state_machine.state = h2.connection.ConnectionState.SERVER_OPEN
    proto.data_received(server.h2.data_to_send())
    assert isinstance(f2.exception(), StreamRefused) and isinstance(f3.exception(), StreamRefused)
    assert not f1.done()
    assert proto.state is ConnState.DRAINING and proto.available_streams == 0
    assert listener.goaways[0].unprocessed == (submitted[1][0], submitted[2][0])
    with pytest.raises(LocalProtocolError):
        proto.submit_future(HEADERS, b"{}")
    server.respond(first, 200, b"done")
    proto.data_received(server.h2.data_to_send())
    assert f1.result().body == b"done"
    assert proto.is_closed and transport.closed  # drained: closed itself


async def test_resets_and_connection_lost() -> None:
    proto, transport, server, listener = await connected()
    (a, fa), (b, fb), (_, fc) = [proto.submit_future(HEADERS, b"{}") for _ in range(3)]
    await asyncio.sleep(0)
    pump(proto, transport, server)
    server.h2.reset_stream(a, h2.errors.ErrorCodes.REFUSED_STREAM)
    server.h2.reset_stream(b, h2.errors.ErrorCodes.INTERNAL_ERROR)
    proto.data_received(server.h2.data_to_send())
    assert isinstance(fa.exception(), StreamRefused)
    error = fb.exception()
    assert isinstance(error, StreamReset) and error.error_code == 2
    assert listener.freed == 2
    proto.connection_lost(ConnectionResetError("peer reset"))
    assert isinstance(fc.exception(), ConnectionLost)
    assert proto.state is ConnState.CLOSED and listener.changes[-1] is ConnState.CLOSED
    assert proto.is_socket_closed
    assert await proto.ping() is False


async def test_cancel_frees_the_slot_and_sends_rst() -> None:
    proto, transport, server, listener = await connected()
    stream_id, future = proto.submit_future(HEADERS, b"{}")
    proto.cancel(stream_id)
    assert not future.done() and proto.in_flight == 0 and listener.freed == 1
    await asyncio.sleep(0)
    pump(proto, transport, server)
    assert any(
        isinstance(e, h2.events.StreamReset) and e.error_code == h2.errors.ErrorCodes.CANCEL
        for e in server.events
    )


async def test_protocol_error_drops_the_connection() -> None:
    proto, transport, _, _ = await connected()
    _, future = proto.submit_future(HEADERS, b"{}")
    proto.data_received(b"\x00\x00\x04\x08\x00\x00\x00\x00\x00\x00\x00\x00\x00")
    assert isinstance(future.exception(), ConnectionLost)
    assert proto.state is ConnState.CLOSED and transport.closed


async def test_closed_before_settings_is_a_connect_error() -> None:
    listener = Listener()
    proto = Http2Protocol(H2ClientConnection(), connection_id=1, listener=listener)
    proto.connection_made(FakeTransport())
    proto.connection_lost(None)
    with pytest.raises(Exception, match="before the server's SETTINGS"):
        await proto.wait_ready()


async def test_error_goaway_loses_the_remaining_streams() -> None:
    proto, transport, server, _ = await connected()
    (first, future), (_, above) = [proto.submit_future(HEADERS, b"{}") for _ in range(2)]
    await asyncio.sleep(0)
    pump(proto, transport, server)
    server.h2.close_connection(
        error_code=h2.errors.ErrorCodes.ENHANCE_YOUR_CALM, last_stream_id=first
    )
    proto.data_received(server.h2.data_to_send())
    assert isinstance(above.exception(), StreamRefused)
    assert isinstance(future.exception(), ConnectionLost)
    assert proto.is_closed and transport.closed
