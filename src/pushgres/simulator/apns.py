"""The APNs simulator: Apple's provider API over HTTP/2 (protocol.md D.2).

Each stream is checked in Apple's order — method, path, duplicate headers, ``apns-id``, the
provider token (ES256 signature against the team's key, ``iat`` age, a token changed on a
connection within 20 minutes), topic, push type, priority, expiration, collapse id, payload
size, device token — then token rules (``devkit.APNS_KINDS``), per-token scripts and fault
rates. A token connection allows one stream until its first authenticated request, then
``streams_after_auth``. Every 200 is counted per device token and per ``apns-id``.
"""

from __future__ import annotations

import re
import time
import uuid
from collections import Counter
from typing import Any, NamedTuple

import jwt
import orjson
from cryptography.hazmat.primitives import serialization

from .devkit import apns_kind
from .server import Connection, Reply, Request, Service

__all__ = ["ApnsSimulator"]

PUSH_TYPES = {
    "alert": "",
    "background": "",
    "complication": ".complication",
    "controls": ".push-type.controls",
    "fileprovider": ".pushkit.fileprovider",
    "liveactivity": ".push-type.liveactivity",
    "location": ".location-query",
    "mdm": "",
    "pushtotalk": ".voip-ptt",
    "voip": ".voip",
    "widgets": ".push-type.widgets",
}
_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
_HEX = re.compile(r"^[0-9a-f]+$")
_CT = (b"content-type", b"application/json")
DEFAULT_KNOBS: dict[str, Any] = {
    "initial_streams_token": 1,
    "initial_streams_cert": 1000,
    "streams_after_auth": 1000,
    "latency": None,  # {"dist": "fixed"|"uniform"|"lognormal", "ms": .., "min_ms", "max_ms", "median_ms", "sigma"}
    "fail_rates": {},  # {"503:ServiceUnavailable": 0.01}
    "blackhole_rate": 0.0,
    "goaway_after_streams": 0,  # per connection; graceful, last_stream_id = highest received
    "reset_connection": None,  # {"after_streams": N}: abrupt close without GOAWAY
    "token_format": {"min_hex": 64, "max_hex": 64},
    "unknown_token_policy": "active",  # or "bad_device_token": unregistered tokens are rejected
    "max_concurrent_streams_schedule": [],  # [{"after_requests": N, "value": M}], per connection
    "wedge_on_expired": True,
    "token_update_cooldown_s": 1200,
    "split_body_frames": 0,
    "clock_offset_s": 0.0,
}


class _Verified(NamedTuple):
    team: str
    kid: str
    iat: int


class ApnsSimulator(Service):
    name = "apns"

    default_knobs = DEFAULT_KNOBS

    def __init__(self, *, environment: str, teams: dict[str, Any], seed: int = 1) -> None:
        super().__init__(seed=seed)
        self.environment = environment
        self.keys: dict[str, tuple[str, Any, str]] = {}  # kid → (team, public key, env)
        self.topics: dict[str, set[str]] = {}
        for team, spec in teams.items():
            self.topics[team] = set(spec["topics"])
            for kid, key in spec["keys"].items():
                public = serialization.load_pem_public_key(key["public_key_pem"].encode())
                self.keys[kid] = (team, public, key.get("env", "both"))
        self.accepted_ids: Counter[str] = Counter()

    def reset(self) -> None:
        super().reset()
        self.accepted_ids.clear()

    def now(self) -> float:
        return time.time() + float(self.knobs["clock_offset_s"])

    def initial_max_streams(self, conn: Connection) -> int:
        if conn.state.get("client_cert") is not None:
            return int(self.knobs["initial_streams_cert"])
        return int(self.knobs["initial_streams_token"])

    # -- per stream ---------------------------------------------------------------------

    def _error(
        self, status: int, reason: str, apns_id: bytes, *, timestamp: int | None = None
    ) -> Reply:
        self.responses[f"{status}:{reason}"] += 1
        body: dict[str, Any] = {"reason": reason}
        if timestamp is not None:
            body["timestamp"] = timestamp
        return Reply(status, [(b"apns-id", apns_id), _CT], orjson.dumps(body))

    def handle(self, request: Request) -> Reply:
        self.count("requests")
        reply = self._process(request)
        self.connection_faults(request, b'{"reason":"Shutdown"}')
        if not reply.delay_s:
            reply.delay_s = self.latency_s()
        return reply

    def _process(self, req: Request) -> Reply:
        headers: dict[bytes, bytes] = {}
        duplicate = False
        for name, value in req.headers:
            if name in headers and (name.startswith(b"apns-") or name == b"authorization"):
                duplicate = True
            headers[name] = value
        apns_id = headers.get(b"apns-id") or str(uuid.uuid4()).encode()
        if headers.get(b":method") != b"POST":
            return self._error(405, "MethodNotAllowed", apns_id)
        path = headers.get(b":path", b"")
        if path == b"/3/device/":
            return self._error(400, "MissingDeviceToken", apns_id)
        if not path.startswith(b"/3/device/"):
            return self._error(404, "BadPath", apns_id)
        if duplicate:
            return self._error(400, "DuplicateHeaders", apns_id)
        if b"apns-id" in headers and not _UUID.match(headers[b"apns-id"].decode("latin-1")):
            return self._error(400, "BadMessageId", str(uuid.uuid4()).encode())
        auth = self._check_auth(req, headers.get(b"authorization"))
        if isinstance(auth, tuple):
            return self._error(auth[0], auth[1], apns_id)
        team = auth
        topic = headers.get(b"apns-topic", b"").decode("latin-1")
        if not topic:
            return self._error(400, "MissingTopic", apns_id)
        push_type = headers.get(b"apns-push-type", b"alert").decode("latin-1")
        if push_type not in PUSH_TYPES:
            return self._error(400, "InvalidPushType", apns_id)
        suffix = PUSH_TYPES[push_type]
        base = topic[: -len(suffix)] if suffix and topic.endswith(suffix) else topic
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", base):
            return self._error(400, "BadTopic", apns_id)
        if base not in self.topics.get(team, set()):
            return self._error(400, "TopicDisallowed", apns_id)
        priority = headers.get(b"apns-priority", b"10")
        if priority not in (b"10", b"5", b"1") or (push_type == "background" and priority == b"10"):
            return self._error(400, "BadPriority", apns_id)
        expiration = headers.get(b"apns-expiration")
        if expiration is not None and not expiration.isdigit():
            return self._error(400, "BadExpirationDate", apns_id)
        collapse = headers.get(b"apns-collapse-id")
        if collapse is not None and len(collapse) > 64:
            return self._error(400, "BadCollapseId", apns_id)
        body = bytes(req.body)
        if not body:
            return self._error(400, "PayloadEmpty", apns_id)
        if len(body) > (5120 if push_type == "voip" else 4096):
            return self._error(413, "PayloadTooLarge", apns_id)
        token = path[len(b"/3/device/") :].decode("latin-1")
        fmt = self.knobs["token_format"]
        if not _HEX.match(token) or not fmt["min_hex"] <= len(token) <= fmt["max_hex"]:
            return self._error(400, "BadDeviceToken", apns_id)
        ruled = self._token_rules(token, apns_id)
        if ruled is not None:
            return ruled
        scripted = self._scripted(token, apns_id)
        if scripted is not None:
            return scripted
        for spec, rate in self.knobs["fail_rates"].items():
            if self.rng.random() < rate:
                status, reason = spec.split(":", 1)
                reply = self._error(int(status), reason, apns_id)
                reply.goaway_after = reason == "Shutdown"
                return reply
        if self.knobs["blackhole_rate"] and self.rng.random() < self.knobs["blackhole_rate"]:
            return Reply(blackhole=True)
        return self._accept(token, apns_id)

    def _accept(self, token: str, apns_id: bytes) -> Reply:
        self.accepted[token] += 1
        self.accepted_ids[apns_id.decode("latin-1")] += 1
        self.responses["200"] += 1
        headers = [(b"apns-id", apns_id)]
        if self.environment == "sandbox":
            headers.append((b"apns-unique-id", str(uuid.uuid4()).encode()))
        return Reply(200, headers)

    def _token_rules(self, token: str, apns_id: bytes) -> Reply | None:
        kind = self.registry.get(token) or apns_kind(token)
        if kind == "ok":
            if (
                token not in self.registry
                and self.knobs["unknown_token_policy"] == "bad_device_token"
            ):
                return self._error(400, "BadDeviceToken", apns_id)
            return None
        now_ms = int(self.now() * 1000)
        if kind in ("Unregistered", "ExpiredToken"):
            return self._error(410, kind, apns_id, timestamp=now_ms - 86_400_000)
        if kind in ("BadDeviceToken", "DeviceTokenNotForTopic"):
            return self._error(400, kind, apns_id)
        if kind == "TooManyRequests":
            return self._error(429, kind, apns_id)
        if kind == "InternalServerError":
            return self._error(500, kind, apns_id)
        if kind == "ServiceUnavailable":
            return self._error(503, kind, apns_id)
        if kind == "Shutdown":
            reply = self._error(503, kind, apns_id)
            reply.goaway_after = True
            return reply
        if kind == "flaky":
            self.flaky[token] += 1
            if self.flaky[token] <= 2:
                return self._error(503, "ServiceUnavailable", apns_id)
            return None
        if kind == "slow":
            reply = self._accept(token, apns_id)
            reply.delay_s = 2.0
            return reply
        if kind == "blackhole":
            return Reply(blackhole=True)
        if kind == "refused":
            self.flaky[token] += 1
            if self.flaky[token] == 1:
                return Reply(reset_code=7)  # REFUSED_STREAM
            return None
        if kind == "reset":
            self._accept(token, apns_id)
            return Reply(reset_code=2)  # INTERNAL_ERROR after processing
        return None

    def _scripted(self, token: str, apns_id: bytes) -> Reply | None:
        step = self.next_scripted(token)
        if step is None or step == "200":
            return None
        status, reason = step.split(":", 1)
        reply = self._error(
            int(status),
            reason,
            apns_id,
            timestamp=int(self.now() * 1000) if status == "410" else None,
        )
        reply.goaway_after = reason == "Shutdown"
        return reply

    def _check_auth(self, req: Request, value: bytes | None) -> str | tuple[int, str]:
        """The team of a valid provider token (or client certificate), or (status, reason)."""
        state = req.conn.state
        cert = state.get("client_cert")
        if cert is not None:
            return self._certificate_team(cert)
        if state.get("wedged"):
            return (403, "ExpiredProviderToken")
        if value is None or not value.startswith(b"bearer "):
            return (403, "MissingProviderToken")
        token = value[7:].decode("latin-1")
        now = self.now()
        if token != state.get("jwt"):
            verdict = self._verify(token, now)
            if not isinstance(verdict, _Verified):
                return verdict
            team, kid, iat = verdict
            if state.get("team") not in (None, team):
                return (403, "InvalidProviderToken")
            if state.get("kid") not in (None, kid):
                return (403, "UnrelatedKeyIdInToken")
            if state.get("jwt") is not None:
                if now - state["jwt_first_used"] < self.knobs["token_update_cooldown_s"]:
                    self.count("token_updates_rejected")
                    return (429, "TooManyProviderTokenUpdates")
                self.count("token_changes")
            state.update(jwt=token, team=team, kid=kid, iat=iat, jwt_first_used=now)
        if now - state["iat"] > 3600:
            if self.knobs["wedge_on_expired"]:
                state["wedged"] = True
            return (403, "ExpiredProviderToken")
        if not state.get("authed"):
            state["authed"] = True
            req.conn.protocol.set_max_streams(int(self.knobs["streams_after_auth"]))
        return str(state["team"])

    def _certificate_team(self, cert: dict[str, Any]) -> str | tuple[int, str]:
        """Certificate auth: the subject's UID is the bundle id the certificate may push to."""
        subject = dict(item[0] for item in cert.get("subject", ()))
        uid = subject.get("userId")
        if not uid:
            return (403, "BadCertificate")
        team = f"cert:{uid}"
        self.topics.setdefault(team, {uid})
        return team

    def _verify(self, token: str, now: float) -> _Verified | tuple[int, str]:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            return (403, "InvalidProviderToken")
        kid = header.get("kid")
        if header.get("alg") != "ES256" or kid not in self.keys:
            return (403, "InvalidProviderToken")
        team, public, env = self.keys[kid]
        try:
            claims = jwt.decode(token, public, algorithms=["ES256"], options={"verify_iat": False})
        except jwt.PyJWTError:
            return (403, "InvalidProviderToken")
        if claims.get("iss") != team or not isinstance(claims.get("iat"), int):
            return (403, "InvalidProviderToken")
        if env not in ("both", self.environment):
            return (403, "BadEnvironmentKeyIdInToken")
        if claims["iat"] > now + 60:
            return (403, "InvalidProviderToken")
        return _Verified(team, str(kid), int(claims["iat"]))
