"""remixer.kit.shipping against a real Kafka (Tansu): spool when off or down, drain in order, count every
drop."""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiokafka.errors import NodeNotReadyError
from prometheus_client import CollectorRegistry

from remixer.kit.shipping import build_record_sinks, quiet_abandoned_sends
from remixer.kit.shipping.kafka import ClientLogQuieter
from remixer.kit.shipping.localfiles import RecordFiles, delimited
from remixer.kit.shipping.settings import KafkaSettings, ShippingSettings
from remixer.kit.shipping.spool import Spool
from remixer.v1 import access_record_pb2
from tests.realparts.kafka import TansuBroker, consume
from tests.waiting import eventually

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


async def wait_until(check: Callable[[], object], within: float = 20.0) -> None:
    await eventually(check, within=within)


def print_records(path: Path) -> list[str]:
    """`remixer records PATH`, the documented way to read the local record files."""
    return subprocess.run(
        [sys.executable, "-m", "remixer", "records", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout.splitlines()


def json_numbered(n: int, start: int = 0) -> list[tuple[bytes | None, bytes]]:
    return [(b"svc", f'{{"n": {i}}}'.encode()) for i in range(start, start + n)]


async def test_kafka_off_keeps_records_in_rotated_files_readable_with_remixer_records(
    tmp_path: Path, caplog: Any
) -> None:
    registry = CollectorRegistry()
    caplog.set_level(logging.INFO)
    settings = ShippingSettings(queue_max_records=100, records_file_bytes=4096)
    off = build_record_sinks(settings, data_dir=tmp_path, registry=registry)
    off.start()
    sink = off.sink("access-logs")
    assert sink.offer(json_numbered(250)) == 250  # beyond the queue bound: straight to the files, in order
    await sink.put(json_numbered(250, start=250))
    await off.close()
    assert value(registry, "remixer_shipping_records_stored_total", stream="access-logs") == 500
    assert value(registry, "remixer_shipping_records_spooled_total", stream="access-logs") == 0
    directory = tmp_path / "records" / "access-logs"
    files = sorted(directory.glob("*.jsonl"))
    assert len(files) > 1  # rotated at records_file_bytes
    lines = b"".join(f.read_bytes() for f in files).splitlines()
    assert [json.loads(line)["n"] for line in lines] == list(range(500))
    printed = await asyncio.to_thread(print_records, tmp_path / "records")
    assert [json.loads(line)["n"] for line in printed] == list(range(500))
    startup = [r.getMessage() for r in caplog.records if "Kafka is off" in r.getMessage()]
    assert len(startup) == 1
    assert "retention" in startup[0]
    assert str(tmp_path / "records") in startup[0]


def test_record_files_keep_to_their_retention_and_size_and_count_what_they_delete() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        clock = [1_000_000.0]
        dropped: list[int] = []
        files = RecordFiles(
            Path(tmp),
            file_bytes=4096,
            max_bytes=20_000,
            retention_s=3600,
            on_drop=dropped.append,
            now=lambda: clock[0],
        )
        for i in range(100):  # ~100 KB of records: five times the bound
            files.append(json_numbered(10, start=i * 10))
            clock[0] += 1
            for path in files.files():  # written now, on the test's clock
                if path.stat().st_mtime > clock[0]:
                    os.utime(path, (clock[0], clock[0]))
        files.enforce_bounds()
        kept = b"".join(f.read_bytes() for f in files.files()).splitlines()
        assert files.stored_bytes() <= 20_000 + 4096 + 200
        assert len(kept) + sum(dropped) == 1000  # every record is either kept or counted
        assert [json.loads(line)["n"] for line in kept] == list(range(1000 - len(kept), 1000))  # the newest
        clock[0] += 7200  # everything but the file being written is past the retention
        files.enforce_bounds()
        assert len(files.files()) == 1
        assert len(b"".join(f.read_bytes() for f in files.files()).splitlines()) + sum(dropped) == 1000
        files.close()


def test_protobuf_records_are_length_delimited_and_printed_as_json(tmp_path: Path) -> None:
    record = access_record_pb2.AccessRecord(request_id="r-1", response_code=503)
    files = RecordFiles(tmp_path, file_bytes=1 << 20, max_bytes=1 << 30, retention_s=0, on_drop=print)
    files.append([(None, record.SerializeToString())] * 3)
    files.close()
    (path,) = files.files()
    assert path.suffix == ".binpb"
    assert [access_record_pb2.AccessRecord.FromString(m) for m in delimited(path.read_bytes())] == [
        record
    ] * 3
    printed = print_records(path)
    assert [json.loads(line)["request_id"] for line in printed] == ["r-1"] * 3


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


async def test_a_broker_back_after_an_outage_gets_the_spool_in_order_then_new_records(
    tmp_path: Path, kafka_broker: TansuBroker, caplog: Any
) -> None:
    registry = CollectorRegistry()
    hub = build_record_sinks(kafka_on(kafka_broker), data_dir=tmp_path / "hub", registry=registry)
    sink = hub.sink("access-logs")
    caplog.set_level(logging.INFO, logger="remixer.kit.shipping")

    def counted(name: str) -> float:
        return value(registry, f"remixer_shipping_records_{name}_total", stream="access-logs")

    try:
        await sink.put(numbered(100))
        await wait_until(lambda: counted("sent") == 100)
        kafka_broker.stop()  # killed: memory storage, so the broker that comes back is empty
        for i in range(5):
            await sink.put(numbered(100, start=100 + i * 100))
        await wait_until(lambda: counted("spooled") == 500)
        await wait_until(lambda: value(registry, "remixer_shipping_kafka_connected") == 0)
        assert value(registry, "remixer_shipping_send_errors_total", stream="access-logs") >= 1
        assert counted("sent") == 100

        kafka_broker.start()
        await sink.put(numbered(50, start=600))  # arrives while the spool still waits: shipped after it
        last = numbered(1, start=649)[0][1]
        got = [
            v
            for _, v in await consume(
                kafka_broker.bootstrap, TOPIC, until=lambda r: bool(r) and r[-1][1] == last
            )
        ]
        await wait_until(lambda: sink.spool.empty)
        # Each record once, in order: the batch in flight when the broker died was spooled, and when
        # the old producer still delivers it as it stops (the broker came back meanwhile), it counts as
        # sent instead of being shipped again from the spool.
        assert got == [v for _, v in numbered(550, start=100)]
        assert counted("sent") == 650  # acknowledged sends only
        assert value(registry, "remixer_shipping_kafka_connected") == 1
        said = [
            r.getMessage()
            for r in caplog.records
            if r.name == "remixer.kit.shipping" and "Kafka" in r.getMessage()
        ]
        assert any(m.startswith("Kafka unavailable") for m in said)
        assert said[-1].startswith("Kafka reachable again")
    finally:
        await hub.close()


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
    # Kafka on but away (nobody listens on a never-started broker's port): records wait in the spool.
    kafka = kafka_on(TansuBroker(tmp_path)).kafka
    kafka.max_record_bytes, kafka.retry_backoff_s = 1024, 30
    settings = ShippingSettings(spool_max_bytes=2000, kafka=kafka)
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


async def test_records_over_many_batches_and_partitions_arrive_once_each_in_order_per_key(
    tmp_path: Path, kafka_broker: TansuBroker
) -> None:
    settings = kafka_on(kafka_broker)
    settings.kafka.partitions, settings.kafka.batch_max_bytes = 3, 4096  # ~25 of these records a batch
    records = [(f"svc-{i % 5}".encode(), f"record-{i:06d}-".encode() + b"x" * (i % 300)) for i in range(3000)]
    registry = CollectorRegistry()
    hub = build_record_sinks(settings, data_dir=tmp_path, registry=registry)
    sink = hub.sink("access-logs")
    try:
        for start in range(0, len(records), 60):  # one StreamAccessLogs message's worth at a time
            await sink.put(records[start : start + 60])
        got = await consume(kafka_broker.bootstrap, TOPIC, until=lambda r: len(r) >= len(records))
        await wait_until(
            lambda: value(registry, "remixer_shipping_records_sent_total", stream="access-logs") == 3000
        )
    finally:
        await hub.close()
    assert sorted(got) == sorted(records)  # each once
    for key in {k for k, _ in records}:  # a key's records share a partition, whose order Kafka keeps
        assert [v for k, v in got if k == key] == [v for k, v in records if k == key]


# ---- failures nobody retrieved -----------------------------------------------------------------------


async def test_an_abandoned_kafka_failure_is_not_logged_as_an_error(caplog: Any) -> None:
    # What aiokafka leaves behind when the broker goes away: a failed future nobody retrieves. asyncio
    # would log it with a traceback whenever the GC collects it; remixer serve's loop handler keeps
    # such Kafka failures at debug and hands everything else to asyncio's default.
    # Earlier tests' abandoned futures belong to their own loops (and handlers): collect them first,
    # and forget what their collection logged.
    gc.collect()
    caplog.clear()
    loop = asyncio.get_running_loop()
    previous = loop.get_exception_handler()
    loop.set_exception_handler(quiet_abandoned_sends)
    try:
        with caplog.at_level(logging.DEBUG):
            for error in (NodeNotReadyError("node 1 not ready"), ValueError("not Kafka's")):
                future = loop.create_future()
                future.set_exception(error)
                del future
                gc.collect()
        errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
        assert len(errors) == 1
        assert errors[0].getMessage().startswith("Future exception was never retrieved")
        assert "not Kafka's" in errors[0].getMessage()
        assert "NodeNotReady" not in errors[0].getMessage()
        assert any("abandoned Kafka send" in r.getMessage() for r in caplog.records)
    finally:
        loop.set_exception_handler(previous)


async def test_a_spool_left_by_an_earlier_run_ships_at_start(
    tmp_path: Path, kafka_broker: TansuBroker
) -> None:
    for stream, count in (("access-logs", 300), ("decisions", 200)):
        spool = Spool(tmp_path / "spool" / stream, max_bytes=1 << 30, segment_bytes=1 << 20)
        spool.append(numbered(count))
        spool.close()
    registry = CollectorRegistry()
    # A new run whose parts never ask for the decisions stream, and that gets no new record.
    hub = build_record_sinks(kafka_on(kafka_broker), data_dir=tmp_path, registry=registry)
    hub.sink("access-logs")
    hub.start()
    try:
        got = await consume(kafka_broker.bootstrap, TOPIC, until=lambda r: len(r) >= 300, within=20)
        assert [v for _, v in got] == [v for _, v in numbered(300)]
        decisions = await consume(
            kafka_broker.bootstrap, "remixer-decisions", until=lambda r: len(r) >= 200, within=20
        )
        assert len(decisions) == 200
        await wait_until(lambda: all(s.spool.empty for s in hub.streams))
    finally:
        await hub.close()


async def test_an_outage_counts_a_send_error_per_stream_and_logs_one_line(
    tmp_path: Path, caplog: Any
) -> None:
    broker = TansuBroker(tmp_path)  # never started: nobody listens on its port
    registry = CollectorRegistry()
    settings = kafka_on(broker)
    settings.kafka.send_timeout_s = 0.5
    settings.kafka.retry_backoff_s = 0.1
    hub = build_record_sinks(settings, data_dir=tmp_path, registry=registry)
    caplog.set_level(logging.INFO)
    streams = [hub.sink("access-logs"), hub.sink("decisions")]
    for _ in range(8):  # eight rounds: the shipper retries the broker several times
        for sink in streams:
            await sink.put(numbered(10))
        await asyncio.sleep(0.2)
    await wait_until(
        lambda: all(
            value(registry, "remixer_shipping_send_errors_total", stream=s.name) >= 2 for s in streams
        )
    )
    await hub.close()
    outage_lines = [
        r for r in caplog.records if r.name == "remixer.kit.shipping" and "unavailable" in r.getMessage()
    ]
    assert len(outage_lines) == 1, [r.getMessage() for r in outage_lines]


def test_the_client_log_quieter_lets_one_line_a_minute_through() -> None:
    quieter = ClientLogQuieter(interval=60)
    make = logging.getLogger("aiokafka.conn").makeRecord
    records = [make("aiokafka.conn", logging.ERROR, __file__, 1, "Unable connect to node", (), None)] * 300
    passed = [quieter.filter(r) for r in records]
    assert passed.count(True) == 1
    assert quieter.take_suppressed() == 299
    assert quieter.take_suppressed() == 0
    own = logging.getLogger("remixer.kit.shipping").makeRecord(
        "remixer.kit.shipping", logging.WARNING, __file__, 1, "Kafka unavailable", (), None
    )
    assert quieter.filter(own)
