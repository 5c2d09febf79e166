"""The admin listener against a real daemon: /metrics, /healthz, /readyz, /dashboard/data.json.

Real PostgreSQL, the simulators over TLS, a daemon in this loop with ``[admin] listen`` on an
ephemeral loopback port, and aiohttp as the scraper.
"""

from __future__ import annotations

import asyncio
import logging
import pathlib
import time
from typing import Any

import aiohttp
import pytest
from cryptography import x509
from prometheus_client.parser import text_string_to_metric_families

from pushgres.exceptions import ConfigError
from pushgres.providers.apns.reasons import bad_device_token_detail
from pushgres.simulator import devkit

from .harness import apns, enqueue, fcm, running_daemon, settings_for, wait_terminal, write_config

ADMIN = '\n[admin]\nlisten = "127.0.0.1:0"\nqueue_sample_interval_s = 1\n'


def _with_admin(env: dict[str, Any], name: str = "admin.toml", **kwargs: Any) -> pathlib.Path:
    path = write_config(
        env["tmp"] / name, dsn=env["dsn"], setup=env["setup"], sims=env["sims"], **kwargs
    )
    path.write_text(path.read_text() + ADMIN)
    return path


async def _get(url: str) -> tuple[int, str, str]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(url, timeout=aiohttp.ClientTimeout(total=10), allow_redirects=False) as resp,
    ):
        return resp.status, resp.headers.get("Content-Type", ""), await resp.text()


def _samples(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, []).append((dict(sample.labels), sample.value))
    return out


def _value(samples: dict[str, Any], name: str, **labels: str) -> float:
    found = [
        v for lab, v in samples.get(name, []) if all(lab.get(k) == x for k, x in labels.items())
    ]
    assert found, f"no sample {name} {labels}"
    return sum(found)


async def test_metrics_health_and_readiness_of_a_draining_daemon(env: dict[str, Any]) -> None:
    sims, dsn, setup = env["sims"], env["dsn"], env["setup"]
    config = _with_admin(env)
    ok = [devkit.apns_token("ok", i) for i in range(300)]
    dead = [devkit.apns_token("Unregistered", i) for i in range(20)]
    bad = [devkit.apns_token("BadDeviceToken", i) for i in range(5)]
    android = [devkit.fcm_token("ok", i) for i in range(100)]
    items = [apns(t) for t in ok + dead + bad] + [fcm(t) for t in android]
    async with running_daemon(settings_for(config)) as daemon:
        deadline = time.monotonic() + 10
        while daemon.admin_url is None:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)
        base = daemon.admin_url
        assert base.startswith("http://127.0.0.1:")
        ids = await enqueue(dsn, items)
        await wait_terminal(dsn, ids)
        # Queue gauges come from a sample on a timer (1 s here), not from the scrape.
        deadline = time.monotonic() + 10
        while True:
            status, ctype, text = await _get(f"{base}/metrics")
            samples = _samples(text)
            depth = [v for lab, v in samples.get("pushgres_queue_ready", []) if lab["app"] == "ios"]
            sampled = samples.get("pushgres_queue_sampled_timestamp_seconds", [])
            if sampled and sampled[0][1] > time.time() - 1.5 and not any(depth):
                break
            assert time.monotonic() < deadline, "no fresh queue sample"
            await asyncio.sleep(0.2)
        assert status == 200 and ctype.startswith("text/plain")
        assert _value(samples, "pushgres_notifications_total", app="ios", status="sent") == 300
        labels = {"app": "ios", "status": "token_invalid"}
        invalid = "pushgres_notifications_total"
        assert _value(samples, invalid, **labels, reason="Unregistered") == 20
        assert _value(samples, invalid, **labels, reason="BadDeviceToken") == 5
        assert _value(samples, "pushgres_notifications_total", app="android", status="sent") == 100
        assert _value(samples, "pushgres_tokens_invalidated_total", app="ios") == 25
        assert _value(samples, "pushgres_claimed_total", app="ios") >= 325
        # Every request answered is timed; every sent notification has its latency.
        assert _value(samples, "pushgres_provider_response_seconds_count", app="ios") >= 325
        assert _value(samples, "pushgres_enqueue_to_sent_seconds_count", app="ios") == 300
        assert _value(samples, "pushgres_enqueue_to_sent_seconds_count", app="android") == 100
        assert _value(samples, "pushgres_claim_duration_seconds_count", app="ios") >= 1
        assert _value(samples, "pushgres_write_duration_seconds_count", app="ios") >= 1
        assert _value(samples, "pushgres_http2_connections", app="ios") >= 1
        assert _value(samples, "pushgres_http2_stream_limit", app="ios") >= 1
        assert _value(samples, "pushgres_app_ready", app="android") == 1
        assert _value(samples, "pushgres_queue_depth", app="ios") == 0
        assert _value(samples, "pushgres_in_flight", app="ios") == 0
        assert _value(samples, "pushgres_http2_streams_open", app="ios") == 0  # all answered
        assert _value(samples, "pushgres_database_up") == 1
        assert _value(samples, "pushgres_db_pool_max_connections") == 8
        assert samples["pushgres_build_info"][0][0]["version"]
        assert "process_resident_memory_bytes" in samples

        status, _, body = await _get(f"{base}/healthz")
        assert status == 200 and '"status":"ok"' in body
        status, _, body = await _get(f"{base}/readyz")
        assert status == 200, body
        assert '"ready":true' in body

        status, ctype, data = await _get(f"{base}/dashboard/data.json")
        assert status == 200 and ctype.startswith("application/json")
        assert '"name":"ios"' in data
        status, ctype, page = await _get(f"{base}/dashboard/")
        assert status == 200 and ctype.startswith("text/html")
        status, _, _ = await _get(f"{base}/dashboard")
        assert status == 302
        status, _, _ = await _get(f"{base}/dashboard/..%2Fserver.py")
        assert status == 404

        # Nothing served carries a credential or a whole device token.
        secrets = [
            pathlib.Path(setup.apns_key_file).read_text().splitlines()[1],
            "PRIVATE KEY",
            "Bearer",
            "eyJ",
            *ok[:3],
            *dead[:3],
            *android[:3],
        ]
        for text_served in (text, body, data, page):
            for secret in secrets:
                assert secret not in text_served
    assert sims.accepted_counts()["apns"]


async def test_readyz_names_the_app_that_cannot_connect(env: dict[str, Any]) -> None:
    closed = devkit.free_port()
    config = _with_admin(
        env,
        apns=f'endpoint = "https://127.0.0.1:{closed}"\nconnect_timeout_s = 0.5',
        daemon="ready_timeout_s = 1",
    )
    async with running_daemon(settings_for(config)) as daemon:
        deadline = time.monotonic() + 15
        body = ""
        while True:
            if daemon.admin_url is not None:
                status, _, body = await _get(f"{daemon.admin_url}/readyz")
                # The other app warms up on its own: on a loaded machine it may still be
                # connecting when the unreachable one is first named.
                if status == 503 and "cannot connect" in body and '"android":null' in body:
                    break
            assert time.monotonic() < deadline, f"readyz never named the unreachable app: {body}"
            await asyncio.sleep(0.1)
        assert f"127.0.0.1:{closed}" in body
        assert '"android":null' in body
        status, _, text = await _get(f"{daemon.admin_url}/metrics")
        samples = _samples(text)
        assert _value(samples, "pushgres_app_ready", app="ios") == 0
        assert _value(samples, "pushgres_app_ready", app="android") == 1
        assert _value(samples, "pushgres_http2_connect_failures_total", app="ios") >= 1
        # Alive all the same, and while draining too.
        status, _, _ = await _get(f"{daemon.admin_url}/healthz")
        assert status == 200
        daemon.stop()
        status, _, body = await _get(f"{daemon.admin_url}/healthz")
        assert status == 200 and '"state":"draining"' in body
        status, _, body = await _get(f"{daemon.admin_url}/readyz")
        assert status == 503


async def test_a_port_in_use_is_a_clear_error(env: dict[str, Any]) -> None:
    blocker = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = blocker.sockets[0].getsockname()[1]
    try:
        config = _with_admin(env)
        config.write_text(config.read_text().replace('"127.0.0.1:0"', f'"127.0.0.1:{port}"'))
        async with running_daemon(settings_for(config)) as daemon:
            pass
    except ConfigError as exc:
        assert f"admin.listen 127.0.0.1:{port} cannot be bound" in str(exc)
    else:
        raise AssertionError(f"daemon started on a port in use ({daemon.admin_url})")
    finally:
        blocker.close()
        await blocker.wait_closed()


async def test_sandbox_tokens_sent_to_production_raise_one_alert(
    env: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    sims, dsn = env["sims"], env["dsn"]
    sandbox = [devkit.apns_token("ok", 50_000 + i) for i in range(60)]
    sims.register_tokens({"apns": {t: {"env": "sandbox"} for t in sandbox}})
    good = [devkit.apns_token("ok", i) for i in range(10)]
    config = _with_admin(env, daemon="batch_size = 20")
    caplog.set_level(logging.INFO, logger="pushgres")
    async with running_daemon(settings_for(config)) as daemon:
        ids = await enqueue(dsn, [apns(t) for t in sandbox + good])
        found = await wait_terminal(dsn, ids)
        assert daemon.admin_url is not None
        _, _, text = await _get(f"{daemon.admin_url}/metrics")
        samples = _samples(text)
        _, _, data = await _get(f"{daemon.admin_url}/dashboard/data.json")
    alerts = [r for r in caplog.records if getattr(r, "action", "") == "diagnosis"]
    assert len(alerts) == 1
    message = alerts[0].getMessage()
    assert "tokens of app ios look like sandbox tokens sent to production" in message
    assert "check `environment`" in message
    assert _value(samples, "pushgres_alert", app="ios", alert="environment_mismatch") == 1
    assert "look like sandbox tokens" in data
    # Each affected row says which environment its token was not for.
    reasons = {found[i].reason for i in ids[:60]}
    assert reasons == {"BadDeviceToken: " + bad_device_token_detail("production")}
    assert all(found[i].status == "sent" for i in ids[60:])


def _certificate_config(
    env: dict[str, Any], *, environment: str, valid_days: float = 365
) -> tuple[pathlib.Path, Any]:
    """The env's config with the ios app on a new certificate (made by the devkit's CA)."""
    setup, tmp = env["setup"], env["tmp"]
    ca = devkit.CaFiles(
        setup.ca_file,
        str(pathlib.Path(setup.directory) / "ca.key"),
        setup.server_cert_file,
        setup.server_key_file,
    )
    folder = tmp / f"cert-{environment}-{valid_days:g}"
    folder.mkdir()
    cert = devkit.generate_apns_client_cert(
        folder, ca, setup.apns_topic, "pw", environment=environment, valid_days=valid_days
    )
    config = _with_admin(
        env,
        name=f"{folder.name}.toml",
        apns=f'auth = "certificate"\ncert_file = "{cert.cert_file}"\n'
        f'cert_key_file = "{cert.key_file}"',
    )
    text = config.read_text()
    for key in ("key_file", "key_id", "team_id"):  # token-auth keys of the default app table
        text = "\n".join(line for line in text.splitlines() if not line.startswith(f"{key} = "))
    config.write_text(text + "\n")
    return config, cert


async def test_a_certificate_close_to_expiry_is_warned_about_and_exposed(
    env: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    config, cert = _certificate_config(env, environment="both", valid_days=5)
    not_after = x509.load_pem_x509_certificate(
        pathlib.Path(cert.cert_file).read_bytes()
    ).not_valid_after_utc.timestamp()
    caplog.set_level(logging.INFO, logger="pushgres")
    async with running_daemon(settings_for(config)) as daemon:
        ids = await enqueue(env["dsn"], [apns(devkit.apns_token("ok", i)) for i in range(5)])
        found = await wait_terminal(env["dsn"], ids)
        assert daemon.admin_url is not None
        _, _, text = await _get(f"{daemon.admin_url}/metrics")
        _, _, data = await _get(f"{daemon.admin_url}/dashboard/data.json")
    assert all(o.status == "sent" for o in found.values())
    warnings = [r for r in caplog.records if getattr(r, "action", "") == "credential_expiry"]
    assert len(warnings) == 1
    assert "app ios: its credential expires in 5.0 days (within 7)" in warnings[0].getMessage()
    expiry = _value(_samples(text), "pushgres_credential_expiry_timestamp_seconds", app="ios")
    assert abs(expiry - not_after) < 1
    assert '"days_left":5.0' in data or '"days_left":4.9' in data


async def test_a_certificate_for_the_other_environment_names_the_fix(
    env: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    dsn = env["dsn"]
    config, _ = _certificate_config(env, environment="sandbox")
    caplog.set_level(logging.INFO, logger="pushgres")
    async with running_daemon(settings_for(config)) as daemon:
        await enqueue(dsn, [apns(devkit.apns_token("ok", i)) for i in range(5)])
        deadline = time.monotonic() + 15
        while "BadCertificateEnvironment" not in caplog.text:
            assert time.monotonic() < deadline, "no configuration error logged"
            await asyncio.sleep(0.05)
        assert daemon.admin_url is not None
        _, _, data = await _get(f"{daemon.admin_url}/dashboard/data.json")
        # Not ready: the provider refuses the app's credential.
        status, _, ready = await _get(f"{daemon.admin_url}/readyz")
        assert status == 503 and "BadCertificateEnvironment" in ready, ready
    assert "belongs to the other APNs environment: check `environment`" in caplog.text
    assert '"reason":"BadCertificateEnvironment"' in data
    assert "other APNs environment" in data
