"""Real Envoy -> telemetry -> real Kafka (Tansu): every request id arrives, including across a 30 s outage."""

from __future__ import annotations

import asyncio
import time
import urllib.request
from pathlib import Path

import orjson

from remixer.kit.echo import EchoServer
from remixer.kit.envoy import free_port
from remixer.kit.shipping.settings import KafkaSettings, ShippingSettings
from tests.realparts.envoy import EnvoyFactory
from tests.realparts.kafka import TansuBroker, consume
from tests.telemetry.bootstraps import istio_node, sidecar_bootstrap
from tests.telemetry.harness import running_telemetry

TOPIC = "remixer-access-logs"
OUTAGE_SECONDS = 30.0


def _get(port: int, request_id: str) -> None:
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/r/{request_id}", headers={"x-request-id": request_id}
    )
    with urllib.request.urlopen(req, timeout=5) as resp:
        resp.read()


async def _send(port: int, ids: list[str]) -> None:
    def run() -> None:
        for request_id in ids:
            _get(port, request_id)

    await asyncio.to_thread(run)


async def _consume_ids(broker: TansuBroker, want: set[str], within: float) -> set[str]:
    def done(records: list[tuple[bytes | None, bytes]]) -> bool:
        return want <= {orjson.loads(v)["request_id"] for _, v in records}

    records = await consume(broker.bootstrap, TOPIC, until=done, within=within)
    return {orjson.loads(v)["request_id"] for _, v in records}


async def test_every_request_id_reaches_kafka_across_a_broker_outage(
    tmp_path: Path, envoy_factory: EnvoyFactory, echo_upstream: EchoServer, kafka_broker: TansuBroker
) -> None:
    shipping = ShippingSettings(
        kafka=KafkaSettings(
            enabled=True,
            bootstrap_servers=[kafka_broker.bootstrap],
            send_timeout_s=2.0,
            retry_backoff_s=0.5,
            linger_ms=20,
        )
    )
    async with running_telemetry(tmp_path, shipping=shipping) as tel:
        outbound = free_port()
        boot = sidecar_bootstrap(
            admin_port=free_port(),
            als_port=tel.port,
            upstream_port=echo_upstream.port,
            outbound_port=outbound,
            node=istio_node(workload="reviews-v2", namespace="bookinfo", app="reviews", version="v2"),
            service="ratings.bookinfo.svc.cluster.local",
        )
        await asyncio.to_thread(envoy_factory, boot)

        before = [f"before-{i}" for i in range(50)]
        await _send(outbound, before)
        assert set(before) <= await _consume_ids(kafka_broker, set(before), within=30)

        kafka_broker.stop()
        outage_started = time.monotonic()
        during: list[str] = []
        while time.monotonic() - outage_started < OUTAGE_SECONDS:
            ids = [f"during-{len(during) + i}" for i in range(10)]
            await _send(outbound, ids)
            during.extend(ids)
            await asyncio.sleep(1.0)
        # Everything Envoy logged while the broker was away sits in the spool.
        await tel.wait_for(
            lambda: tel.value("remixer_shipping_records_spooled_total", {"stream": "access-logs"}) > 0
        )
        kafka_broker.start()

        after = [f"after-{i}" for i in range(50)]
        await _send(outbound, after)
        # Memory storage: the restarted broker is empty, so what it holds came from the spool and after.
        want = set(during) | set(after)
        seen = await _consume_ids(kafka_broker, want, within=60)
        missing = want - seen
        assert not missing, f"{len(missing)} request ids never reached Kafka, e.g. {sorted(missing)[:5]}"
        dropped = tel.value(
            "remixer_shipping_records_dropped_total", {"stream": "access-logs", "reason": "spool_full"}
        )
        assert dropped == 0
        await tel.wait_for(lambda: tel.hub.streams[0].spool.empty, within=10)
