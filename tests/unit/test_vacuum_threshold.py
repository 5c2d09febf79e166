"""When the daemon vacuums the queue: the configured dead rows, or a tenth of the queue."""

from __future__ import annotations

import math

from pushgres.housekeeping import vacuum_threshold


def test_a_small_queue_is_vacuumed_at_the_configured_dead_rows() -> None:
    assert vacuum_threshold(200_000, 0) == 200_000
    assert vacuum_threshold(200_000, 1_000_000) == 200_000


def test_a_big_queue_is_vacuumed_at_a_tenth_of_its_rows() -> None:
    assert vacuum_threshold(200_000, 10_000_000) == 1_000_000


def test_zero_never_vacuums() -> None:
    assert vacuum_threshold(0, 10_000_000) == math.inf
