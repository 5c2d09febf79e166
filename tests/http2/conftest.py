"""Fixtures for the HTTP/2 tests: a throwaway CA and server certificate, and nghttpd."""

from __future__ import annotations

import socket
import ssl
import subprocess
import time
from collections.abc import Iterator

import pytest

from pushgres.http2.tls import make_ssl_context

from .servers import Certs, make_certs, nghttpd_path, start_nghttpd


@pytest.fixture(scope="session")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("certs"))


@pytest.fixture
def client_ssl(certs: Certs) -> ssl.SSLContext:
    return make_ssl_context(ca_file=certs.ca_file)


@pytest.fixture(scope="session")
def nghttpd_port(certs: Certs, tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    binary = nghttpd_path()
    if binary is None:
        pytest.skip("nghttpd is not installed (apt-get install nghttp2-server)")
    process, port = start_nghttpd(binary, certs, tmp_path_factory.mktemp("htdocs"))
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("nghttpd did not start") from None
                time.sleep(0.05)
        yield port
    finally:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
