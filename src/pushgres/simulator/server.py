"""The HTTP/2-over-TLS server every simulator shares (asyncio + h2, server side).

One :class:`H2ServerProtocol` per connection. It owns the wire rules every simulator needs:

* SETTINGS at connection start (``MAX_CONCURRENT_STREAMS``, ``INITIAL_WINDOW_SIZE``,
  ``MAX_FRAME_SIZE`` 16384, ``HEADER_TABLE_SIZE``), and new ``MAX_CONCURRENT_STREAMS`` values
  at run time (:meth:`H2ServerProtocol.set_max_streams`).
* Stream-limit enforcement with our own accounting, so both policies work: ``goaway`` (GOAWAY
  ``PROTOCOL_ERROR`` "Maximum active streams violated for this endpoint.") and ``refuse``
  (RST_STREAM ``REFUSED_STREAM`` for the excess stream). h2 itself is told the limit is
  unbounded after the first SETTINGS frame, and our SETTINGS changes are written as raw frames;
  a limit applies once the client has acknowledged it, as RFC 9113 section 6.5.3 says.
* Flow control: request DATA is acknowledged at once; response bodies never exceed the client's
  window and wait for WINDOW_UPDATE (time spent waiting is counted as window stalls).
* GOAWAY written as a raw frame so h2 keeps processing the streams at or below
  ``last_stream_id`` (graceful mode answers them, then closes; abrupt mode closes at once);
  streams above it are ignored, as RFC 9113 section 6.8 says.
* Latency via ``loop.call_later`` (no task per request), writes coalesced to one
  ``transport.write`` per received chunk or per loop turn, ``TCP_NODELAY``.
* PING: counted; ACKs may be delayed or dropped, and too many PINGs without data answered
  with GOAWAY ``ENHANCE_YOUR_CALM`` (knobs).
* ALPN: ``h2``; ``http/1.1`` for services that allow it (FCM, the OAuth token endpoint).
  Without ALPN the first bytes decide: the HTTP/2 preface means prior-knowledge HTTP/2 (APNs
  accepts it), anything else is HTTP/1.1 or a closed connection. The HTTP/1.1 side is minimal:
  ``Content-Length`` bodies, keep-alive, one request at a time, and ``Expect: 100-continue``
  answered with ``100 Continue`` (RFC 9110 section 10.1.1).

A service (APNs, FCM, OAuth) subclasses :class:`Service`: it turns a complete :class:`Request` into a
:class:`Reply`. :class:`Service` also owns what both simulators share: knobs and their runtime
patching, the seeded RNG, the clock offset, the latency model, scripts, token registry,
counters, accepted counts and the bounded request log.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import math
import random
import socket
import ssl
import struct
import time
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
from hyperframe.frame import GoAwayFrame, PingFrame, SettingsFrame

__all__ = [
    "COMMON_KNOBS",
    "Connection",
    "H2ServerProtocol",
    "Reply",
    "Request",
    "Service",
    "make_server_ssl",
]

logger = logging.getLogger(__name__)

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
EXCESS_STREAMS_DEBUG = b"Maximum active streams violated for this endpoint."
_MCS = h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS
_RESET_CODES = {code.name: int(code) for code in h2.errors.ErrorCodes}

# Knobs every simulator understands; each service adds its own.
COMMON_KNOBS: dict[str, Any] = {
    "seed": None,  # set to re-seed the RNG
    "latency": None,  # {"dist": fixed|uniform|lognormal, "ms", "min_ms", "max_ms", "median_ms", "sigma", "tail_p", "tail_ms"}
    "fail_rates": {},  # {"<status>:<reason>": probability}
    "blackhole_rate": 0.0,
    "rst_stream": None,  # {"rate": p, "code": "REFUSED_STREAM", "when": "before"|"after_processing"}
    "mid_response_reset": 0.0,  # probability: HEADERS sent, then the connection is aborted
    "goaway_after_streams": 0,  # per connection
    "goaway_after_s": 0.0,  # per connection
    "goaway_last_stream_mode": "exact",  # or "lower": below the in-flight streams
    "goaway_graceful": True,
    "goaway_error_code": 0,
    "goaway_grace_s": 5.0,
    "reset_connection": None,  # {"after_streams": N | "after_bytes": B, "mode": "fin"|"rst"}
    "max_concurrent_streams_schedule": [],  # [{"after_requests": N | "after_s": S, "value": M}]
    "on_excess_streams": "goaway",  # or "refuse"
    "excess_streams_error_code": int(h2.errors.ErrorCodes.PROTOCOL_ERROR),
    "initial_window_size": 1 << 20,
    "header_table_size": 4096,
    "split_body_frames": 0,  # bytes per response DATA frame; 0: as large as allowed
    "retry_after": None,  # {"mode": seconds|http-date|none, "value": 7}
    "ping_ack_delay_ms": 0,
    "ping_drop_rate": 0.0,
    "max_pings_without_data": 0,  # 0: off; else GOAWAY ENHANCE_YOUR_CALM "too_many_pings"
    "idle_timeout_s": 0.0,  # GOAWAY after that long without a new stream; 0: off
    "withhold_window_updates": False,  # never return flow-control credit (client send stall)
    "max_connections": 0,  # per listener; excess connections are reset; 0: unlimited
    "refuse_connections_for_s": 0.0,  # from the moment it is set: new connections are reset
    "clock_offset_s": 0.0,
    "request_log_size": 10_000,
}


@dataclass(slots=True)
class Request:
    """One complete request (headers as received, body reassembled)."""

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
    """What to do with a stream: answer it, reset it, or never answer it (blackhole)."""

    status: int = 200
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    body: bytes = b""
    delay_s: float = 0.0
    reset_code: int | None = None
    blackhole: bool = False
    goaway_after: bool = False  # graceful GOAWAY {"reason":"Shutdown"} after this answer
    abort_after_headers: bool = False  # mid-response reset: HEADERS, then the socket dies
    reason: str = ""  # for the request log and counters
    fault: str = ""  # the injected fault, if any
    # Processed and to be counted as accepted once the answer (or the reset after
    # processing) is actually written: (device token, apns-id or "").
    accepted: tuple[str, str] | None = None


@dataclass(slots=True)
class Connection:
    """What a service may know and keep about one client connection."""

    id: int
    protocol: H2ServerProtocol
    state: dict[str, Any] = field(default_factory=dict)
    streams_seen: int = 0
    max_open_seen: int = 0
    opened_at: float = field(default_factory=time.monotonic)
    errors: int = 0


class Service:
    """A simulator: its knobs, counters, scripts, token registry and request handler."""

    name = "service"
    default_knobs: dict[str, Any] = COMMON_KNOBS

    def __init__(self, *, seed: int) -> None:
        self.connections: dict[int, Connection] = {}
        self.counters: dict[str, int] = {}
        self.knobs: dict[str, Any] = dict(self.default_knobs)
        self.seed = seed
        self.rng = random.Random(seed)
        self.accepted: Counter[str] = Counter()
        self.scripts: dict[str, list[str]] = {}
        self.global_script: collections.deque[str] = collections.deque()
        self.flaky: Counter[str] = Counter()
        self.responses: Counter[str] = Counter()
        self.faults: Counter[str] = Counter()
        # Registered tokens: token → kind (a devkit kind) or a dict spec (the configuration's).
        self.registry: dict[str, Any] = {}
        self.request_log: collections.deque[dict[str, Any]] = collections.deque(
            maxlen=int(self.knobs["request_log_size"])
        )
        self.request_seq = 0
        self.max_open_seen = 0
        self.refuse_until = 0.0

    # -- control ------------------------------------------------------------------------

    def register(self, tokens: dict[str, Any]) -> None:
        """Give tokens an explicit kind (``"ok"``, ``"Unregistered"`` …) or a state dict."""
        self.registry.update(tokens)

    def count(self, key: str, n: int = 1) -> None:
        self.counters[key] = self.counters.get(key, 0) + n

    def patch(self, knobs: dict[str, Any]) -> None:
        """Change knobs at run time; unknown knobs are an error (``KeyError``)."""
        unknown = set(knobs) - set(self.default_knobs)
        if unknown:
            raise KeyError(f"unknown {self.name} simulator knob(s): {sorted(unknown)}")
        self.knobs.update(knobs)
        if knobs.get("seed") is not None:
            self.rng.seed(int(knobs["seed"]))
        if "refuse_connections_for_s" in knobs:
            self.refuse_until = time.monotonic() + float(knobs["refuse_connections_for_s"] or 0)
        if "request_log_size" in knobs:
            self.request_log = collections.deque(
                self.request_log, maxlen=int(knobs["request_log_size"])
            )

    def script(self, scripts: dict[str, list[str]]) -> None:
        """Per token: the next answers, e.g. ``["503:ServiceUnavailable", "200"]``.

        The key ``"*"`` queues global outcomes: the next N requests, whatever their token.
        """
        for token, steps in scripts.items():
            if token == "*":
                self.global_script.extend(steps)
            else:
                self.scripts[token] = list(steps)

    def next_scripted(self, token: str) -> str | None:
        steps = self.scripts.get(token)
        if steps:
            return steps.pop(0)
        if self.global_script:
            return self.global_script.popleft()
        return None

    def set_max_streams(self, value: int, connection_id: int | None = None) -> None:
        """Send a new ``MAX_CONCURRENT_STREAMS`` on one or all connections."""
        for conn in list(self.connections.values()):
            if connection_id is None or conn.id == connection_id:
                conn.protocol.set_max_streams(value)

    def goaway(
        self,
        *,
        error_code: int = 0,
        reason: str = "",
        last_stream_mode: str = "exact",
        graceful: bool = True,
        connection_id: int | None = None,
    ) -> int:
        """GOAWAY now on one or all connections; returns how many got one."""
        debug = f'{{"reason":"{reason}"}}'.encode() if reason else b""
        sent = 0
        for conn in list(self.connections.values()):
            if connection_id is None or conn.id == connection_id:
                conn.protocol.goaway(
                    error_code, debug, last_stream_mode=last_stream_mode, graceful=graceful
                )
                sent += 1
        return sent

    def drop(self, *, mode: str = "fin", connection_id: int | None = None) -> int:
        """Close one or all connections without GOAWAY (``fin``) or with a TCP reset (``rst``)."""
        dropped = 0
        for conn in list(self.connections.values()):
            if connection_id is None or conn.id == connection_id:
                conn.protocol.abort(rst=mode == "rst")
                dropped += 1
        return dropped

    def metrics(self) -> dict[str, Any]:
        return {
            **self.counters,
            "requests": self.counters.get("requests", 0),
            "responses": dict(self.responses),
            "faults": dict(self.faults),
            "accepted": sum(self.accepted.values()),
            "open_connections": len(self.connections),
            "max_concurrent_seen": self.max_open_seen,
        }

    def connection_states(self) -> list[dict[str, Any]]:
        now = time.monotonic()
        return [
            {
                "id": c.id,
                "age_s": round(now - c.opened_at, 3),
                "streams": c.streams_seen,
                "open": len(c.protocol.open_streams),
                "max_concurrent_seen": c.max_open_seen,
                "max_concurrent_streams": c.protocol.advertised_limit,
                "team": c.state.get("team"),
                "key_id": c.state.get("kid"),
                "jwt_age_s": (round(self.now() - c.state["iat"], 1) if "iat" in c.state else None),
                "goaway_sent": c.protocol.goaway_sent,
            }
            for c in self.connections.values()
        ]

    def requests_since(self, since: int = 0) -> list[dict[str, Any]]:
        return [entry for entry in self.request_log if entry["seq"] > since]

    def reset(self) -> None:
        """Clear state, counters, scripts, registry and logs; knobs back to their defaults."""
        self.accepted.clear()
        self.scripts.clear()
        self.global_script.clear()
        self.flaky.clear()
        self.responses.clear()
        self.faults.clear()
        self.counters.clear()
        self.registry.clear()
        self.request_log.clear()
        self.max_open_seen = 0
        self.refuse_until = 0.0
        self.knobs = dict(self.default_knobs)
        self.rng.seed(self.seed)

    # -- shared request-path helpers ------------------------------------------------------

    def now(self) -> float:
        return time.time() + float(self.knobs["clock_offset_s"])

    def latency_s(self) -> float:
        spec = self.knobs["latency"]
        if not spec:
            return 0.0
        dist = spec.get("dist", "fixed")
        if dist == "uniform":
            ms = self.rng.uniform(float(spec.get("min_ms", 0)), float(spec.get("max_ms", 0)))
        elif dist == "lognormal":
            ms = self.rng.lognormvariate(
                math.log(float(spec.get("median_ms", 10))), float(spec.get("sigma", 0.5))
            )
        else:
            ms = float(spec.get("ms", 0))
        tail_p = float(spec.get("tail_p", 0))
        if tail_p and self.rng.random() < tail_p:
            ms = float(spec.get("tail_ms", 0))
        return ms / 1000

    def chance(self, knob: str) -> bool:
        rate = self.knobs[knob]
        return bool(rate) and self.rng.random() < float(rate)

    def rst_code(self, when: str) -> int | None:
        """The RST_STREAM code to inject at ``when`` (before/after_processing), if any."""
        spec = self.knobs["rst_stream"]
        if not spec or spec.get("when", "before") != when:
            return None
        if self.rng.random() >= float(spec.get("rate", 0)):
            return None
        code = spec.get("code", "REFUSED_STREAM")
        return _RESET_CODES[code] if isinstance(code, str) else int(code)

    def log_request(self, request: Request, token: str, reply: Reply) -> None:
        self.request_seq += 1
        self.request_log.append(
            {
                "seq": self.request_seq,
                "time": round(self.now(), 3),
                "connection": request.conn.id,
                "stream": request.stream_id,
                "token": token[:12],
                "body_bytes": len(request.body),
                "status": (
                    None
                    if reply.blackhole
                    else (f"RST_STREAM:{reply.reset_code}" if reply.reset_code else reply.status)
                ),
                "reason": reply.reason,
                "fault": reply.fault,
                "latency_ms": round(reply.delay_s * 1000, 1),
            }
        )

    def connection_faults(self, conn: Connection, stream_id: int) -> None:
        """Planned per-connection events (knobs), checked as each stream completes."""
        after = self.knobs["goaway_after_streams"]
        if after and conn.streams_seen >= int(after) and not conn.protocol.goaway_sent:
            self.count("planned_goaways")
            conn.protocol.goaway(
                int(self.knobs["goaway_error_code"]),
                self.goaway_debug("Shutdown"),
                last_stream_mode=str(self.knobs["goaway_last_stream_mode"]),
                graceful=bool(self.knobs["goaway_graceful"]),
            )
        reset = self.knobs["reset_connection"]
        if (
            reset
            and reset.get("after_streams")
            and conn.streams_seen >= int(reset["after_streams"])
        ):
            self.count("planned_resets")
            conn.protocol.abort(rst=reset.get("mode", "fin") == "rst")
        for step in self.knobs["max_concurrent_streams_schedule"] or ():
            if "after_requests" in step and conn.streams_seen == int(step["after_requests"]):
                conn.protocol.set_max_streams(int(step["value"]))

    def goaway_debug(self, reason: str) -> bytes:
        return f'{{"reason":"{reason}"}}'.encode()

    # -- service hooks --------------------------------------------------------------------

    def initial_max_streams(self, conn: Connection) -> int:
        return 100

    def http1_allowed(self) -> bool:
        """Whether HTTP/1.1 is served (ALPN ``http/1.1`` or no HTTP/2 preface)."""
        return False

    def handle(self, request: Request) -> Reply:
        raise NotImplementedError

    def record_accepted(self, accepted: tuple[str, str]) -> None:
        """Count a processed request when its answer leaves (streams cut off never count)."""
        self.accepted[accepted[0]] += 1

    def on_connection(self, conn: Connection) -> None:
        self.count("connections_opened")

    def on_close(self, conn: Connection) -> None:
        self.count("connections_closed")


_ids = itertools.count(1)


class _ServerConnection(h2.connection.H2Connection):
    """``h2``'s server state machine without its per-stream scan of every open stream.

    ``h2`` counts open inbound streams by iterating over all of them on each new stream
    (and prunes closed ones while doing so); with hundreds of streams in flight that scan
    dominates the request path. We enforce the stream limit ourselves, so the count is not
    needed, and :meth:`retire` prunes each stream as it closes instead.
    """

    manual_ping_ack = False  # set while PING ACKs are delayed or dropped (knobs)

    @property
    def open_inbound_streams(self) -> int:
        return 0

    def _receive_ping_frame(self, frame: Any) -> tuple[list[Any], list[Any]]:
        frames: list[Any]
        frames, events = super()._receive_ping_frame(frame)
        return ([] if self.manual_ping_ack else frames), events

    def retire(self, stream_id: int) -> None:
        stream = self.streams.get(stream_id)
        if stream is not None and stream.closed:
            del self.streams[stream_id]
            self._closed_streams[stream_id] = stream.closed_by


def _no_huffman(encode: Callable[..., bytes]) -> Callable[..., bytes]:
    # Response headers are short and mostly indexed; Huffman coding them costs more CPU
    # than it saves on loopback, and clients must accept both forms (RFC 7541 5.2).
    def wrapper(headers: Any, huffman: bool = True) -> bytes:
        return encode(headers, huffman=False)

    return wrapper


class H2ServerProtocol(asyncio.Protocol):
    """One client connection: HTTP/2 (or HTTP/1.1 for services that allow it)."""

    def __init__(self, service: Service) -> None:
        self.service = service
        self.knobs = service.knobs
        self.h2 = _ServerConnection(
            h2.config.H2Configuration(
                client_side=False,
                header_encoding=None,
                validate_outbound_headers=False,
                normalize_outbound_headers=False,
            )
        )
        # Instance attribute over the bound method: hpack has no option for this.
        self.h2.encoder.encode = _no_huffman(self.h2.encoder.encode)  # type: ignore[method-assign]
        self.transport: asyncio.Transport | None = None
        self.conn = Connection(next(_ids), self)
        self.mode = "sniff"  # sniff | h2 | http1
        self.sniffed = b""
        self.requests: dict[int, Request] = {}
        self.pending: dict[int, bytes] = {}  # response bodies waiting for window
        self.stalled_since: dict[int, float] = {}
        self.open_streams: set[int] = set()
        self.ignored_streams: set[int] = set()
        self.timers: dict[int, asyncio.TimerHandle] = {}  # delayed answers by stream
        self.conn_timers: list[asyncio.TimerHandle] = []
        self.flush_handle: asyncio.Handle | None = None
        self.out = bytearray()
        self.closed = False
        self.goaway_sent = False
        self.goaway_graceful = True
        self.last_stream_id = 2**31 - 1
        self.highest_stream_id = 0
        # MAX_CONCURRENT_STREAMS: the value in force (acknowledged) and those sent but unacked.
        self.limit = 0
        self.advertised_limit = 0
        self.unacked: collections.deque[int | None] = collections.deque()
        self.http1: Any = None
        self.bytes_in = 0
        self.pings_without_data = 0
        self.last_stream_at = time.monotonic()
        self.close_cause = "client"  # or server (after GOAWAY / HTTP/1.1 close) or reset

    # -- asyncio ------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
        ssl_object: ssl.SSLObject | None = transport.get_extra_info("ssl_object")
        alpn = ssl_object.selected_alpn_protocol() if ssl_object is not None else None
        if ssl_object is not None:
            der = ssl_object.getpeercert(binary_form=True)
            if der:
                self.conn.state["client_cert"] = ssl_object.getpeercert() or {}
                self.conn.state["client_cert_der"] = der
        max_connections = int(self.knobs["max_connections"] or 0)
        if time.monotonic() < self.service.refuse_until or (
            max_connections and len(self.service.connections) >= max_connections
        ):
            self.service.count("connections_refused")
            self.abort(rst=True)
            return
        self.service.connections[self.conn.id] = self.conn
        self.service.on_connection(self.conn)
        self.service.count(f"alpn_{alpn or 'none'}")
        if alpn == "h2":
            self.start_h2()
        elif alpn == "http/1.1":
            self.start_http1()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        for handle in self.timers.values():
            handle.cancel()
        self.timers.clear()
        for handle in self.conn_timers:
            handle.cancel()
        self.conn_timers.clear()
        if self.flush_handle is not None:
            self.flush_handle.cancel()
        self.requests.clear()
        self.pending.clear()
        if self.service.connections.pop(self.conn.id, None) is not None:
            self.service.count(f"connections_closed_by_{self.close_cause}")
            self.service.on_close(self.conn)

    def data_received(self, data: bytes) -> None:
        if self.mode == "h2":
            self.receive_h2(data)
        elif self.mode == "http1":
            self.http1.feed(data)
        else:
            self.sniff(data)

    def sniff(self, data: bytes) -> None:
        """No ALPN: the HTTP/2 preface means HTTP/2, anything else HTTP/1.1 (or close)."""
        self.sniffed += data
        if PREFACE.startswith(self.sniffed[: len(PREFACE)]) and len(self.sniffed) < len(PREFACE):
            return
        buffered, self.sniffed = self.sniffed, b""
        if buffered.startswith(PREFACE):
            self.start_h2()
            self.receive_h2(buffered)
        elif self.service.http1_allowed():
            self.start_http1()
            self.http1.feed(buffered)
        else:
            self.service.count("connections_not_h2")
            self.abort()

    # -- HTTP/2 -------------------------------------------------------------------------

    def start_h2(self) -> None:
        self.mode = "h2"
        self.limit = self.advertised_limit = self.service.initial_max_streams(self.conn)
        values = {
            h2.settings.SettingCodes.HEADER_TABLE_SIZE: int(self.knobs["header_table_size"]),
            h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: int(self.knobs["initial_window_size"]),
            h2.settings.SettingCodes.MAX_FRAME_SIZE: 16384,
        }
        self.h2.local_settings = h2.settings.Settings(
            client=False, initial_values={**values, _MCS: self.limit}
        )
        self.h2.initiate_connection()
        # From here on the stream limit is ours to enforce (see the module docstring).
        self.h2.local_settings = h2.settings.Settings(client=False, initial_values=values)
        self.unacked.append(None)
        if not self.knobs["withhold_window_updates"]:
            self.h2.increment_flow_control_window(1 << 24)
        goaway_after_s = float(self.knobs["goaway_after_s"] or 0)
        if goaway_after_s:
            self.later(goaway_after_s, self._planned_goaway)
        max_age_s = float(self.knobs.get("max_connection_age_s") or 0)
        if max_age_s:
            self.later(max_age_s, self._aged_out)
        idle_s = float(self.knobs["idle_timeout_s"] or 0)
        if idle_s:
            self.later(idle_s, self._check_idle, idle_s)
        for step in self.knobs["max_concurrent_streams_schedule"] or ():
            if "after_s" in step:
                self.later(float(step["after_s"]), self.set_max_streams, int(step["value"]))
        self.flush()

    def _planned_goaway(self) -> None:
        self.service.count("planned_goaways")
        self.goaway(
            int(self.knobs["goaway_error_code"]),
            self.service.goaway_debug("Shutdown"),
            last_stream_mode=str(self.knobs["goaway_last_stream_mode"]),
            graceful=bool(self.knobs["goaway_graceful"]),
        )

    def _check_idle(self, idle_s: float) -> None:
        # One timer per connection, re-armed from the last stream, not one per request.
        if self.closed or self.goaway_sent:
            return
        quiet_s = time.monotonic() - self.last_stream_at
        if not self.open_streams and quiet_s >= idle_s:
            self.service.count("idle_timeouts")
            self.goaway(0, self.service.goaway_debug("IdleTimeout"))
            return
        delay = max(0.05, idle_s - quiet_s)
        self.later(delay, self._check_idle, idle_s)

    def _aged_out(self) -> None:
        self.service.count("connections_aged_out")
        self.goaway(0, b"max_age")

    def receive_h2(self, data: bytes) -> None:
        self.service.count("bytes_in", len(data))
        self.bytes_in += len(data)
        reset = self.knobs["reset_connection"]
        if reset and reset.get("after_bytes") and self.bytes_in >= int(reset["after_bytes"]):
            self.service.count("planned_resets")
            self.abort(rst=reset.get("mode", "fin") == "rst")
            return
        self.h2.manual_ping_ack = bool(
            self.knobs["ping_drop_rate"] or self.knobs["ping_ack_delay_ms"]
        )
        try:
            events = self.h2.receive_data(data)
        except h2.exceptions.ProtocolError as exc:
            # h2 has queued its GOAWAY: send it, then close.
            self.service.count("protocol_errors")
            logger.info(
                "%s connection %d: client protocol error: %s",
                self.service.name,
                self.conn.id,
                exc,
                extra={"action": "sim_protocol_error"},
            )
            self.flush()
            self._close()
            return
        for event in events:
            self.dispatch(event)
            if self.closed:
                return
        self.flush()

    def dispatch(self, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.RequestReceived):
            self.on_request(event)
        elif isinstance(event, h2.events.DataReceived):
            self.pings_without_data = 0
            if event.flow_controlled_length and not self.knobs["withhold_window_updates"]:
                self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            req = self.requests.get(event.stream_id)
            if req is not None:
                req.body += event.data
                if event.stream_ended is not None:
                    self.complete(event.stream_id)
        elif isinstance(event, h2.events.StreamEnded):
            self.complete(event.stream_id)
        elif isinstance(event, h2.events.StreamReset):
            self.forget(event.stream_id)
            self.service.count("client_resets")
        elif isinstance(event, h2.events.WindowUpdated | h2.events.RemoteSettingsChanged):
            if self.pending:
                self.send_pending()
        elif isinstance(event, h2.events.SettingsAcknowledged):
            value = self.unacked.popleft() if self.unacked else None
            if value is not None:
                self.limit = value
        elif isinstance(event, h2.events.PingReceived):
            self.on_ping(event.ping_data)
        elif isinstance(event, h2.events.PriorityUpdated):
            self.service.count("priority_frames")
        elif isinstance(event, h2.events.ConnectionTerminated):
            self.service.count("goaways_received")
            self.close_soon(0)

    def on_ping(self, opaque: bytes) -> None:
        self.service.count("pings")
        self.pings_without_data += 1
        limit = int(self.knobs["max_pings_without_data"] or 0)
        if limit and self.pings_without_data > limit:
            self.service.count("too_many_pings")
            self.goaway(int(h2.errors.ErrorCodes.ENHANCE_YOUR_CALM), b"too_many_pings")
            return
        if not self.h2.manual_ping_ack:
            return  # h2 has acknowledged it
        if self.service.chance("ping_drop_rate"):
            self.service.count("ping_acks_dropped")
            return
        delay_s = float(self.knobs["ping_ack_delay_ms"] or 0) / 1000
        if delay_s:
            self.later(delay_s, self._ping_ack, opaque)
        else:
            self._ping_ack(opaque)

    def _ping_ack(self, opaque: bytes) -> None:
        if not self.closed:
            self.out += self.h2.data_to_send()
            self.out += PingFrame(0, opaque_data=opaque, flags=["ACK"]).serialize()
            self.flush_soon()

    def on_request(self, event: h2.events.RequestReceived) -> None:
        stream_id = event.stream_id
        self.last_stream_at = time.monotonic()
        self.pings_without_data = 0
        self.highest_stream_id = max(self.highest_stream_id, stream_id)
        if stream_id > self.last_stream_id:
            # Opened after our GOAWAY: ignored (RFC 9113 section 6.8).
            self.service.count("streams_after_goaway")
            self.ignored_streams.add(stream_id)
            return
        if len(self.open_streams) >= self.limit:
            self.service.count("limit_violations")
            logger.info(
                "%s connection %d: stream %d exceeds MAX_CONCURRENT_STREAMS %d",
                self.service.name,
                self.conn.id,
                stream_id,
                self.limit,
                extra={"action": "sim_limit_violation"},
            )
            if self.knobs["on_excess_streams"] == "refuse":
                self.h2.reset_stream(stream_id, h2.errors.ErrorCodes.REFUSED_STREAM)
                self.h2.retire(stream_id)
                return
            self.goaway(
                int(self.knobs["excess_streams_error_code"]),
                EXCESS_STREAMS_DEBUG,
                graceful=False,
                last_stream_id=self.highest_stream_id,
            )
            return
        self.conn.streams_seen += 1
        self.service.count("streams")
        self.open_streams.add(stream_id)
        n_open = len(self.open_streams)
        if n_open > self.conn.max_open_seen:
            self.conn.max_open_seen = n_open
            if n_open > self.service.max_open_seen:
                self.service.max_open_seen = n_open
        self.requests[stream_id] = Request(self.conn, stream_id, event.headers)
        if event.stream_ended is not None:
            self.complete(stream_id)

    def forget(self, stream_id: int) -> None:
        self.h2.retire(stream_id)
        self.requests.pop(stream_id, None)
        self.pending.pop(stream_id, None)
        self.stalled_since.pop(stream_id, None)
        self.open_streams.discard(stream_id)
        handle = self.timers.pop(stream_id, None)
        if handle is not None:
            handle.cancel()
        self.maybe_finish_goaway()

    def complete(self, stream_id: int) -> None:
        req = self.requests.pop(stream_id, None)
        if req is None:
            return
        self.service.connection_faults(self.conn, stream_id)
        if self.closed or stream_id > self.last_stream_id:
            return  # not processed: the client retries it
        reply = self.service.handle(req)
        if reply.blackhole:
            self.service.count("blackholed")
            return
        if reply.delay_s > 0:
            self.timers[stream_id] = asyncio.get_running_loop().call_later(
                reply.delay_s, self._answer_later, stream_id, reply
            )
            return
        self.answer(stream_id, reply)

    def _answer_later(self, stream_id: int, reply: Reply) -> None:
        self.timers.pop(stream_id, None)
        if not self.closed:
            self.answer(stream_id, reply)
            self.flush_soon()

    def answer(self, stream_id: int, reply: Reply) -> None:
        if self.mode == "http1":
            self.http1.answer(reply)
            return
        if stream_id not in self.open_streams:
            return
        if reply.accepted is not None:
            self.service.record_accepted(reply.accepted)
        try:
            if reply.reset_code is not None:
                self.h2.reset_stream(stream_id, reply.reset_code)
                self.open_streams.discard(stream_id)
                self.h2.retire(stream_id)
            else:
                headers = [(b":status", str(reply.status).encode()), *reply.headers]
                if reply.abort_after_headers:
                    self.h2.send_headers(stream_id, headers)
                    self.flush()
                    self.abort()
                    return
                if not reply.body:
                    self.h2.send_headers(stream_id, headers, end_stream=True)
                    self.open_streams.discard(stream_id)
                    self.h2.retire(stream_id)
                else:
                    self.h2.send_headers(stream_id, headers)
                    self.pending[stream_id] = reply.body
                    self.send_pending()
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
            self.forget(stream_id)
        if reply.goaway_after:
            self.goaway(0, b'{"reason":"Shutdown"}')
        self.maybe_finish_goaway()

    def send_pending(self) -> None:
        split = int(self.knobs["split_body_frames"] or 0)
        for stream_id in list(self.pending):
            body = self.pending[stream_id]
            try:
                while body:
                    window = min(
                        self.h2.local_flow_control_window(stream_id),
                        self.h2.max_outbound_frame_size,
                    )
                    if split:
                        window = min(window, split)
                    if window <= 0:
                        break
                    chunk, body = body[:window], body[window:]
                    self.h2.send_data(stream_id, chunk, end_stream=not body)
            except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
                self.forget(stream_id)
                continue
            if body:
                self.pending[stream_id] = body
                if stream_id not in self.stalled_since:
                    self.stalled_since[stream_id] = time.monotonic()
                    self.service.count("window_stalls")
            else:
                del self.pending[stream_id]
                started = self.stalled_since.pop(stream_id, None)
                if started is not None:
                    self.service.count("window_stall_ms", int((time.monotonic() - started) * 1000))
                self.open_streams.discard(stream_id)

    # -- commands -----------------------------------------------------------------------

    def flush(self) -> None:
        if self.mode == "h2":
            data = self.h2.data_to_send()
            if data:
                self.out += data
        if self.out and self.transport is not None and not self.closed:
            self.service.count("bytes_out", len(self.out))
            self.transport.write(bytes(self.out))
        self.out.clear()

    def flush_soon(self) -> None:
        """Coalesce the answers of one loop turn into one write."""
        if self.flush_handle is None:
            self.flush_handle = asyncio.get_running_loop().call_soon(self._flush_now)

    def _flush_now(self) -> None:
        self.flush_handle = None
        self.flush()

    def set_max_streams(self, value: int) -> None:
        """Advertise a new ``MAX_CONCURRENT_STREAMS``; it binds once the client acknowledges."""
        if self.closed or self.mode != "h2":
            return
        self.advertised_limit = value
        self.unacked.append(value)
        self.out += self.h2.data_to_send()
        self.out += SettingsFrame(0, settings={_MCS: value}).serialize()
        self.service.count("settings_sent")
        self.flush_soon()

    def goaway(
        self,
        error_code: int = 0,
        debug: bytes = b"",
        last_stream_id: int | None = None,
        *,
        last_stream_mode: str = "exact",
        graceful: bool = True,
    ) -> None:
        """Send GOAWAY. Graceful: answer streams up to ``last_stream_id``, then close."""
        if self.goaway_sent or self.closed or self.mode != "h2":
            return
        if last_stream_id is None:
            last_stream_id = self.highest_stream_id
            if last_stream_mode == "lower" and self.open_streams:
                last_stream_id = max(0, min(self.open_streams) - 2)
        self.goaway_sent = True
        self.goaway_graceful = graceful
        self.last_stream_id = last_stream_id
        self.service.count("goaways_sent")
        logger.debug(
            "%s connection %d: GOAWAY error %d last_stream_id %d %r",
            self.service.name,
            self.conn.id,
            error_code,
            last_stream_id,
            debug,
            extra={"action": "sim_goaway"},
        )
        for stream_id in [s for s in self.open_streams if s > last_stream_id]:
            self.forget(stream_id)
        self.out += self.h2.data_to_send()
        self.out += GoAwayFrame(
            0, last_stream_id=last_stream_id, error_code=error_code, additional_data=debug
        ).serialize()
        self.flush_soon()
        if not graceful:
            self.close_soon(0.05)
        else:
            self.close_soon(float(self.knobs["goaway_grace_s"]))
            self.maybe_finish_goaway()

    def maybe_finish_goaway(self) -> None:
        if self.goaway_sent and self.goaway_graceful and not self.open_streams:
            self.close_soon(0.01)

    def later(self, delay_s: float, callback: Callable[..., None], *args: Any) -> None:
        """A connection-scoped timer, cancelled when the connection goes."""
        if len(self.conn_timers) > 64:
            now = asyncio.get_running_loop().time()
            self.conn_timers = [h for h in self.conn_timers if h.when() > now and not h.cancelled()]
        self.conn_timers.append(asyncio.get_running_loop().call_later(delay_s, callback, *args))

    def close_soon(self, delay_s: float) -> None:
        if self.transport is None or self.closed:
            return
        self.later(delay_s, self._close)

    def _close(self) -> None:
        if self.transport is not None and not self.closed:
            self.close_cause = "server"
            self.flush()
            self.transport.close()

    def abort(self, *, rst: bool = False) -> None:
        """Close abruptly, without GOAWAY; ``rst`` sends a TCP reset (SO_LINGER 0)."""
        if self.transport is None or self.closed:
            return
        self.close_cause = "reset"
        self.service.count("connections_reset")
        if rst:
            sock = self.transport.get_extra_info("socket")
            if sock is not None:
                try:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                except OSError:
                    pass
        self.transport.abort()

    # -- HTTP/1.1 -----------------------------------------------------------------------

    def start_http1(self) -> None:
        if not self.service.http1_allowed():
            self.service.count("connections_not_h2")
            self.abort()
            return
        self.mode = "http1"
        self.http1 = Http1Handler(self)


class Http1Handler:
    """A minimal HTTP/1.1 server (content-length bodies, keep-alive, one request at a time)."""

    def __init__(self, protocol: H2ServerProtocol) -> None:
        self.protocol = protocol
        self.buffer = bytearray()
        self.busy = False
        self.keep_alive = True
        self.stream_id = 1
        self.continued = False  # 100 Continue sent for the request being received

    def feed(self, data: bytes) -> None:
        self.buffer += data
        self.next_request()

    def next_request(self) -> None:
        while not self.busy and not self.protocol.closed:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buffer) > 65536:
                    self.protocol.abort()
                return
            head = bytes(self.buffer[:end]).split(b"\r\n")
            try:
                method, target, version = head[0].split(b" ", 2)
                fields = [line.split(b":", 1) for line in head[1:]]
                headers = [(k.strip().lower(), v.strip()) for k, v in fields]
                length = int(dict(headers).get(b"content-length", b"0"))
            except ValueError:
                self.protocol.abort()
                return
            if len(self.buffer) < end + 4 + length:
                expect = dict(headers).get(b"expect", b"").lower()
                if expect == b"100-continue" and not self.continued:
                    self.continued = True  # the client waits for this before its body
                    self.protocol.out += b"HTTP/1.1 100 Continue\r\n\r\n"
                    self.protocol.flush()
                return
            body = bytes(self.buffer[end + 4 : end + 4 + length])
            del self.buffer[: end + 4 + length]
            self.continued = False
            connection = dict(headers).get(b"connection", b"").lower()
            self.keep_alive = version == b"HTTP/1.1" and connection != b"close"
            authority = dict(headers).get(b"host", b"")
            pseudo = [
                (b":method", method),
                (b":scheme", b"https"),
                (b":path", target),
                (b":authority", authority),
            ]
            conn = self.protocol.conn
            conn.streams_seen += 1
            self.protocol.service.count("streams")
            request = Request(conn, self.stream_id, pseudo + headers, bytearray(body))
            self.stream_id += 2
            self.busy = True
            self.protocol.service.connection_faults(conn, request.stream_id)
            if self.protocol.closed:
                return
            reply = self.protocol.service.handle(request)
            if reply.blackhole:
                self.protocol.service.count("blackholed")
                return  # the connection stays stalled, like a black-holed stream
            if reply.delay_s > 0:
                self.protocol.timers[request.stream_id] = asyncio.get_running_loop().call_later(
                    reply.delay_s, self.protocol._answer_later, request.stream_id, reply
                )
                return
            self.answer(reply)

    def answer(self, reply: Reply) -> None:
        if reply.accepted is not None:
            self.protocol.service.record_accepted(reply.accepted)
        if reply.reset_code is not None or reply.abort_after_headers:
            self.protocol.abort()
            return
        lines = [f"HTTP/1.1 {reply.status} {_PHRASES.get(reply.status, 'Status')}".encode()]
        lines += [k + b": " + v for k, v in reply.headers]
        lines.append(b"content-length: " + str(len(reply.body)).encode())
        if not self.keep_alive:
            lines.append(b"connection: close")
        self.protocol.out += b"\r\n".join(lines) + b"\r\n\r\n" + reply.body
        self.protocol.flush()
        self.busy = False
        if not self.keep_alive:
            self.protocol.close_soon(0)
            return
        self.next_request()


_PHRASES = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    410: "Gone",
    413: "Payload Too Large",
    429: "Too Many Requests",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


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
