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
from typing import Final, Protocol

from ..config import AppConfig, CapRule, CategoryConfig, QuietHours
from ..models import ClaimedRow, Requeue, ResultRecord, Status
from .decide import Decision

__all__ = [
    "CapCoverage",
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
    wall = dt.datetime.combine(day, end)
    until = local_instant(wall, zone)
    if until <= now:
        # The clocks went back and the end's first occurrence has passed: its second one
        # (fold=1), else -- the hour lived twice lies inside the window -- the next day's.
        until = wall.replace(tzinfo=zone, fold=1).astimezone(UTC)
        if until <= now:
            until = local_instant(wall + _ONE_DAY, zone)
    return until


def _spread(row_id: int, spread_s: float) -> dt.timedelta:
    fraction = (row_id * _SPREAD_MULTIPLIER % 2**32) / 2**32
    return dt.timedelta(seconds=spread_s * fraction)


def open_s(window: QuietHours) -> float:
    """How long the day outside ``window`` lasts (seconds, on a day without a DST change)."""
    start = window.start.hour * 3600 + window.start.minute * 60
    end = window.end.hour * 3600 + window.end.minute * 60
    return float((start - end) % 86400)


def _defer(
    row: ClaimedRow,
    until: dt.datetime,
    now: dt.datetime,
    reason: str,
    spread: dt.timedelta = dt.timedelta(0),
) -> Decision:
    """Back to the queue until ``until`` plus ``spread`` (not an attempt; the spread never past
    the row's expiry), or ``expired`` if it cannot wait until ``until``."""
    expires_at = row.expires_at
    if expires_at is not None and expires_at <= until:
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
    if spread:
        spread_until = until + spread
        if expires_at is not None and expires_at <= spread_until:
            spread_until = max(until, expires_at - dt.timedelta(seconds=1))
        until = spread_until
    delay = max(0.0, (until - now).total_seconds())
    return Decision(requeue=Requeue(row, delay, reason, row.attempts, deferred=True))


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
        # Nothing to stamp or hold back but local send times: the plain loop.
        self._local_only = all(p.quiet is None and p.category is None for p in policies.values())

    async def sift(
        self, rows: list[ClaimedRow], now: dt.datetime, claim: CapStore
    ) -> tuple[list[ClaimedRow], list[Decision]]:
        keep: list[ClaimedRow] = []
        settled: list[Decision] = []
        if self._local_only:
            for row in rows:
                if row.local_send_at is not None and not row.probe:
                    decision = self._local_time(row, now)
                    if decision is not None:
                        settled.append(decision)
                        continue
                keep.append(row)
            return keep, settled
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
                    # Spread over at most half the open part of the day: a row must never land
                    # in the next night's window (and be held again, every night).
                    spread_s = min(self._spread_s, open_s(window) / 2)
                    spread = _spread(row.id, spread_s)
                    settled.append(_defer(row, until, now, reason, spread))
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

    async def lock_caps(self, subjects: Sequence[str]) -> Sequence[LedgerRecord]:
        """Lock the ledger entries of ``subjects`` (created empty if new; taken in sorted
        order, whatever the order given) until the transaction ends; those that hold
        anything (a subject not returned has nothing counted)."""
        ...

    async def write_caps(self, now: float, keep_s: float, added: CapsAdded) -> None:
        """Count ``added``'s messages at ``now`` (Unix seconds, under the locks
        :meth:`lock_caps` took), forgetting what is older than ``keep_s``."""
        ...


LedgerRecord = tuple[str, list[float], list[int], list[str]]
"""A person's entry as locked: subject; when each counted message was admitted (Unix seconds,
oldest first), the message, and what it was (``app/category``)."""


CapsAdded = list[tuple[str, int, int, str]]
"""What a batch admitted, in order: (subject, forget, event, kind) -- the person forgets the
first ``forget`` messages of their entry (older than the longest window) and counts one
message more, ``event``, of ``kind`` (``app/category``)."""


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


class CapCoverage:
    """Which rules count a message of each kind (``app/category``), for every rule of the
    config: a person's entry holds messages of every app and category the caps count."""

    def __init__(self, categories: Mapping[str, CategoryConfig], rules: Iterable[CapRule]) -> None:
        self._categories = categories
        self._rules = tuple(rules)
        self._found: dict[str, frozenset[str]] = {}
        self.known: Mapping[str, frozenset[str]] = self._found
        """The kinds looked up so far (a dict lookup is cheaper than a call)."""
        self.keep_s = max((rule.window_s for rule in self._rules), default=0.0)
        """How long an entry must remember: the longest window."""

    def __call__(self, tag: str) -> frozenset[str]:
        found = self._found.get(tag)
        if found is None:
            app, _, name = tag.partition("/")
            category = self._categories.get(name) if name else None
            found = frozenset(r.name for r in self._rules if r.covers(app, category))
            if len(self._found) < 10_000:
                self._found[tag] = found
        return found


class CapLedger:
    """The caps' counts for one batch at one moment, as locked from the store. Pure: no I/O.

    A person's entry lists the messages admitted to them within the longest window, each with
    its kind; a rule counts those of the kinds it covers within its own window. What the batch
    admits is appended at ``now`` and listed in :attr:`added` for the store.
    """

    def __init__(
        self, records: Iterable[LedgerRecord], coverage: CapCoverage, now: dt.datetime
    ) -> None:
        self.now = self._now = now.timestamp()
        self._coverage = coverage
        self.added: CapsAdded = []
        self._forget_before = self._now - coverage.keep_s
        self.entries: dict[str, LedgerRecord] = {r[0]: r for r in records}
        """Each person's entry by subject; a person absent has nothing counted (and, having
        every cap's room, is admitted by adding an entry and an :attr:`added` row)."""

    def judge(self, rules: Iterable[CapRule], subject: str, event: int, tag: str) -> CapVerdict:
        """Whether one message (``event``, of kind ``tag``) to ``subject`` may go now under
        every rule; admitting it counts it once for all of them."""
        entry = self.entries.get(subject)
        if entry is None:
            entry = self.entries[subject] = (subject, [], [], [])
        _, sent_at, events, kinds = entry
        now, coverage = self._now, self._coverage
        known = coverage.known
        verdict = ADMITTED
        counts = not sent_at  # nothing counted yet: every rule has room
        for rule in () if counts else rules:
            limit = rule.limit
            if len(sent_at) < limit and event not in events:
                counts = True  # room, whatever the window holds
                continue
            cutoff = now - rule.window_s
            if sent_at[-1] <= cutoff and event not in events:
                counts = True  # nothing in this cap's window
                continue
            name = rule.name
            n = 0
            counted: set[int] = set()
            nth = 0.0  # the limit-th newest counted message
            seen = False
            i = len(sent_at)
            while i:  # newest first, down to the window's start (the list is in time order)
                i -= 1
                at = sent_at[i]
                if at <= cutoff:
                    break
                covering = known.get(kinds[i])
                if covering is None:
                    covering = coverage(kinds[i])
                if name in covering:
                    other = events[i]
                    if other == event:
                        seen = True  # counted already: a retry, or another device of the person
                        break
                    if other in counted:
                        continue  # one message entered under two kinds (caps over other apps)
                    counted.add(other)
                    n += 1
                    if n == limit:
                        nth = at
            if seen:
                continue
            if n < limit:
                counts = True
                continue
            until = dt.datetime.fromtimestamp(nth + rule.window_s, UTC)
            if rule.over == "suppress":
                return CapVerdict(rule, until)
            if verdict.until is None or until > verdict.until:
                verdict = CapVerdict(rule, until)
        if verdict is ADMITTED and counts:
            sent_at.append(now)
            events.append(event)
            kinds.append(tag)
            forget_before = self._forget_before
            forget = (
                bisect.bisect_right(sent_at, forget_before) if sent_at[0] <= forget_before else 0
            )
            self.added.append((subject, forget, event, tag))
        return verdict


class FrequencyCaps:
    """At most N notifications per person per window (see the module docstring)."""

    name = "frequency-caps"

    def __init__(
        self, policies: Mapping[str | None, CategoryPolicy], coverage: CapCoverage
    ) -> None:
        self._policies = policies
        self._default = policies[None]
        self._coverage = coverage
        self._kinds: dict[str | None, str] = {}  # category: the kind its messages count as

    async def sift(
        self, rows: list[ClaimedRow], now: dt.datetime, claim: CapStore
    ) -> tuple[list[ClaimedRow], list[Decision]]:
        policies, default = self._policies, self._default
        capped: list[tuple[ClaimedRow, tuple[CapRule, ...], str]] = []
        keep: list[ClaimedRow] = []
        subjects: dict[str, None] = {}
        repeated = False
        for row in rows:
            rules = policies.get(row.category, default).caps
            if not rules or row.probe:
                keep.append(row)
                continue
            user = row.user_id or row.device_user  # cap_subject(row), inlined: once per row
            subject = "u:" + user if user is not None else f"d:{row.app}:{row.device_token}"
            capped.append((row, rules, subject))
            if subject in subjects:
                repeated = True
            else:
                subjects[subject] = None
        if not capped:
            return rows, []
        ledger = CapLedger(await claim.lock_caps(list(subjects)), self._coverage, now)
        if repeated:
            # One person's messages are judged in the claim's order: higher priority first,
            # then the older.
            capped.sort(key=lambda c: (-c[0].priority, c[0].send_at, c[0].id))
        settled: list[Decision] = []
        kinds = self._kinds
        entries, added, now_ts = ledger.entries, ledger.added, ledger.now
        for row, rules, subject in capped:
            category = row.category
            kind = kinds.get(category)
            if kind is None:
                kind = kinds[category] = f"{row.app}/{category or ''}"
            event = row.group_id if row.group_id is not None else -row.id
            if subject not in entries:  # nothing counted for this person: every cap has room
                entries[subject] = (subject, [now_ts], [event], [kind])
                added.append((subject, 0, event, kind))
                keep.append(row)
                continue
            verdict = ledger.judge(rules, subject, event, kind)
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
        if ledger.added:
            await claim.write_caps(now.timestamp(), self._coverage.keep_s, ledger.added)
        return keep, settled
