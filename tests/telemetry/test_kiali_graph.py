"""A real Prometheus scrapes remixer; Kiali's workload-graph queries (lazyxds.md §5) find the edges."""

from __future__ import annotations

import asyncio
import base64
import time
from pathlib import Path
from typing import Any

import grpc
import httpx
from envoy.data.accesslog.v3 import accesslog_pb2
from envoy.service.accesslog.v3 import als_pb2
from google.protobuf import struct_pb2
from prometheus_client import start_http_server

from remixer.kit.envoy import free_port
from tests.realparts.prometheus import PrometheusFactory
from tests.telemetry.harness import RunningTelemetry, running_telemetry

METHOD = "/envoy.service.accesslog.v3.AccessLogService/StreamAccessLogs"
GROUP_BY = (
    "source_cluster,source_workload_namespace,source_workload,source_canonical_service,source_canonical_revision,"
    "destination_cluster,destination_service_namespace,destination_service,destination_service_name,"
    "destination_workload_namespace,destination_workload,destination_canonical_service,"
    "destination_canonical_revision,request_protocol,response_code,grpc_response_status,response_flags"
)


def metadata(workload: str, app: str) -> dict[str, Any]:
    return {
        "NAME": f"{workload}-pod",
        "NAMESPACE": "bookinfo",
        "WORKLOAD_NAME": workload,
        "CLUSTER_ID": "Kubernetes",
        "LABELS": {"app": app, "version": "v1"},
    }


def peer_header(workload: str, app: str) -> str:
    struct = struct_pb2.Struct()
    struct.update(metadata(workload, app))
    return base64.b64encode(struct.SerializeToString()).decode()


def first_message(workload: str, app: str) -> als_pb2.StreamAccessLogsMessage:
    msg = als_pb2.StreamAccessLogsMessage()
    msg.identifier.log_name = "http_envoy_accesslog"
    msg.identifier.node.id = f"sidecar~10.0.0.1~{workload}-pod.bookinfo~bookinfo.svc.cluster.local"
    node_meta = struct_pb2.Struct()
    node_meta.update(metadata(workload, app))
    msg.identifier.node.metadata.CopyFrom(node_meta)
    return msg


def call(cluster: str, authority: str, *, response_peer: str = "", request_peer: str = "", code: int = 200):
    e = accesslog_pb2.HTTPAccessLogEntry()
    e.common_properties.upstream_cluster = cluster
    e.common_properties.duration.FromMilliseconds(12)
    e.request.authority = authority
    e.response.response_code.value = code
    if response_peer:
        e.response.response_headers["x-envoy-peer-metadata"] = response_peer
    if request_peer:
        e.request.request_headers["x-envoy-peer-metadata"] = request_peer
    return e


async def send_round(tel: RunningTelemetry) -> None:
    productpage = peer_header("productpage-v1", "productpage")
    reviews = peer_header("reviews-v1", "reviews")
    ratings = peer_header("ratings-v1", "ratings")
    to_reviews = call(
        "outbound|9080||reviews.bookinfo.svc.cluster.local", "reviews:9080", response_peer=reviews
    )
    from_productpage = call("inbound|9080||", "reviews:9080", request_peer=productpage)
    to_ratings = call(
        "outbound|9080||ratings.bookinfo.svc.cluster.local", "ratings:9080", response_peer=ratings, code=503
    )
    streams = [
        # productpage's sidecar: client side of productpage -> reviews
        ("productpage-v1", "productpage", [to_reviews] * 10),
        # reviews' sidecar: server side of productpage -> reviews, client side of reviews -> ratings
        ("reviews-v1", "reviews", [from_productpage] * 10 + [to_ratings] * 4),
    ]
    async with asyncio.timeout(10):
        async with grpc.aio.insecure_channel(tel.target) as channel:
            for workload, app, entries in streams:
                rpc = channel.stream_unary(METHOD, request_serializer=None, response_deserializer=None)()
                msg = first_message(workload, app)
                msg.http_logs.log_entry.extend(entries)
                await rpc.write(msg.SerializeToString())
                await rpc.done_writing()
                await rpc


def query(url: str, promql: str) -> list[dict[str, Any]]:
    response = httpx.get(f"{url}/api/v1/query", params={"query": promql}, timeout=10)
    response.raise_for_status()
    result: list[dict[str, Any]] = response.json()["data"]["result"]
    return result


def edges(rows: list[dict[str, Any]]) -> set[tuple[str, str, str, str]]:
    keys = ("source_workload", "destination_workload", "destination_service_name", "response_code")
    return {
        (m["metric"][keys[0]], m["metric"][keys[1]], m["metric"][keys[2]], m["metric"][keys[3]]) for m in rows
    }


async def test_kiali_workload_graph_queries(tmp_path: Path, prometheus_factory: PrometheusFactory) -> None:
    async with running_telemetry(tmp_path) as tel:
        port = free_port()
        http_server, thread = start_http_server(port, addr="127.0.0.1", registry=tel.registry)
        try:
            prometheus = await asyncio.to_thread(prometheus_factory, scrape_targets=[f"127.0.0.1:{port}"])
            ns = "bookinfo"
            # Kiali's queries 3 (outgoing, source-reported) and 2 (incoming, destination-reported).
            source = f'reporter="source",source_workload_namespace="{ns}"'
            dest = f'reporter="destination",destination_workload_namespace="{ns}"'
            outgoing = f"sum(rate(istio_requests_total{{{source}}} [60s])) by ({GROUP_BY}) > 0"
            incoming = f"sum(rate(istio_requests_total{{{dest}}} [60s])) by ({GROUP_BY}) > 0"
            deadline = time.monotonic() + 20
            while True:
                # Keep traffic flowing until Prometheus has scraped an increase (rate() > 0).
                await send_round(tel)
                await asyncio.sleep(1.0)
                out_rows = await asyncio.to_thread(query, prometheus.url, outgoing)
                in_rows = await asyncio.to_thread(query, prometheus.url, incoming)
                if (len(out_rows) >= 2 and in_rows) or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.5)
            assert edges(out_rows) == {
                ("productpage-v1", "reviews-v1", "reviews", "200"),
                ("reviews-v1", "ratings-v1", "ratings", "503"),
            }
            assert edges(in_rows) == {("productpage-v1", "reviews-v1", "reviews", "200")}
            # Every row carries every label of Kiali's group-by, never empty where Kiali expects a value.
            for row in out_rows + in_rows:
                assert set(GROUP_BY.split(",")) - {"grpc_response_status"} <= set(row["metric"])
            # Grafana's mesh dashboard query works unchanged too.
            p50 = await asyncio.to_thread(
                query,
                prometheus.url,
                "histogram_quantile(0.5, sum by (le,destination_workload,destination_workload_namespace) "
                '(rate(istio_request_duration_milliseconds_bucket{reporter=~"source|waypoint"}[60s])))',
            )
            assert {r["metric"]["destination_workload"] for r in p50} == {"reviews-v1", "ratings-v1"}
        finally:
            http_server.shutdown()
            thread.join(5)
