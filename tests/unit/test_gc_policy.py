"""The daemon process's garbage-collector policy (``pushgres run``)."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from pushgres import cli


@pytest.fixture
def restore_gc() -> Iterator[None]:
    thresholds = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)


@pytest.mark.usefixtures("restore_gc")
def test_the_daemon_freezes_its_start_and_collects_young_objects_less_often() -> None:
    gc.unfreeze()
    cli.collect_less()
    assert gc.get_threshold() == cli.GC_THRESHOLDS
    assert gc.get_freeze_count() > 10_000  # the modules, config and code loaded at start
    # A cycle made afterwards is still collected.
    cycle = Node()
    cycle.other = cycle
    gone = weakref.ref(cycle)
    del cycle
    gc.collect()
    assert gone() is None


class Node:
    other: object = None
