"""Credential expiry warnings: once at 30, 14 and 7 days and once expired, per credential."""

from __future__ import annotations

from pushgres.expiry import ExpiryWatch

DAY = 86400.0


def test_each_threshold_warns_once() -> None:
    watch = ExpiryWatch()
    expires = 100 * DAY
    said = []
    for day in range(102):  # checked daily, from 100 days before expiry to after it
        message = watch.check("ios", expires, day * DAY)
        if message:
            said.append((100 - day, message))
    assert [days for days, _ in said] == [30, 14, 7, 0]
    assert "expires in 30.0 days" in said[0][1]
    assert "expired" in said[-1][1] and "reload" in said[-1][1]


def test_a_start_inside_a_window_warns_at_once_and_a_renewal_starts_afresh() -> None:
    watch = ExpiryWatch()
    assert watch.check("ios", 10 * DAY, 0.0) is not None  # 10 days left: the 14-day warning
    assert watch.check("ios", 10 * DAY, 1.0) is None
    assert watch.check("ios", 10 * DAY, 3.5 * DAY) is not None  # 6.5 days: the 7-day warning
    # Renewed: a year ahead, silent; the new certificate's own windows warn again later.
    assert watch.check("ios", 400 * DAY, 4 * DAY) is None
    assert watch.check("ios", 400 * DAY, 371 * DAY) is not None


def test_no_expiry_no_warning() -> None:
    watch = ExpiryWatch()
    assert watch.check("android", None, 0.0) is None
    assert watch.check("ios", 60 * DAY, 0.0) is None
