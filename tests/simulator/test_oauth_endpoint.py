"""The simulated OAuth token endpoint as Google runs it, and pushgres's OAuth client against it.

Google's token endpoint (``https://oauth2.googleapis.com/token``) offers ALPN ``h2`` and
``http/1.1`` and serves the JWT-bearer grant (RFC 7523) over both; google-auth signs its
assertions with ``aud`` = that URL whatever the key file's ``token_uri`` says. pushgres's
:class:`TokenSource` speaks HTTP/1.1 (aiohttp), so it must offer ``http/1.1`` only.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import ssl
import urllib.parse

import pytest

from pushgres.exceptions import ProviderAuthError
from pushgres.http2.tls import make_http1_ssl_context, make_ssl_context
from pushgres.providers.fcm.auth import ServiceAccount, TokenSource
from pushgres.simulator import Simulators, devkit

from .h2client import H2Client, assertion, oauth_exchange

GOOGLE_TOKEN_URI = "https://oauth2.googleapis.com/token"
JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
FORM = (b"content-type", b"application/x-www-form-urlencoded")


async def selected_alpn(port: int, context: ssl.SSLContext) -> str | None:
    _, writer = await asyncio.open_connection(
        "127.0.0.1", port, ssl=context, server_hostname="localhost"
    )
    try:
        protocol: str | None = writer.get_extra_info("ssl_object").selected_alpn_protocol()
        return protocol
    finally:
        writer.close()
        with contextlib.suppress(ssl.SSLError, ConnectionError):
            await writer.wait_closed()


def offering(ca_file: str, alpn: list[str]) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=ca_file)
    context.set_alpn_protocols(alpn)
    return context


def token_request(
    sims: Simulators, body: bytes, path: bytes = b"/token"
) -> list[tuple[bytes, bytes]]:
    return [
        (b":method", b"POST"),
        (b":scheme", b"https"),
        (b":path", path),
        (b":authority", f"127.0.0.1:{sims.oauth_port}".encode()),
        FORM,
        (b"content-length", str(len(body)).encode()),
    ]


def grant(assertion_jwt: str) -> bytes:
    return urllib.parse.urlencode({"grant_type": JWT_BEARER, "assertion": assertion_jwt}).encode()


# -- ALPN ---------------------------------------------------------------------------------


async def test_oauth_listener_selects_h2_for_the_h2_only_pool_context(sims: Simulators) -> None:
    """Like Google's: the pool's h2-only context gets h2, so aiohttp must never be given it."""
    port = sims.oauth_port
    assert await selected_alpn(port, make_ssl_context(ca_file=sims.ca_file)) == "h2"
    assert await selected_alpn(port, offering(sims.ca_file, ["h2", "http/1.1"])) == "h2"
    assert await selected_alpn(port, offering(sims.ca_file, ["http/1.1"])) == "http/1.1"
    assert await selected_alpn(port, make_http1_ssl_context(ca_file=sims.ca_file)) == "http/1.1"


def test_http1_context_offers_http1_and_verifies() -> None:
    context = make_http1_ssl_context(ca_file=None)
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2


async def test_token_source_fetches_over_http1_from_an_h2_capable_endpoint(
    sims: Simulators, dev_setup: devkit.DevSetup
) -> None:
    source = TokenSource(ServiceAccount(dev_setup.service_account_file), ca_file=sims.ca_file)
    try:
        header = await source.header()
    finally:
        await source.aclose()
    assert header.startswith(b"Bearer ya29.sim-")
    assert sims.oauth.valid(header.removeprefix(b"Bearer ").decode()) == dev_setup.client_email
    counters = sims.oauth_listener.counters
    assert counters.get("alpn_http/1.1") == 1 and "alpn_h2" not in counters


async def test_token_source_verifies_the_endpoint_certificate(
    sims: Simulators, dev_setup: devkit.DevSetup
) -> None:
    """The simulator's CA is not in the system store: without ``ca_file`` the fetch fails."""
    source = TokenSource(ServiceAccount(dev_setup.service_account_file), ca_file=None)
    try:
        with pytest.raises(ProviderAuthError) as caught:
            await source.header()
    finally:
        await source.aclose()
    assert not caught.value.permanent
    assert sims.oauth.issued == 0


# -- HTTP/2 -------------------------------------------------------------------------------


async def test_token_endpoint_answers_over_http2(
    sims: Simulators, dev_setup: devkit.DevSetup
) -> None:
    client = await H2Client.connect(sims.oauth_port, sims.ca_file, server_hostname="localhost")
    try:
        body = grant(assertion(dev_setup, sims.oauth_url))
        ok = await client.request(token_request(sims, body), body)
        wrong = grant(assertion(dev_setup, "https://elsewhere.example/token"))
        rejected = await client.request(token_request(sims, wrong), wrong)
        missing = await client.request(token_request(sims, body, b"/elsewhere"), body)
    finally:
        await client.close()
    assert ok.status == 200, bytes(ok.body)
    assert ok.headers[b"content-type"].startswith(b"application/json")
    assert ok.headers[b"cache-control"] == b"no-store"  # RFC 6749 section 5.1
    issued = json.loads(ok.body)
    assert issued["token_type"] == "Bearer" and issued["expires_in"] == 3599
    assert sims.oauth.valid(issued["access_token"]) == dev_setup.client_email
    assert rejected.status == 400
    assert json.loads(rejected.body) == {
        "error": "invalid_grant",
        "error_description": "Invalid JWT: Failed audience check.",
    }
    assert missing.status == 404
    assert sims.oauth_listener.counters.get("alpn_h2") == 1


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
async def test_token_endpoint_answers_curl_over_http2(
    sims: Simulators, dev_setup: devkit.DevSetup
) -> None:
    proc = await asyncio.create_subprocess_exec(
        "curl",
        "--silent",
        "--show-error",
        "--http2",
        "--cacert",
        sims.ca_file,
        "--max-time",
        "10",
        "--data-urlencode",
        f"grant_type={JWT_BEARER}",
        "--data-urlencode",
        f"assertion={assertion(dev_setup, sims.oauth_url)}",
        "--write-out",
        "\n%{http_version} %{http_code}",
        sims.oauth_url,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 15)
    assert proc.returncode == 0, err
    body, _, status = out.decode().rpartition("\n")
    assert status == "2 200", (status, body)
    assert json.loads(body)["access_token"].startswith("ya29.sim-")


# -- HTTP/1.1 -----------------------------------------------------------------------------


async def test_http1_expect_100_continue_is_answered(
    sims: Simulators, dev_setup: devkit.DevSetup
) -> None:
    """curl sends ``Expect: 100-continue`` for larger bodies and waits for the interim answer."""
    reader, writer = await asyncio.open_connection(
        "127.0.0.1",
        sims.oauth_port,
        ssl=offering(sims.ca_file, ["http/1.1"]),
        server_hostname="localhost",
    )
    try:
        body = grant(assertion(dev_setup, sims.oauth_url))
        writer.write(
            b"POST /token HTTP/1.1\r\nhost: 127.0.0.1\r\n"
            b"content-type: application/x-www-form-urlencoded\r\n"
            b"expect: 100-continue\r\ncontent-length: " + str(len(body)).encode() + b"\r\n\r\n"
        )
        interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert interim.startswith(b"HTTP/1.1 100 Continue\r\n")
        writer.write(body)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 200 OK\r\n")
        length = next(
            int(line.split(b":", 1)[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        )
        answer = json.loads(await asyncio.wait_for(reader.readexactly(length), 5))
        assert answer["access_token"].startswith("ya29.sim-")
    finally:
        writer.close()
        with contextlib.suppress(ssl.SSLError, ConnectionError):
            await writer.wait_closed()


# -- audience -----------------------------------------------------------------------------


async def test_google_token_endpoint_is_an_accepted_audience(
    sims: Simulators, dev_setup: devkit.DevSetup
) -> None:
    """google-auth signs ``aud`` = Google's token URL even when ``token_uri`` is elsewhere."""
    assert sims.oauth_url != GOOGLE_TOKEN_URI
    status, body = await oauth_exchange(
        sims, {"grant_type": JWT_BEARER, "assertion": assertion(dev_setup, GOOGLE_TOKEN_URI)}
    )
    assert status == 200, body
    assert sims.oauth.valid(body["access_token"]) == dev_setup.client_email


async def test_other_audiences_are_still_rejected(
    sims: Simulators, dev_setup: devkit.DevSetup
) -> None:
    for audience in (
        "https://elsewhere.example/token",
        "https://oauth2.googleapis.com/",
        "https://www.googleapis.com/oauth2/v4/token",
    ):
        status, body = await oauth_exchange(
            sims, {"grant_type": JWT_BEARER, "assertion": assertion(dev_setup, audience)}
        )
        assert (status, body) == (
            400,
            {"error": "invalid_grant", "error_description": "Invalid JWT: Failed audience check."},
        ), audience
    assert sims.oauth.issued == 0


async def test_google_auth_gets_a_token_from_the_simulator(
    sims: Simulators, dev_setup: devkit.DevSetup
) -> None:
    """google-auth's own service-account flow, through requests, trusting the simulator's CA."""
    pytest.importorskip("google.auth")
    requests = pytest.importorskip("requests")
    from google.auth.transport.requests import Request
    from google.oauth2 import service_account

    credentials = service_account.Credentials.from_service_account_file(
        dev_setup.service_account_file,
        scopes=["https://www.googleapis.com/auth/firebase.messaging"],
    )
    session = requests.Session()
    session.trust_env = False  # else REQUESTS_CA_BUNDLE (and any proxy) from the environment wins
    session.verify = sims.ca_file
    try:
        # google-auth blocks; the simulator runs on this loop.
        await asyncio.wait_for(asyncio.to_thread(credentials.refresh, Request(session)), 20)
    finally:
        session.close()
    assert credentials.token.startswith("ya29.sim-")
    assert sims.oauth.valid(credentials.token) == dev_setup.client_email
    assert sims.oauth.issued == 1


async def test_endpoint_knobs_apply_on_the_listener(
    sims: Simulators, dev_setup: devkit.DevSetup
) -> None:
    form = {"grant_type": JWT_BEARER, "assertion": assertion(dev_setup, sims.oauth_url)}
    sims.patch({"oauth": {"latency_ms": 300}})
    started = asyncio.get_running_loop().time()
    status, _ = await oauth_exchange(sims, form)
    assert status == 200 and asyncio.get_running_loop().time() - started >= 0.29
    sims.patch({"oauth": {"latency_ms": 0, "fail_rate": 1.0}})
    status, body = await oauth_exchange(sims, form)
    assert (status, body["error"]) == (503, "internal_failure")
    assert sims.metrics()["oauth"]["listener"]["requests"] == 2
