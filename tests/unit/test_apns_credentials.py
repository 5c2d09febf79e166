"""Reading APNs provider certificates: subject, topics, environment and validity, as Apple
encodes them; and the fix tables for credential problems."""

from __future__ import annotations

import datetime as dt
import pathlib
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from pushgres.exceptions import ConfigError
from pushgres.models import Action
from pushgres.providers.apns.credentials import (
    APPLE_OIDS,
    PROBE_DEVICE_TOKEN,
    certificate_info,
    credential_expiry,
)
from pushgres.providers.apns.protocol import check_notification
from pushgres.providers.apns.reasons import APNS_HINTS, APNS_REASONS
from pushgres.providers.apns.reasons import hint_for as apns_hint
from pushgres.providers.fcm.credentials import PROBE_REGISTRATION_TOKEN
from pushgres.providers.fcm.reasons import FCM_HINTS, FCM_STATUSES
from pushgres.providers.fcm.reasons import hint_for as fcm_hint
from pushgres.simulator import devkit

TOPIC = "com.example.app"


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> devkit.CaFiles:
    return devkit.generate_ca(tmp_path_factory.mktemp("ca"))


def _pem(cert: devkit.ClientCertificate) -> bytes:
    return pathlib.Path(cert.cert_file).read_bytes()


def _cert(ca: devkit.CaFiles, tmp: pathlib.Path, **kw: Any) -> devkit.ClientCertificate:
    return devkit.generate_apns_client_cert(tmp, ca, TOPIC, "pw", **kw)


def test_a_sandbox_and_production_certificate(ca: devkit.CaFiles, tmp_path: pathlib.Path) -> None:
    info = certificate_info(_pem(_cert(ca, tmp_path)))
    assert info.uid == TOPIC
    assert "UID=com.example.app" in info.subject
    assert "CN=Apple Push Services: com.example.app" in info.subject
    assert info.environments == {"sandbox", "production"}
    assert info.topics == (TOPIC, f"{TOPIC}.voip", f"{TOPIC}.complication")
    assert info.allows(TOPIC) and info.allows(f"{TOPIC}.voip") and not info.allows("com.other")
    left = info.not_after - dt.datetime.now(dt.UTC)
    assert dt.timedelta(days=364) < left <= dt.timedelta(days=365)


@pytest.mark.parametrize("environment", ["sandbox", "production"])
def test_a_single_environment_certificate(
    ca: devkit.CaFiles, tmp_path: pathlib.Path, environment: str
) -> None:
    info = certificate_info(_pem(_cert(ca, tmp_path, environment=environment)))
    assert info.environments == {environment}
    assert info.topics == ()
    assert info.allows(TOPIC) and not info.allows(f"{TOPIC}.voip")


def test_topics_listed_on_a_sandbox_certificate(ca: devkit.CaFiles, tmp_path: pathlib.Path) -> None:
    cert = _cert(ca, tmp_path, environment="sandbox", topics=(TOPIC, f"{TOPIC}.voip"))
    info = certificate_info(_pem(cert))
    assert info.environments == {"sandbox"}
    assert info.topics == (TOPIC, f"{TOPIC}.voip")


def test_a_certificate_without_apples_extensions(
    ca: devkit.CaFiles, tmp_path: pathlib.Path
) -> None:
    info = certificate_info(_pem(_cert(ca, tmp_path, environment=None)))
    assert info.environments == frozenset() and info.topics == ()
    assert info.uid == TOPIC


def test_validity_period(ca: devkit.CaFiles, tmp_path: pathlib.Path) -> None:
    when = dt.datetime(2027, 3, 4, 5, 6, 7, tzinfo=dt.UTC)
    info = certificate_info(_pem(_cert(ca, tmp_path, not_after=when)))
    assert info.not_after == when and info.not_before < when
    soon = certificate_info(_pem(_cert(ca, tmp_path, valid_days=5)))
    left = soon.not_after - dt.datetime.now(dt.UTC)
    assert dt.timedelta(days=4) < left <= dt.timedelta(days=5)


def _handmade(extensions: list[tuple[str, bytes]], *, uid: str | None = TOPIC) -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    names = [x509.NameAttribute(NameOID.COMMON_NAME, "Apple Push Services")]
    if uid is not None:
        names.insert(0, x509.NameAttribute(NameOID.USER_ID, uid))
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name(names))
        .issuer_name(x509.Name(names))
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=1))
    )
    for name, value in extensions:
        builder = builder.add_extension(
            x509.UnrecognizedExtension(APPLE_OIDS[name], value), critical=False
        )
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


def _der(tag: int, content: bytes) -> bytes:
    if len(content) < 0x80:
        return bytes([tag, len(content)]) + content
    return bytes([tag, 0x81, len(content)]) + content


def _topics_value(*topics: str) -> bytes:
    body = b"".join(_der(0x0C, t.encode()) + _der(0x30, _der(0x0C, b"app")) for t in topics)
    return _der(0x30, body)


def test_the_topics_list_alone_means_sandbox_and_production() -> None:
    info = certificate_info(_handmade([("topics", _topics_value(TOPIC, "com.example.two"))]))
    assert info.environments == {"sandbox", "production"}
    assert info.topics == (TOPIC, "com.example.two")


def test_a_topics_list_wrapped_in_an_octet_string_and_long_lengths() -> None:
    many = [f"com.example.app{i}" for i in range(8)]  # over 127 bytes: long-form lengths
    wrapped = _der(0x04, _topics_value(*many))
    info = certificate_info(_handmade([("production", b"\x05\x00"), ("topics", wrapped)]))
    assert info.environments == {"production"}
    assert info.topics == tuple(many)


@pytest.mark.parametrize("value", [b"", b"\x30", b"\x30\x05\x0c\x03ab", b"\x0c\x02ab", b"\x30\x84"])
def test_a_malformed_topics_list_reads_as_none(value: bytes) -> None:
    info = certificate_info(_handmade([("topics", value)], uid=None))
    assert info.topics == () and info.uid is None


def test_not_a_certificate() -> None:
    with pytest.raises(ConfigError, match="not a valid PEM"):
        certificate_info(b"-----BEGIN CERTIFICATE-----\nnope\n-----END CERTIFICATE-----\n")


def test_credential_expiry_reads_the_certificate_offline(
    ca: devkit.CaFiles, tmp_path: pathlib.Path
) -> None:
    from pushgres.config import AppConfig, PoolConfig
    from pushgres.providers.apns.config import ApnsConfig

    when = dt.datetime(2028, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
    cert = _cert(ca, tmp_path, not_after=when)
    pool = PoolConfig(host="127.0.0.1", port=1, server_hostname="localhost")

    def app(apns: ApnsConfig) -> AppConfig:
        return AppConfig(name="a", platform="apns", pool=pool, provider=apns)

    base: dict[str, Any] = {"topic": TOPIC, "environment": "production", "auth": "certificate"}
    p12 = ApnsConfig(**base, p12_file=cert.p12_file, p12_password="pw")
    pem = ApnsConfig(**base, cert_file=cert.cert_file, cert_key_file=cert.key_file)
    wrong = ApnsConfig(**base, p12_file=cert.p12_file, p12_password="wrong")
    token = ApnsConfig(topic=TOPIC, environment="production", auth="token", key_file="x")
    assert credential_expiry(app(p12)) == when
    assert credential_expiry(app(pem)) == when
    assert credential_expiry(app(wrong)) is None  # unreadable: reported when the daemon loads it
    assert credential_expiry(app(token)) is None


def test_the_probe_tokens_are_well_formed_and_never_issued() -> None:
    from pushgres.models import Notification

    n = Notification(app="a", platform="apns", device_token=PROBE_DEVICE_TOKEN, payload={"aps": {}})
    assert check_notification(n) is None  # a well-formed APNs token
    assert set(PROBE_DEVICE_TOKEN) == {"0"} and len(PROBE_DEVICE_TOKEN) == 64
    assert "." in PROBE_REGISTRATION_TOKEN  # no FCM registration token has a dot


def test_every_credential_reason_has_a_fix() -> None:
    credential_reasons = {
        "BadCertificate",
        "BadCertificateEnvironment",
        "BadEnvironmentKeyIdInToken",
        "BadEnvironmentKeyInToken",
        "InvalidProviderToken",
        "MissingProviderToken",
        "Forbidden",
        "TopicDisallowed",
    }
    assert credential_reasons <= set(APNS_HINTS) <= set(APNS_REASONS)
    assert all(APNS_REASONS[r] is Action.CFG for r in credential_reasons)
    assert "`environment`" in (apns_hint("BadEnvironmentKeyIdInToken") or "")
    assert "`environment`" in (apns_hint("BadCertificateEnvironment") or "")
    assert apns_hint("Unregistered") is None and apns_hint(None) is None
    for code in ("PERMISSION_DENIED", "NOT_FOUND", "UNAUTHENTICATED"):
        assert code in FCM_STATUSES and FCM_HINTS[code]
    assert "`project_id`" in (fcm_hint("SENDER_ID_MISMATCH") or "")
    assert fcm_hint("invalid_grant") and fcm_hint("QUOTA_EXCEEDED") is None
