"""The FCM HTTP v1 simulator and its OAuth2 token endpoint (protocol.md D.3).

``POST /v1/projects/{project}/messages:send`` over HTTP/2 checks the bearer access token (issued
by :class:`OAuthEndpoint`, unexpired, not revoked), the project, the JSON body (a ``message``
with exactly one target, ``data`` values strings, TTL, size) and the registration token
(``devkit.FCM_KINDS``), and answers with Google's error envelope or the message name. The OAuth
endpoint verifies the RS256 JWT-bearer assertion against the service account's public key.
"""

from __future__ import annotations

import secrets
import time
from email.utils import formatdate
from typing import Any

import jwt
import orjson
from aiohttp import web
from cryptography.hazmat.primitives import serialization

from .devkit import fcm_kind
from .server import Connection, Reply, Request, Service

__all__ = ["FcmSimulator", "OAuthEndpoint"]

_JSON = (b"content-type", b"application/json; charset=UTF-8")
_FCM_ERROR = "type.googleapis.com/google.firebase.fcm.v1.FcmError"
_APNS_ERROR = "type.googleapis.com/google.firebase.fcm.v1.ApnsError"
_KNOWN_MESSAGE_FIELDS = {
    "name",
    "data",
    "notification",
    "android",
    "webpush",
    "apns",
    "fcm_options",
    "fcmOptions",
    "token",
    "topic",
    "condition",
    "fid",
}
DEFAULT_KNOBS: dict[str, Any] = {
    "max_concurrent_streams": 100,
    "latency": None,
    "fail_rates": {},
    "blackhole_rate": 0.0,
    "goaway_after_streams": 0,
    "reset_connection": None,
    "retry_after": {"mode": "seconds", "value": 1},
    "quota_per_minute": 0,  # 0: unlimited
    "max_concurrent_streams_schedule": [],  # [{"after_requests": N, "value": M}], per connection
    "split_body_frames": 0,
    "clock_offset_s": 0.0,
}


class OAuthEndpoint:
    """Issues access tokens for service accounts (JWT-bearer grant)."""

    def __init__(self, *, token_uri: str, accounts: dict[str, dict[str, Any]]) -> None:
        self.token_uri = token_uri
        self.accounts = {
            email: {
                **spec,
                "key": serialization.load_pem_public_key(spec["public_key_pem"].encode()),
            }
            for email, spec in accounts.items()
        }
        self.tokens: dict[str, tuple[str, float]] = {}  # access token → (account, expiry)
        self.token_lifetime_s = 3599
        self.clock_offset_s = 0.0
        self.issued = 0

    def now(self) -> float:
        return time.time() + self.clock_offset_s

    def revoke_all(self) -> None:
        self.tokens.clear()

    def valid(self, access_token: str) -> str | None:
        entry = self.tokens.get(access_token)
        if entry is None or entry[1] <= self.now():
            return None
        return entry[0]

    async def handle(self, request: web.Request) -> web.Response:
        form = await request.post()
        if form.get("grant_type") != "urn:ietf:params:oauth:grant-type:jwt-bearer":
            return self._error(400, "unsupported_grant_type", "Invalid grant_type.")
        assertion = str(form.get("assertion", ""))
        try:
            header = jwt.get_unverified_header(assertion)
            claims = jwt.decode(assertion, options={"verify_signature": False})
        except jwt.PyJWTError:
            return self._error(400, "invalid_grant", "Invalid JWT Signature.")
        account = self.accounts.get(str(claims.get("iss")))
        if account is None:
            return self._error(400, "invalid_grant", "Invalid grant: account not found")
        if header.get("alg") != "RS256" or header.get("kid") not in (
            None,
            account["private_key_id"],
        ):
            return self._error(400, "invalid_grant", "Invalid JWT Signature.")
        try:
            jwt.decode(
                assertion,
                account["key"],
                algorithms=["RS256"],
                audience=self.token_uri,
                options={"verify_exp": False, "verify_iat": False},
            )
        except jwt.InvalidAudienceError:
            return self._error(400, "invalid_grant", "Invalid JWT: Failed audience check.")
        except jwt.PyJWTError:
            return self._error(400, "invalid_grant", "Invalid JWT Signature.")
        now = self.now()
        iat, exp = claims.get("iat"), claims.get("exp")
        if (
            not isinstance(iat, int)
            or not isinstance(exp, int)
            or iat > now + 300
            or exp <= now
            or exp - iat > 3600
        ):
            return self._error(
                400,
                "invalid_grant",
                "Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable "
                "timeframe. Check your iat and exp values in the JWT claim.",
            )
        if account.get("disabled"):
            return self._error(401, "invalid_client", "The OAuth client was not found.")
        scopes = str(claims.get("scope", "")).split()
        if not {
            "https://www.googleapis.com/auth/firebase.messaging",
            "https://www.googleapis.com/auth/cloud-platform",
        } & set(scopes):
            return self._error(
                400, "invalid_scope", "Invalid OAuth scope or ID token audience provided."
            )
        token = "ya29.sim-" + secrets.token_hex(16)
        self.tokens[token] = (str(claims["iss"]), now + self.token_lifetime_s)
        self.issued += 1
        return web.json_response(
            {"access_token": token, "expires_in": self.token_lifetime_s, "token_type": "Bearer"}
        )

    @staticmethod
    def _error(status: int, error: str, description: str) -> web.Response:
        return web.json_response({"error": error, "error_description": description}, status=status)


class FcmSimulator(Service):
    name = "fcm"

    default_knobs = DEFAULT_KNOBS

    def __init__(self, *, oauth: OAuthEndpoint, projects: dict[str, Any], seed: int = 2) -> None:
        super().__init__(seed=seed)
        self.oauth = oauth
        self.projects = projects  # project id → {"number": str, "service_accounts": [emails]}
        self.quota_window: dict[str, tuple[float, int]] = {}

    def metrics(self) -> dict[str, Any]:
        return {**super().metrics(), "oauth_tokens_issued": self.oauth.issued}

    def initial_max_streams(self, conn: Connection) -> int:
        return int(self.knobs["max_concurrent_streams"])

    def _error(
        self,
        status: int,
        google_status: str,
        message: str,
        error_code: str | None = None,
        *,
        extra_details: list[dict[str, Any]] | None = None,
        retry_after: bool = False,
    ) -> Reply:
        self.responses[f"{status}:{error_code or google_status}"] += 1
        details: list[dict[str, Any]] = []
        if error_code:
            details.append({"@type": _FCM_ERROR, "errorCode": error_code})
        details += extra_details or []
        body = {
            "error": {
                "code": status,
                "message": message,
                "status": google_status,
                "details": details,
            }
        }
        headers = [_JSON, (b"server", b"pushgres-sim"), (b"date", formatdate(usegmt=True).encode())]
        if retry_after:
            spec = self.knobs["retry_after"] or {}
            mode = spec.get("mode", "seconds")
            if mode == "seconds":
                headers.append((b"retry-after", str(int(spec.get("value", 1))).encode()))
            elif mode == "http-date":
                when = time.time() + float(spec.get("value", 1))
                headers.append((b"retry-after", formatdate(when, usegmt=True).encode()))
        return Reply(status, headers, orjson.dumps(body))

    def _by_code(self, code: str) -> Reply:
        table = {
            "UNREGISTERED": (404, "NOT_FOUND", "Requested entity was not found."),
            "SENDER_ID_MISMATCH": (403, "PERMISSION_DENIED", "SenderId mismatch"),
            "INVALID_ARGUMENT": (
                400,
                "INVALID_ARGUMENT",
                "The registration token is not a valid FCM registration token",
            ),
            "QUOTA_EXCEEDED": (
                429,
                "RESOURCE_EXHAUSTED",
                "Quota exceeded for quota metric 'Send messages'.",
            ),
            "UNAVAILABLE": (503, "UNAVAILABLE", "The service is currently unavailable."),
            "INTERNAL": (500, "INTERNAL", "Internal error encountered."),
            "THIRD_PARTY_AUTH_ERROR": (
                401,
                "UNAUTHENTICATED",
                "Auth error from APNS or Web Push Service",
            ),
        }
        status, google_status, message = table[code]
        extra = None
        if code == "THIRD_PARTY_AUTH_ERROR":
            extra = [{"@type": _APNS_ERROR, "statusCode": 403, "reason": "InvalidProviderToken"}]
        return self._error(
            status,
            google_status,
            message,
            code,
            extra_details=extra,
            retry_after=code in ("QUOTA_EXCEEDED", "UNAVAILABLE"),
        )

    def handle(self, request: Request) -> Reply:
        self.count("requests")
        reply = self._process(request)
        self.connection_faults(request, b"")
        if not reply.delay_s:
            reply.delay_s = self.latency_s()
        return reply

    def _process(self, req: Request) -> Reply:
        headers = dict(req.headers)
        path = headers.get(b":path", b"").decode("latin-1")
        parts = path.split("/")
        if (
            headers.get(b":method") != b"POST"
            or len(parts) != 5
            or parts[1] != "v1"
            or parts[2] != "projects"
            or parts[4] != "messages:send"
        ):
            return self._error(404, "NOT_FOUND", "Requested entity was not found.")
        project = parts[3]
        auth = headers.get(b"authorization")
        if auth is None:
            return self._error(
                401,
                "UNAUTHENTICATED",
                "Request is missing required authentication credential. Expected OAuth 2 access "
                "token, login cookie or other valid authentication credential.",
            )
        account = self.oauth.valid(auth.decode("latin-1").removeprefix("Bearer ").strip())
        if account is None:
            return self._error(
                401,
                "UNAUTHENTICATED",
                "Request had invalid authentication credentials. Expected OAuth 2 access token, "
                "login cookie or other valid authentication credential.",
            )
        spec = self.projects.get(project) or next(
            (p for p in self.projects.values() if p.get("number") == project), None
        )
        if spec is None or account not in spec.get("service_accounts", []):
            return self._error(
                403,
                "PERMISSION_DENIED",
                f"Permission 'cloudmessaging.messages.create' denied on resource '//cloudresourcemanager.googleapis.com/projects/{project}' (or it may not exist).",
            )
        try:
            body = orjson.loads(bytes(req.body))
        except orjson.JSONDecodeError:
            return self._error(400, "INVALID_ARGUMENT", "Invalid JSON payload received.")
        message = body.get("message") if isinstance(body, dict) else None
        if not isinstance(message, dict):
            return self._error(
                400, "INVALID_ARGUMENT", "Request contains an invalid argument.", "INVALID_ARGUMENT"
            )
        unknown = set(message) - _KNOWN_MESSAGE_FIELDS
        if unknown:
            name = sorted(unknown)[0]
            return self._error(
                400,
                "INVALID_ARGUMENT",
                f"Invalid JSON payload received. Unknown name \"{name}\" at 'message': Cannot find field.",
            )
        targets = [k for k in ("token", "topic", "condition", "fid") if k in message]
        if len(targets) != 1:
            return self._error(
                400, "INVALID_ARGUMENT", "Request contains an invalid argument.", "INVALID_ARGUMENT"
            )
        data = message.get("data") or {}
        if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
            return self._error(
                400,
                "INVALID_ARGUMENT",
                "Invalid value at 'message.data[0].value' (TYPE_STRING)",
                "INVALID_ARGUMENT",
            )
        android = message.get("android") or {}
        ttl = android.get("ttl") if isinstance(android, dict) else None
        if ttl is not None:
            try:
                seconds = float(str(ttl).removesuffix("s"))
            except ValueError:
                seconds = -1
            if not str(ttl).endswith("s") or not 0 <= seconds <= 2_419_200:
                return self._error(
                    400,
                    "INVALID_ARGUMENT",
                    "Invalid value at 'message.android.ttl'",
                    "INVALID_ARGUMENT",
                )
        size = len(orjson.dumps(data)) + len(orjson.dumps(message.get("notification") or {}))
        if size > (2048 if targets[0] != "token" else 4096):
            return self._error(400, "INVALID_ARGUMENT", "Message is too big", "INVALID_ARGUMENT")
        token = str(message.get("token", ""))
        ruled = self._token_rules(token)
        if ruled is not None:
            return ruled
        step = self.next_scripted(token)
        if step is not None and step != "200":
            return self._by_code(step.split(":", 1)[1])
        for spec_key, rate in self.knobs["fail_rates"].items():
            if self.rng.random() < rate:
                return self._by_code(spec_key.split(":", 1)[1])
        if self.knobs["blackhole_rate"] and self.rng.random() < self.knobs["blackhole_rate"]:
            return Reply(blackhole=True)
        quota = self._quota(project)
        if quota is not None:
            return quota
        if body.get("validate_only") or body.get("validateOnly"):
            self.responses["200"] += 1
            return Reply(
                200, [_JSON], orjson.dumps({"name": f"projects/{project}/messages/fake_message_id"})
            )
        self.accepted[token] += 1
        self.responses["200"] += 1
        name = f"projects/{project}/messages/0:{secrets.token_hex(8)}"
        return Reply(200, [_JSON], orjson.dumps({"name": name}))

    def _quota(self, project: str) -> Reply | None:
        limit = int(self.knobs["quota_per_minute"])
        if not limit:
            return None
        now = time.monotonic()
        start, used = self.quota_window.get(project, (now, 0))
        if now - start >= 60:
            start, used = now, 0
        if used >= limit:
            self.quota_window[project] = (start, used)
            return self._by_code("QUOTA_EXCEEDED")
        self.quota_window[project] = (start, used + 1)
        return None

    def _token_rules(self, token: str) -> Reply | None:
        kind = self.registry.get(token) or fcm_kind(token)
        if kind == "ok":
            return None
        if kind == "blackhole":
            return Reply(blackhole=True)
        if kind == "flaky":
            self.flaky[token] += 1
            return self._by_code("UNAVAILABLE") if self.flaky[token] <= 2 else None
        if kind == "apns_unregistered":
            return self._error(
                400,
                "INVALID_ARGUMENT",
                "APNs device token is disabled.",
                "INVALID_ARGUMENT",
                extra_details=[{"@type": _APNS_ERROR, "statusCode": 410, "reason": "Unregistered"}],
            )
        return self._by_code(kind)
