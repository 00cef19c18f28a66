"""Real Envoy -> ALS -> telemetry -> istio_* metrics with the full Istio label set (HTTP and TCP)."""

from __future__ import annotations

import asyncio
import base64
import socket
import urllib.request
from pathlib import Path

from google.protobuf import struct_pb2

from remixer.kit.echo import EchoServer
from remixer.kit.envoy import free_port
from telemetry.structs import LABEL_NAMES, TCP_LABEL_NAMES
from tests.realparts.envoy import EnvoyFactory
from tests.telemetry.bootstraps import istio_node, sidecar_bootstrap
from tests.telemetry.harness import running_telemetry


def peer_metadata_header(workload: str, namespace: str, app: str) -> str:
    """What Istio's metadata exchange puts in x-envoy-peer-metadata: a base64 protobuf Struct."""
    struct = struct_pb2.Struct()
    struct.update(
        {
            "NAME": f"{workload}-xyz",
            "NAMESPACE": namespace,
            "WORKLOAD_NAME": workload,
            "CLUSTER_ID": "Kubernetes",
            "LABELS": {"app": app, "version": "v1"},
        }
    )
    return base64.b64encode(struct.SerializeToString()).decode()


def _get(
    port: int,
    path: str,
    *,
    host: str | None = None,
    request_id: str = "",
    headers: dict[str, str] | None = None,
) -> int:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers=headers or {})
    if host:
        req.add_header("Host", host)
    if request_id:
        req.add_header("x-request-id", request_id)
    with urllib.request.urlopen(req, timeout=5) as resp:
        resp.read()
        return int(resp.status)


def _tcp_roundtrip(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"GET /tcp HTTP/1.1\r\nHost: tcp-echo\r\nConnection: close\r\n\r\n")
        while sock.recv(65536):
            pass


async def test_http_and_tcp_metrics_from_real_envoy(
    tmp_path: Path, envoy_factory: EnvoyFactory, echo_upstream: EchoServer
) -> None:
    async with running_telemetry(tmp_path) as tel:
        outbound, inbound, tcp = free_port(), free_port(), free_port()
        boot = sidecar_bootstrap(
            admin_port=free_port(),
            als_port=tel.port,
            upstream_port=echo_upstream.port,
            outbound_port=outbound,
            inbound_port=inbound,
            tcp_port=tcp,
            node=istio_node(workload="productpage-v1", namespace="bookinfo", app="productpage"),
        )
        proxy = await asyncio.to_thread(envoy_factory, boot)
        for i in range(5):
            assert await asyncio.to_thread(_get, outbound, f"/items/{i}", request_id=f"out-{i}") == 200
        peer = {"x-envoy-peer-metadata": peer_metadata_header("reviews-v1", "bookinfo", "reviews")}
        for i in range(3):
            host = "echo.default.svc.cluster.local:8080"
            code = await asyncio.to_thread(
                _get, inbound, "/in", host=host, request_id=f"in-{i}", headers=peer
            )
            assert code == 200
        for _ in range(2):
            await asyncio.to_thread(_tcp_roundtrip, tcp)

        received = "remixer_telemetry_entries_received_total"
        await tel.wait_for(
            lambda: tel.value(received, {"kind": "http"}) >= 8 and tel.value(received, {"kind": "tcp"}) >= 2
        )
        assert tel.value(received, {"kind": "http"}) == 8
        # Envoy's own counters agree: every entry it wrote was flushed to us.
        stats = proxy.stats("access_logs.grpc_access_log")
        assert stats.get("access_logs.grpc_access_log.logs_dropped", 0) == 0

        samples = {
            s["reporter"]: s
            for s in tel.samples("istio_requests_total")
            if s["destination_service_name"] in ("echo", "productpage")
        }
        source = samples["source"]
        assert list(k for k in source if k != "__value__") == list(LABEL_NAMES)
        assert float(source["__value__"]) == 5
        assert source["source_workload"] == "productpage-v1"
        assert source["source_workload_namespace"] == "bookinfo"
        assert source["source_app"] == "productpage"
        assert source["source_canonical_service"] == "productpage"
        assert source["source_canonical_revision"] == "v1"
        assert source["source_cluster"] == "Kubernetes"
        assert source["destination_service"] == "echo.default.svc.cluster.local"
        assert source["destination_service_namespace"] == "default"
        assert source["destination_workload"] == "unknown"  # no peer metadata exchanged
        assert source["request_protocol"] == "http"
        assert source["response_code"] == "200"
        assert source["grpc_response_status"] == ""
        assert source["response_flags"] == "-"
        assert source["connection_security_policy"] == "unknown"

        dest = samples["destination"]
        assert float(dest["__value__"]) == 3
        assert dest["destination_workload"] == "productpage-v1"
        assert dest["destination_workload_namespace"] == "bookinfo"
        # The caller's identity came from the metadata-exchange header Envoy logged.
        assert dest["source_workload"] == "reviews-v1"
        assert dest["source_workload_namespace"] == "bookinfo"
        assert dest["source_app"] == "reviews"
        # The inbound service, never a Host naming another namespace's service.
        assert dest["destination_service"] == "productpage.bookinfo.svc.cluster.local"
        assert dest["connection_security_policy"] == "none"

        # Histograms: Envoy's default buckets, one observation per request.
        count = tel.value("istio_request_duration_milliseconds_count", _labels(source))
        assert count == 5
        assert (
            tel.value("istio_request_duration_milliseconds_bucket", {**_labels(source), "le": "3600000"}) == 5
        )
        assert tel.value("istio_response_bytes_sum", _labels(source)) > 0

        tcp_opened = [
            s
            for s in tel.samples("istio_tcp_connections_opened_total")
            if s["destination_service_name"] == "tcp-echo"
        ]
        assert len(tcp_opened) == 1
        assert list(k for k in tcp_opened[0] if k != "__value__") == list(TCP_LABEL_NAMES)
        assert float(tcp_opened[0]["__value__"]) == 2
        tcp_labels = _labels(tcp_opened[0])
        assert tel.value("istio_tcp_connections_closed_total", tcp_labels) == 2
        assert tel.value("istio_tcp_sent_bytes_total", tcp_labels) > 100
        assert tel.value("istio_tcp_received_bytes_total", tcp_labels) > 20


def _labels(sample: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in sample.items() if k != "__value__"}
