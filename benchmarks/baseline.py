"""The baseline: aioapns 4.x → the same sink, in a subprocess of its own under uvloop.

``python -m benchmarks.baseline '<spec>'``, started by :func:`benchmarks.client.run_client`.

aioapns hard-codes Apple's host and port on its connection class and matches responses to
callers by the ``apns-id`` response header. The patch is the least
that makes it talk to the sink, with its send path unchanged:

* a subclass of its production connection class with ``APNS_SERVER``/``APNS_PORT`` pointing
  at the sink, set as the pool's ``protocol_class``;
* the SSL context it accepts as a parameter: pushgres's, which trusts the devkit CA (still
  verified) and offers ALPN ``h2`` (aioapns's own offers none; nghttpd requires it);
* the sink's responses made to look like APNs's before aioapns sees them: the request's
  ``apns-id`` added to the response headers (APNs echoes it; nghttpd cannot) and the empty
  END_STREAM DATA frame's event dropped (APNs ends the stream on HEADERS; aioapns would
  ``json.loads`` the empty body and drop the connection).

It sends with its normal API: token auth with the devkit .p8 key, ``send_notification`` for a
chunk of ``connections * streams`` notifications at a time under ``asyncio.gather``.
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.metadata
import pathlib
import uuid
from collections import Counter
from typing import Any

from pushgres.http2.tls import make_ssl_context

from .client import Measured, Spec, child_main
from .workload import PAYLOAD, TOPIC, Credentials, device_token

__all__: list[str] = []


def _sink_protocol(base: Any, events: Any, port: int) -> Any:
    """aioapns's connection class, aimed at the sink and shown APNs-shaped responses."""

    def connection_made(self: Any, transport: Any) -> None:
        base.connection_made(self, transport)
        receive = self.conn.receive_data
        request_ids = self.request_streams  # stream id -> apns-id, filled by aioapns

        def receive_data(data: bytes) -> list[Any]:
            shown = []
            for event in receive(data):
                if isinstance(event, events.ResponseReceived):
                    event.headers.append((b"apns-id", request_ids[event.stream_id].encode()))
                elif isinstance(event, events.DataReceived) and not event.data:
                    continue
                shown.append(event)
            return shown

        self.conn.receive_data = receive_data

    namespace = {"APNS_SERVER": "127.0.0.1", "APNS_PORT": port, "connection_made": connection_made}
    return type("SinkProtocol", (base,), namespace)


async def _bench(spec: Spec) -> Spec:
    # Imported here: only this subprocess needs aioapns (the optional `bench` extra).
    aioapns = importlib.import_module("aioapns")
    connection = importlib.import_module("aioapns.connection")
    events = importlib.import_module("h2.events")
    credentials = Credentials(**spec["credentials"])
    chunk = spec["connections"] * spec["streams"]
    key = await asyncio.to_thread(pathlib.Path(credentials.key_file).read_text)
    client = aioapns.APNs(
        key=key,
        key_id=credentials.key_id,
        team_id=credentials.team_id,
        topic=TOPIC,
        max_connections=spec["connections"],
        ssl_context=make_ssl_context(ca_file=credentials.ca_file),
    )
    client.pool.protocol_class = _sink_protocol(
        connection.APNsProductionClientProtocol, events, spec["port"]
    )
    ids = [str(uuid.uuid4()) for _ in range(2 * chunk)]  # unique among those in flight
    ok = 0
    other: Counter[str] = Counter()

    async def send(total: int) -> None:
        nonlocal ok
        for start in range(0, total, chunk):
            results = await asyncio.gather(
                *(
                    client.send_notification(
                        aioapns.NotificationRequest(
                            device_token=device_token(n),
                            message=PAYLOAD,
                            notification_id=ids[n % len(ids)],
                            priority=10,
                            push_type=aioapns.PushType.ALERT,
                        )
                    )
                    for n in range(start, min(start + chunk, total))
                ),
                return_exceptions=True,
            )
            for result in results:
                if getattr(result, "status", None) == "200":
                    ok += 1
                else:
                    other[str(getattr(result, "status", type(result).__name__))] += 1

    warmup = 2 * chunk  # opens every connection before the clock starts
    await send(warmup)
    ok, other = 0, Counter()
    with Measured() as measured:
        await send(spec["requests"])
    client.pool.close()
    result = measured.result(spec["requests"], ok, dict(other), warmup)
    result["aioapns"] = importlib.metadata.version("aioapns")
    return result


if __name__ == "__main__":
    raise SystemExit(child_main(_bench))
