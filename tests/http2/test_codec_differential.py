"""Differential: the same traffic through every codec gives the same events and outcomes.

Three levels, each comparing the ``h2`` codec with the ``fast`` one:

* in memory, Hypothesis drives random scripts (requests of every body size, responses split
  into many DATA frames and held back by flow control, resets, SETTINGS changes, PINGs both
  ways, cancels, GOAWAY) against an ``h2`` server; after every step both clients must report
  the same events and state, and both servers must have seen the same requests;
* through :class:`~pushgres.http2.pool.Http2Pool` over real TLS against the APNs and FCM
  simulators: the same tokens give the same statuses and reasons;
* through the pool against ``nghttpd --echo-upload``: the same bodies come back, with the same
  statuses and headers.
"""

from __future__ import annotations

import json
import ssl
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.settings
import pytest
from hpack import NeverIndexedHeaderTuple
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pushgres.exceptions import LocalProtocolError, TransportError
from pushgres.http2.codecs import CODECS
from pushgres.http2.pool import Http2Pool, PoolSettings, Response
from pushgres.http2.streams import ClientConnection
from pushgres.http2.tls import make_ssl_context
from pushgres.simulator import Simulators, devkit

from ..simulator.h2client import apns_headers, fcm_headers, oauth_token, provider_token
from .test_connection import HEADERS, NEVER_INDEXED, Server, exchange

SC = h2.settings.SettingCodes
EC = h2.errors.ErrorCodes
CODEC_NAMES = sorted(CODECS)


def test_both_codecs_are_registered() -> None:
    assert {"fast", "h2"} <= set(CODECS)


# -- in memory: random scripts against an h2 server ----------------------------------------


class QueueingServer(Server):
    """An ``h2`` server that queues response bodies and sends them as its windows allow."""

    def __init__(
        self, *, max_concurrent_streams: int = 1000, initial_window_size: int = 65_535
    ) -> None:
        super().__init__(
            max_concurrent_streams=max_concurrent_streams, initial_window_size=initial_window_size
        )
        self.requests: dict[int, tuple[list[tuple[bytes, bytes, bool]], bytes]] = {}
        self.resets: list[tuple[int, int]] = []
        self.open: list[int] = []  # streams that may still be answered or reset, in order
        self.queued: dict[int, bytes] = {}  # response bodies waiting for window
        self.chunks: dict[int, int] = {}  # DATA frame size each response is sent in (0: any)
        self.last_stream_id: int | None = None
        self.holding = False  # a slow reader: received DATA is not acknowledged yet
        self.unacked: list[tuple[int, int]] = []

    def receive(self, data: bytes) -> None:
        for event in self.h2.receive_data(data):
            if isinstance(event, h2.events.RequestReceived):
                fields = [
                    (bytes(n), bytes(v), isinstance(h, NeverIndexedHeaderTuple))
                    for h in event.headers
                    for n, v in [h]
                ]
                self.requests[event.stream_id] = (fields, b"")
                self.open.append(event.stream_id)
            elif isinstance(event, h2.events.DataReceived):
                fields, body = self.requests[event.stream_id]
                self.requests[event.stream_id] = (fields, body + event.data)
                self.unacked.append((event.flow_controlled_length, event.stream_id))
                if not self.holding:
                    self.release()
            elif isinstance(event, h2.events.StreamEnded):
                self.ended.append(event.stream_id)
            elif isinstance(event, h2.events.StreamReset):
                self.resets.append((event.stream_id, int(event.error_code)))
                self._forget(event.stream_id)
            elif isinstance(event, h2.events.WindowUpdated | h2.events.RemoteSettingsChanged):
                self.pump()

    def release(self) -> None:
        """Acknowledge every DATA frame received so far."""
        for length, stream_id in self.unacked:
            self.h2.acknowledge_received_data(length, stream_id)
        self.unacked.clear()

    def _forget(self, stream_id: int) -> None:
        if stream_id in self.open:
            self.open.remove(stream_id)
        self.queued.pop(stream_id, None)

    def respond(self, stream_id: int, status: int, body: bytes = b"", *, chunk: int = 0) -> None:
        self.open.remove(stream_id)
        fields = [(b":status", str(status).encode()), (b"apns-id", b"id-%d" % stream_id)]
        self.h2.send_headers(stream_id, fields, end_stream=not body)
        if body:
            self.queued[stream_id] = body
            self.chunks[stream_id] = chunk
            self.pump()

    def pump(self) -> None:
        """Send queued bodies, oldest stream first, as far as flow control allows."""
        for stream_id in list(self.queued):
            body = self.queued[stream_id]
            while body:
                window = self.h2.local_flow_control_window(stream_id)
                size = min(window, len(body), self.h2.max_outbound_frame_size)
                size = min(size, self.chunks[stream_id] or size)
                if size <= 0:
                    break
                self.h2.send_data(stream_id, body[:size], end_stream=size == len(body))
                body = body[size:]
            if body:
                self.queued[stream_id] = body
            else:
                del self.queued[stream_id]

    def goaway(self, last_stream_id: int) -> None:
        self.h2.close_connection(additional_data=b"bye", last_stream_id=last_stream_id)
        # h2 refuses to send after its own GOAWAY; a real server finishes streams <= last.
        self.h2.state_machine.state = h2.connection.ConnectionState.SERVER_OPEN
        for stream_id in [s for s in self.open if s > last_stream_id]:
            self._forget(stream_id)
        self.last_stream_id = last_stream_id

    def view(self) -> tuple[Any, ...]:
        """Everything the server observed, for comparison across codecs."""
        return (self.requests, self.ended, self.resets, self.open, sorted(self.queued))


@dataclass
class Side:
    """One codec and its server, driven by the same script as the other side."""

    codec: str
    client: ClientConnection
    server: QueueingServer
    log: list[Any] = field(default_factory=list)

    def settle(self) -> None:
        # Responses finishing in the same step may complete in either order across codecs
        # (connection credit comes back in different-sized steps); the set must match.
        self.log.append(sorted(map(repr, exchange(self.client, self.server))))
        client = self.client
        self.log.append(
            (
                client.is_ready,
                client.open_streams,
                client.available_streams,
                client.max_concurrent_streams,
                client.is_closing,
                client.next_stream_id_exhausted,
            )
        )
        self.log.append(self.server.view())


def _new_side(codec: str, client_kwargs: dict[str, int], server_kwargs: dict[str, int]) -> Side:
    client = CODECS[codec](never_indexed=NEVER_INDEXED, **client_kwargs)
    server = QueueingServer(**server_kwargs)
    client.initiate()
    server.start()
    side = Side(codec, client, server)
    side.settle()
    return side


BODY_SIZES = [0, 2, 1_000, 16_384, 16_385, 70_000]
RESPONSE_SIZES = [0, 27, 5_000, 40_000, 100_000]

request_op = st.tuples(
    st.just("request"), st.sampled_from(BODY_SIZES), st.sampled_from([0, 0, 0, 20_000])
)
respond_op = st.tuples(
    st.just("respond"),
    st.integers(0, 50),
    st.sampled_from([200, 400, 410, 500]),
    st.sampled_from(RESPONSE_SIZES),
    st.sampled_from([0, 1_000, 7_000]),
)
ops = st.one_of(
    request_op,
    respond_op,
    respond_op,
    st.tuples(
        st.just("reset"),
        st.integers(0, 50),
        st.sampled_from([EC.REFUSED_STREAM, EC.INTERNAL_ERROR, EC.CANCEL]),
    ),
    st.tuples(
        st.just("settings"),
        st.sampled_from([None, 1, 2, 5, 1000]),
        st.sampled_from([None, 0, 4_000, 65_535, 1 << 20]),
    ),
    st.tuples(st.just("server_ping"), st.binary(min_size=8, max_size=8)),
    st.tuples(st.just("client_ping"), st.binary(min_size=8, max_size=8)),
    st.tuples(st.just("cancel"), st.integers(0, 50)),
    st.tuples(st.just("hold")),
    st.tuples(st.just("release")),
)
# Requests first, then anything; GOAWAY, which ends the interesting part, comes last if at all.
scripts = st.tuples(
    st.lists(request_op, min_size=1, max_size=5),
    st.lists(ops, max_size=14),
    st.lists(st.tuples(st.just("goaway"), st.integers(0, 50)), max_size=1),
    st.lists(ops, max_size=4),
).map(lambda parts: [op for part in parts for op in part])


def _apply(side: Side, op: tuple[Any, ...]) -> None:
    client, server = side.client, side.server
    kind = op[0]
    if kind == "request":
        _, size, extra = op
        headers = list(HEADERS)
        if extra:
            headers.append((b"x-large", b"v" * extra))  # more than one frame: CONTINUATION
        body = bytes(range(256)) * (size // 256) + b"t" * (size % 256)
        try:
            side.log.append(("opened", client.start_request(headers, body)))
        except LocalProtocolError:
            side.log.append(("refused locally", client.available_streams))
    elif kind == "respond" and server.open:
        _, pick, status, size, chunk = op
        stream_id = server.open[pick % len(server.open)]
        server.respond(stream_id, status, b"r" * size, chunk=chunk)
    elif kind == "reset" and server.open:
        _, pick, code = op
        stream_id = server.open[pick % len(server.open)]
        server._forget(stream_id)
        server.h2.reset_stream(stream_id, code)
    elif kind == "settings":
        _, streams, window = op
        changes: dict[h2.settings.SettingCodes | int, int] = {}
        if streams is not None:
            changes[SC.MAX_CONCURRENT_STREAMS] = streams
        if window is not None:
            changes[SC.INITIAL_WINDOW_SIZE] = window
        server.h2.update_settings(changes)
    elif kind == "server_ping":
        server.h2.ping(op[1])
    elif kind == "client_ping" and not client.is_closing:
        client.ping(op[1])
    elif kind == "cancel":
        candidates = sorted(server.open)
        if candidates:
            client.cancel(candidates[op[1] % len(candidates)])
    elif kind == "hold":
        server.holding = True
    elif kind == "release":
        server.holding = False
        server.release()
    elif kind == "goaway" and server.last_stream_id is None:
        candidates = [0, *sorted(server.requests)]
        server.goaway(candidates[op[1] % len(candidates)])


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    scripts,
    st.sampled_from([65_535, 1 << 24]),
    st.sampled_from([65_535, 1 << 20]),
    st.sampled_from([3, 100]),
    st.sampled_from([5_000, 65_535]),
)
def test_random_scripts_give_identical_events(
    script: list[tuple[Any, ...]],
    connection_window: int,
    initial_window: int,
    server_streams: int,
    server_window: int,
) -> None:
    client_kwargs = {
        "connection_window_bytes": connection_window,
        "initial_window_bytes": initial_window,
        "max_streams": 50,
    }
    server_kwargs = {"max_concurrent_streams": server_streams, "initial_window_size": server_window}
    sides = [_new_side(codec, client_kwargs, server_kwargs) for codec in CODEC_NAMES]
    for step, op in enumerate(script):
        for side in sides:
            _apply(side, op)
            side.settle()
        baseline = sides[0].log
        for side in sides[1:]:
            assert side.log == baseline, f"{side.codec} differs after step {step}: {op}"
    # Once the server reads again with open windows, every stream finishes: nothing is stuck
    # behind flow control on either side.
    for side in sides:
        if side.client.is_closing:
            continue
        server = side.server
        server.holding = False
        server.release()
        server.h2.update_settings({SC.INITIAL_WINDOW_SIZE: 1 << 20})
        side.settle()
        assert sorted(server.open) == sorted(set(server.open) & set(server.ended))
        for stream_id in list(server.open):
            server.respond(stream_id, 200, b"z" * 70_000)
        side.settle()
        assert not server.queued and side.client.open_streams == 0
    assert all(side.log == sides[0].log for side in sides)


def test_a_script_exercising_every_operation_is_identical() -> None:
    """A fixed script, so one run always covers blocking, CONTINUATION and GOAWAY."""
    script: list[tuple[Any, ...]] = [
        ("hold",),  # the server reads but gives no credit back
        ("request", 70_000, 20_000),  # stream 1: 5,000 bytes go, the rest waits
        ("request", 2, 0),  # 3
        ("request", 16_385, 0),  # 5: blocked too
        ("settings", None, 65_535),  # 1 moves on until the connection window is empty
        ("settings", 2, 1_000),  # 3 open, limit 2; the stream windows go negative
        ("request", 1_000, 0),  # refused locally
        ("respond", 0, 413, 27, 0),  # stream 1 answered before its body: the client resets it
        ("release",),  # credit comes back: stream 5 finishes
        ("settings", None, 1 << 20),
        ("respond", 0, 200, 100_000, 7_000),  # 3, in 7,000-byte frames
        ("server_ping", b"abcdefgh"),
        ("client_ping", b"12345678"),
        ("request", 0, 0),  # 7
        ("reset", 0, EC.REFUSED_STREAM),  # 5
        ("request", 0, 0),  # 9
        ("cancel", 0),  # 7
        ("request", 0, 0),  # 11
        ("goaway", 5),  # last_stream_id 9: 11 was not processed
        ("respond", 0, 500, 5_000, 1_000),  # 9
        ("request", 0, 0),  # refused locally: closing
    ]
    sides = [
        _new_side(codec, {"connection_window_bytes": 65_535}, {"initial_window_size": 5_000})
        for codec in CODEC_NAMES
    ]
    for op in script:
        for side in sides:
            _apply(side, op)
            side.settle()
    logs = [side.log for side in sides]
    assert all(log == logs[0] for log in logs)
    text = repr(logs[0])
    for expected in (
        "ResponseReceived(stream_id=1, status=413",
        "ResponseReceived(stream_id=3, status=200",
        "ResponseReceived(stream_id=9, status=500",
        "StreamRefused(stream_id=5)",
        "PingAcknowledged(data=b'12345678')",
        "GoAwayReceived(last_stream_id=9, error_code=0, debug_data=b'bye', unprocessed=(11,))",
    ):
        assert expected in text
    server = sides[0].server
    assert (1, 8) in server.resets and (7, 8) in server.resets  # CANCEL: early answer, cancel
    assert len(server.requests[5][1]) == 16_385 and len(server.requests[1][1]) < 70_000
    assert logs[0].count(("refused locally", 0)) == 2


@pytest.mark.parametrize("frame", ["settings", "ping"])
def test_frames_after_an_early_goaway(frame: str) -> None:
    """RFC 9113 6.8: after GOAWAY the connection still carries SETTINGS and PING.

    Also when the GOAWAY arrives before our first stream (h2's state machine is then IDLE).
    """
    sides = [_new_side(codec, {}, {}) for codec in CODEC_NAMES]
    for side in sides:
        side.server.goaway(0)
        if frame == "settings":
            side.server.h2.update_settings({SC.MAX_CONCURRENT_STREAMS: 7})
        else:
            side.server.h2.ping(b"pingpong")
        side.settle()
    assert all(side.log == sides[0].log for side in sides)


# -- through the pool, over TLS, against the simulators and nghttpd -------------------------


@pytest.fixture(scope="module")
def dev_setup(tmp_path_factory: pytest.TempPathFactory) -> devkit.DevSetup:
    return devkit.make_dev_setup(tmp_path_factory.mktemp("devkit"))


def _pool(codec: str, port: int, authority: str, context: ssl.SSLContext) -> Http2Pool:
    return Http2Pool(
        f"diff-{codec}",
        "127.0.0.1",
        port,
        server_hostname="localhost",
        authority=authority,
        ssl_context=context,
        settings=PoolSettings(codec=codec, max_connections=2, max_streams_per_connection=50),
    )


def _outcome(result: Response | TransportError) -> tuple[Any, ...]:
    """What must match across codecs: status, header names and the reason, or the error."""
    if isinstance(result, TransportError):
        return (type(result).__name__,)
    reason: Any = None
    if result.body:
        data = json.loads(result.body)
        error = data.get("error")
        if isinstance(error, dict):
            codes = [d.get("errorCode") for d in error.get("details", []) if "errorCode" in d]
            reason = (error.get("status"), tuple(codes))
        else:
            reason = data.get("reason") or sorted(data)
    return (result.status, tuple(sorted(result.headers)), reason)


APNS_KINDS = [
    "ok",
    "Unregistered",
    "ExpiredToken",
    "BadDeviceToken",
    "DeviceTokenNotForTopic",
    "TooManyRequests",
    "InternalServerError",
    "ServiceUnavailable",
    "flaky",
    "refused",
    "reset",
]


async def _same_for_every_codec(run: Callable[[str, int], Awaitable[list[Any]]]) -> list[Any]:
    """Send the traffic once per codec (``run(codec, index)``); all outcomes must be equal."""
    runs = {codec: await run(codec, index) for index, codec in enumerate(CODEC_NAMES)}
    baseline = runs[CODEC_NAMES[0]]
    for codec in CODEC_NAMES[1:]:
        assert runs[codec] == baseline, codec
    return baseline


@pytest.mark.timeout(60)
async def test_pool_outcomes_against_the_apns_simulator(dev_setup: devkit.DevSetup) -> None:
    auth = provider_token(dev_setup)
    big = json.dumps({"aps": {"alert": "x" * 3_900}}).encode()

    async def run(codec: str, index: int) -> list[Any]:
        # Fresh token numbers per codec: "flaky" and "refused" remember what they did.
        tokens = [
            devkit.apns_token(kind, 1_000 * index + n)
            for n, kind in enumerate(APNS_KINDS * 3 + ["ok"] * 150)
        ]
        requests = [
            (
                apns_headers(token, auth, apns_push_type="alert", apns_id=str(uuid.UUID(int=n))),
                big if n % 7 == 0 else b'{"aps":{"alert":"hi"}}',
            )
            for n, token in enumerate(tokens)
        ]
        async with _pool(codec, sims.apns_production_port, "api.push.apple.com", context) as pool:
            # Token connections take one stream until a request with a valid token succeeded.
            first = await pool.send_batch(requests[:1], timeout_s=10)
            rest = await pool.send_batch(requests[1:], timeout_s=20)
        return [_outcome(r) for r in first + rest]

    async with Simulators(dev_setup) as sims:
        context = make_ssl_context(ca_file=sims.ca_file)
        baseline = await _same_for_every_codec(run)
    statuses = {outcome[0] for outcome in baseline}
    assert {200, 400, 410, 429, 500, 503, "StreamReset"} <= statuses  # the traffic is mixed


FCM_KINDS = [k for k in devkit.FCM_KINDS if k != "blackhole"]


@pytest.mark.timeout(60)
async def test_pool_outcomes_against_the_fcm_simulator(dev_setup: devkit.DevSetup) -> None:
    async def run(codec: str, index: int) -> list[Any]:
        tokens = [
            devkit.fcm_token(kind, 1_000 * index + n)
            for n, kind in enumerate(FCM_KINDS * 3 + ["ok"] * 60)
        ]
        requests = [
            (
                fcm_headers("demo-project", access),
                json.dumps({"message": {"token": token, "data": {"n": str(n)}}}).encode(),
            )
            for n, token in enumerate(tokens)
        ]
        async with _pool(codec, sims.fcm_port, "fcm.googleapis.com", context) as pool:
            results = await pool.send_batch(requests, timeout_s=20)
        return [_outcome(r) for r in results]

    async with Simulators(dev_setup) as sims:
        access = await oauth_token(sims)
        context = make_ssl_context(ca_file=sims.ca_file)
        baseline = await _same_for_every_codec(run)
    assert {200, 400, 403, 404, 429, 500, 503} <= {outcome[0] for outcome in baseline}


@pytest.mark.timeout(60)
async def test_pool_exchanges_against_nghttpd(
    nghttpd_port: int, client_ssl: ssl.SSLContext
) -> None:
    authority = f"localhost:{nghttpd_port}"
    post = [
        (b":method", b"POST"),
        (b":scheme", b"https"),
        (b":authority", authority.encode()),
        (b":path", b"/echo"),
    ]
    sizes = [0, 1, 100, 16_383, 16_384, 16_385, 65_535, 65_536, 200_000]
    requests = [(post, bytes(range(256)) * (size // 256) + b"e" * (size % 256)) for size in sizes]
    requests.append(([*post, (b"x-large", b"h" * 40_000)], b"large header block"))
    requests.append(([(b":method", b"GET"), *post[1:3], (b":path", b"/missing")], b""))
    traffic = requests * 5

    async def run(codec: str, index: int) -> list[Any]:
        async with _pool(codec, nghttpd_port, authority, client_ssl) as pool:
            results = await pool.send_batch(traffic, timeout_s=20)
        outcomes = []
        for (_, body), result in zip(traffic, results, strict=True):
            assert isinstance(result, Response), (codec, result)
            headers = {k: v for k, v in result.headers.items() if k not in {b"date"}}
            echoed = result.body == body if result.status == 200 else len(result.body)
            outcomes.append((result.status, sorted(headers.items()), echoed))
        return outcomes

    baseline = await _same_for_every_codec(run)
    assert [o[0] for o in baseline[: len(requests)]] == [200] * (len(requests) - 1) + [404]
    assert all(o[2] is True for o in baseline if o[0] == 200)
