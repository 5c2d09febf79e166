"""The ceiling: ``h2load`` (nghttp2's C load generator) → the sink, requests per second.

h2load sends the workload's request (APNs: the same path ring, headers and body as pushgres,
with the ``apns-id`` of the first request on every request; FCM: the one send path, the first
request's headers and body) over ``connections`` TLS connections with ``streams`` concurrent
streams each, the shape pushgres's pool uses. Its figure is what this machine can do over
HTTP/2 + TLS at all with both ends in C; the other steps are compared to it, and its sink CPU
per request is the sink's own cost for that provider's answers.

:func:`probe_echo_upload` runs the same load, smaller, against ``nghttpd --echo-upload`` to
show in every report why the sink serves files instead (:mod:`benchmarks.sink`).
"""

from __future__ import annotations

import pathlib
import re
import shutil
from typing import Any

from .procs import StepFailed, run_child
from .sink import Sink
from .workload import (
    FCM_PATH,
    TOKEN_RING,
    Credentials,
    HttpRequest,
    device_token,
    static_headers,
)

__all__ = ["probe_echo_upload", "run_ceiling"]

_FINISHED = re.compile(r"finished in [^,]+, ([\d.]+) req/s")
_REQUESTS = re.compile(r"requests: (\d+) total, \d+ started, (\d+) done, (\d+) succeeded")
_STATUS = re.compile(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx")
MIN_RATE_PER_S = 2_000  # for the deadline only: a slower run is a failure


def run_ceiling(
    sink: Sink,
    workdir: pathlib.Path,
    request: HttpRequest,
    *,
    requests: int,
    connections: int,
    streams: int,
    provider: str = "apns",
) -> dict[str, Any]:
    """h2load against the sink: requests/s, h2load's and the sink's CPU µs per request."""
    binary = shutil.which("h2load")
    if binary is None:
        raise StepFailed(
            "h2load not found: apt-get install nghttp2-client (make bench does it as root)"
        )
    sink.ensure()
    body = workdir / f"body-{provider}.json"
    body.write_bytes(request[1])
    uris = workdir / f"uris-{provider}-{sink.port}.txt"
    paths = (
        [FCM_PATH]
        if provider == "fcm"
        else [f"/3/device/{device_token(n)}" for n in range(TOKEN_RING)]
    )
    uris.write_text("".join(sink.url(path) + "\n" for path in paths))
    argv = [binary, "-n", str(requests), "-c", str(connections), "-m", str(streams), "-t", "1"]
    argv += ["-d", str(body)]
    for header in static_headers(request):
        argv += ["-H", header]
    argv += ["-i", str(uris)]
    sink_cpu0 = sink.cpu_s()
    done = run_child(argv, timeout_s=60 + requests / MIN_RATE_PER_S)
    sink_cpu_s = sink.cpu_s() - sink_cpu0
    finished = _FINISHED.search(done.stdout)
    counts = _REQUESTS.search(done.stdout)
    statuses = _STATUS.search(done.stdout)
    if done.returncode != 0 or not (finished and counts and statuses):
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        raise StepFailed(f"h2load exited with status {done.returncode}: {' | '.join(tail)}")
    ok = int(statuses.group(1))
    if ok != requests:
        raise StepFailed(
            f"h2load: {ok:,} of {requests:,} answered 2xx ({statuses.group(0)}; {counts.group(0)})"
        )
    return {
        "requests": requests,
        "connections": connections,
        "streams": streams,
        "per_s": float(finished.group(1)),
        "client_cpu_us": done.cpu_s / requests * 1e6,
        "sink_cpu_us": sink_cpu_s / requests * 1e6,
        "command": f"h2load -n {requests} -c {connections} -m {streams} -t 1 -d {body.name} "
        f"-H <{len(static_headers(request))} {provider} headers> -i <{len(paths)} URIs>",
    }


def probe_echo_upload(
    workdir: pathlib.Path,
    credentials: Credentials,
    request: HttpRequest,
    *,
    requests: int,
    connections: int,
    streams: int,
) -> dict[str, Any]:
    """The ceiling's load, smaller, against ``nghttpd --echo-upload`` (a sink of its own)."""
    with Sink(workdir, credentials, max_streams=streams, echo_upload=True) as echo:
        result = run_ceiling(
            echo, workdir, request, requests=requests, connections=connections, streams=streams
        )
    result["sink"] = echo.description
    return result
