"""The systemd watchdog is withheld while a claim loop has stalled or ended."""

from __future__ import annotations

from pushgres.daemon import stalled_lanes


def test_the_watchdog_names_stalled_claim_loops() -> None:
    ticks = {"ios": 100.0, "android": 30.0, "web": None}
    assert stalled_lanes(ticks, now=120.0, stall_s=60.0) == ["android", "web"]
    assert stalled_lanes({"ios": 100.0}, now=159.0, stall_s=60.0) == []
