"""remixer.shipping against a real Kafka (Tansu): spool when off or down, drain in order, count every drop."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from prometheus_client import CollectorRegistry

from remixer.shipping import build_record_sinks
from remixer.shipping.settings import KafkaSettings, ShippingSettings
from tests.realparts.kafka import TansuBroker, consume

TOPIC = "remixer-access-logs"


def numbered(n: int, start: int = 0) -> list[tuple[bytes | None, bytes]]:
    return [(b"svc", f"record-{i:06d}".encode()) for i in range(start, start + n)]


def kafka_on(broker: TansuBroker, **extra: object) -> ShippingSettings:
    kafka = KafkaSettings(
        enabled=True, bootstrap_servers=[broker.bootstrap], send_timeout_s=2, retry_backoff_s=0.3
    )
    return ShippingSettings(kafka=kafka, **extra)  # type: ignore[arg-type]


def value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return registry.get_sample_value(name, labels) or 0.0


async def wait_until(check: object, within: float = 20.0) -> None:
    deadline = time.monotonic() + within
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


async def test_kafka_off_spools_then_a_later_run_drains_in_order(
    tmp_path: Path, kafka_broker: TansuBroker
) -> None:
    registry = CollectorRegistry()
    off = build_record_sinks(ShippingSettings(queue_max_records=100), data_dir=tmp_path, registry=registry)
    sink = off.sink("access-logs")
    assert sink.offer(numbered(250)) == 250  # beyond the queue bound: spilled to the spool, in order
    await sink.put(numbered(250, start=250))
    await off.close()
    assert value(registry, "remixer_shipping_records_spooled_total", stream="access-logs") == 500
    assert (tmp_path / "spool" / "access-logs").is_dir()

    registry = CollectorRegistry()
    on = build_record_sinks(kafka_on(kafka_broker), data_dir=tmp_path, registry=registry)
    sink = on.sink("access-logs")
    await sink.put(numbered(100, start=500))
    got = await consume(kafka_broker.bootstrap, TOPIC, until=lambda r: len(r) >= 600)
    assert [v for _, v in got] == [v for _, v in numbered(600)]
    await wait_until(lambda: sink.spool.empty)
    await on.close()
    assert value(registry, "remixer_shipping_records_sent_total", stream="access-logs") == 600


async def test_broker_down_at_start_then_up(tmp_path: Path) -> None:
    broker = TansuBroker(tmp_path)  # not started yet
    registry = CollectorRegistry()
    hub = build_record_sinks(kafka_on(broker), data_dir=tmp_path, registry=registry)
    sink = hub.sink("decisions")
    for i in range(10):
        await sink.put(numbered(100, start=i * 100))
        await asyncio.sleep(0.05)
    await wait_until(
        lambda: value(registry, "remixer_shipping_records_spooled_total", stream="decisions") == 1000
    )
    assert value(registry, "remixer_shipping_kafka_connected") == 0
    broker.start()
    try:
        got = await consume(broker.bootstrap, "remixer-decisions", until=lambda r: len(r) >= 1000)
        assert [v for _, v in got] == [v for _, v in numbered(1000)]
        await wait_until(lambda: sink.spool.empty)
        assert value(registry, "remixer_shipping_kafka_connected") == 1
    finally:
        await hub.close()
        broker.stop()


async def test_close_with_broker_gone_spools_everything(tmp_path: Path, kafka_broker: TansuBroker) -> None:
    registry = CollectorRegistry()
    hub = build_record_sinks(kafka_on(kafka_broker), data_dir=tmp_path, registry=registry)
    sink = hub.sink("access-logs")
    await sink.put(numbered(10))
    await wait_until(
        lambda: value(registry, "remixer_shipping_records_sent_total", stream="access-logs") == 10
    )
    kafka_broker.stop()
    await sink.put(numbered(5000, start=10))
    await hub.close()  # the SIGTERM path: nothing may stay in memory
    sent = value(registry, "remixer_shipping_records_sent_total", stream="access-logs")
    spooled = value(registry, "remixer_shipping_records_spooled_total", stream="access-logs")
    assert sent + spooled >= 5010
    assert not sink.queue
    spool_dir = tmp_path / "spool" / "access-logs"
    assert sum(p.stat().st_size for p in spool_dir.glob("*.seg")) > 0


async def test_drops_are_counted_when_the_spool_is_full_or_a_record_too_large(tmp_path: Path) -> None:
    registry = CollectorRegistry()
    settings = ShippingSettings(spool_max_bytes=2000, kafka=KafkaSettings(max_record_bytes=1024))
    hub = build_record_sinks(settings, data_dir=tmp_path, registry=registry)
    sink = hub.sink("access-logs")
    await sink.put([(None, b"x" * 5000)])
    await sink.put(numbered(1000))
    await hub.close()
    too_large = value(
        registry, "remixer_shipping_records_dropped_total", stream="access-logs", reason="too_large"
    )
    full = value(
        registry, "remixer_shipping_records_dropped_total", stream="access-logs", reason="spool_full"
    )
    spooled = value(registry, "remixer_shipping_records_spooled_total", stream="access-logs")
    assert too_large == 1
    assert full > 0
    assert spooled + full == 1000


async def test_a_stream_added_after_connecting_gets_its_topic(
    tmp_path: Path, kafka_broker: TansuBroker
) -> None:
    registry = CollectorRegistry()
    hub = build_record_sinks(kafka_on(kafka_broker), data_dir=tmp_path, registry=registry)
    try:
        await hub.sink("access-logs").put(numbered(5))
        await wait_until(
            lambda: value(registry, "remixer_shipping_records_sent_total", stream="access-logs") == 5
        )
        assert hub.sink("decisions").offer(numbered(7)) == 7  # policy's decision log, created later
        got = await consume(kafka_broker.bootstrap, "remixer-decisions", until=lambda r: len(r) >= 7)
        assert [v for _, v in got] == [v for _, v in numbered(7)]
    finally:
        await hub.close()
