"""Prometheus export: the Istio metrics are built from the aggregates at scrape time (one Collector),
the card's own counters are ordinary prometheus_client metrics on the context registry."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from functools import partial
from typing import Any, cast

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString

from remixer.kit.exposition import TextFamily, label_body
from telemetry.core.aggregates import Aggregates, cumulative
from telemetry.structs import ENVOY_BUCKETS

_number = cast(Callable[[float], str], floatToGoString)  # Go's float formatting, as Prometheus expects
_LE = [str(b) if b != int(b) else str(int(b)) for b in ENVOY_BUCKETS] + ["+Inf"]
_LE_LABELS = [f'le="{le}"' for le in _LE]
# name -> (help, per-bucket counts field, sum field) of each HttpSeries histogram.
_HISTOGRAMS = {
    "istio_request_duration_milliseconds": ("Request duration in milliseconds.", "duration", "duration_sum"),
    "istio_request_bytes": ("Request size (headers + body) in bytes.", "request_bytes", "request_sum"),
    "istio_response_bytes": ("Response size (headers + body) in bytes.", "response_bytes", "response_sum"),
}
# name -> (help, TcpSeries field) of each TCP counter.
_TCP_COUNTERS = {
    "istio_tcp_sent_bytes": ("TCP bytes sent (response direction).", "sent"),
    "istio_tcp_received_bytes": ("TCP bytes received (request direction).", "received"),
    "istio_tcp_connections_opened": ("TCP connections opened.", "opened"),
    "istio_tcp_connections_closed": ("TCP connections closed.", "closed"),
}


class IstioCollector:
    """istio_requests_total, istio_request_duration_milliseconds, istio_request_bytes, istio_response_bytes,
    istio_tcp_{sent,received}_bytes_total, istio_tcp_connections_{opened,closed}_total.

    The families write their own exposition text (remixer.kit.exposition): each label set's escaped label
    string is kept between scrapes, so a scrape formats numbers only."""

    def __init__(
        self, aggregates: Aggregates, *, http_names: Sequence[str], tcp_names: Sequence[str]
    ) -> None:
        self._aggregates = aggregates
        self._http_names = list(http_names)
        self._tcp_names = list(tcp_names)
        self._bodies: dict[str, dict[tuple[str, ...], str]] = {"http": {}, "tcp": {}}

    def describe(self) -> list[Metric]:
        return []

    def _rows(self, family: str, items: list[tuple[tuple[str, ...], Any]], names: list[str]) -> list[Any]:
        """(escaped label string, series) per label set; the strings of the sets held now are kept."""
        known = self._bodies[family]
        bodies = {labels: known.get(labels) or label_body(names, labels) for labels, _ in items}
        self._bodies[family] = bodies  # only the label sets held now: never outgrows the aggregates
        return [(bodies[labels], series) for labels, series in items]

    def collect(self) -> Iterator[Metric]:
        http = list(self._aggregates.http_items())
        tcp = list(self._aggregates.tcp_items())
        http_rows = self._rows("http", http, self._http_names)
        tcp_rows = self._rows("tcp", tcp, self._tcp_names)

        yield TextFamily(
            "istio_requests",
            "Requests, as Istio counts them.",
            "counter",
            lines=partial(_counter_lines, "istio_requests_total", http_rows, "count"),
            samples=partial(_counter_samples, "istio_requests_total", self._http_names, http, "count"),
        )
        for name, (doc, _, _) in _HISTOGRAMS.items():
            yield TextFamily(
                name,
                doc,
                "histogram",
                lines=partial(_histogram_lines, name, http_rows),
                samples=partial(_histogram_samples, name, self._http_names, http),
            )
        for name, (doc, field) in _TCP_COUNTERS.items():
            yield TextFamily(
                name,
                doc,
                "counter",
                lines=partial(_counter_lines, name + "_total", tcp_rows, field),
                samples=partial(_counter_samples, name + "_total", self._tcp_names, tcp, field),
            )

        series_count = GaugeMetricFamily(
            "remixer_telemetry_series",
            "Label sets held per Istio metric family (compare with remixer_telemetry_series_limit).",
            labels=["family"],
        )
        series_count.add_metric(["http"], len(http))
        series_count.add_metric(["tcp"], len(tcp))
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


def _braced(body: str, extra: str = "") -> str:
    inside = f"{body},{extra}" if body and extra else body or extra
    return "{" + inside + "}" if inside else ""


def _counter_lines(sample_name: str, rows: list[tuple[str, Any]], field: str) -> Iterator[str]:
    for body, series in rows:
        yield f"{sample_name}{_braced(body)} {_number(getattr(series, field))}\n"


def _histogram_lines(name: str, rows: list[tuple[str, Any]]) -> Iterator[str]:
    _, counts_field, sum_field = _HISTOGRAMS[name]
    bucket = name + "_bucket"
    for body, series in rows:
        cumulated = cumulative(getattr(series, counts_field))
        yield "".join(
            f"{bucket}{_braced(body, le)} {_number(count)}\n"
            for le, count in zip(_LE_LABELS, cumulated, strict=True)
        )
        braced = _braced(body)
        # _count is the +Inf bucket, as prometheus_client's HistogramMetricFamily writes it.
        yield f"{name}_count{braced} {_number(cumulated[-1])}\n"
        yield f"{name}_sum{braced} {_number(getattr(series, sum_field))}\n"


def _counter_samples(
    sample_name: str, names: list[str], items: list[tuple[tuple[str, ...], Any]], field: str
) -> list[Sample]:
    family = CounterMetricFamily(sample_name, "", labels=names)
    for labels, series in items:
        family.add_metric(list(labels), getattr(series, field))
    return list(family.samples)


def _histogram_samples(name: str, names: list[str], items: list[tuple[tuple[str, ...], Any]]) -> list[Sample]:
    doc, counts_field, sum_field = _HISTOGRAMS[name]
    family = HistogramMetricFamily(name, doc, labels=names)
    for labels, series in items:
        buckets = list(zip(_LE, cumulative(getattr(series, counts_field)), strict=True))
        family.add_metric(list(labels), buckets, getattr(series, sum_field))
    return list(family.samples)


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
