"""The reason tables cover every code Apple and Google document, with the documented class."""

from __future__ import annotations

from pushgres.models import Action
from pushgres.providers.apns.reasons import APNS_REASONS
from pushgres.providers.fcm.reasons import FCM_ERROR_CODES

DOCUMENTED_APNS = {
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

DOCUMENTED_FCM = {
    "UNSPECIFIED_ERROR",
    "INVALID_ARGUMENT",
    "UNREGISTERED",
    "SENDER_ID_MISMATCH",
    "QUOTA_EXCEEDED",
    "UNAVAILABLE",
    "INTERNAL",
    "THIRD_PARTY_AUTH_ERROR",
    "APNS_AUTH_ERROR",
}


def test_apns_table_matches_apples_documented_reasons() -> None:
    assert APNS_REASONS == DOCUMENTED_APNS


def test_fcm_table_covers_every_error_code() -> None:
    assert set(FCM_ERROR_CODES) == DOCUMENTED_FCM
    assert FCM_ERROR_CODES["UNREGISTERED"] is Action.DEAD
    assert FCM_ERROR_CODES["SENDER_ID_MISMATCH"] is Action.DEAD
    # INVALID_ARGUMENT is not a dead token in general (Google, "FCM error codes").
    assert FCM_ERROR_CODES["INVALID_ARGUMENT"] is Action.FIX
    assert FCM_ERROR_CODES["THIRD_PARTY_AUTH_ERROR"] is Action.CFG
