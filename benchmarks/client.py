"""Client benchmarks in a subprocess of their own: both sides of that contract.

The parent (:func:`run_client`) starts ``python -m benchmarks.<module> '<json spec>'`` with a
deadline, reads the JSON line the child prints last, and adds the sink's CPU per request over
the child's whole run. The child (:func:`child_main`) runs its benchmark coroutine under uvloop
and prints its result. A separate process per client keeps their CPU apart and their imports
(aioapns, a codec) from leaking into each other.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import pathlib
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import uvloop

from pushgres.cli import collect_less

from .procs import StepFailed, run_child
from .sink import Sink
from .workload import Credentials

__all__ = ["ROOT", "Measured", "child_main", "run_client"]

ROOT = pathlib.Path(__file__).resolve().parent.parent
MIN_RATE_PER_S = 200  # for the deadline only: a slower client is a failure

Spec = dict[str, Any]


def run_client(
    module: str,
    *,
    sink: Sink,
    credentials: Credentials,
    requests: int,
    connections: int,
    streams: int,
    **options: Any,
) -> dict[str, Any]:
    """Run the client benchmark ``module`` against ``sink``; its result plus the sink's cost.

    The child gets its spec as JSON: the sink's port, the credentials, the load and
    ``options``.

    Raises
    ------
    StepFailed
        The child failed, timed out, printed no result, or not every request got a 200.
    """
    sink.ensure()
    timeout_s = 60 + requests / MIN_RATE_PER_S
    spec = {
        **options,
        "credentials": dataclasses.asdict(credentials),
        "requests": requests,
        "connections": connections,
        "streams": streams,
        "port": sink.port,
        "timeout_s": timeout_s - 10,  # the child gives up before it is killed
    }
    sink_cpu0 = sink.cpu_s()
    done = run_child(
        [sys.executable, "-m", f"benchmarks.{module}", json.dumps(spec)],
        timeout_s=timeout_s,
        cwd=ROOT,
    )
    sink_cpu_s = sink.cpu_s() - sink_cpu0
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        tail = " | ".join(done.stderr.strip().splitlines()[-3:])
        raise StepFailed(f"{module} exited with status {done.returncode}: {tail}")
    result: dict[str, Any] = json.loads(lines[-1])
    if result["ok"] != result["requests"]:
        raise StepFailed(
            f"{result['ok']:,} of {result['requests']:,} answered 200; others: {result['other']}"
        )
    result["sink_cpu_us"] = sink_cpu_s / (result["requests"] + result["warmup"]) * 1e6
    return result


class Measured:
    """The child's measurement window: wall and process CPU time around the timed sends."""

    def __enter__(self) -> Measured:
        self._wall0 = time.perf_counter()
        self._cpu0 = time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.cpu_s = time.process_time() - self._cpu0
        self.wall_s = time.perf_counter() - self._wall0

    def result(self, requests: int, ok: int, other: dict[str, int], warmup: int) -> Spec:
        return {
            "requests": requests,
            "ok": ok,
            "other": other,
            "warmup": warmup,
            "wall_s": self.wall_s,
            "cpu_s": self.cpu_s,
            "per_s": requests / self.wall_s,
            "client_cpu_us": self.cpu_s / requests * 1e6,
        }


def child_main(bench: Callable[[Spec], Awaitable[Spec]]) -> int:
    """The child side: run ``bench(spec)`` under uvloop, print its result as one JSON line.

    Every client runs with the daemon's garbage-collector policy
    (:func:`pushgres.cli.collect_less`), so their CPU figures compare code, not collector
    settings.
    """
    spec: Spec = json.loads(sys.argv[1])
    collect_less()
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        result = runner.run(asyncio.wait_for(bench(spec), spec["timeout_s"]))
    print(json.dumps(result), flush=True)
    return 0
