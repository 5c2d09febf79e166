"""Apple Push Notification service (APNs): token or certificate auth, HTTP/2 to Apple.

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
from .reasons import PACE_SCOPES, diagnoses
from .sender import build_senders

__all__ = ["PROVIDER"]

PROVIDER = ProviderModule(
    "apns",
    parse_app=parse_app,
    check=check_notification,
    check_message=check_message,
    senders=build_senders,
    check_credentials=check_credentials,
    credential_expiry=credential_expiry,
    diagnoses=diagnoses,
    pace_scopes=PACE_SCOPES,
)
