"""FCM error codes → what the daemon does (Google, "FCM error codes", ErrorCode), as a data table.

A response is classified by the ``errorCode`` of its ``FcmError`` detail, else by the
envelope's ``status``, else by the HTTP status, as firebase-admin does. ``INVALID_ARGUMENT``
is a dead token only when the error is about the token itself (``TOKEN_INVALID_MESSAGES`` or an
``ApnsError`` saying the APNs token is gone); otherwise the message is at fault.
"""

from __future__ import annotations

from ...models import Action

__all__ = [
    "FCM_ERROR_CODES",
    "FCM_STATUSES",
    "TOKEN_INVALID_APNS_REASONS",
    "TOKEN_INVALID_MESSAGES",
    "action_for",
]

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
