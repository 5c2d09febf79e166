"""Connection-level knobs shared by both simulators."""

from __future__ import annotations

import asyncio
import json
import ssl

import h2.errors
import pytest

from pushgres.simulator import Simulators, devkit

from .h2client import H2Client, apns_headers, fcm_headers, oauth_token, provider_token

OK = devkit.apns_token("ok", 1)


async def test_ping_acks_counted_delayed_and_dropped(sims: Simulators, apns: H2Client) -> None:
    apns.ping(b"00000001")
    await apns.wait_until(lambda: apns.ping_acks == [b"00000001"])
    sims.apns.patch({"ping_ack_delay_ms": 200})
    loop = asyncio.get_running_loop()
    started = loop.time()
    apns.ping(b"00000002")
    await apns.wait_until(lambda: len(apns.ping_acks) == 2)
    assert loop.time() - started >= 0.2
    sims.apns.patch({"ping_ack_delay_ms": 0, "ping_drop_rate": 1.0})
    apns.ping(b"00000003")
    with pytest.raises(TimeoutError):
        await apns.wait_until(lambda: len(apns.ping_acks) == 3, timeout_s=0.3)
    assert sims.apns.counters["pings"] == 3
    assert sims.apns.counters["ping_acks_dropped"] == 1


async def test_too_many_pings(sims: Simulators) -> None:
    sims.fcm.patch({"max_pings_without_data": 2})
    client = await H2Client.connect(sims.fcm_port, sims.ca_file)
    try:
        for n in range(3):
            client.ping(b"0000000" + str(n).encode())
        await asyncio.wait_for(client.closed.wait(), 5)
        assert client.goaway is not None
        assert client.goaway.error_code == h2.errors.ErrorCodes.ENHANCE_YOUR_CALM
        assert client.goaway.additional_data == b"too_many_pings"
    finally:
        await client.close()


async def test_idle_timeout(sims: Simulators, apns: H2Client) -> None:
    sims.apns.patch({"idle_timeout_s": 0.2})
    client = await H2Client.connect(sims.apns_production_port, sims.ca_file)
    try:
        await asyncio.wait_for(client.closed.wait(), 5)
        assert client.goaway is not None
        assert client.goaway.additional_data == b'{"reason":"IdleTimeout"}'
    finally:
        await client.close()


async def test_stream_limit_schedule_and_settings(sims: Simulators, apns: H2Client) -> None:
    sims.apns.patch({"max_concurrent_streams_schedule": [{"after_requests": 3, "value": 5}]})
    for _ in range(2):
        assert (await apns.request(apns_headers(OK, apns.auth), b"{}")).status == 200
    await apns.wait_until(lambda: apns.limits[-1] == 5)
    sims.send_settings("apns", max_concurrent_streams=2)
    await apns.wait_until(lambda: apns.limits[-1] == 2)
    assert sims.state()["apns"]["connections"][0]["max_concurrent_streams"] == 2


async def test_withheld_window_stalls_client(sims: Simulators, dev_setup: devkit.DevSetup) -> None:
    sims.apns.patch({"withhold_window_updates": True})
    client = await H2Client.connect(sims.apns_production_port, sims.ca_file)
    try:
        auth = provider_token(dev_setup)
        headers = apns_headers(OK, auth, apns_push_type="voip", topic="com.example.app.voip")
        for _ in range(12):
            assert (await client.request(headers, b"x" * 5000)).status == 200
        # No WINDOW_UPDATE ever came back: the client has 65535 - 60000 bytes of credit left.
        assert client.conn.outbound_flow_control_window == 65535 - 60000
    finally:
        await client.close()


async def test_rst_stream_and_mid_response_reset(sims: Simulators, apns: H2Client) -> None:
    sims.apns.patch({"rst_stream": {"rate": 1.0, "code": "CANCEL", "when": "before"}})
    resp = await apns.request(apns_headers(OK, apns.auth), b"{}")
    assert resp.reset_code == h2.errors.ErrorCodes.CANCEL
    sims.apns.patch(
        {"rst_stream": {"rate": 1.0, "code": "INTERNAL_ERROR", "when": "after_processing"}}
    )
    resp = await apns.request(apns_headers(OK, apns.auth), b"{}")
    assert resp.reset_code == h2.errors.ErrorCodes.INTERNAL_ERROR
    assert sims.accepted_counts()["apns"][OK] == 1  # processed, then reset
    sims.apns.patch({"rst_stream": None, "mid_response_reset": 1.0})
    sid = apns.start(apns_headers(OK, apns.auth), b"{}")
    await asyncio.wait_for(apns.closed.wait(), 5)
    assert apns.streams[sid].status in (None, 200) and apns.goaway is None


async def test_reset_after_bytes(sims: Simulators, apns: H2Client) -> None:
    sims.apns.patch({"reset_connection": {"after_bytes": 2000}})
    for _ in range(50):
        if apns.closed.is_set():
            break
        sid = apns.start(apns_headers(OK, apns.auth), b"x" * 100)
        await apns.response(sid)
    assert apns.closed.is_set() and apns.goaway is None


async def test_connection_limits(sims: Simulators) -> None:
    sims.fcm.patch({"max_connections": 1})
    first = await H2Client.connect(sims.fcm_port, sims.ca_file)
    second = await H2Client.connect(sims.fcm_port, sims.ca_file)
    try:
        assert first.limits == [100]
        await asyncio.wait_for(second.closed.wait(), 5)
        assert second.limits == []
        sims.fcm.patch({"max_connections": 0, "refuse_connections_for_s": 30})
        third = await H2Client.connect(sims.fcm_port, sims.ca_file)
        await asyncio.wait_for(third.closed.wait(), 5)
        await third.close()
        assert sims.fcm.counters["connections_refused"] == 2
    finally:
        await first.close()
        await second.close()


async def test_goaway_after_seconds_graceful_with_in_flight(sims: Simulators) -> None:
    # The token and body are ready before connecting: the stream opens right after the
    # handshake, well before the GOAWAY, even on a loaded machine.
    access_token = await oauth_token(sims)
    body = json.dumps({"message": {"token": devkit.fcm_token("ok", 1)}}).encode()
    sims.fcm.patch({"goaway_after_s": 0.5, "latency": {"dist": "fixed", "ms": 1000}})
    client = await H2Client.connect(sims.fcm_port, sims.ca_file)
    try:
        sid = client.start(fcm_headers("demo-project", access_token), body)
        await asyncio.wait_for(client.closed.wait(), 5)
        assert client.goaway is not None and client.goaway.last_stream_id == sid
        assert client.streams[sid].status == 200  # answered before the close
    finally:
        await client.close()


async def test_http1_is_refused_by_apns(sims: Simulators) -> None:
    ctx = ssl.create_default_context(cafile=sims.ca_file)
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", sims.apns_production_port, ssl=ctx, server_hostname="localhost"
    )
    writer.write(b"POST /3/device/x HTTP/1.1\r\nhost: localhost\r\ncontent-length: 0\r\n\r\n")
    assert await asyncio.wait_for(reader.read(), 5) == b""
    writer.close()
    assert sims.apns.counters["connections_not_h2"] == 1


async def test_latency_distributions_are_seeded(sims: Simulators) -> None:
    draws = []
    for _ in range(2):
        sims.apns.patch(
            {
                "seed": 42,
                "latency": {
                    "dist": "lognormal",
                    "median_ms": 40,
                    "sigma": 0.5,
                    "tail_p": 0.1,
                    "tail_ms": 5000,
                },
            }
        )
        draws.append([sims.apns.latency_s() for _ in range(200)])
    assert draws[0] == draws[1]
    assert any(d == 5.0 for d in draws[0])
    sims.apns.patch({"latency": {"dist": "uniform", "min_ms": 10, "max_ms": 20}})
    assert all(0.01 <= sims.apns.latency_s() <= 0.02 for _ in range(100))
