"""``pushgres check-credentials`` against the real simulators over TLS: every credential
problem named, nothing delivered, no secret printed, every check within its deadline."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import pathlib
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest

from pushgres.config import AppConfig, load_config
from pushgres.providers import PROVIDERS
from pushgres.providers.apns.credentials import PROBE_DEVICE_TOKEN
from pushgres.providers.credentials import (
    Check,
    CredentialReport,
    check_apps,
    exit_status,
    format_table,
    status_of,
    to_json,
)
from pushgres.providers.fcm.credentials import PROBE_REGISTRATION_TOKEN
from pushgres.simulator import Simulators, devkit

from .harness import APNS_APP, FCM_APP, write_config

TIMEOUT_S = 3.0
NOW = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)


@dataclass
class Env:
    setup: devkit.DevSetup
    sims: Simulators
    ca: devkit.CaFiles
    tmp: pathlib.Path
    # A second key of the simulated team, enabled for the sandbox only.
    sandbox_key: devkit.ApnsKey

    def config(self, name: str, extra: str = "", **overrides: str) -> pathlib.Path:
        """The harness's two apps (``ios``: token key, ``android``) plus ``extra`` tables."""
        path = write_config(
            self.tmp / f"{name}.toml",
            dsn="postgresql://unused@127.0.0.1/unused",
            setup=self.setup,
            sims=self.sims,
            **overrides,
        )
        path.write_text(path.read_text() + extra)
        return path

    def apns_table(self, name: str, credentials: str, environment: str = "production") -> str:
        port = self.sims.apns_production_port
        if environment == "sandbox":
            port = self.sims.apns_sandbox_port
        return f"""
[apps.{name}]
platform = "apns"
environment = "{environment}"
topic = "{self.setup.apns_topic}"
{credentials}
endpoint = "https://127.0.0.1:{port}"
tls_server_name = "localhost"
ca_file = "{self.setup.ca_file}"
"""

    def certificate_app(self, name: str, cert: devkit.ClientCertificate, **kw: str) -> str:
        credentials = (
            f'auth = "certificate"\np12_file = "{cert.p12_file}"\n'
            f'p12_password = "{cert.p12_password}"'
        )
        return self.apns_table(name, credentials, **kw)

    def key_app(self, name: str, key: devkit.ApnsKey, **kw: str) -> str:
        credentials = (
            f'key_file = "{key.key_file}"\nkey_id = "{key.key_id}"\nteam_id = "{key.team_id}"'
        )
        return self.apns_table(name, credentials, **kw)

    def fcm_app(self, name: str, service_account: str, project: str | None = None) -> str:
        project_line = f'project_id = "{project}"' if project else ""
        return f"""
[apps.{name}]
platform = "fcm"
service_account_file = "{service_account}"
{project_line}
endpoint = "https://127.0.0.1:{self.sims.fcm_port}"
tls_server_name = "localhost"
ca_file = "{self.setup.ca_file}"
"""

    def cert(self, name: str, **kw: Any) -> devkit.ClientCertificate:
        topic = kw.pop("topic", self.setup.apns_topic)
        return devkit.generate_apns_client_cert(
            self.tmp, self.ca, topic, f"pw-{name}-secret", name=name, **kw
        )


@pytest.fixture
async def env(tmp_path: pathlib.Path) -> AsyncIterator[Env]:
    setup = devkit.make_dev_setup(tmp_path / "sim")
    sandbox_key = devkit.generate_apns_key(tmp_path / "keys", setup.apns_team_id, "SANDBOX123")
    config = setup.config
    config.teams[setup.apns_team_id]["keys"][sandbox_key.key_id] = {
        "public_key_pem": sandbox_key.public_key_pem,
        "env": "sandbox",
    }
    config.projects["locked-project"] = {
        "number": "210987654321",
        "service_accounts": [setup.client_email],
        "api_enabled": False,
    }
    ca = devkit.CaFiles(
        setup.ca_file,
        str(pathlib.Path(setup.directory) / "ca.key"),
        setup.server_cert_file,
        setup.server_key_file,
    )
    async with Simulators(config) as sims:
        yield Env(setup, sims, ca, tmp_path, sandbox_key)


def apps_of(path: pathlib.Path, *names: str) -> list[AppConfig]:
    settings = load_config(path, environ={})
    return [settings.app(name) for name in names]


async def check(path: pathlib.Path, *names: str) -> dict[str, CredentialReport]:
    reports = await check_apps(apps_of(path, *names), timeout_s=TIMEOUT_S)
    return {r.app: r for r in reports}


def checks(report: CredentialReport) -> dict[str, Check]:
    return {c.name: c for c in report.checks}


def assert_nothing_delivered(env: Env) -> None:
    counts = env.sims.accepted_counts()
    assert counts == {"apns": {}, "apns_ids": {}, "fcm": {}}, counts


# -- APNs --------------------------------------------------------------------------------------


async def test_good_token_key_is_proven_by_bad_device_token(env: Env) -> None:
    report = (await check(env.config("good"), APNS_APP))[APNS_APP]
    assert report.ok, report
    assert report.kind == "token key" and report.expires_at is None and report.hint is None
    assert [c.name for c in report.checks] == ["key", "key id", "team id", "APNs"]
    assert "BadDeviceToken" in checks(report)["APNs"].detail
    assert env.setup.apns_key_id in report.summary and "production" in report.summary
    assert_nothing_delivered(env)
    assert env.sims.apns.responses["400:BadDeviceToken"] == 1


async def test_good_certificate(env: Env) -> None:
    cert = env.cert("good")
    report = (await check(env.config("cert", env.certificate_app("c", cert)), "c"))["c"]
    assert report.ok, report
    assert report.kind == "certificate"
    found = checks(report)
    assert f"UID={env.setup.apns_topic}" in found["subject"].detail
    assert found["environment"].detail == "for sandbox and production"
    assert report.expires_at is not None
    left = report.expires_at - dt.datetime.now(dt.UTC)
    assert dt.timedelta(days=364) < left <= dt.timedelta(days=365)
    assert (
        PROVIDERS["apns"].credential_expiry(
            apps_of(env.config("x", env.certificate_app("c", cert)), "c")[0]
        )
        == report.expires_at
    )
    assert_nothing_delivered(env)


async def test_certificate_expiring_soon_fails_only_within_warn_days(env: Env) -> None:
    cert = env.cert("soon", valid_days=5)
    report = (await check(env.config("soon", env.certificate_app("s", cert)), "s"))["s"]
    assert report.ok, report  # it works today
    assert exit_status([report], 14) == 1
    assert exit_status([report], 3) == 0
    assert status_of(report, warn_days=14) == "expiring"
    table = format_table([report], warn_days=14)
    assert "EXPIRING" in table and "(in 4 days)" in table
    assert "s: renew the certificate before" in table


async def test_expired_certificate(env: Env) -> None:
    cert = env.cert("old", not_after=dt.datetime.now(dt.UTC) - dt.timedelta(days=2))
    report = (await check(env.config("old", env.certificate_app("o", cert)), "o"))["o"]
    assert not report.ok
    found = checks(report)
    assert not found["validity"].ok and "expired on" in found["validity"].detail
    # APNs (like the simulator's TLS) refuses the expired certificate at the handshake.
    assert not found["APNs"].ok and "refused the TLS connection" in found["APNs"].detail
    assert report.summary.startswith("validity: expired on")
    assert report.hint and "renew" in report.hint
    assert status_of(report, warn_days=0) == "failed" and exit_status([report], 0) == 1


async def test_certificate_for_the_wrong_environment(env: Env) -> None:
    cert = env.cert("sbx", environment="sandbox")
    report = (await check(env.config("sbx", env.certificate_app("w", cert)), "w"))["w"]
    assert not report.ok
    found = checks(report)
    assert "for sandbox only" in found["environment"].detail
    assert found["APNs"].detail.startswith("403 BadCertificateEnvironment")
    assert report.hint and "`environment`" in report.hint
    # The same certificate is fine for an app configured for the sandbox.
    sandbox = env.certificate_app("w", cert, environment="sandbox")
    assert (await check(env.config("sbx2", sandbox), "w"))["w"].ok


async def test_certificate_for_another_topic(env: Env) -> None:
    cert = env.cert("other", topic="com.other.app")
    report = (await check(env.config("topic", env.certificate_app("t", cert)), "t"))["t"]
    assert not report.ok
    found = checks(report)
    assert not found["topic"].ok and "com.other.app" in found["topic"].detail
    assert found["APNs"].detail.startswith("400 TopicDisallowed")
    assert report.hint and "`topic`" in report.hint


async def test_token_key_unknown_to_apns(env: Env) -> None:
    stranger = devkit.generate_apns_key(env.tmp / "stranger", env.setup.apns_team_id, "STRANGER12")
    report = (await check(env.config("unknown", env.key_app("k", stranger)), "k"))["k"]
    assert not report.ok
    assert checks(report)["key"].ok
    assert checks(report)["APNs"].detail.startswith("403 InvalidProviderToken")
    assert report.hint and "`key_id`" in report.hint and "`team_id`" in report.hint


async def test_sandbox_key_against_production(env: Env) -> None:
    path = env.config(
        "envkey",
        env.key_app("p", env.sandbox_key)
        + env.key_app("s", env.sandbox_key, environment="sandbox"),
    )
    reports = await check(path, "p", "s")
    assert not reports["p"].ok
    assert checks(reports["p"])["APNs"].detail.startswith("403 BadEnvironmentKeyIdInToken")
    assert reports["p"].hint and "other APNs environment" in reports["p"].hint
    assert reports["s"].ok, reports["s"]


async def test_key_file_named_for_another_key(env: Env) -> None:
    key = devkit.ApnsKey(
        env.setup.apns_key_file, "OTHERKEY99", env.setup.apns_team_id, env.setup.apns_public_key_pem
    )
    report = (await check(env.config("named", env.key_app("n", key)), "n"))["n"]
    assert not report.ok
    assert not checks(report)["key id"].ok
    assert "AuthKey_<key id>.p8" in (report.hint or "")


# -- FCM ---------------------------------------------------------------------------------------


async def test_fcm_good(env: Env) -> None:
    report = (await check(env.config("fcm"), FCM_APP))[FCM_APP]
    assert report.ok, report
    assert report.kind == "service account"
    assert [c.name for c in report.checks] == ["service account", "OAuth", "FCM"]
    assert "INVALID_ARGUMENT" in checks(report)["FCM"].detail
    assert env.setup.fcm_project in report.summary
    assert_nothing_delivered(env)
    assert PROVIDERS["fcm"].credential_expiry(apps_of(env.config("f"), FCM_APP)[0]) is None


async def test_fcm_project_not_permitted(env: Env) -> None:
    path = env.config(
        "denied",
        env.fcm_app("denied", env.setup.service_account_file, "someone-elses-project")
        + env.fcm_app("disabled", env.setup.service_account_file, "locked-project"),
    )
    reports = await check(path, "denied", "disabled")
    denied = reports["denied"]
    assert not denied.ok
    assert checks(denied)["OAuth"].ok
    assert checks(denied)["FCM"].detail.startswith("403 PERMISSION_DENIED")
    assert denied.hint and "`project_id`" in denied.hint
    disabled = reports["disabled"]
    assert not disabled.ok
    assert disabled.hint and "enable it" in disabled.hint


async def test_fcm_oauth_refused(env: Env) -> None:
    # A well-formed service account the token endpoint does not know.
    stranger = devkit.generate_service_account(
        env.tmp / "stranger",
        env.setup.fcm_project,
        "stranger@demo-project.iam.gserviceaccount.com",
        env.sims.oauth_url,
    )
    broken = env.tmp / "broken.json"
    broken.write_text("{not json")
    path = env.config(
        "oauth", env.fcm_app("stranger", stranger.file) + env.fcm_app("broken", str(broken))
    )
    reports = await check(path, "stranger", "broken")
    oauth = checks(reports["stranger"])["OAuth"]
    assert not oauth.ok and "invalid_grant" in oauth.detail
    assert reports["stranger"].hint and "key" in reports["stranger"].hint
    assert "FCM" not in checks(reports["stranger"])
    assert not checks(reports["broken"])["service account"].ok
    assert "not valid JSON" in reports["broken"].summary


# -- deadlines ---------------------------------------------------------------------------------


async def test_a_provider_that_never_answers_fails_within_the_timeout(env: Env) -> None:
    env.sims.register_tokens(
        {"apns": {PROBE_DEVICE_TOKEN: "blackhole"}, "fcm": {PROBE_REGISTRATION_TOKEN: "blackhole"}}
    )
    started = time.monotonic()
    reports = await check_apps(apps_of(env.config("hole"), APNS_APP, FCM_APP), timeout_s=1.5)
    elapsed = time.monotonic() - started
    assert elapsed < 1.5 + 1.5, elapsed  # concurrently, each within its deadline (+ closing)
    for report in reports:
        assert not report.ok
        last = report.checks[-1]
        assert not last.ok and "no answer from 127.0.0.1" in last.detail
        assert "within 1.5s" in last.detail
        assert report.hint and "does not answer" in report.hint


class _Stuck:
    """A provider whose check never returns (and ignores its own deadline)."""

    platform = "apns"

    async def check_credentials(
        self, app: AppConfig, *, timeout_s: float, now: dt.datetime
    ) -> CredentialReport:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")


class _Broken:
    platform = "apns"

    async def check_credentials(
        self, app: AppConfig, *, timeout_s: float, now: dt.datetime
    ) -> CredentialReport:
        raise RuntimeError("a bug")


async def test_a_stuck_or_broken_provider_check_becomes_a_failed_check(env: Env) -> None:
    apps = apps_of(env.config("stuck"), APNS_APP)
    started = time.monotonic()
    # Fakes with only the member check_apps uses.
    stuck_provider: dict[str, Any] = {"apns": _Stuck()}
    (stuck,) = await check_apps(apps, timeout_s=0.5, providers=stuck_provider)
    assert time.monotonic() - started < 0.5 + 1.5
    assert not stuck.ok and stuck.summary == "deadline: the check did not finish within 0.5s"
    broken_provider: dict[str, Any] = {"apns": _Broken()}
    (broken,) = await check_apps(apps, timeout_s=0.5, providers=broken_provider)
    assert not broken.ok and broken.summary == "check: RuntimeError: a bug"
    (unknown,) = await check_apps(apps, timeout_s=0.5, providers={})
    assert not unknown.ok and "no provider" in unknown.summary


# -- the command line --------------------------------------------------------------------------


async def cli(*args: str) -> tuple[int, str, str]:
    # A subprocess, awaited: the simulators answer from this test's event loop meanwhile.
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "pushgres",
        "check-credentials",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


def _secrets(env: Env, *certs: devkit.ClientCertificate) -> list[str]:
    """Every secret the checks handled, as text that must never be printed."""
    found: list[str] = []
    key_lines = pathlib.Path(env.setup.apns_key_file).read_text().splitlines()
    found += [line for line in key_lines if line and not line.startswith("-----")]
    account = json.loads(pathlib.Path(env.setup.service_account_file).read_text())
    found += [line for line in account["private_key"].splitlines() if not line.startswith("---")]
    for cert in certs:
        found.append(cert.p12_password)
        found += [
            line
            for line in pathlib.Path(cert.key_file).read_text().splitlines()
            if line and not line.startswith("-----")
        ]
    jwts = [t for t in env.sims.apns.verified] + [t for t in env.sims.apns_sandbox.verified]
    access_tokens = list(env.sims.oauth.tokens)
    assert jwts and access_tokens  # the checks did authenticate
    for token in jwts:
        found += token.split(".")  # header, claims and signature, each on its own
    found += access_tokens
    found += [t.removeprefix("ya29.") for t in access_tokens]
    return found


async def test_cli_table_json_exit_status_and_no_secrets(env: Env) -> None:
    soon = env.cert("soon", valid_days=5)
    good = env.config("cli", env.certificate_app("cert", soon))
    code, out, err = await cli("--config", str(good), "--timeout-s", "5", "--warn-days", "3")
    assert code == 0, (out, err)
    lines = out.splitlines()
    assert lines[0].split() == ["APP", "PLATFORM", "CREDENTIAL", "EXPIRES", "STATUS", "DETAIL"]
    rows = {line.split()[0]: line for line in lines[1:] if line}
    assert set(rows) == {APNS_APP, FCM_APP, "cert"}
    assert "token key" in rows[APNS_APP] and " ok " in rows[APNS_APP]
    assert "service account" in rows[FCM_APP]
    assert "(in 4 days)" in rows["cert"]
    assert err == ""

    code, out, err = await cli("--config", str(good), "--timeout-s", "5")  # warn 14 days
    assert code == 1, (out, err)
    assert "EXPIRING" in out and "cert: renew the certificate before" in out

    code, out, _ = await cli("--config", str(good), "--json", "--app", "cert", "--app", "ios")
    assert code == 1
    data = json.loads(out)
    assert [item["app"] for item in data] == ["cert", APNS_APP]
    assert data[0]["status"] == "expiring" and data[0]["ok"] is True
    assert data[1]["status"] == "ok" and data[1]["credential"] == "token key"
    assert {c["name"] for c in data[1]["checks"]} == {"key", "key id", "team id", "APNs"}
    printed = [out]

    wrong = env.cert("wrong", environment="sandbox")
    broken = env.config("broken", env.certificate_app("wrong", wrong))
    code, out, err = await cli("--config", str(broken))
    assert code == 1
    assert "FAILED" in out and "wrong: the certificate belongs to the other APNs environment" in out
    printed.append(out)
    code, out, _ = await cli("--config", str(broken), "--json")
    assert code == 1 and json.loads(out)[-1]["hint"]
    printed.append(out + err)

    code, out, err = await cli("--config", str(good), "--app", "nope")
    assert code == 1 and out == ""
    assert "has no app 'nope'" in err and "Traceback" not in err
    code, _, err = await cli("--config", str(good), "--warn-days", "-1")
    assert code == 2

    everything = "\n".join(printed)
    for secret in _secrets(env, soon, wrong):
        assert secret not in everything, "a secret was printed"
    assert_nothing_delivered(env)


# -- the report helpers ------------------------------------------------------------------------


def _report(app: str, *, ok: bool = True, expires: dt.datetime | None = None) -> CredentialReport:
    return CredentialReport(
        app=app,
        platform="apns",
        kind="certificate",
        ok=ok,
        summary="fine" if ok else "APNs: 403 BadCertificate",
        checks=(Check("APNs", ok, "x"),),
        expires_at=expires,
        hint=None if ok else "use the app's certificate",
    )


def test_status_and_exit_status_judge_expiry_against_now() -> None:
    in_10 = _report("a", expires=NOW + dt.timedelta(days=10))
    assert status_of(in_10, warn_days=14, now=NOW) == "expiring"
    assert status_of(in_10, warn_days=9, now=NOW) == "ok"
    gone = _report("b", expires=NOW - dt.timedelta(seconds=1))
    assert status_of(gone, warn_days=0, now=NOW) == "failed"
    assert exit_status([], 14, now=NOW) == 0
    assert exit_status([_report("c")], 14, now=NOW) == 0
    assert exit_status([_report("c"), _report("d", ok=False)], 14, now=NOW) == 1


def test_format_table_and_json() -> None:
    reports = [
        _report("ios", expires=NOW + dt.timedelta(days=200)),
        _report("ios-old", ok=False, expires=NOW - dt.timedelta(days=3)),
        _report("ios-soon", expires=NOW + dt.timedelta(days=1, hours=1)),
        _report("android"),
    ]
    table = format_table(reports, warn_days=14, now=NOW)
    assert table.splitlines() == [
        "APP       PLATFORM  CREDENTIAL   EXPIRES                   STATUS    DETAIL",
        "ios       apns      certificate  2030-07-20 (in 200 days)  ok        fine",
        "ios-old   apns      certificate  2029-12-29 (expired)      FAILED    APNs: 403 BadCertificate",
        "ios-soon  apns      certificate  2030-01-02 (in 1 day)     EXPIRING  fine",
        "android   apns      certificate  -                         ok        fine",
        "",
        "ios-old: use the app's certificate",
        "ios-soon: renew the certificate before 2030-01-02 01:00 UTC",
    ]
    data = json.loads(to_json(reports, warn_days=14, now=NOW))
    assert [d["status"] for d in data] == ["ok", "failed", "expiring", "ok"]
    assert data[1] == {
        "app": "ios-old",
        "platform": "apns",
        "credential": "certificate",
        "ok": False,
        "status": "failed",
        "summary": "APNs: 403 BadCertificate",
        "expires_at": "2029-12-29T00:00:00+00:00",
        "hint": "use the app's certificate",
        "checks": [{"name": "APNs", "ok": False, "detail": "x"}],
    }
    assert "status" not in json.loads(to_json(reports))[0]
