"""SystemdNotifier against real AF_UNIX datagram sockets standing in for systemd's."""

from __future__ import annotations

import errno
import logging
import os
import shutil
import socket
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from pushgres.systemd import SystemdNotifier


@pytest.fixture
def short_dir() -> Iterator[Path]:
    # A Unix socket path must fit in 108 bytes; pytest's tmp_path can be longer.
    path = Path(tempfile.mkdtemp(prefix="pushgres-sd-"))
    yield path
    shutil.rmtree(path)


@pytest.fixture
def receiver(short_dir: Path) -> Iterator[tuple[socket.socket, str]]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = str(short_dir / "notify.sock")
    sock.bind(path)
    sock.settimeout(2)
    yield sock, path
    sock.close()


def _notifier(address: str, **env: str) -> SystemdNotifier:
    return SystemdNotifier.from_environ({"NOTIFY_SOCKET": address, **env})


def _pending(sock: socket.socket) -> list[bytes]:
    sock.setblocking(False)
    try:
        datagrams = []
        while True:
            try:
                datagrams.append(sock.recv(4096))
            except BlockingIOError:
                return datagrams
    finally:
        sock.settimeout(2)


def test_each_notice_is_one_exact_datagram(receiver: tuple[socket.socket, str]) -> None:
    sock, path = receiver
    notifier = _notifier(path)
    assert notifier.enabled
    notifier.ready("apns ok\nfcm ok")
    assert sock.recv(4096) == b"READY=1\nSTATUS=apns ok fcm ok"
    notifier.ready()
    assert sock.recv(4096) == b"READY=1"
    notifier.status("draining\r\n3 streams\n")
    assert sock.recv(4096) == b"STATUS=draining 3 streams"
    notifier.watchdog()
    assert sock.recv(4096) == b"WATCHDOG=1"
    notifier.stopping()
    assert sock.recv(4096) == b"STOPPING=1"
    notifier.stopping("draining")
    assert sock.recv(4096) == b"STOPPING=1\nSTATUS=draining"
    notifier.close()


def test_reloading_carries_the_monotonic_clock(receiver: tuple[socket.socket, str]) -> None:
    sock, path = receiver
    notifier = _notifier(path)
    before = time.monotonic_ns() // 1000
    notifier.reloading()
    after = time.monotonic_ns() // 1000
    first, second = sock.recv(4096).split(b"\n")
    assert first == b"RELOADING=1"
    key, _, value = second.partition(b"=")
    assert key == b"MONOTONIC_USEC"
    assert before <= int(value) <= after
    notifier.close()


def test_abstract_namespace_socket() -> None:
    name = f"pushgres-test-{uuid.uuid4().hex}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(2)
    try:
        notifier = _notifier("@" + name)
        notifier.ready("up")
        assert sock.recv(4096) == b"READY=1\nSTATUS=up"
        notifier.close()
    finally:
        sock.close()


def test_disabled_without_notify_socket(receiver: tuple[socket.socket, str]) -> None:
    sock, _ = receiver
    for environ in ({}, {"NOTIFY_SOCKET": ""}, {"WATCHDOG_USEC": "1000000"}):
        notifier = SystemdNotifier.from_environ(environ)
        assert not notifier.enabled
        notifier.ready("x")
        notifier.status("x")
        notifier.watchdog()
        notifier.reloading()
        notifier.stopping("x")
        notifier.close()
    assert _pending(sock) == []


def test_closed_notifier_sends_nothing(receiver: tuple[socket.socket, str]) -> None:
    sock, path = receiver
    notifier = _notifier(path)
    notifier.watchdog()
    notifier.close()
    notifier.close()
    notifier.watchdog()
    assert not notifier.enabled
    assert _pending(sock) == [b"WATCHDOG=1"]


def test_non_unix_address_disables(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="pushgres.systemd"):
        notifier = _notifier("vsock:2:1234")
    assert not notifier.enabled
    assert "vsock:2:1234" in caplog.text


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"WATCHDOG_USEC": "30000000"}, 15.0),
        ({"WATCHDOG_USEC": "500000", "WATCHDOG_PID": str(os.getpid())}, 0.25),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid() + 1)}, None),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "nope"}, None),
        ({"WATCHDOG_USEC": "thirty"}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "-5"}, None),
        ({"WATCHDOG_PID": str(os.getpid())}, None),
        ({}, None),
    ],
)
def test_watchdog_interval(env: dict[str, str], expected: float | None) -> None:
    assert SystemdNotifier.from_environ(env).watchdog_interval_s == expected


def test_vanished_socket_warns_once_until_a_send_succeeds(
    short_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = str(short_dir / "gone.sock")
    notifier = _notifier(path)
    with caplog.at_level(logging.WARNING, logger="pushgres.systemd"):
        notifier.ready("up")
        notifier.watchdog()
    assert len(caplog.records) == 1
    record = caplog.records[0]
    assert record.levelno == logging.WARNING
    assert record.exc_info is None
    assert path in record.getMessage()
    assert os.strerror(errno.ENOENT) in record.getMessage()

    # The socket comes back: the send succeeds, so the next failure is news again.
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    try:
        notifier.watchdog()
        assert sock.recv(4096) == b"WATCHDOG=1"
    finally:
        sock.close()
    os.unlink(path)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="pushgres.systemd"):
        notifier.watchdog()
        notifier.watchdog()
    assert len(caplog.records) == 1
    notifier.close()


@pytest.mark.timeout(20)
def test_full_receive_queue_does_not_block(
    receiver: tuple[socket.socket, str], caplog: pytest.LogCaptureFixture
) -> None:
    _, path = receiver
    notifier = _notifier(path)
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="pushgres.systemd"):
        # Nobody reads: the receiver's queue fills and sendto would block on a blocking socket.
        for _ in range(5000):
            notifier.status("x" * 512)
    assert time.monotonic() - started < 5
    assert len(caplog.records) == 1
    assert path in caplog.records[0].getMessage()
    notifier.close()
