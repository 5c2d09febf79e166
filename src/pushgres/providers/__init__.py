"""The providers pushgres can send through, by platform name: a new provider is one entry.

Each entry is a :class:`~pushgres.providers.base.Provider`; everything specific to one push
service lives in its folder here, and nothing outside ``providers/`` names a provider.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import MappingProxyType

from ..config import AppConfig
from . import apns, fcm
from .base import Provider, Sender

__all__ = ["PROVIDERS", "Provider", "build_senders"]

PROVIDERS: Mapping[str, Provider] = MappingProxyType(
    {
        apns.PROVIDER.platform: apns.PROVIDER,
        fcm.PROVIDER.platform: fcm.PROVIDER,
    }
)


def build_senders(apps: Sequence[AppConfig], *, request_timeout_s: float) -> list[Sender]:
    """One sender per app, in order, each built by its app's provider."""
    senders: dict[str, Sender] = {}
    for platform, provider in PROVIDERS.items():
        mine = [app for app in apps if app.platform == platform]
        if mine:
            built = provider.senders(mine, request_timeout_s=request_timeout_s)
            senders.update(zip((app.name for app in mine), built, strict=True))
    return [senders[app.name] for app in apps]
