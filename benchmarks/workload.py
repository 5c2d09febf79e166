"""The workload every step sends, per provider, and the test credentials it is sent with.

APNs: the same token-auth request everywhere, ``POST /3/device/<64 hex>`` with the headers
:class:`~pushgres.providers.apns.protocol.ApnsRequestBuilder` builds (``apns-id``,
``apns-push-type``, ``apns-topic``, ``apns-priority``), a provider token in ``authorization``
and an 83-byte alert payload. The sink answers 200 only for paths that exist as files
(:mod:`benchmarks.sink`), so device tokens cycle through a ring of :data:`TOKEN_RING` distinct
tokens. The ring is far larger than an HPACK dynamic table (4,096 bytes hold about 36 such
paths), so cycling gives the sender no header-compression advantage over unique tokens.

FCM: ``POST /v1/projects/<project>/messages:send`` (one path for every message) with the body
:class:`~pushgres.providers.fcm.protocol.FcmRequestBuilder` builds: the same alert as a v1
``notification``, the device's registration token (163 characters, as Firebase issues them)
and ``android.priority``, with an OAuth2 access token in ``authorization``.

The credentials are the simulators' devkit (:func:`pushgres.simulator.devkit.make_dev_setup`):
one CA for the sink and the OAuth endpoint, a .p8 key, a service account whose ``token_uri``
is the local OAuth endpoint that ``pushgres simulate`` serves (:mod:`benchmarks.oauth`).
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
from pushgres.providers.fcm.protocol import FcmRequestBuilder
from pushgres.simulator.devkit import apns_token, make_dev_setup

__all__ = [
    "APP",
    "FCM_ACCESS_TOKEN",
    "FCM_APP",
    "FCM_PATH",
    "FCM_PAYLOAD",
    "FCM_PROJECT",
    "PAYLOAD",
    "PROVIDERS",
    "TOKEN_RING",
    "TOPIC",
    "Credentials",
    "Header",
    "HttpRequest",
    "build_fcm_requests",
    "build_requests",
    "device_token",
    "fcm_device_token",
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
_ALERT = {"title": "Your cart", "body": "An item you saved is back in stock"}
PAYLOAD: dict[str, Any] = {"aps": {"alert": _ALERT}}
FCM_APP = "bench-android"
FCM_PROJECT = "bench-project"
FCM_PATH = f"/v1/projects/{FCM_PROJECT}/messages:send"
FCM_PAYLOAD: dict[str, Any] = {"notification": _ALERT}
FCM_ACCESS_TOKEN = b"Bearer ya29.bench-" + b"x" * 200  # the length of Google's access tokens
PROVIDERS = ("apns", "fcm")

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
    service_account_file: str
    oauth_port: int
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
    """The devkit in ``directory``: a CA, a localhost certificate, a .p8 key, a service account."""
    setup = make_dev_setup(directory, apns_topic=TOPIC, fcm_project=FCM_PROJECT)
    return Credentials(
        directory=setup.directory,
        ca_file=setup.ca_file,
        server_cert_file=setup.server_cert_file,
        server_key_file=setup.server_key_file,
        key_file=setup.apns_key_file,
        service_account_file=setup.service_account_file,
        oauth_port=setup.oauth_port,
        key_id=setup.apns_key_id,
        team_id=setup.apns_team_id,
    )


def device_token(n: int) -> str:
    """The ``n``-th device token of the ring (lowercase hex, as the sink's file names)."""
    return apns_token("ok", n % TOKEN_RING)


def fcm_device_token(n: int) -> str:
    """The ``n``-th FCM registration token: 163 characters, ``<22>:APA91b<134>`` as Firebase's."""
    tail = f"{n:016x}" * 9
    return f"bench{n:017d}:APA91b{tail[:134]}"


def notification(n: int, provider: str = "apns") -> Notification:
    """The ``n``-th notification of the end-to-end queue, for ``provider``'s app."""
    if provider == "fcm":
        return Notification(
            app=FCM_APP, platform="fcm", device_token=fcm_device_token(n), payload=FCM_PAYLOAD
        )
    return Notification(app=APP, platform="apns", device_token=device_token(n), payload=PAYLOAD)


def _claimed_row(n: int, now: dt.datetime, provider: str = "apns") -> ClaimedRow:
    n_ = notification(n, provider)
    return ClaimedRow.fresh(
        id=n + 1,
        app=n_.app,
        platform=n_.platform,
        device_token=n_.device_token,
        payload=codec.dumps(n_.payload).decode(),
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


def build_fcm_requests(authority: str, count: int) -> list[HttpRequest]:
    """``count`` requests as pushgres's FCM sender sends them (builder output + access token)."""
    builder = FcmRequestBuilder(authority=authority, project_id=FCM_PROJECT)
    now = dt.datetime.now(dt.UTC)
    auth = (b"authorization", FCM_ACCESS_TOKEN)
    requests: list[HttpRequest] = []
    for n in range(count):
        built = builder.build(_claimed_row(n, now, "fcm"), now=now)
        if isinstance(built, Outcome):
            raise ValueError(f"the benchmark request is invalid: {built.reason} {built.detail}")
        requests.append(([*built.headers, auth], built.body))
    return requests


def static_headers(request: HttpRequest) -> list[str]:
    """The regular (non-pseudo) headers of ``request`` as ``name: value`` strings."""
    headers: Sequence[Header] = request[0]
    return [f"{k.decode()}: {v.decode()}" for k, v in headers if not k.startswith(b":")]
