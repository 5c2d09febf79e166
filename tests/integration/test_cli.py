"""The command line against a real database: clear one-line errors, never a traceback."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import asyncpg

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
