"""The FCM sender: one app's messages to FCM HTTP v1 over HTTP/2, with an OAuth2 access token.

:func:`build_sender` reads the service account once and returns an :class:`FcmSender` over its
own pool; the access token comes from :class:`~pushgres.providers.fcm.auth.TokenSource`. On 401 the
token is refreshed once and the request retried once, as Google's FCM documentation asks
("Authorize send requests", firebase.google.com/docs/cloud-messaging/auth-server).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

from ...config import AppConfig
from ...exceptions import ProviderAuthError
from ...http2.pool import Http2Pool, Response
from ...http2.tls import make_ssl_context
from ...models import Action, ClaimedRow, Outcome, Request
from ..base import BatchSender, Sender
from ..pools import authority, new_pool
from .auth import ServiceAccount, TokenSource
from .config import FcmConfig
from .protocol import FcmRequestBuilder
from .protocol import parse_response as parse_fcm

__all__ = ["NEVER_INDEXED_HEADERS", "FcmSender", "build_sender", "build_senders"]

NEVER_INDEXED_HEADERS: frozenset[bytes] = frozenset()
"""None: every header of an FCM request is the same for one app (the path names the project,
the per-message values travel in the body), so each is encoded once per connection."""


class FcmSender(BatchSender):
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
        self._auth_problem: str | None = None

    async def aclose(self) -> None:
        await self._tokens.aclose()

    def _build(self, row: ClaimedRow, now: dt.datetime) -> Request | Outcome:
        return self._builder.build(row, now=now)

    def _parse(self, response: Response) -> Outcome:
        return parse_fcm(response.status, response.headers, response.body)

    async def _authorization(self) -> list[tuple[bytes, bytes]] | Outcome:
        try:
            header = await self._tokens.header()
        except ProviderAuthError as exc:
            self._auth_problem = f"OAuthError: {exc}"
            action = Action.CFG if exc.permanent else Action.WAIT
            return Outcome(action=action, reason="OAuthError", detail=str(exc))
        self._auth_problem = None
        return [(b"authorization", header)]

    def _credential_problem(self) -> str | None:
        return self._auth_problem

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


def build_sender(app: AppConfig, *, request_timeout_s: float) -> FcmSender:
    """The app's sender and pool, from its config (the service account is read here, once)."""
    fcm = app.provider
    assert isinstance(fcm, FcmConfig)
    account = ServiceAccount(fcm.service_account_file, token_uri=fcm.token_uri)
    return FcmSender(
        pool=new_pool(
            app,
            make_ssl_context(ca_file=app.pool.ca_file),
            never_indexed=NEVER_INDEXED_HEADERS,
        ),
        builder=FcmRequestBuilder(
            authority=authority(app.pool), project_id=fcm.project_id or account.project_id
        ),
        # The token endpoint gets its own HTTP/1.1 TLS context (TokenSource builds it).
        tokens=TokenSource(account, ca_file=app.pool.ca_file),
        request_timeout_s=request_timeout_s,
    )


def build_senders(apps: Sequence[AppConfig], *, request_timeout_s: float) -> list[Sender]:
    return [build_sender(app, request_timeout_s=request_timeout_s) for app in apps]
