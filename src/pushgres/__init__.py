"""pushgres: deliver APNs and FCM push notifications queued in PostgreSQL.

Other services enqueue with plain SQL, ``pushgres.enqueue`` or the CLI, and read outcomes with
``pushgres.outcome``; ``pushgres run`` is the delivery daemon.
"""

from __future__ import annotations

from .api import NotificationOutcome, enqueue, outcome
from .exceptions import EnqueueError, PushgresError
from .models import Notification

__all__ = [
    "EnqueueError",
    "Notification",
    "NotificationOutcome",
    "PushgresError",
    "__version__",
    "enqueue",
    "outcome",
]

__version__ = "0.1.0"
