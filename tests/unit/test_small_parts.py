"""Rate limiter, log redaction, query catalogue, provider-token caching."""

from __future__ import annotations

import logging
import pathlib

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from pushgres.db.queries import QUERIES, load_queries
from pushgres.exceptions import ConfigError
from pushgres.observability.logging import KeyValueFormatter, short_token
from pushgres.pipeline.ratelimit import TokenBucket
from pushgres.providers.apns.auth import ProviderToken


def test_token_bucket_grants_rate_per_second() -> None:
    now = [0.0]
    bucket = TokenBucket(100, clock=lambda: now[0])
    assert bucket.take(500) == 100
    assert bucket.take(1) == 0
    assert bucket.wait_s() == pytest.approx(0.01)
    now[0] = 0.5
    assert bucket.take(500) == 50
    bucket.give_back(30)
    assert bucket.take(500) == 30


def test_short_token_hides_most_of_the_token() -> None:
    token = "ab" * 32
    assert short_token(token) == "abababab…(64)"


def test_formatter_appends_extras() -> None:
    record = logging.LogRecord("x", logging.INFO, "f", 1, "hello %s", ("w",), None)
    record.action = "claim_batch"
    assert KeyValueFormatter().format(record).endswith("x: hello w action=claim_batch")


def test_query_catalogue() -> None:
    assert "claim_batch" in QUERIES and "FOR UPDATE SKIP LOCKED" in QUERIES["claim_batch"]
    with pytest.raises(ValueError, match="duplicate"):
        load_queries("-- name: a\nSELECT 1\n-- name: a\nSELECT 2\n")


def _p8(tmp_path: pathlib.Path) -> tuple[str, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    path = tmp_path / "key.p8"
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return str(path), key


def test_provider_token_is_cached_and_refreshed_on_schedule(tmp_path: pathlib.Path) -> None:
    path, key = _p8(tmp_path)
    now = [1_000_000.0]
    token = ProviderToken(
        key_file=path,
        key_id="ABC123DEFG",
        team_id="TEAM123456",
        refresh_s=2700,
        clock=lambda: now[0],
    )
    first = token.header()
    assert first.startswith(b"bearer ")
    claims = jwt.decode(first[7:], key.public_key(), algorithms=["ES256"])
    assert claims == {"iss": "TEAM123456", "iat": 1_000_000}
    assert jwt.get_unverified_header(first[7:])["kid"] == "ABC123DEFG"
    now[0] += 2699
    assert token.header() is first
    now[0] += 1
    assert token.header() != first and token.generation == 2
    assert "bearer" not in repr(token)


def test_provider_token_rejects_a_wrong_key(tmp_path: pathlib.Path) -> None:
    bad = tmp_path / "bad.p8"
    bad.write_text("not a key")
    with pytest.raises(ConfigError, match="is not a PEM PKCS#8 private key"):
        ProviderToken(key_file=str(bad), key_id="A", team_id="B", refresh_s=2700)
