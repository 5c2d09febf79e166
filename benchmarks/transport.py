"""Transport only: pushgres's :class:`~pushgres.http2.pool.Http2Pool` → the sink, per codec.

Each codec of :data:`pushgres.http2.codecs.CODECS` runs in a subprocess of its own under
uvloop (``python -m benchmarks.transport '<spec>'``, started by
:func:`benchmarks.client.run_client`). The requests are built beforehand as the APNs sender
builds them (:func:`benchmarks.workload.build_requests`), or the FCM sender with
``"provider": "fcm"`` in the spec (:func:`benchmarks.workload.build_fcm_requests`), so the
figure is the pool and codec alone: no database, no request building, no response parsing
beyond the status (FCM's answers carry a body, which the pool reads).
:func:`drive` is the whole load loop; switch it when the pool's submission API changes.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Sequence

from pushgres.http2.pool import Http2Pool, PoolSettings, Response
from pushgres.http2.tls import make_ssl_context
from pushgres.providers.apns.protocol import NEVER_INDEXED_HEADERS
from pushgres.providers.fcm.sender import NEVER_INDEXED_HEADERS as FCM_NEVER_INDEXED

from .client import Measured, Spec, child_main
from .workload import TOKEN_RING, Credentials, HttpRequest, build_fcm_requests, build_requests

__all__ = ["drive"]

REQUEST_TIMEOUT_S = 30.0


async def drive(
    pool: Http2Pool,
    requests: Sequence[HttpRequest],
    total: int,
    *,
    batch: int,
    concurrency: int,
) -> tuple[int, Counter[str]]:
    """Send ``total`` requests, cycling through ``requests``, ``concurrency`` in flight.

    ``concurrency // batch`` workers each hand the pool one batch at a time, as the daemon's
    claimers do. Returns the number of 200 answers and a count of everything else.
    """
    ok = 0
    other: Counter[str] = Counter()
    next_index = 0
    ring = len(requests)

    async def worker() -> None:
        nonlocal ok, next_index
        while next_index < total:
            start, size = next_index, min(batch, total - next_index)
            next_index += size
            offset = start % ring
            chunk = list(requests[offset : offset + size])
            if len(chunk) < size:
                chunk += requests[: size - len(chunk)]
            for result in await pool.send_batch(chunk, timeout_s=REQUEST_TIMEOUT_S):
                if isinstance(result, Response) and result.status == 200:
                    ok += 1
                else:
                    other[str(getattr(result, "status", type(result).__name__))] += 1

    async with asyncio.TaskGroup() as group:
        for _ in range(max(1, concurrency // batch)):
            group.create_task(worker())
    return ok, other


async def _bench(spec: Spec) -> Spec:
    credentials = Credentials(**spec["credentials"])
    port: int = spec["port"]
    authority = f"localhost:{port}"
    if spec.get("provider") == "fcm":
        requests = build_fcm_requests(authority, TOKEN_RING)
        never_indexed = FCM_NEVER_INDEXED
    else:
        requests = build_requests(authority, TOKEN_RING, credentials.authorization())
        never_indexed = NEVER_INDEXED_HEADERS
    concurrency = spec["connections"] * spec["streams"]
    settings = PoolSettings(
        codec=spec["codec"],
        max_connections=spec["connections"],
        max_streams_per_connection=spec["streams"],
        never_indexed=never_indexed,  # as the daemon's sender for that provider
    )
    pool = Http2Pool(
        "bench",
        "127.0.0.1",
        port,
        server_hostname="localhost",
        authority=authority,
        ssl_context=make_ssl_context(ca_file=credentials.ca_file),
        settings=settings,
    )
    async with pool:
        warmup = 2 * concurrency  # opens every connection before the clock starts
        await drive(pool, requests, warmup, batch=spec["batch"], concurrency=concurrency)
        with Measured() as measured:
            ok, other = await drive(
                pool, requests, spec["requests"], batch=spec["batch"], concurrency=concurrency
            )
        stats = pool.stats()
    result = measured.result(spec["requests"], ok, dict(other), warmup)
    result["connections_opened"] = stats["opened"]
    return result


if __name__ == "__main__":
    raise SystemExit(child_main(_bench))
