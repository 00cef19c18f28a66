"""Shipping records (access logs, policy decisions) to Kafka, with a size-capped on-disk spool.

records = build_record_sinks(settings.shipping, data_dir=Path("remixer-data"), registry=registry)
sink = records.sink("access-logs")     # or "decisions"
sink.offer(records) / await sink.put(records)
...
await records.close()                  # on SIGTERM: flush to Kafka or spool everything
"""

from __future__ import annotations

from pathlib import Path

from prometheus_client import CollectorRegistry

from remixer.kit.shipping.hub import ShippingHub, StreamQueue
from remixer.kit.shipping.kafka import quiet_abandoned_sends
from remixer.kit.shipping.metrics import ShippingMetrics
from remixer.kit.shipping.settings import KafkaSettings, ShippingSettings


def build_record_sinks(
    settings: ShippingSettings, *, data_dir: Path, registry: CollectorRegistry, worker_index: int = 0
) -> ShippingHub:
    """The RecordSinks of one process. No I/O until the first record (spool dirs are made per stream).
    Worker processes (`--workers N`) each spool into their own directory: a spool has one writer."""
    spool_dir = settings.spool_dir or (data_dir / "spool")
    records_dir = settings.records_dir or (data_dir / "records")
    if worker_index:
        spool_dir = spool_dir / f"worker-{worker_index}"
        records_dir = records_dir / f"worker-{worker_index}"
    return ShippingHub(
        settings, spool_dir=spool_dir, records_dir=records_dir, metrics=ShippingMetrics(registry)
    )


__all__ = [
    "KafkaSettings",
    "ShippingHub",
    "ShippingSettings",
    "StreamQueue",
    "build_record_sinks",
    "quiet_abandoned_sends",
]
