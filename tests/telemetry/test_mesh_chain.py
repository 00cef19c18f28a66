"""Two real Envoy 1.40 sidecars in a chain, a real Prometheus, Kiali's workload-graph queries.

productpage's sidecar (outbound listeners, log names remixer_*_outbound) -> reviews' sidecar (inbound
listeners with ext_authz denying some requests, remixer_*_inbound) -> the app. Peer identity travels as
istio-proxy's metadata exchange puts it on the wire (x-envoy-peer-metadata, a base64 Struct of node
metadata, added by the caller to its requests and by the callee to its responses, local replies included:
istio/proxy peer_metadata filter.cc MXPropagationMethod::inject). Plain Envoy has no TCP metadata exchange,
so TCP peers read "unknown" here (tests/telemetry/test_istio_proxy.py covers them as istio-proxy logs them).

Asserted through Prometheus with Kiali's queries (shared/reference/lazyxds.md §5.1, kiali graph/telemetry/
istio/istio.go): exactly the expected edges for HTTP and TCP from both reporters, denials booked by the
destination with the caller as source, and no edge from reviews to the Host the client chose.
"""

from __future__ import annotations

import asyncio
import base64
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from threading import Thread
from typing import Any

import httpx
import pytest
from google.protobuf import struct_pb2
from prometheus_client import start_http_server

from remixer.kit import envoy
from remixer.kit.echo import EchoServer
from remixer.kit.envoy import free_port
from tests.realparts.envoy import EnvoyFactory
from tests.realparts.prometheus import PrometheusFactory
from tests.telemetry.bootstraps import http_access_log, istio_node, tcp_access_log, tcp_proxy_listener
from tests.telemetry.harness import running_telemetry

NS = "bookinfo"
REVIEWS = f"reviews.{NS}.svc.cluster.local"
BASE = (
    "source_cluster,source_workload_namespace,source_workload,source_canonical_service,source_canonical_revision,"
    "destination_cluster,destination_service_namespace,destination_service,destination_service_name,"
    "destination_workload_namespace,destination_workload,destination_canonical_service,"
    "destination_canonical_revision"
)
HTTP_GROUP_BY = f"{BASE},request_protocol,response_code,grpc_response_status,response_flags"
TCP_GROUP_BY = f"app,{BASE},response_flags"
FLUSH = 0.5  # tcp_proxy access_log_flush_interval (s)


def mx_header(node: dict[str, Any]) -> str:
    """x-envoy-peer-metadata as istio-proxy sends it: base64 of the Struct of the node's metadata
    (peer_metadata filter.cc MXPropagationMethod::computeValue)."""
    struct = struct_pb2.Struct()
    struct.update(node["metadata"])
    return base64.b64encode(struct.SerializeToString()).decode()


class _Authz(BaseHTTPRequestHandler):
    """ext_authz HTTP service: denies /deny (403) and /limit (429), allows the rest."""

    def do_GET(self) -> None:
        code = 403 if "/deny" in self.path else 429 if "/limit" in self.path else 200
        self.send_response(code)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        return None


@pytest.fixture
def authz() -> Iterator[int]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Authz)
    thread = Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )  # quick shutdown()
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    thread.join(5)


def _route_headers(listener: dict[str, Any], *, request: str = "", response: str = "") -> None:
    """The metadata exchange: the caller adds its header to requests; the callee to every response, local
    replies (ext_authz denials) included, through the local-reply mapper."""
    hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
    if request:
        hcm["route_config"]["request_headers_to_add"] = [
            {"header": {"key": "x-envoy-peer-metadata", "value": request}}
        ]
    if response:
        header = [{"header": {"key": "x-envoy-peer-metadata", "value": response}}]
        hcm["route_config"]["response_headers_to_add"] = header
        everything = {
            "status_code_filter": {
                "comparison": {"op": "GE", "value": {"default_value": 0, "runtime_key": "mx.any"}}
            }
        }
        hcm["local_reply_config"] = {"mappers": [{"filter": everything, "headers_to_add": header}]}


def _get(port: int, path: str, host: str) -> int:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers={"Host": host})
    try:
        with urllib.request.urlopen(request, timeout=5) as resp:
            resp.read()
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def query(url: str, promql: str) -> list[dict[str, Any]]:
    response = httpx.get(f"{url}/api/v1/query", params={"query": promql}, timeout=10)
    response.raise_for_status()
    result: list[dict[str, Any]] = response.json()["data"]["result"]
    return result


def edges(rows: list[dict[str, Any]], *names: str) -> set[tuple[str, ...]]:
    return {tuple(row["metric"].get(n, "") for n in names) for row in rows}


async def test_two_sidecars_ext_authz_and_tcp_through_kiali_queries(
    tmp_path: Path,
    envoy_factory: EnvoyFactory,
    echo_upstream: EchoServer,
    authz: int,
    prometheus_factory: PrometheusFactory,
) -> None:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(4096):
            writer.write(data)
            await writer.drain()
        writer.close()

    tcp_app = await asyncio.start_server(echo, "127.0.0.1", 0)
    tcp_app_port = tcp_app.sockets[0].getsockname()[1]
    async with running_telemetry(tmp_path) as tel:
        productpage = istio_node(workload="productpage-v1", namespace=NS, app="productpage")
        reviews = istio_node(workload="reviews-v1", namespace=NS, app="reviews")
        out_http, out_tcp, in_http, in_tcp = free_port(), free_port(), free_port(), free_port()

        to_reviews = envoy.http_listener(
            "outbound_http",
            out_http,
            route_cluster=f"outbound|9080||{REVIEWS}",
            http_filters=[],
            access_log=http_access_log("als", "outbound"),
        )
        _route_headers(to_reviews, request=mx_header(productpage))
        source = envoy.bootstrap(
            admin_port=free_port(),
            node=productpage,
            listeners=[
                to_reviews,
                tcp_proxy_listener(
                    "outbound_tcp",
                    out_tcp,
                    cluster=f"outbound|9081||{REVIEWS}",
                    access_log=tcp_access_log("als", "outbound"),
                    flush_interval=f"{FLUSH}s",
                ),
            ],
            clusters=[
                envoy.grpc_cluster("als", "127.0.0.1", tel.port),
                envoy.http_cluster(f"outbound|9080||{REVIEWS}", "127.0.0.1", in_http),
                envoy.http_cluster(f"outbound|9081||{REVIEWS}", "127.0.0.1", in_tcp),
            ],
        )
        inbound = envoy.http_listener(
            "inbound_http",
            in_http,
            route_cluster="inbound|9080||",
            http_filters=[envoy.ext_authz_http_filter("authz", f"http://127.0.0.1:{authz}")],
            access_log=http_access_log("als", "inbound"),
        )
        _route_headers(inbound, response=mx_header(reviews))
        destination = envoy.bootstrap(
            admin_port=free_port(),
            node=reviews,
            listeners=[
                inbound,
                tcp_proxy_listener(
                    "inbound_tcp",
                    in_tcp,
                    cluster="inbound|9081||",
                    access_log=tcp_access_log("als", "inbound"),
                    flush_interval=f"{FLUSH}s",
                ),
            ],
            clusters=[
                envoy.grpc_cluster("als", "127.0.0.1", tel.port),
                envoy.http_cluster("authz", "127.0.0.1", authz),
                envoy.http_cluster("inbound|9080||", "127.0.0.1", echo_upstream.port),
                envoy.http_cluster("inbound|9081||", "127.0.0.1", tcp_app_port),
            ],
        )
        await asyncio.to_thread(envoy_factory, destination)
        await asyncio.to_thread(envoy_factory, source)

        # A TCP connection held open across two flush intervals: counted open at once, bytes while open.
        reader, writer = await asyncio.open_connection("127.0.0.1", out_tcp)
        writer.write(b"x" * 100)
        await writer.drain()
        assert await reader.readexactly(100)

        def tcp(name: str, reporter: str) -> float:
            return sum(float(s["__value__"]) for s in tel.samples(name) if s["reporter"] == reporter)

        await tel.wait_for(
            lambda: (
                tcp("istio_tcp_connections_opened_total", "source") == 1
                and tcp("istio_tcp_sent_bytes_total", "source") == 100
            )
        )
        logs_before = tel.value("remixer_telemetry_entries_received_total", {"kind": "tcp"})
        await tel.wait_for(
            lambda: tel.value("remixer_telemetry_entries_received_total", {"kind": "tcp"}) >= logs_before + 4,
            within=10 * FLUSH + 10,
        )  # two more flush intervals from each of the two sidecars
        writer.write(b"y" * 50)
        await writer.drain()
        assert await reader.readexactly(50)
        await tel.wait_for(lambda: tcp("istio_tcp_received_bytes_total", "destination") == 150)
        assert tcp("istio_tcp_connections_closed_total", "source") == 0  # still open, already counted
        assert tcp("istio_tcp_connections_opened_total", "destination") == 1

        port = free_port()
        http_server, thread = start_http_server(port, addr="127.0.0.1", registry=tel.registry)
        try:
            prometheus = await asyncio.to_thread(prometheus_factory, scrape_targets=[f"127.0.0.1:{port}"])
            source_q = f'reporter="source",source_workload_namespace="{NS}"'
            dest_q = f'reporter="destination",destination_workload_namespace="{NS}"'
            unserviced = (
                f'reporter="source",source_workload_namespace!="{NS}",destination_workload_namespace="unknown",'
                f'destination_workload="unknown",destination_service=~"^.+\\\\.{NS}\\\\..+$"'
            )
            http, tcp_bytes = "istio_requests_total", "istio_tcp_sent_bytes_total"
            queries = {
                "http_out": f"sum(rate({http}{{{source_q}}} [60s])) by ({HTTP_GROUP_BY}) > 0",
                "http_in": f"sum(rate({http}{{{dest_q}}} [60s])) by ({HTTP_GROUP_BY}) > 0",
                "http_unserviced": f"sum(rate({http}{{{unserviced}}} [60s])) by ({HTTP_GROUP_BY}) > 0",
                "tcp_out": f"sum(rate({tcp_bytes}{{{source_q}}} [60s])) by ({TCP_GROUP_BY}) > 0",
                "tcp_in": f"sum(rate({tcp_bytes}{{{dest_q}}} [60s])) by ({TCP_GROUP_BY}) > 0",
                "all_http": "istio_requests_total",
            }
            rows: dict[str, list[dict[str, Any]]] = {}
            deadline = time.monotonic() + 30
            while True:
                # Keep traffic flowing until Prometheus has scraped an increase of every kind (rate() > 0).
                for path, host, want in (
                    ("/ok", "reviews:9080", 200),
                    ("/deny", "evil.example.com", 403),
                    ("/limit", "reviews:9080", 429),
                ):
                    assert await asyncio.to_thread(_get, out_http, path, host) == want
                writer.write(b"z" * 10)
                await writer.drain()
                await reader.readexactly(10)
                await asyncio.sleep(1.0)
                rows = {k: await asyncio.to_thread(query, prometheus.url, q) for k, q in queries.items()}
                done = (
                    len(rows["http_out"]) == 3
                    and len(rows["http_in"]) == 3
                    and rows["tcp_out"]
                    and rows["tcp_in"]
                )
                if done or time.monotonic() > deadline:
                    break
        finally:
            http_server.shutdown()
            thread.join(5)
        writer.close()
        await writer.wait_closed()
        await tel.wait_for(lambda: tcp("istio_tcp_connections_closed_total", "source") == 1)
        tcp_app.close()

    keys = (
        "source_workload",
        "destination_workload",
        "destination_service",
        "response_code",
        "response_flags",
    )
    # Source-reported: the denials were answered by reviews' sidecar, whose exchange header names it.
    assert edges(rows["http_out"], *keys) == {
        ("productpage-v1", "reviews-v1", REVIEWS, "200", "-"),
        ("productpage-v1", "reviews-v1", REVIEWS, "403", "-"),
        ("productpage-v1", "reviews-v1", REVIEWS, "429", "-"),
    }
    # Destination-reported: the denials (UAEX, no upstream cluster) too, with the caller as source and
    # the inbound service as destination, never the Host the client chose.
    assert edges(rows["http_in"], *keys) == {
        ("productpage-v1", "reviews-v1", REVIEWS, "200", "-"),
        ("productpage-v1", "reviews-v1", REVIEWS, "403", "UAEX"),
        ("productpage-v1", "reviews-v1", REVIEWS, "429", "UAEX"),
    }
    assert rows["http_unserviced"] == []
    every = rows["all_http"]
    assert {r["metric"]["source_workload"] for r in every} == {"productpage-v1"}
    assert not [r for r in every if "evil" in r["metric"]["destination_service"]]
    assert {r["metric"]["reporter"] for r in every} == {"source", "destination"}
    # TCP, both reporters (no TCP metadata exchange in plain Envoy: the peer reads "unknown").
    tcp_keys = ("source_workload", "destination_workload", "destination_service", "destination_service_name")
    assert edges(rows["tcp_out"], *tcp_keys) == {("productpage-v1", "unknown", REVIEWS, "reviews")}
    assert edges(rows["tcp_in"], *tcp_keys) == {("unknown", "reviews-v1", REVIEWS, "reviews")}
