"""TLS for every outbound connection: client :class:`ssl.SSLContext` objects, and nothing else.

This module is the only place TLS is configured: TLS 1.2 or newer, certificate and host-name
verification always on, and one context per protocol, because the ALPN offer must name only
protocols the client on top can speak (RFC 7301 section 3.2: the server picks from the offer).

* :func:`make_ssl_context`: ALPN ``h2``, for the HTTP/2 provider pools (RFC 9113 section 3.2),
  with an optional client certificate for providers that authenticate the client by it.
* :func:`make_http1_ssl_context`: ALPN ``http/1.1``, for aiohttp (an HTTP/1.1 client), which
  fetches OAuth tokens. A token endpoint that offers ``h2`` too would select it for an ``h2``
  offer, so that client must never get the pool's context.

The ``ssl`` module loads certificates only from files, so client PEM bytes are written to a
private temporary file (mode 0600 in a mode 0700 directory), loaded and deleted at once.
"""

from __future__ import annotations

import os
import ssl
import tempfile

from ..exceptions import ConfigError

__all__ = ["ALPN_PROTOCOLS", "HTTP1_ALPN_PROTOCOLS", "make_http1_ssl_context", "make_ssl_context"]

ALPN_PROTOCOLS = ("h2",)
HTTP1_ALPN_PROTOCOLS = ("http/1.1",)


def make_ssl_context(
    *,
    ca_file: str | None,
    client_cert_pem: bytes | None = None,
    client_key_pem: bytes | None = None,
) -> ssl.SSLContext:
    """A client context for HTTP/2 over TLS.

    Parameters
    ----------
    ca_file:
        CA bundle to trust; ``None`` uses the system store.
    client_cert_pem, client_key_pem:
        Client certificate chain and its private key (PEM). The key may instead be part of
        ``client_cert_pem``.

    Raises
    ------
    ConfigError
        The CA file cannot be read, or the client certificate or key is invalid or given
        without the other half.
    """
    context = _verifying_context(ca_file, ALPN_PROTOCOLS)
    if client_cert_pem is None:
        if client_key_pem is not None:
            raise ConfigError("a client key was given without a client certificate")
        return context
    _load_client_certificate(context, client_cert_pem, client_key_pem)
    return context


def make_http1_ssl_context(*, ca_file: str | None) -> ssl.SSLContext:
    """A client context for HTTP/1.1 over TLS (ALPN ``http/1.1`` only), verification on.

    Parameters
    ----------
    ca_file:
        CA bundle to trust; ``None`` uses the system store.

    Raises
    ------
    ConfigError
        The CA file cannot be read.
    """
    return _verifying_context(ca_file, HTTP1_ALPN_PROTOCOLS)


def _verifying_context(ca_file: str | None, alpn: tuple[str, ...]) -> ssl.SSLContext:
    try:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca_file)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot load CA file {ca_file!r}: {exc}") from exc
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.check_hostname = True
    context.verify_mode = ssl.CERT_REQUIRED
    context.set_alpn_protocols(list(alpn))
    return context


def _load_client_certificate(
    context: ssl.SSLContext, cert_pem: bytes, key_pem: bytes | None
) -> None:
    pem = cert_pem if key_pem is None else cert_pem.rstrip(b"\n") + b"\n" + key_pem
    with tempfile.TemporaryDirectory(prefix="pushgres-tls-") as directory:  # mode 0700
        path = os.path.join(directory, "client.pem")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as file:
                file.write(pem)
            try:
                context.load_cert_chain(path)
            except ssl.SSLError as exc:
                # The message names no key material, only what was wrong with it.
                raise ConfigError(f"invalid client certificate or key: {exc.reason}") from exc
        finally:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
