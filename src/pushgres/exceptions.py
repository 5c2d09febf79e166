"""The whole pushgres exception tree, with one root.

Provider outcomes (a dead token, a 429, a bad payload) are *values*
(:mod:`pushgres.models`), never exceptions. Exceptions are kept for configuration,
storage, connection-level and programmer errors, grouped by who must react::

    PushgresError
    ├── ConfigError            at startup: the message names the key or file; exit non-zero
    ├── SchemaError            database schema missing or newer than this build
    ├── StoreError             wraps asyncpg / OSError; the batch is retried later
    ├── EnqueueError           a notification handed to the enqueue API is invalid
    ├── DeviceError            a device registry operation was given something invalid
    ├── TransportError         retry the request on another connection
    │   ├── ConnectError       TCP/TLS connect failed
    │   ├── ConnectTimeout
    │   ├── RequestTimeout     no response before the per-request deadline
    │   ├── ConnectionLost     socket closed/reset with the request in flight
    │   ├── StreamRefused      the peer did not process the stream (REFUSED_STREAM or
    │   │                      above a GOAWAY's last_stream_id): safe to resend at once
    │   ├── StreamReset        the peer reset the stream; outcome unknown
    │   └── PoolClosed         the pool is closing and takes no new requests
    ├── ProtocolError          the HTTP/2 connection is unusable; drop it
    │   ├── LocalProtocolError
    │   └── RemoteProtocolError  carries the HTTP/2 error code
    └── ProviderAuthError      credentials cannot be obtained (OAuth exchange failed)

Every exception carries its data as attributes, and messages never contain
credentials (keys, JWTs, OAuth tokens).
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "ConnectError",
    "ConnectTimeout",
    "ConnectionLost",
    "DeviceError",
    "EnqueueError",
    "LocalProtocolError",
    "PoolClosed",
    "ProtocolError",
    "ProviderAuthError",
    "PushgresError",
    "RemoteProtocolError",
    "RequestTimeout",
    "SchemaError",
    "StoreError",
    "StreamRefused",
    "StreamReset",
    "TransportError",
]


class PushgresError(Exception):
    """Root of every error pushgres raises."""


class ConfigError(PushgresError):
    """The configuration is invalid; the message names the key and the bad value."""


class SchemaError(PushgresError):
    """The database schema is missing, partial or newer than this build understands."""


class StoreError(PushgresError):
    """A database operation failed; the work it belonged to is retried later.

    ``unavailable`` is true when the database could not be reached at all (connection lost or
    refused, server shutting down): the store logs that once per outage, not per failure.
    """

    def __init__(self, message: str, *, unavailable: bool = False) -> None:
        super().__init__(message)
        self.unavailable = unavailable


class EnqueueError(PushgresError):
    """A notification given to the enqueue API is invalid.

    ``index`` is the position of the offending notification in the input list.
    """

    def __init__(self, message: str, *, index: int | None = None) -> None:
        super().__init__(message)
        self.index = index


class DeviceError(PushgresError):
    """A device registry operation was given something invalid (the message names the token)."""


class TransportError(PushgresError):
    """A request could not be completed on its connection.

    ``unprocessed`` is true when the peer certainly did not process the request,
    so it may be resent at once without risking a duplicate.
    """

    unprocessed: bool = False


class ConnectError(TransportError):
    """Opening a TCP or TLS connection failed."""

    unprocessed = True


class ConnectTimeout(ConnectError):
    """Opening a connection took longer than its deadline."""


class RequestTimeout(TransportError):
    """No complete response arrived before the per-request deadline."""


class ConnectionLost(TransportError):
    """The connection closed while the request was in flight; outcome unknown."""


class StreamRefused(TransportError):
    """The peer did not process the stream; safe to retry at once."""

    unprocessed = True


class StreamReset(TransportError):
    """The peer reset the stream with an error code; outcome unknown."""

    def __init__(self, message: str, *, error_code: int) -> None:
        super().__init__(message)
        self.error_code = error_code


class RequestRejected(TransportError):
    """The request cannot be sent as built (its header block exceeds the peer's limits)."""

    unprocessed = True


class PoolClosed(TransportError):
    """The connection pool is closing or closed."""

    unprocessed = True


class ProtocolError(PushgresError):
    """The HTTP/2 connection broke the protocol and must be dropped."""


class LocalProtocolError(ProtocolError):
    """We tried something the protocol state does not allow."""


class RemoteProtocolError(ProtocolError):
    """The peer broke the protocol; ``error_code`` is the HTTP/2 error code."""

    def __init__(self, message: str, *, error_code: int = 1) -> None:
        super().__init__(message)
        self.error_code = error_code


class ProviderAuthError(PushgresError):
    """Provider credentials could not be obtained (for example the OAuth exchange failed).

    ``permanent`` is true when retrying cannot help (bad key, unknown account).
    """

    def __init__(self, message: str, *, permanent: bool) -> None:
        super().__init__(message)
        self.permanent = permanent
