"""APNs credentials: the shared ES256 provider token, and certificate material for mTLS.

One provider token per (team id, key id), cached and regenerated on a schedule
(``token_refresh_s``, 45 minutes by default: Apple rejects tokens older than 60 minutes and
answers ``TooManyProviderTokenUpdates`` to changes more often than every 20 minutes), never
per request. Keys are read once at startup. Nothing here logs or formats a key or a token.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import pkcs12

from ...exceptions import ConfigError

__all__ = ["ClientCertificate", "ProviderToken", "load_client_certificate"]


class ProviderToken:
    """The ``authorization`` header value for token-based APNs connections."""

    def __init__(
        self,
        *,
        key_file: str,
        key_id: str,
        team_id: str,
        refresh_s: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        try:
            with open(key_file, "rb") as f:
                key = serialization.load_pem_private_key(f.read(), password=None)
        except OSError as exc:
            raise ConfigError(f"APNs key file {key_file} cannot be read: {exc.strerror}") from None
        except (ValueError, TypeError):
            raise ConfigError(f"APNs key file {key_file} is not a PEM PKCS#8 private key") from None
        if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
            raise ConfigError(f"APNs key file {key_file} is not an EC P-256 (ES256) key")
        self._key = key
        self._key_id = key_id
        self._team_id = team_id
        self._refresh_s = refresh_s
        self._clock = clock
        self._value = b""
        self._issued_at = 0.0
        self.generation = 0

    def _mint(self, now: float) -> None:
        token = jwt.encode(
            {"iss": self._team_id, "iat": int(now)},
            self._key,
            algorithm="ES256",
            headers={"kid": self._key_id},
        )
        self._value = b"bearer " + token.encode("ascii")
        self._issued_at = now
        self.generation += 1

    def header(self) -> bytes:
        """The current ``bearer <jwt>`` value; minted when missing or due for refresh."""
        now = self._clock()
        if not self._value or now - self._issued_at >= self._refresh_s:
            self._mint(now)
        return self._value

    def force_refresh(self) -> None:
        """Mint a new token now (after ``ExpiredProviderToken``)."""
        self._mint(self._clock())

    @property
    def age_s(self) -> float:
        return self._clock() - self._issued_at if self._value else 0.0

    def __repr__(self) -> str:
        return f"ProviderToken(team_id={self._team_id!r}, key_id={self._key_id!r})"


@dataclass(frozen=True, slots=True, repr=False)
class ClientCertificate:
    cert_pem: bytes
    key_pem: bytes

    def __repr__(self) -> str:
        return "ClientCertificate(<redacted>)"


def load_client_certificate(
    *,
    p12_file: str | None,
    p12_password: str | None,
    cert_file: str | None,
    cert_key_file: str | None,
) -> ClientCertificate:
    """Certificate and key for APNs certificate auth, from a .p12 or from PEM files."""
    if p12_file is not None:
        try:
            with open(p12_file, "rb") as f:
                data = f.read()
        except OSError as exc:
            raise ConfigError(f"p12 file {p12_file} cannot be read: {exc.strerror}") from None
        password = p12_password.encode() if p12_password else None
        try:
            key, cert, _extra = pkcs12.load_key_and_certificates(data, password)
        except ValueError:
            raise ConfigError(
                f"p12 file {p12_file} cannot be opened: wrong password or not a PKCS#12 file"
            ) from None
        if key is None or cert is None:
            raise ConfigError(f"p12 file {p12_file} lacks a certificate or a private key")
        return ClientCertificate(
            cert_pem=cert.public_bytes(serialization.Encoding.PEM),
            key_pem=key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ),
        )
    assert cert_file is not None and cert_key_file is not None
    try:
        with open(cert_file, "rb") as f:
            cert_pem = f.read()
        with open(cert_key_file, "rb") as f:
            key_pem = f.read()
    except OSError as exc:
        raise ConfigError(
            f"certificate file cannot be read: {exc.filename}: {exc.strerror}"
        ) from None
    return ClientCertificate(cert_pem=cert_pem, key_pem=key_pem)
