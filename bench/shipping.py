"""Benchmark: records through remixer's shipper into a real Kafka-protocol broker (Tansu), per CPU-second.

One process holds a ShippingHub with Kafka on (acks=all, the default settings) and puts records into
its access-log stream the way the telemetry pipeline does: one chunk per StreamAccessLogs message (60
records), each shaped like remixer's JSON access-log record (~700 bytes, keyed by service). CPU time is
this process's (time.process_time: the hub, aiokafka and the putting loop; the broker runs apart),
counted until the hub has every record acknowledged. As in bench/als.py the producer is not idempotent
(Tansu has no InitProducerId).

    .venv/bin/python bench/shipping.py [--records 100000] [--repeat 5]

Last line: `shipping_records_per_cpu_s: X (median) wall: Y records/s`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import tempfile
import time
import uuid
from pathlib import Path

from als import SERVICES, tansu
from prometheus_client import CollectorRegistry

from remixer.kit.parts import Record
from remixer.kit.shipping import build_record_sinks
from remixer.kit.shipping.settings import KafkaSettings, KafkaTopics, ShippingSettings

CHUNK = 60  # records per StreamAccessLogs message in bench/als.py


def access_records(count: int, seed: int = 1) -> list[Record]:
    rng = random.Random(seed)
    records = []
    for _ in range(count):
        source, destination = rng.sample(SERVICES, 2)
        value = {
            "node_id": f"sidecar~10.1.{rng.randrange(256)}.{rng.randrange(256)}~{source}-7d9f.shop~shop.svc",
            "log_name": "envoy-als",
            "kind": "http",
            "reporter": rng.choice(["source", "destination"]),
            "source_workload": f"{source}-v1",
            "source_workload_namespace": "shop",
            "source_principal": f"spiffe://cluster.local/ns/shop/sa/{source}",
            "destination_workload": f"{destination}-v1",
            "destination_workload_namespace": "shop",
            "destination_principal": f"spiffe://cluster.local/ns/shop/sa/{destination}",
            "destination_service": f"{destination}.shop.svc.cluster.local",
            "request_protocol": "http",
            "connection_security_policy": "mutual_tls",
            "upstream_cluster": f"outbound|8080||{destination}.shop.svc.cluster.local",
            "response_flags": "-",
            "authority": f"{destination}:8080",
            "response_code": rng.choice([200, 200, 200, 201, 404, 503]),
            "grpc_status": None,
            "start_time": time.time() - rng.random(),
            "duration_ms": round(rng.lognormvariate(2, 1), 3),
            "method": rng.choice(["GET", "POST"]),
            "path": f"/api/v1/{destination}/{rng.randrange(10_000)}",
            "request_id": str(uuid.UUID(int=rng.getrandbits(128))),
            "bytes_received": rng.randrange(2_000),
            "bytes_sent": rng.randrange(20_000),
            "user_agent": "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko)",
        }
        records.append((destination.encode(), json.dumps(value, separators=(",", ":")).encode()))
    return records


async def ship(bootstrap: str, topic: str, records: list[Record]) -> tuple[float, float]:
    """(CPU seconds, wall seconds) to put `records` into a hub and have Kafka acknowledge them all."""
    kafka = KafkaSettings(
        enabled=True,
        bootstrap_servers=[bootstrap],
        topics=KafkaTopics(access_logs=topic),
        idempotence=False,
    )
    registry = CollectorRegistry()
    with tempfile.TemporaryDirectory(prefix="remixer-bench-") as tmp:
        hub = build_record_sinks(ShippingSettings(kafka=kafka), data_dir=Path(tmp), registry=registry)
        sink = hub.sink("access-logs")

        async def sent_reaches(count: int) -> None:
            # The hub signals nothing on acknowledgement; a poll every 5 ms costs nothing measurable.
            name, labels = "remixer_shipping_records_sent_total", {"stream": "access-logs"}
            while (registry.get_sample_value(name, labels) or 0) < count:  # noqa: ASYNC110
                await asyncio.sleep(0.005)

        try:
            await sink.put(records[:CHUNK])  # warm-up: connect, create the topic
            await asyncio.wait_for(sent_reaches(CHUNK), 60)
            cpu0, wall0 = time.process_time(), time.monotonic()
            for start in range(0, len(records), CHUNK):
                await sink.put(records[start : start + CHUNK])
            await asyncio.wait_for(sent_reaches(CHUNK + len(records)), 120)
            return time.process_time() - cpu0, time.monotonic() - wall0
        finally:
            await hub.close()


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--records", type=int, default=100_000, help="records per measured run")
    parser.add_argument("--repeat", type=int, default=5, help="measured runs (median reported)")
    args = parser.parse_args()
    records = access_records(args.records)
    size = statistics.mean(len(value) for _, value in records)
    print(f"{args.records} records of {size:.0f} bytes on average, put {CHUNK} at a time")
    per_cpu, per_wall = [], []
    with tansu() as (bootstrap, _):
        for run in range(args.repeat):
            cpu, wall = asyncio.run(ship(bootstrap, f"bench-{run}", records))
            per_cpu.append(args.records / cpu)
            per_wall.append(args.records / wall)
            print(f"run {run}: cpu={cpu:.2f}s wall={wall:.2f}s -> {per_cpu[-1]:,.0f} records/CPU-s")
    print(
        f"shipping_records_per_cpu_s: {statistics.median(per_cpu):.0f} (min {min(per_cpu):.0f}, "
        f"max {max(per_cpu):.0f}) wall: {statistics.median(per_wall):.0f} records/s"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
