"""Prometheus export: the Istio metrics are built from the aggregates at scrape time (one Collector),
the card's own counters are ordinary prometheus_client metrics on the context registry."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

from telemetry.core.aggregates import Aggregates, cumulative
from telemetry.structs import ENVOY_BUCKETS

_LE = [str(b) if b != int(b) else str(int(b)) for b in ENVOY_BUCKETS] + ["+Inf"]


def _histogram(name: str, doc: str, names: Sequence[str]) -> HistogramMetricFamily:
    return HistogramMetricFamily(name, doc, labels=list(names))


class IstioCollector:
    """istio_requests_total, istio_request_duration_milliseconds, istio_request_bytes, istio_response_bytes,
    istio_tcp_{sent,received}_bytes_total, istio_tcp_connections_{opened,closed}_total."""

    def __init__(
        self, aggregates: Aggregates, *, http_names: Sequence[str], tcp_names: Sequence[str]
    ) -> None:
        self._aggregates = aggregates
        self._http_names = list(http_names)
        self._tcp_names = list(tcp_names)

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        names = self._http_names
        requests = CounterMetricFamily(
            "istio_requests_total", "Requests, as Istio counts them.", labels=names
        )
        duration = _histogram(
            "istio_request_duration_milliseconds", "Request duration in milliseconds.", names
        )
        request_bytes = _histogram("istio_request_bytes", "Request size (headers + body) in bytes.", names)
        response_bytes = _histogram("istio_response_bytes", "Response size (headers + body) in bytes.", names)
        for labels, series in self._aggregates.http_items():
            values = list(labels)
            requests.add_metric(values, series.count)
            for family, counts, total in (
                (duration, series.duration, series.duration_sum),
                (request_bytes, series.request_bytes, series.request_sum),
                (response_bytes, series.response_bytes, series.response_sum),
            ):
                family.add_metric(values, list(zip(_LE, cumulative(counts), strict=True)), total)
        yield from (requests, duration, request_bytes, response_bytes)

        tcp = self._tcp_names
        sent = CounterMetricFamily(
            "istio_tcp_sent_bytes_total", "TCP bytes sent (response direction).", labels=tcp
        )
        received = CounterMetricFamily(
            "istio_tcp_received_bytes_total", "TCP bytes received (request direction).", labels=tcp
        )
        opened = CounterMetricFamily(
            "istio_tcp_connections_opened_total", "TCP connections opened.", labels=tcp
        )
        closed = CounterMetricFamily(
            "istio_tcp_connections_closed_total", "TCP connections closed.", labels=tcp
        )
        for labels, tcp_series in self._aggregates.tcp_items():
            values = list(labels)
            sent.add_metric(values, tcp_series.sent)
            received.add_metric(values, tcp_series.received)
            opened.add_metric(values, tcp_series.opened)
            closed.add_metric(values, tcp_series.closed)
        yield from (sent, received, opened, closed)

        series_count = GaugeMetricFamily(
            "remixer_telemetry_series",
            "Label sets held per Istio metric family (compare with remixer_telemetry_series_limit).",
            labels=["family"],
        )
        series_count.add_metric(["http"], len(self._aggregates.http))
        series_count.add_metric(["tcp"], len(self._aggregates.tcp))
        yield series_count
        limit = GaugeMetricFamily(
            "remixer_telemetry_series_limit", "Cap on label sets per Istio metric family."
        )
        limit.add_metric([], self._aggregates.max_series)
        yield limit
        overflow = CounterMetricFamily(
            "remixer_telemetry_series_overflowed",
            "New label sets folded into the overflow series because the cap was reached.",
            labels=["family"],
        )
        for family_name, count in self._aggregates.overflowed.items():
            overflow.add_metric([family_name], count)
        yield overflow


class TelemetryStats:
    """The card's self-metrics (remixer_telemetry_*), updated once per batch."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.entries_received = Counter(
            "remixer_telemetry_entries_received",
            "Access-log entries received from Envoy (decoded messages).",
            ["kind"],
            registry=registry,
        )
        self.messages_malformed = Counter(
            "remixer_telemetry_messages_malformed",
            "StreamAccessLogs messages refused (undecodable, no identifier): answered INVALID_ARGUMENT.",
            ["reason"],
            registry=registry,
        )
        self.records_exported = Counter(
            "remixer_telemetry_records_exported",
            "Access-log records handed to the shipping queue (Kafka or spool).",
            registry=registry,
        )
        self.batch_entries = Histogram(
            "remixer_telemetry_batch_entries",
            "Entries per StreamAccessLogs message.",
            buckets=(1, 5, 10, 25, 50, 100, 250, 500, 1000),
            registry=registry,
        )
        self.streams = Gauge("remixer_telemetry_streams", "Open StreamAccessLogs streams.", registry=registry)
        self.label_misses = Counter(
            "remixer_telemetry_label_misses",
            "Entries whose label could not be derived (value 'unknown').",
            ["label"],
            registry=registry,
        )
        self.edges_written = Counter(
            "remixer_telemetry_call_edges_written", "Call-edge rows upserted.", registry=registry
        )
        self.edge_errors = Counter(
            "remixer_telemetry_call_edge_errors",
            "Failed call-edge flushes (kept and retried).",
            registry=registry,
        )
        self._label_miss_children: dict[str, Any] = {}

    def miss(self, label: str, count: int) -> None:
        child = self._label_miss_children.get(label)
        if child is None:
            child = self._label_miss_children[label] = self.label_misses.labels(label)
        child.inc(count)
