"""The sink: one ``nghttpd`` (C, nghttp2) over TLS that answers every request with 200.

It serves a document root on tmpfs that holds an empty file for every device token of the
ring (:data:`benchmarks.workload.TOKEN_RING`), so ``POST /3/device/<token>`` is answered
``200`` with ``content-length: 0`` and an empty END_STREAM DATA frame: close to APNs's bodyless
success, and cheap (an fd-cache lookup per request, no file I/O). For FCM it serves one file
at ``/v1/projects/<project>/messages:send`` holding ``{"name": "projects/<project>/messages/
<id>"}``, the shape of FCM HTTP v1's success answer (Google, "FCM HTTP v1 API",
projects.messages.send), so every FCM send is answered as Google answers it, body included.

The obvious alternative, ``nghttpd --echo-upload``, spools every request body to a new
temporary file under the hard-coded ``/tmp`` (mkstemp, unlink, write, lseek, read, close) and
echoes it back: on a disk-backed ``/tmp`` that costs the sink far more CPU per request than
the sender, and the echoed body eats the client's flow-control window (aioapns never returns
it). :func:`benchmarks.ceiling.probe_echo_upload` measures it so every report shows the difference.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import socket
import tempfile
import time

from pushgres.simulator.devkit import free_port

from .procs import Child, StepFailed
from .workload import FCM_PATH, FCM_PROJECT, TOKEN_RING, Credentials, device_token

__all__ = ["SINK_DESCRIPTION", "Sink"]

SINK_DESCRIPTION = (
    "nghttpd (nghttp2, C) over TLS, one thread, serving from tmpfs an empty file per device "
    "token (APNs: POST /3/device/<token> -> 200, empty body) and FCM's success body (POST "
    f'{FCM_PATH} -> 200, {{"name": ...}}), 16 MiB connection window'
)
FCM_ANSWER = f'{{"name": "projects/{FCM_PROJECT}/messages/0:1733490000000000%31bd1c9631bd1c96"}}\n'

LISTEN_TIMEOUT_S = 10.0
# A 16 MiB connection window: no client waits for the sink's WINDOW_UPDATE. aioapns sleeps 1 s
# on a FlowControlError and idled ~40% of its run with nghttpd's 64 KiB.
CONNECTION_WINDOW_BITS = 24
_PORT_ATTEMPTS = 3


def _tmpfs_dir() -> str:
    """``/dev/shm`` when writable (tmpfs on Linux), else the default temporary folder."""
    shm = "/dev/shm"
    return shm if os.path.isdir(shm) and os.access(shm, os.W_OK) else tempfile.gettempdir()


class Sink:
    """An ``nghttpd`` process and its document root; :meth:`ensure` (re)starts it.

    Parameters
    ----------
    workdir:
        Where its log goes.
    credentials:
        The devkit server certificate and key it presents.
    max_streams:
        ``SETTINGS_MAX_CONCURRENT_STREAMS`` it announces per connection.
    echo_upload:
        Run ``nghttpd --echo-upload`` instead of serving files (for :func:`probe`).
    """

    def __init__(
        self,
        workdir: pathlib.Path,
        credentials: Credentials,
        *,
        max_streams: int,
        echo_upload: bool = False,
    ) -> None:
        self.workdir = workdir
        self.credentials = credentials
        self.max_streams = max_streams
        self.echo_upload = echo_upload
        self.port = 0
        self.restarts = -1
        self._child: Child | None = None
        self._htdocs: str | None = None

    @property
    def description(self) -> str:
        if self.echo_upload:
            return "nghttpd --echo-upload (nghttp2, C) over TLS"
        return SINK_DESCRIPTION

    @property
    def pid(self) -> int:
        if self._child is None:
            raise StepFailed("the sink is not running")
        return self._child.pid

    def url(self, path: str = "") -> str:
        return f"https://127.0.0.1:{self.port}{path}"

    def ensure(self) -> None:
        """Start the sink if it is not running (again, if it died)."""
        if self._child is not None and self._child.alive():
            return
        binary = shutil.which("nghttpd")
        if binary is None:
            raise StepFailed(
                "nghttpd not found: apt-get install nghttp2-server (make bench does it as root)"
            )
        if self._child is not None:
            self._child.stop()
        if self._htdocs is None and not self.echo_upload:
            self._htdocs = self._make_htdocs()
        last_error = ""
        for _ in range(_PORT_ATTEMPTS):  # a free port can be taken before nghttpd binds it
            self.port = free_port()
            argv = [binary, "-a", "127.0.0.1", "-n", "1", "-m", str(self.max_streams)]
            argv += ["-W", str(CONNECTION_WINDOW_BITS)]
            argv += ["-d", self._htdocs] if self._htdocs else ["--echo-upload"]
            argv += [str(self.port), self.credentials.server_key_file]
            argv.append(self.credentials.server_cert_file)
            self._child = Child(argv, log=self.workdir / f"nghttpd-{self.port}.log")
            try:
                self._wait_listening(self._child)
            except StepFailed as exc:
                last_error = str(exc)
                self._child.stop()
                continue
            self.restarts += 1
            return
        raise StepFailed(f"the sink did not start: {last_error}")

    def _make_htdocs(self) -> str:
        root = tempfile.mkdtemp(prefix="pushgres-bench-htdocs-", dir=_tmpfs_dir())
        device = pathlib.Path(root, "3", "device")
        device.mkdir(parents=True)
        for n in range(TOKEN_RING):
            (device / device_token(n)).touch()
        fcm = pathlib.Path(root + FCM_PATH)
        fcm.parent.mkdir(parents=True)
        fcm.write_text(FCM_ANSWER)
        return root

    def _wait_listening(self, child: Child) -> None:
        deadline = time.monotonic() + LISTEN_TIMEOUT_S
        while True:
            if not child.alive():
                raise StepFailed(f"nghttpd exited at start: {child.log_tail()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1.0):
                    return
            except OSError:
                if time.monotonic() > deadline:
                    raise StepFailed(f"nghttpd did not listen within {LISTEN_TIMEOUT_S:.0f}s")
                time.sleep(0.05)

    def cpu_s(self) -> float:
        """The sink's CPU seconds so far (:class:`StepFailed` if it is not running)."""
        if self._child is None:
            raise StepFailed("the sink is not running")
        return self._child.cpu_s()

    def close(self) -> None:
        if self._child is not None:
            self._child.stop()
            self._child = None
        if self._htdocs is not None:
            shutil.rmtree(self._htdocs, ignore_errors=True)
            self._htdocs = None

    def __enter__(self) -> Sink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
