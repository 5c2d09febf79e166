"""`pushgres devices` against real PostgreSQL, and the bulk import and export under it.

Each subcommand's usual path and one refusal; an import of 100,000 rows from CSV read back
by an export, field for field; an import meeting known devices (moved, reactivated, still
invalid, merged); a bad row named by its number with nothing written; export by state.
The command runs in this process (in a thread: it brings its own event loop).
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import datetime as dt
import io
import json
import pathlib
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import asyncpg
import pytest

from pushgres import devices
from pushgres.cli import main
from pushgres.simulator import devkit

APP = "ios"
T1 = devkit.apns_token("ok", 1)
T2 = devkit.apns_token("ok", 2)
T3 = devkit.apns_token("ok", 3)
T4 = devkit.apns_token("ok", 4)
IMPORT_ROWS = 100_000
T0 = dt.datetime(2025, 3, 1, 12, 0, tzinfo=dt.UTC)


@dataclass
class Ran:
    code: int
    out: str
    err: str

    @property
    def objects(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.out.splitlines()]


Pushgres = Callable[..., Awaitable[Ran]]


@pytest.fixture
def pushgres(
    dsn: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> Pushgres:
    """``await pushgres("show", "--app", ...)`` runs `pushgres devices show --dsn DSN ...`."""

    async def run(subcommand: str, *args: str, stdin: bytes | None = None) -> Ran:
        if stdin is not None:
            monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(stdin)))
        capsys.readouterr()
        code = await asyncio.to_thread(main, ["devices", subcommand, "--dsn", dsn, *args])
        captured = capsys.readouterr()
        return Ran(code, captured.out, captured.err)

    return run


async def test_register_show_identify_logout_history(
    pushgres: Pushgres, conn: asyncpg.Connection
) -> None:
    first = await pushgres(
        "register", "--app", APP, "--platform", "apns", "--token", T1, "--user", "alice",
        "--installation", "inst-1", "--environment", "sandbox", "--timezone", "Europe/Paris",
        "--locale", "fr-FR", "--app-version", "3.2", "--attributes", '{"plan": "pro"}',
    )  # fmt: skip
    assert (first.code, first.out) == (0, "registered active\n"), first.err
    shown = await pushgres("show", "--app", APP, "--token", T1)
    [device] = shown.objects
    assert list(device) == list(devices.EXPORT_FIELDS)
    assert device["token"] == T1  # whole: the operator's own data
    assert device["user_id"] == "alice" and device["installation_id"] == "inst-1"
    assert device["environment"] == "sandbox" and device["timezone"] == "Europe/Paris"
    assert device["locale"] == "fr-FR" and device["app_version"] == "3.2"
    assert device["attributes"] == {"plan": "pro"} and device["state"] == "active"
    assert dt.datetime.fromisoformat(device["registered_at"]).tzinfo is not None
    again = await pushgres("register", "--app", APP, "--platform", "apns", "--token", T1)
    assert again.out == "seen active\n"

    assert (await pushgres("identify", "--app", APP, "--token", T1, "--user", "bob")).code == 0
    mine = await pushgres("show", "--app", APP, "--user", "bob")
    assert [d["token"] for d in mine.objects] == [T1]
    assert (await pushgres("show", "--app", APP, "--user", "alice")).out == ""
    logout = await pushgres("logout", "--app", APP, "--token", T1)
    assert (logout.code, logout.out) == (0, "")
    anonymous = await devices.device(conn, APP, T1)
    assert anonymous is not None and anonymous.user_id is None

    history = await pushgres("history", "--app", APP, "--token", T1)
    assert [e["event"] for e in history.objects] == ["registered", "moved", "logged_out"]
    assert history.objects[1]["detail"] == {"from": "alice"}
    assert history.objects[1]["user_id"] == "bob"


async def test_rotate_and_unregister(pushgres: Pushgres, conn: asyncpg.Connection) -> None:
    for token in (T1, T3, T4):
        await devices.register(conn, APP, "apns", token, user_id="carol")
    rotated = await pushgres("rotate", "--app", APP, "--old-token", T1, "--new-token", T2)
    assert (rotated.code, rotated.out) == (0, "registered\n"), rotated.err
    new = await devices.device(conn, APP, T2)
    assert new is not None and new.user_id == "carol"

    one = await pushgres("unregister", "--app", APP, "--token", T2)
    assert (one.code, one.out) == (0, "1\n")
    again = await pushgres("unregister", "--app", APP, "--token", T2)
    assert (again.code, again.out) == (0, "0\n")  # unregistered already
    listed = await pushgres(
        "unregister", "--app", APP, "--file", "-", stdin=f"{T3}\n\n{T4}\n".encode()
    )
    assert (listed.code, listed.out) == (0, "2\n"), listed.err
    states = {d.token: d.state for d in await devices.user_devices(conn, APP, "carol")}
    assert states == {T2: "unregistered", T3: "unregistered", T4: "unregistered"}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["register", "--app", APP, "--platform", "apns", "--token", "not-hex"],
         "an APNs device token is hexadecimal"),
        (["register", "--app", APP, "--platform", "apns", "--token", T1, "--attributes", "[1]"],
         "--attributes must be a JSON object"),
        (["identify", "--app", APP, "--token", T1, "--user", "dan"], "has no device"),
        (["logout", "--app", APP, "--token", T1], "has no device"),
        (["rotate", "--app", APP, "--old-token", T1, "--new-token", T2], "has no device"),
        (["unregister", "--app", "bad app", "--token", T1], "is not an app name"),
        (["unregister", "--app", APP, "--file", "/nonexistent/tokens"], "cannot read"),
        (["show", "--app", APP, "--token", T1], "has no device"),
        (["history", "--app", APP, "--token", T1], "has no device"),
        (["import", "--file", "-", "--app", APP], "row 1: platform: missing"),
        (["export", "--app", "bad app"], "is not an app name"),
    ],
)  # fmt: skip
async def test_each_subcommand_refuses_in_one_line(
    pushgres: Pushgres, args: list[str], message: str
) -> None:
    ran = await pushgres(*args, stdin=f'{{"token": "{T1}"}}\n'.encode())
    assert ran.code == 1
    assert ran.err.startswith("pushgres devices: ") and ran.err.count("\n") == 1, ran.err
    assert message in ran.err
    assert T1 not in ran.err  # tokens are shortened in errors


def _generated_rows(count: int) -> list[dict[str, str]]:
    """Rows as an export from another system might hold them: some fields empty."""
    rows = []
    for i in range(count):
        is_apns = i % 3 != 0
        rows.append(
            {
                "app": "ios" if is_apns else "android",
                "platform": "apns" if is_apns else "fcm",
                "token": f"{i:064x}" if is_apns else f"fcm-{i}:APA91b_{i * 7919}",
                "user_id": f"user-{i % 40_000}" if i % 5 else "",
                "installation_id": f"inst-{i}" if i % 2 else "",
                "environment": ("production" if i % 4 else "sandbox") if is_apns else "",
                "timezone": ("Europe/Paris", "America/New_York", "Asia/Tokyo", "")[i % 4],
                "locale": ("fr-FR", "en-US", "ja-JP", "")[i % 4],
                "app_version": f"4.{i % 10}" if i % 7 else "",
                "attributes": json.dumps({"plan": "pro", "n": i}) if i % 3 == 1 else "",
                "registered_at": (T0 + dt.timedelta(seconds=i)).isoformat(),
                "last_seen_at": (T0 + dt.timedelta(days=30, seconds=i)).isoformat()
                if i % 10
                else "",
            }
        )
    return rows


def _write_csv(path: pathlib.Path, rows: list[dict[str, str]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(devices.IMPORT_FIELDS))
        writer.writeheader()
        writer.writerows(rows)


def _same(field: str, given: str, exported: str) -> bool:
    if field in ("registered_at", "last_seen_at"):
        return dt.datetime.fromisoformat(given) == dt.datetime.fromisoformat(exported)
    if field == "attributes":
        return json.loads(given or "{}") == json.loads(exported)
    return given == exported


async def test_import_of_100000_rows_then_export_round_trip(
    pushgres: Pushgres, conn: asyncpg.Connection, tmp_path: pathlib.Path
) -> None:
    rows = _generated_rows(IMPORT_ROWS)
    source = tmp_path / "devices.csv"
    _write_csv(source, rows)
    started = time.monotonic()
    imported = await pushgres("import", "--file", str(source))
    took_s = time.monotonic() - started
    assert (imported.code, imported.out) == (0, "inserted 100000, updated 0, moved 0\n"), (
        imported.err
    )
    assert took_s < 60, f"{IMPORT_ROWS} rows took {took_s:.1f}s"
    print(f"imported {IMPORT_ROWS} rows in {took_s:.2f}s ({IMPORT_ROWS / took_s:,.0f} rows/s)")
    assert (
        await conn.fetchval("SELECT count(*) FROM pushgres.device_events WHERE event = 'imported'")
        == IMPORT_ROWS
    )

    exported = await pushgres("export", "--format", "csv")
    assert exported.code == 0, exported.err
    back = {(r["app"], r["token"]): r for r in csv.DictReader(io.StringIO(exported.out))}
    assert len(back) == IMPORT_ROWS
    for row in rows:
        out = back[(row["app"], row["token"])]
        assert out["state"] == "active" and out["state_reason"] == ""
        for field, given in row.items():
            if field == "last_seen_at" and not given:
                # Not given: the registration's time.
                assert out[field] == out["registered_at"]
                continue
            assert _same(field, given, out[field]), (field, given, out[field])

    android = {r["token"]: r for r in rows if r["app"] == "android"}
    objects = (await pushgres("export", "--app", "android")).objects
    assert len(objects) == len(android)
    for o in objects:
        given = android[o["token"]]
        assert o["attributes"] == json.loads(given["attributes"] or "{}")
        assert o["user_id"] == (given["user_id"] or None) and o["environment"] is None


async def test_import_meets_known_devices(pushgres: Pushgres, conn: asyncpg.Connection) -> None:
    dead_at = dt.datetime.now(dt.UTC) - dt.timedelta(days=1)
    await devices.register(conn, APP, "apns", T1, user_id="alice", attributes={"a": 1})
    await devices.register(conn, APP, "apns", T2)  # anonymous
    for token in (T3, T4):
        await devices.register(conn, APP, "apns", token, user_id="erin")
        await conn.execute(
            "UPDATE pushgres.devices SET state = 'invalid', state_reason = 'Unregistered',"
            " invalidated_at = $2::timestamptz, last_seen_at = $2::timestamptz - interval '1 day' WHERE token = $1",
            token,
            dead_at,
        )
        await conn.execute(
            "INSERT INTO pushgres.invalid_tokens (app, device_token, reason, provider_timestamp)"
            " VALUES ($1, $2, 'Unregistered', $3)",
            APP,
            token,
            dead_at,
        )
    # Not in the registry, but a provider declared it dead after the row's last sighting.
    dead_new = devkit.apns_token("ok", 5)
    await conn.execute(
        "INSERT INTO pushgres.invalid_tokens (app, device_token, reason, provider_timestamp)"
        " VALUES ($1, $2, 'BadDeviceToken', $3)",
        APP,
        dead_new,
        dead_at,
    )
    before = await devices.device(conn, APP, T1)
    assert before is not None
    lines = [
        {"token": T1, "platform": "apns", "user_id": "bob", "attributes": {"b": 2},
         "last_seen_at": "2020-01-01T00:00:00Z", "locale": "de-DE"},
        {"token": T2, "platform": "apns", "user_id": "carol"},
        {"token": T3, "platform": "apns", "last_seen_at": (dead_at + dt.timedelta(hours=1)).isoformat()},
        {"token": T4, "platform": "apns", "last_seen_at": (dead_at - dt.timedelta(hours=1)).isoformat()},
        {"token": dead_new, "platform": "apns", "user_id": "fay",
         "last_seen_at": (dead_at - dt.timedelta(hours=1)).isoformat()},
    ]  # fmt: skip
    stdin = "\n".join(json.dumps(line) for line in lines).encode()
    ran = await pushgres("import", "--file", "-", "--app", APP, stdin=stdin)
    assert (ran.code, ran.out) == (0, "inserted 1, updated 3, moved 1\n"), ran.err

    moved = await devices.device(conn, APP, T1)
    assert moved is not None and moved.user_id == "bob" and moved.locale == "de-DE"
    assert moved.attributes == {"a": 1, "b": 2}
    assert moved.last_seen_at == before.last_seen_at  # the later of both
    assert moved.registered_at == before.registered_at
    assert (await devices.history(conn, APP, T1))[-1].detail == {"from": "alice", "imported": True}
    identified = await devices.device(conn, APP, T2)
    assert identified is not None and identified.user_id == "carol"
    # Seen after the provider's timestamp: active again, and no longer a dead token.
    back = await devices.device(conn, APP, T3)
    assert back is not None and back.state == "active" and back.invalidated_at is None
    assert (await devices.history(conn, APP, T3))[-1].detail == {"reactivated_from": "invalid"}
    still = await devices.device(conn, APP, T4)
    assert still is not None and still.state == "invalid" and still.invalidated_at == dead_at
    dead = await devices.device(conn, APP, dead_new)
    assert dead is not None and dead.state == "invalid" and dead.user_id == "fay"
    assert dead.state_reason == "BadDeviceToken" and dead.invalidated_at == dead_at
    dead_tokens = await conn.fetch("SELECT device_token FROM pushgres.invalid_tokens")
    assert {r[0] for r in dead_tokens} == {T4, dead_new}
    events = await conn.fetch(
        "SELECT token, event FROM pushgres.device_events WHERE event IN ('imported', 'moved')"
    )
    assert sorted((r["token"], r["event"]) for r in events) == sorted(
        [(T1, "moved"), (T2, "imported"), (T3, "imported"), (T4, "imported"),
         (dead_new, "imported")]
    )  # fmt: skip


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ({"environment": "staging"}, "row 537: environment: environment must be production"),
        ({"token": "xyz"}, "row 537: token: an APNs device token is hexadecimal"),
        ({"attributes": "[1, 2]"}, "row 537: attributes: attributes must be a JSON object"),
        ({"registered_at": "yesterday"}, "row 537: registered_at: not an ISO 8601 time"),
        # Refused by the server's checks, after the copy: rolled back all the same.
        ({"timezone": "Mars/Olympus"}, "row 537: timezone: 'Mars/Olympus' is not an IANA"),
        ({"token": T1}, "row 537: platform: the device is registered for fcm already"),
        ({"token": f"{5:064x}"}, "row 537: token: the same device (app and token) as row 4"),
    ],
)
async def test_a_bad_row_is_named_and_nothing_is_written(
    pushgres: Pushgres,
    conn: asyncpg.Connection,
    tmp_path: pathlib.Path,
    bad: dict[str, str],
    message: str,
) -> None:
    await conn.execute(
        "INSERT INTO pushgres.devices (app, platform, token) VALUES ('ios', 'fcm', $1)", T1
    )
    rows = [r for r in _generated_rows(3000) if r["app"] == "ios"][:1000]
    rows[536].update(bad)
    source = tmp_path / "devices.csv"
    _write_csv(source, rows)
    ran = await pushgres("import", "--file", str(source))
    assert ran.code == 1
    assert message in ran.err and ran.err.count("\n") == 1, ran.err
    assert await conn.fetchval("SELECT count(*) FROM pushgres.devices") == 1
    assert await conn.fetchval("SELECT count(*) FROM pushgres.device_events") == 0


async def test_export_filters_by_state_and_app(
    pushgres: Pushgres, conn: asyncpg.Connection
) -> None:
    for app, token in ((APP, T1), (APP, T2), (APP, T3), ("other", T4)):
        await devices.register(conn, app, "apns", token)
    await devices.unregister(conn, APP, T2)
    await devices.unregister(conn, "other", T4)
    await conn.execute(
        "UPDATE pushgres.devices SET state = 'invalid', state_reason = 'BadDeviceToken',"
        " invalidated_at = now() WHERE token = $1",
        T3,
    )

    async def tokens(*args: str) -> list[tuple[str, str, str]]:
        ran = await pushgres("export", *args)
        assert ran.code == 0, ran.err
        return [(d["app"], d["token"], d["state"]) for d in ran.objects]

    everything = await tokens()
    assert everything == sorted(everything) and len(everything) == 4
    assert await tokens("--state", "active") == [(APP, T1, "active")]
    assert await tokens("--state", "invalid", "--state", "unregistered") == sorted(
        [(APP, T2, "unregistered"), (APP, T3, "invalid"), ("other", T4, "unregistered")]
    )
    assert await tokens("--app", "other", "--state", "active") == []
    [invalid] = (await pushgres("export", "--state", "invalid")).objects
    assert invalid["state_reason"] == "BadDeviceToken" and invalid["invalidated_at"]
    csv_out = (await pushgres("export", "--app", APP, "--format", "csv")).out
    assert csv_out.splitlines()[0] == ",".join(devices.EXPORT_FIELDS)
    assert len(csv_out.splitlines()) == 4


def test_every_devices_subcommand_and_flag_is_described() -> None:
    from pushgres.cli import _parser

    def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
        action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        return dict(action.choices)

    described = subcommands(subcommands(_parser())["devices"])
    assert set(described) == {
        "register", "identify", "logout", "rotate", "unregister", "show", "history", "import",
        "export", "uninstalls",
    }  # fmt: skip
    for name, sub in described.items():
        assert sub.description and "--dsn" in sub.format_help(), name
        for action in sub._actions:
            assert action.help, (name, action.dest)
