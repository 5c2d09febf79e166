"""The systemd notify protocol: telling the service manager we are ready, alive, reloading or
stopping.

:class:`SystemdNotifier` owns the one datagram socket to ``$NOTIFY_SOCKET`` and the
``$WATCHDOG_USEC`` / ``$WATCHDOG_PID`` pair. The protocol is the one sd_notify(3) describes:
each notice is a single ``AF_UNIX`` ``SOCK_DGRAM`` datagram of newline-separated
``KEY=value`` assignments (``READY=1``, ``STATUS=…``, ``WATCHDOG=1``, ``STOPPING=1``,
``RELOADING=1``) sent to the socket named by ``$NOTIFY_SOCKET``; a leading ``@`` names a
socket in Linux's abstract namespace. systemd.service(5) adds, for ``Type=notify-reload``,
that ``RELOADING=1`` carries ``MONOTONIC_USEC=`` (``CLOCK_MONOTONIC`` in microseconds), and
describes ``WatchdogSec=``: systemd passes the interval as ``$WATCHDOG_USEC`` and expects
``WATCHDOG=1`` well within it, so :attr:`SystemdNotifier.watchdog_interval_s` is half of it.

References: sd_notify(3) https://www.freedesktop.org/software/systemd/man/latest/sd_notify.html
and systemd.service(5)
https://www.freedesktop.org/software/systemd/man/latest/systemd.service.html.

Without ``$NOTIFY_SOCKET`` (not run by systemd, or not ``Type=notify``) every method is a
no-op. Sending never blocks and never raises: the socket is non-blocking, and a failed send
(socket gone, permission, a full receive queue) is logged once at WARNING; later failures
stay silent until a send succeeds again, so a missing socket cannot flood the log every
watchdog tick.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Mapping

__all__ = ["SystemdNotifier"]

logger = logging.getLogger(__name__)


class SystemdNotifier:
    """Sends sd_notify(3) notices to one socket; does nothing when ``address`` is None.

    Build it with :meth:`from_environ`. ``address`` is ``$NOTIFY_SOCKET`` as systemd gives it
    (an absolute path, or ``@name`` for the abstract namespace).
    """

    def __init__(self, address: str | None, *, watchdog_interval_s: float | None = None) -> None:
        self._address = address
        self._watchdog_interval_s = watchdog_interval_s
        self._sock: socket.socket | None = None
        self._closed = False
        self._failing = False

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> SystemdNotifier:
        """A notifier for the socket and watchdog that ``environ`` (default: the process's
        environment) names; a disabled one when ``$NOTIFY_SOCKET`` is unset or not a Unix
        socket address."""
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET") or None
        if address is not None and not address.startswith(("/", "@")):
            # Newer systemd may hand out vsock:… addresses (to VMs); we only speak AF_UNIX.
            logger.warning(
                "NOTIFY_SOCKET %r is not a Unix socket address: systemd notices disabled",
                address,
                extra={"action": "sd_notify"},
            )
            address = None
        return cls(address, watchdog_interval_s=_watchdog_interval_s(env, os.getpid()))

    @property
    def enabled(self) -> bool:
        """Whether notices are sent at all (``$NOTIFY_SOCKET`` was set, and not closed)."""
        return self._address is not None and not self._closed

    @property
    def watchdog_interval_s(self) -> float | None:
        """How often to call :meth:`watchdog`: half of ``$WATCHDOG_USEC``, or None when systemd
        asked for no watchdog pings from this process."""
        return self._watchdog_interval_s

    def ready(self, status: str | None = None) -> None:
        """Startup (or a reload) is complete: ``READY=1``, with an optional status line."""
        self._send("READY=1", status)

    def status(self, text: str) -> None:
        """A free-form one-line status, shown by ``systemctl status``."""
        self._send(None, text)

    def watchdog(self) -> None:
        """The keep-alive ping ``WatchdogSec=`` expects: ``WATCHDOG=1``."""
        self._send("WATCHDOG=1", None)

    def stopping(self, status: str | None = None) -> None:
        """Shutdown has begun: ``STOPPING=1``, with an optional status line."""
        self._send("STOPPING=1", status)

    def reloading(self) -> None:
        """A configuration reload has begun; :meth:`ready` must follow when it is done."""
        # systemd.service(5): the timestamp lets systemd tell this reload from an older one.
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self._send(f"RELOADING=1\nMONOTONIC_USEC={usec}", None)

    def close(self) -> None:
        """Close the socket; every later call is a no-op."""
        self._closed = True
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def _send(self, state: str | None, status: str | None) -> None:
        if self._address is None or self._closed:
            return
        lines = [state] if state else []
        if status is not None:
            # One assignment per line: a newline in the text would start a bogus one.
            lines.append("STATUS=" + " ".join(status.splitlines()).strip())
        data = "\n".join(lines).encode()
        # Python spells the abstract namespace with a leading NUL byte.
        target = "\0" + self._address[1:] if self._address.startswith("@") else self._address
        try:
            if self._sock is None:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                sock.setblocking(False)
                self._sock = sock
            self._sock.sendto(data, target)
        except OSError as exc:
            if not self._failing:
                logger.warning(
                    "systemd notify to %s failed: %s",
                    self._address,
                    exc,
                    extra={"action": "sd_notify", "socket": self._address},
                )
            self._failing = True
        else:
            self._failing = False


def _watchdog_interval_s(environ: Mapping[str, str], pid: int) -> float | None:
    """Half of ``$WATCHDOG_USEC`` in seconds, unless it is unset or invalid, or
    ``$WATCHDOG_PID`` names another process (as sd_watchdog_enabled(3) decides)."""
    try:
        usec = int(environ.get("WATCHDOG_USEC", ""))
        watchdog_pid = environ.get("WATCHDOG_PID")
        if watchdog_pid is not None and int(watchdog_pid) != pid:
            return None
    except ValueError:
        return None
    return usec / 2_000_000 if usec > 0 else None
