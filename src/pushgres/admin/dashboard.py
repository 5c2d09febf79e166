"""The dashboard page and its assets, read from the package's ``admin/static`` folder.

The page is plain HTML, one small script and one stylesheet that ship inside the package: it
makes no request to any other host (no CDN, no web fonts). The script polls ``data.json``
beside itself, so the listener serves ``GET /dashboard/`` with :func:`page`,
``GET /dashboard/{name}`` with :func:`asset`, and ``/dashboard/data.json`` from live state.
"""

from __future__ import annotations

import functools
import importlib.resources
from typing import Final

__all__ = ["ASSET_TYPES", "PAGE_TYPE", "asset", "page"]

PAGE_TYPE: Final = "text/html; charset=utf-8"
"""The content type of :func:`page`."""

ASSET_TYPES: Final = {
    "dashboard.js": "text/javascript; charset=utf-8",
    "dashboard.css": "text/css; charset=utf-8",
}
"""The assets the page loads, by file name, with their content types."""


@functools.cache
def _read(name: str) -> bytes:
    static = importlib.resources.files("pushgres.admin").joinpath("static")
    return static.joinpath(name).read_bytes()


def page() -> bytes:
    """The dashboard's HTML (:data:`PAGE_TYPE`)."""
    return _read("dashboard.html")


def asset(name: str) -> tuple[bytes, str] | None:
    """The content and content type of the asset ``name``, or None when there is no such asset.

    Only the names in :data:`ASSET_TYPES` are served, so a request path never reaches the
    file system.
    """
    content_type = ASSET_TYPES.get(name)
    if content_type is None:
        return None
    return _read(name), content_type
