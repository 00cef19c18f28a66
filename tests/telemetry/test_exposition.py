"""/metrics: the Istio families write their own text (remixer.kit.exposition); Prometheus' parser must read
from it exactly what prometheus_client's own writer gives for the same registry."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from remixer.kit.exposition import render
from telemetry.adapters.prometheus import IstioCollector
from telemetry.core.aggregates import Aggregates, HttpTally, TcpTally
from telemetry.structs import LABEL_NAMES, TCP_LABEL_NAMES

# Label values as they come off the wire: quotes, backslashes, newlines, any Unicode.
_VALUE = st.one_of(st.sampled_from(["", "unknown", 'a"b', "back\\slash", "line\nbreak", "\\n"]), st.text())


def _parsed(text: bytes) -> list[tuple[Any, ...]]:
    families = text_string_to_metric_families(text.decode())
    return sorted(
        (
            f.name,
            f.type,
            f.documentation,
            sorted((s.name, sorted(s.labels.items()), s.value) for s in f.samples),
        )
        for f in families
    )


def _registry(http_names: list[str], tcp_names: list[str]) -> tuple[CollectorRegistry, Aggregates]:
    aggregates = Aggregates(http_label_count=len(http_names), tcp_label_count=len(tcp_names), max_series=50)
    registry = CollectorRegistry()
    registry.register(IstioCollector(aggregates, http_names=http_names, tcp_names=tcp_names))
    Counter("remixer_test_plain", "A family prometheus_client writes.", ["kind"], registry=registry).labels(
        'x"y'
    ).inc(3)
    return registry, aggregates


def _observe(aggregates: Aggregates, labels: tuple[str, ...], tcp_labels: tuple[str, ...], n: int) -> None:
    tally = HttpTally()
    for i in range(n):
        tally.observe(0.3 * i + 0.01, 100 * i, 10**i)
    tally.apply(aggregates.http_slot(labels))
    tcp = TcpTally()
    tcp.observe(n, 2 * n, 1, 1)
    tcp.apply(aggregates.tcp_slot(tcp_labels))


@settings(max_examples=50, deadline=None)
@given(
    st.lists(st.lists(_VALUE, min_size=len(LABEL_NAMES), max_size=len(LABEL_NAMES)), min_size=1, max_size=3),
    st.integers(1, 12),
)
def test_the_istio_families_read_back_as_prometheus_clients_own_text(
    value_sets: list[list[str]], n: int
) -> None:
    registry, aggregates = _registry(list(LABEL_NAMES), list(TCP_LABEL_NAMES))
    for values in value_sets:
        _observe(aggregates, tuple(values), tuple(values[: len(TCP_LABEL_NAMES)]), n)
    ours = render(registry)
    assert _parsed(ours) == _parsed(generate_latest(registry))
    assert b"istio_request_duration_milliseconds_bucket{" in ours
    # Cached label strings, fresh numbers: a second scrape after more traffic shows the new counts.
    _observe(aggregates, tuple(value_sets[0]), tuple(value_sets[0][: len(TCP_LABEL_NAMES)]), 1)
    again = render(registry)
    assert again != ours
    assert _parsed(again) == _parsed(generate_latest(registry))


def test_no_labels_means_no_braces() -> None:
    registry, aggregates = _registry([], [])
    _observe(aggregates, (), (), 3)
    text = render(registry).decode()
    assert "istio_requests_total 3.0\n" in text
    assert 'istio_request_bytes_bucket{le="+Inf"} 3.0\n' in text
    assert "{}" not in text
    assert _parsed(text.encode()) == _parsed(generate_latest(registry))


def test_label_sets_past_the_cap_and_the_overflow_series() -> None:
    # The label-string cache follows the aggregates: past max_series new sets fold into the overflow.
    registry, aggregates = _registry(list(LABEL_NAMES), list(TCP_LABEL_NAMES))
    for i in range(120):
        labels = tuple(f"{name}-{i}" for name in LABEL_NAMES)
        _observe(aggregates, labels, labels[: len(TCP_LABEL_NAMES)], 2)
    first = render(registry)
    assert _parsed(first) == _parsed(generate_latest(registry))
    assert len(aggregates.http) == 51  # max_series, plus the overflow series
    assert render(registry) == first
