"""pushgres: deliver APNs and FCM push notifications queued in PostgreSQL.

Other services enqueue with plain SQL, ``pushgres.enqueue`` (ids) or
``pushgres.enqueue_detailed`` (ids and which were duplicates) or the CLI, and read outcomes
with ``pushgres.outcome``; ``pushgres run`` is the delivery daemon.
"""

from __future__ import annotations

from .api import Enqueued, NotificationOutcome, enqueue, enqueue_detailed, outcome
from .exceptions import EnqueueError, PushgresError
from .models import Notification

__all__ = [
    "EnqueueError",
    "Enqueued",
    "Notification",
    "NotificationOutcome",
    "PushgresError",
    "__version__",
    "enqueue",
    "enqueue_detailed",
    "outcome",
]

__version__ = "0.1.0"
