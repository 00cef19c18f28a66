"""`--workers N`: /metrics on the admin port carries every worker's series.

The merge alone (hypothesis: counters and histograms add up exactly, gauges stay per worker), and the
real thing: two workers behind two Envoys, whose own /stats witness what was sent."""

from __future__ import annotations

import time
import urllib.request
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.parser import text_string_to_metric_families

from remixer.kit import envoy
from remixer.kit.echo import EchoServer
from remixer.kit.envoy import EnvoyProcess
from remixer.kit.exposition import merge_workers, render
from remixer.kit.workers import metrics_socket, read_metrics
from tests.realparts.envoy import EnvoyFactory, ingress
from tests.realparts.remixer import RemixerFactory
from tests.telemetry.bootstraps import http_access_log, istio_node
from tests.waiting import wait_until

KINDS = ("istio_requests_total", "remixer_policy_checks_total")  # telemetry's and policy's
LABEL_VALUES = st.text(alphabet='ab "\\\n{}=,é', min_size=0, max_size=6)


def samples(text: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text.decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


@settings(max_examples=60, deadline=None)
@given(
    workers=st.lists(
        st.tuples(
            st.dictionaries(LABEL_VALUES, st.integers(0, 10**9), max_size=4),
            st.lists(st.floats(0, 100, allow_nan=False), max_size=5),
            st.integers(-5, 5),
        ),
        min_size=1,
        max_size=4,
    )
)
def test_merge_sums_counters_and_histograms_and_keeps_gauges_per_worker(
    workers: list[tuple[dict[str, int], list[float], int]],
) -> None:
    texts = []
    for index, (counts, observations, level) in enumerate(workers):
        registry = CollectorRegistry()
        counter = Counter("istio_requests", "Requests.", ["destination_service"], registry=registry)
        for value, count in counts.items():
            counter.labels(value).inc(count)
        histogram = Histogram("latency", "Latency.", registry=registry)
        for seconds in observations:
            histogram.observe(seconds)
        Gauge("queue", "Queue.", registry=registry).set(level)
        texts.append((str(index), render(registry)))
    merged = samples(merge_workers(texts))
    expected: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for _, text in texts:
        for key, value in samples(text).items():
            name = key[0]
            if name.endswith("_created"):
                continue
            if name == "queue":
                continue
            expected[key] = expected.get(key, 0.0) + value
    assert {k: v for k, v in merged.items() if k[0] in {n for n, _ in expected}} == expected
    for index, (_, _, level) in enumerate(workers):
        assert merged[("queue", (("worker", str(index)),))] == level


def metric_sum(text: bytes, name: str, **labels: str) -> float:
    total = 0.0
    for family in text_string_to_metric_families(text.decode()):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                total += s.value
    return total


def sidecar(listen: int, admin: int, grpc_port: int, upstream: int) -> dict[str, Any]:
    authz = envoy.grpc_cluster("remixer", "127.0.0.1", grpc_port)
    # New connections every few calls: SO_REUSEPORT spreads connections, not calls, over the workers.
    options = authz["typed_extension_protocol_options"][
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
    ]
    options["common_http_protocol_options"] = {"max_requests_per_connection": 5}
    # Shaped as istio-proxy logs a client sidecar's calls (tests/telemetry/bootstraps.py): Istio node
    # metadata, an outbound|port||host cluster, the log name Istio gives its HTTP access logger.
    return ingress(
        admin=admin,
        listen=listen,
        upstream=upstream,
        clusters=[authz, envoy.grpc_cluster("remixer_als", "127.0.0.1", grpc_port)],
        http_filters=[envoy.ext_authz_grpc_filter("remixer", timeout="2s")],
        access_log=http_access_log("remixer_als", "outbound"),
        route_cluster="outbound|8080||echo.default.svc.cluster.local",
        node=istio_node(workload="web", namespace="shop", app="web"),
    )


def logs_written(stats: list[dict[str, int]]) -> int:
    return sum(s["access_logs.grpc_access_log.logs_written"] for s in stats)


def test_two_workers_metrics_add_up_to_what_envoy_sent(
    remixer_factory: RemixerFactory, envoy_factory: EnvoyFactory
) -> None:
    server = remixer_factory("--workers", "2")
    with EchoServer() as upstream:
        deadline = time.monotonic() + 20
        while not metrics_socket(server.data_dir, 1).exists():  # worker 1 starts after worker 0
            assert time.monotonic() < deadline, server.log_tail()
            time.sleep(0.1)
        # SO_REUSEPORT hashes connections, not calls, over the workers, and an Envoy's access-log stream
        # is one long-lived connection per Envoy worker thread: which remixer worker gets a proxy's
        # entries is the kernel's pick. So proxies are added, worker 1's share read through its own
        # metrics socket, until both workers serve traffic of both kinds.
        proxies: list[EnvoyProcess] = []
        sent = 0
        while True:
            listen, admin = envoy.free_port(), envoy.free_port()
            proxy = envoy_factory(sidecar(listen, admin, server.grpc_port, upstream.port), concurrency=2)
            proxies.append(proxy)
            for i in range(40):
                with urllib.request.urlopen(
                    f"http://127.0.0.1:{listen}/r/{len(proxies)}/{i}", timeout=5
                ) as resp:
                    assert resp.status == 200
                sent += 1
            # Envoy logs a request when its stream is torn down, which can come just after the client
            # has the response: wait for every log (and never more than were sent).
            wait_until(
                lambda sent=sent: logs_written([p.stats() for p in proxies]) >= sent,
                what=f"Envoy wrote the {sent} access logs",
            )
            stats = [p.stats() for p in proxies]
            written = logs_written(stats)
            assert written == sent
            deadline = time.monotonic() + 20
            while (metrics := server.metrics().encode()) and metric_sum(
                metrics, "remixer_telemetry_entries_received_total"
            ) < written:
                assert time.monotonic() < deadline, "remixer did not receive every entry"
                time.sleep(0.2)
            one = read_metrics(metrics_socket(server.data_dir, 1))  # worker 0's share: the rest
            if all(0 < metric_sum(one, name) < metric_sum(metrics, name) for name in KINDS):
                break
            assert len(proxies) < 12, "the kernel never gave worker 1 (or 0) a connection of each kind"
        checked = sum(
            s.get(f"http.ingress_http.ext_authz.{d}", 0) for s in stats for d in ("ok", "denied", "error")
        )
    # Both workers had traffic of both kinds: the sums below need worker 1's series, not just 0's.
    for name in KINDS:
        assert 0 < metric_sum(one, name) < metric_sum(metrics, name), name
    print(
        f"workers: {len(proxies)} envoys sent {sent} requests, logged {written}, checked {checked}; "
        "/metrics sums: "
        f"istio_requests_total {metric_sum(metrics, 'istio_requests_total'):.0f} (worker 1: "
        f"{metric_sum(one, 'istio_requests_total'):.0f}), remixer_policy_checks_total "
        f"{metric_sum(metrics, 'remixer_policy_checks_total'):.0f} (worker 1: "
        f"{metric_sum(one, 'remixer_policy_checks_total'):.0f})"
    )
    assert metric_sum(metrics, "istio_requests_total") == written
    assert metric_sum(metrics, "remixer_telemetry_entries_received_total") == written
    assert metric_sum(metrics, "remixer_policy_checks_total") == checked == sent
    assert metric_sum(metrics, "istio_requests_total", response_code="200") == sent
    assert metric_sum(metrics, "remixer_shipping_records_stored_total", stream="access-logs") == written
    # Gauges stay per worker.
    assert metric_sum(metrics, "remixer_up", worker="0") == metric_sum(metrics, "remixer_up", worker="1") == 1
