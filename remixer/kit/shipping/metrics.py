"""remixer_shipping_* self-metrics, on the server's registry."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence, Sized
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric

from remixer.kit.shipping.localfiles import RecordFiles
from remixer.kit.shipping.settings import ShippingSettings
from remixer.kit.shipping.spool import Spool


class WatchedStream(Protocol):
    """What the gauges read of one stream (a hub.StreamQueue)."""

    @property
    def name(self) -> str: ...
    @property
    def queue(self) -> Sized: ...
    @property
    def spool(self) -> Spool | RecordFiles: ...


class WatchedHub(Protocol):
    """What the gauges read of the hub: a protocol, so this module need not import the hub that
    imports it."""

    @property
    def settings(self) -> ShippingSettings: ...
    @property
    def streams(self) -> Sequence[WatchedStream]: ...
    @property
    def kafka_connected(self) -> bool: ...


class StreamMetrics:
    def __init__(self, metrics: ShippingMetrics, stream: str) -> None:
        self._sent = metrics.records_sent.labels(stream)
        self._spooled = metrics.records_spooled.labels(stream)
        self._stored = metrics.records_stored.labels(stream)
        self._errors = metrics.send_errors.labels(stream)
        self._latency = metrics.send_seconds.labels(stream)
        self._dropped = metrics.records_dropped
        self._stream = stream

    def sent(self, count: int, seconds: float) -> None:
        self._sent.inc(count)
        self._latency.observe(seconds)

    def spooled(self, count: int) -> None:
        self._spooled.inc(count)

    def stored(self, count: int) -> None:
        self._stored.inc(count)

    def dropped(self, reason: str, count: int) -> None:
        if count:
            self._dropped.labels(self._stream, reason).inc(count)

    def send_error(self) -> None:
        self._errors.inc()


class ShippingMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.records_sent = Counter(
            "remixer_shipping_records_sent", "Records acknowledged by Kafka.", ["stream"], registry=registry
        )
        self.records_spooled = Counter(
            "remixer_shipping_records_spooled",
            "Records written to the local spool (Kafka off, slow or down).",
            ["stream"],
            registry=registry,
        )
        self.records_stored = Counter(
            "remixer_shipping_records_stored",
            "Records written to the local record files (Kafka off).",
            ["stream"],
            registry=registry,
        )
        self.records_dropped = Counter(
            "remixer_shipping_records_dropped",
            "Records lost: spool full, larger than Kafka accepts, or deleted from the local record files "
            "by their retention (Kafka off).",
            ["stream", "reason"],
            registry=registry,
        )
        self.send_errors = Counter(
            "remixer_shipping_send_errors",
            "Failed Kafka sends (records were spooled).",
            ["stream"],
            registry=registry,
        )
        self.send_seconds = Histogram(
            "remixer_shipping_send_seconds",
            "Time from handing a batch to Kafka to its acknowledgement.",
            ["stream"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=registry,
        )
        self._registry = registry
        self._streams: dict[str, StreamMetrics] = {}

    def for_stream(self, stream: str) -> StreamMetrics:
        found = self._streams.get(stream)
        if found is None:
            found = self._streams[stream] = StreamMetrics(self, stream)
        return found

    def watch(self, hub: WatchedHub) -> None:
        self._registry.register(_HubGauges(hub))


class _HubGauges:
    """Queue length, spool size and age, Kafka connection: read live at scrape time."""

    def __init__(self, hub: WatchedHub) -> None:
        self._hub = hub

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        now = time.time()
        queue = GaugeMetricFamily(
            "remixer_shipping_queue_records", "Records waiting in memory.", labels=["stream"]
        )
        size = GaugeMetricFamily(
            "remixer_shipping_spool_bytes", "Bytes waiting in the spool.", labels=["stream"]
        )
        age = GaugeMetricFamily(
            "remixer_shipping_spool_oldest_seconds", "Age of the oldest spooled segment.", labels=["stream"]
        )
        kept = GaugeMetricFamily(
            "remixer_shipping_records_bytes",
            "Bytes in the local record files (Kafka off), per stream.",
            labels=["stream"],
        )
        limit = GaugeMetricFamily("remixer_shipping_spool_limit_bytes", "Spool size cap per stream.")
        limit.add_metric([], self._hub.settings.spool_max_bytes)
        for stream in self._hub.streams:
            queue.add_metric([stream.name], len(stream.queue))
            size.add_metric([stream.name], stream.spool.size_bytes)
            age.add_metric([stream.name], stream.spool.oldest_age(now))
            if isinstance(stream.spool, RecordFiles):
                kept.add_metric([stream.name], stream.spool.stored_bytes())
        connected = GaugeMetricFamily(
            "remixer_shipping_kafka_connected", "1 while a Kafka producer is connected (0 when off or away)."
        )
        connected.add_metric([], 1 if self._hub.kafka_connected else 0)
        metrics: list[Any] = [queue, size, age, kept, limit, connected]
        yield from metrics
