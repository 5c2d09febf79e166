"""Firebase Cloud Messaging HTTP v1 (FCM): OAuth2 service accounts, HTTP/2 to Google.

Everything pushgres knows about this provider lives in this folder: ``config.py`` (its
app table), ``protocol.py`` (requests, responses, enqueue checks), ``reasons.py`` (the reason
table), ``auth.py`` (credentials) and ``sender.py``. :data:`PROVIDER` is what the registry
in ``providers/__init__.py`` holds.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from ...config import AppConfig, PoolConfig, Section
from ...models import Notification
from ..base import Sender
from .config import parse_app
from .protocol import check_notification
from .sender import build_senders

__all__ = ["PROVIDER"]


class FcmProvider:
    platform = "fcm"

    def parse_app(
        self, section: Section, *, base_dir: Path, environ: Mapping[str, str]
    ) -> tuple[PoolConfig, object]:
        return parse_app(section, base_dir=base_dir, environ=environ)

    def check(self, notification: Notification) -> str | None:
        return check_notification(notification)

    def senders(self, apps: Sequence[AppConfig], *, request_timeout_s: float) -> list[Sender]:
        return build_senders(apps, request_timeout_s=request_timeout_s)


PROVIDER = FcmProvider()
