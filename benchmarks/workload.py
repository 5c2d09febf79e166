"""The one workload every step sends, and the test credentials it is sent with.

Every step sends the same APNs token-auth request: ``POST /3/device/<64 hex>`` with the
headers :class:`~pushgres.providers.apns.protocol.ApnsRequestBuilder` builds (``apns-id``,
``apns-push-type``, ``apns-topic``, ``apns-priority``), a provider token in
``authorization`` and an 83-byte alert payload.

The sink answers 200 only for paths that exist as files (:mod:`benchmarks.sink`), so device
tokens cycle through a ring of :data:`TOKEN_RING` distinct tokens. The ring is far larger than
an HPACK dynamic table (4,096 bytes hold about 36 such paths), so cycling gives the sender no
header-compression advantage over unique tokens.
"""

from __future__ import annotations

import datetime as dt
import pathlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pushgres import codec
from pushgres.models import ClaimedRow, Notification, Outcome
from pushgres.providers.apns.auth import ProviderToken
from pushgres.providers.apns.protocol import ApnsRequestBuilder
from pushgres.simulator.devkit import apns_token, generate_apns_key, generate_ca

__all__ = [
    "APP",
    "PAYLOAD",
    "TOKEN_RING",
    "TOPIC",
    "Credentials",
    "Header",
    "HttpRequest",
    "build_requests",
    "device_token",
    "make_credentials",
    "notification",
    "static_headers",
]

APP = "bench-ios"
TOPIC = "com.example.app"
TEAM_ID = "TEAM123456"
KEY_ID = "KEY1234567"
TOKEN_RING = 1024
TOKEN_REFRESH_S = 2700.0
PAYLOAD: dict[str, Any] = {
    "aps": {"alert": {"title": "Your cart", "body": "An item you saved is back in stock"}}
}

Header = tuple[bytes, bytes]
HttpRequest = tuple[list[Header], bytes]


@dataclass(frozen=True, slots=True)
class Credentials:
    """Devkit material: the sink's certificate and the APNs signing key, under ``directory``."""

    directory: str
    ca_file: str
    server_cert_file: str
    server_key_file: str
    key_file: str
    key_id: str = KEY_ID
    team_id: str = TEAM_ID

    def authorization(self) -> bytes:
        """A ``bearer <jwt>`` provider token, as pushgres's APNs sender mints it."""
        token = ProviderToken(
            key_file=self.key_file,
            key_id=self.key_id,
            team_id=self.team_id,
            refresh_s=TOKEN_REFRESH_S,
        )
        return token.header()


def make_credentials(directory: pathlib.Path) -> Credentials:
    """Generate a CA, a server certificate for localhost/127.0.0.1 and a .p8 key."""
    ca = generate_ca(directory)
    key = generate_apns_key(directory, TEAM_ID, KEY_ID)
    return Credentials(
        directory=str(directory),
        ca_file=ca.ca_file,
        server_cert_file=ca.server_cert_file,
        server_key_file=ca.server_key_file,
        key_file=key.key_file,
    )


def device_token(n: int) -> str:
    """The ``n``-th device token of the ring (lowercase hex, as the sink's file names)."""
    return apns_token("ok", n % TOKEN_RING)


def notification(n: int) -> Notification:
    """The ``n``-th notification of the end-to-end queue."""
    return Notification(app=APP, platform="apns", device_token=device_token(n), payload=PAYLOAD)


def _claimed_row(n: int, now: dt.datetime) -> ClaimedRow:
    return ClaimedRow.fresh(
        id=n + 1,
        app=APP,
        platform="apns",
        device_token=device_token(n),
        payload=codec.dumps(PAYLOAD).decode(),
        now=now,
    )


def build_requests(authority: str, count: int, authorization: bytes) -> list[HttpRequest]:
    """``count`` requests as pushgres's APNs sender sends them (builder headers + credential)."""
    builder = ApnsRequestBuilder(authority=authority, topic=TOPIC)
    now = dt.datetime.now(dt.UTC)
    auth = (b"authorization", authorization)
    requests: list[HttpRequest] = []
    for n in range(count):
        built = builder.build(_claimed_row(n, now), now=now)
        if isinstance(built, Outcome):
            raise ValueError(f"the benchmark request is invalid: {built.reason} {built.detail}")
        requests.append(([*built.headers, auth], built.body))
    return requests


def static_headers(request: HttpRequest) -> list[str]:
    """The regular (non-pseudo) headers of ``request`` as ``name: value`` strings."""
    headers: Sequence[Header] = request[0]
    return [f"{k.decode()}: {v.decode()}" for k, v in headers if not k.startswith(b":")]
