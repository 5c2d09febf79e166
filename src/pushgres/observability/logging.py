"""Structured, redacted logging: the text and JSON line formats and the redaction pass.

:func:`setup_logging` installs one stream handler with either format:

- ``text`` (:class:`KeyValueFormatter`): time, level, logger, message, then the record's
  ``extra`` fields as ``key=value``. Under journald (``$JOURNAL_STREAM`` names the output
  stream, as systemd.exec(5) documents) the time is left out, since journald stamps each
  line, and each line starts with its sd-daemon(3) ``<N>`` priority so journald keeps the
  level.
- ``json`` (:class:`JsonFormatter`): one object per line, keys in a fixed order: ``ts``,
  ``level``, ``logger``, ``msg``, the extras, then ``exc`` for an exception.

Device tokens are meant to reach the logger only as :func:`short_token`, and JWTs, OAuth
tokens and keys never. :func:`redact` is the defence in depth behind that rule: both formats
pass the message, every extra value and exception text through it, which masks JWTs,
``Bearer`` credentials, PEM blocks, ``access_token`` values and whole device tokens.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import sys
import time
from collections.abc import Mapping
from typing import Any, TextIO

__all__ = [
    "LOG_FORMATS",
    "JsonFormatter",
    "KeyValueFormatter",
    "redact",
    "setup_logging",
    "short_token",
]

LOG_FORMATS = ("text", "json")

_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
}

# Each secret kind is a (hint, pattern, replacement): the pattern runs only when its literal
# hint is in the text, so an ordinary line costs a few substring checks and one scan for long
# token-like runs. PEM and JWT go first: their base64 would otherwise read as token runs.
_SECRETS: tuple[tuple[str, re.Pattern[str], str], ...] = (
    (
        "-----BEGIN ",
        re.compile(r"-----BEGIN [A-Z0-9 ]+-----.*?-----END [A-Z0-9 ]+-----", re.S),
        "[redacted PEM]",
    ),
    (
        "eyJ",
        re.compile(r"(?<![A-Za-z0-9_-])eyJ[A-Za-z0-9_-]*\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+"),
        "[redacted JWT]",
    ),
    ("earer", re.compile(r"\b([Bb]earer\s+)[A-Za-z0-9._~+/=-]{8,}"), r"\1[redacted]"),
    # "access_token": "…", access_token=…, and the same inside escaped JSON (\"access_token\").
    (
        "_token",
        re.compile(
            r"((?<![A-Za-z0-9_])(?:access|refresh|id)_token(?:\\?[\"'])?\s*[:=]\s*(?:\\?[\"'])?)"
            r"[^\"'\s,;&}\\]+"
        ),
        r"\1[redacted]",
    ),
)
# Device tokens: any run of FCM's alphabet 100+ long, or a run of 64+ hex characters (APNs)
# found inside a shorter one.
_TOKEN_RUN = re.compile(r"[A-Za-z0-9_:-]{64,}")
_HEX_RUN = re.compile(r"[0-9A-Fa-f]{64,}")

# sd-daemon(3) priorities (syslog levels) for the stdlib levels.
_PRIORITIES = ((logging.CRITICAL, 2), (logging.ERROR, 3), (logging.WARNING, 4), (logging.INFO, 6))


def short_token(token: str) -> str:
    """A device token truncated for logs: its first 8 characters and its length."""
    return f"{token[:8]}…({len(token)})"


def _mask_tokens(match: re.Match[str]) -> str:
    run = match[0]
    if len(run) >= 100:
        return short_token(run)
    return _HEX_RUN.sub(lambda hex_run: short_token(hex_run[0]), run)


def redact(text: str) -> str:
    """``text`` with JWTs, Bearer credentials, PEM blocks, ``access_token`` values and device
    tokens (64+ hex characters, or 100+ of FCM's alphabet) masked."""
    for hint, pattern, replacement in _SECRETS:
        if hint in text:
            text = pattern.sub(replacement, text)
    return _TOKEN_RUN.sub(_mask_tokens, text)


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in vars(record).items() if k not in _STANDARD}


def _priority(levelno: int) -> int:
    for threshold, priority in _PRIORITIES:
        if levelno >= threshold:
            return priority
    return 7


class KeyValueFormatter(logging.Formatter):
    """``<time> <LEVEL> <logger>: <message> key=value …``, redacted.

    With ``journald=True`` the time is left out and every line starts with ``<N>``, the
    record's syslog priority (a traceback's lines too, since journald reads each line as an
    entry of its own).
    """

    def __init__(self, *, journald: bool = False) -> None:
        head = "" if journald else "%(asctime)s "
        super().__init__(head + "%(levelname)s %(name)s: %(message)s")
        self._journald = journald

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extras = [f"{k}={v}" for k, v in _extras(record).items()]
        if extras:
            head, sep, tail = line.partition("\n")
            line = f"{head} {' '.join(extras)}{sep}{tail}"
        line = redact(line)
        if self._journald:
            prefix = f"<{_priority(record.levelno)}>"
            line = "\n".join(prefix + part for part in line.split("\n"))
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ``ts``, ``level``, ``logger``, ``msg``, extras, ``exc``.

    ``ts`` is RFC 3339 UTC with milliseconds. Extras keep JSON's own types (str, numbers,
    bools, None, lists, dicts); anything else is ``str()``'d. An extra named like one of the
    fixed keys is written as ``extra_<name>``.
    """

    _FIXED = frozenset({"ts", "level", "logger", "msg", "exc", "stack"})

    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        out: dict[str, Any] = {
            "ts": f"{stamp}.{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": redact(record.getMessage()),
        }
        for key, value in _extras(record).items():
            out[f"extra_{key}" if key in self._FIXED else key] = _jsonable(value)
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            out["exc"] = redact(record.exc_text)
        if record.stack_info:
            out["stack"] = redact(self.formatStack(record.stack_info))
        return json.dumps(out, ensure_ascii=False, separators=(",", ":"))


def _jsonable(value: object) -> Any:
    """``value`` as JSON-native data with every string redacted."""
    if isinstance(value, str):
        return redact(value)
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {redact(str(k)): _jsonable(v) for k, v in value.items()}
    return redact(str(value))


def _is_journal_stream(stream: TextIO, environ: Mapping[str, str]) -> bool:
    """Whether ``stream`` is the journald connection ``$JOURNAL_STREAM`` names
    (``<st_dev>:<st_ino>`` of the file descriptor, in decimal)."""
    dev, sep, ino = environ.get("JOURNAL_STREAM", "").partition(":")
    if not sep:
        return False
    try:
        st = os.fstat(stream.fileno())
        return (st.st_dev, st.st_ino) == (int(dev), int(ino))
    except (OSError, ValueError):
        # No file descriptor (io.UnsupportedOperation is both), or a malformed variable.
        return False


def setup_logging(
    level: str,
    fmt: str = "text",
    *,
    stream: TextIO | None = None,
    environ: Mapping[str, str] | None = None,
) -> None:
    """Send every record at ``level`` or above to ``stream`` (default stderr) in ``fmt``.

    Parameters
    ----------
    fmt:
        ``"text"`` or ``"json"`` (:data:`LOG_FORMATS`).
    environ:
        Where to look for ``$JOURNAL_STREAM``; the process's environment by default.

    Raises
    ------
    ValueError
        For an unknown ``fmt`` or ``level``.
    """
    out = sys.stderr if stream is None else stream
    formatter: logging.Formatter
    if fmt == "json":
        formatter = JsonFormatter()
    elif fmt == "text":
        env = os.environ if environ is None else environ
        formatter = KeyValueFormatter(journald=_is_journal_stream(out, env))
    else:
        raise ValueError(f"log format must be one of {', '.join(LOG_FORMATS)}, got {fmt!r}")
    handler = logging.StreamHandler(out)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.setLevel(level.upper())
    root.handlers[:] = [handler]
