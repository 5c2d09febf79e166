"""The text and JSON log formats, journald detection and secret redaction."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from pushgres.observability.logging import (
    JsonFormatter,
    KeyValueFormatter,
    redact,
    setup_logging,
    short_token,
)

log = logging.getLogger("pushgres.test")

JWT = (
    "eyJhbGciOiJFUzI1NiIsImtpZCI6IkFCQzEyMyJ9"
    ".eyJpc3MiOiJURUFNSUQiLCJpYXQiOjE3MDAwMDAwMDB9"
    ".MEUCIQDx_abc-def123"
)
PEM = (
    "-----BEGIN PRIVATE KEY-----\n"
    "MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg\n"
    "-----END PRIVATE KEY-----"
)
HEX_TOKEN = "a1b2c3d4" + "0f" * 28
FCM_TOKEN = "cXyZ12Ab:APA91b" + "Qx_-" * 30

# (text to log, a fragment that must not survive, the marker that must appear)
SECRETS = {
    "jwt": (f"token {JWT} issued", "eyJpc3Mi", "[redacted JWT]"),
    "bearer": ("authorization: Bearer ya29.a0AfH6SMBxSecretValue", "SecretValue", "[redacted]"),
    "pem": (f"key {PEM} loaded", "MIGHAgEA", "[redacted PEM]"),
    "access_token": (
        '{"access_token": "ya29.c.secretAccess", "expires_in": 3599}',
        "secretAccess",
        '"access_token": "[redacted]", "expires_in": 3599',
    ),
    "apns": (f"rejected {HEX_TOKEN}: BadDeviceToken", HEX_TOKEN, "a1b2c3d4…(64)"),
    "fcm": (f"rejected {FCM_TOKEN}", FCM_TOKEN, short_token(FCM_TOKEN)),
}


@pytest.fixture(autouse=True)
def restore_root_logger() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def _lines(stream: io.StringIO) -> list[str]:
    return stream.getvalue().splitlines()


def test_json_lines_have_stable_keys_and_extras() -> None:
    out = io.StringIO()
    setup_logging("debug", "json", stream=out)
    log.info(
        "claimed %d rows",
        3,
        extra={"action": "claim_batch", "batch_size": 3, "path": Path("/x"), "ok": True},
    )
    log.warning("second", extra={"level": "shadow", "apps": ["a", "b"], "ratio": float("nan")})
    first, second = (json.loads(line) for line in _lines(out))
    assert list(first) == ["ts", "level", "logger", "msg", "action", "batch_size", "path", "ok"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", first["ts"])
    assert first["level"] == "info"
    assert first["logger"] == "pushgres.test"
    assert first["msg"] == "claimed 3 rows"
    assert first["batch_size"] == 3
    assert first["path"] == "/x"
    assert first["ok"] is True
    assert "exc" not in first
    assert list(second) == ["ts", "level", "logger", "msg", "extra_level", "apps", "ratio"]
    assert second["level"] == "warning"
    assert second["extra_level"] == "shadow"
    assert second["apps"] == ["a", "b"]
    assert second["ratio"] == "nan"


def test_json_timestamp_is_utc_with_milliseconds() -> None:
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "m", None, None)
    record.created, record.msecs = 1796187662.1234, 123.4
    assert json.loads(JsonFormatter().format(record))["ts"] == "2026-12-02T05:01:02.123Z"


def test_json_exception_text_under_exc() -> None:
    out = io.StringIO()
    setup_logging("info", "json", stream=out)
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        log.exception("send failed", extra={"action": "send"})
    (line,) = _lines(out)
    obj = json.loads(line)
    assert list(obj) == ["ts", "level", "logger", "msg", "action", "exc"]
    assert obj["level"] == "error"
    assert obj["exc"].startswith("Traceback (most recent call last):")
    assert "RuntimeError: boom" in obj["exc"]


def test_text_format_unchanged_off_journald() -> None:
    out = io.StringIO()
    setup_logging("info", stream=out, environ={})
    log.info("hello %s", "world", extra={"action": "greet", "n": 2})
    log.debug("hidden")
    (line,) = _lines(out)
    assert re.fullmatch(
        r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} INFO pushgres.test: hello world action=greet n=2",
        line,
    )


def test_default_call_still_works(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    setup_logging("WARNING")
    root = logging.getLogger()
    (handler,) = root.handlers
    assert isinstance(handler, logging.StreamHandler)
    assert handler.stream is sys.stderr
    assert isinstance(handler.formatter, KeyValueFormatter)
    assert root.level == logging.WARNING


def test_unknown_format_or_level_is_refused() -> None:
    with pytest.raises(ValueError, match="xml"):
        setup_logging("info", "xml")
    with pytest.raises(ValueError):
        setup_logging("loud", "text")


def test_journald_prefix_when_journal_stream_names_the_stream(tmp_path: Path) -> None:
    with open(tmp_path / "journal", "w") as out:
        st = os.fstat(out.fileno())
        setup_logging("debug", stream=out, environ={"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"})
        log.debug("d")
        log.info("i", extra={"action": "x"})
        log.warning("w")
        log.error("e")
        log.critical("c")
        try:
            raise ValueError("bad")
        except ValueError:
            log.exception("failed")
    lines = (tmp_path / "journal").read_text().splitlines()
    assert lines[:5] == [
        "<7>DEBUG pushgres.test: d",
        "<6>INFO pushgres.test: i action=x",
        "<4>WARNING pushgres.test: w",
        "<3>ERROR pushgres.test: e",
        "<2>CRITICAL pushgres.test: c",
    ]
    assert lines[5] == "<3>ERROR pushgres.test: failed"
    assert lines[6] == "<3>Traceback (most recent call last):"
    assert lines[-1] == "<3>ValueError: bad"
    assert all(line.startswith("<3>") for line in lines[5:])


@pytest.mark.parametrize("value", ["{dev}:{other}", "{dev}", "", "a:b"])
def test_no_journald_prefix_when_journal_stream_differs(tmp_path: Path, value: str) -> None:
    with open(tmp_path / "log", "w") as out:
        st = os.fstat(out.fileno())
        env = {"JOURNAL_STREAM": value.format(dev=st.st_dev, other=st.st_ino + 1)}
        setup_logging("info", stream=out, environ=env)
        log.info("plain")
    (line,) = (tmp_path / "log").read_text().splitlines()
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} INFO pushgres.test: plain", line)


def test_no_journald_prefix_for_a_stream_without_a_descriptor() -> None:
    out = io.StringIO()
    setup_logging("info", stream=out, environ={"JOURNAL_STREAM": "1:2"})
    log.info("plain")
    assert not out.getvalue().startswith("<")


@pytest.mark.parametrize("kind", SECRETS)
@pytest.mark.parametrize("fmt", ["text", "json"])
def test_secrets_are_redacted_in_message_extras_and_exceptions(fmt: str, kind: str) -> None:
    text, secret, marker = SECRETS[kind]
    out = io.StringIO()
    setup_logging("info", fmt, stream=out, environ={})
    log.info("got %s", text)
    log.info("extra", extra={"detail": text, "nested": {"k": [text]}})
    try:
        raise RuntimeError(text)
    except RuntimeError:
        log.exception("failed")
    output = out.getvalue()
    assert secret not in output
    if fmt == "json":
        objs = [json.loads(line) for line in output.splitlines()]
        assert len(objs) == 3
        assert marker in objs[0]["msg"]
        assert marker in objs[1]["detail"]
        assert marker in objs[1]["nested"]["k"][0]
        assert marker in objs[2]["exc"]
    else:
        assert output.count(marker) >= 3


def test_device_token_shown_truncated() -> None:
    assert redact(f"token={HEX_TOKEN}") == "token=a1b2c3d4…(64)"
    assert redact(HEX_TOKEN.upper()) == short_token(HEX_TOKEN.upper())
    assert redact(f"token:{HEX_TOKEN},x") == "token:a1b2c3d4…(64),x"
    long_apns = "ab" * 100
    assert redact(f"[{long_apns}]") == f"[{short_token(long_apns)}]"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("?access_token=ya29.secret&alt=json", "?access_token=[redacted]&alt=json"),
        ("{'access_token': 'ya29.secret'}", "{'access_token': '[redacted]'}"),
        (
            'body="{\\"access_token\\":\\"ya29.secret\\"}"',
            'body="{\\"access_token\\":\\"[redacted]\\"}"',
        ),
        ('{"refresh_token":"1//0secret"}', '{"refresh_token":"[redacted]"}'),
        ("Authorization: bearer ya29.a0AfH6SMBx", "Authorization: bearer [redacted]"),
    ],
)
def test_credential_fields_are_masked(text: str, expected: str) -> None:
    assert redact(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "a" * 63,
        "0123456789abcdef" * 3 + "0123456789abcde",  # 63 hex: a short id, not a token
        "https://fcm.googleapis.com/v1/projects/demo/messages:send",
        "bearer token missing",
        "the access token expired",
        "eyJ-not-a-jwt",
        "-----BEGIN PRIVATE KEY----- (no end marker)",
        "x" * 99,
    ],
)
def test_ordinary_text_is_left_alone(text: str) -> None:
    assert redact(text) == text
