"""Real Envoy -> remixer telemetry (ALS) -> /metrics -> real Prometheus scraping it -> controller."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import grpc
from prometheus_client import CollectorRegistry, start_http_server

from controller.settings import ControllerSettings
from remixer.kit import envoy
from remixer.kit.echo import EchoServer
from remixer.kit.envoy import free_port
from remixer.kit.parts import PartContext
from remixer.kit.shipping import build_record_sinks
from remixer.kit.shipping.settings import ShippingSettings
from telemetry.app import build_part
from telemetry.settings import TelemetrySettings
from tests.controller.conftest import hosts, read_dir_sidecars
from tests.controller.helpers import run_at
from tests.realparts.envoy import EnvoyFactory
from tests.realparts.prometheus import PrometheusFactory

SERVICE = "reviews.bookinfo.svc.cluster.local"


async def _allow(*_args: Any, **_kwargs: Any) -> None:
    return None


def _client_sidecar(
    *,
    admin_port: int,
    als_port: int,
    outbound_port: int,
    passthrough_port: int,
    upstream_port: int,
    als_flush: str = "0.1s",
) -> dict[str, Any]:
    cluster = f"outbound|9080||{SERVICE}"
    node = {
        "id": "sidecar~10.0.0.1~productpage-v1-abc.bookinfo~bookinfo.svc.cluster.local",
        "cluster": "productpage.bookinfo",
        "metadata": {
            "NAME": "productpage-v1-abc",
            "NAMESPACE": "bookinfo",
            "WORKLOAD_NAME": "productpage-v1",
            "CLUSTER_ID": "Kubernetes",
            "MESH_ID": "cluster.local",
            "LABELS": {
                "app": "productpage",
                "version": "v1",
                "service.istio.io/canonical-name": "productpage",
                "service.istio.io/canonical-revision": "v1",
            },
        },
    }
    access_log = [envoy.http_grpc_access_log("remixer_als", log_name="http_envoy_accesslog", flush=als_flush)]
    outbound = envoy.http_listener(
        "outbound",
        outbound_port,
        route_cluster=cluster,
        http_filters=[],
        access_log=access_log,
        stat_prefix="out",
    )
    # A service not yet in scope: Istio sends such calls through PassthroughCluster (original destination).
    passthrough = envoy.http_listener(
        "passthrough",
        passthrough_port,
        route_cluster="PassthroughCluster",
        http_filters=[],
        access_log=access_log,
        stat_prefix="passthrough",
    )
    clusters = [
        envoy.grpc_cluster("remixer_als", "127.0.0.1", als_port),
        envoy.http_cluster(cluster, "127.0.0.1", upstream_port),
        envoy.http_cluster("PassthroughCluster", "127.0.0.1", upstream_port),
    ]
    return envoy.bootstrap(
        admin_port=admin_port, listeners=[outbound, passthrough], clusters=clusters, node=node
    )


def _get(port: int, host: str | None = None) -> int:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/reviews/1")
    if host:
        request.add_header("Host", host)
    with urllib.request.urlopen(request, timeout=5) as response:
        response.read()
        return int(response.status)


def _query(url: str, promql: str) -> list[Any]:
    body = urllib.parse.urlencode({"query": promql}).encode()
    with urllib.request.urlopen(f"{url}/api/v1/query", data=body, timeout=5) as response:
        result: list[Any] = json.load(response)["data"]["result"]
        return result


async def _until(check: Any, seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while not await asyncio.to_thread(check):
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.2)


async def test_sidecar_from_prometheus_scraping_remixer_fed_by_real_envoy(
    tmp_path: Path,
    envoy_factory: EnvoyFactory,
    echo_upstream: EchoServer,
    prometheus_factory: PrometheusFactory,
) -> None:
    registry = CollectorRegistry()
    hub = build_record_sinks(ShippingSettings(), data_dir=tmp_path, registry=registry)
    context = PartContext(data_dir=tmp_path, registry=registry, records=hub, require_writer=_allow)
    telemetry_settings = TelemetrySettings.model_validate({"call_edges": {"flush_interval_s": 0.2}})
    part = build_part(telemetry_settings, context)
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    part.register_grpc(server)
    als_port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    await part.start()
    metrics_port = free_port()
    httpd, _ = start_http_server(metrics_port, addr="127.0.0.1", registry=registry)
    try:
        prom = prometheus_factory(scrape_targets=[f"127.0.0.1:{metrics_port}"], scrape_interval="1s")
        outbound, passthrough = free_port(), free_port()
        boot = _client_sidecar(
            admin_port=free_port(),
            als_port=als_port,
            outbound_port=outbound,
            passthrough_port=passthrough,
            upstream_port=echo_upstream.port,
        )
        await asyncio.to_thread(envoy_factory, boot)
        # Two waves with scrapes in between: rate() needs the counter to grow between two samples.
        for _ in range(3):
            assert await asyncio.to_thread(_get, outbound) == 200
        await _until(lambda: _query(prom.url, f'istio_requests_total{{destination_service="{SERVICE}"}}'))
        for _ in range(3):
            assert await asyncio.to_thread(_get, outbound) == 200
        await _until(
            lambda: _query(prom.url, f'rate(istio_requests_total{{destination_service="{SERVICE}"}}[1m]) > 0')
        )
        # One call to ratings through PassthroughCluster: too few for a rate, but telemetry's call-edge
        # table (its default DATA_DIR/edges.db, which the controller finds by itself) recorded it.
        assert await asyncio.to_thread(_get, passthrough, "ratings.bookinfo:9080") == 200
        edges_db = tmp_path / "edges.db"
        await _until(lambda: edges_db.exists() and b"ratings" in edges_db.read_bytes(), seconds=15)

        out = tmp_path / "sidecars"
        settings = ControllerSettings(prometheus_url=prom.url, window="5m")
        summary = await run_at(settings, sink=f"dir:{out}", data_dir=tmp_path, now=time.time())
        assert summary.outcome == "wrote", summary.message
        found = read_dir_sidecars(out)
        assert list(found) == ["bookinfo/remixer-productpage-v1"]
        sidecar = found["bookinfo/remixer-productpage-v1"]
        assert hosts(sidecar) == [
            "bookinfo/ratings.bookinfo.svc.cluster.local",
            f"bookinfo/{SERVICE}",
            "istio-system/*",
            "remixer/*",
        ]
        # The labels Istio's injector put on the pod (node metadata LABELS), as telemetry reported them.
        assert sidecar["spec"]["workloadSelector"]["labels"] == {
            "service.istio.io/canonical-name": "productpage",
            "service.istio.io/canonical-revision": "v1",
        }
    finally:
        httpd.shutdown()
        await part.stop(1.0)
        await server.stop(1.0)
        await hub.close()
