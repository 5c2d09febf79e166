"""The registry of sans-IO HTTP/2 client codecs, selected by name from configuration.

Every codec implements :class:`~pushgres.http2.connection.ClientConnection` and takes the
same keyword arguments (``max_streams``, ``initial_window_bytes``,
``connection_window_bytes``, ``log``). The pool builds one per socket through
:func:`new_connection`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from ..exceptions import ConfigError
from .connection import ClientConnection, H2ClientConnection
from .fastconn import FastClientConnection

__all__ = ["CODECS", "DEFAULT_CODEC", "new_connection"]

CODECS: Final[dict[str, Callable[..., ClientConnection]]] = {
    "fast": FastClientConnection,
    "h2": H2ClientConnection,
}
DEFAULT_CODEC: Final = "fast"


def new_connection(codec: str, *, max_streams: int) -> ClientConnection:
    """A fresh client connection of the named codec.

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
    return factory(max_streams=max_streams)
