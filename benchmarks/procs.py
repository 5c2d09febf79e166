"""Child processes with deadlines, and what they cost: CPU and peak RSS from ``/proc``.

Every process the harness starts goes through :class:`Child` (long-running: the sink, the
daemon; stopped by the step that started it, which bounds its wait) or :func:`run_child` (run
to completion within a deadline: h2load, migrate, the client benchmarks). Either way the child
gets its own session and is killed on any failure; :func:`reap_all` ends whatever is still
alive when the harness exits, so no sink or daemon is left behind.

CPU is read from ``/proc/<pid>/stat`` (utime + stime, in clock ticks). :func:`tree_cpu_s` sums
a process and all its descendants, plus the CPU of children it already reaped (cutime +
cstime), so Postgres backends that come and go between two samples are still counted.
"""

from __future__ import annotations

import os
import pathlib
import signal
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pushgres.demo import stop_process

__all__ = [
    "Child",
    "Completed",
    "StepFailed",
    "cpu_s",
    "peak_rss_bytes",
    "reap_all",
    "run_child",
    "tree_cpu_s",
]

_TICK_S = 1.0 / os.sysconf("SC_CLK_TCK")
_LIVE: set[Child] = set()


class StepFailed(Exception):
    """A benchmark step could not produce its figure; the message says why.

    ``partial`` holds the figures measured before the failure, if any, for the report.
    """

    def __init__(self, reason: str, partial: dict[str, Any] | None = None) -> None:
        super().__init__(reason)
        self.partial = partial


def _stat_fields(pid: int) -> list[str] | None:
    try:
        text = pathlib.Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Fields after "(comm)": ppid [1], utime [11], stime [12], cutime [13], cstime [14].
    return text.rsplit(")", 1)[1].split()


def cpu_s(pid: int, *, reaped_children: bool = False) -> float | None:
    """User + system CPU seconds of a live process (all its threads), else None."""
    fields = _stat_fields(pid)
    if fields is None:
        return None
    ticks = int(fields[11]) + int(fields[12])
    if reaped_children:
        ticks += int(fields[13]) + int(fields[14])
    return ticks * _TICK_S


def _children_by_parent() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in pathlib.Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        fields = _stat_fields(int(entry.name))
        if fields is not None:
            tree.setdefault(int(fields[1]), []).append(int(entry.name))
    return tree


def tree_cpu_s(root: int) -> float | None:
    """CPU seconds of ``root`` and every descendant, live or already reaped; None if gone."""
    tree = _children_by_parent()
    total = cpu_s(root, reaped_children=True)
    if total is None:
        return None
    stack = list(tree.get(root, ()))
    while stack:
        pid = stack.pop()
        total += cpu_s(pid, reaped_children=True) or 0.0
        stack.extend(tree.get(pid, ()))
    return total


def peak_rss_bytes(pid: int) -> int | None:
    """The process's peak resident set size (``VmHWM``), else None."""
    try:
        status = pathlib.Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return None


class Child:
    """A long-running child process in its own session, stopped by :meth:`stop`."""

    def __init__(
        self,
        argv: Sequence[str],
        *,
        log: pathlib.Path,
    ) -> None:
        self.argv = list(argv)
        self.log = log
        with open(log, "ab") as out:
            self.proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        _LIVE.add(self)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def cpu_s(self) -> float:
        """CPU seconds so far; raises :class:`StepFailed` if the process has exited."""
        value = cpu_s(self.pid) if self.alive() else None
        if value is None:
            raise StepFailed(f"{self.argv[0]} exited with status {self.proc.returncode}")
        return value

    def log_tail(self, lines: int = 5) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return ""
        return " | ".join(text.strip().splitlines()[-lines:])

    def stop(self) -> int | None:
        """SIGTERM, up to 60 s to exit, then SIGKILL (``pushgres.demo.stop_process``)."""
        try:
            return stop_process(self.proc)
        finally:
            _LIVE.discard(self)


def reap_all() -> None:
    """Kill every :class:`Child` still running (the harness is exiting)."""
    for child in list(_LIVE):
        if child.alive():
            child.proc.send_signal(signal.SIGKILL)
            child.proc.wait()
        _LIVE.discard(child)


@dataclass(frozen=True, slots=True)
class Completed:
    """A child run to completion: its exit status, output, and CPU seconds (from rusage)."""

    returncode: int
    stdout: str
    stderr: str
    cpu_s: float
    wall_s: float


def run_child(
    argv: Sequence[str],
    *,
    timeout_s: float,
    cwd: pathlib.Path | None = None,
) -> Completed:
    """Run ``argv`` to completion within ``timeout_s`` (killed and :class:`StepFailed` after).

    Output goes to temporary files rather than pipes, so a chatty child cannot block.
    """
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        started = time.monotonic()
        proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            cwd=cwd,
            start_new_session=True,
        )
        deadline = started + timeout_s
        pid = status = 0
        try:
            while True:
                pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
                if pid:
                    break
                if time.monotonic() > deadline:
                    raise StepFailed(f"{argv[0]} did not finish within {timeout_s:.0f}s")
                time.sleep(0.05)
        finally:
            if not pid:
                proc.kill()
                proc.wait()
        proc.returncode = os.waitstatus_to_exitcode(status)
        wall_s = time.monotonic() - started
        out.seek(0)
        err.seek(0)
        return Completed(
            returncode=proc.returncode,
            stdout=out.read().decode(errors="replace"),
            stderr=err.read().decode(errors="replace"),
            cpu_s=usage.ru_utime + usage.ru_stime,
            wall_s=wall_s,
        )
