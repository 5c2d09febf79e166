"""What the simulators are started with: TLS files, identities, ports, knobs and tokens.

:class:`SimulatorConfig` is plain data. :func:`pushgres.simulator.devkit.make_dev_setup`
builds one that matches the credentials it generates (``DevSetup.config``), and
:meth:`SimulatorConfig.merged` overlays a TOML or JSON document (``pushgres simulate
--config``) of the shape::

    seed = 7
    [ports]            # apns_production, apns_sandbox, fcm, oauth, control (0: any free port)
    [apns]             # knobs for both APNs virtual hosts
    [apns_sandbox]     # knobs for the sandbox host only
    [fcm]              # FCM knobs
    [oauth]            # token_lifetime_s, fail_rate, latency_ms
    [apns_tokens]      # token = "Unregistered" or {state = "unregistered", env = "sandbox"}
    [fcm_tokens]       # token = "UNREGISTERED" or {state = "sender_mismatch"}
"""

from __future__ import annotations

import copy
import json
import pathlib
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from pushgres.exceptions import ConfigError

__all__ = ["SimulatorConfig", "load_overrides"]

_PORTS = ("apns_production", "apns_sandbox", "fcm", "oauth", "control")
_SECTIONS = {
    "seed",
    "ports",
    "apns",
    "apns_sandbox",
    "fcm",
    "oauth",
    "apns_tokens",
    "fcm_tokens",
}


@dataclass(slots=True)
class SimulatorConfig:
    """Everything :class:`pushgres.simulator.Simulators` needs.

    ``teams``/``certificates`` are the simulated APNs accounts; ``projects`` and
    ``service_accounts`` the simulated FCM projects and the OAuth endpoint's accounts.
    """

    ca_file: str
    server_cert_file: str
    server_key_file: str
    teams: dict[str, Any] = field(default_factory=dict)
    certificates: dict[str, Any] = field(default_factory=dict)
    projects: dict[str, Any] = field(default_factory=dict)
    service_accounts: dict[str, Any] = field(default_factory=dict)
    seed: int = 1
    apns_production_port: int = 0
    apns_sandbox_port: int = 0
    fcm_port: int = 0
    oauth_port: int = 0
    control_port: int = 0
    apns_knobs: dict[str, Any] = field(default_factory=dict)
    apns_sandbox_knobs: dict[str, Any] = field(default_factory=dict)
    fcm_knobs: dict[str, Any] = field(default_factory=dict)
    oauth_knobs: dict[str, Any] = field(default_factory=dict)
    apns_tokens: dict[str, Any] = field(default_factory=dict)
    fcm_tokens: dict[str, Any] = field(default_factory=dict)

    def merged(self, overrides: Mapping[str, Any]) -> SimulatorConfig:
        """A copy with a ``--config`` document applied (see the module docstring)."""
        unknown = set(overrides) - _SECTIONS
        if unknown:
            raise ConfigError(f"unknown simulator config section(s): {sorted(unknown)}")
        new = replace(self)
        for name in ("apns_knobs", "apns_sandbox_knobs", "fcm_knobs", "oauth_knobs"):
            setattr(new, name, copy.deepcopy(getattr(self, name)))
        for name in ("apns_tokens", "fcm_tokens"):
            setattr(new, name, dict(getattr(self, name)))
        if "seed" in overrides:
            new.seed = int(overrides["seed"])
        for key, value in dict(overrides.get("ports", {})).items():
            if key not in _PORTS:
                raise ConfigError(f"unknown simulator port {key!r}; known: {list(_PORTS)}")
            setattr(new, f"{key}_port", int(value))
        new.apns_knobs.update(overrides.get("apns", {}))
        new.apns_sandbox_knobs.update(overrides.get("apns_sandbox", {}))
        new.fcm_knobs.update(overrides.get("fcm", {}))
        new.oauth_knobs.update(overrides.get("oauth", {}))
        new.apns_tokens.update(overrides.get("apns_tokens", {}))
        new.fcm_tokens.update(overrides.get("fcm_tokens", {}))
        return new


def load_overrides(path: str | pathlib.Path) -> dict[str, Any]:
    """Read a ``--config`` file: TOML (``.toml``) or JSON (anything else)."""
    file = pathlib.Path(path)
    try:
        text = file.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read simulator config {file}: {exc.strerror}") from exc
    try:
        data: Any = tomllib.loads(text) if file.suffix == ".toml" else json.loads(text)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"simulator config {file} is not valid: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"simulator config {file} must be a table/object")
    return data
