"""Quota pacing: a provider that says "too many" slows what it applies to, then recovers.

Each provider names in its reason table which throttling answers apply to what
(``PACE_SCOPES``): FCM's ``QUOTA_EXCEEDED`` to the whole project (Google: "Sending limit
exceeded for the message target", with a per-project quota of messages per minute), APNs's
``TooManyRequests`` to the one device ("The provider sent too many notifications to the same
device token"). The throttled notification itself is retried by the usual backoff; pacing
makes the rest wait too.

* :class:`ProjectPace` -- the app's send rate under additive increase after multiplicative
  decrease: a batch with a project-scope answer halves the rate (from the rate measured just
  before; at most twice a second, and no higher than what the provider accepted lately); each
  second adds back a fiftieth of the rate the throttling began at, and the pace is lifted
  once it is reached again. The lane's
  :class:`~pushgres.pipeline.capacity.Capacity` claims no more than the pace allows.
* :class:`DevicePacing` -- a stage: a device that was answered ``TooManyRequests`` gets
  nothing until its penalty runs out (doubling with each throttle up to ``max_s``, halving
  with each accepted send); its other rows claimed meanwhile wait in the queue until then
  (deferred, not attempted). The map is bounded: the oldest entries go first.

Pure arithmetic over an injected monotonic clock; no I/O.
"""

from __future__ import annotations

import datetime as dt
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Final

from ..models import Action, ClaimedRow, Outcome, Requeue
from .decide import Decision

if TYPE_CHECKING:
    from .guardrails import CapStore

__all__ = ["DevicePacing", "Pacing", "ProjectPace"]

DECREASE: Final = 0.5
RECOVERY_STEPS: Final = 50  # each second adds back 1/50 of the rate the throttling began at
DECREASE_HOLD_S: Final = 0.5  # one decrease per half second at most (a burst is one signal)
RATE_WINDOW_S: Final = 2.0
FLOOR_PER_S: Final = 1.0
DEVICE_BASE_S: Final = 5.0
DEVICE_MAX_S: Final = 600.0
MAX_DEVICES: Final = 100_000


class ProjectPace:
    """AIMD on one app's send rate (see the module docstring); ``rate`` None: not paced."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self.rate: float | None = None
        self._peak = 0.0  # the rate the throttling began at
        self._updated = clock()
        self._last_decrease = -1e9
        self._window_start = clock()
        self._answered = self._accepted = 0
        self._measured = self._measured_accepted = -1.0  # per second, last whole window
        self.decreases = 0

    def answered(self, n: int, throttled: int, accepted: int | None = None) -> None:
        """``n`` answers of one batch: ``throttled`` of them project-scope throttles,
        ``accepted`` of them accepted (default: all the others)."""
        now = self._clock()
        self._measure(now, n, n - throttled if accepted is None else accepted)
        self._increase(now)
        if not throttled or now - self._last_decrease < DECREASE_HOLD_S:
            return
        sending, passing = self._rates(now)
        base = self.rate if self.rate is not None else max(FLOOR_PER_S, sending)
        if self.rate is None:
            self._peak = base
        # Halve, and no faster than the quota let through lately.
        self.rate = max(FLOOR_PER_S, min(base * DECREASE, passing))
        self._last_decrease = now
        self._updated = now
        self.decreases += 1

    def current(self) -> float | None:
        """The pace now (additive increase applied), or None."""
        self._increase(self._clock())
        return self.rate

    def _rates(self, now: float) -> tuple[float, float]:
        """Answers and accepted answers per second lately: the last whole window's, else the
        current one's."""
        if self._measured >= 0:
            return self._measured, self._measured_accepted
        elapsed = max(now - self._window_start, 0.1)
        return self._answered / elapsed, self._accepted / elapsed

    def _measure(self, now: float, n: int, accepted: int) -> None:
        if now - self._window_start > 2 * RATE_WINDOW_S:
            # Idle for a while: a burst starts a window of its own (an idle hour averaged in
            # would make the rate before a throttle look like nothing).
            self._window_start = now
            self._measured = self._measured_accepted = -1.0
        self._answered += n
        self._accepted += accepted
        elapsed = now - self._window_start
        if elapsed >= RATE_WINDOW_S:
            self._measured = self._answered / elapsed
            self._measured_accepted = self._accepted / elapsed
            self._answered = self._accepted = 0
            self._window_start = now

    def _increase(self, now: float) -> None:
        if self.rate is None:
            return
        elapsed = now - self._updated
        if elapsed <= 0:
            return
        self._updated = now
        self.rate += self._peak / RECOVERY_STEPS * elapsed
        if self.rate >= self._peak:
            self.rate = None  # recovered: the quota allows the rate it refused before
            self._peak = 0.0


class DevicePacing:
    """A stage: devices a provider throttled get nothing until their penalty runs out."""

    name = "device-pacing"

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.monotonic,
        base_s: float = DEVICE_BASE_S,
        max_s: float = DEVICE_MAX_S,
        max_devices: int = MAX_DEVICES,
    ) -> None:
        self._clock = clock
        self._base_s = base_s
        self._max_s = max_s
        self._max_devices = max_devices
        self._devices: OrderedDict[str, tuple[float, float]] = OrderedDict()  # until, penalty

    @property
    def any(self) -> bool:
        """Whether any device is (or was lately) paced."""
        return bool(self._devices)

    def __len__(self) -> int:
        """Devices paced now."""
        now = self._clock()
        return sum(1 for until, _ in self._devices.values() if until > now)

    def throttled(self, token: str, retry_after_s: float | None) -> None:
        now = self._clock()
        _, penalty = self._devices.pop(token, (0.0, 0.0))
        penalty = min(self._max_s, max(self._base_s, penalty * 2, retry_after_s or 0.0))
        self._devices[token] = (now + penalty, penalty)
        while len(self._devices) > self._max_devices:
            self._devices.popitem(last=False)

    def accepted(self, token: str) -> None:
        entry = self._devices.get(token)
        if entry is None:
            return
        until, penalty = entry
        if penalty / 2 < self._base_s:
            del self._devices[token]
        else:
            self._devices[token] = (until, penalty / 2)

    async def sift(
        self, rows: list[ClaimedRow], now: dt.datetime, claim: CapStore
    ) -> tuple[list[ClaimedRow], list[Decision]]:
        devices = self._devices
        if not devices:
            return rows, []
        mono = self._clock()
        keep: list[ClaimedRow] = []
        settled: list[Decision] = []
        for row in rows:
            entry = devices.get(row.device_token)
            if entry is None or entry[0] <= mono or row.probe:
                keep.append(row)
                continue
            wait_s = entry[0] - mono
            reason = f"TooManyRequests: device paced for {wait_s:.0f}s"
            settled.append(
                Decision(requeue=Requeue(row, wait_s, reason, row.attempts, deferred=True))
            )
        return keep, settled


class Pacing:
    """What a lane feeds its answers to: the app's project pace and its devices' pacing,
    by the provider's table of throttling reasons (reason: ``project`` or ``device``)."""

    def __init__(
        self,
        scopes: Mapping[str, str],
        *,
        project: ProjectPace | None = None,
        devices: DevicePacing | None = None,
    ) -> None:
        self._project_reasons = frozenset(r for r, s in scopes.items() if s == "project")
        self._device_reasons = frozenset(r for r, s in scopes.items() if s == "device")
        self.project = project if project is not None else ProjectPace()
        self.devices = devices if devices is not None else DevicePacing()

    def answered(self, rows: Sequence[ClaimedRow], outcomes: Sequence[Outcome | None]) -> None:
        project_reasons, device_reasons = self._project_reasons, self._device_reasons
        devices = self.devices
        any_device = devices.any
        sent = Action.SENT
        n = throttled = accepted = 0
        for row, outcome in zip(rows, outcomes, strict=True):
            if outcome is None:
                continue
            n += 1
            if outcome.action is sent:
                accepted += 1
                if any_device:
                    devices.accepted(row.device_token)
                continue
            reason = outcome.reason
            if reason in project_reasons:
                throttled += 1
            elif reason in device_reasons:
                devices.throttled(row.device_token, outcome.retry_after_s)
                any_device = True
        self.project.answered(n, throttled, accepted)
