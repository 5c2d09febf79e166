"""Guardrails: the stages that hold a notification back for its person's sake.

Each notification has a category (:class:`~pushgres.config.CategoryConfig`; a row naming none
takes its app's default). What applies to a row is resolved once per (app, category) into a
:class:`CategoryPolicy`, and two stages of the lane apply it:

* :class:`Timing` -- local time and quiet hours, pure arithmetic on the batch's clock. A row
  with ``local_send_at`` waits until that wall-clock time in the device's time zone (the row's
  own, else the registry's for the token, else the app's); one whose moment had already passed
  when it was enqueued is sent at once, or at the next day's, as the app says. A row that falls
  inside its quiet window is deferred to the window's end, spread over
  ``quiet_hours_spread`` by its id so that the window's end is no thundering herd -- unless it
  would expire first (then ``expired``). Time zones are IANA names through :mod:`zoneinfo`, so
  every DST change is the zone's own.
* :class:`FrequencyCaps` -- at most N notifications per person per rolling window, for each
  :class:`~pushgres.config.CapRule` covering the row's app and category. The person is the
  row's user (a fan-out's, or the registry's for the token), the device when anonymous. A
  person's devices reached by one fan-out count as one message. The counts live in
  Postgres (``pushgres.cap_ledger``), locked and updated in the batch's claim transaction, so
  several daemons never exceed a cap between them. A row over a cap ends ``suppressed`` with
  reason ``FrequencyCap``, or -- for a rule with ``over = "defer"`` -- waits until the window
  allows, unless it expires first.

Deferrals are not attempts: a deferred row keeps its attempt count. Uninstall probes (silent)
pass both stages untouched.
"""

from __future__ import annotations

import bisect
import datetime as dt
import zoneinfo
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol

from ..config import AppConfig, CapRule, CategoryConfig, QuietHours
from ..models import ClaimedRow, Requeue, ResultRecord, Status
from .decide import Decision

__all__ = [
    "CapLedger",
    "CapStore",
    "CapsAdded",
    "CategoryPolicy",
    "FrequencyCaps",
    "LedgerRecord",
    "Timing",
    "cap_subject",
    "category_policies",
    "local_instant",
    "quiet_until",
]

UTC: Final = dt.UTC
_SPREAD_MULTIPLIER: Final = 2654435761  # Knuth's multiplicative hash: ids spread evenly
_ONE_DAY: Final = dt.timedelta(days=1)


@dataclass(frozen=True, slots=True)
class CategoryPolicy:
    """What applies to one app's notifications of one category."""

    category: str | None
    quiet: QuietHours | None
    caps: tuple[CapRule, ...]


def category_policies(
    app: AppConfig, categories: Mapping[str, CategoryConfig], caps: Sequence[CapRule]
) -> dict[str | None, CategoryPolicy]:
    """The policy of each category for ``app``; the key None is the app's default category
    (also used for a category no longer in the config)."""

    def policy(category: CategoryConfig | None) -> CategoryPolicy:
        if category is None or category.quiet_hours is None:
            quiet = None if category is not None and category.transactional else app.quiet_hours
        elif category.quiet_hours is True:
            quiet = app.quiet_hours
        elif category.quiet_hours is False:
            quiet = None
        else:
            quiet = category.quiet_hours
        rules = tuple(rule for rule in caps if rule.covers(app.name, category))
        return CategoryPolicy(category.name if category else None, quiet, rules)

    found: dict[str | None, CategoryPolicy] = {name: policy(c) for name, c in categories.items()}
    default = app.default_category
    found[None] = found[default] if default is not None else policy(None)
    return found


# -- time zones ----------------------------------------------------------------------------

_zones: dict[str, zoneinfo.ZoneInfo | None] = {}


def _zone(name: str | None) -> zoneinfo.ZoneInfo | None:
    if name is None:
        return None
    try:
        return _zones[name]
    except KeyError:
        pass
    try:
        zone: zoneinfo.ZoneInfo | None = zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        zone = None  # a name PostgreSQL knows and this machine does not: the app's zone
    if len(_zones) < 10_000:
        _zones[name] = zone
    return zone


def local_instant(local: dt.datetime, zone: dt.tzinfo) -> dt.datetime:
    """The moment a wall-clock time happens in ``zone`` (UTC). A time the zone skips (the
    hour lost to a DST change) is read with the offset before the change; a time that happens
    twice is its first occurrence."""
    return local.replace(tzinfo=zone, fold=0).astimezone(UTC)


def quiet_until(window: QuietHours, now: dt.datetime, zone: dt.tzinfo) -> dt.datetime | None:
    """When the quiet window ``now`` falls in ends (UTC), or None outside it."""
    local = now.astimezone(zone)
    t = local.time().replace(tzinfo=None)
    start, end = window.start, window.end
    if start < end:
        if not start <= t < end:
            return None
        day = local.date()
    else:  # the window spans midnight
        if t >= start:
            day = local.date() + _ONE_DAY
        elif t < end:
            day = local.date()
        else:
            return None
    return local_instant(dt.datetime.combine(day, end), zone)


def _spread(row_id: int, spread_s: float) -> dt.timedelta:
    fraction = (row_id * _SPREAD_MULTIPLIER % 2**32) / 2**32
    return dt.timedelta(seconds=spread_s * fraction)


def _defer(row: ClaimedRow, until: dt.datetime, now: dt.datetime, reason: str) -> Decision:
    """Back to the queue until ``until`` (not an attempt), or ``expired`` if it cannot wait."""
    if row.expires_at is not None and row.expires_at <= until:
        when = until.strftime("%Y-%m-%d %H:%M:%S UTC")
        return Decision(
            result=ResultRecord(
                row,
                Status.EXPIRED,
                None,
                f"{reason}; it expires first (held until {when})",
                None,
                row.attempts,
            )
        )
    delay = max(0.0, (until - now).total_seconds())
    return Decision(requeue=Requeue(row, delay, reason, row.attempts))


class Timing:
    """Local-time sends and quiet hours (see the module docstring). Sets each row's category."""

    name = "timing"

    def __init__(self, app: AppConfig, policies: Mapping[str | None, CategoryPolicy]) -> None:
        self._policies = policies
        self._default = policies[None]
        self._app_zone = _zone(app.timezone) or UTC
        self._app_zone_name = app.timezone
        self._spread_s = app.quiet_spread_s
        self._next_day = app.late_local_time == "next_day"
        self._quiet = any(p.quiet is not None for p in policies.values())

    async def sift(
        self, rows: list[ClaimedRow], now: dt.datetime, claim: CapStore
    ) -> tuple[list[ClaimedRow], list[Decision]]:
        keep: list[ClaimedRow] = []
        settled: list[Decision] = []
        policies, default = self._policies, self._default
        quiet_ends: dict[tuple[str | None, int], dt.datetime | None] = {}
        for row in rows:
            policy = policies.get(row.category, default)
            if row.category is None:
                row.category = policy.category
            if row.probe:
                keep.append(row)
                continue
            if row.local_send_at is not None:
                decision = self._local_time(row, now)
                if decision is not None:
                    settled.append(decision)
                    continue
            window = policy.quiet
            if window is not None:
                zone_name = row.timezone or row.device_timezone
                key = (zone_name, id(window))
                if key in quiet_ends:
                    until = quiet_ends[key]
                else:
                    until = quiet_ends[key] = quiet_until(window, now, self._zone_of(zone_name))
                if until is not None:
                    zone_label = zone_name if _zone(zone_name) else self._app_zone_name
                    reason = f"QuietHours: {window} in {zone_label}"
                    settled.append(
                        _defer(row, until + _spread(row.id, self._spread_s), now, reason)
                    )
                    continue
            keep.append(row)
        return keep, settled

    def _zone_of(self, name: str | None) -> dt.tzinfo:
        return _zone(name) or self._app_zone

    def _local_time(self, row: ClaimedRow, now: dt.datetime) -> Decision | None:
        assert row.local_send_at is not None
        zone_name = row.timezone or row.device_timezone
        zone = self._zone_of(zone_name)
        local = row.local_send_at
        target = local_instant(local, zone)
        if target <= row.enqueued_at:
            if not self._next_day:
                return None
            local += _ONE_DAY
            target = local_instant(local, zone)
        if target <= now:
            return None
        label = zone_name if _zone(zone_name) else self._app_zone_name
        return _defer(row, target, now, f"LocalTime: waiting for {local:%Y-%m-%d %H:%M} {label}")


# -- frequency caps --------------------------------------------------------------------------


class CapStore(Protocol):
    """Where the caps' counts live: the batch's claim transaction (``db.store.Claim``)."""

    async def lock_caps(self, keys: Sequence[tuple[str, str]]) -> Sequence[LedgerRecord]:
        """Lock the ledger entries of ``keys`` (created empty if new) until the transaction
        ends: each one's rule, subject, admitted times (oldest first) and messages."""
        ...

    async def write_caps(self, now: dt.datetime, added: CapsAdded) -> None:
        """Count ``added``'s messages at ``now`` (under the locks :meth:`lock_caps` took),
        forgetting what left each rule's window."""
        ...


LedgerRecord = tuple[str, str, list[dt.datetime], list[int]]
"""A ledger entry as locked: rule, subject, admitted times (oldest first), messages."""


@dataclass(slots=True)
class CapsAdded:
    """What a batch admitted, as parallel lists: each (rule, subject) counted one ``event``
    more; ``windows`` gives each rule's window in seconds."""

    windows: dict[str, float]
    rules: list[str]
    subjects: list[str]
    events: list[int]


def cap_subject(row: ClaimedRow) -> str:
    """The person a row counts for: its user, else the registry's user of its token, else the
    device itself."""
    user = row.user_id or row.device_user
    if user is not None:
        return f"u:{user}"
    return f"d:{row.app}:{row.device_token}"


def _event(row: ClaimedRow) -> int:
    """The message a row is part of: its fan-out (one per person, however many devices), or
    the notification itself."""
    return row.group_id if row.group_id is not None else -row.id


@dataclass(frozen=True, slots=True)
class CapVerdict:
    """Admitted (``blocking`` None), or held back by ``blocking`` until ``until``."""

    blocking: CapRule | None = None
    until: dt.datetime | None = None


ADMITTED: Final = CapVerdict()


class CapLedger:
    """The caps' counts for one batch at one moment, as locked from the store. Pure: no I/O.

    What each entry holds before its rule's window is skipped (``start``), not copied; what
    the batch admits is appended at ``now`` and listed in :attr:`added` for the store.
    """

    def __init__(
        self, records: Iterable[LedgerRecord], rules: Iterable[CapRule], now: dt.datetime
    ) -> None:
        self._now = now
        self._windows = {rule.name: dt.timedelta(seconds=rule.window_s) for rule in rules}
        cutoffs = {name: now - window for name, window in self._windows.items()}
        self.added = CapsAdded({r: w.total_seconds() for r, w in self._windows.items()}, [], [], [])
        entries: dict[tuple[str, str], list[Any]] = {}
        for rule, subject, sent_at, events in records:
            start = 0
            if sent_at and sent_at[0] <= cutoffs[rule]:
                start = bisect.bisect_right(sent_at, cutoffs[rule])
            entries[(rule, subject)] = [sent_at, events, start]
        self._entries = entries

    def judge(self, rules: Iterable[CapRule], subject: str, event: int) -> CapVerdict:
        """Whether one message to ``subject`` may go now under every rule; admitting it counts
        it in each rule that had not counted it yet."""
        entries = self._entries
        verdict = ADMITTED
        fresh: list[tuple[str, list[Any]]] = []
        for rule in rules:
            name = rule.name
            entry = entries[(name, subject)]
            sent_at, events, start = entry
            if event in events and events.index(event) >= start:
                continue
            if len(sent_at) - start < rule.limit:
                fresh.append((name, entry))
                continue
            until = sent_at[-rule.limit] + self._windows[name]
            if rule.over == "suppress":
                return CapVerdict(rule, until)
            if verdict.until is None or until > verdict.until:
                verdict = CapVerdict(rule, until)
        if verdict is ADMITTED and fresh:
            now, added = self._now, self.added
            for name, entry in fresh:
                entry[0].append(now)
                entry[1].append(event)
                added.rules.append(name)
                added.subjects.append(subject)
                added.events.append(event)
        return verdict


class FrequencyCaps:
    """At most N notifications per person per window (see the module docstring)."""

    name = "frequency-caps"

    def __init__(self, policies: Mapping[str | None, CategoryPolicy]) -> None:
        self._policies = policies
        self._default = policies[None]
        self._rules = list({r.name: r for p in policies.values() for r in p.caps}.values())

    async def sift(
        self, rows: list[ClaimedRow], now: dt.datetime, claim: CapStore
    ) -> tuple[list[ClaimedRow], list[Decision]]:
        policies, default = self._policies, self._default
        capped: list[tuple[ClaimedRow, tuple[CapRule, ...], str]] = []
        keep: list[ClaimedRow] = []
        for row in rows:
            rules = policies.get(row.category, default).caps
            if rules and not row.probe:
                capped.append((row, rules, cap_subject(row)))
            else:
                keep.append(row)
        if not capped:
            return rows, []
        keys = sorted({(rule.name, subject) for _, rules, subject in capped for rule in rules})
        ledger = CapLedger(await claim.lock_caps(keys), self._rules, now)
        # The claim's own order: higher priority first, then the older.
        capped.sort(key=lambda c: (-c[0].priority, c[0].send_at, c[0].id))
        settled: list[Decision] = []
        for row, rules, subject in capped:
            verdict = ledger.judge(rules, subject, _event(row))
            rule = verdict.blocking
            if rule is None:
                keep.append(row)
            elif rule.over == "suppress":
                reason = f"FrequencyCap: {rule.describe()}"
                settled.append(
                    Decision(
                        result=ResultRecord(
                            row, Status.SUPPRESSED, None, reason, None, row.attempts
                        )
                    )
                )
            else:
                assert verdict.until is not None
                settled.append(
                    _defer(row, verdict.until, now, f"FrequencyCap: {rule.describe()}, deferred")
                )
        if ledger.added.events:
            await claim.write_caps(now, ledger.added)
        return keep, settled
