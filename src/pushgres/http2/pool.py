"""A per-origin pool of HTTP/2 connections: stream-credit capacity, draining, reconnects.

:class:`Http2Pool` owns every connection to one provider endpoint and the background tasks
that keep them healthy. It opens connections lazily and grows while every READY connection
is saturated (up to ``max_connections``), never opens a stream before a connection's first
server SETTINGS, and never exceeds a connection's current ``MAX_CONCURRENT_STREAMS``
(RFC 9113 sections 5.1.2, 6.5.2). Requests that wait for a stream slot queue on futures
woken when slots free up, never by polling.

Failure handling: requests the peer certainly did not process (RFC 9113 section 8.7:
REFUSED_STREAM, above a GOAWAY's ``last_stream_id``) are resent on another connection
within the same deadline; a GOAWAY drains its connection; an unanswered PING closes it;
connect failures back off exponentially with full jitter, shared by the whole pool.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import itertools
import logging
import math
import random
import ssl
import time
from collections import deque
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Final, Protocol, overload

from ..exceptions import (
    ConfigError,
    ConnectError,
    ConnectTimeout,
    LocalProtocolError,
    PoolClosed,
    RequestRejected,
    RequestTimeout,
    StreamRefused,
    StreamReset,
    TransportError,
)
from .codecs import CODECS, DEFAULT_CODEC, new_connection
from .events import GoAwayReceived, ResponseReceived
from .lifecycle import ConnState
from .streams import DEFAULT_NEVER_INDEXED, never_indexed_names
from .transport import Http2Protocol

__all__ = [
    "DEFAULT_CLOSE_TIMEOUT_S",
    "DEFAULT_CONNECT_TIMEOUT_S",
    "DEFAULT_IDLE_PING_AFTER_S",
    "DEFAULT_MAX_CONNECTIONS",
    "DEFAULT_MAX_STREAMS_PER_CONNECTION",
    "DEFAULT_PING_TIMEOUT_S",
    "DEFAULT_RECONNECT_BACKOFF_INITIAL_S",
    "DEFAULT_RECONNECT_BACKOFF_MAX_S",
    "DEFAULT_UNPROCESSED_RETRIES",
    "Answered",
    "BatchResult",
    "Http2Pool",
    "PoolSettings",
    "PoolState",
    "Response",
    "Stragglers",
]

logger = logging.getLogger(__name__)

DEFAULT_MAX_CONNECTIONS: Final = 4
DEFAULT_MAX_STREAMS_PER_CONNECTION: Final = 500
DEFAULT_CONNECT_TIMEOUT_S: Final = 10.0
DEFAULT_IDLE_PING_AFTER_S: Final = 60.0
DEFAULT_PING_TIMEOUT_S: Final = 10.0
DEFAULT_RECONNECT_BACKOFF_INITIAL_S: Final = 0.5
DEFAULT_RECONNECT_BACKOFF_MAX_S: Final = 30.0
DEFAULT_UNPROCESSED_RETRIES: Final = 3
DEFAULT_CLOSE_TIMEOUT_S: Final = 10.0
_CLOSE_WAIT_S: Final = 1.0  # after a forced close: how long to wait for sockets to go away


@dataclass(frozen=True, slots=True, kw_only=True)
class PoolSettings:
    """How an :class:`Http2Pool` sizes, probes and replaces its connections."""

    max_connections: int = DEFAULT_MAX_CONNECTIONS
    max_streams_per_connection: int = DEFAULT_MAX_STREAMS_PER_CONNECTION
    connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S
    idle_ping_after_s: float = DEFAULT_IDLE_PING_AFTER_S
    ping_timeout_s: float = DEFAULT_PING_TIMEOUT_S
    max_connection_age_s: float | None = None
    reconnect_backoff_initial_s: float = DEFAULT_RECONNECT_BACKOFF_INITIAL_S
    reconnect_backoff_max_s: float = DEFAULT_RECONNECT_BACKOFF_MAX_S
    unprocessed_retries: int = DEFAULT_UNPROCESSED_RETRIES
    codec: str = DEFAULT_CODEC
    # Request header names every connection sends as HPACK never-indexed literals (RFC 7541
    # 6.2.3): the pool's user names the ones whose values change per request.
    never_indexed: frozenset[bytes] = DEFAULT_NEVER_INDEXED

    def __post_init__(self) -> None:
        if self.codec not in CODECS:
            known = ", ".join(sorted(CODECS))
            raise ConfigError(f"pool.codec must be one of {known}, got {self.codec!r}")
        try:
            object.__setattr__(self, "never_indexed", never_indexed_names(self.never_indexed))
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"pool.never_indexed: {exc}") from None
        positive = {
            "max_connections": self.max_connections,
            "max_streams_per_connection": self.max_streams_per_connection,
            "connect_timeout_s": self.connect_timeout_s,
            "idle_ping_after_s": self.idle_ping_after_s,
            "ping_timeout_s": self.ping_timeout_s,
            "reconnect_backoff_initial_s": self.reconnect_backoff_initial_s,
            "reconnect_backoff_max_s": self.reconnect_backoff_max_s,
        }
        for key, value in positive.items():
            if not value > 0:
                raise ConfigError(f"pool.{key} must be > 0, got {value}")
        if self.max_connection_age_s is not None and not self.max_connection_age_s > 0:
            raise ConfigError(
                f"pool.max_connection_age_s must be > 0, got {self.max_connection_age_s}"
            )
        if self.unprocessed_retries < 0:
            raise ConfigError(
                f"pool.unprocessed_retries must be >= 0, got {self.unprocessed_retries}"
            )


@dataclass(slots=True)  # one per request: a plain record, cheaper than frozen
class Response:
    """A complete HTTP/2 response; ``connection_id`` names the connection that carried it."""

    status: int
    headers: dict[bytes, bytes]
    body: bytes
    connection_id: int


class Observe(Protocol):
    """Something that records values (a histogram), called on the hot path."""

    def observe(self, value: float) -> None: ...


BatchResult = Response | TransportError
"""What :meth:`Http2Pool.send_batch` reports per request: the response or why there is none."""

LateResult = Callable[[int, BatchResult], None]
"""Called once per straggler, with its index in the batch, when its result comes."""
Answered = Callable[[int, "Response"], None]
"""Called as each response of a batch arrives, with the request's index in the batch."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Stragglers:
    """When :meth:`Http2Pool.send_batch` may return before its slowest requests are answered.

    Once every request is on a stream and at most ``max_fraction`` of the batch (at least one
    request) is still unanswered, the batch waits ``wait_factor`` times as long as it took to
    get there (at least ``min_wait_s``), then returns with ``None`` in the stragglers' places. Their streams
    stay open under the same deadline, and ``on_late`` receives each one's result — response,
    timeout, reset, abort — exactly once. One unanswered stream then never holds back the rest
    of its batch.
    """

    on_late: LateResult
    max_fraction: float = 0.1
    wait_factor: float = 0.5
    min_wait_s: float = 0.05


class _Batch:
    """Bookkeeping of one :meth:`Http2Pool.send_batch` call: results by index, open streams."""

    __slots__ = (
        "abort",
        "answered",
        "attempts",
        "avoid",
        "changed",
        "clock",
        "counters",
        "expiry",
        "late",
        "observe",
        "pending",
        "quorum",
        "quorum_at",
        "remaining",
        "results",
        "retries",
        "sent_at",
        "streams",
    )

    def __init__(
        self,
        pool: Http2Pool,
        size: int,
        stragglers: Stragglers | None,
        answered: Answered | None = None,
    ) -> None:
        self.answered = answered
        self.results: list[BatchResult | None] = [None] * size
        self.streams: list[tuple[Http2Protocol, int] | None] = [None] * size
        self.pending: deque[int] = deque(range(size))
        self.remaining = size
        self.attempts: dict[int, int] = {}
        self.avoid: dict[int, int] = {}  # index -> connection that refused it
        self.changed: asyncio.Future[None] | None = None
        self.counters = pool._counters
        self.retries = pool._settings.unprocessed_retries
        # Stragglers: ``quorum`` unanswered requests or fewer let the batch return early;
        # ``late`` is set once it has, and then receives every result still to come.
        self.quorum = max(1, int(size * stragglers.max_fraction)) if stragglers else -1
        self.quorum_at: float | None = None
        self.late: LateResult | None = None
        self.expiry: asyncio.TimerHandle | None = None
        self.abort: asyncio.Future[None] | None = None
        # Response times, when the pool records them: when each request's stream opened.
        self.observe = pool.response_times.observe if pool.response_times is not None else None
        self.sent_at: list[float] = [0.0] * size if self.observe is not None else []
        self.clock = asyncio.get_running_loop().time

    def wake(self, _: object = None) -> None:
        changed = self.changed
        if changed is not None and not changed.done():
            changed.set_result(None)

    def on_result(
        self, index: int, result: ResponseReceived | TransportError, conn: Http2Protocol
    ) -> None:
        """The :data:`~pushgres.http2.transport.ResultCallback` of every stream of the batch."""
        self.streams[index] = None
        if isinstance(result, ResponseReceived):
            response = Response(
                result.status, dict(result.headers), result.body, conn.connection_id
            )
            if self.observe is not None:
                self.observe(self.clock() - self.sent_at[index])
            if self.answered is not None:
                self.answered(index, response)
            if self.late is not None:
                self.settle(index, response)
                return
            # The hot path, inlined: one call per response is measurable at 30,000/s.
            self.results[index] = response
            self.remaining -= 1
            if not self.remaining or self.remaining == self.quorum:
                self.wake()
            return
        if isinstance(result, StreamRefused):
            self.counters["refused"] += 1
            attempts = self.attempts.get(index, 0) + 1
            if attempts <= self.retries and self.late is None:
                self.attempts[index] = attempts
                self.avoid[index] = conn.connection_id
                self.pending.append(index)
                self.wake()
                return
        elif isinstance(result, StreamReset):
            self.counters["resets"] += 1
        self.settle(index, result)

    def settle(self, index: int, result: BatchResult) -> None:
        self.remaining -= 1
        late = self.late
        if late is not None:
            if not self.remaining:
                self.finish_late()
            late(index, result)
            return
        self.results[index] = result
        if not self.remaining or self.remaining == self.quorum:
            self.wake()

    def detach(self, on_late: LateResult, deadline: float) -> None:
        """Return now; the stragglers' results go to ``on_late`` (see :class:`Stragglers`)."""
        self.late = on_late
        self.changed = None
        self.expiry = asyncio.get_running_loop().call_at(deadline, self.expire)
        if self.abort is not None:
            self.abort.add_done_callback(self.aborted)

    def expire(self) -> None:
        """The deadline of a detached batch: its stragglers time out (streams reset)."""
        self.expiry = None
        self.counters["timeouts"] += self.remaining
        self.give_up(RequestTimeout("no response before the batch deadline"))

    def aborted(self, _: object = None) -> None:
        self.give_up(PoolClosed("sending aborted"))

    def finish_late(self) -> None:
        if self.expiry is not None:
            self.expiry.cancel()
            self.expiry = None
        if self.abort is not None:
            self.abort.remove_done_callback(self.aborted)

    def fail_pending(self, error: TransportError) -> None:
        """Requests not yet on a stream end with ``error``."""
        while self.pending:
            self.settle(self.pending.popleft(), error)

    def give_up(self, error: TransportError) -> None:
        """Everything unfinished ends with ``error``; open streams are reset."""
        self.fail_pending(error)
        if self.late is not None:
            for index, entry in enumerate(self.streams):
                if entry is not None:
                    self.streams[index] = None
                    entry[0].cancel(entry[1])
                    self.settle(index, error)
            return
        self.cancel_streams()
        for index, result in enumerate(self.results):
            if result is None:
                self.settle(index, error)

    def cancel_streams(self) -> None:
        """Reset every stream of the batch still open (their callbacks are not called)."""
        if not any(self.streams):
            return
        for index, entry in enumerate(self.streams):
            if entry is not None:
                self.streams[index] = None
                conn, stream_id = entry
                conn.cancel(stream_id)


class PoolState(enum.Enum):
    """Lifecycle of an :class:`Http2Pool`."""

    UNOPENED = "unopened"
    OPENED = "opened"
    CLOSED = "closed"


class _Listener:
    """Forwards connection notifications to the pool without making them public API."""

    __slots__ = ("_pool",)

    def __init__(self, pool: Http2Pool) -> None:
        self._pool = pool

    def slots_freed(self, conn: Http2Protocol, count: int) -> None:
        self._pool._slots_freed(conn, count)

    def state_changed(self, conn: Http2Protocol) -> None:
        self._pool._state_changed(conn)

    def goaway_received(self, conn: Http2Protocol, event: GoAwayReceived) -> None:
        self._pool._goaway_received(conn, event)


class Http2Pool:
    """HTTP/2 connections to one origin, shared by every request to it.

    Parameters
    ----------
    name:
        Label for logs and metrics (for example ``<provider>:<app>``).
    host, port:
        Where to connect; resolved afresh for every new connection.
    server_hostname:
        TLS SNI and certificate name.
    authority:
        The ``:authority`` requests to this pool carry (informational; callers build headers).
    ssl_context:
        From :func:`pushgres.http2.tls.make_ssl_context` (ALPN ``h2``).
    settings:
        Sizing and timing; see :class:`PoolSettings`.
    """

    def __init__(
        self,
        name: str,
        host: str,
        port: int,
        *,
        server_hostname: str,
        authority: str,
        ssl_context: ssl.SSLContext | None,
        settings: PoolSettings | None = None,
    ) -> None:
        self.name = name
        self.host = host
        self.port = port
        self.server_hostname = server_hostname
        self.authority = authority
        self._ssl = ssl_context
        self._settings = settings if settings is not None else PoolSettings()
        self._state = PoolState.UNOPENED
        self._listener = _Listener(self)
        self._ids = itertools.count(1)
        self._conns: dict[int, Http2Protocol] = {}  # READY or DRAINING
        self._closing_conns: set[Http2Protocol] = set()
        self._empty = asyncio.Event()
        self._empty.set()
        self._connecting = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._tasks: set[asyncio.Task[None]] = set()
        self._watchers: dict[int, asyncio.Task[None]] = {}
        self._failures = 0
        self._next_connect_at = 0.0
        self._last_connect_error: ConnectError | None = None
        self._last_stream_limit: int | None = None
        self._counters = dict.fromkeys(
            (
                "opened",
                "closed",
                "goaways",
                "resets",
                "timeouts",
                "refused",
                "reconnects",
                "connect_failures",
            ),
            0,
        )
        self.response_times: Observe | None = None
        """Receives each response's time since its stream was opened, in seconds, if set."""

    # -- lifecycle ------------------------------------------------------------------------

    @property
    def state(self) -> PoolState:
        return self._state

    async def start(self) -> None:
        """Open the pool for requests (connections are opened on demand).

        Raises
        ------
        PoolClosed
            The pool was already closed; pools are not reusable.
        """
        if self._state is PoolState.CLOSED:
            raise PoolClosed(f"pool {self.name} is closed and cannot be reopened")
        self._state = PoolState.OPENED

    async def __aenter__(self) -> Http2Pool:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self, timeout_s: float = DEFAULT_CLOSE_TIMEOUT_S) -> None:
        """Stop taking requests, let in-flight streams finish for ``timeout_s``, then force.

        Waiting requests fail with :class:`PoolClosed`. Streams still in flight when the
        deadline passes (or when this coroutine is cancelled) fail with ``ConnectionLost``.
        """
        if self._state is PoolState.CLOSED:
            return
        was_opened = self._state is PoolState.OPENED
        self._state = PoolState.CLOSED
        self._wake_all()
        if not was_opened:
            return
        sockets = set(self._conns.values()) | self._closing_conns
        try:
            for conn in list(self._conns.values()):
                conn.drain()
            if self._conns:
                try:
                    async with asyncio.timeout(timeout_s):
                        await self._empty.wait()
                except TimeoutError:
                    logger.warning(
                        "pool drain timed out; closing connections with streams in flight",
                        extra={
                            "action": "pool_close",
                            "pool": self.name,
                            "in_flight": self.in_flight(),
                        },
                    )
        finally:
            # Runs on cancellation too: nothing may outlive the pool.
            sockets |= set(self._conns.values()) | self._closing_conns
            for conn in list(self._conns.values()):
                conn.abort("pool closed")
            tasks = list(self._tasks)
            for task in tasks:
                task.cancel()
            if tasks:
                await asyncio.wait(tasks)
            pending = [asyncio.ensure_future(conn.wait_closed()) for conn in sockets]
            if pending:
                _, still_open = await asyncio.wait(pending, timeout=_CLOSE_WAIT_S)
                for waiter in still_open:
                    waiter.cancel()
                for conn in sockets:
                    conn.abort("pool closed")

    # -- requests -------------------------------------------------------------------------

    async def request(
        self, headers: Sequence[tuple[bytes, bytes]], body: bytes, *, timeout_s: float
    ) -> Response:
        """Send one request and return its response (:meth:`send_batch` of one).

        Raises
        ------
        RequestTimeout, ConnectError, StreamRefused, StreamReset, ConnectionLost, PoolClosed
            As described for :meth:`send_batch`.
        """
        (result,) = await self.send_batch([(headers, body)], timeout_s=timeout_s)
        if isinstance(result, TransportError):
            raise result
        return result

    @overload
    async def send_batch(
        self,
        requests: Sequence[tuple[Sequence[tuple[bytes, bytes]], bytes]],
        *,
        timeout_s: float,
        abort: asyncio.Future[None] | None = None,
        stragglers: None = None,
        answered: Answered | None = None,
    ) -> list[BatchResult]: ...

    @overload
    async def send_batch(
        self,
        requests: Sequence[tuple[Sequence[tuple[bytes, bytes]], bytes]],
        *,
        timeout_s: float,
        abort: asyncio.Future[None] | None = None,
        stragglers: Stragglers,
        answered: Answered | None = None,
    ) -> list[BatchResult | None]: ...

    async def send_batch(
        self,
        requests: Sequence[tuple[Sequence[tuple[bytes, bytes]], bytes]],
        *,
        timeout_s: float,
        abort: asyncio.Future[None] | None = None,
        stragglers: Stragglers | None = None,
        answered: Answered | None = None,
    ) -> list[BatchResult] | list[BatchResult | None]:
        """Send every ``(headers, body)`` concurrently; return one result per request, in order.

        The batch is the unit of bookkeeping: one deadline (``timeout_s``, covering waiting
        for stream slots, connecting and the responses), one wake-up future, and a callback
        per stream instead of a task and a future per request. Requests fill the free slots
        of the least busy READY connections and wait, without polling, for slots to free up.

        Results are values, never raised:

        * :class:`Response` for every answered request, whatever its status;
        * :class:`RequestTimeout` when the deadline passed (the stream was reset with
          CANCEL), or the connect error when no connection could be opened meanwhile;
        * :class:`StreamRefused` when the peer refused it more than ``unprocessed_retries``
          times (refused requests are resent, on another connection when there is one);
        * :class:`StreamReset`, :class:`ConnectionLost`: the outcome is unknown;
        * :class:`RequestRejected` when the request cannot be encoded for this peer;
        * :class:`PoolClosed` for requests not yet sent when the pool closes, and for every
          unfinished request once ``abort`` is done (its stream is reset).

        With ``stragglers``, the call may return early with ``None`` in the places of a few
        unanswered requests, whose results then reach ``stragglers.on_late``. With
        ``answered``, each response is also handed over as it arrives (stragglers' too).
        """
        if self._state is not PoolState.OPENED:
            closed: list[BatchResult] = [PoolClosed(f"pool {self.name} is {self._state.value}")]
            return closed * len(requests)
        loop = asyncio.get_running_loop()
        started = loop.time()
        deadline = started + timeout_s
        batch = _Batch(self, len(requests), stragglers, answered)
        batch.abort = abort
        if abort is not None:
            abort.add_done_callback(batch.wake)
        waiter: asyncio.Future[None] | None = None
        queued = False  # whether ``waiter`` is among the pool's slot waiters
        detach_at = math.inf
        detach_timer: asyncio.TimerHandle | None = None
        try:
            async with asyncio.timeout_at(deadline):
                while batch.remaining:
                    if batch.pending and self._state is PoolState.OPENED:
                        self._fill(batch, requests)
                    if abort is not None and abort.done():
                        batch.give_up(PoolClosed(f"pool {self.name}: sending aborted"))
                        break
                    if self._state is not PoolState.OPENED:
                        batch.fail_pending(PoolClosed(f"pool {self.name} is closing"))
                        if not batch.remaining:
                            break
                    if stragglers is not None and not batch.pending:
                        now = loop.time()
                        if batch.quorum_at is None and batch.remaining <= batch.quorum:
                            batch.quorum_at = now
                            detach_at = now + max(
                                stragglers.min_wait_s, (now - started) * stragglers.wait_factor
                            )
                            detach_timer = loop.call_at(detach_at, batch.wake)
                        elif now >= detach_at:
                            batch.detach(stragglers.on_late, deadline)
                            break
                    waiter = loop.create_future()
                    batch.changed = waiter
                    queued = bool(batch.pending)
                    if queued:
                        self._waiters.append(waiter)  # woken when a stream slot frees up
                        self._maybe_grow()
                    await waiter
        except TimeoutError:
            self._counters["timeouts"] += batch.remaining
            error = self._last_connect_error
            if batch.pending and error is not None and not self._conns:
                connect_error = type(error)(f"pool {self.name}: {error}")
                connect_error.__cause__ = error
                batch.fail_pending(connect_error)
            batch.give_up(RequestTimeout(f"no response within {timeout_s}s (pool {self.name})"))
        finally:
            # Runs on cancellation too: no stream of this batch stays open, but for the
            # stragglers of a detached batch, which its deadline timer owns now.
            batch.changed = None
            if detach_timer is not None:
                detach_timer.cancel()
            if waiter is not None and queued:
                if waiter.done() and not waiter.cancelled() and batch.pending:
                    self._wake(1)  # we were handed a slot we will not use: pass it on
                waiter.cancel()
                try:
                    self._waiters.remove(waiter)
                except ValueError:
                    pass
            if batch.late is None:
                batch.cancel_streams()
            if abort is not None:
                abort.remove_done_callback(batch.wake)
        return batch.results  # every entry is set by now, but for detached stragglers

    def _fill(
        self, batch: _Batch, requests: Sequence[tuple[Sequence[tuple[bytes, bytes]], bytes]]
    ) -> None:
        """Open streams for the batch's pending requests on the least busy connections."""
        pending = batch.pending
        on_result = batch.on_result
        streams = batch.streams
        avoided = batch.avoid
        sent_at = batch.sent_at if batch.observe is not None else None
        now = batch.clock() if sent_at is not None else 0.0
        while pending:
            conn = self._pick(avoided.get(pending[0]) if avoided else None)
            if conn is None:
                return
            free = conn.available_streams
            while free > 0 and pending:
                index = pending.popleft()
                headers, body = requests[index]
                try:
                    stream_id = conn.submit(headers, body, on_result, index)
                except LocalProtocolError as exc:
                    if conn.available_streams <= 0:
                        pending.appendleft(index)
                        break  # the limit moved under us: pick again
                    batch.settle(index, RequestRejected(f"request not sent: {exc}"))
                    continue
                streams[index] = (conn, stream_id)
                if sent_at is not None:
                    sent_at[index] = now
                free -= 1

    def _pick(self, avoid: int | None) -> Http2Protocol | None:
        best: Http2Protocol | None = None
        best_free = 0
        fallback: Http2Protocol | None = None
        exhausted: list[Http2Protocol] = []
        for conn in self._conns.values():
            if conn.state is not ConnState.READY:
                continue
            free = conn.available_streams
            if free <= 0:
                if conn.conn.next_stream_id_exhausted:
                    exhausted.append(conn)
                continue
            if conn.connection_id == avoid:
                fallback = conn
            elif free > best_free:
                best, best_free = conn, free
        for conn in exhausted:  # after the loop: draining may remove it from _conns
            conn.drain()
        return best if best is not None else fallback

    # -- capacity and stats ---------------------------------------------------------------

    def capacity(self) -> int:
        """How many requests could be in flight at once right now.

        The stream limits of the READY connections, plus a conservative guess for each
        connection not yet opened: the limit last seen on this pool, else 1.
        """
        if self._state is PoolState.CLOSED:
            return 0
        ready = [c for c in self._conns.values() if c.state is ConnState.READY]
        guess = self._last_stream_limit or 1
        unopened = max(0, self._settings.max_connections - len(ready))
        return sum(c.stream_limit for c in ready) + unopened * guess

    def in_flight(self) -> int:
        """Requests currently waiting for a response on some connection."""
        return sum(c.in_flight for c in self._conns.values())

    def stream_limit(self) -> int:
        """The stream limits of the READY connections, summed."""
        return sum(c.stream_limit for c in self._conns.values() if c.state is ConnState.READY)

    def stats(self) -> dict[str, int]:
        """Gauges (connections, in_flight, stream_limit) and counters since the pool started:
        opened, closed, reconnects (opened after one closed), connect_failures, goaways, resets,
        timeouts, refused."""
        return {
            "connections": len(self._conns),
            "in_flight": self.in_flight(),
            "stream_limit": self.stream_limit(),
            **self._counters,
        }

    def problem(self) -> str | None:
        """Why no request could be sent now, or None: a READY connection, or one that closed
        while idle with no connect failing since."""
        if self._state is not PoolState.OPENED:
            return f"pool {self._state.value}"
        if any(c.state is ConnState.READY for c in self._conns.values()):
            return None
        if self._last_connect_error is not None:
            return f"cannot connect to {self.host}:{self.port}: {self._last_connect_error}"
        if not self._counters["opened"]:
            return "not connected yet"
        return None

    async def connect(self, timeout_s: float) -> str | None:
        """Open a first connection ahead of any request; :meth:`problem` after ``timeout_s``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while self._state is PoolState.OPENED and not any(
            c.state is ConnState.READY for c in self._conns.values()
        ):
            waiter = loop.create_future()
            self._waiters.append(waiter)
            self._maybe_grow()
            try:
                async with asyncio.timeout_at(deadline):
                    await waiter
            except TimeoutError:
                break
            finally:
                if waiter.done() and not waiter.cancelled():
                    self._wake(1)  # a slot handed to us is passed on
                waiter.cancel()
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)
        return self.problem()

    def retire(self, connection_id: int) -> None:
        """Stop opening streams on ``connection_id``; it closes once its streams finish.

        Used when the peer says the connection's credentials are wedged (an expired
        token that a new one cannot replace on this connection). Unknown ids are ignored.
        """
        conn = self._conns.get(connection_id)
        if conn is None or conn.state is not ConnState.READY:
            return
        logger.info(
            "retiring connection",
            extra={"action": "pool_retire", "pool": self.name, "connection_id": connection_id},
        )
        conn.drain()
        self._wake_all()

    def retire_all(self) -> None:
        """Retire every READY connection (for example after a credential change)."""
        for connection_id in list(self._conns):
            self.retire(connection_id)

    # -- connections ----------------------------------------------------------------------

    def _maybe_grow(self) -> None:
        if self._state is not PoolState.OPENED or self._connecting:
            return
        ready = sum(1 for c in self._conns.values() if c.state is ConnState.READY)
        if ready >= self._settings.max_connections:
            return
        self._connecting += 1
        self._spawn(self._connect(), "connect")

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            first = True
            while self._state is PoolState.OPENED and (first or self._waiters):
                first = False
                delay = self._next_connect_at - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)  # reconnect backoff, not polling
                    if not self._waiters:
                        return
                try:
                    conn = await self._open()
                except ConnectError as exc:
                    self._connect_failed(exc)
                    continue
                self._connect_succeeded(conn)
                return
        finally:
            self._connecting -= 1

    async def _open(self) -> Http2Protocol:
        loop = asyncio.get_running_loop()
        timeout_s = self._settings.connect_timeout_s
        connection_id = next(self._ids)
        sans_io = new_connection(
            self._settings.codec,
            max_streams=self._settings.max_streams_per_connection,
            never_indexed=self._settings.never_indexed,
        )

        def factory() -> Http2Protocol:
            return Http2Protocol(sans_io, connection_id=connection_id, listener=self._listener)

        try:
            async with asyncio.timeout(timeout_s):
                _, conn = await loop.create_connection(
                    factory,
                    self.host,
                    self.port,
                    ssl=self._ssl,
                    server_hostname=self.server_hostname if self._ssl is not None else None,
                    ssl_handshake_timeout=timeout_s if self._ssl is not None else None,
                )
                try:
                    self._check_alpn(conn)
                    await conn.wait_ready()
                except (Exception, asyncio.CancelledError):
                    conn.abort("connect failed")
                    raise
        except TimeoutError as exc:
            raise ConnectTimeout(
                f"connecting to {self.host}:{self.port} took over {timeout_s}s"
            ) from exc
        except OSError as exc:
            raise ConnectError(f"cannot connect to {self.host}:{self.port}: {exc}") from exc
        return conn

    def _check_alpn(self, conn: Http2Protocol) -> None:
        if self._ssl is None:
            return
        ssl_object = conn.get_extra_info("ssl_object")
        protocol = (
            ssl_object.selected_alpn_protocol() if isinstance(ssl_object, ssl.SSLObject) else None
        )
        if protocol != "h2":
            raise ConnectError(f"{self.host}:{self.port} did not negotiate h2 (ALPN {protocol!r})")

    def _connect_succeeded(self, conn: Http2Protocol) -> None:
        self._failures = 0
        self._next_connect_at = 0.0
        self._last_connect_error = None
        if self._state is not PoolState.OPENED:
            conn.close()
            return
        if conn.state is not ConnState.READY:
            conn.drain()  # GOAWAY right after SETTINGS: nothing to use
            return
        self._conns[conn.connection_id] = conn
        self._empty.clear()
        if self._counters["closed"]:
            self._counters["reconnects"] += 1
        self._counters["opened"] += 1
        self._last_stream_limit = conn.stream_limit
        self._watchers[conn.connection_id] = self._spawn(self._watch(conn), "watch")
        logger.info(
            "connection ready",
            extra={
                "action": "pool_connect",
                "pool": self.name,
                "connection_id": conn.connection_id,
                "max_concurrent_streams": conn.stream_limit,
            },
        )
        self._wake_all()

    def _connect_failed(self, exc: ConnectError) -> None:
        self._failures += 1
        self._counters["connect_failures"] += 1
        self._last_connect_error = exc
        s = self._settings
        ceiling = min(
            s.reconnect_backoff_max_s, s.reconnect_backoff_initial_s * 2 ** (self._failures - 1)
        )
        delay = random.uniform(0, ceiling)  # full jitter
        self._next_connect_at = asyncio.get_running_loop().time() + delay
        logger.warning(
            "connect failed; backing off",
            extra={
                "action": "pool_connect_failed",
                "pool": self.name,
                "failures": self._failures,
                "backoff_s": round(delay, 3),
                "error": str(exc),
            },
        )

    async def _watch(self, conn: Http2Protocol) -> None:
        """PING the connection when idle; drain it when it reaches its maximum age."""
        s = self._settings
        age_at = (
            math.inf if s.max_connection_age_s is None else conn.created_at + s.max_connection_age_s
        )
        while not conn.is_closed:
            now = time.monotonic()
            ping_at = conn.last_received_at + s.idle_ping_after_s
            if now >= age_at and conn.state is ConnState.READY:
                logger.info(
                    "connection reached its maximum age; draining",
                    extra={
                        "action": "pool_age",
                        "pool": self.name,
                        "connection_id": conn.connection_id,
                    },
                )
                age_at = math.inf
                conn.drain()
                self._wake_all()
                continue
            if now >= ping_at:
                ack = conn.ping()
                try:
                    async with asyncio.timeout(s.ping_timeout_s):
                        answered = await ack
                except TimeoutError:
                    answered = False
                if not answered and not conn.is_closed:
                    logger.warning(
                        "PING unanswered; closing the connection",
                        extra={
                            "action": "pool_ping_timeout",
                            "pool": self.name,
                            "connection_id": conn.connection_id,
                        },
                    )
                    conn.abort("PING unanswered")
                    return
                continue
            await asyncio.sleep(min(ping_at, age_at) - now)

    # -- notifications from connections --------------------------------------------------

    def _slots_freed(self, conn: Http2Protocol, count: int) -> None:
        if conn.connection_id in self._conns:
            self._wake(count)

    def _state_changed(self, conn: Http2Protocol) -> None:
        if conn.state is ConnState.CLOSED:
            if self._conns.pop(conn.connection_id, None) is None:
                return
            self._counters["closed"] += 1
            self._closing_conns = {c for c in self._closing_conns if not c.is_socket_closed}
            if not conn.is_socket_closed:
                self._closing_conns.add(conn)
            watcher = self._watchers.pop(conn.connection_id, None)
            if watcher is not None and watcher is not asyncio.current_task():
                watcher.cancel()
            if not self._conns:
                self._empty.set()
        elif conn.state is ConnState.READY and conn.connection_id in self._conns:
            self._last_stream_limit = conn.stream_limit
        self._wake_all()

    def _goaway_received(self, conn: Http2Protocol, event: GoAwayReceived) -> None:
        self._counters["goaways"] += 1

    # -- waiters and tasks ----------------------------------------------------------------

    def _wake(self, count: int) -> None:
        waiters = self._waiters
        while count > 0 and waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                count -= 1

    def _wake_all(self) -> None:
        waiters, self._waiters = self._waiters, deque()
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    def _spawn(self, coro: Coroutine[Any, Any, None], what: str) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(coro, name=f"{self.name}:{what}")
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            logger.error(
                "pool task failed",
                extra={"action": "pool_task", "pool": self.name, "task": task.get_name()},
                exc_info=exc,
            )
