"""The APNs sender: one app's batches to Apple over HTTP/2, with token or certificate auth.

:func:`build_sender` reads the app's credentials once (the p8 key for provider tokens, or the
client certificate for mutual TLS) and returns an :class:`ApnsSender` over its own pool. The
shared loop is :class:`~pushgres.providers.base.BatchSender`; this module adds the provider
token header and Apple's rules for when a connection must be replaced.

Apple: "Establishing a token-based connection to APNs" and "Handling notification responses
from APNs" (developer.apple.com/documentation/usernotifications).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
from collections.abc import Sequence

from ...config import AppConfig
from ...exceptions import ConfigError
from ...http2.pool import Http2Pool, Response
from ...http2.tls import make_ssl_context
from ...models import ClaimedRow, Outcome, Request
from ..base import BatchSender, Sender
from ..pools import authority, new_pool
from .auth import ProviderToken, load_client_certificate
from .config import ApnsConfig
from .protocol import NEVER_INDEXED_HEADERS, ApnsRequestBuilder
from .protocol import parse_response as parse_apns
from .reasons import bad_device_token_detail

__all__ = ["ApnsSender", "build_sender", "build_senders"]

logger = logging.getLogger(__name__)

# APNs reasons after which the connection is no longer usable for this credential.
_RETIRE_CONNECTION = frozenset(
    {"ExpiredProviderToken", "TooManyProviderTokenUpdates", "UnrelatedKeyIdInToken", "Shutdown"}
)


class ApnsSender(BatchSender):
    """Sends one app's notifications to APNs (token or certificate auth)."""

    def __init__(
        self,
        *,
        pool: Http2Pool,
        builder: ApnsRequestBuilder,
        token: ProviderToken | None,
        request_timeout_s: float,
        environment: str,
    ) -> None:
        self.pool = pool
        self._builder = builder
        self._token = token
        self._timeout_s = request_timeout_s
        self._generation = token.generation if token else 0
        self._bad_token_detail = bad_device_token_detail(environment)

    def _build(self, row: ClaimedRow, now: dt.datetime) -> Request | Outcome:
        return self._builder.build(row, now=now)

    def _parse(self, response: Response) -> Outcome:
        outcome = parse_apns(response.status, response.headers, response.body)
        if outcome.reason == "BadDeviceToken":  # name the environment the token was not for
            return dataclasses.replace(outcome, note=self._bad_token_detail)
        return outcome

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


def build_senders(apps: Sequence[AppConfig], *, request_timeout_s: float) -> list[Sender]:
    """Each app's sender and pool; apps signing with the same key share one provider token.

    Apple asks for one token per signing key, refreshed no more often than every 20 minutes
    ("Establishing a token-based connection to APNs"): apps sharing a key share its token,
    refreshed at the shortest ``token_refresh_s`` among them.
    """
    tokens: dict[tuple[str, str], ProviderToken] = {}
    refresh: dict[tuple[str, str], float] = {}
    for app in apps:
        apns = app.provider
        assert isinstance(apns, ApnsConfig)
        if apns.auth == "token":
            assert apns.team_id and apns.key_id
            key = (apns.team_id, apns.key_id)
            refresh[key] = min(refresh.get(key, apns.token_refresh_s), apns.token_refresh_s)
    senders: list[Sender] = []
    for app in apps:
        apns = app.provider
        assert isinstance(apns, ApnsConfig)
        token = None
        if apns.auth == "token":
            assert apns.key_file and apns.key_id and apns.team_id
            key = (apns.team_id, apns.key_id)
            token = tokens.get(key)
            if token is None:
                token = tokens[key] = ProviderToken(
                    key_file=apns.key_file,
                    key_id=apns.key_id,
                    team_id=apns.team_id,
                    refresh_s=refresh[key],
                )
        senders.append(build_sender(app, token=token, request_timeout_s=request_timeout_s))
    return senders


def build_sender(
    app: AppConfig, *, token: ProviderToken | None, request_timeout_s: float
) -> ApnsSender:
    """The app's sender and pool: token auth with ``token``, or its client certificate."""
    apns = app.provider
    assert isinstance(apns, ApnsConfig)
    cert = None
    if apns.auth == "certificate":
        cert = load_client_certificate(
            p12_file=apns.p12_file,
            p12_password=apns.p12_password,
            cert_file=apns.cert_file,
            cert_key_file=apns.cert_key_file,
        )
    elif token is None:
        raise ConfigError(f"apps.{app.name}: token auth needs its provider token")
    ssl_context = make_ssl_context(
        ca_file=app.pool.ca_file,
        client_cert_pem=cert.cert_pem if cert else None,
        client_key_pem=cert.key_pem if cert else None,
    )
    return ApnsSender(
        pool=new_pool(app, ssl_context, never_indexed=NEVER_INDEXED_HEADERS),
        builder=ApnsRequestBuilder(authority=authority(app.pool), topic=apns.topic),
        token=token if cert is None else None,
        request_timeout_s=request_timeout_s,
        environment=apns.environment,
    )
