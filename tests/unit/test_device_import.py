"""Import rows are checked before any database work: each refusal names the row and field."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from pushgres import devices
from pushgres.exceptions import DeviceError

TOKEN = "ab" * 32
GOOD: dict[str, Any] = {"app": "ios", "platform": "apns", "token": TOKEN}


class NoDatabase:
    """A connection that must not be used: the rows are refused first."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"the database was used ({name}) before the rows were checked")


async def _refusal(rows: list[Any], **kwargs: Any) -> str:
    with pytest.raises(DeviceError) as info:
        await devices.import_devices(NoDatabase(), rows, **kwargs)  # type: ignore[arg-type]
    return str(info.value)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"app": None}, "row 2: app: missing (give it in each row, or a default app)"),
        ({"app": "bad app"}, "row 2: app: 'bad app' is not an app name"),
        ({"platform": ""}, "row 2: platform: missing"),
        ({"platform": "webpush"}, "row 2: platform: platform must be apns or fcm"),
        ({"platform": ["apns"]}, "row 2: platform: platform must be apns or fcm"),
        ({"token": None}, "row 2: token: missing"),
        ({"token": 123}, "row 2: token: must be a string"),
        ({"token": "zz"}, "row 2: token: an APNs device token is hexadecimal"),
        ({"token": "a" * 4097}, "row 2: token: a device token is 1-4096 characters"),
        ({"platform": "fcm", "token": "a b"}, "row 2: token: an FCM device token holds only"),
        ({"user_id": "u" * 257}, "row 2: user_id: a user id is 1-256 characters"),
        ({"user_id": True}, "row 2: user_id: must be a string, got bool"),
        ({"locale": 5}, "row 2: locale: must be a string, got int"),
        ({"installation_id": "a\x00b"}, "row 2: installation_id: holds a NUL character"),
        ({"environment": "staging"}, "row 2: environment: environment must be production"),
        ({"attributes": "{"}, "row 2: attributes: not valid JSON"),
        ({"attributes": "[1]"}, "row 2: attributes: attributes must be a JSON object"),
        ({"attributes": {"a": "\x00"}}, "row 2: attributes: holds a NUL character"),
        ({"attributes": {1: "x"}}, "row 2: attributes: not JSON data"),
        ({"registered_at": "soon"}, "row 2: registered_at: not an ISO 8601 time: 'soon'"),
        ({"last_seen_at": 1e20}, "row 2: last_seen_at: 1e+20 is not a Unix time"),
        ({"last_seen_at": dt.date(2025, 1, 1)}, "row 2: last_seen_at: must be an ISO 8601"),
        ({"userid": "x"}, "row 2: userid: not a device field (the fields: app, platform"),
        ({"state": "active"}, "row 2: state: not imported: the registry decides"),
    ],
)
async def test_a_bad_field_is_named_by_row_and_field(changes: dict[str, Any], message: str) -> None:
    # Row 1 holds what is accepted: an integer user id, empty strings, text times, escapes.
    first = {
        **GOOD,
        "token": "cd" * 32,
        "user_id": 42,
        "locale": "",
        "registered_at": "2025-01-01T00:00:00",
        "last_seen_at": 1_735_689_600,
        "attributes": {"path": "C:\\u0000"},
    }
    assert message in await _refusal([first, {**GOOD, **changes}])


async def test_a_device_appears_once_per_app() -> None:
    rows = [GOOD, {**GOOD, "app": "other"}, {**GOOD, "token": TOKEN.upper()}, GOOD]
    assert await _refusal(rows) == "row 4: token: the same device (app and token) as row 1"


async def test_the_default_app_fills_rows_without_one() -> None:
    rows = [{"platform": "apns", "token": TOKEN}, {**GOOD, "platform": "x"}]
    assert (await _refusal(rows, default_app="ios")).startswith("row 2: platform")
    assert "is not an app name" in await _refusal(rows, default_app="no such app")


async def test_rows_that_are_not_mappings() -> None:
    assert await _refusal([GOOD, ["ios", "apns"]]) == (
        "row 2: expected field names and values, got list"
    )


async def test_no_rows_import_nothing_without_a_database() -> None:
    report = await devices.import_devices(NoDatabase(), [])  # type: ignore[arg-type]
    assert report == devices.ImportReport(inserted=0, updated=0, moved=0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"app": "bad app"}, "is not an app name"),
        ({"states": ["gone"]}, "'gone' is not a device state \\(active, invalid"),
        ({"states": "active"}, "states is a list of states"),
    ],
)
async def test_export_checks_its_arguments(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(DeviceError, match=message):
        async for _ in devices.export_devices(NoDatabase(), **kwargs):  # type: ignore[arg-type]
            pass


def test_a_device_as_plain_data() -> None:
    at = dt.datetime(2025, 1, 2, 3, 4, 5, 678, tzinfo=dt.UTC)
    device = devices.Device(
        app="ios", platform="apns", token=TOKEN, user_id="u1", installation_id=None,
        environment="sandbox", timezone="Europe/Paris", locale="fr-FR", app_version="1.0",
        attributes={"plan": "pro"}, state="invalid", state_reason="Unregistered",
        invalidated_at=at, registered_at=at, last_seen_at=at, state_changed_at=at,
    )  # fmt: skip
    data = devices.as_dict(device)
    assert tuple(data) == devices.EXPORT_FIELDS
    assert devices.EXPORT_FIELDS[: len(devices.IMPORT_FIELDS)] == devices.IMPORT_FIELDS
    assert data["registered_at"] == "2025-01-02T03:04:05.000678+00:00"
    assert data["invalidated_at"] == data["state_changed_at"] == data["last_seen_at"]
    assert data["attributes"] == {"plan": "pro"} and data["installation_id"] is None
