"""Apple's reason strings → what the daemon does (Apple, "Handling notification responses from APNs"), as a data table.

DEAD records the device token as invalid for the app; FIX fails the notification; CFG retries
with backoff and alerts (a credential or topic problem hits every notification of the app);
AUTH refreshes the provider token and/or moves to a new connection; WAIT retries with backoff;
CONN retries at once on another connection. An unknown reason is treated by its status class.
"""

from __future__ import annotations

from ...models import Action

__all__ = ["APNS_REASONS", "action_for"]

APNS_REASONS: dict[str, Action] = {
    "BadCollapseId": Action.FIX,
    "BadDeviceToken": Action.DEAD,
    "BadExpirationDate": Action.FIX,
    "BadMessageId": Action.FIX,
    "BadPriority": Action.FIX,
    "BadTopic": Action.CFG,
    "DeviceTokenNotForTopic": Action.DEAD,
    "DuplicateHeaders": Action.FIX,
    "IdleTimeout": Action.CONN,
    "InvalidPushType": Action.FIX,
    "MissingDeviceToken": Action.FIX,
    "MissingTopic": Action.CFG,
    "PayloadEmpty": Action.FIX,
    "TopicDisallowed": Action.CFG,
    "BadCertificate": Action.CFG,
    "BadCertificateEnvironment": Action.CFG,
    "ExpiredProviderToken": Action.AUTH,
    "Forbidden": Action.CFG,
    "InvalidProviderToken": Action.CFG,
    "MissingProviderToken": Action.CFG,
    "UnrelatedKeyIdInToken": Action.AUTH,
    "BadEnvironmentKeyIdInToken": Action.CFG,
    "BadEnvironmentKeyInToken": Action.CFG,
    "BadPath": Action.FIX,
    "MethodNotAllowed": Action.FIX,
    "ExpiredToken": Action.DEAD,
    "Unregistered": Action.DEAD,
    "PayloadTooLarge": Action.FIX,
    "TooManyProviderTokenUpdates": Action.AUTH,
    "TooManyRequests": Action.WAIT,
    "InternalServerError": Action.WAIT,
    "ServiceUnavailable": Action.WAIT,
    "Shutdown": Action.CONN,
}


def action_for(status: int, reason: str | None) -> Action:
    """The action for an APNs answer; unknown reasons fall back on the status class."""
    if status == 200:
        return Action.SENT
    if reason is not None and reason in APNS_REASONS:
        return APNS_REASONS[reason]
    if status == 410:
        return Action.DEAD
    if status in (429, 500, 502, 503, 504):
        return Action.WAIT
    if status == 403:
        return Action.CFG
    return Action.FIX
