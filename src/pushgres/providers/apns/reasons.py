"""Apple's reason strings → what the daemon does (Apple, "Handling notification responses from APNs"), as a data table.

DEAD records the device token as invalid for the app; FIX fails the notification; CFG retries
with backoff and alerts (a credential or topic problem hits every notification of the app);
AUTH refreshes the provider token and/or moves to a new connection; WAIT retries with backoff;
CONN retries at once on another connection. An unknown reason is treated by its status class.

:data:`APNS_HINTS` names, for the reasons that mean the app's credential or configuration is
wrong, what to fix, in words an operator acts on (``pushgres check-credentials`` and the
daemon's alerts show it). :func:`diagnoses` is what the daemon watches an app's answers for:
``BadDeviceToken`` on most sends means tokens of the other environment.
"""

from __future__ import annotations

from ...config import AppConfig
from ...models import Action
from ...observability.diagnosis import Diagnosis
from .config import ApnsConfig

__all__ = [
    "APNS_HINTS",
    "APNS_REASONS",
    "PACE_SCOPES",
    "action_for",
    "bad_device_token_detail",
    "diagnoses",
    "hint_for",
]

# What a throttling answer slows (pipeline/pacing.py): 429 TooManyRequests is about one
# device ("The provider sent too many notifications to the same device token").
PACE_SCOPES: dict[str, str] = {"TooManyRequests": "device"}

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

_OTHER_ENVIRONMENT = (
    "the {what} belongs to the other APNs environment: check `environment` (production or "
    "sandbox), or use a {what} valid for both"
)

APNS_HINTS: dict[str, str] = {
    "BadCertificate": (
        "APNs does not accept this certificate: use the app's Apple Push Notification service "
        "certificate from the developer account (Certificates, Identifiers & Profiles)"
    ),
    "BadCertificateEnvironment": _OTHER_ENVIRONMENT.format(what="certificate"),
    "BadEnvironmentKeyIdInToken": _OTHER_ENVIRONMENT.format(what="key"),
    "BadEnvironmentKeyInToken": _OTHER_ENVIRONMENT.format(what="key"),
    "InvalidProviderToken": (
        "APNs does not know this key for this team: check `key_id` and `team_id` against the "
        "developer account (Keys), that `key_file` is that key, and that it is not revoked"
    ),
    "ExpiredProviderToken": (
        "APNs found the provider token older than an hour: check the host's clock (NTP)"
    ),
    "MissingProviderToken": "no credential reached APNs: configure a token key or a certificate",
    "Forbidden": (
        "APNs refused this credential: check that the key or certificate is not revoked and "
        "has the Apple Push Notifications service enabled"
    ),
    "TopicDisallowed": (
        "this credential may not push to `topic`: use a bundle id of the key's team (or the "
        "certificate's app)"
    ),
    "BadTopic": "`topic` is not a valid bundle id",
    "MissingTopic": "set `topic` to the app's bundle id",
    "DeviceTokenNotForTopic": "the device token belongs to another app: check `topic`",
    "UnrelatedKeyIdInToken": (
        "requests on one connection were signed with unrelated keys: give apps that use "
        "different keys their own pools"
    ),
    "TooManyProviderTokenUpdates": (
        "the provider token was replaced too often: keep `token_refresh_s` at 1200 or more and "
        "one daemon process per key"
    ),
}
"""Reason → what to fix, for the reasons that point at the app's credential or configuration."""


def hint_for(reason: str | None) -> str | None:
    """The fix for an APNs reason, or None when the reason names no configuration problem."""
    return APNS_HINTS.get(reason) if reason is not None else None


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


_OTHER = {"production": "sandbox", "sandbox": "production"}


def bad_device_token_detail(environment: str) -> str:
    """What a ``BadDeviceToken`` means for an app sending to ``environment``."""
    return (
        f"not a {environment} device token: a {_OTHER[environment]} token (a development "
        "build's), or malformed"
    )


def diagnoses(app: AppConfig) -> list[Diagnosis]:
    """An APNs app's tokens look like the other environment's when most sends get
    ``BadDeviceToken`` (Apple: "the specified device token is invalid", which is also what a
    token of the other environment gets)."""
    apns = app.provider
    assert isinstance(apns, ApnsConfig)
    env = apns.environment
    return [
        Diagnosis(
            name="environment_mismatch",
            reason="BadDeviceToken",
            message=(
                f"tokens of app {app.name} look like {_OTHER[env]} tokens sent to {env}: "
                "check `environment` (development builds register sandbox tokens)"
            ),
        )
    ]
