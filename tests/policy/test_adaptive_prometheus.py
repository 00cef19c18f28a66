"""The adaptive limits' Prometheus signal source against a real Prometheus scraping Istio-standard series.

The target's name carries a quote and a backslash (a label value the operator wrote), beside decoys the
selector must not match: another service, the source reporter's view, and ext_authz's own 429s (UAEX).
"""

from __future__ import annotations

import json
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server

from controller.adapters.prometheus import PrometheusSource
from policy.core.adaptive import AdaptiveDoc
from remixer.adaptive_signals import PrometheusSignals, signal_queries
from telemetry.structs import ENVOY_BUCKETS
from tests.realparts.prometheus import PrometheusFactory, free_port

TARGET = 'odd"svc\\name.shop.svc.cluster.local'
LABELS = ("reporter", "destination_service", "response_code", "response_flags")


def _rule() -> AdaptiveDoc:
    return AdaptiveDoc.model_validate(
        {
            "name": "odd",
            "target": {"service": TARGET},
            "signals": [
                {"signal": "p99_latency_ms", "setpoint": 250},
                {"signal": "error_ratio", "setpoint": 0.1},
                {"signal": "concurrency", "setpoint": 10},
            ],
            "min_rate": 1,
            "max_rate": 100,
        }
    )


class Exporter:
    """Istio-standard series as a sidecar's stats endpoint exposes them (prometheus_client text format)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("istio_requests", "requests", LABELS, registry=self.registry)
        self.duration = Histogram(
            "istio_request_duration_milliseconds",
            "duration",
            LABELS,
            buckets=ENVOY_BUCKETS,
            registry=self.registry,
        )
        self.port = free_port()
        self.server, self.thread = start_http_server(self.port, "127.0.0.1", registry=self.registry)

    def observe(self, latency_ms: float, n: int, **labels: str) -> None:
        values = {"reporter": "destination", "destination_service": TARGET, "response_code": "200"}
        values |= {"response_flags": "-"} | labels
        requests, duration = self.requests.labels(**values), self.duration.labels(**values)
        for _ in range(n):
            requests.inc()
            duration.observe(latency_ms)

    def close(self) -> None:
        self.server.shutdown()


@pytest.fixture
def exporter() -> Iterator[Exporter]:
    made = Exporter()
    yield made
    made.close()


def _query(url: str, promql: str) -> list[dict[str, object]]:
    params = urllib.parse.urlencode({"query": promql})
    with urllib.request.urlopen(f"{url}/api/v1/query?{params}", timeout=5) as resp:
        body = json.loads(resp.read())
    assert body["status"] == "success", body
    return list(body["data"]["result"])


def _wait(check: object, what: str, within: float = 30.0) -> None:
    deadline = time.monotonic() + within
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, what
        time.sleep(0.2)


async def test_prometheus_signals_read_only_the_escaped_target(
    exporter: Exporter, prometheus_factory: PrometheusFactory
) -> None:
    # Series exist (at zero) before the first scrape, so rate() sees the increase that follows.
    exporter.observe(20, 0)
    exporter.observe(20, 0, response_code="503")
    exporter.observe(1, 0, response_code="429", response_flags="UAEX")
    exporter.observe(5000, 0, reporter="source")
    exporter.observe(5000, 0, destination_service="odd.shop.svc.cluster.local")
    prom = prometheus_factory(scrape_targets=[f"127.0.0.1:{exporter.port}"], scrape_interval="1s")
    _wait(lambda: _query(prom.url, "up == 1"), "first scrape")
    exporter.observe(20, 85)
    exporter.observe(900, 10)
    exporter.observe(20, 5, response_code="503")
    exporter.observe(1, 500, response_code="429", response_flags="UAEX")
    exporter.observe(5000, 500, reporter="source")
    exporter.observe(5000, 500, destination_service="odd.shop.svc.cluster.local")
    _wait(lambda: _query(prom.url, "sum(increase(istio_requests_total[1m])) > 1000"), "the traffic scraped")

    source = PrometheusSource(prom.url, timeout=5, retries=0)
    signals = PrometheusSignals(source, reporter="destination", window=60)
    try:
        readings = await signals.read(_rule(), 1.0)
    finally:
        signals.close()
    # 100 requests: 90 at 20 ms (bucket 10-25), 10 at 900 ms (500-1000): p99 interpolates to 950.
    assert readings["p99_latency_ms"] == pytest.approx(950, rel=0.02)
    assert readings["error_ratio"] == pytest.approx(0.05, rel=0.02)
    concurrency = readings["concurrency"]
    assert concurrency is not None
    assert concurrency > 0


def test_every_label_value_is_escaped_in_the_queries() -> None:
    queries = signal_queries(_rule(), reporter="destination", window=30)
    for promql in queries.values():
        assert 'destination_service="odd\\"svc\\\\name.shop.svc.cluster.local"' in promql
        assert 'response_flags!~".*UAEX.*"' in promql
        assert "[30s]" in promql


async def test_an_unreachable_prometheus_is_no_fresh_signal() -> None:
    source = PrometheusSource(f"http://127.0.0.1:{free_port()}", timeout=1, retries=0)
    signals = PrometheusSignals(source, reporter="destination", window=30)
    try:
        readings = await signals.read(_rule(), 1.0)
    finally:
        signals.close()
    assert readings == {"p99_latency_ms": None, "error_ratio": None, "concurrency": None}
