"""The daemon's batch slots, shared by its lanes by weight.

A batch holds a database connection from its claim to its commit, so the daemon has a fixed
number of batch slots (its pool less the connections kept for everything else). When every
lane wants more slots than there are, a freed slot goes to the waiting lane holding the
fewest for its weight (``held / weight``; among equals, the one waiting longest): one app's
million-row campaign cannot take every slot from another app, and an idle lane's share goes
to the busy ones. Each lane gets a :class:`LaneSlots` handle with a semaphore's
``acquire``/``release``.
"""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import dataclass, field

__all__ = ["FairSlots", "LaneSlots"]


@dataclass(eq=False, slots=True)
class _Lane:
    name: str
    weight: float
    held: int = 0
    waiting: list[tuple[int, asyncio.Future[None]]] = field(default_factory=list)


class FairSlots:
    def __init__(self, total: int) -> None:
        if total < 1:
            raise ValueError("FairSlots needs at least one slot")
        self.total = total
        self._free = total
        self._lanes: dict[str, _Lane] = {}
        self._order = itertools.count()

    def lane(self, name: str, weight: float = 1.0) -> LaneSlots:
        """The handle of lane ``name`` (a lane built again for the same app shares its count)."""
        lane = self._lanes.get(name)
        if lane is None:
            lane = self._lanes[name] = _Lane(name, weight)
        lane.weight = weight
        return LaneSlots(self, lane)

    def held(self, name: str) -> int:
        lane = self._lanes.get(name)
        return lane.held if lane is not None else 0

    async def _acquire(self, lane: _Lane) -> None:
        if self._free > 0 and not any(other.waiting for other in self._lanes.values()):
            self._free -= 1
            lane.held += 1
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (next(self._order), future)
        lane.waiting.append(entry)
        self._grant()
        try:
            await future
        except asyncio.CancelledError:
            if entry in lane.waiting:
                lane.waiting.remove(entry)
            elif future.done() and not future.cancelled():
                self._release(lane)  # granted as it was cancelled: give it back
            raise

    def _release(self, lane: _Lane) -> None:
        lane.held -= 1
        self._free += 1
        self._grant()

    def _grant(self) -> None:
        while self._free > 0:
            waiting = [lane for lane in self._lanes.values() if lane.waiting]
            if not waiting:
                return
            lane = min(waiting, key=lambda w: (w.held / w.weight, w.waiting[0][0]))
            _, future = lane.waiting.pop(0)
            if future.done():  # cancelled meanwhile
                continue
            self._free -= 1
            lane.held += 1
            future.set_result(None)


@dataclass(frozen=True, slots=True)
class LaneSlots:
    """One lane's view of the shared slots: a semaphore's ``acquire`` and ``release``."""

    _slots: FairSlots
    _lane: _Lane

    async def acquire(self) -> bool:
        await self._slots._acquire(self._lane)
        return True

    def release(self) -> None:
        self._slots._release(self._lane)
