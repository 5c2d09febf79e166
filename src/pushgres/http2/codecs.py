"""The registry of sans-IO HTTP/2 client codecs, selected by name from configuration.

Every codec implements :class:`~pushgres.http2.streams.ClientConnection` and takes the
same keyword arguments (``max_streams``, ``initial_window_bytes``,
``connection_window_bytes``, ``never_indexed``, ``log``). The pool builds one per socket
through :func:`new_connection`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from ..exceptions import ConfigError
from .fastconn import FastClientConnection
from .h2codec import H2ClientConnection
from .streams import DEFAULT_NEVER_INDEXED, ClientConnection

__all__ = ["CODECS", "DEFAULT_CODEC", "new_connection"]

CODECS: Final[dict[str, Callable[..., ClientConnection]]] = {
    "fast": FastClientConnection,
    "h2": H2ClientConnection,
}
DEFAULT_CODEC: Final = "fast"


def new_connection(
    codec: str, *, max_streams: int, never_indexed: frozenset[bytes] = DEFAULT_NEVER_INDEXED
) -> ClientConnection:
    """A fresh client connection of the named codec.

    ``never_indexed`` names the request headers sent as HPACK never-indexed literals
    (RFC 7541 section 6.2.3); the default covers ``:path`` only.

    Raises
    ------
    ConfigError
        ``codec`` is not a known codec name.
    """
    try:
        factory = CODECS[codec]
    except KeyError:
        known = ", ".join(sorted(CODECS))
        raise ConfigError(f"unknown HTTP/2 codec {codec!r}; expected one of: {known}") from None
    return factory(max_streams=max_streams, never_indexed=never_indexed)
