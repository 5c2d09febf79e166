"""One frozen configuration tree, loaded once from TOML and validated.

``load_config(path)`` reads the file, applies the few environment overrides
(``PUSHGRES_DSN``, and the ``*_env`` keys naming where a secret lives), checks every value and
returns :class:`Settings`. Errors name the key and the bad value, for example
``daemon.batch_size must be 1..5000, got 0``. This is the only module that reads
``os.environ``. Each app's table is parsed by its provider (``providers/<platform>/config.py``)
with the helpers here (:class:`Section`, :func:`secret`, :func:`pool_config`); the generic
:class:`AppConfig` carries the provider's own frozen settings in ``provider``. Components receive narrow pieces (``settings.daemon``, one ``AppConfig``),
never the whole tree.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .exceptions import ConfigError
from .http2.codecs import CODECS, DEFAULT_CODEC

__all__ = [
    "AdminConfig",
    "AppConfig",
    "CapRule",
    "CategoryConfig",
    "DaemonConfig",
    "DatabaseConfig",
    "PoolConfig",
    "ProbeConfig",
    "QuietHours",
    "RetryConfig",
    "Section",
    "Settings",
    "env_flag",
    "load_config",
    "parse_config",
    "pool_config",
    "resolve_dsn",
    "secret",
]

DEFAULT_BATCH_SIZE = 500
DEFAULT_POLL_INTERVAL_S = 1.0
DEFAULT_NOTIFY_MIN_INTERVAL_S = 0.01
DEFAULT_SHUTDOWN_TIMEOUT_S = 15.0
DEFAULT_REQUEST_TIMEOUT_S = 10.0
DEFAULT_DB_POOL_SIZE = 12
DEFAULT_STATEMENT_TIMEOUT_S = 30.0
DEFAULT_RETENTION_DAYS = 14
DEFAULT_DEDUPE_RETENTION_DAYS = 7
DEFAULT_DEVICE_RETENTION_DAYS = 90
DEFAULT_UNKNOWN_APP_GRACE_S = 60.0
DEFAULT_READY_TIMEOUT_S = 30.0
DEFAULT_QUEUE_VACUUM_DEAD_ROWS = 200_000
DEFAULT_STALE_AFTER_DAYS = 60
DEFAULT_PROBE_EVERY_DAYS = 30
DEFAULT_PROBE_PER_MINUTE = 100
DEFAULT_QUEUE_SAMPLE_INTERVAL_S = 15.0
DEFAULT_RETRY_BASE_S = 2.0
DEFAULT_RETRY_MAX_S = 300.0
DEFAULT_QUOTA_RETRY_S = 60.0
DEFAULT_MAX_CONNECTIONS = 4
DEFAULT_MAX_STREAMS = 500
DEFAULT_CONNECT_TIMEOUT_S = 10.0
DEFAULT_QUIET_SPREAD_S = 1800.0
LATE_LOCAL_TIME = ("now", "next_day")
CAP_OVER = ("suppress", "defer")
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d)\s*$")
_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_CLOCK = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$")

_APP_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


@dataclass(frozen=True, slots=True, kw_only=True)
class DatabaseConfig:
    dsn: str
    pool_size: int = DEFAULT_DB_POOL_SIZE
    statement_timeout_s: float = DEFAULT_STATEMENT_TIMEOUT_S


@dataclass(frozen=True, slots=True, kw_only=True)
class DaemonConfig:
    batch_size: int = DEFAULT_BATCH_SIZE
    poll_interval_s: float = DEFAULT_POLL_INTERVAL_S
    notify_min_interval_s: float = DEFAULT_NOTIFY_MIN_INTERVAL_S
    shutdown_timeout_s: float = DEFAULT_SHUTDOWN_TIMEOUT_S
    request_timeout_s: float = DEFAULT_REQUEST_TIMEOUT_S
    results_retention_days: int = DEFAULT_RETENTION_DAYS
    dedupe_retention_days: int = DEFAULT_DEDUPE_RETENTION_DAYS
    device_retention_days: int = DEFAULT_DEVICE_RETENTION_DAYS
    unknown_app_grace_s: float = DEFAULT_UNKNOWN_APP_GRACE_S
    ready_timeout_s: float = DEFAULT_READY_TIMEOUT_S
    log_level: str = "info"
    log_format: str = "text"
    queue_vacuum_dead_rows: int = DEFAULT_QUEUE_VACUUM_DEAD_ROWS
    """Vacuum the queue once it holds this many dead rows, or a tenth of its rows if that is
    more (0: leave it to autovacuum)."""
    delivery_journal: bool = False
    """Write accepted sends to ``pushgres.delivered`` before their batch commits, so a kill
    does not send them again (``pipeline/journal.py``); costs speed, see the README."""


@dataclass(frozen=True, slots=True, kw_only=True)
class AdminConfig:
    """The admin HTTP listener (metrics, health, dashboard); off when ``listen`` is None."""

    listen: tuple[str, int] | None = None
    queue_sample_interval_s: float = DEFAULT_QUEUE_SAMPLE_INTERVAL_S


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryConfig:
    base_s: float = DEFAULT_RETRY_BASE_S
    max_s: float = DEFAULT_RETRY_MAX_S
    quota_default_s: float = DEFAULT_QUOTA_RETRY_S


@dataclass(frozen=True, slots=True, kw_only=True)
class PoolConfig:
    """Where and how to connect to one provider endpoint."""

    host: str
    port: int
    server_hostname: str
    ca_file: str | None = None
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    max_streams_per_connection: int = DEFAULT_MAX_STREAMS
    connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S
    max_connection_age_s: float | None = None
    codec: str = DEFAULT_CODEC


@dataclass(frozen=True, slots=True)
class QuietHours:
    """A daily quiet window in local time, such as 21:00-08:00 (it may span midnight)."""

    start: dt.time
    end: dt.time

    def __str__(self) -> str:
        return f"{self.start:%H:%M}-{self.end:%H:%M}"


@dataclass(frozen=True, slots=True, kw_only=True)
class CategoryConfig:
    """A notification category (``[categories.<name>]``).

    ``quiet_hours``: None follows the app's window (none for a transactional category), False
    never holds the category back, True follows the app's window even when transactional, a
    :class:`QuietHours` is the category's own window.
    """

    name: str
    transactional: bool = False
    quiet_hours: QuietHours | bool | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class CapRule:
    """A frequency cap (``[caps.<name>]``): at most ``limit`` notifications per person in any
    ``window_s`` seconds, over ``categories`` (None: every non-transactional category), for the
    ``apps`` named (directly or through a group). ``over``: what becomes of a notification
    over the cap: ``suppress`` (ends ``suppressed``) or ``defer`` (sent once the window
    allows, unless it expires first)."""

    name: str
    apps: frozenset[str]
    categories: frozenset[str] | None
    limit: int
    window_s: float
    over: str = "suppress"

    def covers(self, app: str, category: CategoryConfig | None) -> bool:
        if app not in self.apps:
            return False
        if self.categories is None:
            return category is None or not category.transactional
        return category is not None and category.name in self.categories

    def describe(self) -> str:
        return f"{self.name} ({self.limit} per {format_duration(self.window_s)})"


@dataclass(frozen=True, slots=True, kw_only=True)
class AppConfig:
    name: str
    platform: str
    pool: PoolConfig
    rate_limit_per_s: float | None = None
    weight: float = 1.0
    """The app's share of the daemon's batch slots when several apps want more than there are."""
    stale_after_days: int = DEFAULT_STALE_AFTER_DAYS
    """Registered devices not seen for this long are marked stale (the provider may cap it)."""
    provider: object = None
    """The provider's own settings for this app (``providers/<platform>/config.py``)."""
    files_digest: str = ""
    """SHA-256 of the contents of the files the app's table names (keys, certificates):
    two configs of an app differ when a credential file was replaced in place."""
    probe: ProbeConfig | None = None
    """Uninstall probes for the app's quiet devices; None: off (the default)."""
    default_category: str | None = None
    """The category of the app's notifications that name none (None: no categories)."""
    timezone: str = "UTC"
    """The time zone of devices whose own is unknown (quiet hours, local time)."""
    quiet_hours: QuietHours | None = None
    quiet_spread_s: float = DEFAULT_QUIET_SPREAD_S
    """Notifications held back by quiet hours are spread over this long after the window."""
    late_local_time: str = "now"
    """A local send time that had passed at enqueue: send ``now``, or at the ``next_day``'s."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ProbeConfig:
    """Uninstall tracking: a silent push to devices not seen for ``after_days``, at most one
    per device every ``every_days``, at most ``per_minute`` a minute for the app."""

    after_days: int
    every_days: int = DEFAULT_PROBE_EVERY_DAYS
    per_minute: int = DEFAULT_PROBE_PER_MINUTE


@dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    database: DatabaseConfig
    daemon: DaemonConfig
    retry: RetryConfig
    apps: tuple[AppConfig, ...]
    admin: AdminConfig = AdminConfig()
    groups: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    """Groups of apps a fan-out can name (``[groups] shop = ["shop-ios", "shop-android"]``)."""
    categories: Mapping[str, CategoryConfig] = field(default_factory=dict)
    caps: tuple[CapRule, ...] = ()

    def app(self, name: str) -> AppConfig:
        for app in self.apps:
            if app.name == name:
                return app
        raise KeyError(name)


def load_config(path: str | Path, *, environ: Mapping[str, str] | None = None) -> Settings:
    """Read, validate and freeze the TOML file at ``path``."""
    env = os.environ if environ is None else environ
    file = Path(path)
    try:
        data = tomllib.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"config file {file} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"config file {file} cannot be read: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"config file {file} is not UTF-8 text (byte {exc.start}: {exc.reason})"
        ) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {file} is not valid TOML: {exc}") from None
    return parse_config(data, base_dir=file.parent, environ=env)


class Section:
    """Typed access to one TOML table that records the keys it consumed."""

    def __init__(self, data: Any, path: str) -> None:
        if not isinstance(data, dict):
            raise ConfigError(f"{path} must be a table")
        self.data: dict[str, Any] = data
        self.path = path
        self.used: set[str] = set()
        self.files: list[Path] = []
        """The files named by this table's keys, in the order they were read."""

    def _key(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def get(self, key: str) -> Any:
        self.used.add(key)
        return self.data.get(key)

    def str_(self, key: str, default: str | None = None, *, required: bool = False) -> str | None:
        value = self.get(key)
        if value is None:
            if required:
                raise ConfigError(f"{self._key(key)} is required")
            return default
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{self._key(key)} must be a non-empty string, got {value!r}")
        return value

    def choice(self, key: str, choices: tuple[str, ...], default: str | None = None) -> str:
        value = self.str_(key, default, required=default is None)
        assert value is not None
        if value not in choices:
            raise ConfigError(
                f"{self._key(key)} must be one of {', '.join(choices)}, got {value!r}"
            )
        return value

    def bool_(self, key: str, default: bool) -> bool:
        value = self.get(key)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise ConfigError(f"{self._key(key)} must be true or false")
        return value

    def int_(self, key: str, default: int, lo: int, hi: int) -> int:
        value = self.get(key)
        if value is None:
            return default
        if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
            raise ConfigError(f"{self._key(key)} must be {lo}..{hi}, got {value!r}")
        return value

    def float_(self, key: str, default: float, lo: float, hi: float) -> float:
        value = self.get(key)
        if value is None:
            return default
        if not isinstance(value, int | float) or isinstance(value, bool) or not lo <= value <= hi:
            raise ConfigError(f"{self._key(key)} must be {lo:g}..{hi:g}, got {value!r}")
        return float(value)

    def optional_float(self, key: str, lo: float, hi: float) -> float | None:
        if self.data.get(key) is None:
            self.used.add(key)
            return None
        return self.float_(key, 0.0, lo, hi)

    def duration(self, key: str, default: float, lo: float, hi: float) -> float:
        """Seconds, given as a number or as "90s", "10m", "24h", "7d"."""
        value = self.get(key)
        if value is None:
            return default
        seconds: float | None = None
        if isinstance(value, int | float) and not isinstance(value, bool):
            seconds = float(value)
        elif isinstance(value, str) and (m := _DURATION.fullmatch(value)):
            seconds = float(m.group(1)) * _DURATION_UNITS[m.group(2)]
        if seconds is None or not lo <= seconds <= hi:
            raise ConfigError(
                f"{self._key(key)} must be a duration of {format_duration(lo)}.."
                f"{format_duration(hi)} (seconds, or such as '90s', '10m', '24h', '7d'), "
                f"got {value!r}"
            )
        return seconds

    def quiet_hours(self, key: str) -> QuietHours | bool | None:
        """``"21:00-08:00"``, true/false, or absent (None)."""
        value = self.get(key)
        if value is None or isinstance(value, bool):
            return value
        if isinstance(value, str):
            start, sep, end = value.partition("-")
            a, b = _CLOCK.fullmatch(start.strip()), _CLOCK.fullmatch(end.strip())
            if sep and a and b:
                window = QuietHours(
                    dt.time(int(a.group(1)), int(a.group(2))),
                    dt.time(int(b.group(1)), int(b.group(2))),
                )
                if window.start == window.end:
                    raise ConfigError(f"{self._key(key)}: the window is empty, got {value!r}")
                return window
        raise ConfigError(
            f'{self._key(key)} must be a local time window such as "21:00-08:00", got {value!r}'
        )

    def time_zone(self, key: str, default: str) -> str:
        value = self.str_(key, default)
        assert value is not None
        if not is_time_zone(value):
            raise ConfigError(f"{self._key(key)}: unknown time zone {value!r} (an IANA name)")
        return value

    def file(self, key: str, base_dir: Path, *, required: bool = False) -> str | None:
        value = self.str_(key, required=required)
        if value is None:
            return None
        path = Path(value).expanduser()
        if not path.is_absolute():
            path = base_dir / path
        if not path.is_file():
            raise ConfigError(f"{self._key(key)}: file {path} does not exist")
        self.files.append(path)
        return str(path)

    def finish(self) -> None:
        unknown = sorted(set(self.data) - self.used)
        if unknown:
            where = f" in [{self.path}]" if self.path else ""
            raise ConfigError(f"unknown key(s){where}: {', '.join(unknown)}")


def format_duration(seconds: float) -> str:
    """``seconds`` in the largest whole unit: 86400 → "24h", 600 → "10m", 90 → "90s"."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0 and (unit != "d" or seconds % 86400 == 0):
            if unit == "d" and seconds <= 86400 * 2:
                return f"{seconds / 3600:g}h"
            return f"{seconds / size:g}{unit}"
    return f"{seconds:g}s"


def is_time_zone(name: str) -> bool:
    """Whether ``name`` is an IANA time zone this machine knows."""
    import zoneinfo

    try:
        zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        return False
    return True


def secret(section: Section, key: str, environ: Mapping[str, str]) -> str | None:
    """A secret given inline (``key``) or by the name of an environment variable (``key_env``)."""
    inline = section.str_(key)
    env_name = section.str_(f"{key}_env")
    if inline is not None and env_name is not None:
        raise ConfigError(f"{section.path}: give {key} or {key}_env, not both")
    if env_name is not None:
        if env_name not in environ:
            raise ConfigError(
                f"{section.path}.{key}_env names environment variable {env_name}, which is not set"
            )
        return environ[env_name]
    return inline


def _endpoint(section: Section, default: str) -> tuple[str, int, str]:
    url = section.str_("endpoint", default)
    assert url is not None
    parts = urlsplit(url)
    if parts.scheme != "https" or not parts.hostname:
        raise ConfigError(f"{section.path}.endpoint must be an https:// URL, got {url!r}")
    try:
        port = parts.port or 443
    except ValueError:
        raise ConfigError(f"{section.path}.endpoint has an invalid port: {url!r}") from None
    hostname = section.str_("tls_server_name", parts.hostname)
    assert hostname is not None
    return parts.hostname, port, hostname


def pool_config(
    section: Section,
    base_dir: Path,
    *,
    endpoint: str,
    max_streams: int = DEFAULT_MAX_STREAMS,
    max_connection_age_s: float = 0.0,
) -> PoolConfig:
    """The pool keys every app shares; the provider gives its endpoint and defaults."""
    host, port, server_hostname = _endpoint(section, endpoint)
    return PoolConfig(
        host=host,
        port=port,
        server_hostname=server_hostname,
        ca_file=section.file("ca_file", base_dir),
        max_connections=section.int_("max_connections", DEFAULT_MAX_CONNECTIONS, 1, 64),
        max_streams_per_connection=section.int_("max_streams_per_connection", max_streams, 1, 5000),
        connect_timeout_s=section.float_("connect_timeout_s", DEFAULT_CONNECT_TIMEOUT_S, 0.1, 120),
        max_connection_age_s=section.float_(
            "max_connection_age_s", max_connection_age_s, 0, 86400 * 7
        )
        or None,
        codec=section.choice("codec", tuple(sorted(CODECS)), DEFAULT_CODEC),
    )


def parse_config(
    data: Mapping[str, Any], *, base_dir: Path, environ: Mapping[str, str]
) -> Settings:
    """Validate an already-parsed TOML document; relative file paths are taken from base_dir."""
    root = Section(dict(data), "")
    db = Section(root.get("database") or {}, "database")
    dsn = environ.get("PUSHGRES_DSN") or db.str_("dsn")
    db.used.add("dsn")
    if not dsn:
        raise ConfigError("database.dsn is required (or set PUSHGRES_DSN)")
    database = DatabaseConfig(
        dsn=dsn,
        pool_size=db.int_("pool_size", DEFAULT_DB_POOL_SIZE, 2, 200),
        statement_timeout_s=db.float_("statement_timeout_s", DEFAULT_STATEMENT_TIMEOUT_S, 1, 3600),
    )
    db.finish()

    d = Section(root.get("daemon") or {}, "daemon")
    daemon = DaemonConfig(
        batch_size=d.int_("batch_size", DEFAULT_BATCH_SIZE, 1, 5000),
        poll_interval_s=d.float_("poll_interval_s", DEFAULT_POLL_INTERVAL_S, 0.01, 60),
        notify_min_interval_s=d.float_(
            "notify_min_interval_s", DEFAULT_NOTIFY_MIN_INTERVAL_S, 0, 10
        ),
        shutdown_timeout_s=d.float_("shutdown_timeout_s", DEFAULT_SHUTDOWN_TIMEOUT_S, 0, 600),
        request_timeout_s=d.float_("request_timeout_s", DEFAULT_REQUEST_TIMEOUT_S, 0.1, 120),
        results_retention_days=d.int_("results_retention_days", DEFAULT_RETENTION_DAYS, 1, 3650),
        dedupe_retention_days=d.int_(
            "dedupe_retention_days", DEFAULT_DEDUPE_RETENTION_DAYS, 1, 3650
        ),
        device_retention_days=d.int_(
            "device_retention_days", DEFAULT_DEVICE_RETENTION_DAYS, 1, 3650
        ),
        unknown_app_grace_s=d.float_("unknown_app_grace_s", DEFAULT_UNKNOWN_APP_GRACE_S, 0, 86400),
        ready_timeout_s=d.float_("ready_timeout_s", DEFAULT_READY_TIMEOUT_S, 0, 3600),
        log_level=d.choice("log_level", ("debug", "info", "warning", "error"), "info"),
        log_format=d.choice("log_format", ("text", "json"), "text"),
        queue_vacuum_dead_rows=d.int_(
            "queue_vacuum_dead_rows", DEFAULT_QUEUE_VACUUM_DEAD_ROWS, 0, 1_000_000_000
        ),
        delivery_journal=d.bool_("delivery_journal", False),
    )
    d.finish()

    a = Section(root.get("admin") or {}, "admin")
    listen = a.str_("listen")
    admin = AdminConfig(
        listen=_listen_address(listen, "admin.listen") if listen is not None else None,
        queue_sample_interval_s=a.float_(
            "queue_sample_interval_s", DEFAULT_QUEUE_SAMPLE_INTERVAL_S, 1, 3600
        ),
    )
    a.finish()

    r = Section(root.get("retry") or {}, "retry")
    retry = RetryConfig(
        base_s=r.float_("base_s", DEFAULT_RETRY_BASE_S, 0, 3600),
        max_s=r.float_("max_s", DEFAULT_RETRY_MAX_S, 0, 86400),
        quota_default_s=r.float_("quota_default_s", DEFAULT_QUOTA_RETRY_S, 0, 3600),
    )
    r.finish()

    # Deferred: every provider parses its own section with this module's helpers.
    from .providers import PROVIDERS as providers

    categories = _categories(Section(root.get("categories") or {}, "categories"))
    g = Section(root.get("guardrails") or {}, "guardrails")
    fallback_category = g.str_("default_category")
    if fallback_category is not None and fallback_category not in categories:
        raise ConfigError(
            f"guardrails.default_category names {fallback_category!r}, which is not one of "
            "[categories]"
        )
    fallback_tz = g.time_zone("timezone", "UTC")
    g.finish()

    apps_table = Section(root.get("apps") or {}, "apps")
    apps = []
    for name in sorted(apps_table.data):
        apps_table.used.add(name)
        if not _APP_NAME.fullmatch(name):
            raise ConfigError(f"apps.{name}: app names are 1-64 of A-Z a-z 0-9 _ . - ")
        section = Section(apps_table.data[name], f"apps.{name}")
        platform = section.choice("platform", tuple(sorted(providers)))
        pool, options = providers[platform].parse_app(section, base_dir=base_dir, environ=environ)
        apps.append(
            AppConfig(
                name=name,
                platform=platform,
                pool=pool,
                rate_limit_per_s=section.optional_float("rate_limit_per_s", 1, 1e7),
                weight=section.float_("weight", 1.0, 0.01, 1000),
                stale_after_days=section.int_(
                    "stale_after_days", DEFAULT_STALE_AFTER_DAYS, 1, 3650
                ),
                provider=options,
                files_digest=_digest(section.files, f"apps.{name}"),
                probe=_probe_config(section),
                **_app_guardrails(section, categories, fallback_category, fallback_tz),
            )
        )
        section.finish()
    if not apps:
        raise ConfigError("no apps configured: add at least one [apps.<name>] table")
    groups = _groups(Section(root.get("groups") or {}, "groups"), {a.name for a in apps})
    caps = _caps(Section(root.get("caps") or {}, "caps"), apps, groups, categories)
    root.finish()
    return Settings(
        database=database,
        daemon=daemon,
        retry=retry,
        apps=tuple(apps),
        admin=admin,
        groups=groups,
        categories=categories,
        caps=caps,
    )


def _categories(section: Section) -> dict[str, CategoryConfig]:
    found: dict[str, CategoryConfig] = {}
    for name in sorted(section.data):
        section.used.add(name)
        if not _APP_NAME.fullmatch(name):
            raise ConfigError(f"categories.{name}: category names are 1-64 of A-Z a-z 0-9 _ . - ")
        table = Section(section.data[name], f"categories.{name}")
        found[name] = CategoryConfig(
            name=name,
            transactional=table.bool_("transactional", False),
            quiet_hours=table.quiet_hours("quiet_hours"),
        )
        table.finish()
    section.finish()
    return found


def _app_guardrails(
    section: Section,
    categories: Mapping[str, CategoryConfig],
    fallback_category: str | None,
    fallback_tz: str,
) -> dict[str, Any]:
    """An app's guardrail keys: its default category, time zone, quiet hours, local time."""
    category = section.str_("default_category", fallback_category)
    if categories and category is None:
        raise ConfigError(
            f"{section.path}.default_category is required once [categories] are declared "
            "(or give [guardrails] default_category)"
        )
    if category is not None and category not in categories:
        raise ConfigError(
            f"{section.path}.default_category names {category!r}, which is not one of [categories]"
        )
    quiet = section.quiet_hours("quiet_hours")
    if isinstance(quiet, bool):
        raise ConfigError(
            f'{section.path}.quiet_hours must be a local time window such as "21:00-08:00"'
        )
    return {
        "default_category": category,
        "timezone": section.time_zone("timezone", fallback_tz),
        "quiet_hours": quiet,
        "quiet_spread_s": section.duration("quiet_hours_spread", DEFAULT_QUIET_SPREAD_S, 0, 86400),
        "late_local_time": section.choice("late_local_time", LATE_LOCAL_TIME, "now"),
    }


def _caps(
    section: Section,
    apps: Sequence[AppConfig],
    groups: Mapping[str, tuple[str, ...]],
    categories: Mapping[str, CategoryConfig],
) -> tuple[CapRule, ...]:
    names = {a.name for a in apps}
    rules = []
    for name in sorted(section.data):
        section.used.add(name)
        where = f"caps.{name}"
        if not _APP_NAME.fullmatch(name):
            raise ConfigError(f"{where}: cap names are 1-64 of A-Z a-z 0-9 _ . - ")
        table = Section(section.data[name], where)
        listed = table.get("apps")
        group = table.str_("group")
        if (listed is None) == (group is None):
            raise ConfigError(f"{where}: give apps (a list of app names) or group, one of them")
        if group is not None:
            if group not in groups:
                raise ConfigError(f"{where}.group names {group!r}, which is not one of [groups]")
            covered = frozenset(groups[group])
        else:
            covered = frozenset(_app_names(listed, f"{where}.apps", names, '["ios"]'))
        wanted = table.get("categories")
        cats: frozenset[str] | None = None
        if wanted is not None:
            if (
                not isinstance(wanted, list)
                or not wanted
                or not all(isinstance(c, str) for c in wanted)
            ):
                raise ConfigError(f"{where}.categories must be a list of category names")
            unknown = sorted(set(wanted) - set(categories))
            if unknown:
                raise ConfigError(
                    f"{where}.categories names categories not declared: {', '.join(unknown)}"
                )
            cats = frozenset(wanted)
        if table.get("limit") is None:
            raise ConfigError(f"{where}.limit is required (notifications per window)")
        if table.get("window") is None:
            raise ConfigError(f'{where}.window is required (such as "24h" or "10m")')
        rules.append(
            CapRule(
                name=name,
                apps=covered,
                categories=cats,
                limit=table.int_("limit", 1, 1, 1000),
                window_s=table.duration("window", 86400, 1, 86400 * 366),
                over=table.choice("over", CAP_OVER, "suppress"),
            )
        )
        table.finish()
    section.finish()
    return tuple(rules)


def _probe_config(section: Section) -> ProbeConfig | None:
    after = section.get("uninstall_probe_after_days")
    section.used.update(
        {"uninstall_probe_after_days", "uninstall_probe_every_days", "uninstall_probe_per_minute"}
    )
    if after is None:
        for key in ("uninstall_probe_every_days", "uninstall_probe_per_minute"):
            if section.get(key) is not None:
                raise ConfigError(
                    f"{section.path}.{key} needs {section.path}.uninstall_probe_after_days "
                    "(probes are off without it)"
                )
        return None
    return ProbeConfig(
        after_days=section.int_("uninstall_probe_after_days", 30, 1, 3650),
        every_days=section.int_("uninstall_probe_every_days", DEFAULT_PROBE_EVERY_DAYS, 1, 3650),
        per_minute=section.int_("uninstall_probe_per_minute", DEFAULT_PROBE_PER_MINUTE, 1, 100_000),
    )


def _groups(section: Section, apps: set[str]) -> dict[str, tuple[str, ...]]:
    groups: dict[str, tuple[str, ...]] = {}
    for name in sorted(section.data):
        section.used.add(name)
        where = f"groups.{name}"
        if not _APP_NAME.fullmatch(name):
            raise ConfigError(f"{where}: group names are 1-64 of A-Z a-z 0-9 _ . - ")
        if name in apps:
            raise ConfigError(f"{where}: an app is named {name!r} too; a group needs its own name")
        members = _app_names(section.data[name], where, apps, '["ios", "android"]')
        groups[name] = tuple(dict.fromkeys(members))
    section.finish()
    return groups


def _app_names(value: Any, where: str, apps: set[str], example: str) -> list[str]:
    """A non-empty list of the config's app names (a group's members, a cap's apps)."""
    if not isinstance(value, list) or not value or not all(isinstance(m, str) for m in value):
        raise ConfigError(f"{where} must be a list of app names, such as {example}")
    unknown = sorted(set(value) - apps)
    if unknown:
        raise ConfigError(f"{where} names app(s) not configured: {', '.join(unknown)}")
    return value


def _listen_address(value: str, key: str) -> tuple[str, int]:
    """``host:port``, ``[v6]:port`` or a bare port (loopback)."""
    host, sep, port_text = value.rpartition(":")
    if not sep:
        host, port_text = "127.0.0.1", value
    host = host.strip("[]") or "127.0.0.1"
    try:
        port = int(port_text)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise ConfigError(f"{key} must be host:port (for example 127.0.0.1:9464), got {value!r}")
    return host, port


def _digest(files: list[Path], where: str) -> str:
    digest = hashlib.sha256()
    for path in files:
        try:
            digest.update(path.read_bytes())
        except OSError as exc:
            raise ConfigError(f"{where}: file {path} cannot be read: {exc.strerror}") from None
        digest.update(b"\0")
    return digest.hexdigest()


def resolve_dsn(dsn: str | None, config_path: str | None) -> str:
    """The DSN for tool commands: ``--dsn``, else ``PUSHGRES_DSN``, else the config file's."""
    if dsn:
        return dsn
    if os.environ.get("PUSHGRES_DSN"):
        return os.environ["PUSHGRES_DSN"]
    if config_path:
        file = Path(config_path)
        try:
            data = tomllib.loads(file.read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"config file {file} cannot be read: {exc}") from None
        value = data.get("database", {}).get("dsn") if isinstance(data, dict) else None
        if isinstance(value, str) and value:
            return value
    raise ConfigError("no database given: pass --dsn or --config, or set PUSHGRES_DSN")


def env_flag(name: str) -> str | None:
    """An environment setting read on behalf of the command line (demo and test helpers)."""
    return os.environ.get(name)
