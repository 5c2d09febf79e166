"""Credential checks for every app, whatever its provider: reports, deadlines, table and JSON.

Each provider judges its own apps' credentials (:meth:`Provider.check_credentials`) and
returns a :class:`CredentialReport`: what the credential is, the individual checks, when it
expires, and for a broken one the fix in words. This module runs those checks concurrently
under one deadline (:func:`check_apps`), decides the exit status (:func:`exit_status`) and
renders the reports for people (:func:`format_table`) and programs (:func:`to_json`); it
names no provider. ``pushgres check-credentials`` is its command.

A report holds no secret: providers describe a credential by its file, key id, subject or
account, never by key material or a token.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, NamedTuple

from ..config import AppConfig

if TYPE_CHECKING:
    from .base import Provider

__all__ = [
    "DEFAULT_TIMEOUT_S",
    "DEFAULT_WARN_DAYS",
    "STATUS_EXPIRING",
    "STATUS_FAILED",
    "STATUS_OK",
    "Check",
    "CredentialReport",
    "check_apps",
    "exit_status",
    "format_table",
    "status_of",
    "to_json",
]

logger = logging.getLogger(__name__)

DEFAULT_WARN_DAYS: Final = 14
DEFAULT_TIMEOUT_S: Final = 10.0
# A provider keeps to its own ``timeout_s``; this much later, check_apps stops waiting for it.
_GRACE_S: Final = 1.0

STATUS_OK: Final = "ok"
STATUS_EXPIRING: Final = "expiring"
STATUS_FAILED: Final = "failed"


class Check(NamedTuple):
    """One thing checked about a credential: its name, whether it passed, and what was found."""

    name: str
    ok: bool
    detail: str


@dataclass(frozen=True, slots=True, kw_only=True)
class CredentialReport:
    """One app's credential: what it is, whether its provider accepts it, and why not."""

    app: str
    platform: str
    kind: str
    """What the credential is, in words: ``token key``, ``certificate``, ``service account``."""
    ok: bool
    """Every check passed: the credential works now (it may still expire soon)."""
    summary: str
    """One line: what was proven, or the first failed check."""
    checks: tuple[Check, ...] = ()
    expires_at: dt.datetime | None = None
    hint: str | None = None
    """For a broken credential, what to fix."""

    @classmethod
    def from_checks(
        cls,
        app: AppConfig,
        kind: str,
        checks: Sequence[Check],
        *,
        summary: str,
        expires_at: dt.datetime | None = None,
        hint: str | None = None,
    ) -> CredentialReport:
        """A report whose ``ok`` and summary follow its checks: ``summary`` when all passed,
        else the first failed check; ``hint`` is kept only for a failed report."""
        failed = next((c for c in checks if not c.ok), None)
        return cls(
            app=app.name,
            platform=app.platform,
            kind=kind,
            ok=failed is None,
            summary=summary if failed is None else f"{failed.name}: {failed.detail}",
            checks=tuple(checks),
            expires_at=expires_at,
            hint=hint if failed is not None else None,
        )


def _failed(app: AppConfig, name: str, detail: str, hint: str | None = None) -> CredentialReport:
    return CredentialReport.from_checks(
        app, "-", [Check(name, False, detail)], summary="", hint=hint
    )


async def check_apps(
    apps: Sequence[AppConfig],
    *,
    timeout_s: float,
    now: dt.datetime | None = None,
    providers: Mapping[str, Provider] | None = None,
) -> list[CredentialReport]:
    """Every app's report, in order, each checked by its provider; the apps concurrently.

    Each provider is given ``timeout_s``; one that has not answered a second later is given
    up on, and its app gets a failed check naming the deadline. No failure raises: an
    unexpected error becomes a failed check too (its traceback is logged at DEBUG).
    ``now`` (timezone-aware; default: the current time) is what expiry is judged against;
    ``providers`` defaults to the registry (``pushgres.providers.PROVIDERS``).
    """
    when = now or dt.datetime.now(dt.UTC)
    if providers is None:
        from . import PROVIDERS  # deferred: the registry imports the providers, which import us

        providers = PROVIDERS

    async def one(app: AppConfig) -> CredentialReport:
        provider = providers.get(app.platform)
        if provider is None:
            return _failed(app, "provider", f"no provider for platform {app.platform!r}")
        try:
            async with asyncio.timeout(timeout_s + _GRACE_S):
                return await provider.check_credentials(app, timeout_s=timeout_s, now=when)
        except TimeoutError:
            return _failed(
                app,
                "deadline",
                f"the check did not finish within {timeout_s:g}s",
                "the provider's endpoint does not answer: check network access to it",
            )
        except Exception as exc:
            logger.debug("credential check failed", exc_info=True, extra={"app": app.name})
            return _failed(app, "check", f"{type(exc).__name__}: {exc}")

    async with asyncio.TaskGroup() as group:
        tasks = [group.create_task(one(app), name=f"check credentials {app.name}") for app in apps]
    return [task.result() for task in tasks]


def status_of(report: CredentialReport, *, warn_days: int, now: dt.datetime | None = None) -> str:
    """``ok``, ``expiring`` (works, but expires within ``warn_days`` days) or ``failed``."""
    if not report.ok:
        return STATUS_FAILED
    if report.expires_at is not None:
        left = report.expires_at - (now or dt.datetime.now(dt.UTC))
        if left <= dt.timedelta(0):
            return STATUS_FAILED
        if left <= dt.timedelta(days=warn_days):
            return STATUS_EXPIRING
    return STATUS_OK


def exit_status(
    reports: Sequence[CredentialReport], warn_days: int, *, now: dt.datetime | None = None
) -> int:
    """0 when every credential works and none expires within ``warn_days`` days, else 1."""
    when = now or dt.datetime.now(dt.UTC)
    ok = all(status_of(r, warn_days=warn_days, now=when) == STATUS_OK for r in reports)
    return 0 if ok else 1


def _expires(expires_at: dt.datetime | None, now: dt.datetime) -> str:
    if expires_at is None:
        return "-"
    date = expires_at.astimezone(dt.UTC).strftime("%Y-%m-%d")
    left = expires_at - now
    if left <= dt.timedelta(0):
        return f"{date} (expired)"
    if left.days == 0:
        return f"{date} (today)"
    return f"{date} (in {left.days} day{'s' if left.days != 1 else ''})"


def format_table(
    reports: Sequence[CredentialReport],
    *,
    warn_days: int = DEFAULT_WARN_DAYS,
    now: dt.datetime | None = None,
) -> str:
    """The reports as a table (app, platform, credential, expires, status, detail), then one
    line per app that needs attention saying what to do."""
    when = now or dt.datetime.now(dt.UTC)
    rows = [("APP", "PLATFORM", "CREDENTIAL", "EXPIRES", "STATUS", "DETAIL")]
    notes: list[str] = []
    for r in reports:
        status = status_of(r, warn_days=warn_days, now=when)
        rows.append(
            (
                r.app,
                r.platform,
                r.kind,
                _expires(r.expires_at, when),
                status if status == STATUS_OK else status.upper(),
                r.summary,
            )
        )
        if status == STATUS_EXPIRING and r.expires_at is not None:
            date = r.expires_at.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
            notes.append(f"{r.app}: renew the {r.kind} before {date}")
        elif status == STATUS_FAILED and r.hint:
            notes.append(f"{r.app}: {r.hint}")
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=False))
        + "  "
        + row[5]
        for row in rows
    ]
    if notes:
        lines += ["", *notes]
    return "\n".join(lines)


def to_json(
    reports: Sequence[CredentialReport],
    *,
    warn_days: int | None = None,
    now: dt.datetime | None = None,
) -> str:
    """The reports as a JSON array, one object per app; with ``warn_days``, each has a
    ``status`` too (``ok``, ``expiring`` or ``failed``)."""
    when = now or dt.datetime.now(dt.UTC)
    out: list[dict[str, Any]] = []
    for r in reports:
        item: dict[str, Any] = {
            "app": r.app,
            "platform": r.platform,
            "credential": r.kind,
            "ok": r.ok,
        }
        if warn_days is not None:
            item["status"] = status_of(r, warn_days=warn_days, now=when)
        item.update(
            summary=r.summary,
            expires_at=r.expires_at.isoformat() if r.expires_at else None,
            hint=r.hint,
            checks=[{"name": c.name, "ok": c.ok, "detail": c.detail} for c in r.checks],
        )
        out.append(item)
    return json.dumps(out, indent=2)
