"""APNs credential checks: what an app's token key or certificate is, and whether Apple takes it.

Offline first. A token key must be an EC P-256 PKCS#8 key (the ``.p8`` file Apple hands out)
with a 10-character key id and team id ("Establishing a token-based connection to APNs"). A
certificate is read for its subject, its topic (the subject's UID, and the topics list of a
"Sandbox & Production" certificate), the environment Apple's extensions say it is for, and
its validity period ("Establishing a certificate-based connection to APNs"; the extensions
are Apple's: ``1.2.840.113635.100.6.3.1`` development/sandbox, ``…6.3.2`` production,
``…6.3.6`` the topics list).

Then one live request, through the same pool, TLS context and request builder as the daemon,
to a well-formed device token no device can hold (all zero bits). APNs checks the credential
and the topic before the device token, so ``BadDeviceToken`` proves both are accepted while
nothing is delivered; ``InvalidProviderToken``, ``BadCertificateEnvironment``,
``TopicDisallowed`` and the like name what is wrong (Apple, "Handling notification responses
from APNs"), and :data:`~pushgres.providers.apns.reasons.APNS_HINTS` says how to fix it.
"""

from __future__ import annotations

import datetime as dt
import os
import re
from dataclasses import dataclass
from typing import Final

from cryptography import x509

from ...config import AppConfig
from ...der import sequence_strings
from ...exceptions import ConfigError, RequestTimeout, TransportError
from ...http2.pool import Response
from ...http2.tls import make_ssl_context
from ...models import Action, ClaimedRow, Request
from ..credentials import Check, CredentialReport
from ..pools import authority, new_pool
from .auth import ClientCertificate, ProviderToken, load_client_certificate
from .config import ApnsConfig
from .protocol import NEVER_INDEXED_HEADERS, ApnsRequestBuilder, parse_response
from .reasons import APNS_HINTS

__all__ = [
    "APPLE_OIDS",
    "PROBE_DEVICE_TOKEN",
    "CertificateInfo",
    "certificate_info",
    "check_credentials",
    "credential_expiry",
]

PROBE_DEVICE_TOKEN: Final = "0" * 64
"""The live probe's device token: well formed, and never issued to a device."""

APPLE_OIDS: Final = {
    "sandbox": x509.ObjectIdentifier("1.2.840.113635.100.6.3.1"),
    "production": x509.ObjectIdentifier("1.2.840.113635.100.6.3.2"),
    "topics": x509.ObjectIdentifier("1.2.840.113635.100.6.3.6"),
}
"""Apple's provider-certificate extensions: for development (sandbox), for production, and
the topics list of a "Sandbox & Production" certificate."""

# Answers about the device token: APNs got past the credential and topic checks to reach it.
_PROVES_CREDENTIAL = frozenset({"BadDeviceToken", "Unregistered", "ExpiredToken"})
_P8_NAME = re.compile(r"AuthKey_([A-Z0-9]{10})\.p8")
_CLOSE_TIMEOUT_S: Final = 0.5
_CLOSED_AFTER_HANDSHAKE: Final = "closed before the server's SETTINGS"
_ENVIRONMENTS = ("sandbox", "production")


@dataclass(frozen=True, slots=True, kw_only=True)
class CertificateInfo:
    """What an APNs provider certificate says about itself."""

    subject: str
    """The subject as RFC 4514 text (``UID=com.example.app,CN=Apple Push Services: …``)."""
    uid: str | None
    """The subject's UID: the bundle id the certificate was made for."""
    environments: frozenset[str]
    """``sandbox`` and/or ``production``; empty when the certificate does not say."""
    topics: tuple[str, ...]
    """The topics list of a "Sandbox & Production" certificate; empty when absent."""
    not_before: dt.datetime
    not_after: dt.datetime

    def allows(self, topic: str) -> bool:
        """Whether pushes to ``topic`` are within the certificate."""
        return topic in self.topics or topic == self.uid


def certificate_info(cert_pem: bytes) -> CertificateInfo:
    """Read the first certificate of a PEM text.

    Raises
    ------
    ConfigError
        The text holds no valid PEM certificate.
    """
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
    except ValueError:
        raise ConfigError("the certificate is not a valid PEM X.509 certificate") from None
    uids = cert.subject.get_attributes_for_oid(x509.NameOID.USER_ID)
    found: dict[str, bytes] = {}
    for ext in cert.extensions:
        for name, oid in APPLE_OIDS.items():
            if ext.oid == oid and isinstance(ext.value, x509.UnrecognizedExtension):
                found[name] = ext.value.value
    environments = frozenset(env for env in _ENVIRONMENTS if env in found)
    topics = _topics(found["topics"]) if "topics" in found else ()
    if not environments and "topics" in found:
        environments = frozenset(_ENVIRONMENTS)  # the topics list marks "Sandbox & Production"
    return CertificateInfo(
        subject=cert.subject.rfc4514_string(),
        uid=str(uids[0].value) if uids else None,
        environments=environments,
        topics=topics,
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
    )


def _topics(value: bytes) -> tuple[str, ...]:
    """The topics in the ``…6.3.6`` extension: a DER SEQUENCE alternating each topic
    (UTF8String) with a SEQUENCE of its kinds; () when it cannot be read."""
    return tuple(sequence_strings(value))


def _config(app: AppConfig) -> ApnsConfig:
    apns = app.provider
    assert isinstance(apns, ApnsConfig)
    return apns


def _load_certificate(apns: ApnsConfig) -> ClientCertificate:
    return load_client_certificate(
        p12_file=apns.p12_file,
        p12_password=apns.p12_password,
        cert_file=apns.cert_file,
        cert_key_file=apns.cert_key_file,
    )


def credential_expiry(app: AppConfig) -> dt.datetime | None:
    """A certificate app's notAfter; None for a token key (it does not expire) or when the
    certificate cannot be read (the daemon reports that when it loads it)."""
    apns = _config(app)
    if apns.auth != "certificate":
        return None
    try:
        return certificate_info(_load_certificate(apns).cert_pem).not_after
    except ConfigError:
        return None


class _Findings:
    """Checks in order, with the fix for each failed one; the first failure's fix wins."""

    def __init__(self) -> None:
        self.checks: list[Check] = []
        self.hint: str | None = None

    def add(self, name: str, ok: bool, detail: str, hint: str | None = None) -> bool:
        self.checks.append(Check(name, ok, detail))
        if not ok and self.hint is None:
            self.hint = hint
        return ok


def _days(delta: dt.timedelta) -> str:
    days = delta.days
    return f"{days} day{'s' if days != 1 else ''}"


async def check_credentials(
    app: AppConfig, *, timeout_s: float, now: dt.datetime
) -> CredentialReport:
    """The app's token key or certificate, checked offline and then by one live request."""
    apns = _config(app)
    found = _Findings()
    if apns.auth == "token":
        token = _check_key(apns, found)
        if token is None:
            return CredentialReport.from_checks(
                app, "token key", found.checks, summary="", hint=found.hint
            )
        await _probe(app, apns, found, token=token, cert=None, timeout_s=timeout_s, now=now)
        summary = (
            f"key {apns.key_id} of team {apns.team_id} accepted for {apns.topic} "
            f"({apns.environment})"
        )
        return CredentialReport.from_checks(
            app, "token key", found.checks, summary=summary, hint=found.hint
        )
    try:
        cert = _load_certificate(apns)
        info = certificate_info(cert.cert_pem)
    except ConfigError as exc:
        found.add(
            "certificate",
            False,
            str(exc),
            "point `p12_file` (with its password) or `cert_file` and `cert_key_file` at the "
            "app's APNs certificate",
        )
        return CredentialReport.from_checks(
            app, "certificate", found.checks, summary="", hint=found.hint
        )
    _check_certificate(apns, info, found, now)
    await _probe(app, apns, found, token=None, cert=cert, timeout_s=timeout_s, now=now)
    summary = f"certificate for {info.uid or apns.topic} accepted ({apns.environment})"
    return CredentialReport.from_checks(
        app,
        "certificate",
        found.checks,
        summary=summary,
        expires_at=info.not_after,
        hint=found.hint,
    )


def _check_key(apns: ApnsConfig, found: _Findings) -> ProviderToken | None:
    assert apns.key_file and apns.key_id and apns.team_id
    name = os.path.basename(apns.key_file)
    try:
        token = ProviderToken(
            key_file=apns.key_file,
            key_id=apns.key_id,
            team_id=apns.team_id,
            refresh_s=apns.token_refresh_s,
        )
    except ConfigError as exc:
        found.add(
            "key",
            False,
            str(exc),
            "point `key_file` at the .p8 key downloaded from the developer account (Keys)",
        )
        return None
    found.add("key", True, f"EC P-256 key in {name}")
    named = _P8_NAME.fullmatch(name)
    if named and named.group(1) != apns.key_id:
        found.add(
            "key id",
            False,
            f"{name} is named for key {named.group(1)}, but key_id is {apns.key_id}",
            "set `key_id` to the key's id (Apple names the file AuthKey_<key id>.p8)",
        )
    else:
        found.add("key id", True, f"{apns.key_id}")
    found.add("team id", True, f"{apns.team_id}")
    return token


def _check_certificate(
    apns: ApnsConfig, info: CertificateInfo, found: _Findings, now: dt.datetime
) -> None:
    found.add("subject", True, info.subject)
    listed = f"; topics: {', '.join(info.topics)}" if info.topics else ""
    if info.allows(apns.topic):
        found.add("topic", True, f"{apns.topic} (UID {info.uid}{listed})")
    else:
        found.add(
            "topic",
            False,
            f"topic {apns.topic} is not in the certificate (UID {info.uid}{listed})",
            "set `topic` to the certificate's bundle id (its UID), or use the certificate of "
            "the app that `topic` names",
        )
    if not info.environments:
        found.add("environment", True, "not stated by the certificate (APNs decides)")
    else:
        stated = " and ".join(e for e in _ENVIRONMENTS if e in info.environments)
        if apns.environment in info.environments:
            found.add("environment", True, f"for {stated}")
        else:
            found.add(
                "environment",
                False,
                f"the certificate is for {stated} only; the app is configured for "
                f"{apns.environment}",
                APNS_HINTS["BadCertificateEnvironment"],
            )
    until = info.not_after.strftime("%Y-%m-%d %H:%M UTC")
    if now < info.not_before:
        since = info.not_before.strftime("%Y-%m-%d %H:%M UTC")
        found.add(
            "validity",
            False,
            f"not valid before {since}",
            "check the host's clock, or wait for the certificate's start",
        )
    elif now >= info.not_after:
        found.add(
            "validity",
            False,
            f"expired on {until}",
            "renew the certificate in the developer account and replace the file",
        )
    else:
        found.add("validity", True, f"until {until} ({_days(info.not_after - now)} left)")


async def _probe(
    app: AppConfig,
    apns: ApnsConfig,
    found: _Findings,
    *,
    token: ProviderToken | None,
    cert: ClientCertificate | None,
    timeout_s: float,
    now: dt.datetime,
) -> None:
    """One request to :data:`PROBE_DEVICE_TOKEN` through the daemon's pool and TLS context."""
    where = f"{app.pool.host}:{app.pool.port}"
    try:
        ssl_context = make_ssl_context(
            ca_file=app.pool.ca_file,
            client_cert_pem=cert.cert_pem if cert else None,
            client_key_pem=cert.key_pem if cert else None,
        )
    except ConfigError as exc:
        found.add(
            "APNs",
            False,
            str(exc),
            "check `ca_file`, and that the certificate and its private key belong together",
        )
        return
    builder = ApnsRequestBuilder(authority=authority(app.pool), topic=apns.topic)
    request = builder.build(
        ClaimedRow.fresh(
            id=0,
            app=app.name,
            platform=app.platform,
            device_token=PROBE_DEVICE_TOKEN,
            payload='{"aps":{}}',
            now=now,
            priority=5,
        ),
        now=now,
    )
    assert isinstance(request, Request)
    headers = list(request.headers)
    if token is not None:
        headers.append((b"authorization", token.header()))
    pool = new_pool(app, ssl_context, never_indexed=NEVER_INDEXED_HEADERS)
    await pool.start()
    try:
        (result,) = await pool.send_batch([(headers, request.body)], timeout_s=timeout_s)
    finally:
        await pool.aclose(_CLOSE_TIMEOUT_S)
    if isinstance(result, TransportError):
        _transport_failure(result, where, timeout_s, found, certificate=cert is not None)
        return
    _answer(result, apns, found)


def _answer(response: Response, apns: ApnsConfig, found: _Findings) -> None:
    outcome = parse_response(response.status, response.headers, response.body)
    target = f"{apns.topic} in {apns.environment}"
    if outcome.action is Action.SENT:
        found.add("APNs", True, f"accepted for {target}")
    elif outcome.reason in _PROVES_CREDENTIAL:
        found.add("APNs", True, f"accepted for {target} ({outcome.reason} for the probe token)")
    else:
        hint = APNS_HINTS.get(outcome.reason or "")
        if hint is None and outcome.action is Action.WAIT:
            hint = "APNs is unavailable or throttling: try again later"
        found.add("APNs", False, f"{response.status} {outcome.reason} for {target}", hint)


def _transport_failure(
    exc: TransportError, where: str, timeout_s: float, found: _Findings, *, certificate: bool
) -> None:
    text = str(exc)
    if isinstance(exc, RequestTimeout):
        found.add(
            "APNs",
            False,
            f"no answer from {where} within {timeout_s:g}s",
            "APNs does not answer: check network access to the endpoint (port 443 or 2197)",
        )
        return
    detail = f"{type(exc).__name__}: {text}"
    if certificate and ("certificate" in text.lower() or _CLOSED_AFTER_HANDSHAKE in text):
        # A server refusing a client certificate under TLS 1.3 may just close the connection
        # after the handshake: the alert naming the cause is not always seen by the client.
        detail = f"APNs refused the TLS connection with this certificate ({detail})"
        hint = (
            "APNs refused the certificate: renew it if it expired, else use the app's current "
            "APNs certificate, issued by Apple"
        )
    else:
        hint = "check `endpoint`, `ca_file` and network access to the endpoint"
    found.add("APNs", False, detail, hint)
