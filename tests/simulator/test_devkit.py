"""Generated credentials, TLS material and the device-token scheme."""

from __future__ import annotations

import asyncio
import contextlib
import json
import pathlib
import re
import ssl

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import pkcs12

from pushgres.simulator import Simulators, devkit

FCM_FORMAT = re.compile(r"^[A-Za-z0-9_:\-]{20,4096}$")


def test_apns_tokens() -> None:
    for kind in devkit.APNS_KINDS:
        token = devkit.apns_token(kind, 7)
        assert re.fullmatch(r"[0-9a-f]{64}", token)
        assert devkit.apns_kind(token) == kind
    oks = {devkit.apns_token("ok", n) for n in range(1000)}
    assert len(oks) == 1000
    assert len(set(devkit.APNS_KINDS.values())) == len(devkit.APNS_KINDS)
    assert devkit.apns_kind("ab" * 32) == "ok"
    with pytest.raises(KeyError):
        devkit.apns_token("nope", 1)


def test_fcm_tokens() -> None:
    for kind in devkit.FCM_KINDS:
        token = devkit.fcm_token(kind, 12)
        assert FCM_FORMAT.match(token), token
        assert devkit.fcm_kind(token) == kind
    assert len({devkit.fcm_token("ok", n) for n in range(1000)}) == 1000
    assert devkit.fcm_kind("dGhpcyBpcyBhIHRva2Vu:APA91b") == "ok"


def test_generated_material(tmp_path: pathlib.Path) -> None:
    ca = devkit.generate_ca(tmp_path)
    cert = x509.load_pem_x509_certificate(pathlib.Path(ca.server_cert_file).read_bytes())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(devkit.SERVER_HOSTNAMES) <= set(names.get_values_for_type(x509.DNSName))
    assert "127.0.0.1" in {str(ip) for ip in names.get_values_for_type(x509.IPAddress)}

    key = devkit.generate_apns_key(tmp_path, "TEAM123456", "ABCDEFGHIJ")
    assert pathlib.Path(key.key_file).name == "AuthKey_ABCDEFGHIJ.p8"
    pem = pathlib.Path(key.key_file).read_bytes()
    assert pem.startswith(b"-----BEGIN PRIVATE KEY-----")  # PKCS#8
    private = serialization.load_pem_private_key(pem, password=None)
    assert isinstance(private, ec.EllipticCurvePrivateKey) and private.curve.name == "secp256r1"

    account = devkit.generate_service_account(
        tmp_path, "p1", "a@p1.iam.gserviceaccount.com", "https://127.0.0.1:1/token"
    )
    data = json.loads(pathlib.Path(account.file).read_text())
    assert data["type"] == "service_account" and data["token_uri"] == "https://127.0.0.1:1/token"
    for field in ("project_id", "private_key_id", "client_email", "client_id", "auth_uri"):
        assert data[field]
    rsa_key = serialization.load_pem_private_key(data["private_key"].encode(), password=None)
    assert isinstance(rsa_key, rsa.RSAPrivateKey) and rsa_key.key_size == 2048
    assert pathlib.Path(account.file).stat().st_mode & 0o077 == 0

    client = devkit.generate_apns_client_cert(tmp_path, ca, "com.example.app", "secret")
    _, p12_cert, _ = pkcs12.load_key_and_certificates(
        pathlib.Path(client.p12_file).read_bytes(), b"secret"
    )
    assert p12_cert is not None
    assert (
        p12_cert.subject.get_attributes_for_oid(x509.NameOID.USER_ID)[0].value == "com.example.app"
    )


async def test_server_certificate_verifies_for_apple_and_google_names(
    dev_setup: devkit.DevSetup,
) -> None:
    async with Simulators(dev_setup) as sims:
        for hostname in ("api.push.apple.com", "fcm.googleapis.com", "localhost"):
            ctx = ssl.create_default_context(cafile=sims.ca_file)
            ctx.set_alpn_protocols(["h2"])
            _, writer = await asyncio.open_connection(
                "127.0.0.1", sims.fcm_port, ssl=ctx, server_hostname=hostname
            )
            assert writer.get_extra_info("ssl_object").selected_alpn_protocol() == "h2"
            writer.close()
            with contextlib.suppress(ssl.SSLError, ConnectionError):
                await writer.wait_closed()


def test_make_dev_setup_is_reused(tmp_path: pathlib.Path) -> None:
    first = devkit.make_dev_setup(tmp_path)
    assert devkit.make_dev_setup(tmp_path) == first
    other = devkit.make_dev_setup(tmp_path, fcm_project="other-project")
    assert other.fcm_project == "other-project" and other.ca_file == first.ca_file
    config = other.config
    assert config.projects["other-project"]["service_accounts"] == [other.client_email]
    assert json.loads(pathlib.Path(other.service_account_file).read_text())["token_uri"] == (
        other.token_uri
    )
