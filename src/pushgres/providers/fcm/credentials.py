"""FCM credential checks: the service account, its OAuth token, and the project permission.

The service-account file must parse (Google's key file: an RSA key, the account's email and
project). Then the OAuth exchange runs as the daemon's does (:class:`TokenSource`: the
JWT-bearer grant of RFC 7523 against the account's ``token_uri``), and one ``validate_only``
send goes, through the daemon's pool and TLS context, to a dummy registration token: FCM
checks the access token and the account's permission on the project before the message, so
its 400 ``INVALID_ARGUMENT`` about the registration token proves the credential and the project
are fine, while ``validate_only`` means nothing could be delivered anyway (Google, "FCM HTTP v1
API": ``projects.messages.send``; "FCM error codes"). ``PERMISSION_DENIED``,
``SENDER_ID_MISMATCH``, ``NOT_FOUND`` and ``UNAUTHENTICATED`` name what is wrong, and
:data:`~pushgres.providers.fcm.reasons.FCM_HINTS` says how to fix it.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import re
from typing import Any, Final

from ... import codec
from ...config import AppConfig
from ...exceptions import ConfigError, ProviderAuthError, RequestTimeout, TransportError
from ...http2.pool import Response
from ...http2.tls import make_ssl_context
from ...models import Action, ClaimedRow, Request
from ..credentials import Check, CredentialReport
from ..pools import authority, new_pool
from .auth import ServiceAccount, TokenSource
from .config import FcmConfig
from .protocol import FcmRequestBuilder, parse_response
from .reasons import FCM_HINTS

__all__ = ["PROBE_REGISTRATION_TOKEN", "check_credentials", "credential_expiry"]

PROBE_REGISTRATION_TOKEN: Final = "pushgres.credential-check"
"""The ``validate_only`` probe's registration token: one FCM never issued (a dot is no
character of FCM's tokens)."""

_KIND: Final = "service account"
_CLOSE_TIMEOUT_S: Final = 0.5
_OAUTH_ERROR = re.compile(r"answered \d+ ([a-z_]+)")
_ERROR_INFO = "type.googleapis.com/google.rpc.ErrorInfo"


def credential_expiry(app: AppConfig) -> dt.datetime | None:
    """None: a service-account key does not say when it expires."""
    return None


def _config(app: AppConfig) -> FcmConfig:
    fcm = app.provider
    assert isinstance(fcm, FcmConfig)
    return fcm


async def check_credentials(
    app: AppConfig, *, timeout_s: float, now: dt.datetime
) -> CredentialReport:
    """The app's service account, its OAuth exchange, and one ``validate_only`` send."""
    fcm = _config(app)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    checks: list[Check] = []

    def failed(name: str, detail: str, hint: str | None) -> CredentialReport:
        checks.append(Check(name, False, detail))
        return CredentialReport.from_checks(app, _KIND, checks, summary="", hint=hint)

    try:
        account = ServiceAccount(fcm.service_account_file, token_uri=fcm.token_uri)
    except ConfigError as exc:
        return failed(
            "service account",
            str(exc),
            "point `service_account_file` at a key file of the project's service account "
            "(IAM & Admin, Service accounts, Keys)",
        )
    project = fcm.project_id or account.project_id
    checks.append(Check("service account", True, f"{account.client_email}, project {project}"))
    try:
        tokens = TokenSource(account, ca_file=app.pool.ca_file)
    except ConfigError as exc:
        return failed("OAuth", str(exc), "check `ca_file`")
    try:
        try:
            async with asyncio.timeout_at(deadline):
                authorization = await tokens.header()
        except TimeoutError:
            return failed(
                "OAuth",
                f"no access token from {account.token_uri} within {timeout_s:g}s",
                "the token endpoint does not answer: check network access to it",
            )
        except ProviderAuthError as exc:
            code = _OAUTH_ERROR.search(str(exc))
            hint = FCM_HINTS.get(code.group(1)) if code else None
            if hint is None and not exc.permanent:
                hint = "check network access to the token endpoint, then try again"
            return failed("OAuth", str(exc), hint)
        checks.append(Check("OAuth", True, f"access token from {account.token_uri}"))
        remaining_s = max(0.1, deadline - loop.time())
        check = await _probe(app, project, authorization, remaining_s, timeout_s, now)
    finally:
        await tokens.aclose()
    checks.append(check[0])
    return CredentialReport.from_checks(
        app,
        _KIND,
        checks,
        summary=f"{account.client_email} may send for project {project}",
        hint=check[1],
    )


async def _probe(
    app: AppConfig,
    project: str,
    authorization: bytes,
    remaining_s: float,
    timeout_s: float,
    now: dt.datetime,
) -> tuple[Check, str | None]:
    """A ``validate_only`` send to :data:`PROBE_REGISTRATION_TOKEN`, as the daemon sends,
    within what is left (``remaining_s``) of the check's ``timeout_s``."""
    try:
        ssl_context = make_ssl_context(ca_file=app.pool.ca_file)
    except ConfigError as exc:
        return Check("FCM", False, str(exc)), "check `ca_file`"
    builder = FcmRequestBuilder(authority=authority(app.pool), project_id=project)
    request = builder.build(
        ClaimedRow.fresh(
            id=0,
            app=app.name,
            platform=app.platform,
            device_token=PROBE_REGISTRATION_TOKEN,
            payload="{}",
            now=now,
            priority=5,
        ),
        now=now,
    )
    assert isinstance(request, Request)
    body = codec.dumps({"validate_only": True, **codec.loads(request.body)})
    headers = [*request.headers, (b"authorization", authorization)]
    pool = new_pool(app, ssl_context, never_indexed=frozenset({b":path"}))
    await pool.start()
    try:
        (result,) = await pool.send_batch([(headers, body)], timeout_s=remaining_s)
    finally:
        await pool.aclose(_CLOSE_TIMEOUT_S)
    where = f"{app.pool.host}:{app.pool.port}"
    if isinstance(result, RequestTimeout):
        return (
            Check("FCM", False, f"no answer from {where} within {timeout_s:g}s"),
            "FCM does not answer: check network access to the endpoint",
        )
    if isinstance(result, TransportError):
        return (
            Check("FCM", False, f"{type(result).__name__}: {result}"),
            "check `endpoint`, `ca_file` and network access to the endpoint",
        )
    return _answer(result, project)


def _answer(response: Response, project: str) -> tuple[Check, str | None]:
    outcome = parse_response(response.status, response.headers, response.body)
    if outcome.action is Action.SENT:
        return Check("FCM", True, f"validate_only send accepted for project {project}"), None
    # The probe token is not one FCM issued: an answer about the token (and only that)
    # means the access token and the project permission passed.
    if outcome.action is Action.DEAD and outcome.reason != "SENDER_ID_MISMATCH":
        detail = f"project {project} accepted ({outcome.reason} for the probe token)"
        return Check("FCM", True, detail), None
    code = "SERVICE_DISABLED" if _error_info_reason(response.body) == "SERVICE_DISABLED" else None
    code = code or outcome.reason
    hint = FCM_HINTS.get(code or "")
    if hint is None and outcome.action is Action.WAIT:
        hint = "FCM is unavailable or throttling: try again later"
    message = f": {outcome.detail}" if outcome.detail else ""
    return Check("FCM", False, f"{response.status} {outcome.reason}{message}"), hint


def _error_info_reason(body: bytes) -> str | None:
    """The ``reason`` of a ``google.rpc.ErrorInfo`` detail (e.g. ``SERVICE_DISABLED``)."""
    try:
        data: Any = codec.loads(body) if body else None
    except codec.JSONDecodeError:
        return None
    error = data.get("error") if isinstance(data, dict) else None
    details = error.get("details") if isinstance(error, dict) else None
    for detail in details if isinstance(details, list) else []:
        if isinstance(detail, dict) and detail.get("@type") == _ERROR_INFO:
            reason = detail.get("reason")
            return reason if isinstance(reason, str) else None
    return None
