"""An APNs app's settings: its ``[apps.<name>]`` table with ``platform = "apns"``, validated.

Keys: ``environment`` (``production`` | ``sandbox``, which picks Apple's endpoint), ``topic``
(the bundle id), and either token auth (``key_file``, ``key_id``, ``team_id``,
``token_refresh_s``) or certificate auth (``auth = "certificate"`` with ``p12_file`` and
``p12_password``/``p12_password_env``, or ``cert_file`` and ``cert_key_file``); plus the pool
keys every app has. Endpoints: Apple, "Sending notification requests to APNs".
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from ...config import PoolConfig, Section, pool_config, secret
from ...exceptions import ConfigError

__all__ = ["APNS_ENDPOINTS", "ApnsConfig", "parse_app"]

APNS_ENDPOINTS: Final = {
    "production": "https://api.push.apple.com:443",
    "sandbox": "https://api.sandbox.push.apple.com:443",
}
DEFAULT_TOKEN_REFRESH_S: Final = 2700.0
_TOPIC = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_TEN_CHARACTER_ID = re.compile(r"[A-Z0-9]{10}")


@dataclass(frozen=True, slots=True, kw_only=True)
class ApnsConfig:
    topic: str
    environment: str
    auth: str  # "token" | "certificate"
    key_file: str | None = None
    key_id: str | None = None
    team_id: str | None = None
    token_refresh_s: float = DEFAULT_TOKEN_REFRESH_S
    p12_file: str | None = None
    p12_password: str | None = None
    cert_file: str | None = None
    cert_key_file: str | None = None


def parse_app(
    section: Section, *, base_dir: Path, environ: Mapping[str, str]
) -> tuple[PoolConfig, ApnsConfig]:
    environment = section.choice("environment", ("production", "sandbox"))
    auth = section.choice("auth", ("token", "certificate"), "token")
    topic = section.str_("topic", required=True)
    assert topic is not None
    if not _TOPIC.fullmatch(topic):
        raise ConfigError(f"{section.path}.topic is not a bundle id: {topic!r}")
    if auth == "token":
        key_id = section.str_("key_id", required=True)
        team_id = section.str_("team_id", required=True)
        for name, value in (("key_id", key_id), ("team_id", team_id)):
            if value is not None and not _TEN_CHARACTER_ID.fullmatch(value):
                raise ConfigError(
                    f"{section.path}.{name} must be 10 upper-case letters or digits, got {value!r}"
                )
        apns = ApnsConfig(
            topic=topic,
            environment=environment,
            auth=auth,
            key_file=section.file("key_file", base_dir, required=True),
            key_id=key_id,
            team_id=team_id,
            token_refresh_s=section.float_("token_refresh_s", DEFAULT_TOKEN_REFRESH_S, 1200, 3300),
        )
    else:
        p12 = section.file("p12_file", base_dir)
        cert = section.file("cert_file", base_dir)
        if (p12 is None) == (cert is None):
            raise ConfigError(f"{section.path}: certificate auth needs p12_file or cert_file")
        apns = ApnsConfig(
            topic=topic,
            environment=environment,
            auth=auth,
            p12_file=p12,
            p12_password=secret(section, "p12_password", environ),
            cert_file=cert,
            cert_key_file=section.file("cert_key_file", base_dir, required=cert is not None),
        )
    return pool_config(section, base_dir, endpoint=APNS_ENDPOINTS[environment]), apns
