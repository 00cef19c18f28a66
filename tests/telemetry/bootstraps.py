"""Envoy bootstraps for telemetry scenarios: Istio-like node metadata and cluster names."""

from __future__ import annotations

from typing import Any

from remixer.kit import envoy

TCP_PROXY = "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"
PEER_HEADER = "x-envoy-peer-metadata"


def http_access_log(cluster: str, side: str) -> list[dict[str, Any]]:
    """Envoy's gRPC HTTP access logger as deploy/istio configures it: the log name says the listener's side
    (remixer_http_inbound / _outbound), and it logs the metadata-exchange header, the request's content-type
    and grpc-status (headers and trailers)."""
    logger = envoy.http_grpc_access_log(cluster, log_name=f"remixer_http_{side}", flush="0.1s")
    config = logger["typed_config"]
    config["additional_request_headers_to_log"] = [PEER_HEADER, "content-type"]
    config["additional_response_headers_to_log"] = [PEER_HEADER, "grpc-status"]
    config["additional_response_trailers_to_log"] = ["grpc-status"]
    return [logger]


def tcp_access_log(cluster: str, side: str) -> list[dict[str, Any]]:
    return [envoy.tcp_grpc_access_log(cluster, log_name=f"remixer_tcp_{side}", flush="0.1s")]


def istio_node(
    *, workload: str, namespace: str, app: str, version: str = "v1", cluster_id: str = "Kubernetes"
) -> dict[str, Any]:
    return {
        "id": f"sidecar~10.0.0.1~{workload}-abc.{namespace}~{namespace}.svc.cluster.local",
        "cluster": f"{workload}.{namespace}",
        "metadata": {
            "NAME": f"{workload}-abc",
            "NAMESPACE": namespace,
            "WORKLOAD_NAME": workload,
            "CLUSTER_ID": cluster_id,
            "MESH_ID": "cluster.local",
            "LABELS": {
                "app": app,
                "version": version,
                "service.istio.io/canonical-name": app,
                "service.istio.io/canonical-revision": version,
            },
        },
    }


def tcp_proxy_listener(
    name: str, port: int, *, cluster: str, access_log: list[dict[str, Any]], flush_interval: str = "5s"
) -> dict[str, Any]:
    """tcp_proxy logging on upstream connect and every flush_interval while open (deploy/istio's
    envoyfilter-tcp-flush.yaml), as Istio's stats report long connections."""
    return {
        "name": name,
        "address": envoy.socket_address("127.0.0.1", port),
        "filter_chains": [
            {
                "filters": [
                    {
                        "name": "envoy.filters.network.tcp_proxy",
                        "typed_config": {
                            "@type": TCP_PROXY,
                            "stat_prefix": name,
                            "cluster": cluster,
                            "access_log": access_log,
                            "access_log_options": {
                                "flush_access_log_on_connected": True,
                                "access_log_flush_interval": flush_interval,
                            },
                        },
                    }
                ]
            }
        ],
    }


def sidecar_bootstrap(
    *,
    admin_port: int,
    als_port: int,
    upstream_port: int,
    outbound_port: int,
    inbound_port: int | None = None,
    tcp_port: int | None = None,
    node: dict[str, Any],
    service: str = "echo.default.svc.cluster.local",
    service_port: int = 8080,
) -> dict[str, Any]:
    """One Envoy acting as a client sidecar (outbound listener -> outbound|port||service), optionally also as
    the server sidecar (inbound listener -> inbound|port||) and a TCP proxy; all log to remixer over ALS."""
    outbound_cluster = f"outbound|{service_port}||{service}"
    inbound_cluster = f"inbound|{service_port}||"
    listeners = [
        envoy.http_listener(
            "outbound",
            outbound_port,
            route_cluster=outbound_cluster,
            http_filters=[],
            access_log=http_access_log("remixer_als", "outbound"),
            stat_prefix="outbound",
        )
    ]
    clusters = [
        envoy.grpc_cluster("remixer_als", "127.0.0.1", als_port),
        envoy.http_cluster(outbound_cluster, "127.0.0.1", upstream_port),
    ]
    if inbound_port is not None:
        listeners.append(
            envoy.http_listener(
                "inbound",
                inbound_port,
                route_cluster=inbound_cluster,
                http_filters=[],
                access_log=http_access_log("remixer_als", "inbound"),
                stat_prefix="inbound",
            )
        )
        clusters.append(envoy.http_cluster(inbound_cluster, "127.0.0.1", upstream_port))
    if tcp_port is not None:
        tcp_cluster = f"outbound|{service_port + 1}||tcp-echo.default.svc.cluster.local"
        listeners.append(
            tcp_proxy_listener(
                "tcp",
                tcp_port,
                cluster=tcp_cluster,
                access_log=tcp_access_log("remixer_als", "outbound"),
            )
        )
        clusters.append(envoy.http_cluster(tcp_cluster, "127.0.0.1", upstream_port))
    return envoy.bootstrap(admin_port=admin_port, listeners=listeners, clusters=clusters, node=node)
