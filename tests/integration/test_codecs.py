"""Differential: the same traffic through every HTTP/2 codec gives the same outcomes.

The daemon runs once per codec against the simulators (real TLS, real PostgreSQL) with every
APNs reason, every FCM error, a retry, a collapse id, an expiry and a near-limit payload; the
recorded outcomes must be identical, row for row.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from pushgres.http2.codecs import CODECS
from pushgres.providers.apns.reasons import APNS_REASONS
from pushgres.simulator import devkit

from .harness import apns, enqueue, fcm, running_daemon, settings_for, wait_terminal, write_config
from .test_daemon import APNS_STATUS, FCM_CASES


async def _run(env: dict[str, Any], codec: str, seed: int) -> list[tuple[Any, ...]]:
    sims = env["sims"]
    config = write_config(
        env["tmp"] / f"{codec}.toml",
        dsn=env["dsn"],
        setup=env["setup"],
        sims=sims,
        apns=f'codec = "{codec}"',
        fcm=f'codec = "{codec}"',
    )
    reasons = sorted(APNS_REASONS)
    tokens = [devkit.apns_token("ok", seed + i) for i in range(len(reasons))]
    sims.apns.script({t: [f"{APNS_STATUS[r]}:{r}"] for r, t in zip(reasons, tokens, strict=True)})
    retried = devkit.apns_token("ok", seed + 500)
    sims.apns.script({retried: ["503:ServiceUnavailable"]})
    big = {"aps": {"alert": "x" * 3900}}
    expires = dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)
    items = [apns(t, max_attempts=1) for t in tokens]
    items += [
        apns(retried, max_attempts=3),
        apns(devkit.apns_token("ok", seed + 501), payload=big, collapse_id="c" * 64),
        apns(devkit.apns_token("ok", seed + 502), expires_at=expires.isoformat()),
        apns(devkit.apns_token("ok", seed + 503), payload={"aps": {"alert": "y" * 5000}}),
    ]
    items += [fcm(devkit.fcm_token(kind, seed), max_attempts=1) for kind, _, _ in FCM_CASES]
    ids = await enqueue(env["dsn"], items)
    async with running_daemon(settings_for(config)):
        found = await wait_terminal(env["dsn"], ids)
    return [
        (found[i].status, found[i].reason, found[i].provider_status, found[i].attempts) for i in ids
    ]


async def test_every_codec_gives_the_same_outcomes(env: dict[str, Any]) -> None:
    codecs = sorted(CODECS)
    runs = {codec: await _run(env, codec, 3000 + 1000 * n) for n, codec in enumerate(codecs)}
    baseline = runs[codecs[0]]
    statuses = {status for status, *_ in baseline}
    assert {"sent", "failed", "token_invalid"} <= statuses  # the traffic is mixed
    for codec in codecs[1:]:
        assert runs[codec] == baseline, codec
