"""The HTTP/2-over-TLS server both simulators share (asyncio + h2, server side).

One :class:`H2ServerProtocol` per connection: it acknowledges received DATA at once, honours the
client's flow-control window when sending bodies (queued until WINDOW_UPDATE), advertises and
changes ``SETTINGS_MAX_CONCURRENT_STREAMS``, enforces it (``goaway`` or ``refuse``), sends
GOAWAY, resets streams, and writes once per received chunk. A service (APNs, FCM) implements
:class:`Service.handle`, which turns a complete request into a :class:`Reply`.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import random
import socket
import ssl
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings

__all__ = ["Connection", "H2ServerProtocol", "Reply", "Request", "Service", "make_server_ssl"]

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class Request:
    conn: Connection
    stream_id: int
    headers: list[tuple[bytes, bytes]]
    body: bytearray = field(default_factory=bytearray)

    def header(self, name: bytes) -> bytes | None:
        for key, value in self.headers:
            if key == name:
                return value
        return None


@dataclass(slots=True)
class Reply:
    """What to do with a stream: answer it, reset it, or never answer (blackhole)."""

    status: int = 200
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    body: bytes = b""
    delay_s: float = 0.0
    reset_code: int | None = None
    blackhole: bool = False
    goaway_after: bool = False  # graceful GOAWAY after this answer (APNs 503 Shutdown)


@dataclass(slots=True)
class Connection:
    """What a service may know and keep about one client connection."""

    id: int
    protocol: H2ServerProtocol
    state: dict[str, Any] = field(default_factory=dict)
    streams_seen: int = 0
    max_open_seen: int = 0


class Service:
    """A simulator: its knobs, counters, scripts and request handler."""

    name = "service"
    default_knobs: dict[str, Any] = {}

    def __init__(self, *, seed: int) -> None:
        self.connections: dict[int, Connection] = {}
        self.counters: dict[str, int] = {}
        self.knobs: dict[str, Any] = dict(self.default_knobs)
        self.rng = random.Random(seed)
        self.accepted: Counter[str] = Counter()
        self.scripts: dict[str, list[str]] = {}
        self.flaky: Counter[str] = Counter()
        self.responses: Counter[str] = Counter()
        # Registered device tokens: token → kind (what the token answers, as devkit kinds).
        self.registry: dict[str, str] = {}

    def register(self, tokens: dict[str, str]) -> None:
        """Give tokens an explicit kind (``"ok"``, ``"Unregistered"``, ``"UNREGISTERED"`` …)."""
        self.registry.update(tokens)

    def count(self, key: str, n: int = 1) -> None:
        self.counters[key] = self.counters.get(key, 0) + n

    def patch(self, knobs: dict[str, Any]) -> None:
        """Change fault knobs at run time; unknown knobs are an error."""
        unknown = set(knobs) - set(self.default_knobs)
        if unknown:
            raise KeyError(f"unknown {self.name} simulator knob(s): {sorted(unknown)}")
        self.knobs.update(knobs)

    def script(self, scripts: dict[str, list[str]]) -> None:
        """Per token: the next answers, e.g. ``["503:ServiceUnavailable", "200"]``."""
        for token, steps in scripts.items():
            self.scripts[token] = list(steps)

    def next_scripted(self, token: str) -> str | None:
        steps = self.scripts.get(token)
        return steps.pop(0) if steps else None

    def metrics(self) -> dict[str, Any]:
        return {
            **self.counters,
            "requests": self.counters.get("requests", 0),
            "responses": dict(self.responses),
            "accepted": sum(self.accepted.values()),
        }

    def reset(self) -> None:
        self.accepted.clear()
        self.scripts.clear()
        self.flaky.clear()
        self.responses.clear()
        self.counters.clear()
        self.registry.clear()
        self.knobs = dict(self.default_knobs)

    def latency_s(self) -> float:
        spec = self.knobs.get("latency")
        if not spec:
            return 0.0
        dist = spec.get("dist", "fixed")
        if dist == "uniform":
            return self.rng.uniform(spec.get("min_ms", 0), spec.get("max_ms", 0)) / 1000
        if dist == "lognormal":
            median = math.log(spec.get("median_ms", 10))
            return self.rng.lognormvariate(median, spec.get("sigma", 0.5)) / 1000
        return float(spec.get("ms", 0)) / 1000

    def connection_faults(self, request: Request, goaway_debug: bytes) -> None:
        """Planned GOAWAY and abrupt resets after N streams on a connection."""
        conn = request.conn
        after = self.knobs.get("goaway_after_streams")
        if after and conn.streams_seen >= after and not conn.protocol.goaway_sent:
            conn.protocol.goaway(0, goaway_debug, last_stream_id=request.stream_id)
        reset = self.knobs.get("reset_connection")
        if reset and conn.streams_seen >= int(reset.get("after_streams", 0)):
            conn.protocol.abort()
        for step in self.knobs.get("max_concurrent_streams_schedule") or ():
            if conn.streams_seen == int(step["after_requests"]):
                conn.protocol.set_max_streams(int(step["value"]))

    def initial_max_streams(self, conn: Connection) -> int:
        return 100

    def handle(self, request: Request) -> Reply:
        raise NotImplementedError

    def on_connection(self, conn: Connection) -> None:
        self.count("connections_opened")

    def on_close(self, conn: Connection) -> None:
        self.count("connections_closed")


_ids = itertools.count(1)


class H2ServerProtocol(asyncio.Protocol):
    def __init__(self, service: Service) -> None:
        self.service = service
        self.h2 = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=False, header_encoding=None)
        )
        self.transport: asyncio.Transport | None = None
        self.conn = Connection(next(_ids), self)
        self.requests: dict[int, Request] = {}
        self.pending: dict[int, bytes] = {}  # response bodies waiting for window
        self.open_streams: set[int] = set()
        self.closed = False
        self.goaway_sent = False
        self.handles: set[asyncio.TimerHandle] = set()

    # -- asyncio ------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
        peer = transport.get_extra_info("peercert")
        if peer:
            self.conn.state["client_cert"] = peer
        self.service.connections[self.conn.id] = self.conn
        self.service.on_connection(self.conn)
        self.h2.local_settings = h2.settings.Settings(
            client=False,
            initial_values={
                h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: self.service.initial_max_streams(
                    self.conn
                ),
                h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 1 << 20,
                h2.settings.SettingCodes.MAX_FRAME_SIZE: 16384,
            },
        )
        self.h2.initiate_connection()
        self.h2.increment_flow_control_window(1 << 24)
        self.flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        for handle in self.handles:
            handle.cancel()
        self.handles.clear()
        self.service.connections.pop(self.conn.id, None)
        self.service.on_close(self.conn)

    def data_received(self, data: bytes) -> None:
        try:
            events = self.h2.receive_data(data)
        except h2.exceptions.TooManyStreamsError:
            self.service.count("limit_violations")
            self.goaway(
                h2.errors.ErrorCodes.PROTOCOL_ERROR,
                b"Maximum active streams violated for this endpoint.",
            )
            self.close_soon(0.05)
            return
        except h2.exceptions.ProtocolError:
            self.service.count("protocol_errors")
            self.flush()
            self.abort()
            return
        for event in events:
            self.dispatch(event)
        self.flush()

    # -- h2 events ----------------------------------------------------------------------

    def dispatch(self, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.RequestReceived):
            self.conn.streams_seen += 1
            self.service.count("streams")
            self.open_streams.add(event.stream_id)
            self.conn.max_open_seen = max(self.conn.max_open_seen, len(self.open_streams))
            self.requests[event.stream_id] = Request(
                self.conn, event.stream_id, list(event.headers)
            )
            if event.stream_ended is not None:
                self.complete(event.stream_id)
        elif isinstance(event, h2.events.DataReceived):
            req = self.requests.get(event.stream_id)
            if req is not None:
                req.body += event.data
            if event.flow_controlled_length:
                self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            if event.stream_ended is not None:
                self.complete(event.stream_id)
        elif isinstance(event, h2.events.StreamEnded):
            self.complete(event.stream_id)
        elif isinstance(event, h2.events.StreamReset):
            self.requests.pop(event.stream_id, None)
            self.pending.pop(event.stream_id, None)
            self.open_streams.discard(event.stream_id)
            self.service.count("client_resets")
        elif isinstance(event, h2.events.WindowUpdated):
            self.send_pending()
        elif isinstance(event, h2.events.PingReceived):
            self.service.count("pings")
        elif isinstance(event, h2.events.PriorityUpdated):
            self.service.count("priority_frames")
        elif isinstance(event, h2.events.ConnectionTerminated):
            self.close_soon(0)

    def complete(self, stream_id: int) -> None:
        req = self.requests.pop(stream_id, None)
        if req is None:
            return
        reply = self.service.handle(req)
        if reply.blackhole:
            self.service.count("blackholed")
            return
        if reply.delay_s > 0:
            handle = asyncio.get_running_loop().call_later(
                reply.delay_s, self._answer_later, stream_id, reply
            )
            self.handles.add(handle)
            return
        self.answer(stream_id, reply)

    def _answer_later(self, stream_id: int, reply: Reply) -> None:
        self.handles = {
            h
            for h in self.handles
            if not h.cancelled() and h.when() > asyncio.get_running_loop().time()
        }
        if not self.closed:
            self.answer(stream_id, reply)
            self.flush()

    def answer(self, stream_id: int, reply: Reply) -> None:
        if stream_id not in self.open_streams:
            return
        try:
            if reply.reset_code is not None:
                self.h2.reset_stream(stream_id, reply.reset_code)
                self.open_streams.discard(stream_id)
                return
            headers = [(b":status", str(reply.status).encode()), *reply.headers]
            if not reply.body:
                self.h2.send_headers(stream_id, headers, end_stream=True)
                self.open_streams.discard(stream_id)
            else:
                self.h2.send_headers(stream_id, headers)
                self.pending[stream_id] = reply.body
                self.send_pending()
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
            self.open_streams.discard(stream_id)
            self.pending.pop(stream_id, None)
        if reply.goaway_after:
            self.goaway(0, b'{"reason":"Shutdown"}')

    def send_pending(self) -> None:
        for stream_id in list(self.pending):
            body = self.pending[stream_id]
            try:
                window = min(
                    self.h2.local_flow_control_window(stream_id), self.h2.max_outbound_frame_size
                )
            except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
                del self.pending[stream_id]
                self.open_streams.discard(stream_id)
                continue
            split = self.service.knobs.get("split_body_frames") or 0
            if split:
                window = min(window, int(split))
            while body and window > 0:
                chunk, body = body[:window], body[window:]
                self.h2.send_data(stream_id, chunk, end_stream=not body)
                window = min(
                    self.h2.local_flow_control_window(stream_id), self.h2.max_outbound_frame_size
                )
                if split:
                    window = min(window, int(split))
            if body:
                self.pending[stream_id] = body
                self.service.count("window_stalls")
            else:
                del self.pending[stream_id]
                self.open_streams.discard(stream_id)

    # -- commands -----------------------------------------------------------------------

    def flush(self) -> None:
        data = self.h2.data_to_send()
        if data and self.transport is not None and not self.closed:
            self.transport.write(data)

    def set_max_streams(self, value: int) -> None:
        if self.closed:
            return
        self.h2.update_settings({h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: value})
        self.flush()

    def goaway(
        self, error_code: int = 0, debug: bytes = b"", last_stream_id: int | None = None
    ) -> None:
        if self.goaway_sent or self.closed:
            return
        self.goaway_sent = True
        self.service.count("goaways_sent")
        self.h2.close_connection(
            error_code=error_code, additional_data=debug, last_stream_id=last_stream_id
        )
        self.flush()

    def close_soon(self, delay_s: float) -> None:
        if self.transport is None or self.closed:
            return
        loop = asyncio.get_running_loop()
        self.handles.add(loop.call_later(delay_s, self._close))

    def _close(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None and not self.closed:
            self.service.count("connections_reset")
            self.transport.abort()


def make_server_ssl(
    cert_file: str, key_file: str, *, alpn: list[str], client_ca_file: str | None = None
) -> ssl.SSLContext:
    """Server TLS; with ``client_ca_file``, client certificates are asked for (APNs mTLS)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert_file, key_file)
    if client_ca_file is not None:
        ctx.verify_mode = ssl.CERT_OPTIONAL
        ctx.load_verify_locations(client_ca_file)
    ctx.set_alpn_protocols(alpn)
    return ctx


async def serve(
    factory: Callable[[], H2ServerProtocol], ssl_context: ssl.SSLContext, port: int
) -> asyncio.Server:
    loop = asyncio.get_running_loop()
    return await loop.create_server(factory, "127.0.0.1", port, ssl=ssl_context, backlog=256)
