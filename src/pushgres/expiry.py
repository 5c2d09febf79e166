"""When to warn that an app's credential (an APNs certificate) expires: 30, 14, 7 days, expired.

:class:`ExpiryWatch` is the daemon's memory of what it has already said: checked at start and
daily, it gives one warning when an app's credential first comes within 30, 14 or 7 days of
its expiry and one when it has expired -- each once per credential (a renewed certificate,
with a later expiry, starts afresh). Pure logic; the daemon logs and counts what it returns.
"""

from __future__ import annotations

from typing import Final

__all__ = ["WARN_DAYS", "ExpiryWatch"]

WARN_DAYS: Final = (30, 14, 7)


class ExpiryWatch:
    def __init__(self) -> None:
        self._said: dict[str, tuple[float, int]] = {}  # app -> (expires_at, level warned)

    def check(self, app: str, expires_at: float | None, now: float) -> str | None:
        """A warning to log now about ``app``'s credential, or None."""
        if expires_at is None:
            self._said.pop(app, None)
            return None
        days = (expires_at - now) / 86400
        if days <= 0:
            level = 0
        else:
            within = [d for d in WARN_DAYS if days <= d]
            if not within:
                self._said.pop(app, None)
                return None
            level = min(within)
        said = self._said.get(app)
        if said is not None and said[0] == expires_at and said[1] <= level:
            return None
        self._said[app] = (expires_at, level)
        if level == 0:
            return (
                f"app {app}: its credential expired {-days:.1f} days ago: the provider refuses "
                "it; install a renewed one and reload (systemctl reload pushgres)"
            )
        return (
            f"app {app}: its credential expires in {days:.1f} days (within {level}): renew it "
            "and reload (systemctl reload pushgres)"
        )
