"""FCM error codes → what the daemon does (Google, "FCM error codes", ErrorCode), as a data table.

A response is classified by the ``errorCode`` of its ``FcmError`` detail, else by the
envelope's ``status``, else by the HTTP status, as firebase-admin does. ``INVALID_ARGUMENT``
is a dead token only when the error is about the token itself (``TOKEN_INVALID_MESSAGES`` or an
``ApnsError`` saying the APNs token is gone); otherwise the message is at fault.

:data:`FCM_HINTS` names, for the codes (and OAuth token-endpoint errors) that mean the app's
service account or project is wrong, what to fix, in words an operator acts on (``pushgres
check-credentials`` and the daemon's alerts show it).
"""

from __future__ import annotations

from ...models import Action

__all__ = [
    "FCM_ERROR_CODES",
    "FCM_HINTS",
    "FCM_STATUSES",
    "PACE_SCOPES",
    "TOKEN_INVALID_APNS_REASONS",
    "TOKEN_INVALID_MESSAGES",
    "action_for",
    "hint_for",
]

# What a throttling answer slows (pipeline/pacing.py): the project's quota of messages per
# minute is the project's, whichever token hit it (Google: "Throttling and quotas").
PACE_SCOPES: dict[str, str] = {
    "QUOTA_EXCEEDED": "project",
    "RESOURCE_EXHAUSTED": "project",
}

FCM_ERROR_CODES: dict[str, Action] = {
    "UNSPECIFIED_ERROR": Action.WAIT,
    "INVALID_ARGUMENT": Action.FIX,
    "UNREGISTERED": Action.DEAD,
    "SENDER_ID_MISMATCH": Action.DEAD,
    "QUOTA_EXCEEDED": Action.WAIT,
    "UNAVAILABLE": Action.WAIT,
    "INTERNAL": Action.WAIT,
    "THIRD_PARTY_AUTH_ERROR": Action.CFG,
    "APNS_AUTH_ERROR": Action.CFG,
}

# Google API envelope statuses, for errors without an FcmError detail.
FCM_STATUSES: dict[str, Action] = {
    "INVALID_ARGUMENT": Action.FIX,
    "UNAUTHENTICATED": Action.AUTH,
    "PERMISSION_DENIED": Action.CFG,
    "NOT_FOUND": Action.CFG,
    "RESOURCE_EXHAUSTED": Action.WAIT,
    "UNAVAILABLE": Action.WAIT,
    "INTERNAL": Action.WAIT,
}

TOKEN_INVALID_MESSAGES = (
    "The registration token is not a valid FCM registration token",
    "APNs device token is disabled",
)
TOKEN_INVALID_APNS_REASONS = frozenset({"Unregistered", "BadDeviceToken", "ExpiredToken"})

FCM_HINTS: dict[str, str] = {
    "PERMISSION_DENIED": (
        "the service account may not send for this project: check `project_id`, or grant the "
        "account a role with cloudmessaging.messages.create (Firebase Cloud Messaging API "
        "Admin) in that project"
    ),
    "SERVICE_DISABLED": (
        "the Firebase Cloud Messaging API is disabled for the project: enable it in the Google "
        "Cloud console (APIs & Services)"
    ),
    "SENDER_ID_MISMATCH": (
        "the registration tokens belong to another Firebase project: check `project_id`"
    ),
    "NOT_FOUND": "there is no such Firebase project: check `project_id`",
    "UNAUTHENTICATED": (
        "FCM refused the OAuth access token: check that the service account is enabled and its "
        "key not deleted, and the host's clock"
    ),
    "THIRD_PARTY_AUTH_ERROR": (
        "the APNs credential uploaded to the Firebase project is invalid: upload a valid APNs "
        "key in the Firebase console (Project settings, Cloud Messaging)"
    ),
    "APNS_AUTH_ERROR": (
        "the APNs credential uploaded to the Firebase project is invalid: upload a valid APNs "
        "key in the Firebase console (Project settings, Cloud Messaging)"
    ),
    # The OAuth token endpoint's errors (RFC 6749 section 5.2), as Google returns them.
    "invalid_grant": (
        "Google refused the service account's key: the key may be deleted or the account "
        "unknown; create a new key (IAM & Admin, Service accounts) and check the host's clock"
    ),
    "invalid_client": "the service account is disabled or deleted: enable it or use another one",
    "invalid_scope": "the token request asked for a scope Google refuses",
    "unauthorized_client": "the service account may not use this grant: use a service-account key",
}
"""Code → what to fix, for the codes that point at the app's service account or project."""


def hint_for(code: str | None) -> str | None:
    """The fix for an FCM code or OAuth error, or None when it names no configuration problem."""
    return FCM_HINTS.get(code) if code is not None else None


_BY_HTTP_STATUS: dict[int, Action] = {
    400: Action.FIX,
    401: Action.AUTH,
    403: Action.CFG,
    404: Action.CFG,
    429: Action.WAIT,
}


def action_for(
    status: int,
    error_code: str | None,
    envelope_status: str | None,
    message: str | None,
    apns_reason: str | None,
) -> Action:
    if status == 200:
        return Action.SENT
    if error_code == "INVALID_ARGUMENT" or (error_code is None and status == 400):
        token_gone = apns_reason in TOKEN_INVALID_APNS_REASONS or (
            message is not None and any(m in message for m in TOKEN_INVALID_MESSAGES)
        )
        if token_gone:
            return Action.DEAD
    if error_code is not None and error_code in FCM_ERROR_CODES:
        return FCM_ERROR_CODES[error_code]
    if envelope_status is not None and envelope_status in FCM_STATUSES:
        return FCM_STATUSES[envelope_status]
    if status >= 500:
        return Action.WAIT
    return _BY_HTTP_STATUS.get(status, Action.FIX)
