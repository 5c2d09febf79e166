"""The queue's and the results' columns, named once, in the order the SQL lists them.

``queries.sql`` spells out every column list (SQL is never built by concatenation); these
tuples are the Python side of the same lists: the claimed row's fields, the arrays a requeue
passes, the records a results ``COPY`` writes. ``tests/unit/test_queries.py`` checks that each
statement names exactly these columns in this order.
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "CLAIM_FLAGS",
    "ENQUEUE_COLUMNS",
    "QUEUE_COLUMNS",
    "REQUEUE_COLUMNS",
    "RESULT_COLUMNS",
    "ROW_RESULT_COLUMNS",
]

QUEUE_COLUMNS: Final = (
    "id",
    "app",
    "platform",
    "device_token",
    "payload",
    "priority",
    "push_type",
    "collapse_id",
    "expires_at",
    "topic",
    "send_at",
    "dedupe_key",
    "max_attempts",
    "metadata",
    "message",
    "attempts",
    "last_reason",
    "enqueued_at",
    "user_id",
    "group_id",
    "probe",
    "category",
    "timezone",
    "local_send_at",
    "transactional",
)
"""A queue row as the claim returns it (and :class:`~pushgres.models.ClaimedRow` holds it)."""

ENQUEUE_COLUMNS: Final = (
    *QUEUE_COLUMNS[: QUEUE_COLUMNS.index("message") + 1],
    "category",
    "timezone",
    "local_send_at",
)
"""What a direct enqueue writes (attempts, last_reason and enqueued_at are the daemon's; user,
group and probe are a fan-out's and an uninstall probe's; the lane follows the category)."""

CLAIM_FLAGS: Final = (
    "is_expired",
    "is_token_invalid",
    "device_user",
    "device_timezone",
    "delivered_attempt",
)
"""Computed by the claim after the queue columns: facts about the row at claim time (the user
and time zone from the registry's device for the token, if any; the attempt that
``pushgres.delivered`` says the provider accepted already, if any)."""

REQUEUE_COLUMNS: Final = tuple("delay_s" if c == "send_at" else c for c in QUEUE_COLUMNS)
"""The arrays of a requeue: the row's columns, ``send_at`` as a delay from the server's now."""

ROW_RESULT_COLUMNS: Final = (
    "id",
    "app",
    "platform",
    "device_token",
    "enqueued_at",
    "metadata",
    "user_id",
    "group_id",
    "probe",
    "category",
)
"""The result columns copied from the claimed row; the others come from the outcome."""

RESULT_COLUMNS: Final = (
    *ROW_RESULT_COLUMNS,
    "status",
    "provider_status",
    "reason",
    "provider_id",
    "attempts",
)
"""A row of ``pushgres.results`` as the daemon's ``COPY`` writes it (``finished_at``: now)."""
