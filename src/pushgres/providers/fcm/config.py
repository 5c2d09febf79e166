"""An FCM app's settings: its ``[apps.<name>]`` table with ``platform = "fcm"``, validated.

Keys: ``service_account_file`` (a Google service-account key), ``project_id`` (default: the
account's), ``token_uri`` (default: the account's); plus the pool keys every app has. FCM's
defaults: 100 streams per connection, connections replaced after 50 minutes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from ...config import PoolConfig, Section, pool_config

__all__ = ["FCM_ENDPOINT", "FcmConfig", "parse_app"]

FCM_ENDPOINT: Final = "https://fcm.googleapis.com:443"
DEFAULT_MAX_STREAMS: Final = 100
DEFAULT_MAX_CONNECTION_AGE_S: Final = 3000.0


@dataclass(frozen=True, slots=True, kw_only=True)
class FcmConfig:
    service_account_file: str
    project_id: str | None = None
    token_uri: str | None = None


def parse_app(
    section: Section, *, base_dir: Path, environ: Mapping[str, str]
) -> tuple[PoolConfig, FcmConfig]:
    sa_file = section.file("service_account_file", base_dir, required=True)
    assert sa_file is not None
    fcm = FcmConfig(
        service_account_file=sa_file,
        project_id=section.str_("project_id"),
        token_uri=section.str_("token_uri"),
    )
    pool = pool_config(
        section,
        base_dir,
        endpoint=FCM_ENDPOINT,
        max_streams=DEFAULT_MAX_STREAMS,
        max_connection_age_s=DEFAULT_MAX_CONNECTION_AGE_S,
    )
    return pool, fcm
