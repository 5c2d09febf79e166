"""Fixtures for the admin listener's tests: a headless Chromium page."""

from __future__ import annotations

from ..support.chromium import chromium

__all__ = ["chromium"]
