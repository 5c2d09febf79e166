"""The FCM HTTP v1 simulator and its OAuth2 token endpoint.

``POST /v1/projects/{project}/messages:send`` (HTTP/2, or HTTP/1.1 when ALPN picks it) runs
these checks in order: 1. the bearer access token (issued by :class:`OAuthEndpoint`, unexpired,
not revoked; else 401 ``UNAUTHENTICATED``); 2. the account may send for the project (given by
ID or number) and the API is enabled (403 ``PERMISSION_DENIED``); 3-7. the JSON body (unknown
fields, exactly one target, ``data`` values strings and no reserved keys, Android priority /
TTL / color, ``apns.headers`` values strings, topic and condition syntax, payload size) →
400 ``INVALID_ARGUMENT``; 8. the registration token (format, registry state, ``devkit``
kinds) → Google's envelope with the ``FcmError`` code (and ``ApnsError`` for iOS tokens);
9. the per-project quota (a 60-second window from the project's first request, client errors
counted) → 429 ``QUOTA_EXCEEDED`` with ``Retry-After``; 10. scripts and injected faults;
11. ``validate_only``; 12. 200 ``{"name": "projects/<p>/messages/<id>"}``, counted per token.
Error bodies follow Google's FCM HTTP v1 ``ErrorCode`` reference.

The OAuth endpoint (:class:`OAuthEndpoint`, served by :class:`OAuthListener`) implements
Google's service-account flow ("Using OAuth 2.0 for Server to Server Applications"), the
JWT-bearer grant of RFC 7523. Like ``oauth2.googleapis.com`` it offers ALPN ``h2`` and
``http/1.1`` and answers ``POST /token`` over both (a client without ALPN gets HTTP/1.1, or
HTTP/2 with prior knowledge). It checks the assertion: grant type, RS256 signature against the
service account's public key, ``aud`` = Google's token URL
(``https://oauth2.googleapis.com/token``, which google-auth always signs) or the simulator's
own token URI, ``iat``/``exp``, the account, the scope; it answers ``{"access_token":
"ya29.sim-…", "expires_in": 3599, "token_type": "Bearer"}`` with ``Cache-Control: no-store``
(RFC 6749 section 5.1), and errors as ``{"error", "error_description"}`` (section 5.2).
"""

from __future__ import annotations

import math
import re
import secrets
import time
import urllib.parse
from email.utils import formatdate
from typing import Any

import jwt
import orjson
from cryptography.hazmat.primitives import serialization

from .devkit import fcm_kind
from .server import COMMON_KNOBS, Connection, Reply, Request, Service

__all__ = ["ERROR_CODES", "GOOGLE_TOKEN_URI", "FcmSimulator", "OAuthEndpoint", "OAuthListener"]

JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
# The audience Google documents for service-account assertions; google-auth signs it whatever
# the key file's token_uri says.
GOOGLE_TOKEN_URI = "https://oauth2.googleapis.com/token"
SCOPES = {
    "https://www.googleapis.com/auth/firebase.messaging",
    "https://www.googleapis.com/auth/cloud-platform",
}
_JSON = (b"content-type", b"application/json; charset=UTF-8")
_SERVER = (b"server", b"ESF")
_FCM_ERROR = "type.googleapis.com/google.firebase.fcm.v1.FcmError"
_APNS_ERROR = "type.googleapis.com/google.firebase.fcm.v1.ApnsError"
_BAD_REQUEST = "type.googleapis.com/google.rpc.BadRequest"
_QUOTA_FAILURE = "type.googleapis.com/google.rpc.QuotaFailure"
_ERROR_INFO = "type.googleapis.com/google.rpc.ErrorInfo"
_MISSING_AUTH = (
    "Request is missing required authentication credential. Expected OAuth 2 access token, "
    "login cookie or other valid authentication credential. See "
    "https://developers.google.com/identity/sign-in/web/devconsole-project."
)
_INVALID_AUTH = (
    "Request had invalid authentication credentials. Expected OAuth 2 access token, login "
    "cookie or other valid authentication credential. See "
    "https://developers.google.com/identity/sign-in/web/devconsole-project."
)
_BAD_TOKEN = "The registration token is not a valid FCM registration token"
_SHORT_LIVED = (
    "Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable "
    "timeframe. Check your iat and exp values in the JWT claim."
)
# errorCode → (HTTP status, google status, message), as in Google's FCM v1 ErrorCode reference.
ERROR_CODES: dict[str, tuple[int, str, str]] = {
    "UNREGISTERED": (404, "NOT_FOUND", "Requested entity was not found."),
    "SENDER_ID_MISMATCH": (403, "PERMISSION_DENIED", "SenderId mismatch"),
    "INVALID_ARGUMENT": (400, "INVALID_ARGUMENT", _BAD_TOKEN),
    "QUOTA_EXCEEDED": (
        429,
        "RESOURCE_EXHAUSTED",
        "Quota exceeded for quota metric 'Send messages'.",
    ),
    "UNAVAILABLE": (503, "UNAVAILABLE", "The service is currently unavailable."),
    "INTERNAL": (500, "INTERNAL", "Internal error encountered."),
    "THIRD_PARTY_AUTH_ERROR": (401, "UNAUTHENTICATED", "Auth error from APNS or Web Push Service"),
    "UNSPECIFIED_ERROR": (500, "UNKNOWN", "Unknown error."),
}
_TOP_FIELDS = {"message", "validate_only", "validateOnly"}
_MESSAGE_FIELDS = {
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
_TARGETS = ("token", "topic", "condition", "fid")
_RESERVED_DATA = {"from", "message_type", "notification"}
_TTL = re.compile(r"^\d+(\.\d{1,9})?s$")
_COLOR = re.compile(r"^#[0-9a-fA-F]{6}$")
_TOPIC_NAME = re.compile(r"^[a-zA-Z0-9\-_.~%]{1,900}$")
_CONDITION_TOPIC = re.compile(r"'([^']*)'\s+in\s+topics")

DEFAULT_KNOBS: dict[str, Any] = {
    **COMMON_KNOBS,
    "max_concurrent_streams": 100,
    "max_connection_age_s": 3600.0,
    "idle_timeout_s": 240.0,  # [INFER] GOAWAY NO_ERROR after that long without streams
    "retry_after": {"mode": "seconds", "value": 1},  # on injected 429/503
    "retry_after_mode": "seconds",  # on quota 429: seconds (until refill) | http-date | none
    "quota_per_minute": 0,  # every project; 0: the project's own setting (default unlimited)
    "quota_counts_validate_only": True,
    "unknown_token_policy": "valid",  # or "unregistered" | "invalid"
    "token_format_regex": r"^[A-Za-z0-9_:\-]{20,4096}$",
    "apns_unregistered_style": "invalid_argument",  # or "unregistered"
    "allow_http1": True,
}


def _envelope(
    status: int, google_status: str, message: str, details: list[dict[str, Any]]
) -> bytes:
    return orjson.dumps(
        {"error": {"code": status, "message": message, "status": google_status, "details": details}}
    )


class OAuthEndpoint:
    """Issues access tokens for service accounts (JWT-bearer grant, RFC 7523 section 2.1).

    Transport-free: :class:`OAuthListener` serves :meth:`exchange` over HTTP/2 and HTTP/1.1.
    An assertion's ``aud`` may be :data:`GOOGLE_TOKEN_URI` or :attr:`token_uri`.
    """

    default_knobs: dict[str, Any] = {
        "token_lifetime_s": 3599,
        "fail_rate": 0.0,  # 503 from the endpoint itself
        "latency_ms": 0,
        "clock_offset_s": 0.0,
    }

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
        self.knobs = dict(self.default_knobs)
        self.issued = 0
        self.rejected = 0

    # Kept as attributes for callers that set them directly.
    @property
    def token_lifetime_s(self) -> int:
        return int(self.knobs["token_lifetime_s"])

    @token_lifetime_s.setter
    def token_lifetime_s(self, value: int) -> None:
        self.knobs["token_lifetime_s"] = value

    @property
    def clock_offset_s(self) -> float:
        return float(self.knobs["clock_offset_s"])

    @clock_offset_s.setter
    def clock_offset_s(self, value: float) -> None:
        self.knobs["clock_offset_s"] = value

    def patch(self, knobs: dict[str, Any]) -> None:
        """Change knobs; ``{"revoke_all": true}`` revokes every access token issued so far."""
        knobs = dict(knobs)
        if knobs.pop("revoke_all", False):
            self.revoke_all()
        unknown = set(knobs) - set(self.default_knobs)
        if unknown:
            raise KeyError(f"unknown oauth knob(s): {sorted(unknown)}")
        self.knobs.update(knobs)

    def reset(self) -> None:
        self.tokens.clear()
        self.knobs = dict(self.default_knobs)
        self.issued = self.rejected = 0

    def metrics(self) -> dict[str, int]:
        return {"tokens_issued": self.issued, "rejected": self.rejected, "live": len(self.tokens)}

    def now(self) -> float:
        return time.time() + self.clock_offset_s

    def revoke_all(self) -> None:
        self.tokens.clear()

    def valid(self, access_token: str) -> str | None:
        """The account an access token belongs to, if it is known and unexpired."""
        entry = self.tokens.get(access_token)
        if entry is None or entry[1] <= self.now():
            return None
        return entry[0]

    def audiences(self) -> list[str]:
        """The ``aud`` values accepted: Google's token URL and this endpoint's own URI."""
        return [GOOGLE_TOKEN_URI, self.token_uri]

    def exchange(self, grant_type: str, assertion: str) -> tuple[int, dict[str, Any]]:
        """One token request: (status, JSON body)."""
        fail_rate = float(self.knobs["fail_rate"])
        if fail_rate and secrets.randbelow(1_000_000) < fail_rate * 1_000_000:
            self.rejected += 1
            return 503, {"error": "internal_failure", "error_description": "Backend Error"}
        if grant_type != JWT_BEARER:
            return self._error(400, "unsupported_grant_type", "Invalid grant_type: " + grant_type)
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
            account.get("private_key_id"),
        ):
            return self._error(400, "invalid_grant", "Invalid JWT Signature.")
        try:
            jwt.decode(
                assertion,
                account["key"],
                algorithms=["RS256"],
                audience=self.audiences(),
                options={"verify_exp": False, "verify_iat": False, "verify_nbf": False},
            )
        except jwt.InvalidAudienceError:
            return self._error(400, "invalid_grant", "Invalid JWT: Failed audience check.")
        except jwt.MissingRequiredClaimError:
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
            return self._error(400, "invalid_grant", _SHORT_LIVED)
        if account.get("disabled"):
            return self._error(401, "invalid_client", "The OAuth client was not found.")
        if not SCOPES & set(str(claims.get("scope", "")).split()):
            return self._error(
                400, "invalid_scope", "Invalid OAuth scope or ID token audience provided."
            )
        if len(self.tokens) > 10_000:
            self.tokens = {t: e for t, e in self.tokens.items() if e[1] > now}
        token = "ya29.sim-" + secrets.token_urlsafe(24)
        lifetime = self.token_lifetime_s
        self.tokens[token] = (str(claims["iss"]), now + lifetime)
        self.issued += 1
        return 200, {"access_token": token, "expires_in": lifetime, "token_type": "Bearer"}

    def _error(self, status: int, error: str, description: str) -> tuple[int, dict[str, Any]]:
        self.rejected += 1
        return status, {"error": error, "error_description": description}


class OAuthListener(Service):
    """The token endpoint's listener: ``POST /token`` over HTTP/2 or HTTP/1.1, as Google's.

    The connection handling is the shared server's (:class:`H2ServerProtocol`); each complete
    request is handed to :meth:`OAuthEndpoint.exchange`. Its connection knobs keep their
    defaults; the endpoint's own knobs (latency, failures, lifetime) are the endpoint's.
    """

    name = "oauth"
    default_knobs = COMMON_KNOBS

    def __init__(self, endpoint: OAuthEndpoint, *, seed: int = 3) -> None:
        super().__init__(seed=seed)
        self.endpoint = endpoint

    def http1_allowed(self) -> bool:
        return True

    def handle(self, request: Request) -> Reply:
        self.count("requests")
        path = (request.header(b":path") or b"").partition(b"?")[0]
        if path != b"/token":
            reply = self._answer(404, {"error": "not_found", "error_description": "Not Found"})
        elif request.header(b":method") != b"POST":
            reply = self._answer(
                405, {"error": "invalid_request", "error_description": "Method Not Allowed"}
            )
        else:
            form = self._form(request)
            reply = self._answer(
                *self.endpoint.exchange(form.get("grant_type", ""), form.get("assertion", ""))
            )
            reply.delay_s = float(self.endpoint.knobs["latency_ms"] or 0) / 1000
        self.responses[str(reply.status)] += 1
        return reply

    @staticmethod
    def _form(request: Request) -> dict[str, str]:
        """The ``application/x-www-form-urlencoded`` body (RFC 6749 section 4.1.3); else none."""
        content_type = (request.header(b"content-type") or b"").partition(b";")[0]
        if content_type.strip().lower() != b"application/x-www-form-urlencoded":
            return {}
        pairs = urllib.parse.parse_qsl(bytes(request.body).decode("latin-1"))
        form: dict[str, str] = {}
        for key, value in pairs:
            form.setdefault(key, value)
        return form

    @staticmethod
    def _answer(status: int, body: dict[str, Any]) -> Reply:
        headers = [
            (b"content-type", b"application/json; charset=utf-8"),
            (b"cache-control", b"no-store"),
            (b"pragma", b"no-cache"),
        ]
        return Reply(status, headers, orjson.dumps(body), reason=str(body.get("error", "")))


class FcmSimulator(Service):
    """FCM HTTP v1 for the configured projects.

    ``projects``: ``{project_id: {"number": "123456789012", "service_accounts": [email],
    "api_enabled": true, "quota_per_minute": 600000}}``. Registration tokens are registered
    with :meth:`register`, as a ``devkit`` kind or a dict ``{"project", "platform",
    "package", "state": valid|unregistered|invalid|sender_mismatch|third_party_auth|
    apns_unregistered, "apns_reason"}``.
    """

    name = "fcm"
    default_knobs = DEFAULT_KNOBS

    def __init__(self, *, oauth: OAuthEndpoint, projects: dict[str, Any], seed: int = 2) -> None:
        super().__init__(seed=seed)
        self.oauth = oauth
        self.projects = projects
        self.by_number = {str(p.get("number")): pid for pid, p in projects.items()}
        self.quota_window: dict[str, tuple[float, int]] = {}  # project → (window start, used)
        self._token_format = re.compile(DEFAULT_KNOBS["token_format_regex"])
        self._date: tuple[int, tuple[bytes, bytes]] = (0, (b"date", b""))

    def patch(self, knobs: dict[str, Any]) -> None:
        super().patch(knobs)
        if "token_format_regex" in knobs:
            self._token_format = re.compile(str(knobs["token_format_regex"]))

    def reset(self) -> None:
        super().reset()
        self.quota_window.clear()
        self._token_format = re.compile(DEFAULT_KNOBS["token_format_regex"])

    def metrics(self) -> dict[str, Any]:
        return {**super().metrics(), "oauth_tokens_issued": self.oauth.issued}

    def initial_max_streams(self, conn: Connection) -> int:
        return int(self.knobs["max_concurrent_streams"])

    def http1_allowed(self) -> bool:
        return bool(self.knobs["allow_http1"])

    # -- responses ----------------------------------------------------------------------

    def _headers(self) -> list[tuple[bytes, bytes]]:
        now = int(time.time())
        if now != self._date[0]:
            self._date = (now, (b"date", formatdate(now, usegmt=True).encode()))
        return [_JSON, _SERVER, self._date[1]]

    def _error(
        self,
        status: int,
        google_status: str,
        message: str,
        error_code: str | None = None,
        details: list[dict[str, Any]] | None = None,
    ) -> Reply:
        all_details: list[dict[str, Any]] = []
        if error_code:
            all_details.append({"@type": _FCM_ERROR, "errorCode": error_code})
        all_details += details or []
        return Reply(
            status,
            self._headers(),
            _envelope(status, google_status, message, all_details),
            reason=error_code or google_status,
        )

    def _bad_request(self, message: str, field: str = "", *, fcm: bool = True) -> Reply:
        details = [
            {
                "@type": _BAD_REQUEST,
                "fieldViolations": [{"field": field or "message", "description": message}],
            }
        ]
        return self._error(
            400, "INVALID_ARGUMENT", message, "INVALID_ARGUMENT" if fcm else None, details
        )

    def error_for(self, code: str, *, apns: dict[str, Any] | None = None) -> Reply:
        """The envelope for an ``errorCode`` (``ERROR_CODES``), with ``Retry-After`` on 429/503."""
        status, google_status, message = ERROR_CODES[code]
        details = [{"@type": _APNS_ERROR, **apns}] if apns else []
        if code == "QUOTA_EXCEEDED":
            details.append(
                {
                    "@type": _QUOTA_FAILURE,
                    "violations": [
                        {"subject": "project", "description": "Project message rate exceeded."}
                    ],
                }
            )
        reply = self._error(status, google_status, message, code, details)
        if status in (429, 503):
            spec = self.knobs["retry_after"] or {}
            self._retry_after(reply, str(spec.get("mode", "seconds")), float(spec.get("value", 1)))
        return reply

    def _retry_after(self, reply: Reply, mode: str, seconds: float) -> None:
        if mode == "seconds":
            reply.headers.append((b"retry-after", str(max(1, math.ceil(seconds))).encode()))
        elif mode == "http-date":
            when = time.time() + max(1.0, seconds)
            reply.headers.append((b"retry-after", formatdate(when, usegmt=True).encode()))

    def _outcome(self, spec: str, token: str) -> Reply | None:
        """A scripted or injected ``"<status>:<errorCode>"``; ``"200"``: no override."""
        if spec == "200":
            return None
        status, _, code = spec.partition(":")
        if status == "RST_STREAM":
            rst = {"REFUSED_STREAM": 7, "CANCEL": 8, "INTERNAL_ERROR": 2}.get(code, 2)
            return Reply(reset_code=rst, reason=spec)
        if status == "blackhole":
            return Reply(blackhole=True, reason=spec)
        if code == "apns_unregistered":
            return self._apns_unregistered()
        if code in ERROR_CODES:
            return self.error_for(code)
        return self._error(int(status), "UNKNOWN", code or "Injected error.")

    def _apns_unregistered(self) -> Reply:
        apns = {"@type": _APNS_ERROR, "statusCode": 410, "reason": "Unregistered"}
        if self.knobs["apns_unregistered_style"] == "unregistered":
            return self._error(
                404, "NOT_FOUND", "Requested entity was not found.", "UNREGISTERED", [apns]
            )
        return self._error(
            400, "INVALID_ARGUMENT", "APNs device token is disabled.", "INVALID_ARGUMENT", [apns]
        )

    # -- per request --------------------------------------------------------------------

    def handle(self, request: Request) -> Reply:
        self.count("requests")
        project, token, reply, validate_only = self._process(request)
        if (
            project is not None
            and reply.status < 500
            and reply.status != 429
            and (not validate_only or self.knobs["quota_counts_validate_only"])
        ):
            self._use_quota(project)
        if reply.blackhole or reply.reset_code is not None:
            key = reply.reason or "RST_STREAM"
        else:
            key = f"{reply.status}:{reply.reason}" if reply.reason else str(reply.status)
        self.responses[key] += 1
        if not reply.delay_s:
            reply.delay_s = self.latency_s()
        self.log_request(request, token, reply)
        return reply

    def _process(self, req: Request) -> tuple[str | None, str, Reply, bool]:
        headers: dict[bytes, bytes] = {}
        for key, value in req.headers:
            headers[key] = value
        path = headers.get(b":path", b"").decode("latin-1")
        parts = path.split("/")
        if (
            len(parts) != 5
            or parts[1] != "v1"
            or parts[2] != "projects"
            or parts[4] != "messages:send"
        ):
            return None, "", self._error(404, "NOT_FOUND", "Requested entity was not found."), False
        if headers.get(b":method") != b"POST":
            return None, "", self._error(405, "METHOD_NOT_ALLOWED", "Method not allowed."), False
        project = self.by_number.get(parts[3], parts[3])
        # 1: access token.
        auth = headers.get(b"authorization")
        if auth is None:
            return None, "", self._error(401, "UNAUTHENTICATED", _MISSING_AUTH), False
        scheme, _, access_token = auth.decode("latin-1").partition(" ")
        account = self.oauth.valid(access_token.strip()) if scheme.lower() == "bearer" else None
        if account is None:
            return None, "", self._error(401, "UNAUTHENTICATED", _INVALID_AUTH), False
        # 2: project permission and API enablement.
        spec = self.projects.get(project)
        if spec is None or account not in spec.get("service_accounts", ()):
            text = (
                "Permission 'cloudmessaging.messages.create' denied on resource "
                f"'//cloudresourcemanager.googleapis.com/projects/{parts[3]}' "
                "(or it may not exist)."
            )
            return None, "", self._error(403, "PERMISSION_DENIED", text), False
        if not spec.get("api_enabled", True):
            text = (
                "Firebase Cloud Messaging API has not been used in project "
                f"{spec.get('number', project)} before or it is disabled."
            )
            info = {
                "@type": _ERROR_INFO,
                "reason": "SERVICE_DISABLED",
                "domain": "googleapis.com",
                "metadata": {"service": "fcm.googleapis.com"},
            }
            return None, "", self._error(403, "PERMISSION_DENIED", text, None, [info]), False
        # 3-7: the body.
        try:
            body = orjson.loads(bytes(req.body))
        except orjson.JSONDecodeError:
            return (
                project,
                "",
                self._bad_request("Invalid JSON payload received.", fcm=False),
                False,
            )
        if not isinstance(body, dict):
            return (
                project,
                "",
                self._bad_request("Invalid JSON payload received.", fcm=False),
                False,
            )
        validate_only = bool(body.get("validate_only") or body.get("validateOnly"))
        unknown = sorted(set(body) - _TOP_FIELDS)
        if unknown:
            text = f'Invalid JSON payload received. Unknown name "{unknown[0]}": Cannot find field.'
            return project, "", self._bad_request(text, fcm=False), validate_only
        message = body.get("message")
        if not isinstance(message, dict):
            return (
                project,
                "",
                self._bad_request("Request contains an invalid argument.", "message"),
                validate_only,
            )
        invalid = self._check_message(message)
        token = str(message.get("token", ""))
        if invalid is not None:
            return project, token, invalid, validate_only
        # 8: the registration token.
        if "token" in message:
            ruled = self._token_rules(token, project, message)
            if ruled is not None:
                return project, token, ruled, validate_only
        # 9: project quota.
        quota = self._quota(project)
        if quota is not None:
            return project, token, quota, validate_only
        # 10: scripts and injected faults.
        step = self.next_scripted(token)
        if step is not None:
            scripted = self._outcome(step, token)
            if scripted is not None:
                scripted.fault = "script"
                return project, token, scripted, validate_only
        for fault, rate in self.knobs["fail_rates"].items():
            if self.rng.random() < rate:
                self.faults[fault] += 1
                injected = self._outcome(fault, token)
                if injected is not None:
                    injected.fault = fault
                    return project, token, injected, validate_only
        if self.chance("blackhole_rate"):
            self.faults["blackhole"] += 1
            return project, token, Reply(blackhole=True, reason="blackhole"), validate_only
        code = self.rst_code("before")
        if code is not None:
            self.faults[f"rst_stream:{code}"] += 1
            return project, token, Reply(reset_code=code, reason=f"RST_STREAM:{code}"), False
        # 11-12: accepted.
        if validate_only:
            name = f"projects/{project}/messages/fake_message_id"
            return project, token, Reply(200, self._headers(), orjson.dumps({"name": name})), True
        target = token or str(message.get("topic") or message.get("condition"))
        name = f"projects/{project}/messages/0:{secrets.token_hex(8)}"
        reply = Reply(200, self._headers(), orjson.dumps({"name": name}), accepted=(target, ""))
        code = self.rst_code("after_processing")
        if code is not None:
            self.faults[f"rst_stream_after:{code}"] += 1
            reset = Reply(reset_code=code, reason=f"RST_STREAM:{code}", accepted=(target, ""))
            return project, token, reset, False
        if self.chance("mid_response_reset"):
            self.faults["mid_response_reset"] += 1
            reply.abort_after_headers = True
        return project, token, reply, False

    def _check_message(self, message: dict[str, Any]) -> Reply | None:
        """Steps 4-7: field names, one target, field rules, size."""
        unknown = sorted(set(message) - _MESSAGE_FIELDS)
        if unknown:
            text = f"Invalid JSON payload received. Unknown name \"{unknown[0]}\" at 'message': Cannot find field."
            return self._bad_request(text, "message", fcm=False)
        targets = [k for k in _TARGETS if k in message]
        if len(targets) != 1:
            return self._bad_request("Request contains an invalid argument.", "message")
        data = message.get("data", {})
        if not isinstance(data, dict):
            return self._bad_request("Invalid value at 'message.data'", "message.data")
        for i, (key, value) in enumerate(data.items()):
            if not isinstance(value, str):
                text = f"Invalid value at 'message.data[{i}].value' (TYPE_STRING), {orjson.dumps(value).decode()}"
                return self._bad_request(text, f"message.data[{i}].value")
            lowered = key.lower()
            if key in _RESERVED_DATA or lowered.startswith(("google", "gcm")):
                return self._bad_request(f"Invalid data payload key: {key}", "message.data")
        android = message.get("android")
        if android is not None:
            invalid = self._check_android(android)
            if invalid is not None:
                return invalid
        apns = message.get("apns")
        if isinstance(apns, dict):
            apns_headers = apns.get("headers", {})
            if not isinstance(apns_headers, dict) or not all(
                isinstance(v, str) for v in apns_headers.values()
            ):
                return self._bad_request(
                    "Invalid value at 'message.apns.headers'", "message.apns.headers"
                )
        if targets[0] == "topic":
            topic = str(message["topic"]).removeprefix("/topics/")
            if not _TOPIC_NAME.match(topic):
                return self._bad_request("Invalid topic name.", "message.topic")
        if targets[0] == "condition":
            names = _CONDITION_TOPIC.findall(str(message["condition"]))
            if not names or len(names) > 5:
                return self._bad_request("Invalid condition expression.", "message.condition")
        size = 0
        for key in ("data", "notification"):
            if key in message:
                size += len(orjson.dumps(message[key]))
        if isinstance(apns, dict) and "payload" in apns:
            size = max(size, len(orjson.dumps(apns["payload"])))
        limit = 4096 if targets[0] in ("token", "fid") else 2048
        if size > limit:
            return self._bad_request(f"Message is too big: {size} bytes, limit {limit}.", "message")
        return None

    def _check_android(self, android: Any) -> Reply | None:
        if not isinstance(android, dict):
            return self._bad_request("Invalid value at 'message.android'", "message.android")
        priority = android.get("priority")
        if priority is not None and str(priority).upper() not in ("NORMAL", "HIGH"):
            return self._bad_request(
                f"Invalid value at 'message.android.priority' (TYPE_ENUM), \"{priority}\"",
                "message.android.priority",
            )
        ttl = android.get("ttl")
        if ttl is not None:
            ok = isinstance(ttl, str) and bool(_TTL.match(ttl))
            if not ok or not 0 <= float(str(ttl)[:-1]) <= 2_419_200:
                return self._bad_request(
                    "Invalid value at 'message.android.ttl' (type.googleapis.com/google.protobuf.Duration)",
                    "message.android.ttl",
                )
        notification = android.get("notification")
        if (
            isinstance(notification, dict)
            and "color" in notification
            and not _COLOR.match(str(notification["color"]))
        ):
            return self._bad_request(
                "Invalid value at 'message.android.notification.color'",
                "message.android.notification.color",
            )
        return None

    def _token_rules(self, token: str, project: str, message: dict[str, Any]) -> Reply | None:
        entry = self.registry.get(token)
        if entry is None and not self._token_format.match(token):
            return self.error_for("INVALID_ARGUMENT")
        if isinstance(entry, dict):
            return self._registered(entry, project, message)
        kind = entry or fcm_kind(token)
        if kind == "ok":
            if entry is None:
                policy = self.knobs["unknown_token_policy"]
                if policy == "unregistered":
                    return self.error_for("UNREGISTERED")
                if policy == "invalid":
                    return self.error_for("INVALID_ARGUMENT")
            return None
        if kind == "blackhole":
            return Reply(blackhole=True, reason="blackhole")
        if kind == "flaky":
            self.flaky[token] += 1
            return self.error_for("UNAVAILABLE") if self.flaky[token] <= 2 else None
        if kind == "apns_unregistered":
            return self._apns_unregistered()
        if kind == "THIRD_PARTY_AUTH_ERROR":
            return self.error_for(kind, apns={"statusCode": 403, "reason": "InvalidProviderToken"})
        if kind in ERROR_CODES:
            return self.error_for(kind)
        return None

    def _registered(
        self, spec: dict[str, Any], project: str, message: dict[str, Any]
    ) -> Reply | None:
        """A token registered with a state dict (the configuration's ``registration_tokens``)."""
        state = spec.get("state", "valid")
        if state == "invalid":
            return self.error_for("INVALID_ARGUMENT")
        if state == "unregistered":
            return self.error_for("UNREGISTERED")
        owner = spec.get("project")
        if state == "sender_mismatch" or (owner and owner != project):
            return self.error_for("SENDER_ID_MISMATCH")
        android = message.get("android")
        restricted = android.get("restricted_package_name") if isinstance(android, dict) else None
        if restricted and spec.get("package") and restricted != spec["package"]:
            return self._bad_request(
                "Request contains an invalid argument.", "message.android.restricted_package_name"
            )
        if state == "third_party_auth":
            reason = spec.get("apns_reason", "InvalidProviderToken")
            return self.error_for(
                "THIRD_PARTY_AUTH_ERROR", apns={"statusCode": 403, "reason": reason}
            )
        if state == "apns_unregistered":
            return self._apns_unregistered()
        return None

    # -- quota --------------------------------------------------------------------------

    def _quota_limit(self, project: str) -> int:
        global_limit = int(self.knobs["quota_per_minute"] or 0)
        if global_limit:
            return global_limit
        return int(self.projects.get(project, {}).get("quota_per_minute", 0) or 0)

    def _window(self, project: str) -> tuple[float, int]:
        now = self.now()
        start, used = self.quota_window.get(project, (now, 0))
        if now - start >= 60:
            start, used = now, 0
        self.quota_window[project] = (start, used)
        return start, used

    def _quota(self, project: str) -> Reply | None:
        limit = self._quota_limit(project)
        if not limit:
            return None
        start, used = self._window(project)
        if used < limit:
            return None
        self.count("quota_rejections")
        status, google_status, message = ERROR_CODES["QUOTA_EXCEEDED"]
        details = [
            {
                "@type": _QUOTA_FAILURE,
                "violations": [
                    {"subject": f"project:{project}", "description": "Project message rate."}
                ],
            }
        ]
        reply = self._error(status, google_status, message, "QUOTA_EXCEEDED", details)
        self._retry_after(reply, str(self.knobs["retry_after_mode"]), start + 60 - self.now())
        return reply

    def _use_quota(self, project: str) -> None:
        if self._quota_limit(project):
            start, used = self._window(project)
            self.quota_window[project] = (start, used + 1)
