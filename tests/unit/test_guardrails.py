"""The guardrails' logic: category policies, quiet hours and local time across DST changes,
the caps' ledger. Pure: an in-memory claim stands in for the database (the integration tests
in tests/integration/test_guardrails.py run the same stages on PostgreSQL)."""

from __future__ import annotations

import datetime as dt
import zoneinfo
from pathlib import Path
from typing import Any

import pytest

from pushgres.config import (
    AppConfig,
    CapRule,
    CategoryConfig,
    PoolConfig,
    QuietHours,
    format_duration,
    parse_config,
)
from pushgres.exceptions import ConfigError
from pushgres.models import ClaimedRow, Status
from pushgres.pipeline.guardrails import (
    CapCoverage,
    CapLedger,
    FrequencyCaps,
    Timing,
    cap_subject,
    category_policies,
    local_instant,
    quiet_until,
)
from pushgres.testing import MemoryClaim, MemoryStore

UTC = dt.UTC
PARIS = zoneinfo.ZoneInfo("Europe/Paris")
NEW_YORK = zoneinfo.ZoneInfo("America/New_York")
NIGHT = QuietHours(dt.time(21), dt.time(8))
POOL = PoolConfig(host="localhost", port=443, server_hostname="localhost")


def app(**kw: Any) -> AppConfig:
    values: dict[str, Any] = {"name": "shop", "platform": "apns", "pool": POOL}
    values.update(kw)
    return AppConfig(**values)


def row(i: int, now: dt.datetime, **kw: Any) -> ClaimedRow:
    values: dict[str, Any] = {"app": "shop", "platform": "apns", "device_token": f"{i:064x}"}
    values.update(kw)
    return ClaimedRow.fresh(id=i, payload="{}", now=now, **values)


def claim() -> MemoryClaim:
    return MemoryClaim([], MemoryStore())


CATEGORIES = {
    "news": CategoryConfig(name="news"),
    "receipts": CategoryConfig(name="receipts", transactional=True),
    "alarms": CategoryConfig(name="alarms", transactional=True, quiet_hours=True),
    "digest": CategoryConfig(name="digest", quiet_hours=QuietHours(dt.time(18), dt.time(10))),
    "chat": CategoryConfig(name="chat", quiet_hours=False),
}
DAILY = CapRule(name="daily", apps=frozenset({"shop"}), categories=None, limit=3, window_s=86400)


# -- what applies to which category ----------------------------------------------------------


def test_policies_follow_the_app_and_exempt_transactional_categories() -> None:
    receipts_cap = CapRule(
        name="r",
        apps=frozenset({"shop"}),
        categories=frozenset({"receipts"}),
        limit=1,
        window_s=60,
    )
    policies = category_policies(
        app(quiet_hours=NIGHT, default_category="news"), CATEGORIES, [DAILY, receipts_cap]
    )
    assert policies["news"].quiet == NIGHT and policies["news"].caps == (DAILY,)
    # Transactional: no quiet hours, and only the caps that name it.
    assert policies["receipts"].quiet is None and policies["receipts"].caps == (receipts_cap,)
    assert policies["alarms"].quiet == NIGHT and policies["alarms"].caps == ()
    assert policies["digest"].quiet == QuietHours(dt.time(18), dt.time(10))
    assert policies["chat"].quiet is None
    assert policies[None] == policies["news"]  # the app's default category


def test_a_cap_covers_only_its_apps() -> None:
    other = CapRule(name="o", apps=frozenset({"other"}), categories=None, limit=1, window_s=60)
    policies = category_policies(app(), {}, [other])
    assert policies[None].caps == () and policies[None].category is None


# -- quiet hours and local time, DST-correct ------------------------------------------------


def test_quiet_window_spanning_midnight() -> None:
    evening = dt.datetime(2026, 7, 1, 19, 30, tzinfo=UTC)  # 21:30 in Paris (UTC+2)
    assert quiet_until(NIGHT, evening, PARIS) == dt.datetime(2026, 7, 2, 6, tzinfo=UTC)
    small_hours = dt.datetime(2026, 7, 2, 1, tzinfo=UTC)  # 03:00 in Paris
    assert quiet_until(NIGHT, small_hours, PARIS) == dt.datetime(2026, 7, 2, 6, tzinfo=UTC)
    assert quiet_until(NIGHT, dt.datetime(2026, 7, 2, 6, tzinfo=UTC), PARIS) is None  # 08:00
    assert quiet_until(NIGHT, dt.datetime(2026, 7, 2, 12, tzinfo=UTC), PARIS) is None
    day = QuietHours(dt.time(12), dt.time(14))
    noon = dt.datetime(2026, 7, 2, 10, 30, tzinfo=UTC)  # 12:30 in Paris
    assert quiet_until(day, noon, PARIS) == dt.datetime(2026, 7, 2, 12, tzinfo=UTC)


def test_quiet_hours_end_at_local_time_across_the_spring_dst_change() -> None:
    # Paris moves from UTC+1 to UTC+2 at 02:00 on 29 March 2026: 08:00 that morning is 06:00
    # UTC, not the 07:00 that the evening's offset would give.
    evening = dt.datetime(2026, 3, 28, 21, 30, tzinfo=UTC)  # 22:30 CET
    assert quiet_until(NIGHT, evening, PARIS) == dt.datetime(2026, 3, 29, 6, tzinfo=UTC)


def test_quiet_hours_end_at_local_time_across_the_autumn_dst_change() -> None:
    # New York moves from UTC-4 to UTC-5 at 02:00 on 1 November 2026.
    evening = dt.datetime(2026, 11, 1, 2, tzinfo=UTC)  # 22:00 EDT on 31 October
    assert quiet_until(NIGHT, evening, NEW_YORK) == dt.datetime(2026, 11, 1, 13, tzinfo=UTC)


def test_local_instants_in_a_gap_and_in_a_repeated_hour() -> None:
    # 02:30 does not exist in Paris on 29 March 2026: read with the offset before the change.
    assert local_instant(dt.datetime(2026, 3, 29, 2, 30), PARIS) == dt.datetime(
        2026, 3, 29, 1, 30, tzinfo=UTC
    )
    # 01:30 happens twice in New York on 1 November 2026: the first time.
    assert local_instant(dt.datetime(2026, 11, 1, 1, 30), NEW_YORK) == dt.datetime(
        2026, 11, 1, 5, 30, tzinfo=UTC
    )


async def test_timing_defers_rows_in_quiet_hours_to_the_end_spread_by_id() -> None:
    now = dt.datetime(2026, 7, 1, 20, tzinfo=UTC)  # 22:00 in Paris, 16:00 in New York
    spread = 1800.0
    timing = Timing(
        app(quiet_hours=NIGHT, timezone="Europe/Paris", quiet_spread_s=spread),
        category_policies(app(quiet_hours=NIGHT), {}, []),
    )
    rows = [row(i, now) for i in range(1, 201)]
    rows.append(row(500, now, timezone="America/New_York"))
    rows.append(row(501, now, device_timezone="America/New_York"))
    rows.append(row(502, now, probe=True))
    keep, settled = await timing.sift(rows, now, claim())
    assert sorted(r.id for r in keep) == [500, 501, 502]
    assert len(settled) == 200
    end = dt.datetime(2026, 7, 2, 6, tzinfo=UTC)  # 08:00 in Paris
    delays = []
    for d in settled:
        assert d.requeue is not None and d.result is None
        assert d.requeue.attempts == 0  # a deferral is not an attempt
        assert d.requeue.reason == "QuietHours: 21:00-08:00 in Europe/Paris"
        delays.append(d.requeue.delay_s - (end - now).total_seconds())
    assert 0 <= min(delays) < 60 and spread - 60 < max(delays) < spread
    # Spread: no ten-minute slice of the half hour holds more than half the rows.
    assert max(sum(1 for x in delays if k * 600 <= x < (k + 1) * 600) for k in range(3)) < 100


async def test_timing_expires_what_cannot_wait_and_exempts_transactional() -> None:
    now = dt.datetime(2026, 7, 1, 20, tzinfo=UTC)
    config = app(
        quiet_hours=NIGHT, timezone="Europe/Paris", quiet_spread_s=0, default_category="news"
    )
    timing = Timing(config, category_policies(config, CATEGORIES, []))
    soon = now + dt.timedelta(hours=2)
    rows = [row(1, now, expires_at=soon), row(2, now, category="receipts"), row(3, now)]
    keep, settled = await timing.sift(rows, now, claim())
    assert [r.id for r in keep] == [2]
    assert rows[2].category == "news"  # the app's default category is recorded
    expired = [d.result for d in settled if d.result is not None]
    assert len(expired) == 1 and expired[0].status == Status.EXPIRED
    assert expired[0].reason is not None and expired[0].reason.startswith("QuietHours:")
    assert "expires first" in expired[0].reason


async def test_local_time_waits_for_each_devices_wall_clock() -> None:
    now = dt.datetime(2026, 12, 24, 7, 30, tzinfo=UTC)  # 08:30 in Paris, 02:30 in New York
    nine = dt.datetime(2026, 12, 24, 9, 0)
    config = app(timezone="UTC")
    timing = Timing(config, category_policies(config, {}, []))
    enqueued = now - dt.timedelta(hours=3)
    rows = [
        row(1, now, local_send_at=nine, timezone="Europe/Paris", enqueued_at=enqueued),
        row(2, now, local_send_at=nine, device_timezone="America/New_York", enqueued_at=enqueued),
        row(3, now, local_send_at=nine, enqueued_at=enqueued),  # the app's zone: UTC
        row(4, now, local_send_at=nine, timezone="Asia/Tokyo", enqueued_at=enqueued),  # passed
    ]
    keep, settled = await timing.sift(rows, now, claim())
    assert [r.id for r in keep] == [4]  # 09:00 in Tokyo had passed when it came: at once
    waits = {d.requeue.row.id: d.requeue for d in settled if d.requeue is not None}
    assert waits[1].delay_s == 30 * 60
    assert waits[2].delay_s == (dt.datetime(2026, 12, 24, 14, tzinfo=UTC) - now).total_seconds()
    assert waits[3].delay_s == 90 * 60
    assert waits[1].reason == "LocalTime: waiting for 2026-12-24 09:00 Europe/Paris"


async def test_a_local_time_passed_at_enqueue_goes_the_next_day_when_asked() -> None:
    now = dt.datetime(2026, 12, 24, 10, tzinfo=UTC)  # 19:00 in Tokyo
    nine = dt.datetime(2026, 12, 24, 9, 0)
    config = app(late_local_time="next_day")
    timing = Timing(config, category_policies(config, {}, []))
    late = row(1, now, local_send_at=nine, timezone="Asia/Tokyo")
    # Enqueued before 09:00 Tokyo, claimed after it (a backlog): sent now, not tomorrow.
    backlog = row(
        2,
        now,
        local_send_at=nine,
        timezone="Asia/Tokyo",
        enqueued_at=dt.datetime(2026, 12, 23, 12, tzinfo=UTC),
    )
    keep, settled = await timing.sift([late, backlog], now, claim())
    assert [r.id for r in keep] == [2]
    assert settled[0].requeue is not None
    assert (
        settled[0].requeue.delay_s
        == (dt.datetime(2026, 12, 25, 0, tzinfo=UTC) - now).total_seconds()
    )


# -- the caps' ledger --------------------------------------------------------------------------


def _ts(t: dt.datetime) -> float:
    return t.timestamp()


def test_ledger_admits_up_to_the_limit_then_holds_back_until_the_window_moves() -> None:
    t0 = dt.datetime(2026, 7, 1, tzinfo=UTC)
    coverage = CapCoverage({}, [DAILY])
    earlier = [_ts(t0 - dt.timedelta(hours=30)), _ts(t0 - dt.timedelta(hours=3))]
    ledger = CapLedger([("u:1", earlier, [-7, -8], ["shop/", "shop/"])], coverage, t0)
    # Thirty hours ago is out of the window: one counted, two more may go.
    assert ledger.judge([DAILY], "u:1", -1, "shop/").blocking is None
    assert ledger.judge([DAILY], "u:1", -2, "shop/").blocking is None
    verdict = ledger.judge([DAILY], "u:1", -3, "shop/")
    assert verdict.blocking is DAILY and verdict.until == t0 + dt.timedelta(hours=21)
    # The same message again (a retry, another device of the person): not counted twice.
    assert ledger.judge([DAILY], "u:1", -1, "shop/").blocking is None
    # A message counted only before the window is counted anew.
    assert ledger.judge([DAILY], "u:1", -7, "shop/").blocking is DAILY
    added = ledger.added
    assert [(a[0], a[2], a[3]) for a in added] == [("u:1", -1, "shop/"), ("u:1", -2, "shop/")]


def test_a_cap_counts_only_the_kinds_it_covers() -> None:
    t0 = dt.datetime(2026, 7, 1, tzinfo=UTC)
    news_only = CapRule(
        name="news",
        apps=frozenset({"shop"}),
        categories=frozenset({"news"}),
        limit=1,
        window_s=3600,
    )
    coverage = CapCoverage(CATEGORIES, [DAILY, news_only])
    hour = [_ts(t0 - dt.timedelta(minutes=m)) for m in (50, 40, 30)]
    # Receipts (transactional) and another app's news are in the person's entry, not counted.
    kinds = ["shop/receipts", "other/news", "shop/chat"]
    ledger = CapLedger([("u:1", hour, [-1, -2, -3], kinds)], coverage, t0)
    assert ledger.judge([news_only], "u:1", -4, "shop/news").blocking is None
    assert ledger.judge([news_only], "u:1", -5, "shop/news").blocking is news_only
    # The daily cap counts chat (not transactional) and the news just admitted: room for one.
    assert ledger.judge([DAILY], "u:1", -6, "shop/chat").blocking is None
    assert ledger.judge([DAILY], "u:1", -7, "shop/chat").blocking is DAILY


def test_every_rule_must_admit_and_suppress_wins_over_defer() -> None:
    t0 = dt.datetime(2026, 7, 1, tzinfo=UTC)
    cooldown = CapRule(
        name="cool",
        apps=frozenset({"shop"}),
        categories=None,
        limit=1,
        window_s=600,
        over="defer",
    )
    coverage = CapCoverage({}, [DAILY, cooldown])
    minute_ago = [_ts(t0 - dt.timedelta(minutes=1))]
    ledger = CapLedger([("u:1", minute_ago, [-1], ["shop/"])], coverage, t0)
    held = ledger.judge([DAILY, cooldown], "u:1", -2, "shop/")
    assert held.blocking is cooldown and held.until == t0 + dt.timedelta(minutes=9)
    assert ledger.added == []  # held back by one rule, counted by none
    full = [_ts(t0 - dt.timedelta(hours=h)) for h in (3, 2, 1)]
    ledger = CapLedger([("u:2", full, [-3, -4, -5], ["shop/"] * 3)], coverage, t0)
    verdict = ledger.judge([cooldown, DAILY], "u:2", -6, "shop/")
    assert verdict.blocking is DAILY  # over the daily cap: suppressed, whatever else defers


def test_subject_is_the_user_else_the_device() -> None:
    now = dt.datetime(2026, 7, 1, tzinfo=UTC)
    assert cap_subject(row(1, now, user_id="ann")) == "u:ann"
    assert cap_subject(row(2, now, device_user="bob")) == "u:bob"
    assert cap_subject(row(3, now)) == f"d:shop:{3:064x}"


async def test_caps_stage_counts_a_fanout_once_per_person_and_suppresses_the_rest() -> None:
    now = dt.datetime(2026, 7, 1, tzinfo=UTC)
    store = MemoryStore()
    two = CapRule(name="two", apps=frozenset({"shop"}), categories=None, limit=2, window_s=3600)
    stage = FrequencyCaps(category_policies(app(), {}, [two]), CapCoverage({}, [two]))
    rows = [
        # One fan-out (group 7) to ann's phone and tablet: one message.
        row(1, now, user_id="ann", group_id=7),
        row(2, now, user_id="ann", group_id=7, device_token="ab" * 32),
        row(3, now, user_id="ann", priority=5),
        row(4, now, user_id="ann"),  # priority 10: goes before row 3
        row(5, now, user_id="bob"),
        row(6, now, user_id="ann", probe=True),  # uninstall probes are never counted
    ]
    c = MemoryClaim([], store)
    keep, settled = await stage.sift(rows, now, c)
    assert sorted(r.id for r in keep) == [1, 2, 4, 5, 6]
    (held,) = settled
    assert held.result is not None and held.result.row.id == 3
    assert held.result.status == Status.SUPPRESSED
    assert held.result.reason == "FrequencyCap: two (2 per 1h)"
    assert c.caps["u:ann"] == ([now.timestamp()] * 2, [7, -4], ["shop/", "shop/"])


# -- the config -----------------------------------------------------------------------------


def parse(extra: str, tmp_path: Path) -> Any:
    import tomllib

    text = f"""
[database]
dsn = "postgresql://localhost/x"
[apps.shop]
platform = "fcm"
service_account_file = "{tmp_path / "sa.json"}"
{extra}
"""
    (tmp_path / "sa.json").write_text(
        '{"type": "service_account", "project_id": "p", "client_email": "a@b", '
        '"private_key": "x", "token_uri": "https://oauth2.googleapis.com/token"}'
    )
    return parse_config(tomllib.loads(text), base_dir=tmp_path, environ={})


def test_config_reads_categories_caps_and_quiet_hours(tmp_path: Path) -> None:
    settings = parse(
        """default_category = "news"
quiet_hours = "21:30-07:15"
timezone = "Europe/Paris"
quiet_hours_spread = "10m"
late_local_time = "next_day"
[categories.news]
[categories.receipts]
transactional = true
[caps.daily]
apps = ["shop"]
limit = 3
window = "24h"
[caps.cooldown]
apps = ["shop"]
categories = ["news"]
limit = 1
window = 600
over = "defer"
""",
        tmp_path,
    )
    shop = settings.app("shop")
    assert shop.default_category == "news" and shop.timezone == "Europe/Paris"
    assert shop.quiet_hours == QuietHours(dt.time(21, 30), dt.time(7, 15))
    assert shop.quiet_spread_s == 600 and shop.late_local_time == "next_day"
    assert settings.categories["receipts"].transactional
    caps = {c.name: c for c in settings.caps}
    assert caps["daily"].window_s == 86400 and caps["daily"].over == "suppress"
    assert caps["cooldown"].categories == frozenset({"news"}) and caps["cooldown"].over == "defer"
    assert caps["daily"].describe() == "daily (3 per 24h)"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ("[categories.news]\n", "apps.shop.default_category is required"),
        ('default_category = "nope"\n[categories.news]\n', "names 'nope'"),
        ('quiet_hours = "21:00-21:00"\n', "the window is empty"),
        ('quiet_hours = "9pm-8am"\n', 'such as "21:00-08:00"'),
        ('timezone = "Mars/Olympus"\n', "unknown time zone 'Mars/Olympus'"),
        ('[caps.x]\nlimit = 3\nwindow = "1h"\n', "give apps (a list of app names) or group"),
        ('[caps.x]\napps = ["nope"]\nlimit = 3\nwindow = "1h"\n', "not configured: nope"),
        ('[caps.x]\napps = ["shop"]\nwindow = "1h"\n', "caps.x.limit is required"),
        ('[caps.x]\napps = ["shop"]\nlimit = 3\nwindow = "soon"\n', "caps.x.window must be"),
        (
            '[caps.x]\napps = ["shop"]\nlimit = 3\nwindow = "1h"\ncategories = ["promo"]\n',
            "categories not declared: promo",
        ),
        ('[caps.x]\napps = ["shop"]\nlimit = 3\nwindow = "1h"\nover = "drop"\n', "over must be"),
    ],
)
def test_config_errors_name_the_key(extra: str, message: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=None) as caught:
        parse(extra, tmp_path)
    assert message in str(caught.value)


def test_durations_read_back_in_their_unit() -> None:
    assert [format_duration(s) for s in (90, 600, 3600, 86400, 7 * 86400)] == [
        "90s",
        "10m",
        "1h",
        "24h",
        "7d",
    ]


async def test_the_spread_never_outlasts_the_expiry() -> None:
    now = dt.datetime(2026, 7, 1, 20, tzinfo=UTC)  # 22:00 in Paris: quiet until 06:00 UTC
    config = app(quiet_hours=NIGHT, timezone="Europe/Paris", quiet_spread_s=3600)
    timing = Timing(config, category_policies(config, {}, []))
    end = dt.datetime(2026, 7, 2, 6, tzinfo=UTC)
    rows = [row(i, now, expires_at=end + dt.timedelta(minutes=10)) for i in range(1, 50)]
    keep, settled = await timing.sift(rows, now, claim())
    assert not keep and all(d.requeue is not None for d in settled)
    latest = end + dt.timedelta(minutes=10, seconds=-1)
    for d in settled:
        assert d.requeue is not None
        at = now + dt.timedelta(seconds=d.requeue.delay_s)
        assert end <= at <= latest


def test_quiet_hours_in_the_hour_lived_twice_end_in_the_future() -> None:
    # Berlin goes back from 03:00 CEST to 02:00 CET on 25 October 2026. At 02:15 CET (the
    # second 02:15) a window ending at 02:30 ends at 02:30 CET, not the past 02:30 CEST.
    berlin = zoneinfo.ZoneInfo("Europe/Berlin")
    window = QuietHours(dt.time(22), dt.time(2, 30))
    second = dt.datetime(2026, 10, 25, 1, 15, tzinfo=UTC)  # 02:15 CET
    assert quiet_until(window, second, berlin) == dt.datetime(2026, 10, 25, 1, 30, tzinfo=UTC)
    first = dt.datetime(2026, 10, 25, 0, 15, tzinfo=UTC)  # 02:15 CEST
    assert quiet_until(window, first, berlin) == dt.datetime(2026, 10, 25, 0, 30, tzinfo=UTC)


async def test_a_long_spread_never_lands_in_the_next_night() -> None:
    now = dt.datetime(2026, 7, 1, 20, tzinfo=UTC)  # 22:00 in Paris
    config = app(quiet_hours=NIGHT, timezone="Europe/Paris", quiet_spread_s=86400)
    timing = Timing(config, category_policies(config, {}, []))
    end = dt.datetime(2026, 7, 2, 6, tzinfo=UTC)  # 08:00; the open day lasts 13 hours
    _, settled = await timing.sift([row(i, now) for i in range(1, 300)], now, claim())
    for d in settled:
        assert d.requeue is not None
        at = now + dt.timedelta(seconds=d.requeue.delay_s)
        assert end <= at <= end + dt.timedelta(hours=6.5)
        assert quiet_until(NIGHT, at, PARIS) is None  # outside the window when it comes


def test_one_message_under_two_kinds_counts_once() -> None:
    # Cap A covers both apps, cap B only the second: a fan-out's row on the second app is
    # entered again (B had not counted it), and A must still count the message once.
    t0 = dt.datetime(2026, 7, 1, tzinfo=UTC)
    both = CapRule(
        name="a", apps=frozenset({"ios", "android"}), categories=None, limit=2, window_s=86400
    )
    android = CapRule(
        name="b", apps=frozenset({"android"}), categories=None, limit=5, window_s=86400
    )
    coverage = CapCoverage({}, [both, android])
    ledger = CapLedger([("u:1", [], [], [])], coverage, t0)
    assert ledger.judge([both], "u:1", 7, "ios/").blocking is None
    assert ledger.judge([both, android], "u:1", 7, "android/").blocking is None
    assert [a[2] for a in ledger.added] == [7, 7]
    assert ledger.judge([both], "u:1", -8, "ios/").blocking is None  # the second of two
    assert ledger.judge([both], "u:1", -9, "ios/").blocking is both
