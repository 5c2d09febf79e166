"""`pushgres send`, `pushgres group` and `pushgres devices uninstalls` against real PostgreSQL.

A fan-out from the command line (flags and a message, users from flags or a file, one
transaction or slices on two connections), what it queued, its group's outcome as text and
JSON, each refusal named with exit status 1, and the uninstalls report. The command runs in
this process (in a thread: it brings its own event loop).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import io
import json
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import pytest

from pushgres import devices
from pushgres.cli import main
from pushgres.simulator import devkit

from .harness import APNS_APP, FCM_APP

Pushgres = Callable[..., Awaitable[tuple[int, str, str]]]


@pytest.fixture
def pushgres(
    dsn: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> Pushgres:
    """``await pushgres("send", "--to", ...)``: (exit status, stdout, stderr)."""

    async def run(*args: str, stdin: bytes | None = None) -> tuple[int, str, str]:
        if stdin is not None:
            monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(stdin)))
        capsys.readouterr()
        at = 2 if args[0] == "devices" else 1  # after the (sub)command
        code = await asyncio.to_thread(main, [*args[:at], "--dsn", dsn, *args[at:]])
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run


async def _people(conn: asyncpg.Connection) -> None:
    """ann: an iPhone and an Android phone; ben: an iPhone; cy: nothing."""
    await devices.register(conn, APNS_APP, "apns", devkit.apns_token("ok", 1), user_id="ann")
    await devices.register(conn, FCM_APP, "fcm", devkit.fcm_token("ok", 1), user_id="ann")
    await devices.register(conn, APNS_APP, "apns", devkit.apns_token("ok", 2), user_id="ben")
    await conn.execute(
        "INSERT INTO pushgres.app_groups (name, apps) VALUES ('shop', $1)", [APNS_APP, FCM_APP]
    )


async def test_send_queues_the_portable_message_and_group_shows_its_outcome(
    pushgres: Pushgres, conn: asyncpg.Connection
) -> None:
    await _people(conn)
    code, out, err = await pushgres(
        "send", "--to", "shop", "--user", "ann", "--user", "cy", "--user", "ann",
        "--title", "Your cart", "--body", "3 items", "--data", '{"cart": 7}', "--badge", "2",
        "--ttl", "600", "--collapse-key", "cart-7", "--priority", "normal",
        "--overrides", '{"apns": {"aps": {"interruption-level": "active"}}}',
        "--metadata", '{"campaign": "cart"}', "--json",
    )  # fmt: skip
    assert code == 0, err
    done = json.loads(out)
    assert done["users"] == 2 and done["users_without_device"] == 1
    assert done["notifications"] == 2 and done["duplicate"] is False
    rows = await conn.fetch(
        "SELECT platform, message, payload, priority, collapse_id, expires_at - enqueued_at AS ttl,"
        " metadata, user_id FROM pushgres.queue WHERE group_id = $1 ORDER BY platform",
        done["group_id"],
    )
    assert [r["platform"] for r in rows] == ["apns", "fcm"]
    for r in rows:
        message = json.loads(r["message"])
        assert message == {"title": "Your cart", "body": "3 items", "data": {"cart": 7}, "badge": 2}
        assert (r["priority"], r["collapse_id"], r["user_id"]) == (5, "cart-7", "ann")
        assert abs(r["ttl"] - dt.timedelta(seconds=600)) < dt.timedelta(seconds=5)
        assert json.loads(r["metadata"]) == {"campaign": "cart"}
    assert json.loads(rows[0]["payload"]) == {"aps": {"interruption-level": "active"}}
    assert json.loads(rows[1]["payload"]) == {}

    code, out, err = await pushgres("group", str(done["group_id"]))
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith(f"group {done['group_id']} to shop ({APNS_APP}, {FCM_APP})")
    assert "2 notification(s), 2 user(s), 1 without an active device" in lines[0]
    assert lines[1].split() == ["queued", "2"]
    assert lines[2] == "  (not finished: some are still queued)"
    code, out, _ = await pushgres("group", str(done["group_id"]), "--per-user", "--json")
    shown: dict[str, Any] = json.loads(out)
    assert shown["complete"] is True and shown["done"] is False
    assert shown["counts"] == [{"user_id": "ann", "status": "queued", "reason": None, "count": 2}]


async def test_send_from_a_file_on_two_connections_and_again(
    pushgres: Pushgres, conn: asyncpg.Connection
) -> None:
    await _people(conn)
    users = b"ann\nben\n\ncy\n"
    first = await pushgres(
        "send", "--to", "shop", "--users-file", "-", "--message", '{"body": "Sale"}',
        "--connections", "2", "--dedupe-key", "sale-1", stdin=users,
    )  # fmt: skip
    assert first[0] == 0, first[2]
    assert first[1].endswith("3 notification(s) to 2 of 3 user(s); 1 without an active device\n")
    again = await pushgres(
        "send", "--to", "shop", "--users-file", "-", "--message", '{"body": "Sale"}',
        "--connections", "2", "--dedupe-key", "sale-1", stdin=users,
    )  # fmt: skip
    assert again[0] == 0 and again[1].endswith("(duplicate: nothing new queued)\n")
    assert await conn.fetchval("SELECT count(*) FROM pushgres.queue") == 3


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (("--to", "shop", "--title", "x"), "give --user (repeatable) or --users-file"),
        (("--to", "shop", "--user", "ann", "--message", '{"titel": "x"}'), "unknown key 'titel'"),
        (("--to", "shop", "--user", "ann", "--badge", "-1", "--title", "x"), "'badge'"),
        (("--to", "nowhere", "--user", "ann", "--title", "x"), "no app or group named nowhere"),
        (("--to", "shop", "--user", "ann", "--title", "x", "--connections", "0"), "1..16"),
        (("--to", "shop", "--user", "ann", "--overrides", '{"web": {}}', "--title", "x"),
         "overrides"),
    ],
)  # fmt: skip
async def test_send_refusals_are_named(
    pushgres: Pushgres, conn: asyncpg.Connection, args: tuple[str, ...], named: str
) -> None:
    await _people(conn)
    code, out, err = await pushgres("send", *args)
    assert code == 1 and named in err, (out, err)
    assert "Traceback" not in err
    assert await conn.fetchval("SELECT count(*) FROM pushgres.queue") == 0


async def test_group_of_no_fanout_is_named(pushgres: Pushgres) -> None:
    code, _, err = await pushgres("group", "424242")
    assert code == 1 and "no fan-out group 424242" in err


async def test_devices_uninstalls_per_day_and_app(
    pushgres: Pushgres, conn: asyncpg.Connection
) -> None:
    await conn.execute(
        "INSERT INTO pushgres.device_events (app, token, event, at) VALUES"
        " ('ios', 'a1', 'uninstalled', now()), ('ios', 'a2', 'uninstalled', now()),"
        " ('android', 'b1', 'uninstalled', now() - interval '1 day'),"
        " ('ios', 'a3', 'invalidated', now()),"
        " ('ios', 'a4', 'uninstalled', now() - interval '40 days')"
    )
    code, out, err = await pushgres("devices", "uninstalls", "--json")
    assert code == 0, err
    today = dt.datetime.now(dt.UTC).astimezone().date()
    found = [json.loads(line) for line in out.splitlines()]
    assert [f["uninstalls"] for f in found] == [2, 1]
    assert found[0]["app"] == "ios" and found[1]["app"] == "android"
    assert dt.date.fromisoformat(found[0]["day"]) >= dt.date.fromisoformat(found[1]["day"])
    assert abs((dt.date.fromisoformat(found[0]["day"]) - today).days) <= 1
    code, out, _ = await pushgres("devices", "uninstalls", "--app", "android", "--days", "7")
    assert code == 0 and out.split()[1:] == ["android", "1"]
    code, out, _ = await pushgres("devices", "uninstalls", "--app", "web")
    assert out == "no uninstalls found in the last 30 days\n"
