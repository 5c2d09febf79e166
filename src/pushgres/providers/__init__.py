"""The providers pushgres can send through, by platform name: a new provider is one entry.

Each entry is a :class:`~pushgres.providers.base.Provider`; everything specific to one push
service lives in its folder here, and nothing outside ``providers/`` names a provider.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from . import apns, fcm
from .base import Provider

__all__ = ["PROVIDERS", "Provider", "provider"]

PROVIDERS: Mapping[str, Provider] = MappingProxyType(
    {
        apns.PROVIDER.platform: apns.PROVIDER,
        fcm.PROVIDER.platform: fcm.PROVIDER,
    }
)


def provider(platform: str) -> Provider:
    """The provider of ``platform`` (config validation guarantees it exists)."""
    return PROVIDERS[platform]
