"""APNs: everything pushgres knows about this provider, behind one :class:`Provider`."""

from __future__ import annotations

from ...config import AppConfig
from ..base import Sender
from .sender import build_sender

__all__ = ["PROVIDER"]


class _APNsProvider:
    platform = "apns"

    def sender(self, app: AppConfig, *, request_timeout_s: float) -> Sender:
        return build_sender(app, request_timeout_s=request_timeout_s)


PROVIDER = _APNsProvider()
