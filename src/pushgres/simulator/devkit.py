"""Test and demo credentials, TLS material, and device tokens that trigger each outcome.

Everything is generated locally with ``cryptography``:

* :func:`generate_ca`: a CA (``ca.pem``) and a server certificate for ``localhost``,
  ``127.0.0.1``, ``api.push.apple.com``, ``api.sandbox.push.apple.com``,
  ``fcm.googleapis.com`` and ``oauth2.googleapis.com``. Clients trust the CA file;
  certificate verification stays on everywhere.
* :func:`generate_apns_key`: an APNs signing key (``AuthKey_<kid>.p8``, PKCS#8 PEM, EC P-256)
  and its public key for the simulator.
* :func:`generate_service_account`: a Google service-account JSON (the key file of Google's
  "Using OAuth 2.0 for Server to Server Applications",
  developers.google.com/identity/protocols/oauth2/service-account; RSA 2048 PKCS#8 key) whose ``token_uri`` points at the simulator's OAuth endpoint.
* :func:`generate_apns_client_cert`: an APNs provider certificate for certificate auth (subject
  UID = bundle id, signed by the CA; PEM and password-protected PKCS#12) carrying Apple's
  environment and topic extensions (:data:`APNS_CERT_OIDS`): for the sandbox, for production,
  or "Sandbox & Production" with its topics list; any validity period, expired included.
* :func:`make_dev_setup`: all of the above in one folder (reused when present) plus the
  matching :class:`~pushgres.simulator.config.SimulatorConfig` (``DevSetup.config``).

Device tokens that trigger each outcome, without registering anything:

* ``apns_token(kind, n)``: 64 lowercase hex characters, ``APNS_KINDS[kind]`` (8 hex digits)
  followed by ``n`` in 56 hex digits. Kinds: ``ok``; ``Unregistered``/``ExpiredToken`` (410
  with ``timestamp`` one day ago); ``BadDeviceToken``/``DeviceTokenNotForTopic`` (400);
  ``TooManyRequests`` (429); ``InternalServerError`` (500); ``ServiceUnavailable`` (503);
  ``Shutdown`` (503, then a graceful GOAWAY); ``flaky`` (503 twice, then 200); ``slow`` (200
  after ``slow_ms``, default 2 s); ``blackhole`` (never answered); ``refused`` (RST_STREAM
  REFUSED_STREAM once, then 200); ``reset`` (processed and counted, then RST_STREAM
  INTERNAL_ERROR).
* ``fcm_token(kind, n)``: ``<kind>_<n as 16 digits>:sim`` (it passes FCM's token format).
  Kinds: ``ok``, ``UNREGISTERED`` (404), ``INVALID_ARGUMENT`` (400, token not valid),
  ``SENDER_ID_MISMATCH`` (403), ``THIRD_PARTY_AUTH_ERROR`` (401 + ``ApnsError`` 403),
  ``apns_unregistered`` (400 + ``ApnsError`` 410), ``QUOTA_EXCEEDED`` (429 + Retry-After),
  ``UNAVAILABLE`` (503), ``INTERNAL`` (500), ``flaky`` (503 twice, then 200), ``blackhole``.

``ok`` tokens with different ``n`` are distinct. Any token matching no prefix follows the
simulator's ``unknown_token_policy`` (default: a live token). Registered tokens
(``register``/``POST /_sim/tokens``) take precedence over prefixes.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import pathlib
import random
import secrets
import socket
from dataclasses import dataclass
from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import NameOID

if TYPE_CHECKING:
    from .config import SimulatorConfig

__all__ = [
    "APNS_CERT_OIDS",
    "APNS_KINDS",
    "FCM_KINDS",
    "SERVER_HOSTNAMES",
    "ApnsKey",
    "CaFiles",
    "ClientCertificate",
    "DevSetup",
    "ServiceAccount",
    "apns_kind",
    "apns_token",
    "fcm_kind",
    "fcm_token",
    "free_port",
    "generate_apns_client_cert",
    "generate_apns_key",
    "generate_ca",
    "generate_service_account",
    "make_dev_setup",
]

SERVER_HOSTNAMES = (
    "localhost",
    "api.push.apple.com",
    "api.sandbox.push.apple.com",
    "fcm.googleapis.com",
    "oauth2.googleapis.com",
)

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

# Apple's extensions on APNs provider certificates ("Apple Worldwide Developer Relations
# Certification Practice Statement", apple.com/certificateauthority): the certificate is for
# the development (sandbox) environment, for production, and the topics of a "Sandbox &
# Production" certificate.
APNS_CERT_OIDS: dict[str, x509.ObjectIdentifier] = {
    "sandbox": x509.ObjectIdentifier("1.2.840.113635.100.6.3.1"),
    "production": x509.ObjectIdentifier("1.2.840.113635.100.6.3.2"),
    "topics": x509.ObjectIdentifier("1.2.840.113635.100.6.3.6"),
}
_CERT_ENVIRONMENTS = ("sandbox", "production", "both")


def apns_token(kind: str, n: int) -> str:
    """A 64-hex-digit APNs device token that triggers ``kind`` (``KeyError`` if unknown)."""
    return APNS_KINDS[kind] + f"{n & (2**224 - 1):056x}"


def apns_kind(token: str) -> str:
    """The kind an APNs token triggers by its prefix (``"ok"`` for any other token)."""
    return _APNS_BY_PREFIX.get(token[:8], "ok")


def fcm_token(kind: str, n: int) -> str:
    """An FCM registration token that triggers ``kind`` (``KeyError`` if unknown)."""
    if kind not in FCM_KINDS:
        raise KeyError(kind)
    return f"{kind}_{n:016d}:sim"


def fcm_kind(token: str) -> str:
    """The kind an FCM token triggers by its prefix (``"ok"`` for any other token)."""
    for kind in _FCM_BY_LENGTH:
        if token.startswith(kind + "_"):
            return kind
    return "ok"


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now, for a listener whose URL must be known before it binds.

    Taken below the range the system hands to outgoing connections (Linux:
    ``net.ipv4.ip_local_port_range``), so that no connection made meanwhile can take it; a
    port the system picks (bind to 0) would be from that range, and was seen taken by the time
    the listener bound it.
    """
    low = _ephemeral_low()
    rng = random.SystemRandom()
    for _ in range(200 if low > _FIRST_PORT + 1000 else 0):
        port = rng.randrange(_FIRST_PORT, low)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        chosen: int = s.getsockname()[1]
        return chosen


_FIRST_PORT = 10_000


def _ephemeral_low() -> int:
    """The lowest port of the outgoing-connection range (0 when unknown)."""
    try:
        text = pathlib.Path("/proc/sys/net/ipv4/ip_local_port_range").read_text()
        return int(text.split()[0])
    except (OSError, ValueError, IndexError):
        return 0


@dataclass(frozen=True, slots=True)
class CaFiles:
    """The test CA and the server certificate it signed."""

    ca_file: str
    ca_key_file: str
    server_cert_file: str
    server_key_file: str


@dataclass(frozen=True, slots=True)
class ApnsKey:
    """An APNs token-auth signing key (.p8) and what the simulator needs to verify it."""

    key_file: str
    key_id: str
    team_id: str
    public_key_pem: str


@dataclass(frozen=True, slots=True)
class ServiceAccount:
    """A service-account JSON file and what the OAuth endpoint needs to verify it."""

    file: str
    project_id: str
    client_email: str
    private_key_id: str
    public_key_pem: str
    token_uri: str


@dataclass(frozen=True, slots=True)
class ClientCertificate:
    """An APNs provider certificate (PEM pair and PKCS#12) and its SHA-256 fingerprint."""

    cert_file: str
    key_file: str
    p12_file: str
    p12_password: str
    fingerprint: str


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

    @property
    def token_uri(self) -> str:
        return f"https://127.0.0.1:{self.oauth_port}/token"

    @property
    def config(self) -> SimulatorConfig:
        """The simulator configuration that accepts exactly these credentials."""
        from .config import SimulatorConfig

        return SimulatorConfig(
            ca_file=self.ca_file,
            server_cert_file=self.server_cert_file,
            server_key_file=self.server_key_file,
            teams={
                self.apns_team_id: {
                    "topics": [self.apns_topic],
                    "keys": {
                        self.apns_key_id: {
                            "public_key_pem": self.apns_public_key_pem,
                            "env": "both",
                        }
                    },
                }
            },
            projects={
                self.fcm_project: {
                    "number": "123456789012",
                    "service_accounts": [self.client_email],
                    "api_enabled": True,
                }
            },
            service_accounts={
                self.client_email: {
                    "public_key_pem": self.sa_public_key_pem,
                    "private_key_id": self.private_key_id,
                    "disabled": False,
                }
            },
            oauth_port=self.oauth_port,
        )


def _pem_private(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _pem_public(key: ec.EllipticCurvePublicKey | rsa.RSAPublicKey) -> str:
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()


def _write_secret(path: pathlib.Path, data: bytes) -> None:
    path.write_bytes(data)
    path.chmod(0o600)


def generate_ca(
    directory: str | pathlib.Path, hostnames: tuple[str, ...] = SERVER_HOSTNAMES
) -> CaFiles:
    """Write ``ca.pem``/``ca.key`` and ``server.pem``/``server.key`` (also valid for 127.0.0.1)."""
    folder = pathlib.Path(directory).resolve()
    folder.mkdir(parents=True, exist_ok=True)
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
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = [x509.DNSName(n) for n in hostnames]
    names.append(x509.IPAddress(ipaddress.ip_address("127.0.0.1")))
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=825))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    (folder / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    _write_secret(folder / "ca.key", _pem_private(ca_key))
    (folder / "server.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _write_secret(folder / "server.key", _pem_private(key))
    return CaFiles(
        ca_file=str(folder / "ca.pem"),
        ca_key_file=str(folder / "ca.key"),
        server_cert_file=str(folder / "server.pem"),
        server_key_file=str(folder / "server.key"),
    )


def generate_apns_key(directory: str | pathlib.Path, team_id: str, key_id: str) -> ApnsKey:
    """Write ``AuthKey_<key_id>.p8`` (PKCS#8 PEM, EC P-256), as Apple's portal hands it out."""
    folder = pathlib.Path(directory).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    p8 = folder / f"AuthKey_{key_id}.p8"
    _write_secret(p8, _pem_private(key))
    return ApnsKey(str(p8), key_id, team_id, _pem_public(key.public_key()))


def generate_service_account(
    directory: str | pathlib.Path,
    project_id: str,
    client_email: str,
    token_uri: str,
    *,
    file_name: str = "service-account.json",
) -> ServiceAccount:
    """Write a Google service-account JSON with a fresh RSA 2048 key."""
    folder = pathlib.Path(directory).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private_key_id = secrets.token_hex(20)
    data = {
        "type": "service_account",
        "project_id": project_id,
        "private_key_id": private_key_id,
        "private_key": _pem_private(key).decode(),
        "client_email": client_email,
        "client_id": str(100000000000000000000 + secrets.randbelow(10**19)),
        "auth_uri": "https://accounts.google.com/o/oauth2/auth",
        "token_uri": token_uri,
        "auth_provider_x509_cert_url": "https://www.googleapis.com/oauth2/v1/certs",
        "client_x509_cert_url": "https://www.googleapis.com/robot/v1/metadata/x509/"
        + client_email.replace("@", "%40"),
        "universe_domain": "googleapis.com",
    }
    file = folder / file_name
    _write_secret(file, json.dumps(data, indent=2).encode())
    return ServiceAccount(
        str(file),
        project_id,
        client_email,
        private_key_id,
        _pem_public(key.public_key()),
        token_uri,
    )


def _der(tag: int, content: bytes) -> bytes:
    """One DER element (X.690 section 8.1: identifier, definite length, contents)."""
    n = len(content)
    if n < 0x80:
        return bytes([tag, n]) + content
    size = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(size)]) + size + content


def _topics_extension(topics: tuple[str, ...]) -> bytes:
    """The topics list as Apple encodes it: a SEQUENCE alternating each topic (UTF8String)
    with a SEQUENCE naming its kind (``app``, ``voip``, ``complication``)."""
    parts = b""
    for topic in topics:
        kind = "app"
        for suffix in ("voip", "complication"):
            if topic.endswith("." + suffix):
                kind = suffix
        parts += _der(0x0C, topic.encode()) + _der(0x30, _der(0x0C, kind.encode()))
    return _der(0x30, parts)


def generate_apns_client_cert(
    directory: str | pathlib.Path,
    ca: CaFiles,
    topic: str,
    password: str,
    *,
    name: str = "apns",
    environment: str | None = "both",
    topics: tuple[str, ...] | None = None,
    valid_days: float = 365,
    not_after: dt.datetime | None = None,
) -> ClientCertificate:
    """An APNs provider certificate (subject UID = bundle id) signed by the test CA.

    ``environment`` is what Apple's extensions say the certificate is for: ``sandbox``,
    ``production``, ``both`` (a "Sandbox & Production" certificate, whose topics extension
    lists ``topics``, by default the bundle id and its ``.voip`` and ``.complication``
    topics), or ``None`` (no Apple extension at all). ``topics`` given with one environment
    adds the topics extension too. The certificate expires ``valid_days`` from now, or at
    ``not_after`` (in the past for an expired one). Apple marks its extensions critical; here
    they are not, since OpenSSL (the simulator's TLS) refuses certificates carrying critical
    extensions it does not know.
    """
    if environment not in (*_CERT_ENVIRONMENTS, None):
        raise ValueError(f"environment must be one of {_CERT_ENVIRONMENTS} or None")
    folder = pathlib.Path(directory).resolve()
    ca_key = serialization.load_pem_private_key(
        pathlib.Path(ca.ca_key_file).read_bytes(), password=None
    )
    ca_cert = x509.load_pem_x509_certificate(pathlib.Path(ca.ca_file).read_bytes())
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise TypeError("the test CA key must be an EC key")
    now = dt.datetime.now(dt.UTC)
    expires = not_after or now + dt.timedelta(days=valid_days)
    key = ec.generate_private_key(ec.SECP256R1())
    builder = (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.USER_ID, topic),
                    x509.NameAttribute(NameOID.COMMON_NAME, f"Apple Push Services: {topic}"),
                ]
            )
        )
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(min(now, expires) - dt.timedelta(days=1))
        .not_valid_after(expires)
        .add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
    )
    null = _der(0x05, b"")
    for env in ("sandbox", "production"):
        if environment in (env, "both"):
            builder = builder.add_extension(
                x509.UnrecognizedExtension(APNS_CERT_OIDS[env], null), critical=False
            )
    if environment == "both" or topics is not None:
        listed = topics or (topic, topic + ".voip", topic + ".complication")
        builder = builder.add_extension(
            x509.UnrecognizedExtension(APNS_CERT_OIDS["topics"], _topics_extension(listed)),
            critical=False,
        )
    cert = builder.sign(ca_key, hashes.SHA256())
    cert_file, key_file, p12_file = (
        folder / f"{name}-cert.pem",
        folder / f"{name}-cert.key",
        folder / f"{name}.p12",
    )
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _write_secret(key_file, _pem_private(key))
    p12 = pkcs12.serialize_key_and_certificates(
        name.encode(), key, cert, None, serialization.BestAvailableEncryption(password.encode())
    )
    _write_secret(p12_file, p12)
    return ClientCertificate(
        str(cert_file),
        str(key_file),
        str(p12_file),
        password,
        cert.fingerprint(hashes.SHA256()).hex(),
    )


def make_dev_setup(
    directory: str | pathlib.Path,
    *,
    apns_topic: str = "com.example.app",
    fcm_project: str = "demo-project",
    team_id: str = "TEAM123456",
    key_id: str = "KEY1234567",
    oauth_port: int | None = None,
) -> DevSetup:
    """Generate (or reuse, if present and matching) everything the simulators and a client need.

    The OAuth endpoint is a separate HTTP/1.1 listener whose URL is written into the
    service-account JSON, so its port is fixed here: ``oauth_port`` or a free port.
    """
    folder = pathlib.Path(directory).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    meta_file = folder / "devkit.json"
    if meta_file.exists():
        meta = json.loads(meta_file.read_text())
        if (
            set(meta) == set(DevSetup.__dataclass_fields__)
            and (oauth_port is None or meta["oauth_port"] == oauth_port)
            and (meta["apns_topic"], meta["fcm_project"]) == (apns_topic, fcm_project)
            and (meta["apns_team_id"], meta["apns_key_id"]) == (team_id, key_id)
            and all(pathlib.Path(meta[k]).exists() for k in meta if k.endswith("_file"))
        ):
            return DevSetup(**meta)
    if (folder / "ca.pem").exists() and (folder / "ca.key").exists():
        ca = CaFiles(
            str(folder / "ca.pem"),
            str(folder / "ca.key"),
            str(folder / "server.pem"),
            str(folder / "server.key"),
        )
    else:
        ca = generate_ca(folder)
    apns_key = generate_apns_key(folder, team_id, key_id)
    port = oauth_port or free_port()
    account = generate_service_account(
        folder,
        fcm_project,
        f"sender@{fcm_project}.iam.gserviceaccount.com",
        f"https://127.0.0.1:{port}/token",
    )
    client_cert = generate_apns_client_cert(folder, ca, apns_topic, "sim-" + secrets.token_hex(4))
    setup = DevSetup(
        directory=str(folder),
        ca_file=ca.ca_file,
        server_cert_file=ca.server_cert_file,
        server_key_file=ca.server_key_file,
        apns_key_file=apns_key.key_file,
        apns_key_id=key_id,
        apns_team_id=team_id,
        apns_topic=apns_topic,
        apns_public_key_pem=apns_key.public_key_pem,
        service_account_file=account.file,
        fcm_project=fcm_project,
        client_email=account.client_email,
        private_key_id=account.private_key_id,
        sa_public_key_pem=account.public_key_pem,
        oauth_port=port,
        apns_p12_file=client_cert.p12_file,
        apns_p12_password=client_cert.p12_password,
        apns_cert_file=client_cert.cert_file,
        apns_cert_key_file=client_cert.key_file,
    )
    meta = {name: getattr(setup, name) for name in DevSetup.__dataclass_fields__}
    _write_secret(meta_file, json.dumps(meta, indent=2).encode())
    return setup
