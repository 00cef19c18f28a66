"""The mesh and service dashboards and the mesh alerts also work on data shaped exactly as Istio's sidecars
and waypoints export it: all 25 standard labels, both reporters plus waypoint, mTLS, Envoy's default buckets.
The data is backfilled into a real Prometheus with `promtool tsdb create-blocks-from openmetrics`.

(The self-metric dashboards need remixer's own metrics: test_real_traffic covers those.)
"""

from __future__ import annotations

import itertools
import json
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.realparts.prometheus import PrometheusServer, Series, backfill, openmetrics_text

from .paths import DEPLOY

STEP = 15.0
SAMPLES = 120  # 30 minutes
ENVOY_BUCKETS = [0.5, 1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000, 300000]
ISTIO_BOARDS = [
    DEPLOY / "grafana/dashboards/remixer-mesh.json",
    DEPLOY / "grafana/dashboards/remixer-service.json",
]


def _peer(prefix: str, workload: str, namespace: str, app: str) -> dict[str, str]:
    return {
        f"{prefix}_workload": workload,
        f"{prefix}_workload_namespace": namespace,
        f"{prefix}_principal": f"spiffe://cluster.local/ns/{namespace}/sa/{app}",
        f"{prefix}_app": app,
        f"{prefix}_version": "v1",
        f"{prefix}_canonical_service": app,
        f"{prefix}_canonical_revision": "v1",
        f"{prefix}_cluster": "Kubernetes",
    }


def istio_series(now: float) -> list[Series]:
    start = now - STEP * SAMPLES
    calls = [  # (source app, destination app, protocol, rps, share of 5xx)
        ("productpage", "reviews", "http", 20.0, 0.04),
        ("productpage", "details", "http", 10.0, 0.10),
        ("reviews", "ratings", "grpc", 8.0, 0.04),
        ("ratings", "mongodb", "tcp", 2.0, 0.0),
    ]
    series: list[Series] = []
    for (source, dest, protocol, rps, errors), reporter in itertools.product(
        calls, ("source", "destination", "waypoint")
    ):
        peers = {
            **_peer("source", f"{source}-v1", "bookinfo", source),
            **_peer("destination", f"{dest}-v1", "bookinfo", dest),
            "reporter": reporter,
            "destination_service": f"{dest}.bookinfo.svc.cluster.local",
            "destination_service_name": dest,
            "destination_service_namespace": "bookinfo",
            "request_protocol": protocol,
            "response_flags": "-",
            "connection_security_policy": "mutual_tls" if reporter == "destination" else "unknown",
        }

        def counter(name: str, labels: dict[str, str], per_second: float) -> Series:
            return name, labels, [(start + i * STEP, per_second * STEP * i) for i in range(SAMPLES)]

        if protocol == "tcp":
            series += [
                counter("istio_tcp_sent_bytes_total", peers, rps * 900),
                counter("istio_tcp_received_bytes_total", peers, rps * 300),
                counter("istio_tcp_connections_opened_total", peers, rps),
                counter("istio_tcp_connections_closed_total", peers, rps),
            ]
            continue
        for code, share in (("200", 0.94 - errors), ("404", 0.06), ("503", errors)):
            labels = {
                **peers,
                "response_code": code,
                "grpc_response_status": "0" if protocol == "grpc" else "",
            }
            series.append(counter("istio_requests_total", labels, rps * share))
            for histogram, scale in (
                ("istio_request_duration_milliseconds", 12.0),
                ("istio_request_bytes", 300.0),
                ("istio_response_bytes", 4000.0),
            ):
                for bound in [*ENVOY_BUCKETS, float("inf")]:
                    fraction = min(1.0, bound / (scale * 4))
                    le = "+Inf" if bound == float("inf") else f"{bound:g}"
                    series.append(
                        counter(f"{histogram}_bucket", {**labels, "le": le}, rps * share * fraction)
                    )
                series.append(counter(f"{histogram}_count", labels, rps * share))
                series.append(counter(f"{histogram}_sum", labels, rps * share * scale))
    return series


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[PrometheusServer, float]]:
    root = tmp_path_factory.mktemp("istio-shaped")
    now = time.time() - 60
    server = PrometheusServer(root)
    backfill(openmetrics_text(istio_series(now)), server.data_dir)
    server.start()
    try:
        yield server, now
    finally:
        server.stop()


def query(server: PrometheusServer, at: float, expr: str) -> dict[str, Any]:
    params = urllib.parse.urlencode({"query": expr, "time": f"{at:.3f}"})
    try:
        with urllib.request.urlopen(f"{server.url}/api/v1/query?{params}", timeout=10) as resp:
            return dict(json.loads(resp.read()))
    except urllib.error.HTTPError as exc:
        return dict(json.loads(exc.read()))


@pytest.mark.parametrize("path", ISTIO_BOARDS, ids=[p.stem for p in ISTIO_BOARDS])
def test_istio_dashboards_return_data_for_every_variable_value(
    prometheus: tuple[PrometheusServer, float], path: Path
) -> None:
    server, at = prometheus
    board = json.loads(path.read_text())
    services = [f"{s}.bookinfo.svc.cluster.local" for s in ("reviews", "details", "ratings", "mongodb")]
    empty = []
    for panel in board["panels"]:
        for target in panel["targets"]:
            hits = 0
            for service, qrep in itertools.product(services, ("destination", "source|waypoint")):
                expr = (
                    target["expr"]
                    .replace("$__rate_interval", "1m")
                    .replace("$service", service)
                    .replace("$qrep", qrep)
                )
                body = query(server, at, expr)
                assert body["status"] == "success", f"{expr}: {body.get('error')}"
                hits += bool(body["data"]["result"])
            if not hits:
                empty.append(f"{panel['title']}: {target['expr']}")
    assert not empty, "no data on Istio-shaped metrics:\n" + "\n".join(empty)


def test_istio_shaped_mesh_success_rate_matches_the_data(prometheus: tuple[PrometheusServer, float]) -> None:
    server, at = prometheus
    board = json.loads((DEPLOY / "grafana/dashboards/remixer-mesh.json").read_text())
    panel = next(p for p in board["panels"] if p["title"] == "Global success rate (non-5xx)")
    body = query(server, at, panel["targets"][0]["expr"].replace("$__rate_interval", "1m"))
    # 5xx: reviews 4% of 20/s, details 10% of 10/s, ratings 4% of 8/s -> 2.12 of 38 req/s.
    assert float(body["data"]["result"][0]["value"][1]) == pytest.approx(1 - 2.12 / 38, abs=0.002)


def test_mesh_alert_expressions_pick_the_failing_service(prometheus: tuple[PrometheusServer, float]) -> None:
    server, at = prometheus
    rules = {
        r["alert"]: r
        for g in yaml.safe_load((DEPLOY / "prometheus/remixer-alerts.rules.yaml").read_text())["groups"]
        for r in g["rules"]
    }
    firing = query(server, at, rules["RemixerService5xxRatioHigh"]["expr"])["data"]["result"]
    assert [r["metric"]["destination_service"] for r in firing] == ["details.bookinfo.svc.cluster.local"]
    # Steady 404s are no surge.
    assert query(server, at, rules["RemixerService404Surge"]["expr"])["data"]["result"] == []
