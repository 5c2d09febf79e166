"""Configuration loading and validation: every error names the key and the bad value."""

from __future__ import annotations

import pathlib
import re

import pytest

from pushgres.config import load_config
from pushgres.exceptions import ConfigError
from pushgres.providers.apns.config import ApnsConfig

EXAMPLE = pathlib.Path(__file__).resolve().parents[2] / "config" / "pushgres.example.toml"


def write(tmp_path: pathlib.Path, text: str) -> pathlib.Path:
    (tmp_path / "key.p8").write_text("k")
    (tmp_path / "sa.json").write_text("{}")
    path = tmp_path / "c.toml"
    path.write_text(text)
    return path


BASE = """
[database]
dsn = "postgresql://localhost/x"
[apps.ios]
platform = "apns"
environment = "sandbox"
topic = "com.example.app"
key_file = "key.p8"
key_id = "ABC123DEFG"
team_id = "DEF123GHIJ"
[apps.android]
platform = "fcm"
service_account_file = "sa.json"
"""


def test_minimal_config_gets_defaults(tmp_path: pathlib.Path) -> None:
    settings = load_config(write(tmp_path, BASE), environ={})
    ios = settings.app("ios")
    assert ios.pool.host == "api.sandbox.push.apple.com" and ios.pool.port == 443
    assert isinstance(ios.provider, ApnsConfig)
    assert ios.provider.key_file == str(tmp_path / "key.p8")
    android = settings.app("android")
    assert android.pool.max_streams_per_connection == 100
    assert android.pool.max_connection_age_s == 3000
    assert settings.daemon.batch_size == 500
    assert settings.daemon.delivery_journal is False
    assert settings.daemon.queue_vacuum_dead_rows == 200_000


def test_env_dsn_overrides(tmp_path: pathlib.Path) -> None:
    settings = load_config(write(tmp_path, BASE), environ={"PUSHGRES_DSN": "postgresql://other/y"})
    assert settings.database.dsn == "postgresql://other/y"


@pytest.mark.parametrize(
    ("patch", "message"),
    [
        ("[daemon]\nbatch_size = 0\n", "daemon.batch_size must be 1..5000, got 0"),
        ("[daemon]\nbatch_sise = 10\n", "unknown key(s) in [daemon]: batch_sise"),
        ('[daemon]\ndelivery_journal = "yes"\n', "daemon.delivery_journal must be true or false"),
        (
            "[daemon]\nqueue_vacuum_dead_rows = -1\n",
            "daemon.queue_vacuum_dead_rows must be 0..1000000000",
        ),
        ('[apps.web]\nplatform = "webpush"\n', "apps.web.platform must be one of apns, fcm"),
        (
            '[apps.x]\nplatform = "fcm"\nservice_account_file = "nope.json"\n',
            "apps.x.service_account_file: file",
        ),
        (
            '[apps.c]\nplatform = "apns"\nenvironment = "production"\ntopic = "a.b"\n'
            'auth = "certificate"\np12_file = "key.p8"\np12_password_env = "NOPE"\n',
            "apps.c.p12_password_env names environment variable NOPE, which is not set",
        ),
        (
            '[apps.d]\nplatform = "apns"\nenvironment = "production"\ntopic = "a.b"\n'
            'key_file = "key.p8"\nkey_id = "short"\nteam_id = "DEF123GHIJ"\n',
            "apps.d.key_id must be 10 upper-case letters or digits, got 'short'",
        ),
        (
            '[apps.e]\nplatform = "fcm"\nservice_account_file = "sa.json"\nendpoint = "http://x"\n',
            "apps.e.endpoint must be an https:// URL",
        ),
    ],
)
def test_errors_name_the_key(tmp_path: pathlib.Path, patch: str, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(write(tmp_path, BASE + patch), environ={})


def test_missing_dsn_and_bad_toml(tmp_path: pathlib.Path) -> None:
    with pytest.raises(ConfigError, match=r"database\.dsn is required"):
        load_config(
            write(tmp_path, BASE.replace('dsn = "postgresql://localhost/x"', "")), environ={}
        )
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(write(tmp_path, "[[["), environ={})
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.toml", environ={})


def test_example_config_is_complete_and_valid(tmp_path: pathlib.Path) -> None:
    """The commented example parses once the files it names exist."""
    text = EXAMPLE.read_text()
    for name in ("AuthKey_ABC123DEFG.p8", "firebase-sa.json"):
        (tmp_path / name).write_text("x")
        text = text.replace(f"/etc/pushgres/{name}", str(tmp_path / name))
    settings = load_config(write(tmp_path, text), environ={})
    assert [a.name for a in settings.apps] == ["android", "ios"]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("127.0.0.1:9464", ("127.0.0.1", 9464)),
        ("9464", ("127.0.0.1", 9464)),
        (":9464", ("127.0.0.1", 9464)),
        ("0.0.0.0:9100", ("0.0.0.0", 9100)),
        ("[::1]:9464", ("::1", 9464)),
    ],
)
def test_admin_listen_addresses(
    tmp_path: pathlib.Path, value: str, expected: tuple[str, int]
) -> None:
    settings = load_config(write(tmp_path, BASE + f'[admin]\nlisten = "{value}"\n'), environ={})
    assert settings.admin.listen == expected


def test_admin_is_off_unless_configured(tmp_path: pathlib.Path) -> None:
    assert load_config(write(tmp_path, BASE), environ={}).admin.listen is None


@pytest.mark.parametrize("value", ["localhost", "127.0.0.1:99999", "a:b", ""])
def test_bad_admin_listen_addresses(tmp_path: pathlib.Path, value: str) -> None:
    with pytest.raises(ConfigError, match=r"admin\.listen"):
        load_config(write(tmp_path, BASE + f'[admin]\nlisten = "{value}"\n'), environ={})


def test_a_credential_replaced_in_place_changes_the_app(tmp_path: pathlib.Path) -> None:
    # A reload must see a renewed key or certificate written over the old file.
    path = write(tmp_path, BASE)
    before = load_config(path, environ={})
    (tmp_path / "key.p8").write_text("renewed")
    after = load_config(path, environ={})
    assert before.app("ios") != after.app("ios")
    assert before.app("android") == after.app("android")
