"""Decision records through remixer's real shipping hub into a real Kafka broker (Tansu)."""

from __future__ import annotations

import json
from pathlib import Path

from prometheus_client import CollectorRegistry

from policy.structs import CheckInput
from remixer.kit.shipping import build_record_sinks
from remixer.kit.shipping.settings import KafkaSettings, ShippingSettings
from tests.policy.conftest import PolicyFactory
from tests.policy.deciding import decide
from tests.realparts.kafka import TansuBroker, consume

POLICY = {"rules": [{"id": "deny-admin", "action": "deny", "match": {"request.path": {"prefix": "/admin"}}}]}


async def test_decisions_reach_kafka(
    policy_factory: PolicyFactory, kafka_broker: TansuBroker, tmp_path: Path
) -> None:
    kafka = KafkaSettings(enabled=True, bootstrap_servers=[kafka_broker.bootstrap], send_timeout_s=2)
    hub = build_record_sinks(ShippingSettings(kafka=kafka), data_dir=tmp_path, registry=CollectorRegistry())
    try:
        run = await policy_factory(policy=POLICY, records=hub)
        service = run.part.service
        for i in range(20):
            path = "/admin/x" if i % 2 else "/ok"
            await decide(service, CheckInput(method="GET", path=path, request_id=f"req-{i:02d}", host="shop"))
        got = await consume(kafka_broker.bootstrap, "remixer-decisions", until=lambda r: len(r) >= 20)
    finally:
        await hub.close()
    by_id = {key: json.loads(value) for key, value in got}
    assert set(by_id) == {f"req-{i:02d}".encode() for i in range(20)}
    denied = by_id[b"req-01"]
    assert (denied["decision"], denied["status"], denied["rule"], denied["path"]) == (
        "deny",
        403,
        "deny-admin",
        "/admin/x",
    )
    assert by_id[b"req-00"]["decision"] == "allow"
    assert by_id[b"req-00"]["destination_host"] == "shop"
    assert 0 < by_id[b"req-00"]["latency_seconds"] < 5  # measured around the Check, in seconds
