"""Per-app senders: a claimed row in, an :class:`Outcome` out, over the app's HTTP/2 pool.

The pure request builders and response parsers live in ``apns/protocol.py`` and
``fcm/protocol.py``; this module adds credentials, the per-request deadline, the one inline
retry the providers ask for (a fresh APNs provider token or a new connection; a refreshed FCM
OAuth token), and turns transport failures into outcome values. Nothing here raises for a
provider answer.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Protocol

from ..apns.auth import ProviderToken
from ..apns.protocol import ApnsRequestBuilder
from ..apns.protocol import parse_response as parse_apns
from ..exceptions import PoolClosed, ProviderAuthError, TransportError
from ..fcm.auth import TokenSource
from ..fcm.protocol import FcmRequestBuilder
from ..fcm.protocol import parse_response as parse_fcm
from ..http2.pool import Http2Pool, Response
from ..models import Action, ClaimedRow, Outcome

__all__ = ["ApnsSender", "FcmSender", "Sender", "transport_outcome"]

logger = logging.getLogger(__name__)

# APNs reasons after which the connection is no longer usable for this credential.
_RETIRE_CONNECTION = frozenset(
    {"ExpiredProviderToken", "TooManyProviderTokenUpdates", "UnrelatedKeyIdInToken", "Shutdown"}
)


class Sender(Protocol):
    pool: Http2Pool

    async def send(self, row: ClaimedRow, *, now: dt.datetime) -> Outcome: ...

    async def aclose(self) -> None: ...


def transport_outcome(exc: TransportError) -> Outcome:
    """A transport failure as an outcome: resend at once if unprocessed, else after backoff."""
    name = type(exc).__name__
    if isinstance(exc, PoolClosed):
        return Outcome(action=Action.CONN, reason="Interrupted", detail=str(exc))
    action = Action.CONN if exc.unprocessed else Action.WAIT
    return Outcome(action=action, reason=name, detail=str(exc))


class ApnsSender:
    """Sends one app's notifications to APNs (token or certificate auth)."""

    def __init__(
        self,
        *,
        pool: Http2Pool,
        builder: ApnsRequestBuilder,
        token: ProviderToken | None,
        request_timeout_s: float,
    ) -> None:
        self.pool = pool
        self._builder = builder
        self._token = token
        self._timeout_s = request_timeout_s
        self._generation = token.generation if token else 0

    async def aclose(self) -> None:
        return None

    def _authorization(self) -> list[tuple[bytes, bytes]]:
        if self._token is None:
            return []
        value = self._token.header()
        if self._token.generation != self._generation:
            # A new provider token: connections that used the old one are retired so no
            # connection ever sees two tokens within Apple's 20-minute window.
            self._generation = self._token.generation
            self.pool.retire_all()
        return [(b"authorization", value)]

    async def send(self, row: ClaimedRow, *, now: dt.datetime) -> Outcome:
        built = self._builder.build(row, now=now)
        if isinstance(built, Outcome):
            return built
        outcome = Outcome(action=Action.CONN)
        for _ in range(2):  # one inline retry after an AUTH/CONN answer
            headers = built.headers + self._authorization()
            try:
                response = await self.pool.request(headers, built.body, timeout_s=self._timeout_s)
            except TransportError as exc:
                return transport_outcome(exc)
            outcome = parse_apns(response.status, response.headers, response.body)
            if outcome.action not in (Action.AUTH, Action.CONN):
                return outcome
            self._after_auth_failure(outcome, response)
        return outcome

    def _after_auth_failure(self, outcome: Outcome, response: Response) -> None:
        if outcome.reason in _RETIRE_CONNECTION:
            self.pool.retire(response.connection_id)
        if outcome.reason == "ExpiredProviderToken" and self._token is not None:
            if self._token.age_s > 60:
                self._token.force_refresh()
            logger.warning(
                "APNs answered ExpiredProviderToken; minted a new provider token",
                extra={"action": "apns_auth", "pool": self.pool.name},
            )


class FcmSender:
    """Sends one app's messages to FCM HTTP v1 with an OAuth2 access token."""

    def __init__(
        self,
        *,
        pool: Http2Pool,
        builder: FcmRequestBuilder,
        tokens: TokenSource,
        request_timeout_s: float,
    ) -> None:
        self.pool = pool
        self._builder = builder
        self._tokens = tokens
        self._timeout_s = request_timeout_s

    async def aclose(self) -> None:
        await self._tokens.aclose()

    async def send(self, row: ClaimedRow, *, now: dt.datetime) -> Outcome:
        built = self._builder.build(row, now=now)
        if isinstance(built, Outcome):
            return built
        outcome = Outcome(action=Action.CONN)
        for _ in range(2):  # FCM: on 401 refresh the token once and retry once
            try:
                authorization = await self._tokens.header()
            except ProviderAuthError as exc:
                action = Action.CFG if exc.permanent else Action.WAIT
                return Outcome(action=action, reason="OAuthError", detail=str(exc))
            headers = [*built.headers, (b"authorization", authorization)]
            try:
                response = await self.pool.request(headers, built.body, timeout_s=self._timeout_s)
            except TransportError as exc:
                return transport_outcome(exc)
            outcome = parse_fcm(response.status, response.headers, response.body)
            if outcome.action is not Action.AUTH:
                return outcome
            self._tokens.invalidate(authorization)
        return Outcome(
            action=Action.CFG,
            provider_status=outcome.provider_status,
            reason=outcome.reason,
            detail="FCM rejected a freshly refreshed access token",
        )
