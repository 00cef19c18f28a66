"""Controller test wiring: CRD validation, the fake Kubernetes API, a real sidecar's traffic scraped by a
real Prometheus, settings and run helpers."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import time
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from prometheus_client import start_http_server

from remixer.kit import envoy
from remixer.kit.echo import EchoServer
from remixer.kit.envoy import free_port
from telemetry.settings import TelemetrySettings
from tests.controller.fakekube import FakeKube
from tests.realparts.envoy import EnvoyFactory
from tests.realparts.prometheus import PrometheusFactory
from tests.telemetry.harness import running_telemetry

SIDECAR_CRD = Path(__file__).resolve().parents[1] / "istio-crds" / "sidecar-crd.yaml"


@functools.cache
def sidecar_schema() -> dict[str, Any]:
    crd = next(doc for doc in yaml.safe_load_all(SIDECAR_CRD.read_text()) if doc)
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1")
    schema: dict[str, Any] = version["schema"]["openAPIV3Schema"]
    return schema


@functools.cache
def sidecar_validator() -> jsonschema.protocols.Validator:
    schema = sidecar_schema()
    validator_class = jsonschema.validators.validator_for(schema)
    validator_class.check_schema(schema)
    return validator_class(schema)


def assert_valid_sidecar(manifest: dict[str, Any]) -> None:
    """Istio's own CRD schema (structure, types, enums; CEL rules are not evaluated by jsonschema)."""
    assert manifest["apiVersion"] == "networking.istio.io/v1"
    assert manifest["kind"] == "Sidecar"
    sidecar_validator().validate(manifest)
    for listener in manifest["spec"]["egress"]:
        assert listener["hosts"], "an egress listener needs hosts"
        for host in listener["hosts"]:
            namespace, _, name = host.partition("/")
            assert namespace, host
            assert name, host
    labels = (manifest["spec"].get("workloadSelector") or {}).get("labels", {})
    assert all("*" not in value and len(value) <= 63 for value in labels.values())


def read_dir_sidecars(root: Path) -> dict[str, dict[str, Any]]:
    found = {}
    for path in sorted(root.glob("*/*.yaml")):
        manifest = yaml.safe_load(path.read_text())
        assert_valid_sidecar(manifest)
        found[f"{path.parent.name}/{path.stem}"] = manifest
    return found


def hosts(manifest: dict[str, Any]) -> list[str]:
    return list(manifest["spec"]["egress"][0]["hosts"])


@pytest.fixture
def fake_kube() -> Iterator[tuple[FakeKube, str]]:
    """The fake API server enforcing deploy/'s RBAC and Istio's Sidecar schema."""
    kube = FakeKube(crd_validator=sidecar_validator())
    url = kube.start()
    yield kube, url
    kube.stop()


# ---- productpage's sidecar (a real Envoy) -> telemetry (ALS) -> /metrics -> a real Prometheus -----------

SERVICE = "reviews.bookinfo.svc.cluster.local"


def client_sidecar(
    *,
    admin_port: int,
    als_port: int,
    outbound_port: int,
    passthrough_port: int,
    upstream_port: int,
    als_flush: str,
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


def get(port: int, host: str | None = None) -> int:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/reviews/1")
    if host:
        request.add_header("Host", host)
    with urllib.request.urlopen(request, timeout=5) as response:
        response.read()
        return int(response.status)


def query(url: str, promql: str) -> list[Any]:
    body = urllib.parse.urlencode({"query": promql}).encode()
    with urllib.request.urlopen(f"{url}/api/v1/query", data=body, timeout=5) as response:
        result: list[Any] = json.load(response)["data"]["result"]
        return result


async def until(check: Any, seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while not await asyncio.to_thread(check):
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.2)


@dataclass
class ScrapedCaller:
    """productpage-v1's sidecar after its calls to reviews: Prometheus has a rate for them, telemetry's
    call-edge table (DATA_DIR/edges.db, where the controller finds it by itself) fills as calls go on."""

    prometheus_url: str
    outbound: int  # routes to reviews
    passthrough: int  # PassthroughCluster: any Host
    data_dir: Path


ScrapedCallerFactory = Callable[..., Awaitable[ScrapedCaller]]


@pytest.fixture
async def scraped_caller(
    tmp_path: Path,
    envoy_factory: EnvoyFactory,
    echo_upstream: EchoServer,
    prometheus_factory: PrometheusFactory,
) -> AsyncIterator[ScrapedCallerFactory]:
    """scraped_caller(telemetry_settings, als_flush=...): in-process telemetry (ALS and /metrics), a real
    Prometheus scraping it every second, a real Envoy as productpage's sidecar calling reviews."""
    async with contextlib.AsyncExitStack() as stack:

        async def start(settings: TelemetrySettings, *, als_flush: str) -> ScrapedCaller:
            tel = await stack.enter_async_context(running_telemetry(tmp_path, settings))
            metrics_port = free_port()
            httpd, _ = start_http_server(metrics_port, addr="127.0.0.1", registry=tel.registry)
            stack.callback(httpd.shutdown)
            prom = prometheus_factory(scrape_targets=[f"127.0.0.1:{metrics_port}"], scrape_interval="1s")
            outbound, passthrough = free_port(), free_port()
            boot = client_sidecar(
                admin_port=free_port(),
                als_port=tel.port,
                outbound_port=outbound,
                passthrough_port=passthrough,
                upstream_port=echo_upstream.port,
                als_flush=als_flush,
            )
            await asyncio.to_thread(envoy_factory, boot)
            # Two waves with scrapes in between: rate() needs the counter to grow between two samples.
            for _ in range(3):
                assert await asyncio.to_thread(get, outbound) == 200
            await until(lambda: query(prom.url, f'istio_requests_total{{destination_service="{SERVICE}"}}'))
            for _ in range(3):
                assert await asyncio.to_thread(get, outbound) == 200
            await until(
                lambda: query(
                    prom.url, f'rate(istio_requests_total{{destination_service="{SERVICE}"}}[1m]) > 0'
                )
            )
            return ScrapedCaller(prom.url, outbound, passthrough, tmp_path)

        yield start
