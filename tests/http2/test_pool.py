"""Pool tests over real TLS on loopback: nghttpd for interop, a scripted h2 server for faults."""

from __future__ import annotations

import asyncio
import gc
import logging
import ssl
import time
from collections.abc import AsyncIterator

import h2.errors
import pytest

from pushgres.exceptions import (
    ConfigError,
    ConnectError,
    ConnectionLost,
    ConnectTimeout,
    PoolClosed,
    RequestTimeout,
    StreamRefused,
    StreamReset,
)
from pushgres.http2.codecs import CODECS
from pushgres.http2.pool import Http2Pool, PoolSettings, PoolState, Response, Stragglers
from pushgres.http2.tls import make_ssl_context

from .servers import (
    Certs,
    FaultServer,
    Request,
    ServerConnection,
    echo,
    exhaust_stream_ids,
    free_port,
    server_ssl_context,
)

pytestmark = pytest.mark.timeout(30)


@pytest.fixture(autouse=True)
async def no_loop_errors(caplog: pytest.LogCaptureFixture) -> AsyncIterator[None]:
    """Fail the test if the loop's exception handler fired or a pool task logged an error."""
    loop = asyncio.get_running_loop()
    errors: list[dict[str, object]] = []
    loop.set_exception_handler(lambda _, context: errors.append(context))
    yield
    await asyncio.sleep(0.01)  # let closing transports report
    gc.collect()  # "exception was never retrieved" is reported when a future is collected
    loop.set_exception_handler(None)
    # The test server's side of a refused TLS handshake is expected noise.
    assert not [e for e in errors if not isinstance(e.get("protocol"), ServerConnection)]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def headers(port: int, path: bytes = b"/3/device/abc") -> list[tuple[bytes, bytes]]:
    return [
        (b":method", b"POST"),
        (b":scheme", b"https"),
        (b":authority", f"localhost:{port}".encode()),
        (b":path", path),
        (b"content-type", b"application/json"),
        (b"apns-id", b"00000000-0000-0000-0000-000000000001"),
    ]


_CODEC = ["fast"]


@pytest.fixture(autouse=True, params=sorted(CODECS))
def codec(request: pytest.FixtureRequest) -> str:
    """Every pool test runs once per HTTP/2 codec."""
    _CODEC[0] = request.param
    return _CODEC[0]


def make_pool(port: int, context: ssl.SSLContext, **settings: object) -> Http2Pool:
    settings.setdefault("codec", _CODEC[0])
    return Http2Pool(
        "test",
        "127.0.0.1",
        port,
        server_hostname="localhost",
        authority=f"localhost:{port}",
        ssl_context=context,
        settings=PoolSettings(**settings),  # type: ignore[arg-type]
    )


# -- nghttpd interop ----------------------------------------------------------------------


async def test_nghttpd_echo_many_concurrent(nghttpd_port: int, client_ssl: ssl.SSLContext) -> None:
    async with make_pool(
        nghttpd_port, client_ssl, max_connections=2, max_streams_per_connection=100
    ) as pool:
        assert pool.capacity() == 2  # nothing seen yet: one stream per unopened connection
        bodies = [f'{{"n":{i}}}'.encode() for i in range(2000)]
        responses = await asyncio.gather(
            *(pool.request(headers(nghttpd_port), body, timeout_s=10) for body in bodies)
        )
        assert [r.status for r in responses] == [200] * len(bodies)
        assert [r.body for r in responses] == bodies
        assert pool.stats()["connections"] == 2
        assert pool.capacity() == 200
        assert pool.in_flight() == 0
    assert pool.state is PoolState.CLOSED


async def test_nghttpd_large_body_and_404(nghttpd_port: int, client_ssl: ssl.SSLContext) -> None:
    async with make_pool(nghttpd_port, client_ssl) as pool:
        big = b"z" * 300_000  # larger than the default windows: flow control both ways
        response = await pool.request(headers(nghttpd_port), big, timeout_s=10)
        assert response.status == 200 and response.body == big
        get = [(b":method", b"GET"), *headers(nghttpd_port, b"/missing")[1:4]]
        response = await pool.request(get, b"", timeout_s=10)
        assert response.status == 404


async def test_nghttpd_same_responses_through_every_codec(
    nghttpd_port: int, client_ssl: ssl.SSLContext, codec: str
) -> None:
    """Differential: one mixed batch through each codec gives identical responses."""
    if codec != min(CODECS):
        pytest.skip("runs every codec itself, once")
    get = [(b":method", b"GET"), *headers(nghttpd_port, b"/missing")[1:4]]
    requests: list[tuple[list[tuple[bytes, bytes]], bytes]] = []
    for i in range(300):
        if i % 50 == 7:
            requests.append((get, b""))
        else:
            requests.append((headers(nghttpd_port), b"x" * (i * 997 % 70_000)))
    seen = {}
    for name in sorted(CODECS):
        async with make_pool(nghttpd_port, client_ssl, codec=name) as pool:
            results = await pool.send_batch(requests, timeout_s=20)
        seen[name] = [
            (r.status, r.body) if isinstance(r, Response) else type(r).__name__ for r in results
        ]
    first, *others = seen.values()
    assert all(other == first for other in others)
    assert {status for status, _ in first} == {200, 404}


# -- fault cases against the scripted server ---------------------------------------------


async def test_goaway_mid_batch_retries_unprocessed(
    certs: Certs, client_ssl: ssl.SSLContext
) -> None:
    held: list[Request] = []

    def handler(request: Request) -> None:
        if request.conn is not server.connections[0]:
            echo(request)
            return
        held.append(request)
        if len(held) == 20:
            last = held[9].stream_id
            request.conn.goaway(last)
            for item in held[:10]:
                echo(item)

    async with (
        FaultServer(server_ssl_context(certs), handler=handler) as server,
        make_pool(server.port, client_ssl, max_connections=1) as pool,
    ):
        bodies = [str(i).encode() for i in range(20)]
        responses = await asyncio.gather(
            *(pool.request(headers(server.port), b, timeout_s=5) for b in bodies)
        )
        assert [r.body for r in responses] == bodies
        first = {r.connection_id for r in responses[:10]}
        second = {r.connection_id for r in responses[10:]}
        assert len(first) == 1 and len(second) == 1 and first != second
        stats = pool.stats()
        assert stats["goaways"] == 1 and stats["refused"] == 10
        assert stats["opened"] == 2 and stats["closed"] == 1 and stats["connections"] == 1


async def test_abrupt_reset_fails_in_flight_then_recovers(
    certs: Certs, client_ssl: ssl.SSLContext
) -> None:
    def handler(request: Request) -> None:
        if request.conn is server.connections[0]:
            if len(server.received) == 5:
                request.conn.abort()
            return
        echo(request)

    async with (
        FaultServer(server_ssl_context(certs), handler=handler) as server,
        make_pool(server.port, client_ssl, max_connections=1) as pool,
    ):
        results = await asyncio.gather(
            *(pool.request(headers(server.port), b"x", timeout_s=5) for _ in range(5)),
            return_exceptions=True,
        )
        assert all(isinstance(r, ConnectionLost) for r in results)
        response = await pool.request(headers(server.port), b"again", timeout_s=5)
        assert response.body == b"again"
        assert pool.stats()["opened"] == 2


async def test_blackholed_stream_times_out_and_frees_its_slot(
    certs: Certs, client_ssl: ssl.SSLContext
) -> None:
    def handler(request: Request) -> None:
        if request.path != b"/blackhole":
            echo(request)

    async with (
        FaultServer(server_ssl_context(certs), handler=handler, max_concurrent_streams=1) as server,
        make_pool(server.port, client_ssl, max_connections=1) as pool,
    ):
        started = time.monotonic()
        with pytest.raises(RequestTimeout):
            await pool.request(headers(server.port, b"/blackhole"), b"x", timeout_s=0.3)
        assert 0.25 < time.monotonic() - started < 2
        assert pool.in_flight() == 0
        # MAX_CONCURRENT_STREAMS is 1: this only works if the slot was freed.
        response = await pool.request(headers(server.port), b"ok", timeout_s=2)
        assert response.body == b"ok"
        await asyncio.sleep(0.05)
        conn = server.connections[0]
        assert conn.resets == [(1, int(h2.errors.ErrorCodes.CANCEL))]
        assert pool.stats()["timeouts"] == 1 and pool.stats()["connections"] == 1


async def test_connection_growth_respects_stream_limits(
    certs: Certs, client_ssl: ssl.SSLContext
) -> None:
    def handler(request: Request) -> None:
        request.conn.respond_later(0.1, request.stream_id, 200, request.body)

    async with (
        FaultServer(server_ssl_context(certs), handler=handler, max_concurrent_streams=2) as server,
        make_pool(server.port, client_ssl, max_connections=3) as pool,
    ):
        assert pool.capacity() == 3
        responses = await asyncio.gather(
            *(pool.request(headers(server.port), b"%d" % i, timeout_s=5) for i in range(20))
        )
        assert [r.body for r in responses] == [b"%d" % i for i in range(20)]
        assert len(server.connections) == 3
        assert max(c.max_open_seen for c in server.connections) <= 2
        assert pool.capacity() == 6
        assert pool.stats()["connections"] == 3


async def test_limit_of_one_then_raised(certs: Certs, client_ssl: ssl.SSLContext) -> None:
    """APNs token connections: one stream until the first success, then more."""

    def handler(request: Request) -> None:
        request.conn.respond_later(0.05, request.stream_id, 200, request.body)
        if len(server.received) == 1:
            request.conn.set_max_concurrent_streams(50)

    async with (
        FaultServer(server_ssl_context(certs), handler=handler, max_concurrent_streams=1) as server,
        make_pool(server.port, client_ssl, max_connections=1) as pool,
    ):
        await asyncio.gather(
            *(pool.request(headers(server.port), b"x", timeout_s=5) for _ in range(30))
        )
        assert len(server.connections) == 1
        assert 1 < server.connections[0].max_open_seen <= 50
        assert pool.capacity() == 50


async def test_refused_stream_is_retried_and_reset_is_raised(
    certs: Certs, client_ssl: ssl.SSLContext
) -> None:
    def handler(request: Request) -> None:
        if (
            request.path == b"/refuse-once" and len(server.received) == 1
        ) or request.path == b"/refuse-always":
            request.conn.reset(request.stream_id, h2.errors.ErrorCodes.REFUSED_STREAM)
        elif request.path == b"/reset":
            request.conn.reset(request.stream_id, h2.errors.ErrorCodes.INTERNAL_ERROR)
        else:
            echo(request)

    async with (
        FaultServer(server_ssl_context(certs), handler=handler) as server,
        make_pool(server.port, client_ssl, unprocessed_retries=2) as pool,
    ):
        response = await pool.request(headers(server.port, b"/refuse-once"), b"1", timeout_s=5)
        assert response.body == b"1"
        with pytest.raises(StreamReset) as info:
            await pool.request(headers(server.port, b"/reset"), b"2", timeout_s=5)
        assert info.value.error_code == int(h2.errors.ErrorCodes.INTERNAL_ERROR)
        with pytest.raises(StreamRefused):
            await pool.request(headers(server.port, b"/refuse-always"), b"3", timeout_s=5)
        stats = pool.stats()
        assert stats["refused"] == 1 + 3 and stats["resets"] == 1


async def test_unanswered_ping_closes_the_connection(
    certs: Certs, client_ssl: ssl.SSLContext
) -> None:
    def handler(request: Request) -> None:
        request.conn.frozen = True  # stops reading: never answers, never acks PINGs

    async with (
        FaultServer(server_ssl_context(certs), handler=handler) as server,
        make_pool(server.port, client_ssl, idle_ping_after_s=0.2, ping_timeout_s=0.2) as pool,
    ):
        started = time.monotonic()
        with pytest.raises(ConnectionLost):
            await pool.request(headers(server.port), b"x", timeout_s=5)
        assert time.monotonic() - started < 2
        assert pool.stats()["connections"] == 0


async def test_idle_ping_keeps_a_healthy_connection(
    certs: Certs, client_ssl: ssl.SSLContext
) -> None:
    async with (
        FaultServer(server_ssl_context(certs)) as server,
        make_pool(server.port, client_ssl, idle_ping_after_s=0.05, ping_timeout_s=0.5) as pool,
    ):
        first = await pool.request(headers(server.port), b"x", timeout_s=2)
        await asyncio.sleep(0.3)  # several PING round trips
        second = await pool.request(headers(server.port), b"y", timeout_s=2)
        assert first.connection_id == second.connection_id


async def test_max_age_and_retire_replace_connections(
    certs: Certs, client_ssl: ssl.SSLContext
) -> None:
    async with (
        FaultServer(server_ssl_context(certs)) as server,
        make_pool(server.port, client_ssl, max_connection_age_s=0.2) as pool,
    ):
        first = await pool.request(headers(server.port), b"x", timeout_s=2)
        await asyncio.sleep(0.4)
        assert pool.stats()["connections"] == 0
        second = await pool.request(headers(server.port), b"x", timeout_s=2)
        assert second.connection_id != first.connection_id
        async with make_pool(server.port, client_ssl) as pool:
            first = await pool.request(headers(server.port), b"x", timeout_s=2)
            pool.retire(first.connection_id)
            pool.retire(12345)  # unknown: ignored
            second = await pool.request(headers(server.port), b"x", timeout_s=2)
            assert second.connection_id != first.connection_id
            pool.retire_all()
            third = await pool.request(headers(server.port), b"x", timeout_s=2)
            assert third.connection_id not in (first.connection_id, second.connection_id)


async def test_exhausted_stream_ids_move_to_a_new_connection(
    certs: Certs, client_ssl: ssl.SSLContext
) -> None:
    async with (
        FaultServer(server_ssl_context(certs)) as server,
        make_pool(server.port, client_ssl, max_connections=1) as pool,
    ):
        first = await pool.request(headers(server.port), b"x", timeout_s=2)
        exhaust_stream_ids(pool._conns[first.connection_id].conn)
        second = await pool.request(headers(server.port), b"y", timeout_s=2)
        assert second.connection_id != first.connection_id
        assert pool.stats()["closed"] == 1 and pool.stats()["connections"] == 1


async def test_connect_failure_raises_connect_error_at_deadline(client_ssl: ssl.SSLContext) -> None:
    port = free_port()  # nothing listens here
    async with make_pool(port, client_ssl, reconnect_backoff_initial_s=0.05) as pool:
        started = time.monotonic()
        with pytest.raises(ConnectError):
            await pool.request(headers(port), b"x", timeout_s=0.5)
        assert 0.45 < time.monotonic() - started < 2
        assert pool.stats()["timeouts"] == 1


async def test_silent_server_is_a_connect_timeout(client_ssl: ssl.SSLContext) -> None:
    accepted: list[asyncio.StreamWriter] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)  # accepts TCP, never answers the TLS handshake

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with make_pool(
            port, client_ssl, connect_timeout_s=0.15, reconnect_backoff_initial_s=0.01
        ) as pool:
            with pytest.raises(ConnectTimeout):
                await pool.request(headers(port), b"x", timeout_s=0.6)
        assert len(accepted) >= 2  # retried after backoff within the deadline
    finally:
        for writer in accepted:
            writer.close()
        server.close()
        await server.wait_closed()


async def test_untrusted_certificate_and_missing_alpn(certs: Certs) -> None:
    system_store = make_ssl_context(ca_file=None)
    async with (
        FaultServer(server_ssl_context(certs)) as server,
        make_pool(server.port, system_store) as pool,
    ):
        with pytest.raises(ConnectError) as info:
            await pool.request(headers(server.port), b"x", timeout_s=0.5)
        assert "CERTIFICATE_VERIFY_FAILED" in repr(info.value.__cause__.__cause__)  # type: ignore[union-attr]
    async with (
        FaultServer(server_ssl_context(certs, alpn=())) as server,
        make_pool(server.port, make_ssl_context(ca_file=certs.ca_file)) as pool,
    ):
        with pytest.raises(ConnectError, match="did not negotiate h2"):
            await pool.request(headers(server.port), b"x", timeout_s=0.5)


async def test_graceful_close(certs: Certs, client_ssl: ssl.SSLContext) -> None:
    arrived = asyncio.Event()

    def handler(request: Request) -> None:
        arrived.set()
        request.conn.respond_later(0.2, request.stream_id, 200, request.body)

    async with FaultServer(
        server_ssl_context(certs), handler=handler, max_concurrent_streams=1
    ) as server:
        pool = make_pool(server.port, client_ssl, max_connections=1)
        with pytest.raises(PoolClosed):
            await pool.request(headers(server.port), b"x", timeout_s=1)
        await pool.start()
        in_flight = asyncio.ensure_future(pool.request(headers(server.port), b"a", timeout_s=5))
        await arrived.wait()
        waiting = asyncio.ensure_future(pool.request(headers(server.port), b"b", timeout_s=5))
        await asyncio.sleep(0.01)
        await pool.aclose()
        assert (await in_flight).body == b"a"
        with pytest.raises(PoolClosed):
            await waiting
        with pytest.raises(PoolClosed):
            await pool.request(headers(server.port), b"c", timeout_s=1)
        with pytest.raises(PoolClosed):
            await pool.start()
        assert pool.capacity() == 0
        await pool.aclose()  # idempotent


async def test_forced_close_after_drain_timeout(certs: Certs, client_ssl: ssl.SSLContext) -> None:
    arrived = asyncio.Event()

    def handler(request: Request) -> None:
        arrived.set()  # and never answers

    async with FaultServer(server_ssl_context(certs), handler=handler) as server:
        pool = make_pool(server.port, client_ssl)
        await pool.start()
        stuck = asyncio.ensure_future(pool.request(headers(server.port), b"a", timeout_s=10))
        await arrived.wait()
        await pool.aclose(timeout_s=0.1)
        with pytest.raises(ConnectionLost):
            await stuck
        assert not pool._tasks


async def test_every_connection_never_indexes_the_names_in_the_settings(
    certs: Certs, client_ssl: ssl.SSLContext
) -> None:
    names = frozenset({b":path", b"apns-id"})
    async with (
        FaultServer(server_ssl_context(certs), handler=echo) as server,
        make_pool(server.port, client_ssl, never_indexed=names) as pool,
    ):
        await pool.request(headers(server.port), b"x", timeout_s=5)
    async with (
        FaultServer(server_ssl_context(certs), handler=echo) as default_server,
        make_pool(default_server.port, client_ssl) as pool,
    ):
        await pool.request(headers(default_server.port), b"x", timeout_s=5)
    assert [r.never_indexed for r in server.received] == [names]
    assert [r.never_indexed for r in default_server.received] == [{b":path"}]


def test_settings_validation() -> None:
    with pytest.raises(ConfigError, match="max_connections"):
        PoolSettings(max_connections=0)
    with pytest.raises(ConfigError, match="max_connection_age_s"):
        PoolSettings(max_connection_age_s=0)
    with pytest.raises(ConfigError, match="unprocessed_retries"):
        PoolSettings(unprocessed_retries=-1)
    with pytest.raises(ConfigError, match="never_indexed"):
        PoolSettings(never_indexed=frozenset({b"X-Id"}))
    assert PoolSettings().never_indexed == frozenset({b":path"})


def test_client_certificate_loading(certs: Certs) -> None:
    context = make_ssl_context(
        ca_file=certs.ca_file,
        client_cert_pem=certs.client_cert_pem,
        client_key_pem=certs.client_key_pem,
    )
    assert context.minimum_version >= ssl.TLSVersion.TLSv1_2
    assert context.verify_mode is ssl.CERT_REQUIRED and context.check_hostname
    make_ssl_context(ca_file=None, client_cert_pem=certs.client_cert_pem + certs.client_key_pem)
    with pytest.raises(ConfigError):
        make_ssl_context(ca_file=None, client_cert_pem=b"not a pem", client_key_pem=b"nope")
    with pytest.raises(ConfigError):
        make_ssl_context(ca_file=None, client_key_pem=certs.client_key_pem)
    with pytest.raises(ConfigError):
        make_ssl_context(ca_file="/nonexistent/ca.pem")


async def test_send_batch_reports_every_outcome_in_order(
    certs: Certs, client_ssl: ssl.SSLContext
) -> None:
    def handler(request: Request) -> None:
        if request.path == b"/refuse-always":
            request.conn.reset(request.stream_id, h2.errors.ErrorCodes.REFUSED_STREAM)
        elif request.path == b"/reset":
            request.conn.reset(request.stream_id, h2.errors.ErrorCodes.INTERNAL_ERROR)
        elif request.path == b"/slow":
            request.conn.respond_later(0.1, request.stream_id, 200, request.body)
        elif request.path != b"/blackhole":
            echo(request)

    async with (
        FaultServer(server_ssl_context(certs), handler=handler, max_concurrent_streams=3) as server,
        make_pool(server.port, client_ssl, max_connections=1, unprocessed_retries=1) as pool,
    ):
        paths = [b"/ok", b"/reset", b"/slow", b"/refuse-always", b"/blackhole"]
        paths += [b"/ok"] * 20
        requests = [(headers(server.port, p), b"%d" % i) for i, p in enumerate(paths)]
        started = time.monotonic()
        results = await pool.send_batch(requests, timeout_s=0.6)
        assert 0.5 < time.monotonic() - started < 3  # the blackholed stream holds the batch
        assert isinstance(results[1], StreamReset)
        assert isinstance(results[3], StreamRefused)
        assert isinstance(results[4], RequestTimeout)
        ok = [r for i, r in enumerate(results) if i not in (1, 3, 4)]
        assert all(isinstance(r, Response) and r.status == 200 for r in ok)
        assert [r.body for r in ok if isinstance(r, Response)] == [
            b"%d" % i for i in range(len(paths)) if i not in (1, 3, 4)
        ]
        # 25 requests through 3 slots: the limit held and every slot came back.
        assert server.connections[0].max_open_seen <= 3
        assert pool.in_flight() == 0
        stats = pool.stats()
        assert stats["refused"] == 2 and stats["resets"] == 1 and stats["timeouts"] == 1


async def test_send_batch_abort_resets_unfinished_streams(
    certs: Certs, client_ssl: ssl.SSLContext
) -> None:
    def handler(request: Request) -> None:
        if request.path != b"/blackhole":
            echo(request)

    async with (
        FaultServer(server_ssl_context(certs), handler=handler, max_concurrent_streams=2) as server,
        make_pool(server.port, client_ssl, max_connections=1) as pool,
    ):
        abort: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        paths = [b"/ok", b"/blackhole", b"/blackhole", b"/ok"]
        requests = [(headers(server.port, p), b"x") for p in paths]
        task = asyncio.ensure_future(pool.send_batch(requests, timeout_s=30, abort=abort))
        await asyncio.sleep(0.2)
        assert not task.done()
        abort.set_result(None)
        results = await asyncio.wait_for(task, 2)
        assert isinstance(results[0], Response)
        # Both slots are held by the blackholed streams: the last request never left.
        assert [type(r) for r in results[1:]] == [PoolClosed] * 3
        assert pool.in_flight() == 0
        await asyncio.sleep(0.05)
        assert sorted(s for s, _ in server.connections[0].resets) == [3, 5]


async def test_send_batch_on_a_closed_pool(certs: Certs, client_ssl: ssl.SSLContext) -> None:
    pool = make_pool(1, client_ssl)
    results = await pool.send_batch([(headers(1), b"x")] * 2, timeout_s=1)
    assert [type(r) for r in results] == [PoolClosed, PoolClosed]


async def test_stragglers_do_not_hold_back_the_batch(
    certs: Certs, client_ssl: ssl.SSLContext
) -> None:
    def handler(request: Request) -> None:
        if request.path == b"/late":
            request.conn.respond_later(0.4, request.stream_id, 200, b"late")
        elif request.path != b"/blackhole":
            echo(request)

    async with (
        FaultServer(server_ssl_context(certs), handler=handler) as server,
        make_pool(server.port, client_ssl, max_connections=1) as pool,
    ):
        paths = [b"/ok"] * 100
        paths[10], paths[50], paths[90] = b"/blackhole", b"/late", b"/blackhole"
        requests = [(headers(server.port, p), b"%d" % i) for i, p in enumerate(paths)]
        late: dict[int, list[object]] = {}
        arrived = asyncio.Event()

        def on_late(index: int, result: object) -> None:
            late.setdefault(index, []).append(result)
            if len(late) == 3:
                arrived.set()

        started = time.monotonic()
        results = await pool.send_batch(
            requests, timeout_s=1.5, stragglers=Stragglers(on_late=on_late, min_wait_s=0.05)
        )
        assert time.monotonic() - started < 0.35  # neither the late nor the dead ones waited
        assert [i for i, r in enumerate(results) if r is None] == [10, 50, 90]
        assert all(isinstance(r, Response) and r.status == 200 for r in results if r is not None)
        assert pool.in_flight() == 3  # the stragglers keep their streams
        await asyncio.wait_for(arrived.wait(), 3)
        assert time.monotonic() - started >= 1.4  # the dead ones ran to the batch deadline
        assert isinstance(late[50][0], Response) and late[50][0].body == b"late"
        assert isinstance(late[10][0], RequestTimeout) and isinstance(late[90][0], RequestTimeout)
        await asyncio.sleep(0.1)
        assert all(len(v) == 1 for v in late.values())  # each exactly once
        assert pool.in_flight() == 0 and pool.stats()["timeouts"] == 2
        assert sorted(s for s, _ in server.connections[0].resets) == [21, 181]


async def test_detached_stragglers_end_when_sending_is_aborted(
    certs: Certs, client_ssl: ssl.SSLContext
) -> None:
    def handler(request: Request) -> None:
        if request.path != b"/blackhole":
            echo(request)

    async with (
        FaultServer(server_ssl_context(certs), handler=handler) as server,
        make_pool(server.port, client_ssl, max_connections=1) as pool,
    ):
        abort: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        paths = [b"/ok"] * 30 + [b"/blackhole"]
        requests = [(headers(server.port, p), b"x") for p in paths]
        late: list[tuple[int, object]] = []
        results = await pool.send_batch(
            requests,
            timeout_s=30,
            abort=abort,
            stragglers=Stragglers(on_late=lambda i, r: late.append((i, r)), min_wait_s=0.01),
        )
        assert results[-1] is None and late == []
        abort.set_result(None)
        await asyncio.sleep(0.01)  # the abort's callbacks run soon, not at once
        assert len(late) == 1 and late[0][0] == 30 and isinstance(late[0][1], PoolClosed)
        assert pool.in_flight() == 0
        # Without a straggler policy, a batch never returns early.
        results2 = await pool.send_batch(requests[:2], timeout_s=5)
        assert all(isinstance(r, Response) for r in results2)
