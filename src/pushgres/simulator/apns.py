"""The APNs simulator: Apple's provider API over HTTP/2.

Each stream is checked in this order, and answers with the exact status and reason of Apple's
"Handling notification responses from APNs"
(developer.apple.com/documentation/usernotifications/handling-notification-responses-from-apns):

1. method (405 ``MethodNotAllowed``); 2. path (400 ``MissingDeviceToken``, 404 ``BadPath``);
3. repeated ``apns-*``/``authorization`` headers (400 ``DuplicateHeaders``); 4. ``apns-id``
(400 ``BadMessageId``); 5. the provider token or client certificate (403
``MissingProviderToken``, ``InvalidProviderToken``, ``UnrelatedKeyIdInToken``,
``BadEnvironmentKeyIdInToken``, ``ExpiredProviderToken``, 429 ``TooManyProviderTokenUpdates``,
403 ``BadCertificate``, ``BadCertificateEnvironment``); 6. topic (400 ``MissingTopic``,
``BadTopic``, ``TopicDisallowed``); 7. push type (400 ``InvalidPushType``); 8. priority (400
``BadPriority``); 9. expiration (400 ``BadExpirationDate``); 10. collapse id (400
``BadCollapseId``); 11. payload (400 ``PayloadEmpty``, 413 ``PayloadTooLarge``); 12. device
token (400 ``BadDeviceToken``, ``DeviceTokenNotForTopic``, 410 ``Unregistered``/
``ExpiredToken`` with ``timestamp``); 13. per-token rate (429 ``TooManyRequests``); 14. token
kinds (``devkit.APNS_KINDS``), scripts and injected faults (``fail_rates`` and the other
fault knobs); 15. 200.

ES256 verification is expensive, so a provider token is verified once: per connection the
token in use is compared by string, and verified tokens are cached process-wide (bounded).
A token connection allows one stream until its first authenticated request, then
``streams_after_auth``. Every 200 is counted per device token and per ``apns-id``.

A client certificate signed by the CA but not listed in ``certificates`` is judged as Apple
judges a provider certificate: its environment from Apple's extensions (development/sandbox
``1.2.840.113635.100.6.3.1``, production ``…6.3.2``; a topics list ``…6.3.6`` alone means
"Sandbox & Production"), its topics from that list or else its subject UID (plus ``.voip`` and
``.complication``); the wrong environment is 403 ``BadCertificateEnvironment``. An expired or
untrusted certificate fails the TLS handshake, as Apple's does (the connection just closes: the
server's TLS layer sends no alert naming why, so under TLS 1.3 the client sees an end of file
right after its handshake).

A device token whose bits are all zero is never issued by Apple: it is answered 400
``BadDeviceToken`` whatever ``unknown_token_policy`` says, after the credential and topic
checks, so it probes a credential without delivering anything (``pushgres
check-credentials`` sends it).
"""

from __future__ import annotations

import hashlib
import re
import uuid
from collections import Counter, deque
from typing import Any, NamedTuple

import jwt
import orjson
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ..der import sequence_strings
from .devkit import APNS_CERT_OIDS, apns_kind
from .server import COMMON_KNOBS, Connection, Reply, Request, Service

__all__ = ["PUSH_TYPES", "ApnsSimulator"]

# apns-push-type → topic suffix (Apple, "Sending notification requests to APNs": apns-push-type).
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
_SUFFIXES = sorted({s for s in PUSH_TYPES.values() if s}, key=len, reverse=True)
_UUID = re.compile(rb"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$", re.I)
_HEX = re.compile(r"^[0-9a-f]+$")
_TOPIC = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
_CT = (b"content-type", b"application/json")
_PATH_PREFIX = b"/3/device/"
_STATUS_BY_KIND = {
    "BadDeviceToken": 400,
    "DeviceTokenNotForTopic": 400,
    "TooManyRequests": 429,
    "InternalServerError": 500,
    "ServiceUnavailable": 503,
    "Shutdown": 503,
}
_VERIFIED_CACHE_SIZE = 4096
_NEVER_ISSUED = re.compile(r"^0+$")

DEFAULT_KNOBS: dict[str, Any] = {
    **COMMON_KNOBS,
    "initial_streams_token": 1,
    "initial_streams_cert": 1000,
    "streams_after_auth": 1000,
    "token_format": {"min_hex": 64, "max_hex": 64},
    "unknown_token_policy": "active",  # or "bad_device_token"
    "wedge_on_expired": True,
    "token_update_cooldown_s": 1200,
    "iat_max_age_s": 3600,
    "iat_future_skew_s": 60,
    "bad_environment_reason": "BadEnvironmentKeyIdInToken",  # or "BadEnvironmentKeyInToken"
    "topic_disallowed_reason": "TopicDisallowed",  # or "InvalidProviderToken" (pushy's mock)
    "check_topic_suffix": False,  # 400 TopicDisallowed when the suffix ≠ the push type's
    "background_priority_rule": True,  # background + priority 10 → BadPriority
    "validate_json": False,  # body must be a JSON object with an "aps" object
    "per_token_limit": None,  # {"count": 10, "per_s": 10} → 429 TooManyRequests
    "drop_streams_after_error": False,
    "max_errors_per_connection": 0,  # GOAWAY {"reason": last} after N errors (410 excluded)
    "body_style": "compact",  # or "apple": { "reason" : "X" }
    "slow_ms": 2000,  # latency of the "slow" token kind
    "unregistered_age_ms": 86_400_000,  # a kind token's 410 timestamp: this long ago
}


class _Verified(NamedTuple):
    team: str
    kid: str
    iat: int


class ApnsSimulator(Service):
    """One APNs virtual host (``production`` or ``sandbox``).

    ``teams``: ``{team_id: {"topics": [...], "keys": {kid: {"public_key_pem", "env":
    "sandbox"|"production"|"both", "scope": "team"|"topic", "topics": [...],
    "related_key": kid}}}}``. ``certificates``: ``{sha256 hex of the DER client certificate:
    {"team", "env", "topics"}}``; a certificate not listed but signed by the CA is accepted for
    the environment and topics its Apple extensions give (see the module docstring), else for
    both environments and the bundle id in its subject UID (plus ``.voip`` and
    ``.complication``).
    """

    name = "apns"
    default_knobs = DEFAULT_KNOBS

    def __init__(
        self,
        *,
        environment: str,
        teams: dict[str, Any],
        certificates: dict[str, Any] | None = None,
        seed: int = 1,
    ) -> None:
        super().__init__(seed=seed)
        if environment not in ("production", "sandbox"):
            raise ValueError(f"environment must be production or sandbox, not {environment!r}")
        self.environment = environment
        self.sandbox = environment == "sandbox"
        self.keys: dict[str, tuple[str, Any, str, dict[str, Any]]] = {}
        self.topics: dict[str, set[str]] = {}
        for team, spec in teams.items():
            self.topics[team] = set(spec.get("topics", ()))
            for kid, key in spec.get("keys", {}).items():
                public = serialization.load_pem_public_key(key["public_key_pem"].encode())
                self.keys[kid] = (team, public, key.get("env", "both"), key)
        self.certificates: dict[str, Any] = {
            fp.lower().replace(":", ""): spec for fp, spec in (certificates or {}).items()
        }
        self.accepted_ids: Counter[str] = Counter()
        self.verified: dict[str, _Verified | tuple[int, str]] = {}
        self.token_hits: dict[str, deque[float]] = {}

    def reset(self) -> None:
        super().reset()
        self.accepted_ids.clear()
        self.verified.clear()
        self.token_hits.clear()

    def initial_max_streams(self, conn: Connection) -> int:
        if conn.state.get("client_cert_der") is not None:
            return int(self.knobs["initial_streams_cert"])
        return int(self.knobs["initial_streams_token"])

    # -- responses ----------------------------------------------------------------------

    def _ids(self, apns_id: bytes) -> list[tuple[bytes, bytes]]:
        if self.sandbox:
            return [(b"apns-id", apns_id), (b"apns-unique-id", str(uuid.uuid4()).encode())]
        return [(b"apns-id", apns_id)]

    def _error(
        self, status: int, reason: str, apns_id: bytes, *, timestamp: int | None = None
    ) -> Reply:
        if self.knobs["body_style"] == "apple":
            body = f'{{ "reason" : "{reason}"'.encode()
            if timestamp is not None:
                body += f', "timestamp" : {timestamp}'.encode()
            body += b" }"
        elif timestamp is not None:
            body = orjson.dumps({"reason": reason, "timestamp": timestamp})
        else:
            body = orjson.dumps({"reason": reason})
        return Reply(status, [*self._ids(apns_id), _CT], body, reason=reason)

    def _accept(self, token: str, apns_id: bytes) -> Reply:
        return Reply(200, self._ids(apns_id), accepted=(token, apns_id.decode("latin-1")))

    def _reset_after_processing(self, token: str, apns_id: bytes, code: int, why: str) -> Reply:
        return Reply(reset_code=code, reason=why, accepted=(token, apns_id.decode("latin-1")))

    def record_accepted(self, accepted: tuple[str, str]) -> None:
        self.accepted[accepted[0]] += 1
        self.accepted_ids[accepted[1]] += 1

    def _outcome(self, spec: str, token: str, apns_id: bytes) -> Reply | None:
        """A scripted or injected ``"<status>:<reason>"`` (``"200"``: no override)."""
        if spec == "200":
            return None
        status, _, reason = spec.partition(":")
        if status == "RST_STREAM":
            code = {"REFUSED_STREAM": 7, "CANCEL": 8, "INTERNAL_ERROR": 2}.get(reason, 2)
            if code != 7:
                return self._reset_after_processing(token, apns_id, code, spec)
            return Reply(reset_code=code, reason=spec)
        if status == "blackhole":
            return Reply(blackhole=True, reason=spec)
        timestamp = int(self.now() * 1000) if status == "410" else None
        reply = self._error(int(status), reason, apns_id, timestamp=timestamp)
        reply.goaway_after = reason == "Shutdown"
        if status in ("429", "503") and self.knobs["retry_after"]:
            spec_ra = self.knobs["retry_after"]
            if spec_ra.get("mode", "seconds") == "seconds":
                reply.headers.append((b"retry-after", str(int(spec_ra.get("value", 1))).encode()))
        return reply

    # -- per stream ---------------------------------------------------------------------

    def handle(self, request: Request) -> Reply:
        self.count("requests")
        token = ""
        path = request.header(b":path") or b""
        if path.startswith(_PATH_PREFIX):
            token = path[len(_PATH_PREFIX) :].decode("latin-1")
        reply = self._process(request, token)
        conn = request.conn
        if reply.blackhole or reply.reset_code is not None:
            key = reply.reason or "RST_STREAM"
        else:
            key = f"{reply.status}:{reply.reason}" if reply.reason else "200"
            if reply.status == 200:
                if conn.state.get("degraded"):
                    conn.state["degraded"] = False
                    conn.protocol.set_max_streams(int(self.knobs["streams_after_auth"]))
            else:
                self._after_error(conn, reply)
        self.responses[key] += 1
        if not reply.delay_s:
            reply.delay_s = self.latency_s()
        self.log_request(request, token, reply)
        return reply

    def _after_error(self, conn: Connection, reply: Reply) -> None:
        if self.knobs["drop_streams_after_error"] and not conn.state.get("degraded"):
            conn.state["degraded"] = True
            conn.protocol.set_max_streams(1)
        limit = int(self.knobs["max_errors_per_connection"] or 0)
        if limit and reply.status != 410:
            conn.errors += 1
            if conn.errors >= limit:
                conn.protocol.goaway(0, self.goaway_debug(reply.reason))

    def _process(self, req: Request, token: str) -> Reply:
        headers: dict[bytes, bytes] = {}
        duplicate = False
        for name, value in req.headers:
            if name in headers and (name.startswith(b"apns-") or name == b"authorization"):
                duplicate = True
            headers[name] = value
        given_id = headers.get(b"apns-id")
        apns_id = given_id or str(uuid.uuid4()).encode()
        # 1-4: method, path, duplicate headers, apns-id.
        if headers.get(b":method") != b"POST":
            return self._error(405, "MethodNotAllowed", apns_id)
        path = headers.get(b":path", b"")
        if path == _PATH_PREFIX:
            return self._error(400, "MissingDeviceToken", apns_id)
        if not path.startswith(_PATH_PREFIX):
            return self._error(404, "BadPath", apns_id)
        if duplicate:
            return self._error(400, "DuplicateHeaders", apns_id)
        if given_id is not None and not _UUID.match(given_id):
            return self._error(400, "BadMessageId", str(uuid.uuid4()).encode())
        # 5: authentication.
        auth = self._check_auth(req, headers.get(b"authorization"))
        if isinstance(auth, tuple):
            return self._error(auth[0], auth[1], apns_id)
        allowed_topics = auth
        # 6-7: topic, then push type (and, behind a knob, the topic suffix it implies).
        topic = headers.get(b"apns-topic", b"").decode("latin-1")
        if not topic:
            # A certificate for one app (plus its VoIP/complication topics) defaults to it.
            topic = req.conn.state.get("cert_default_topic") or ""
            if not topic:
                return self._error(400, "MissingTopic", apns_id)
        if not _TOPIC.match(topic):
            return self._error(400, "BadTopic", apns_id)
        base = topic
        for suffix in _SUFFIXES:
            if topic.endswith(suffix):
                base = topic[: -len(suffix)]
                break
        if base not in allowed_topics and topic not in allowed_topics:
            reason = str(self.knobs["topic_disallowed_reason"])
            return self._error(403 if reason == "InvalidProviderToken" else 400, reason, apns_id)
        push_type = headers.get(b"apns-push-type", b"").decode("latin-1")
        if push_type and push_type not in PUSH_TYPES:
            return self._error(400, "InvalidPushType", apns_id)
        if self.knobs["check_topic_suffix"] and push_type and topic != base + PUSH_TYPES[push_type]:
            return self._error(400, "TopicDisallowed", apns_id)
        # 8-11: priority, expiration, collapse id, payload.
        priority = headers.get(b"apns-priority", b"10")
        if priority not in (b"10", b"5", b"1") or (
            push_type == "background"
            and priority == b"10"
            and self.knobs["background_priority_rule"]
        ):
            return self._error(400, "BadPriority", apns_id)
        expiration = headers.get(b"apns-expiration")
        if expiration is not None and not expiration.isdigit():
            return self._error(400, "BadExpirationDate", apns_id)
        collapse = headers.get(b"apns-collapse-id")
        if collapse is not None and len(collapse) > 64:
            return self._error(400, "BadCollapseId", apns_id)
        body = req.body
        if not body:
            return self._error(400, "PayloadEmpty", apns_id)
        if len(body) > (5120 if push_type == "voip" else 4096):
            return self._error(413, "PayloadTooLarge", apns_id)
        if self.knobs["validate_json"]:
            try:
                parsed = orjson.loads(bytes(body))
            except orjson.JSONDecodeError:
                parsed = None
            if not isinstance(parsed, dict) or not isinstance(parsed.get("aps"), dict):
                return self._error(400, "BadPayload", apns_id)
        # 12: the device token.
        fmt = self.knobs["token_format"]
        if not _HEX.match(token) or not int(fmt["min_hex"]) <= len(token) <= int(fmt["max_hex"]):
            return self._error(400, "BadDeviceToken", apns_id)
        ruled = self._token_rules(token, base, apns_id)
        if ruled is not None:
            return ruled
        # 13: per-token rate.
        limit = self.knobs["per_token_limit"]
        if limit and self._rate_limited(token, int(limit["count"]), float(limit["per_s"])):
            return self._error(429, "TooManyRequests", apns_id)
        # 14: scripts and injected faults.
        step = self.next_scripted(token)
        if step is not None:
            scripted = self._outcome(step, token, apns_id)
            if scripted is not None:
                scripted.fault = "script"
                return scripted
        for spec, rate in self.knobs["fail_rates"].items():
            if self.rng.random() < rate:
                self.faults[spec] += 1
                injected = self._outcome(spec, token, apns_id)
                if injected is not None:
                    injected.fault = spec
                    return injected
        if self.chance("blackhole_rate"):
            self.faults["blackhole"] += 1
            return Reply(blackhole=True, reason="blackhole", fault="blackhole")
        code = self.rst_code("before")
        if code is not None:
            self.faults[f"rst_stream:{code}"] += 1
            return Reply(reset_code=code, reason=f"RST_STREAM:{code}", fault="rst_stream")
        # 15: accepted.
        reply = self._accept(token, apns_id)
        code = self.rst_code("after_processing")
        if code is not None:
            self.faults[f"rst_stream_after:{code}"] += 1
            reset = self._reset_after_processing(token, apns_id, code, f"RST_STREAM:{code}")
            reset.fault = "rst_stream"
            return reset
        if self.chance("mid_response_reset"):
            self.faults["mid_response_reset"] += 1
            reply.abort_after_headers = True
            reply.fault = "mid_response_reset"
        return reply

    def _rate_limited(self, token: str, count: int, per_s: float) -> bool:
        now = self.now()
        hits = self.token_hits.setdefault(token, deque())
        while hits and hits[0] <= now - per_s:
            hits.popleft()
        if len(hits) >= count:
            return True
        hits.append(now)
        return False

    def _token_rules(self, token: str, base_topic: str, apns_id: bytes) -> Reply | None:
        entry = self.registry.get(token)
        if isinstance(entry, dict):
            return self._registered(entry, base_topic, apns_id)
        if entry is None and _NEVER_ISSUED.match(token):
            return self._error(400, "BadDeviceToken", apns_id)
        kind = entry or apns_kind(token)
        if kind == "ok":
            if entry is None and self.knobs["unknown_token_policy"] == "bad_device_token":
                return self._error(400, "BadDeviceToken", apns_id)
            return None
        if kind in ("Unregistered", "ExpiredToken"):
            timestamp = int(self.now() * 1000) - int(self.knobs["unregistered_age_ms"])
            return self._error(410, kind, apns_id, timestamp=timestamp)
        if kind in _STATUS_BY_KIND:
            reply = self._error(_STATUS_BY_KIND[kind], kind, apns_id)
            reply.goaway_after = kind == "Shutdown"
            return reply
        if kind == "flaky":
            self.flaky[token] += 1
            if self.flaky[token] <= 2:
                return self._error(503, "ServiceUnavailable", apns_id)
            return None
        if kind == "slow":
            reply = self._accept(token, apns_id)
            reply.delay_s = float(self.knobs["slow_ms"]) / 1000
            return reply
        if kind == "blackhole":
            return Reply(blackhole=True, reason="blackhole")
        if kind == "refused":
            self.flaky[token] += 1
            if self.flaky[token] == 1:
                return Reply(reset_code=7, reason="RST_STREAM:REFUSED_STREAM")
            return None
        if kind == "reset":
            return self._reset_after_processing(token, apns_id, 2, "RST_STREAM:INTERNAL_ERROR")
        return None

    def _registered(self, spec: dict[str, Any], base_topic: str, apns_id: bytes) -> Reply | None:
        """A token registered with a state dict."""
        env = spec.get("env")
        if env and env != self.environment:
            return self._error(400, "BadDeviceToken", apns_id)
        topic = spec.get("topic")
        if topic and topic != base_topic:
            return self._error(400, "DeviceTokenNotForTopic", apns_id)
        state = spec.get("state", "active")
        if state in ("unregistered", "expired"):
            timestamp = int(
                spec.get("timestamp_ms")
                or int(self.now() * 1000) - int(self.knobs["unregistered_age_ms"])
            )
            reason = "Unregistered" if state == "unregistered" else "ExpiredToken"
            return self._error(410, reason, apns_id, timestamp=timestamp)
        return None

    # -- authentication -----------------------------------------------------------------

    def _check_auth(self, req: Request, value: bytes | None) -> set[str] | tuple[int, str]:
        """The topics the connection may push to, or (status, reason)."""
        state = req.conn.state
        if state.get("client_cert_der") is not None:
            return self._certificate(req.conn)
        if state.get("wedged"):
            return (403, "ExpiredProviderToken")
        if value is None or value[:7].lower() != b"bearer ":
            return (403, "MissingProviderToken")
        token = value[7:].decode("latin-1").strip()
        now = self.now()
        if token != state.get("jwt"):
            verdict = self._verify(token)
            if not isinstance(verdict, _Verified):
                return verdict
            team, kid, iat = verdict
            if state.get("team") not in (None, team):
                return (403, "InvalidProviderToken")
            first_kid = state.get("kid")
            if first_kid not in (None, kid) and not self._related(first_kid, kid):
                return (403, "UnrelatedKeyIdInToken")
            env = self.keys[kid][2]
            if env not in ("both", self.environment):
                return (403, str(self.knobs["bad_environment_reason"]))
            if now - iat > float(self.knobs["iat_max_age_s"]):
                return self._expired(state)
            if iat > now + float(self.knobs["iat_future_skew_s"]):
                return (403, "InvalidProviderToken")
            if state.get("jwt") is not None:
                if now - state["jwt_first_used"] < float(self.knobs["token_update_cooldown_s"]):
                    self.count("token_updates_rejected")
                    return (429, "TooManyProviderTokenUpdates")
                self.count("token_changes")
            else:
                self.count("jwts_seen")
            state.update(
                jwt=token,
                team=team,
                kid=first_kid or kid,
                key_in_use=kid,
                iat=iat,
                jwt_first_used=now,
            )
        elif now - state["iat"] > float(self.knobs["iat_max_age_s"]):
            return self._expired(state)
        if not state.get("authed"):
            state["authed"] = True
            req.conn.protocol.set_max_streams(int(self.knobs["streams_after_auth"]))
        return self._key_topics(state["team"], state["key_in_use"])

    def _expired(self, state: dict[str, Any]) -> tuple[int, str]:
        if self.knobs["wedge_on_expired"]:
            state["wedged"] = True
        return (403, "ExpiredProviderToken")

    def _related(self, first: str, kid: str) -> bool:
        a, b = self.keys.get(first), self.keys.get(kid)
        if a is None or b is None:
            return False
        # Team-scoped keys of one team are interchangeable; topic keys only with their relative.
        if a[3].get("scope", "team") == "team" and b[3].get("scope", "team") == "team":
            return a[2] == b[2]
        return a[3].get("related_key") == kid or b[3].get("related_key") == first

    def _key_topics(self, team: str, kid: str) -> set[str]:
        key = self.keys[kid][3]
        if key.get("scope", "team") == "topic":
            return set(key.get("topics", ()))
        return self.topics.get(team, set())

    def _verify(self, token: str) -> _Verified | tuple[int, str]:
        """Signature, ``alg``, ``kid`` and ``iss``: cached per distinct token string."""
        cached = self.verified.get(token)
        if cached is not None:
            return cached
        verdict = self._verify_uncached(token)
        if len(self.verified) >= _VERIFIED_CACHE_SIZE:
            self.verified.clear()
        self.verified[token] = verdict
        self.count("jwt_verifications")
        return verdict

    def _verify_uncached(self, token: str) -> _Verified | tuple[int, str]:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            return (403, "InvalidProviderToken")
        kid = header.get("kid")
        if header.get("alg") != "ES256" or kid not in self.keys:
            return (403, "InvalidProviderToken")
        team, public, _, _ = self.keys[kid]
        try:
            claims = jwt.decode(
                token,
                public,
                algorithms=["ES256"],
                options={"verify_iat": False, "verify_exp": False, "verify_nbf": False},
            )
        except jwt.PyJWTError:
            return (403, "InvalidProviderToken")
        iat = claims.get("iat")
        if claims.get("iss") != team or not isinstance(iat, int):
            return (403, "InvalidProviderToken")
        return _Verified(team, str(kid), iat)

    def _certificate(self, conn: Connection) -> set[str] | tuple[int, str]:
        """Certificate auth: by fingerprint if configured, else the subject's UID."""
        state = conn.state
        topics = state.get("cert_topics")
        if topics is not None:
            return set(topics)
        fingerprint = hashlib.sha256(state["client_cert_der"]).hexdigest()
        spec = self.certificates.get(fingerprint)
        uid_based = spec is None
        if spec is None:
            spec = _certificate_spec(state["client_cert_der"])
            if spec is None:
                return (403, "BadCertificate")
        if spec.get("env", "both") not in ("both", self.environment):
            return (403, "BadCertificateEnvironment")
        state["team"] = spec.get("team")
        state["cert_topics"] = set(spec["topics"])
        if spec.get("default_topic", len(spec["topics"]) == 1 or uid_based):
            state["cert_default_topic"] = spec["topics"][0]
        if not state.get("authed"):
            state["authed"] = True
            self.count("cert_connections")
        return set(spec["topics"])


def _certificate_spec(der: bytes) -> dict[str, Any] | None:
    """What an unlisted provider certificate allows, read as Apple reads it; None: nothing."""
    try:
        cert = x509.load_der_x509_certificate(der)
    except ValueError:
        return None
    uids = cert.subject.get_attributes_for_oid(x509.NameOID.USER_ID)
    uid = str(uids[0].value) if uids else ""
    found = {
        name: ext.value.value
        for ext in cert.extensions
        if isinstance(ext.value, x509.UnrecognizedExtension)
        for name, oid in APNS_CERT_OIDS.items()
        if ext.oid == oid
    }
    topics = sequence_strings(found["topics"]) if "topics" in found else []
    if not topics and uid:
        topics = [uid, uid + ".voip", uid + ".complication"]
    if not topics:
        return None
    envs = {env for env in ("sandbox", "production") if env in found}
    # A topics list without an environment marker is a "Sandbox & Production" certificate; a
    # certificate without Apple's extensions at all is accepted in both (older test setups).
    env = envs.pop() if len(envs) == 1 else "both"
    return {"team": f"cert:{uid or topics[0]}", "env": env, "topics": topics}
