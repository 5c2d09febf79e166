"""What a run found: machine facts, ratios, targets, the printed table and the JSON file.

Everything here is computed from the steps' measured figures; nothing is filled in. A figure a
failed or skipped step could not produce is ``None`` in the JSON and ``n/a`` in the table, and
every target that depends on it is ``n/a`` rather than a pass or a fail.
"""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import json
import os
import pathlib
import platform
import subprocess
from collections.abc import Callable
from typing import Any

__all__ = ["machine_facts", "metrics_cost", "ratios", "render", "targets", "write_json"]

Steps = dict[str, dict[str, Any]]
PACKAGES = ("pushgres", "uvloop", "h2", "asyncpg", "aioapns")
MIN_TRANSPORT_VS_CEILING = 0.80
MAX_TRANSPORT_CPU_US = 5.0  # the pool's client CPU per request (fast codec, either provider)
MAX_GUARDRAILS_US = 3.0  # the guardrail stages' daemon CPU per notification (on - off)
MAX_FAIRNESS_P99_S = 0.5  # transactional enqueue->sent p99 while a campaign drains
MAX_BACKLOG_SPREAD = 0.2  # start/middle/end of a big drain: sends/s and claim time
MAX_BACKLOG_RSS_BYTES = 150 * 1024 * 1024
MAX_SOAK_RSS_GROWTH = 0.1
MIN_SCALE_RATIO = 0.9  # the noise allowed between two drains of one run
MAX_LATENCY_P99_S = 0.1  # enqueue->sent p99 under an open-loop load at half the maximum
MIN_E2E_PER_S = 45_000
MAX_DAEMON_CPU_US = 15.0  # APNs end to end, metrics on, default stages
MAX_FCM_DAEMON_CPU_US = 18.0
MIN_VS_AIOAPNS = 10.0
MAX_METRICS_US = 1.0
FANOUT_TARGET_PER_S = 50_000  # notifications enqueued per second by one fan-out
MAX_PEAK_RSS_BYTES = 200 * 1024 * 1024
RSS_QUEUED = 1_000_000
E2E_STEPS = ("e2e", "e2e-off", "e2e-fcm")
SINK_BOUND_CORE = 0.9  # the sink is one thread: at this share of a core it was the limit


def _command(argv: list[str], cwd: pathlib.Path | None = None) -> str | None:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10, cwd=cwd)
    except (OSError, subprocess.SubprocessError):
        return None
    return (done.stdout or done.stderr).strip() if done.returncode == 0 else None


def _cpu_model() -> str | None:
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def machine_facts(root: pathlib.Path) -> dict[str, Any]:
    """nproc, CPU model, load, versions, the commit under test and the date."""
    versions: dict[str, str | None] = {}
    for package in PACKAGES:
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    commit = _command(["git", "rev-parse", "--short", "HEAD"], root)
    if commit and _command(["git", "status", "--porcelain", "--untracked-files=no"], root):
        commit += "+dirty"
    return {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "nproc": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "versions": versions,
        "nghttp2": _command(["nghttpd", "--version"]),
        "commit": commit,
    }


def _ok(steps: Steps, name: str, key: str) -> float | None:
    step = steps.get(name, {})
    value = step.get(key)
    return float(value) if step.get("status") == "ok" and value is not None else None


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or not denominator:
        return None
    return numerator / denominator


def transport_steps(steps: Steps) -> list[str]:
    return [name for name in steps if name.startswith("transport ")]


def ratios(steps: Steps) -> dict[str, float | None]:
    """Throughput ratios (pushgres / other) and CPU ratios (aioapns / pushgres): higher is better."""
    ceiling = _ok(steps, "ceiling", "per_s")
    aioapns = _ok(steps, "aioapns", "per_s")
    aioapns_cpu = _ok(steps, "aioapns", "client_cpu_us")
    found: dict[str, float | None] = {}
    for name in transport_steps(steps):
        per_s = _ok(steps, name, "per_s")
        found[f"{name} / ceiling (req/s)"] = _ratio(per_s, ceiling)
        found[f"{name} / aioapns (req/s)"] = _ratio(per_s, aioapns)
        found[f"aioapns / {name} (CPU µs per request)"] = _ratio(
            aioapns_cpu, _ok(steps, name, "client_cpu_us")
        )
    ceiling_fcm = _ok(steps, "ceiling-fcm", "per_s")
    found["transport-fcm / ceiling-fcm (req/s)"] = _ratio(
        _ok(steps, "transport-fcm", "per_s"), ceiling_fcm
    )
    found["e2e-fcm / ceiling-fcm (req/s)"] = _ratio(_ok(steps, "e2e-fcm", "per_s"), ceiling_fcm)
    found["e2e-fcm / e2e (req/s)"] = _ratio(
        _ok(steps, "e2e-fcm", "per_s"), _ok(steps, "e2e", "per_s")
    )
    e2e = _ok(steps, "e2e", "per_s")
    found["e2e / ceiling (req/s)"] = _ratio(e2e, ceiling)
    found["e2e / aioapns (req/s)"] = _ratio(e2e, aioapns)
    found["aioapns / e2e daemon (CPU µs per notification)"] = _ratio(
        aioapns_cpu, _ok(steps, "e2e", "daemon_cpu_us")
    )
    found["e2e metrics on / off (req/s)"] = _ratio(e2e, _ok(steps, "e2e-off", "per_s"))
    return found


def metrics_cost(steps: Steps) -> dict[str, float | None]:
    """The metrics' daemon CPU per notification: in process (precise), and end to end (noisy)."""
    on, off = _ok(steps, "e2e", "daemon_cpu_us"), _ok(steps, "e2e-off", "daemon_cpu_us")
    return {
        "in_process_us": _ok(steps, "observers", "metrics_us"),
        "e2e_us": None if on is None or off is None else on - off,
    }


def _soak_growth(steps: Steps) -> float | None:
    """The soak's RSS growth, or +100 % if it ended holding more file descriptors."""
    step = steps.get("backlog", {})
    soak = step.get("soak")
    if step.get("status") != "ok" or not soak:
        return None
    return 1.0 if soak["fds_end"] > soak["fds_start"] else float(soak["rss_growth"])


def _scale(steps: Steps, count: str, key: str) -> float | None:
    """A figure of the ``scale`` step's run with ``count`` daemons, or None."""
    step = steps.get("scale", {})
    run = step.get("runs", {}).get(count)
    if step.get("status") != "ok" or not run or run.get(key) is None:
        return None
    return float(run[key])


def targets(steps: Steps) -> list[dict[str, Any]]:
    """Each target with the measured value and whether it passes (None: not measured)."""
    found = ratios(steps)
    queued = _ok(steps, "e2e", "queued") or 0
    rss_note = "" if queued >= RSS_QUEUED else f" (only {queued:,.0f} queued)"
    checks: list[tuple[str, float | None, Callable[[float], bool], Callable[[float], str]]] = [
        (
            f"{name} >= {MIN_TRANSPORT_VS_CEILING:.0%} of h2load",
            found[f"{name} / ceiling (req/s)"],
            lambda v: v >= MIN_TRANSPORT_VS_CEILING,
            "{:.1%}".format,
        )
        for name in transport_steps(steps)
    ]
    checks += [
        (
            f"{name} client CPU <= {MAX_TRANSPORT_CPU_US:.0f} µs/request",
            _ok(steps, name, "client_cpu_us"),
            lambda v: v <= MAX_TRANSPORT_CPU_US,
            "{:.1f} µs".format,
        )
        for name in ("transport fast", "transport-fcm")
        if name in steps
    ]
    checks += [
        (
            f"e2e >= {MIN_E2E_PER_S:,} sends/s",
            _ok(steps, "e2e", "per_s"),
            lambda v: v >= MIN_E2E_PER_S,
            "{:,.0f}/s".format,
        ),
        (
            f"daemon CPU <= {MAX_DAEMON_CPU_US:.0f} µs/notification (APNs, metrics on)",
            _ok(steps, "e2e", "daemon_cpu_us"),
            lambda v: v <= MAX_DAEMON_CPU_US,
            "{:.1f} µs".format,
        ),
        (
            f"daemon CPU <= {MAX_FCM_DAEMON_CPU_US:.0f} µs/notification (FCM, metrics on)",
            _ok(steps, "e2e-fcm", "daemon_cpu_us"),
            lambda v: v <= MAX_FCM_DAEMON_CPU_US,
            "{:.1f} µs".format,
        ),
        (
            f"e2e throughput >= {MIN_VS_AIOAPNS:.0f}x aioapns",
            found["e2e / aioapns (req/s)"],
            lambda v: v >= MIN_VS_AIOAPNS,
            "{:.1f}x".format,
        ),
        (
            f"aioapns CPU/notification >= {MIN_VS_AIOAPNS:.0f}x daemon's",
            found["aioapns / e2e daemon (CPU µs per notification)"],
            lambda v: v >= MIN_VS_AIOAPNS,
            "{:.1f}x".format,
        ),
        (
            f"metrics <= {MAX_METRICS_US:.0f} µs/notification (in process, on - off)",
            metrics_cost(steps)["in_process_us"],
            lambda v: v <= MAX_METRICS_US,
            "{:.2f} µs".format,
        ),
        (
            f"caps <= {MAX_GUARDRAILS_US:.0f} µs/notification of daemon CPU (on - off)",
            _ok(steps, "guardrails", "guardrails_us"),
            lambda v: v <= MAX_GUARDRAILS_US,
            "{:.2f} µs".format,
        ),
        (
            f"transactional p99 <= {MAX_FAIRNESS_P99_S * 1000:.0f} ms during a campaign",
            _ok(steps, "fairness", "p99_s"),
            lambda v: v <= MAX_FAIRNESS_P99_S,
            lambda v: f"{v * 1000:.0f} ms",
        ),
        (
            f"enqueue->sent p99 <= {MAX_LATENCY_P99_S * 1000:.0f} ms at 50% load (1 and 100 "
            "per INSERT)",
            _ok(steps, "latency", "p99_s"),
            lambda v: v <= MAX_LATENCY_P99_S,
            lambda v: f"{v * 1000:.0f} ms",
        ),
        (
            f"backlog: sends/s within {MAX_BACKLOG_SPREAD:.0%} at start, middle and end",
            _ok(steps, "backlog", "sends_spread"),
            lambda v: v <= MAX_BACKLOG_SPREAD,
            "{:.1%}".format,
        ),
        (
            f"backlog: claim time within {MAX_BACKLOG_SPREAD:.0%} at start, middle and end",
            _ok(steps, "backlog", "claim_spread"),
            lambda v: v <= MAX_BACKLOG_SPREAD,
            "{:.1%}".format,
        ),
        (
            f"backlog: peak RSS <= {MAX_BACKLOG_RSS_BYTES >> 20} MB",
            _ok(steps, "backlog", "peak_rss_bytes"),
            lambda v: v <= MAX_BACKLOG_RSS_BYTES,
            lambda v: f"{v / 2**20:.0f} MB",
        ),
        (
            f"soak: RSS growth <= {MAX_SOAK_RSS_GROWTH:.0%} and no file descriptor gained",
            _soak_growth(steps),
            lambda v: v <= MAX_SOAK_RSS_GROWTH,
            "{:+.1%}".format,
        ),
    ]
    checks += [
        (
            f"kill -9{label}: delivered twice <= streams in flight at the kills",
            _ok(steps, name, "excess"),
            lambda v: v <= 0,
            lambda v: f"{v:+,.0f} beyond them",
        )
        for name, label in (("chaos", ""), ("chaos-journal", " (delivery_journal)"))
    ]
    checks += [
        (
            "duplicates = 0 with 1, 2 and 4 daemons (no kill)",
            None
            if _scale(steps, "4", "duplicates") is None
            else sum(_scale(steps, k, "duplicates") or 0 for k in ("1", "2", "4")),
            lambda v: v == 0,
            "{:.0f}".format,
        ),
        (
            f"4 daemons' aggregate >= {MIN_SCALE_RATIO:.0%} of 1 daemon's (it must not fall)",
            _ratio(_scale(steps, "4", "per_s"), _scale(steps, "1", "per_s")),
            lambda v: v >= MIN_SCALE_RATIO,
            "{:.2f}x".format,
        ),
        (
            f"fan-out >= {FANOUT_TARGET_PER_S:,} notifications/s enqueued (2 connections)",
            _ok(steps, "fanout", "notifications_per_s"),
            lambda v: v >= FANOUT_TARGET_PER_S,
            "{:,.0f}/s".format,
        ),
        (
            f"peak RSS <= {MAX_PEAK_RSS_BYTES >> 20} MB with {RSS_QUEUED:,} queued",
            _ok(steps, "e2e", "peak_rss_bytes"),
            lambda v: v <= MAX_PEAK_RSS_BYTES,
            lambda v: f"{v / 2**20:.0f} MB{rss_note}",
        ),
    ]
    return [
        {
            "target": label,
            "value": value,
            "shown": "n/a" if value is None else show(value),
            "pass": None if value is None else passes(value),
        }
        for label, value, passes, show in checks
    ]


def _num(value: Any, spec: str = ",.0f", suffix: str = "") -> str:
    return "n/a" if value is None else f"{value:{spec}}{suffix}"


def _step_line(label: str, step: dict[str, Any]) -> str:
    status = step.get("status", "n/a")
    if status != "ok" and step.get("per_s") is None:
        return f"  {label:<24} {status:<8} {step.get('reason', '')}"
    per_s, sink_us = step.get("per_s"), step.get("sink_cpu_us")
    # The share of one core the sink used: near 100% means the sink, not the client, was the limit.
    sink_core = None if per_s is None or sink_us is None else per_s * sink_us / 1e6
    bound = "  sink-bound" if sink_core is not None and sink_core >= SINK_BOUND_CORE else ""
    return (
        f"  {label:<24} {status:<8} {_num(per_s):>10} "
        f"{_num(step.get('client_cpu_us', step.get('daemon_cpu_us')), '.1f'):>13} "
        f"{_num(sink_us, '.1f'):>11} {_num(sink_core, '.0%'):>9} "
        f"{_num(step.get('requests', step.get('measured'))):>11}{bound}"
    )


def _fanout_line(step: dict[str, Any]) -> str:
    if step.get("status") != "ok":
        return f"  {'fanout':<24} {step.get('status', 'n/a'):<8} {step.get('reason', '')}"
    one = step["one_transaction"]
    return (
        f"  {'fanout':<24} ok       {_num(step['notifications_per_s']):>10} notifications/s "
        f"enqueued on {step['connections']} connections: {step['notifications']:,} to "
        f"{step['users']:,} users ({step['devices']:,} devices, stale ones skipped) in "
        f"{step['wall_s']:.1f}s; postgres {_num(step['postgres_cpu_us'], '.1f', ' µs')}, "
        f"client {_num(step['client_cpu_us'], '.1f', ' µs')}/notification\n"
        f"  {'fanout (1 transaction)':<24} ok       {_num(one['notifications_per_s']):>10} "
        f"notifications/s in {one['wall_s']:.1f}s; postgres "
        f"{_num(one['postgres_cpu_us'], '.1f', ' µs')}, client "
        f"{_num(one['client_cpu_us'], '.1f', ' µs')}/notification"
    )


def _observers_line(step: dict[str, Any]) -> str:
    if step.get("status") != "ok":
        return f"  {'observers':<24} {step.get('status', 'n/a'):<8} {step.get('reason', '')}"
    return (
        f"  {'observers':<24} ok       daemon observers µs/notification: off "
        f"{step['copy_off_us']:.2f}, on {step['copy_on_us']:.2f} (one COPY's rows), "
        f"off {step['distinct_off_us']:.2f}, on {step['distinct_on_us']:.2f} (distinct rows)"
    )


def _fairness_lines(step: dict[str, Any]) -> list[str]:
    if step.get("status") != "ok" and "with_campaign" not in step:
        return [f"  {'fairness':<24} {step.get('status', 'n/a'):<8} {step.get('reason', '')}"]

    def ms(value: float | None) -> str:
        return _num(value and value * 1000, ".0f", " ms")

    lines = [
        f"  {'fairness':<24} {step.get('status', 'n/a'):<8} transactional 2 x "
        f"{step['per_s_each']:.0f}/s for {step['duration_s']:g}s, enqueue->sent:"
    ]
    for phase, label in (("with_campaign", f"{step['rows']:,}-row campaign"), ("alone", "alone")):
        found = step[phase]
        lines.append(
            f"  {'':<24} {label:<24} app A p50 {ms(found['a']['p50'])}, p99 "
            f"{ms(found['a']['p99'])}; app B p50 {ms(found['b']['p50'])}, p99 "
            f"{ms(found['b']['p99'])}; campaign {_num(found['campaign_sends_per_s'])}/s"
        )
    return lines


def _chaos_line(name: str, step: dict[str, Any]) -> str:
    if step.get("status") != "ok" and "delivered_twice" not in step:
        return f"  {name:<24} {step.get('status', 'n/a'):<8} {step.get('reason', '')}"
    return (
        f"  {name:<24} {step.get('status', 'n/a'):<8} {step['kills']} x kill -9 mid-drain "
        f"({step['rows']:,} rows, simulator latency {step['latency_ms']:g} ms, batches of "
        f"{step['batch_size']}): {step['delivered_twice']:,} delivered twice, "
        f"{step['in_flight_total']:,} streams in flight at the kills"
        + (
            f" and {step['unwritten_total']:,} accepted sends not yet written down"
            if step.get("unwritten_total")
            else ""
        )
    )


def _backlog_lines(step: dict[str, Any]) -> list[str]:
    if step.get("status") != "ok" and "windows" not in step:
        return [f"  {'backlog':<24} {step.get('status', 'n/a'):<8} {step.get('reason', '')}"]
    mb = 2**20
    lines = [
        f"  {'backlog':<24} {step.get('status', 'n/a'):<8} {step['rows']:,} rows (inserted at "
        f"{_num(step['fill_per_s'])}/s), drained in {step['drain_s']:.0f}s; peak RSS "
        f"{_num(step['peak_rss_bytes'] and step['peak_rss_bytes'] / mb, '.0f', ' MB')}"
    ]
    for name, window in step["windows"].items():
        lines.append(
            f"  {'':<24} {name:<7} {_num(window['sends_per_s'])}/s, claim "
            f"{_num(window['claim_ms'], '.1f', ' ms')}"
        )
    soak = step.get("soak")
    if soak:
        lines.append(
            f"  {'':<24} soak {soak['soak_s']:g}s at {_num(soak['per_s'])}/s: RSS "
            f"{soak['rss_first_bytes'] / mb:.0f} -> {soak['rss_last_bytes'] / mb:.0f} MB "
            f"({soak['rss_growth']:+.1%}, max {soak['rss_max_bytes'] / mb:.0f}), fds "
            f"{soak['fds_start']} -> {soak['fds_end']} (max {soak['fds_max']})"
        )
    return lines


def _latency_lines(step: dict[str, Any]) -> list[str]:
    if step.get("status") != "ok" and "single" not in step:
        return [f"  {'latency':<24} {step.get('status', 'n/a'):<8} {step.get('reason', '')}"]
    lines = [
        f"  {'latency':<24} {step.get('status', 'n/a'):<8} enqueue->sent with producers "
        f"open loop at 50% of the maximum, {step['duration_s']:g}s per phase:"
    ]
    for mode, label in (("single", "1 per INSERT"), ("batch", "100 per INSERT")):
        found = step.get(mode)
        if not found:
            continue
        lines.append(
            f"  {'':<24} {label:<15} max {_num(found['maximum_per_s'])}/s; at "
            f"{_num(found['achieved_per_s'])}/s p50 {found['p50_s'] * 1000:.0f} ms, p99 "
            f"{found['p99_s'] * 1000:.0f} ms, max {found['max_s'] * 1000:.0f} ms "
            f"({found['notifications']:,} notifications)"
        )
    return lines


def _scale_lines(step: dict[str, Any]) -> list[str]:
    if step.get("status") != "ok" and "runs" not in step:
        return [f"  {'scale':<24} {step.get('status', 'n/a'):<8} {step.get('reason', '')}"]
    lines = [
        f"  {'scale':<24} {step.get('status', 'n/a'):<8} daemons draining "
        f"{step['rows']:,} rows of one app each time (aggregate; lock waits = mean backends "
        "waiting per 50 ms sample)"
    ]
    for count, run in step["runs"].items():
        lines.append(
            f"  {'':<24} {count} daemon(s): {_num(run['per_s'])}/s"
            f" (x{step.get('scaling', {}).get(count, 0):.2f}), postgres "
            f"{_num(run['postgres_cpu_us'], '.1f', ' µs')}/notification, waiting on Lock "
            f"{run['lock_waiting']:.2f}, LWLock {run['lwlock_waiting']:.2f}; duplicates "
            f"{run['duplicates']}, not sent {run['not_sent']}; shards {run['shares']}"
        )
    return lines


def _guardrails_line(step: dict[str, Any]) -> str:
    if step.get("status") != "ok":
        return f"  {'guardrails':<24} {step.get('status', 'n/a'):<8} {step.get('reason', '')}"
    return (
        f"  {'guardrails':<24} ok       daemon µs/notification: caps +{step['guardrails_us']:.2f} "
        f"(+{step['guardrails_fresh_us']:.2f} for people with nothing counted), quiet hours and "
        f"local time +{step['timing_us']:.2f} (stages without guardrails {step['off_us']:.2f}); "
        f"postgres: caps +{_num(step['postgres_guardrails_us'], '.1f')}"
    )


def render(run: dict[str, Any]) -> str:
    """The human-readable table of a run."""
    machine = run["machine"]
    versions = ", ".join(f"{k} {v}" for k, v in machine["versions"].items() if v)
    steps: Steps = run["steps"]
    lines = [
        f"pushgres bench, {machine['date']}, {'--quick' if run['quick'] else 'full run'}: "
        f"{run['command']}",
        f"machine: {machine['nproc']} CPUs ({machine['cpu_model']}), load {machine['loadavg_at_start']}"
        f" at start; Python {machine['python']}, {versions}, {machine['nghttp2']}; "
        f"commit {machine['commit']}",
        f"sink: {run['sink'].get('description')}",
        f"      why: {run['sink'].get('why')}",
        f"shape: {run['shape']}",
        "",
        f"  {'step':<24} {'status':<8} {'req/s':>10} {'client µs/req':>13} "
        f"{'sink µs/req':>11} {'sink core':>9} {'requests':>11}",
    ]
    labels = {"ceiling": "ceiling (h2load)", "sink_probe": "sink --echo-upload probe"}
    for name, step in steps.items():
        label = labels.get(name, name)
        if name == "aioapns" and step.get("aioapns"):
            label = f"aioapns {step['aioapns']}"
        if name == "observers":
            lines.append(_observers_line(step))
            continue
        if name == "guardrails":
            lines.append(_guardrails_line(step))
            continue
        if name == "fairness":
            lines += _fairness_lines(step)
            continue
        if name == "scale":
            lines += _scale_lines(step)
            continue
        if name == "latency":
            lines += _latency_lines(step)
            continue
        if name == "backlog":
            lines += _backlog_lines(step)
            continue
        if name in ("chaos", "chaos-journal"):
            lines.append(_chaos_line(name, step))
            continue
        if name == "fanout":
            lines.append(_fanout_line(step))
            continue
        if name in E2E_STEPS:
            metrics = "metrics off" if name == "e2e-off" else "metrics on"
            label = f"{name} ({step['codec']}, {metrics})" if "codec" in step else name
        lines.append(_step_line(label, step))
        if name in E2E_STEPS and step.get("per_s") is not None:
            lines.append(
                f"  {'':<24} postgres {_num(step['postgres_cpu_us'], '.1f', ' µs')}/notification"
                f"; {_num(step['measured'])} measured in {step['window_s']:.1f}s of "
                f"{step['queued']:,} queued; enqueue {_num(step['enqueue_per_s'])} rows/s (COPY)"
            )
            lines.append(
                f"  {'':<24} enqueue->sent p50 {_num(step['latency_p50_s'], '.2f', 's')}, "
                f"p99 {_num(step['latency_p99_s'], '.2f', 's')}; peak RSS "
                f"{_num(step['peak_rss_bytes'] and step['peak_rss_bytes'] / 2**20, '.0f', ' MB')}; "
                f"SIGTERM drain "
                f"{step['drain_s']:.1f}s, exit {step['daemon_exit']}"
            )
            if step.get("status") != "ok":
                lines.append(f"  {'':<24} failed: {step.get('reason', '')}")
    cost = metrics_cost(steps)
    lines += [
        "",
        "metrics cost (daemon CPU per notification, metrics on - off, same run)",
        f"  in process (observers step)              {_num(cost['in_process_us'], '.2f', ' µs')}",
        f"  end to end (e2e - e2e-off, noisy)        {_num(cost['e2e_us'], '+.1f', ' µs')}",
    ]
    lines += ["", "ratios"]
    for key, value in run["ratios"].items():
        shown = (
            "n/a" if value is None else (f"{value:.1%}" if "ceiling" in key else f"{value:.1f}x")
        )
        lines.append(f"  {key:<48} {shown:>7}")
    lines += ["", "targets"]
    for row in run["targets"]:
        verdict = {True: "PASS", False: "FAIL", None: "n/a"}[row["pass"]]
        lines.append(f"  {verdict:<5} {row['target']:<50} {row['shown']}")
    return "\n".join(lines)


def _compact(value: Any) -> Any:
    """Floats to 4 significant digits, so the JSON stays small and diffs stay readable."""
    if isinstance(value, float):
        return float(f"{value:.4g}")
    if isinstance(value, dict):
        return {k: _compact(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_compact(v) for v in value]
    return value


def write_json(run: dict[str, Any], directory: pathlib.Path) -> pathlib.Path:
    """Write ``bench-<UTC time>[-quick].json`` atomically; returns its path."""
    directory.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    path = directory / f"bench-{stamp}{'-quick' if run['quick'] else ''}.json"
    partial = path.with_suffix(".tmp")
    partial.write_text(json.dumps(_compact(run), indent=1, ensure_ascii=False) + "\n")
    partial.replace(path)
    return path
