"""The provider registry: one folder per provider, shared credentials, nothing leaks out."""

from __future__ import annotations

import ast
import pathlib

from pushgres.config import load_config
from pushgres.providers import PROVIDERS, build_senders
from pushgres.providers.apns.sender import ApnsSender
from pushgres.simulator import devkit

SRC = pathlib.Path(__file__).resolve().parents[2] / "src" / "pushgres"


def test_apps_signing_with_one_key_share_one_provider_token(tmp_path: pathlib.Path) -> None:
    setup = devkit.make_dev_setup(tmp_path / "sim")
    apps = ""
    for name, key_id, refresh in (
        ("a", setup.apns_key_id, 3000),
        ("b", setup.apns_key_id, 1800),
        ("c", "OTHERKEY12", 3000),
    ):
        apps += f"""
[apps.{name}]
platform = "apns"
environment = "sandbox"
topic = "{setup.apns_topic}"
key_file = "{setup.apns_key_file}"
key_id = "{key_id}"
team_id = "{setup.apns_team_id}"
token_refresh_s = {refresh}
"""
    config = tmp_path / "c.toml"
    config.write_text(f'[database]\ndsn = "postgresql://x/y"\n{apps}')
    settings = load_config(config, environ={})
    senders = build_senders(settings.apps, request_timeout_s=5)
    assert all(isinstance(s, ApnsSender) for s in senders)
    a, b, c = (s._token for s in senders)  # type: ignore[attr-defined]
    assert a is b and a is not c
    assert a._refresh_s == 1800  # the shortest refresh of the apps sharing it


def test_nothing_outside_providers_names_a_provider() -> None:
    # Adding a provider touches providers/ only: the daemon, the pipeline, the store, the
    # config, the API and the HTTP/2 layer reach providers through the registry.
    for path in SRC.rglob("*.py"):
        relative = path.relative_to(SRC).as_posix()
        if relative.startswith(("providers/", "simulator/")) or relative == "demo.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.ImportFrom) or not node.module:
                continue
            parts = node.module.split(".")
            if "providers" in parts:
                after = parts[parts.index("providers") + 1 :]
                named = set(after[:1]) | {alias.name for alias in node.names if not after}
                assert not named & set(PROVIDERS), f"{relative} imports {node.module} {named}"
