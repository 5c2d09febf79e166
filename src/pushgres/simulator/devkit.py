"""Test and demo credentials, TLS material, and device tokens that trigger each outcome.

Everything is generated locally with ``cryptography``: a CA and a server certificate for
``localhost``/``127.0.0.1`` (clients trust the CA file; verification stays on), an APNs ES256
signing key (.p8), and a Google service-account JSON whose ``token_uri`` points at the
simulator's OAuth endpoint.

Device tokens: ``apns_token(kind, n)`` is 64 lowercase hex characters — an 8-digit prefix
naming the kind, then ``n`` in hex; ``fcm_token(kind, n)`` is ``<kind>_<n>:sim``. The
simulators recognise the prefixes (see ``APNS_KINDS`` / ``FCM_KINDS``); any other token is a
live one. ``ok`` tokens with different ``n`` are distinct.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import pathlib
import secrets
import socket
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import NameOID

__all__ = [
    "APNS_KINDS",
    "FCM_KINDS",
    "DevSetup",
    "apns_kind",
    "apns_token",
    "fcm_kind",
    "fcm_token",
    "free_port",
    "make_dev_setup",
]

# kind → token prefix (8 hex digits). What each kind does is in apns.py.
APNS_KINDS: dict[str, str] = {
    "ok": "0c0c0c0c",
    "Unregistered": "de000410",
    "ExpiredToken": "de010410",
    "BadDeviceToken": "ba000400",
    "DeviceTokenNotForTopic": "ba010400",
    "TooManyRequests": "70000429",
    "InternalServerError": "50000500",
    "ServiceUnavailable": "50000503",
    "Shutdown": "50010503",
    "flaky": "f1a00503",  # 503 ServiceUnavailable twice, then 200
    "slow": "5100d000",  # answered after 2 s
    "blackhole": "b1ac0000",  # never answered
    "refused": "4ef00000",  # RST_STREAM REFUSED_STREAM once, then 200
    "reset": "4e500000",  # processed (counted as accepted), then RST_STREAM INTERNAL_ERROR
}
_APNS_BY_PREFIX = {prefix: kind for kind, prefix in APNS_KINDS.items()}

FCM_KINDS = (
    "ok",
    "UNREGISTERED",
    "INVALID_ARGUMENT",
    "SENDER_ID_MISMATCH",
    "THIRD_PARTY_AUTH_ERROR",
    "apns_unregistered",
    "QUOTA_EXCEEDED",
    "UNAVAILABLE",
    "INTERNAL",
    "flaky",
    "blackhole",
)


_FCM_BY_LENGTH = sorted(FCM_KINDS, key=len, reverse=True)


def apns_token(kind: str, n: int) -> str:
    return APNS_KINDS[kind] + f"{n & (2**224 - 1):056x}"


def apns_kind(token: str) -> str:
    return _APNS_BY_PREFIX.get(token[:8], "ok")


def fcm_token(kind: str, n: int) -> str:
    if kind not in FCM_KINDS:
        raise KeyError(kind)
    return f"{kind}_{n:012d}:sim"


def fcm_kind(token: str) -> str:
    for kind in _FCM_BY_LENGTH:
        if token.startswith(kind + "_"):
            return kind
    return "ok"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass(frozen=True, slots=True)
class DevSetup:
    """Where the generated material lives, and the identities the simulators accept."""

    directory: str
    ca_file: str
    server_cert_file: str
    server_key_file: str
    apns_key_file: str
    apns_key_id: str
    apns_team_id: str
    apns_topic: str
    apns_public_key_pem: str
    service_account_file: str
    fcm_project: str
    client_email: str
    private_key_id: str
    sa_public_key_pem: str
    oauth_port: int
    apns_p12_file: str
    apns_p12_password: str
    apns_cert_file: str
    apns_cert_key_file: str


def _pem_private(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _write_tls(folder: pathlib.Path) -> None:
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "pushgres simulator CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    names = [
        x509.DNSName(n)
        for n in (
            "localhost",
            "api.push.apple.com",
            "api.sandbox.push.apple.com",
            "fcm.googleapis.com",
            "oauth2.googleapis.com",
        )
    ]
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=825))
        .add_extension(
            x509.SubjectAlternativeName(
                [*names, x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    (folder / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (folder / "ca.key").write_bytes(_pem_private(ca_key))
    (folder / "ca.key").chmod(0o600)
    (folder / "server.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (folder / "server.key").write_bytes(_pem_private(key))
    (folder / "server.key").chmod(0o600)


def _write_client_certificate(folder: pathlib.Path, topic: str, password: str) -> None:
    """An APNs provider certificate (subject UID = bundle id) signed by the test CA."""
    ca_key = serialization.load_pem_private_key((folder / "ca.key").read_bytes(), password=None)
    ca = x509.load_pem_x509_certificate((folder / "ca.pem").read_bytes())
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    now = dt.datetime.now(dt.UTC)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.USER_ID, topic),
                    x509.NameAttribute(NameOID.COMMON_NAME, f"Apple Push Services: {topic}"),
                ]
            )
        )
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=365))
        .add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    (folder / "apns-cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (folder / "apns-cert.key").write_bytes(_pem_private(key))
    (folder / "apns-cert.key").chmod(0o600)
    p12 = pkcs12.serialize_key_and_certificates(
        b"apns",
        key,
        cert,
        None,
        serialization.BestAvailableEncryption(password.encode()),
    )
    (folder / "apns.p12").write_bytes(p12)
    (folder / "apns.p12").chmod(0o600)


def make_dev_setup(
    directory: str | pathlib.Path,
    *,
    apns_topic: str = "com.example.app",
    fcm_project: str = "demo-project",
    team_id: str = "TEAM123456",
    key_id: str = "KEY1234567",
    oauth_port: int | None = None,
) -> DevSetup:
    """Generate (or reuse, if present) everything the simulators and a client need."""
    folder = pathlib.Path(directory).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    meta_file = folder / "devkit.json"
    if meta_file.exists():
        meta = json.loads(meta_file.read_text())
        if (oauth_port is None or meta.get("oauth_port") == oauth_port) and set(meta) == set(
            DevSetup.__dataclass_fields__
        ):
            return DevSetup(**meta)
    if not ((folder / "ca.pem").exists() and (folder / "ca.key").exists()):
        _write_tls(folder)
    apns_key = ec.generate_private_key(ec.SECP256R1())
    p8 = folder / f"AuthKey_{key_id}.p8"
    p8.write_bytes(_pem_private(apns_key))
    p8.chmod(0o600)
    apns_public = apns_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    sa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    port = oauth_port or free_port()
    client_email = f"sender@{fcm_project}.iam.gserviceaccount.com"
    private_key_id = "sim" + "0" * 37
    sa = {
        "type": "service_account",
        "project_id": fcm_project,
        "private_key_id": private_key_id,
        "private_key": _pem_private(sa_key).decode(),
        "client_email": client_email,
        "client_id": "100000000000000000001",
        "auth_uri": "https://accounts.google.com/o/oauth2/auth",
        "token_uri": f"https://127.0.0.1:{port}/token",
        "auth_provider_x509_cert_url": "https://www.googleapis.com/oauth2/v1/certs",
        "client_x509_cert_url": "https://www.googleapis.com/robot/v1/metadata/x509/sender",
        "universe_domain": "googleapis.com",
    }
    p12_password = "sim-" + secrets.token_hex(4)
    _write_client_certificate(folder, apns_topic, p12_password)
    sa_file = folder / "service-account.json"
    sa_file.write_text(json.dumps(sa, indent=2))
    sa_file.chmod(0o600)
    setup = DevSetup(
        directory=str(folder),
        ca_file=str(folder / "ca.pem"),
        server_cert_file=str(folder / "server.pem"),
        server_key_file=str(folder / "server.key"),
        apns_key_file=str(p8),
        apns_key_id=key_id,
        apns_team_id=team_id,
        apns_topic=apns_topic,
        apns_public_key_pem=apns_public.decode(),
        service_account_file=str(sa_file),
        fcm_project=fcm_project,
        client_email=client_email,
        private_key_id=private_key_id,
        sa_public_key_pem=sa_key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode(),
        oauth_port=port,
        apns_p12_file=str(folder / "apns.p12"),
        apns_p12_password=p12_password,
        apns_cert_file=str(folder / "apns-cert.pem"),
        apns_cert_key_file=str(folder / "apns-cert.key"),
    )
    meta_file.write_text(
        json.dumps(setup.__dict__ if hasattr(setup, "__dict__") else _asdict(setup))
    )
    return setup


def _asdict(setup: DevSetup) -> dict[str, object]:
    return {name: getattr(setup, name) for name in setup.__dataclass_fields__}
