"""Firebase Cloud Messaging HTTP v1 (FCM): OAuth2 service accounts, HTTP/2 to Google.

Everything pushgres knows about this provider lives in this folder: ``config.py`` (its
app table), ``protocol.py`` (requests, responses, enqueue checks), ``reasons.py`` (the reason
table and the fixes for credential problems), ``auth.py`` (credentials), ``credentials.py``
(checking them: ``pushgres check-credentials``) and ``sender.py``. :data:`PROVIDER` is what
the registry in ``providers/__init__.py`` holds.
"""

from __future__ import annotations

from ..base import ProviderModule
from .config import parse_app
from .credentials import check_credentials, credential_expiry
from .protocol import check_message, check_notification
from .reasons import PACE_SCOPES
from .sender import build_senders

__all__ = ["PROVIDER"]

PROVIDER = ProviderModule(
    "fcm",
    parse_app=parse_app,
    check=check_notification,
    check_message=check_message,
    senders=build_senders,
    check_credentials=check_credentials,
    credential_expiry=credential_expiry,
    # Google: a token with no activity for 270 days is expired on Android ("Best practices
    # for FCM registration token management").
    token_lifetime_days=270,
    pace_scopes=PACE_SCOPES,
)
