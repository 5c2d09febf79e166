"""The command line of ``make bench``: which steps run, with how much load, and the cleanup.

Steps run in order (sink probe; the ceiling for APNs and for FCM; transport per codec and
for FCM; aioapns; the observers' cost with metrics on and off; the guardrail stages' cost on
and off; end to end APNs with metrics off and then on, and FCM; fairness; latency under an
open-loop load at half the maximum; 1, 2 and 4 daemons draining one app; a
10,000,000-row backlog and a 10-minute soak; 20
SIGKILLs mid-drain against the APNs simulator; a fan-out to 1,000,000 users' devices), each in
:func:`_step`: a failure is recorded with its reason and the next step still runs. Everything
lives in one temporary folder, removed at the end (``--keep`` keeps it); only the JSON result
is written into the repository, under ``benchmarks/results/``. SIGTERM and Ctrl-C unwind
through the same ``finally`` blocks, so the sink, the daemon and Postgres never outlive a run.
"""

from __future__ import annotations

import argparse
import functools
import os
import pathlib
import shlex
import shutil
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from pushgres.http2.codecs import CODECS, DEFAULT_CODEC

from .backlog import run_backlog
from .ceiling import probe_echo_upload, run_ceiling
from .chaos import run_chaos
from .client import ROOT, run_client
from .e2e import run_e2e
from .fairness import run_fairness
from .fanout import run_fanout
from .guardrails import run_guardrails
from .latency import run_latency
from .observers import run_observers
from .procs import StepFailed, reap_all
from .report import machine_facts, metrics_cost, ratios, render, targets, write_json
from .scale import run_scale
from .sink import Sink
from .workload import build_fcm_requests, build_requests, make_credentials

__all__ = ["main"]

RESULTS_DIR = ROOT / "benchmarks" / "results"
FULL = {
    "h2load_requests": 1_000_000,
    "requests": 200_000,
    "aioapns_requests": 50_000,
    "rows": 1_000_000,
    "queued": 500_000,
    "probe_requests": 20_000,
    "fanout_users": 1_000_000,
    "fairness_rows": 1_000_000,
    "fairness_s": 10.0,
    "scale_rows": 1_000_000,
    "latency_s": 10.0,
    "backlog_rows": 10_000_000,
    "soak_s": 600.0,
    "chaos_rows": 600_000,
    "kills": 20,
}
QUICK = {
    "h2load_requests": 100_000,
    "requests": 20_000,
    "aioapns_requests": 10_000,
    "rows": 60_000,
    "queued": 40_000,
    "probe_requests": 5_000,
    "fanout_users": 100_000,
    "fairness_rows": 500_000,
    "fairness_s": 4.0,
    "scale_rows": 40_000,
    "latency_s": 3.0,
    "backlog_rows": 1_000_000,
    "soak_s": 30.0,
    "chaos_rows": 40_000,
    "kills": 3,
}
STEPS = (
    "probe",
    "ceiling",
    "ceiling-fcm",
    "transport",
    "transport-fcm",
    "aioapns",
    "observers",
    "guardrails",
    "e2e-off",
    "e2e",
    "e2e-fcm",
    "fairness",
    "latency",
    "scale",
    "backlog",
    "chaos",
    "fanout",
)

_SINK_WHY = (
    "it costs a few µs of CPU per request, far below any Python sender, and answers like APNs "
    "(200, no body); nghttpd --echo-upload spools each body through a temporary file in /tmp "
    "(see the sink_probe row)"
)


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks", description=(__doc__ or "").split("\n")[0]
    )
    add = parser.add_argument
    add("--quick", action="store_true", help="a ~1-minute smoke run (smaller counts)")
    add("--rows", type=int, help="end to end: notifications queued before the daemon starts")
    add("--queued", type=int, help="end to end: results to wait for (the measured drain)")
    add("--requests", type=int, help="transport: requests per codec")
    add("--aioapns-requests", type=int, help="aioapns: notifications")
    add("--h2load-requests", type=int, help="ceiling: h2load requests")
    add("--probe-requests", type=int, help="--echo-upload sink probe: h2load requests (0: skip)")
    add("--fanout-users", type=int, help="fan-out: users in the registry, all sent to")
    add("--fairness-rows", type=int, help="fairness: the campaign's bulk rows")
    add("--fairness-s", type=float, help="fairness: seconds of transactional traffic per phase")
    add("--backlog-rows", type=int, help="backlog: rows drained from one big backlog")
    add("--soak-s", type=float, help="backlog: seconds of steady traffic after the drain")
    add("--soak-per-s", type=float, default=5_000, help="backlog: the soak's notifications/s")
    add("--chaos-rows", type=int, help="chaos: rows queued before the kills")
    add("--kills", type=int, help="chaos: SIGKILLs, each after 0.5-2 s of sending")
    add("--chaos-latency-ms", type=float, default=20.0, help="chaos: the simulator's latency")
    add("--latency-s", type=float, help="latency: seconds of each phase (maximum, open loop)")
    add("--scale-rows", type=int, help="scale: notifications drained by 1, 2 and 4 daemons each")
    add("--connections", type=int, default=2, help="HTTP/2 connections (pool, h2load -c)")
    add("--streams", type=int, default=500, help="streams per connection (pool, h2load -m)")
    add("--batch", type=int, default=250, help="transport: requests per send_batch call")
    add("--batch-size", type=int, default=1000, help="end to end: daemon.batch_size")
    add("--codecs", help="transport: comma-separated codecs (default: every codec, and fast)")
    add("--e2e-codec", help="end to end: the app's codec (default: fast if registered)")
    add("--e2e-timeout", type=float, help="end to end: seconds to wait for --queued results")
    add("--steps", default=",".join(STEPS), help=f"comma-separated subset of {','.join(STEPS)}")
    add("--results-dir", default=str(RESULTS_DIR), help="where the JSON result goes")
    add("--keep", action="store_true", help="keep the temporary folder (logs, configs)")
    return parser


def _options(argv: Sequence[str] | None) -> argparse.Namespace:
    args = _parser().parse_args(argv)
    for key, value in (QUICK if args.quick else FULL).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    for key in (
        "h2load_requests",
        "requests",
        "aioapns_requests",
        "rows",
        "queued",
        "fanout_users",
        "fairness_rows",
        "fairness_s",
        "scale_rows",
        "latency_s",
        "backlog_rows",
        "chaos_rows",
        "kills",
    ):
        if getattr(args, key) < 1:
            _parser().error(f"--{key.replace('_', '-')} must be at least 1")
    if args.queued > args.rows:
        _parser().error("--queued cannot exceed --rows")
    args.steps = [s.strip() for s in args.steps.split(",") if s.strip()]
    unknown = set(args.steps) - set(STEPS)
    if unknown:
        _parser().error(f"unknown step(s): {', '.join(sorted(unknown))}")
    default_codecs = sorted(set(CODECS) | {"fast"})
    args.codecs = args.codecs.split(",") if args.codecs else default_codecs
    args.e2e_codec = args.e2e_codec or ("fast" if "fast" in CODECS else DEFAULT_CODEC)
    args.e2e_timeout = args.e2e_timeout or 120 + args.queued / 1000
    return args


def _step(
    steps: dict[str, dict[str, Any]], name: str, measure: Callable[[], dict[str, Any]]
) -> None:
    """Run one step; record its figures, or why it has none. Never raises (but for signals)."""
    _log(f"[bench] {name} ...")
    started = time.monotonic()
    try:
        result = {"status": "ok", **measure()}
    except StepFailed as exc:
        result = {**(exc.partial or {}), "status": "failed", "reason": str(exc)}
    except Exception as exc:  # a broken step is a row of the report, not the end of the run
        traceback.print_exc()
        result = {"status": "failed", "reason": f"{type(exc).__name__}: {exc}"}
    result["step_s"] = time.monotonic() - started
    steps[name] = result
    _log(f"[bench] {name}: {result['status']} {result.get('reason', '')}".rstrip())


def _exit_on_sigterm(signum: int, frame: object) -> NoReturn:
    raise SystemExit(128 + signum)


def main(argv: Sequence[str] | None = None) -> int:
    args = _options(argv)
    # The daemon must use the benchmark's database: its config yields to PUSHGRES_DSN.
    os.environ.pop("PUSHGRES_DSN", None)
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    workdir = pathlib.Path(tempfile.mkdtemp(prefix="pushgres-bench-"))
    steps: dict[str, dict[str, Any]] = {}
    run: dict[str, Any] = {
        "quick": args.quick,
        "command": "python -m benchmarks " + shlex.join(argv if argv is not None else sys.argv[1:]),
        "machine": machine_facts(ROOT),
        "shape": f"{args.connections} connections x {args.streams} streams everywhere "
        f"(h2load -c {args.connections} -m {args.streams}; pool; aioapns gather chunks of "
        f"{args.connections * args.streams}); the sink announces {args.streams} streams",
        "load": {key: getattr(args, key) for key in (*FULL, "batch", "batch_size", "e2e_codec")},
        "sink": {},
        "steps": steps,
    }
    shape = {"connections": args.connections, "streams": args.streams}
    try:
        credentials = make_credentials(workdir / "tls")
        request = build_requests("localhost", 1, credentials.authorization())[0]
        fcm_request = build_fcm_requests("localhost", 1)[0]
        with Sink(workdir, credentials, max_streams=args.streams) as sink:
            run["sink"].update(description=sink.description, why=_SINK_WHY)
            client = functools.partial(run_client, sink=sink, credentials=credentials, **shape)
            if "probe" in args.steps and args.probe_requests:
                _step(
                    steps,
                    "sink_probe",
                    lambda: probe_echo_upload(
                        workdir, credentials, request, requests=args.probe_requests, **shape
                    ),
                )
            if "ceiling" in args.steps:
                _step(
                    steps,
                    "ceiling",
                    lambda: run_ceiling(
                        sink, workdir, request, requests=args.h2load_requests, **shape
                    ),
                )
            if "ceiling-fcm" in args.steps:
                _step(
                    steps,
                    "ceiling-fcm",
                    lambda: run_ceiling(
                        sink,
                        workdir,
                        fcm_request,
                        requests=args.h2load_requests,
                        provider="fcm",
                        **shape,
                    ),
                )
            for codec in args.codecs if "transport" in args.steps else ():
                if codec not in CODECS:
                    steps[f"transport {codec}"] = {
                        "status": "skipped",
                        "reason": f"codec {codec!r} is not registered in CODECS "
                        f"({', '.join(sorted(CODECS))})",
                    }
                    continue
                _step(
                    steps,
                    f"transport {codec}",
                    functools.partial(
                        client,
                        "transport",
                        requests=args.requests,
                        codec=codec,
                        batch=args.batch,
                    ),
                )
            if "transport-fcm" in args.steps:
                _step(
                    steps,
                    "transport-fcm",
                    functools.partial(
                        client,
                        "transport",
                        requests=args.requests,
                        codec=args.e2e_codec,
                        batch=args.batch,
                        provider="fcm",
                    ),
                )
            if "aioapns" in args.steps:
                _step(
                    steps,
                    "aioapns",
                    functools.partial(client, "baseline", requests=args.aioapns_requests),
                )
            if "observers" in args.steps:
                _step(steps, "observers", run_observers)
            if "guardrails" in args.steps:
                _step(steps, "guardrails", functools.partial(run_guardrails, workdir))
            # Metrics off, then on (as users run it): the same run, so their difference is
            # the metrics' cost end to end.
            # FCM as users run it, metrics on.
            e2e_runs = (("e2e-off", False, "apns"), ("e2e", True, "apns"), ("e2e-fcm", True, "fcm"))
            for name, metrics, provider in e2e_runs:
                if name not in args.steps:
                    continue
                _step(
                    steps,
                    name,
                    functools.partial(
                        run_e2e,
                        sink,
                        credentials,
                        workdir,
                        rows=args.rows,
                        target=args.queued,
                        codec=args.e2e_codec,
                        batch_size=args.batch_size,
                        timeout_s=args.e2e_timeout,
                        metrics=metrics,
                        provider=provider,
                        **shape,
                    ),
                )
            if "fairness" in args.steps:
                _step(
                    steps,
                    "fairness",
                    functools.partial(
                        run_fairness,
                        sink,
                        credentials,
                        workdir,
                        rows=args.fairness_rows,
                        duration_s=args.fairness_s,
                        codec_name=args.e2e_codec,
                        batch_size=args.batch_size,
                        **shape,
                    ),
                )
            if "latency" in args.steps:
                _step(
                    steps,
                    "latency",
                    functools.partial(
                        run_latency,
                        sink,
                        credentials,
                        workdir,
                        duration_s=args.latency_s,
                        codec_name=args.e2e_codec,
                        batch_size=args.batch_size,
                        **shape,
                    ),
                )
            if "scale" in args.steps:
                _step(
                    steps,
                    "scale",
                    functools.partial(
                        run_scale,
                        sink,
                        credentials,
                        workdir,
                        rows=args.scale_rows,
                        codec=args.e2e_codec,
                        batch_size=args.batch_size,
                        **shape,
                    ),
                )
            if "backlog" in args.steps:
                _step(
                    steps,
                    "backlog",
                    functools.partial(
                        run_backlog,
                        sink,
                        credentials,
                        workdir,
                        rows=args.backlog_rows,
                        soak_s=args.soak_s,
                        soak_per_s=args.soak_per_s,
                        codec_name=args.e2e_codec,
                        batch_size=args.batch_size,
                        **shape,
                    ),
                )
            run["sink"]["restarts"] = max(0, sink.restarts)
        for name, journal in (("chaos", False), ("chaos-journal", True)):
            if "chaos" not in args.steps:
                break
            _step(
                steps,
                name,
                functools.partial(
                    run_chaos,
                    credentials,
                    workdir,
                    rows=args.chaos_rows,
                    kills=args.kills,
                    latency_ms=args.chaos_latency_ms,
                    batch_size=args.batch_size,
                    journal=journal,
                ),
            )
        if "fanout" in args.steps:
            _step(steps, "fanout", lambda: run_fanout(workdir, users=args.fanout_users))
    except BaseException:
        _log("[bench] stopped early; ending its processes and removing its files")
        raise
    finally:
        reap_all()
        if args.keep:
            _log(f"[bench] kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    run["ratios"] = ratios(steps)
    run["targets"] = targets(steps)
    run["metrics_cost"] = metrics_cost(steps)
    path = write_json(run, pathlib.Path(args.results_dir))
    print(render(run))
    print(f"\nwritten: {os.path.relpath(path)}")
    return 1 if any(step["status"] == "failed" for step in steps.values()) else 0
