"""A minimal HTTP/2 test client on the ``h2`` library, independent of the daemon's client.

It exposes the raw wire: every stream's status, headers, body, DATA frame count and reset
code; every ``MAX_CONCURRENT_STREAMS`` the server advertised; the GOAWAY it sent; whether the
socket closed. Also: provider-token and OAuth helpers for the simulator tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import h2.config
import h2.connection
import h2.events
import h2.settings
import jwt
from cryptography.hazmat.primitives import serialization

from pushgres.simulator import Simulators, devkit

__all__ = ["H2Client", "Stream", "apns_headers", "fcm_headers", "oauth_token", "provider_token"]

TOPIC = "com.example.app"


@dataclass
class Stream:
    status: int | None = None
    headers: dict[bytes, bytes] = field(default_factory=dict)
    body: bytearray = field(default_factory=bytearray)
    data_frames: int = 0
    reset_code: int | None = None
    done: asyncio.Event = field(default_factory=asyncio.Event)


class _H2Connection(h2.connection.H2Connection):
    """h2 closes its state machine on GOAWAY; RFC 9113 6.8 lets announced streams finish."""

    def _receive_goaway_frame(self, frame: Any) -> tuple[list[Any], list[Any]]:
        before = self.state_machine.state
        result: tuple[list[Any], list[Any]] = super()._receive_goaway_frame(frame)
        if before is h2.connection.ConnectionState.CLIENT_OPEN:
            self.state_machine.state = before
        return result


class H2Client:
    """One HTTP/2 connection to a simulator; a reader task owned by the client."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        initial_window_size: int = 65535,
    ) -> None:
        self.reader, self.writer = reader, writer
        self.conn = _H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
        self.conn.local_settings = h2.settings.Settings(
            client=True,
            initial_values={
                h2.settings.SettingCodes.ENABLE_PUSH: 0,
                h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: initial_window_size,
            },
        )
        self.conn.initiate_connection()
        self.streams: dict[int, Stream] = {}
        self.ping_acks: list[bytes] = []
        self.auth = b""  # the provider token a test attached to this connection
        self.limits: list[int] = []
        self.goaway: h2.events.ConnectionTerminated | None = None
        self.closed = asyncio.Event()
        self.changed = asyncio.Event()
        self.flush()
        self.task = asyncio.get_running_loop().create_task(self._read(), name="h2client-reader")

    @classmethod
    async def connect(
        cls,
        port: int,
        ca_file: str,
        *,
        alpn: list[str] | None = None,
        cert: tuple[str, str] | None = None,
        server_hostname: str = "localhost",
        initial_window_size: int = 65535,
    ) -> H2Client:
        ctx = ssl.create_default_context(cafile=ca_file)
        ctx.set_alpn_protocols(["h2"] if alpn is None else alpn)
        if cert is not None:
            ctx.load_cert_chain(*cert)
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=ctx, server_hostname=server_hostname
        )
        client = cls(reader, writer, initial_window_size=initial_window_size)
        await client.wait_until(lambda: bool(client.limits) or client.closed.is_set())
        return client

    def flush(self) -> None:
        data = self.conn.data_to_send()
        if data and not self.writer.is_closing():
            self.writer.write(data)

    async def _read(self) -> None:
        try:
            while True:
                data = await self.reader.read(65536)
                if not data:
                    break
                for event in self.conn.receive_data(data):
                    self._on_event(event)
                self.flush()
                self.changed.set()
        except (ConnectionError, ssl.SSLError):
            pass
        finally:
            self.closed.set()
            self.changed.set()
            for stream in self.streams.values():
                stream.done.set()

    def _on_event(self, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.RemoteSettingsChanged):
            changed = event.changed_settings.get(h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS)
            self.limits.append(changed.new_value if changed else 2**31)
        elif isinstance(event, h2.events.ResponseReceived):
            stream = self.streams[event.stream_id]
            stream.headers = dict(event.headers)
            stream.status = int(stream.headers[b":status"])
        elif isinstance(event, h2.events.DataReceived):
            stream = self.streams[event.stream_id]
            stream.body += event.data
            stream.data_frames += 1
            self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        elif isinstance(event, h2.events.StreamEnded):
            self.streams[event.stream_id].done.set()
        elif isinstance(event, h2.events.StreamReset):
            stream = self.streams[event.stream_id]
            stream.reset_code = int(event.error_code)
            stream.done.set()
        elif isinstance(event, h2.events.ConnectionTerminated):
            self.goaway = event
        elif isinstance(event, h2.events.PingAckReceived):
            self.ping_acks.append(event.ping_data)

    def start(self, headers: list[tuple[bytes, bytes]], body: bytes = b"") -> int:
        """Open a stream and send the request; returns the stream id."""
        sid = self.conn.get_next_available_stream_id()
        self.streams[sid] = Stream()
        self.conn.send_headers(sid, headers, end_stream=not body)
        if body:
            self.conn.send_data(sid, body, end_stream=True)
        self.flush()
        return sid

    async def response(self, sid: int, timeout_s: float = 5.0) -> Stream:
        stream = self.streams[sid]
        await asyncio.wait_for(stream.done.wait(), timeout_s)
        return stream

    async def request(
        self, headers: list[tuple[bytes, bytes]], body: bytes = b"", timeout_s: float = 5.0
    ) -> Stream:
        return await self.response(self.start(headers, body), timeout_s)

    def ignore_stream_limit(self) -> None:
        """Let this client open more streams than the server allows (a misbehaving client)."""
        self.conn.remote_settings[h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS] = 2**31 - 1
        self.conn.remote_settings.acknowledge()

    def ping(self, opaque: bytes = b"pushgres") -> None:
        self.conn.ping(opaque)
        self.flush()

    def cancel(self, sid: int) -> None:
        self.conn.reset_stream(sid, h2.errors.ErrorCodes.CANCEL)
        self.flush()

    async def wait_until(self, predicate: Callable[[], bool], timeout_s: float = 5.0) -> None:
        deadline = time.monotonic() + timeout_s
        while not predicate():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("condition not met")
            self.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), remaining)

    async def close(self) -> None:
        self.writer.close()
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError, ConnectionError, ssl.SSLError):
            await self.task
        with contextlib.suppress(ConnectionError, ssl.SSLError):
            await self.writer.wait_closed()


def provider_token(
    setup: devkit.DevSetup,
    *,
    iat: float | None = None,
    key_file: str | None = None,
    key_id: str | None = None,
    team_id: str | None = None,
) -> bytes:
    """``bearer <ES256 JWT>`` for the dev key (or another key)."""
    with open(key_file or setup.apns_key_file, "rb") as f:
        key = serialization.load_pem_private_key(f.read(), password=None)
    claims = {"iss": team_id or setup.apns_team_id, "iat": int(time.time() if iat is None else iat)}
    # load_pem_private_key's union includes key types PyJWT cannot sign with.
    token = jwt.encode(
        claims,
        key,  # type: ignore[arg-type]
        algorithm="ES256",
        headers={"kid": key_id or setup.apns_key_id},
    )
    return b"bearer " + token.encode()


def apns_headers(
    token: str, auth: bytes | None, *, topic: str | None = TOPIC, **extra: str | bytes
) -> list[tuple[bytes, bytes]]:
    """APNs request headers; ``extra`` keys use ``_`` for ``-`` (``apns_id`` → ``apns-id``)."""
    headers = [
        (b":method", b"POST"),
        (b":scheme", b"https"),
        (b":path", b"/3/device/" + token.encode()),
        (b":authority", b"api.push.apple.com"),
    ]
    if auth is not None:
        headers.append((b"authorization", auth))
    if topic is not None:
        headers.append((b"apns-topic", topic.encode()))
    for key, value in extra.items():
        headers.append(
            (key.replace("_", "-").encode(), value if isinstance(value, bytes) else value.encode())
        )
    return headers


def fcm_headers(project: str, access_token: str | None) -> list[tuple[bytes, bytes]]:
    headers = [
        (b":method", b"POST"),
        (b":scheme", b"https"),
        (b":path", f"/v1/projects/{project}/messages:send".encode()),
        (b":authority", b"fcm.googleapis.com"),
        (b"content-type", b"application/json"),
    ]
    if access_token is not None:
        headers.append((b"authorization", f"Bearer {access_token}".encode()))
    return headers


def assertion(setup: devkit.DevSetup, token_uri: str, **override: Any) -> str:
    """A signed JWT-bearer assertion for the dev service account."""
    with open(setup.service_account_file) as f:
        data = json.load(f)
    key = serialization.load_pem_private_key(data["private_key"].encode(), password=None)
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": data["client_email"],
        "scope": "https://www.googleapis.com/auth/firebase.messaging",
        "aud": token_uri,
        "iat": now,
        "exp": now + 3600,
    }
    claims.update(override)
    return jwt.encode(
        claims,
        key,  # type: ignore[arg-type]  # an RSA key, as the file says
        algorithm="RS256",
        headers={"kid": data["private_key_id"]},
    )


async def oauth_exchange(sims: Simulators, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
    ctx = ssl.create_default_context(cafile=sims.ca_file)
    async with (
        aiohttp.ClientSession() as session,
        session.post(sims.oauth_url, data=form, ssl=ctx) as resp,
    ):
        return resp.status, await resp.json()


async def oauth_token(sims: Simulators) -> str:
    assert sims.setup is not None
    status, body = await oauth_exchange(
        sims,
        {
            "grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer",
            "assertion": assertion(sims.setup, sims.oauth_url),
        },
    )
    assert status == 200, body
    return str(body["access_token"])
