"""Per-app senders: a batch of claimed rows in, one :class:`Outcome` per row out.

The pure request builders and response parsers live in ``apns/protocol.py`` and
``fcm/protocol.py``; this module adds credentials (one authorization header per batch), the
batch deadline, the one inline retry the providers ask for (a fresh APNs provider token or a
new connection; a refreshed FCM OAuth token), and turns transport failures into outcome
values. A whole batch goes to :meth:`Http2Pool.send_batch` at once: no task or future per
notification. Nothing here raises for a provider answer.
"""

from __future__ import annotations

import abc
import asyncio
import datetime as dt
import logging
from collections.abc import Sequence
from typing import Protocol

from ..apns.auth import ProviderToken
from ..apns.protocol import ApnsRequestBuilder
from ..apns.protocol import parse_response as parse_apns
from ..exceptions import PoolClosed, ProviderAuthError, RequestRejected, TransportError
from ..fcm.auth import TokenSource
from ..fcm.protocol import FcmRequestBuilder
from ..fcm.protocol import parse_response as parse_fcm
from ..http2.pool import Http2Pool, Response
from ..models import Action, ClaimedRow, Outcome, Request

__all__ = ["ApnsSender", "FcmSender", "Sender", "transport_outcome"]

logger = logging.getLogger(__name__)

# APNs reasons after which the connection is no longer usable for this credential.
_RETIRE_CONNECTION = frozenset(
    {"ExpiredProviderToken", "TooManyProviderTokenUpdates", "UnrelatedKeyIdInToken", "Shutdown"}
)


class Sender(Protocol):
    pool: Http2Pool

    async def send_batch(
        self,
        rows: Sequence[ClaimedRow],
        *,
        now: dt.datetime,
        abort: asyncio.Future[None] | None = None,
    ) -> list[Outcome]:
        """One outcome per row, in order; never raises for a provider or transport failure."""
        ...

    async def aclose(self) -> None: ...


def transport_outcome(exc: TransportError) -> Outcome:
    """A transport failure as an outcome: resend at once if unprocessed, else after backoff."""
    name = type(exc).__name__
    if isinstance(exc, PoolClosed):
        return Outcome(action=Action.CONN, reason="Interrupted", detail=str(exc))
    if isinstance(exc, RequestRejected):
        return Outcome.invalid("RequestRejected", str(exc))
    action = Action.CONN if exc.unprocessed else Action.WAIT
    return Outcome(action=action, reason=name, detail=str(exc))


class _BatchSender(abc.ABC):
    """The batch loop shared by both providers: build, send, parse, one inline retry.

    Subclasses supply the credential header (:meth:`_authorization`), the response parser
    and what to do after an AUTH/CONN answer (:meth:`_after_failure`).
    """

    pool: Http2Pool
    _timeout_s: float
    _RETRY_ACTIONS: frozenset[Action] = frozenset({Action.AUTH, Action.CONN})

    @abc.abstractmethod
    def _build(self, row: ClaimedRow, now: dt.datetime) -> Request | Outcome: ...

    @abc.abstractmethod
    async def _authorization(self) -> list[tuple[bytes, bytes]] | Outcome: ...

    @abc.abstractmethod
    def _parse(self, response: Response) -> Outcome: ...

    @abc.abstractmethod
    def _after_failure(
        self, outcome: Outcome, response: Response, authorization: bytes
    ) -> None: ...

    def _exhausted(self, outcome: Outcome) -> Outcome:
        """The outcome of a request still failing after the inline retry."""
        return outcome

    async def send_batch(
        self,
        rows: Sequence[ClaimedRow],
        *,
        now: dt.datetime,
        abort: asyncio.Future[None] | None = None,
    ) -> list[Outcome]:
        outcomes: list[Outcome | None] = [None] * len(rows)
        built: list[tuple[int, Request]] = []
        for index, row in enumerate(rows):
            request = self._build(row, now)
            if isinstance(request, Outcome):
                outcomes[index] = request
            else:
                built.append((index, request))
        for attempt in range(2):  # one inline retry after an AUTH/CONN answer
            if not built:
                break
            auth = await self._authorization()
            if isinstance(auth, Outcome):
                for index, _ in built:
                    outcomes[index] = auth
                break
            authorization = auth[0][1] if auth else b""
            requests = [
                (request.headers + auth if auth else request.headers, request.body)
                for _, request in built
            ]
            results = await self.pool.send_batch(requests, timeout_s=self._timeout_s, abort=abort)
            again: list[tuple[int, Request]] = []
            for (index, request), result in zip(built, results, strict=True):
                if isinstance(result, TransportError):
                    outcomes[index] = transport_outcome(result)
                    continue
                outcome = self._parse(result)
                if outcome.action in self._RETRY_ACTIONS:
                    self._after_failure(outcome, result, authorization)
                    if attempt == 0:
                        again.append((index, request))
                        continue
                    outcome = self._exhausted(outcome)
                outcomes[index] = outcome
            built = again
        return outcomes  # type: ignore[return-value]  # every row has its outcome


class ApnsSender(_BatchSender):
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

    def _build(self, row: ClaimedRow, now: dt.datetime) -> Request | Outcome:
        return self._builder.build(row, now=now)

    def _parse(self, response: Response) -> Outcome:
        return parse_apns(response.status, response.headers, response.body)

    async def _authorization(self) -> list[tuple[bytes, bytes]]:
        if self._token is None:
            return []
        value = self._token.header()
        if self._token.generation != self._generation:
            # A new provider token: connections that used the old one are retired so no
            # connection ever sees two tokens within Apple's 20-minute window.
            self._generation = self._token.generation
            self.pool.retire_all()
        return [(b"authorization", value)]

    def _after_failure(self, outcome: Outcome, response: Response, authorization: bytes) -> None:
        if outcome.reason in _RETIRE_CONNECTION:
            self.pool.retire(response.connection_id)
        if outcome.reason == "ExpiredProviderToken" and self._token is not None:
            if self._token.age_s > 60:
                self._token.force_refresh()
            logger.warning(
                "APNs answered ExpiredProviderToken; minted a new provider token",
                extra={"action": "apns_auth", "pool": self.pool.name},
            )


class FcmSender(_BatchSender):
    """Sends one app's messages to FCM HTTP v1 with an OAuth2 access token."""

    _RETRY_ACTIONS = frozenset({Action.AUTH})

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

    def _build(self, row: ClaimedRow, now: dt.datetime) -> Request | Outcome:
        return self._builder.build(row, now=now)

    def _parse(self, response: Response) -> Outcome:
        return parse_fcm(response.status, response.headers, response.body)

    async def _authorization(self) -> list[tuple[bytes, bytes]] | Outcome:
        try:
            return [(b"authorization", await self._tokens.header())]
        except ProviderAuthError as exc:
            action = Action.CFG if exc.permanent else Action.WAIT
            return Outcome(action=action, reason="OAuthError", detail=str(exc))

    def _after_failure(self, outcome: Outcome, response: Response, authorization: bytes) -> None:
        # FCM: on 401 the access token is refreshed once and the request retried once.
        self._tokens.invalidate(authorization)

    def _exhausted(self, outcome: Outcome) -> Outcome:
        return Outcome(
            action=Action.CFG,
            provider_status=outcome.provider_status,
            reason=outcome.reason,
            detail="FCM rejected a freshly refreshed access token",
        )
