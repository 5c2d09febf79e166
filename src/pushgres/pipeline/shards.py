"""Which queue shards a lane claims first: its daemon's share among the daemons serving its app.

The queue is cut into :data:`~pushgres.models.QUEUE_SHARDS` shards by a hash of the device
token (schema 0009), and each claim reads one shard. Daemons serving the same app split the
shards between them: every daemon reads the live daemons from ``pushgres.daemons`` after its
heartbeat, sorts those serving the app by id, and owns the shards whose number modulo their
count is its place in that list (:func:`share`). A daemon that joins is counted by the others
at their next heartbeat (every 5 s), one that stops cleanly removes its row, and one that dies
stops counting once its heartbeat is older than the liveness window (30 s).

Ownership is a preference, not a lock: a claim reads the lane's own shards first and, when
they hold fewer rows than the claim may take, goes on through the others' (:meth:`ShardPlan.
order`). So daemons draining a backlog each work their own index ranges, and no shard waits
for its owner: one that died or fell behind is helped by the rest. Correctness never depends
on the assignment (``FOR UPDATE SKIP LOCKED`` keeps a row in one claim), so two daemons that
briefly disagree during a rebalance cost some contention and nothing else. No I/O here.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..models import QUEUE_SHARDS

__all__ = ["ShardPlan", "share"]


def share(daemon_id: str, peers: Sequence[str], shards: int = QUEUE_SHARDS) -> tuple[int, ...]:
    """The shards ``daemon_id`` owns among ``peers`` (the live daemons serving one app).

    ``peers`` need not be sorted nor contain ``daemon_id`` (a daemon whose heartbeat failed
    still counts itself). With more daemons than shards, the extra ones own none.
    """
    ordered = sorted({*peers, daemon_id})
    place, count = ordered.index(daemon_id), len(ordered)
    return tuple(s for s in range(shards) if s % count == place)


class ShardPlan:
    """One lane's shards: its own first, then the others', each rotated claim by claim.

    Consecutive claims start on different shards, so a lane's claims in flight at once (the
    look-ahead) read different index ranges too. A claim that ran through several dry shards
    moves the cursor past them (:meth:`read`): every shard gets its turn in sequence, so no
    shard's rows are claimed (and, under a provider's throttling, retried) more often than
    another's.
    """

    __slots__ = ("_others", "_own", "_turn", "peers", "shards")

    def __init__(self, shards: int = QUEUE_SHARDS) -> None:
        self.shards = shards
        self._own: tuple[int, ...] = tuple(range(shards))
        self._others: tuple[int, ...] = ()
        self._turn = 0
        self.peers = 1
        """Daemons serving the app as of the last assignment, this one included."""

    @property
    def own(self) -> tuple[int, ...]:
        return self._own

    def assign(self, own: Sequence[int], peers: int) -> bool:
        """Own ``own`` from now on, among ``peers`` daemons; whether the share changed."""
        mine = tuple(sorted(set(own)))
        if any(not 0 <= s < self.shards for s in mine):
            raise ValueError(f"shards are 0..{self.shards - 1}, got {mine}")
        self.peers = max(1, peers)
        if mine == self._own:
            return False
        self._own = mine
        self._others = tuple(s for s in range(self.shards) if s not in set(mine))
        return True

    def read(self, count: int) -> None:
        """A claim read ``count`` shards of its order: all but the last ran dry, so the next
        claim starts at that last one (a round-robin cursor; one shard read moves it by one)."""
        self._turn += max(0, count - 2)

    def order(self) -> tuple[int, ...]:
        """The shards for the next claim: own ones from the cursor on, then the others."""
        turn = self._turn
        self._turn = turn + 1
        own, others = self._own, self._others
        if own:
            k = turn % len(own)
            own = own[k:] + own[:k]
        if others:
            k = turn % len(others)
            others = others[k:] + others[:k]
        return own + others
