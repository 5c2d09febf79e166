"""The pooled connection's lifecycle: the state table and nothing else.

A connection in the pool is CONNECTING until the server's first SETTINGS frame has been
processed, READY while streams may be opened, DRAINING once GOAWAY was received or sent (or
the pool retires it) while its in-flight streams finish (RFC 9113 section 6.8), and CLOSED
at the end. :data:`TRANSITIONS` is the whole table over :class:`ConnState` and
:class:`ConnInput`; :func:`next_state` raises :class:`LocalProtocolError` for anything not
in it. Pure: no I/O, no codec.
"""

from __future__ import annotations

import enum
from typing import Final

from ..exceptions import LocalProtocolError

__all__ = ["TRANSITIONS", "ConnInput", "ConnState", "next_state"]


class ConnState(enum.Enum):
    """Lifecycle of a pooled connection."""

    CONNECTING = "connecting"  # socket open, server SETTINGS not yet processed
    READY = "ready"  # streams may be opened
    DRAINING = "draining"  # no new streams; in-flight streams may finish
    CLOSED = "closed"  # terminal


class ConnInput(enum.Enum):
    """What can happen to a pooled connection."""

    SETTINGS_RECEIVED = "settings_received"  # a SETTINGS frame from the server
    GOAWAY_RECEIVED = "goaway_received"
    DRAIN = "drain"  # local decision: retire, age limit, pool closing, GOAWAY sent
    LOST = "lost"  # socket closed, protocol error, or terminated by the peer


TRANSITIONS: Final[dict[tuple[ConnState, ConnInput], ConnState]] = {
    (ConnState.CONNECTING, ConnInput.SETTINGS_RECEIVED): ConnState.READY,
    (ConnState.CONNECTING, ConnInput.GOAWAY_RECEIVED): ConnState.DRAINING,
    (ConnState.CONNECTING, ConnInput.DRAIN): ConnState.DRAINING,
    (ConnState.CONNECTING, ConnInput.LOST): ConnState.CLOSED,
    (ConnState.READY, ConnInput.SETTINGS_RECEIVED): ConnState.READY,
    (ConnState.READY, ConnInput.GOAWAY_RECEIVED): ConnState.DRAINING,
    (ConnState.READY, ConnInput.DRAIN): ConnState.DRAINING,
    (ConnState.READY, ConnInput.LOST): ConnState.CLOSED,
    (ConnState.DRAINING, ConnInput.SETTINGS_RECEIVED): ConnState.DRAINING,
    (ConnState.DRAINING, ConnInput.GOAWAY_RECEIVED): ConnState.DRAINING,
    (ConnState.DRAINING, ConnInput.DRAIN): ConnState.DRAINING,
    (ConnState.DRAINING, ConnInput.LOST): ConnState.CLOSED,
}


def next_state(state: ConnState, event: ConnInput) -> ConnState:
    """The state after ``event``.

    Raises
    ------
    LocalProtocolError
        ``event`` is not allowed in ``state`` (everything is refused once CLOSED).
    """
    try:
        return TRANSITIONS[(state, event)]
    except KeyError:
        raise LocalProtocolError(f"{event.value} is not allowed in state {state.value}") from None
