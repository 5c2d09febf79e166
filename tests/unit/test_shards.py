"""The queue shards' split between daemons, and the order a lane claims them in."""

from __future__ import annotations

import itertools

import pytest

from pushgres.models import QUEUE_SHARDS
from pushgres.pipeline.shards import ShardPlan, share


def test_one_daemon_owns_every_shard() -> None:
    assert share("a", []) == tuple(range(QUEUE_SHARDS))
    assert share("a", ["a"]) == tuple(range(QUEUE_SHARDS))


@pytest.mark.parametrize("count", [2, 3, 4, 16, 17])
def test_daemons_split_the_shards_disjointly_and_completely(count: int) -> None:
    peers = [f"host-{n}" for n in range(count)]
    shares = {d: share(d, peers) for d in peers}
    owned = [s for mine in shares.values() for s in mine]
    assert sorted(owned) == list(range(QUEUE_SHARDS))  # each shard exactly once
    sizes = [len(mine) for mine in shares.values()]
    assert max(sizes) - min(sizes) <= 1  # as even as 16 allows (the 17th daemon owns none)


def test_every_daemon_computes_the_same_split_whatever_order_it_reads() -> None:
    peers = ["c", "a", "b"]
    for seen in itertools.permutations(peers):
        assert [share(d, list(seen)) for d in peers] == [share(d, peers) for d in peers]


def test_a_daemon_missing_from_the_list_counts_itself() -> None:
    # Its own heartbeat failed this round: it still claims its share, as the others will count it.
    assert share("b", ["a"]) == share("b", ["a", "b"])


def test_order_puts_own_shards_first_and_rotates_each_part() -> None:
    plan = ShardPlan(shards=6)
    assert plan.assign((1, 4), peers=3)
    first, second, third = plan.order(), plan.order(), plan.order()
    assert first == (1, 4, 0, 2, 3, 5)
    assert second == (4, 1, 2, 3, 5, 0)
    assert third == (1, 4, 3, 5, 0, 2)
    assert sorted(first) == list(range(6))
    assert plan.peers == 3


def test_assign_says_whether_the_share_changed_and_checks_it() -> None:
    plan = ShardPlan(shards=4)
    assert plan.own == (0, 1, 2, 3)
    assert not plan.assign((3, 2, 1, 0), peers=1)
    assert plan.assign((0, 2), peers=2)
    assert not plan.assign((2, 0), peers=2)
    with pytest.raises(ValueError, match=r"0\.\.3"):
        plan.assign((4,), peers=2)


def test_a_daemon_owning_nothing_still_helps_with_every_shard() -> None:
    plan = ShardPlan(shards=4)
    plan.assign((), peers=5)
    assert sorted(plan.order()) == [0, 1, 2, 3]


def test_a_claim_through_dry_shards_moves_the_cursor_to_where_it_stopped() -> None:
    plan = ShardPlan(shards=8)
    assert plan.order()[0] == 0
    plan.read(1)  # a backlog: one shard filled the claim; the next claim starts on the next
    assert plan.order()[0] == 1
    plan.read(4)  # shards 1, 2, 3 ran dry, 4 filled the claim and may hold more: start there
    assert plan.order()[0] == 4
    plan.read(1)
    assert plan.order()[0] == 5
