"""FCM OAuth end to end: the daemon's wiring authenticates against an h2-capable token endpoint.

The simulated token endpoint offers ALPN ``h2`` and ``http/1.1`` as Google's does, so an FCM
app authenticates only if the sender the daemon builds (``providers.build_senders``,
as :class:`pushgres.daemon.Daemon` calls it) gives the OAuth client (aiohttp, HTTP/1.1) a
context offering ``http/1.1``, never the pool's ``h2``-only one.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from pushgres.models import Action, ClaimedRow
from pushgres.providers import build_senders
from pushgres.providers.fcm.sender import FcmSender
from pushgres.simulator import devkit

from .harness import FCM_APP, enqueue, fcm, running_daemon, settings_for, wait_terminal


def fcm_row(token: str) -> ClaimedRow:
    now = dt.datetime.now(dt.UTC)
    return ClaimedRow.fresh(
        id=1,
        app=FCM_APP,
        platform="fcm",
        device_token=token,
        payload='{"notification": {"title": "hello"}}',
        now=now,
        max_attempts=3,
    )


async def test_the_daemons_fcm_sender_authenticates(env: dict[str, Any]) -> None:
    sims = env["sims"]
    app = settings_for(env["config"]).app(FCM_APP)
    (sender,) = build_senders([app], request_timeout_s=3.0)  # as Daemon.run does
    assert isinstance(sender, FcmSender)
    token = devkit.fcm_token("ok", 8100)
    try:
        async with sender.pool:
            outcomes = await sender.send_batch([fcm_row(token)], now=dt.datetime.now(dt.UTC))
    finally:
        await sender.aclose()
    assert [o.action if o else None for o in outcomes] == [Action.SENT], outcomes
    assert sims.oauth.issued == 1
    listener = sims.oauth_listener.counters
    assert listener.get("alpn_http/1.1") == 1 and "alpn_h2" not in listener
    assert sims.accepted_counts()["fcm"] == {token: 1}


async def test_daemon_delivers_fcm_through_an_h2_capable_token_endpoint(
    env: dict[str, Any],
) -> None:
    sims = env["sims"]
    tokens = [devkit.fcm_token("ok", 8200 + i) for i in range(20)]
    async with running_daemon(settings_for(env["config"])):
        ids = await enqueue(env["dsn"], [fcm(t) for t in tokens])
        found = await wait_terminal(env["dsn"], ids, timeout_s=20)
    assert all(o.status == "sent" for o in found.values()), found
    assert sims.oauth.issued == 1
    assert "alpn_h2" not in sims.oauth_listener.counters
