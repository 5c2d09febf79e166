"""Test servers for the pool: a throwaway CA, a scriptable asyncio h2 server, nghttpd."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import ssl
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.settings
from hpack import NeverIndexedHeaderTuple as NeverIndexed

from pushgres.http2.fastconn import FastClientConnection
from pushgres.http2.h2codec import H2ClientConnection
from pushgres.http2.streams import MAX_STREAM_ID, ClientConnection
from pushgres.simulator import devkit


@dataclass(frozen=True)
class Certs:
    ca_file: str
    cert_file: str
    key_file: str
    client_cert_pem: bytes
    client_key_pem: bytes


def make_certs(directory: Path) -> Certs:
    """A CA, a server certificate for localhost/127.0.0.1 and a client certificate."""
    setup = devkit.make_dev_setup(directory)
    return Certs(
        ca_file=setup.ca_file,
        cert_file=setup.server_cert_file,
        key_file=setup.server_key_file,
        client_cert_pem=Path(setup.apns_cert_file).read_bytes(),
        client_key_pem=Path(setup.apns_cert_key_file).read_bytes(),
    )


def server_ssl_context(certs: Certs, *, alpn: tuple[str, ...] = ("h2",)) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(certs.cert_file, certs.key_file)
    if alpn:
        context.set_alpn_protocols(list(alpn))
    return context


# -- a scriptable asyncio h2 server --------------------------------------------------------


@dataclass
class Request:
    conn: ServerConnection
    stream_id: int
    headers: dict[bytes, bytes]
    body: bytes = b""
    never_indexed: frozenset[bytes] = frozenset()  # names that came as never-indexed literals

    @property
    def path(self) -> bytes:
        return self.headers[b":path"]


Handler = Callable[[Request], None]


def echo(request: Request) -> None:
    request.conn.respond(request.stream_id, 200, request.body)


class ServerConnection(asyncio.Protocol):
    """One server-side connection; the handler decides what happens to each request."""

    def __init__(self, server: FaultServer) -> None:
        self.server = server
        config = h2.config.H2Configuration(client_side=False, header_encoding=None)
        self.h2 = h2.connection.H2Connection(config=config)
        self.transport: asyncio.Transport | None = None
        self.requests: dict[int, Request] = {}
        self.open_streams: set[int] = set()
        self.max_open_seen = 0
        self.frozen = False  # stop reading: no PING acks, no responses
        self.resets: list[tuple[int, int]] = []
        self.closed = asyncio.get_running_loop().create_future()
        self.handles: list[asyncio.TimerHandle] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's TLS transport is duck-typed
        self.server.connections.append(self)
        self.h2.local_settings = h2.settings.Settings(
            client=False,
            initial_values={
                h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: self.server.max_concurrent_streams
            },
        )
        self.h2.initiate_connection()
        self.flush()

    def data_received(self, data: bytes) -> None:
        if self.frozen:
            return
        for event in self.h2.receive_data(data):
            if isinstance(event, h2.events.RequestReceived):
                self.open_streams.add(event.stream_id)
                self.max_open_seen = max(self.max_open_seen, len(self.open_streams))
                never = frozenset(h[0] for h in event.headers if isinstance(h, NeverIndexed))
                self.requests[event.stream_id] = Request(
                    self, event.stream_id, dict(event.headers), never_indexed=never
                )
            elif isinstance(event, h2.events.DataReceived):
                self.requests[event.stream_id].body += event.data
                self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, h2.events.StreamEnded):
                request = self.requests[event.stream_id]
                self.server.received.append(request)
                self.server.handler(request)
            elif isinstance(event, h2.events.StreamReset):
                self.open_streams.discard(event.stream_id)
                self.resets.append((event.stream_id, int(event.error_code)))
        self.flush()

    def connection_lost(self, exc: Exception | None) -> None:
        for handle in self.handles:
            handle.cancel()
        if not self.closed.done():
            self.closed.set_result(None)

    def flush(self) -> None:
        data = self.h2.data_to_send()
        if data and self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    # -- actions for handlers --

    def respond(self, stream_id: int, status: int, body: bytes = b"") -> None:
        if (
            stream_id not in self.open_streams
            or self.transport is None
            or self.transport.is_closing()
        ):
            return
        self.open_streams.discard(stream_id)
        self.h2.send_headers(stream_id, [(b":status", str(status).encode())], end_stream=not body)
        if body:
            self.h2.send_data(stream_id, body, end_stream=True)
        self.flush()

    def respond_later(self, delay_s: float, stream_id: int, status: int, body: bytes = b"") -> None:
        loop = asyncio.get_running_loop()
        self.handles.append(loop.call_later(delay_s, self.respond, stream_id, status, body))

    def reset(self, stream_id: int, code: h2.errors.ErrorCodes) -> None:
        self.open_streams.discard(stream_id)
        self.h2.reset_stream(stream_id, code)
        self.flush()

    def goaway(self, last_stream_id: int, debug: bytes = b'{"reason":"Shutdown"}') -> None:
        self.h2.close_connection(additional_data=debug, last_stream_id=last_stream_id)
        # h2 stops sending after its own GOAWAY; a real server finishes streams <= last.
        self.h2.state_machine.state = h2.connection.ConnectionState.SERVER_OPEN
        for stream_id in [s for s in self.open_streams if s > last_stream_id]:
            self.open_streams.discard(stream_id)
        self.flush()

    def set_max_concurrent_streams(self, value: int) -> None:
        self.h2.update_settings({h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: value})
        self.flush()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()


@dataclass
class FaultServer:
    """An h2 TLS server on loopback whose behaviour each test scripts with ``handler``."""

    ssl_context: ssl.SSLContext
    max_concurrent_streams: int = 100
    handler: Handler = echo
    connections: list[ServerConnection] = field(default_factory=list)
    received: list[Request] = field(default_factory=list)
    port: int = 0
    _server: asyncio.Server | None = None

    async def __aenter__(self) -> FaultServer:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: ServerConnection(self), "127.0.0.1", 0, ssl=self.ssl_context
        )
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for conn in self.connections:
            conn.abort()
        await asyncio.gather(*(c.closed for c in self.connections))
        await self._server.wait_closed()


# -- nghttpd ------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def nghttpd_path() -> str | None:
    return shutil.which("nghttpd") or (
        "/usr/sbin/nghttpd" if os.path.exists("/usr/sbin/nghttpd") else None
    )


def start_nghttpd(binary: str, certs: Certs, workdir: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    process = subprocess.Popen(
        [
            binary,
            "--echo-upload",
            "-a",
            "127.0.0.1",
            "-d",
            str(workdir),
            str(port),
            certs.key_file,
            certs.cert_file,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return process, port


def exhaust_stream_ids(client: ClientConnection) -> None:
    """Make the next stream id of ``client`` (either codec) fall past 2^31-1."""
    if isinstance(client, H2ClientConnection):
        client._h2.highest_outbound_stream_id = MAX_STREAM_ID
    else:
        assert isinstance(client, FastClientConnection)
        client._next_id = MAX_STREAM_ID + 2
