"""An app's HTTP/2 pool from its ``PoolConfig``: the one place a provider's pool is made."""

from __future__ import annotations

import ssl

from ..config import AppConfig, PoolConfig
from ..http2.pool import Http2Pool, PoolSettings

__all__ = ["authority", "new_pool"]


def authority(pool: PoolConfig) -> str:
    """The ``:authority`` of the app's requests: the host, and the port unless it is 443."""
    return pool.server_hostname if pool.port == 443 else f"{pool.server_hostname}:{pool.port}"


def new_pool(
    app: AppConfig, ssl_context: ssl.SSLContext, *, never_indexed: frozenset[bytes]
) -> Http2Pool:
    """The app's pool; ``never_indexed`` names the provider's per-message request headers."""
    pool = app.pool
    return Http2Pool(
        f"{app.platform}:{app.name}",
        pool.host,
        pool.port,
        server_hostname=pool.server_hostname,
        authority=authority(pool),
        ssl_context=ssl_context,
        settings=PoolSettings(
            max_connections=pool.max_connections,
            max_streams_per_connection=pool.max_streams_per_connection,
            connect_timeout_s=pool.connect_timeout_s,
            max_connection_age_s=pool.max_connection_age_s,
            codec=pool.codec,
            never_indexed=never_indexed,
        ),
    )
