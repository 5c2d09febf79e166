"""OAuth2 access tokens for FCM from a Google service account (RFC 7523 JWT-bearer grant).

The service-account JSON is read once. The token is fetched from its ``token_uri`` with aiohttp
(HTTP/1.1), cached, refreshed five minutes before expiry, with a single refresh in flight that
every sender shares; a 401 from FCM invalidates the token it was sent with. Neither the key nor
any token appears in logs or errors.

:class:`TokenSource` builds its own TLS context from a CA file
(:func:`pushgres.http2.tls.make_http1_ssl_context`: ALPN ``http/1.1`` only, verification on).
It takes no context from its caller: Google's token endpoint offers ``h2`` as well, and would
select it for the provider pools' ``h2``-only context, which aiohttp cannot speak.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from ...exceptions import ConfigError, ProviderAuthError
from ...http2.tls import make_http1_ssl_context

__all__ = ["SCOPE", "ServiceAccount", "TokenSource"]

SCOPE = "https://www.googleapis.com/auth/firebase.messaging"
GRANT_TYPE = "urn:ietf:params:oauth:grant-type:jwt-bearer"
REFRESH_MARGIN_S = 300.0
TOKEN_REQUEST_TIMEOUT_S = 15.0


class ServiceAccount:
    """The fields of a service-account key file that pushgres uses."""

    def __init__(self, path: str, *, token_uri: str | None = None) -> None:
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except OSError as exc:
            raise ConfigError(
                f"service account file {path} cannot be read: {exc.strerror}"
            ) from None
        except ValueError:
            raise ConfigError(f"service account file {path} is not valid JSON") from None
        if not isinstance(data, dict):
            raise ConfigError(f"service account file {path} is not a JSON object")
        missing = [
            k
            for k in ("type", "project_id", "private_key_id", "private_key", "client_email")
            if not isinstance(data.get(k), str)
        ]
        if missing:
            raise ConfigError(f"service account file {path} lacks {', '.join(missing)}")
        if data["type"] != "service_account":
            raise ConfigError(f"service account file {path}: type is not 'service_account'")
        try:
            key = serialization.load_pem_private_key(data["private_key"].encode(), password=None)
        except (ValueError, TypeError):
            raise ConfigError(
                f"service account file {path}: private_key is not a PEM key"
            ) from None
        if not isinstance(key, rsa.RSAPrivateKey):
            raise ConfigError(f"service account file {path}: private_key is not an RSA key")
        self.path = path
        self.project_id: str = data["project_id"]
        self.client_email: str = data["client_email"]
        self.private_key_id: str = data["private_key_id"]
        self.token_uri: str = (
            token_uri or data.get("token_uri") or "https://oauth2.googleapis.com/token"
        )
        self._key = key

    def assertion(self, now: float) -> str:
        return jwt.encode(
            {
                "iss": self.client_email,
                "scope": SCOPE,
                "aud": self.token_uri,
                "iat": int(now),
                "exp": int(now) + 3600,
            },
            self._key,
            algorithm="RS256",
            headers={"kid": self.private_key_id},
        )

    def __repr__(self) -> str:
        return f"ServiceAccount(client_email={self.client_email!r})"


class TokenSource:
    """A cached OAuth2 access token with single-flight refresh.

    ``ca_file`` is the CA bundle the token endpoint's certificate must chain to (``None``: the
    system store); the TLS context is built here, offering ALPN ``http/1.1`` only.

    Raises
    ------
    ConfigError
        The CA file cannot be read.
    """

    def __init__(
        self,
        account: ServiceAccount,
        *,
        ca_file: str | None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._account = account
        self._ssl = make_http1_ssl_context(ca_file=ca_file)
        self._clock = clock
        self._token: bytes | None = None
        self._expires_at = 0.0
        self._refresh: asyncio.Future[bytes] | None = None
        self._session: aiohttp.ClientSession | None = None
        self.refreshes = 0

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def header(self) -> bytes:
        """``Bearer <token>``, refreshed ahead of expiry; one refresh in flight at most."""
        if self._token is not None and self._clock() < self._expires_at - REFRESH_MARGIN_S:
            return self._token
        if self._refresh is None:
            self._refresh = asyncio.ensure_future(self._fetch())
            self._refresh.add_done_callback(self._refresh_done)
        return await asyncio.shield(self._refresh)

    def _refresh_done(self, fut: asyncio.Future[bytes]) -> None:
        self._refresh = None
        if not fut.cancelled():
            fut.exception()  # retrieved here; awaiting callers re-raise it

    def invalidate(self, header: bytes) -> None:
        """Forget ``header`` after FCM rejected it (401), unless it was already replaced."""
        if self._token == header:
            self._token = None

    async def _fetch(self) -> bytes:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=self._ssl, limit=2),
                timeout=aiohttp.ClientTimeout(total=TOKEN_REQUEST_TIMEOUT_S),
            )
        now = self._clock()
        form = {"grant_type": GRANT_TYPE, "assertion": self._account.assertion(now)}
        try:
            async with self._session.post(self._account.token_uri, data=form) as resp:
                status = resp.status
                text = await resp.text()
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise ProviderAuthError(
                f"OAuth token request to {self._account.token_uri} failed: {type(exc).__name__}",
                permanent=False,
            ) from exc
        body: Any
        try:
            body = json.loads(text)
        except ValueError:
            body = None
        if status != 200 or not isinstance(body, dict) or "access_token" not in body:
            error = body.get("error") if isinstance(body, dict) else None
            description = body.get("error_description") if isinstance(body, dict) else None
            raise ProviderAuthError(
                f"OAuth token endpoint answered {status} {error or ''}: {description or ''}".strip(),
                permanent=status in (400, 401, 403),
            )
        self.refreshes += 1
        self._token = b"Bearer " + str(body["access_token"]).encode("ascii")
        self._expires_at = now + float(body.get("expires_in", 3600))
        return self._token
