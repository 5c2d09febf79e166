"""The command line against a real database: clear one-line errors, never a traceback."""

from __future__ import annotations

import argparse
import json
import pathlib
import subprocess
import sys

import asyncpg
import pytest

TOKEN = "ab" * 32


def cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pushgres", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def test_migrate_enqueue_status_outcome(empty_dsn: str) -> None:
    first = cli("migrate", "--dsn", empty_dsn)
    assert first.returncode == 0, first.stderr
    assert "applied migration(s): 1" in first.stdout
    assert "up to date" in cli("migrate", "--dsn", empty_dsn).stdout

    one = cli(
        "enqueue",
        "--dsn",
        empty_dsn,
        "--app",
        "ios",
        "--platform",
        "apns",
        "--token",
        TOKEN,
        "--payload",
        '{"aps":{"alert":"hi"}}',
        "--collapse-id",
        "c",
        "--expires-in",
        "60",
    )
    assert one.returncode == 0, one.stderr
    nid = int(one.stdout.strip())

    lines = "\n".join(
        json.dumps({"app": "and", "platform": "fcm", "device_token": f"t{i}", "payload": {}})
        for i in range(3)
    )
    many = cli("enqueue", "--dsn", empty_dsn, "--file", "-", stdin=lines)
    assert many.returncode == 0, many.stderr
    assert len(many.stdout.split()) == 3

    status = cli("status", "--dsn", empty_dsn)
    assert status.returncode == 0
    assert "ios" in status.stdout and "depth=1" in status.stdout and "depth=3" in status.stdout
    assert "devices:\n  (none registered)" in status.stdout
    registered = cli(
        "devices", "register", "--dsn", empty_dsn, "--app", "ios", "--platform", "apns",
        "--token", TOKEN,
    )  # fmt: skip
    assert registered.returncode == 0, registered.stderr
    status = cli("status", "--dsn", empty_dsn)
    assert "devices:\n  ios" in status.stdout and "active=1" in status.stdout

    out = cli("outcome", "--dsn", empty_dsn, str(nid), "999999")
    records = [json.loads(line) for line in out.stdout.splitlines()]
    assert records[0]["status"] == "queued" and records[0]["id"] == nid
    assert records[1] == {"id": 999999, "status": "unknown"}

    conn = await asyncpg.connect(empty_dsn)
    try:
        row = await conn.fetchrow(
            "SELECT collapse_id, expires_at FROM pushgres.queue WHERE id=$1", nid
        )
        assert row["collapse_id"] == "c" and row["expires_at"] is not None
    finally:
        await conn.close()


async def test_bad_input_gets_a_clear_error(empty_dsn: str, tmp_path: pathlib.Path) -> None:
    assert cli("migrate", "--dsn", empty_dsn).returncode == 0
    bad = cli(
        "enqueue",
        "--dsn",
        empty_dsn,
        "--file",
        "-",
        stdin='{"app":"ios","platform":"apns","device_token":"ab","payload":{"aps":{}}}\n{oops\n',
    )
    assert bad.returncode == 1
    assert bad.stderr.strip() == "pushgres enqueue: stdin line 2: not valid JSON"
    bad = cli(
        "enqueue",
        "--dsn",
        empty_dsn,
        "--app",
        "ios",
        "--platform",
        "apns",
        "--token",
        "xyz",
        "--payload",
        "{}",
    )
    assert bad.returncode == 1 and "hexadecimal" in bad.stderr and "Traceback" not in bad.stderr


async def test_run_refuses_bad_config_and_missing_schema(
    empty_dsn: str, tmp_path: pathlib.Path
) -> None:
    config = tmp_path / "c.toml"
    config.write_text("[database]\ndsn = 'x'\n[daemon]\nbatch_size = -1\n")
    out = cli("run", "--config", str(config))
    assert out.returncode == 1
    assert "daemon.batch_size must be 1..5000, got -1" in out.stderr
    assert "Traceback" not in out.stderr

    sa = tmp_path / "sa.json"
    sa.write_text("{}")
    config.write_text(
        f"[database]\ndsn = '{empty_dsn}'\n[apps.a]\nplatform = 'fcm'\n"
        f"service_account_file = '{sa}'\n"
    )
    out = cli("run", "--config", str(config))
    assert out.returncode == 1
    assert "lacks type, project_id" in out.stderr and "Traceback" not in out.stderr

    out = cli("run", "--config", str(tmp_path / "nope.toml"))
    assert out.returncode == 1 and "does not exist" in out.stderr


async def test_run_refuses_a_database_without_the_schema(
    empty_dsn: str, tmp_path: pathlib.Path
) -> None:
    from pushgres.simulator import devkit

    setup = devkit.make_dev_setup(tmp_path / "sim")
    config = tmp_path / "c.toml"
    config.write_text(
        f"[database]\ndsn = '{empty_dsn}'\n[apps.a]\nplatform = 'fcm'\n"
        f"service_account_file = '{setup.service_account_file}'\n"
    )
    out = cli("run", "--config", str(config))
    assert out.returncode == 1
    assert "schema is missing from this database; run `pushgres migrate` first" in out.stderr
    assert "Traceback" not in out.stderr
    assert "pushgres stopped" not in out.stderr + out.stdout  # it never started


async def test_every_command_needs_the_schema(empty_dsn: str) -> None:
    flags = ["--app", "ios", "--platform", "apns", "--token", TOKEN, "--payload", '{"aps":{}}']
    for args in (["status"], ["outcome", "1"], ["enqueue", *flags]):
        out = cli(*args, "--dsn", empty_dsn)
        assert out.returncode == 1, (args, out.stdout)
        assert "Traceback" not in out.stderr
        assert out.stderr.count("\n") == 1, out.stderr
        assert out.stderr.startswith(f"pushgres {args[0]}: ")
        assert "run `pushgres migrate` first" in out.stderr


FLAGS = ("--app", "ios", "--platform", "apns", "--token", TOKEN, "--payload", '{"aps":{}}')
LINE = {"app": "ios", "platform": "apns", "device_token": TOKEN, "payload": {"aps": {}}}
NUL = "\u0000"


def _line(**extra: object) -> str:
    return json.dumps({**LINE, **extra}) + "\n"


BAD_INPUT: list[tuple[str, tuple[str, ...], str | bytes | None, int, str]] = [
    # (case id, args ({dsn} is replaced), stdin, exit status, expected in the last stderr line)
    (
        "metadata-not-json",
        ("enqueue", *FLAGS, "--metadata", "{oops"),
        None,
        1,
        "pushgres enqueue: --metadata is not valid JSON",
    ),
    (
        "metadata-not-object",
        ("enqueue", *FLAGS, "--metadata", "[1]"),
        None,
        1,
        "pushgres enqueue: --metadata must be a JSON object",
    ),
    (
        "payload-not-object",
        ("enqueue", *FLAGS, "--payload", "[1]"),
        None,
        1,
        "pushgres enqueue: --payload must be a JSON object",
    ),
    ("expires-in-inf", ("enqueue", *FLAGS, "--expires-in", "inf"), None, 2, "--expires-in"),
    ("expires-in-nan", ("enqueue", *FLAGS, "--expires-in", "nan"), None, 2, "--expires-in"),
    ("expires-in-huge", ("enqueue", *FLAGS, "--expires-in", "1e20"), None, 1, "--expires-in"),
    ("send-at-bad", ("enqueue", *FLAGS, "--send-at", "tomorrow"), None, 1, "not an ISO 8601 time"),
    (
        "topic-bad",
        ("enqueue", *FLAGS, "--topic", "bad topic"),
        None,
        1,
        "pushgres enqueue: topic must",
    ),
    (
        "dedupe-empty",
        ("enqueue", *FLAGS, "--dedupe-key", ""),
        None,
        1,
        "pushgres enqueue: dedupe_key must be",
    ),
    (
        "dedupe-long",
        ("enqueue", *FLAGS, "--dedupe-key", "k" * 257),
        None,
        1,
        "pushgres enqueue: dedupe_key must be",
    ),
    (
        "file-missing",
        ("enqueue", "--file", "/nonexistent/n.jsonl"),
        None,
        1,
        "cannot read /nonexistent/n.jsonl",
    ),
    (
        "stdin-not-utf8",
        ("enqueue", "--file", "-"),
        _line().encode() + b"\xff\xfe\n",
        1,
        "pushgres enqueue: stdin line 2: not valid UTF-8",
    ),
    ("stdin-array", ("enqueue", "--file", "-"), "[1]\n", 1, "stdin line 1: expected a JSON object"),
    (
        "stdin-nul-payload",
        ("enqueue", "--file", "-"),
        "\n" + _line(payload={"aps": {"alert": f"a{NUL}b"}}),
        1,
        "pushgres enqueue: stdin line 2: payload contains a NUL character",
    ),
    (
        "stdin-nul-dedupe",
        ("enqueue", "--file", "-"),
        _line(dedupe_key=f"a{NUL}"),
        1,
        "stdin line 1: dedupe_key must not contain a NUL character",
    ),
    (
        "stdin-nul-metadata",
        ("enqueue", "--file", "-"),
        _line(metadata={NUL: 1}),
        1,
        "stdin line 1: metadata contains a NUL character",
    ),
    (
        "stdin-send-at-overflow",
        ("enqueue", "--file", "-"),
        _line(send_at=1e20),
        1,
        "stdin line 1: send_at",
    ),
    (
        "stdin-collapse-id-int",
        ("enqueue", "--file", "-"),
        _line(collapse_id=5),
        1,
        "stdin line 1: collapse_id must be a string",
    ),
    (
        "stdin-topic-int",
        ("enqueue", "--file", "-"),
        _line(topic=5),
        1,
        "stdin line 1: topic must be a string",
    ),
    (
        "stdin-dedupe-int",
        ("enqueue", "--file", "-"),
        _line(dedupe_key=5),
        1,
        "stdin line 1: dedupe_key must be a string",
    ),
    (
        "stdin-push-type-list",
        ("enqueue", "--file", "-"),
        _line(push_type=[1]),
        1,
        "stdin line 1: push_type",
    ),
    (
        "stdin-max-attempts-bool",
        ("enqueue", "--file", "-"),
        _line(max_attempts=True),
        1,
        "stdin line 1: max_attempts must be",
    ),
    (
        "stdin-priority-bool",
        ("enqueue", "--file", "-"),
        _line(priority=True),
        1,
        "stdin line 1: priority must be",
    ),
    ("outcome-not-int", ("outcome", "abc"), None, 2, "not a notification id: 'abc'"),
    (
        "outcome-too-big",
        ("outcome", "99999999999999999999"),
        None,
        2,
        "not a notification id: '99999999999999999999'",
    ),
    ("window-nan", ("status", "--window-s", "nan"), None, 2, "--window-s"),
    ("window-negative", ("status", "--window-s", "-5"), None, 2, "--window-s"),
]
BAD_DSNS = [
    "notadsn",
    "postgresql://u@host:notaport/x",
    "postgresql://u@[bad/x",
    "postgresql://u@127.0.0.1/x?sslmode=bogus",
    "postgresql://u@127.0.0.1:1/x",
]
for _i, _bad in enumerate(BAD_DSNS):
    for _cmd in (("migrate",), ("status",), ("outcome", "1"), ("enqueue", *FLAGS)):
        BAD_INPUT.append(
            (f"dsn{_i}-{_cmd[0]}", (*_cmd, "--dsn", _bad), None, 1, f"pushgres {_cmd[0]}: ")
        )


@pytest.mark.parametrize(
    ("args", "stdin", "status", "expected"),
    [case[1:] for case in BAD_INPUT],
    ids=[case[0] for case in BAD_INPUT],
)
async def test_bad_input_never_prints_a_traceback(
    dsn: str, args: tuple[str, ...], stdin: str | bytes | None, status: int, expected: str
) -> None:
    if "--dsn" not in args:
        args = (*args, "--dsn", dsn)
    out = cli_bytes(*args, stdin=stdin)
    assert out.returncode == status, out.stderr
    assert "Traceback" not in out.stderr
    assert out.stdout == ""
    last = out.stderr.rstrip("\n").splitlines()[-1]
    assert expected in last, out.stderr
    if status == 1:
        assert out.stderr.count("\n") == 1, out.stderr
    conn = await asyncpg.connect(dsn)
    try:
        assert await conn.fetchval("SELECT count(*) FROM pushgres.queue") == 0
    finally:
        await conn.close()


def cli_bytes(*args: str, stdin: str | bytes | None = None) -> subprocess.CompletedProcess[str]:
    data = stdin.encode() if isinstance(stdin, str) else stdin
    done = subprocess.run(
        [sys.executable, "-m", "pushgres", *args],
        input=data,
        capture_output=True,
        timeout=60,
        check=False,
    )
    return subprocess.CompletedProcess(
        done.args, done.returncode, done.stdout.decode(), done.stderr.decode()
    )


async def test_enqueue_prints_duplicates_and_outcome_prints_metadata(dsn: str) -> None:
    first = cli("enqueue", "--dsn", dsn, *FLAGS, "--dedupe-key", "k1", "--metadata", '{"u": 7}')
    assert first.returncode == 0, first.stderr
    nid = int(first.stdout)
    again = cli("enqueue", "--dsn", dsn, *FLAGS, "--dedupe-key", "k1")
    assert again.returncode == 0, again.stderr
    assert again.stdout == f"{nid} duplicate\n"

    lines = _line(dedupe_key="k2") + "\n" + _line(dedupe_key="k1") + _line(dedupe_key="k2")
    many = cli("enqueue", "--dsn", dsn, "--file", "-", stdin=lines)
    assert many.returncode == 0, many.stderr
    k2, k1, k2_again = many.stdout.splitlines()
    assert k2.isdigit() and k1 == f"{nid} duplicate" and k2_again == f"{k2} duplicate"

    out = cli("outcome", "--dsn", dsn, str(nid))
    assert out.returncode == 0, out.stderr
    record = json.loads(out.stdout)
    assert record["metadata"] == {"u": 7}
    assert record["platform"] == "apns" and record["status"] == "queued"


def test_version_and_help() -> None:
    import pushgres

    out = cli("--version")
    assert out.returncode == 0 and out.stdout == f"pushgres {pushgres.__version__}\n"
    top = cli("--help")
    assert top.returncode == 0
    assert "argument parsing" not in top.stdout and "--version" in top.stdout
    for command in ("migrate", "run", "enqueue", "status", "outcome"):
        out = cli(command, "--help")
        assert out.returncode == 0, out.stderr
        assert "argument parsing" not in out.stdout
    assert "duplicate" in cli("enqueue", "--help").stdout
    assert "metadata" in cli("outcome", "--help").stdout


def test_every_subcommand_and_flag_is_described() -> None:
    from pushgres.cli import _parser

    parser = _parser()
    assert parser.description and "argument parsing" not in parser.description
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, sub in subparsers.choices.items():
        if name in ("simulate", "demo"):
            continue  # they parse their own arguments
        assert sub.description, name
        for action in sub._actions:
            assert action.help, (name, action.dest)


def _first_line_then_hang_up(*args: str) -> tuple[str, int, str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "pushgres", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    line = proc.stdout.readline().decode()
    proc.stdout.close()
    stderr = proc.stderr.read().decode()
    return line, proc.wait(timeout=60), stderr


async def test_a_reader_that_goes_away_is_no_traceback(dsn: str) -> None:
    # `pushgres outcome … | head -1`: far more output than a pipe buffers, and the reader gone.
    ids = [str(i) for i in range(1, 20_001)]
    line, status, stderr = _first_line_then_hang_up("outcome", "--dsn", dsn, *ids)
    assert json.loads(line) == {"id": 1, "status": "unknown"}
    assert status == 1
    assert stderr == ""
