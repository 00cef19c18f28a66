"""The call graph as a networkx MultiDiGraph, in Kiali's four views, and its JSON/DOT/GraphML exports.

Node ids follow Kiali (graph/types.go): wl_<ns>_<workload>, app_<ns>_<app>, vapp_<ns>_<app>_<version>,
svc_<ns>_<fqdn>, plus unknown_source and the egress clusters. One edge per (from, to, protocol).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any, Literal

import networkx as nx

from controller.core.edges import EGRESS_CLUSTERS, UNKNOWN, UNKNOWN_SOURCE, known
from controller.structs import CallEdge, WorkloadRef

View = Literal["workload", "app", "versionedApp", "service"]
VIEWS: tuple[View, ...] = ("workload", "app", "versionedApp", "service")
ExportFormat = Literal["json", "dot", "graphml"]
FORMATS: tuple[ExportFormat, ...] = ("json", "dot", "graphml")


def _service_node(host: str) -> tuple[str, dict[str, Any]]:
    if host in EGRESS_CLUSTERS:
        return host, {"node_type": "service", "namespace": "", "service": host, "is_egress": True}
    if host.startswith(f"{UNKNOWN}:"):
        namespace = host.split(":", 1)[1]
        return f"svc_{namespace}_unknown", {
            "node_type": "service",
            "namespace": namespace,
            "service": UNKNOWN,
        }
    namespace, fqdn = host.split("/", 1)
    return f"svc_{namespace}_{fqdn}", {"node_type": "service", "namespace": namespace, "service": fqdn}


def _workload_node(ref: WorkloadRef, app: str, version: str, view: View) -> tuple[str, dict[str, Any]]:
    if ref == UNKNOWN_SOURCE:
        return "unknown_source", {"node_type": "unknown", "namespace": UNKNOWN}
    attrs: dict[str, Any] = {"namespace": ref.namespace, "workload": ref.name, "app": app, "version": version}
    if view == "app" and known(app):
        return f"app_{ref.namespace}_{app}", {"node_type": "app", "namespace": ref.namespace, "app": app}
    if view == "versionedApp" and known(app):
        vapp = f"{app}_{version}" if known(version) else ref.name
        return f"vapp_{ref.namespace}_{vapp}", {**attrs, "node_type": "versionedApp", "workload": ""}
    return f"wl_{ref.namespace}_{ref.name}", {**attrs, "node_type": "workload"}


def _touches(edge: CallEdge, namespace: str | None) -> bool:
    if namespace is None:
        return True
    host_namespace = edge.destination_host.split("/", 1)[0] if "/" in edge.destination_host else ""
    destination_namespace = (
        edge.destination_workload.namespace if edge.destination_workload else host_namespace
    )
    return namespace in (edge.source.namespace, host_namespace, destination_namespace)


def _add_edge(graph: nx.MultiDiGraph, source: str, target: str, edge: CallEdge) -> None:
    key = edge.protocol
    if graph.has_edge(source, target, key):
        data = graph.edges[source, target, key]
        data["request_rate"] += edge.request_rate
        data["error_rate"] += edge.error_rate
        return
    graph.add_edge(
        source,
        target,
        key=key,
        protocol=edge.protocol,
        request_rate=edge.request_rate,
        error_rate=edge.error_rate,
    )


def build_view(
    edges: Iterable[CallEdge], view: View = "workload", namespace: str | None = None
) -> nx.MultiDiGraph:
    """The graph one view shows, optionally only the edges in or out of one namespace."""
    edge_list = [edge for edge in edges if _touches(edge, namespace)]
    graph = nx.MultiDiGraph(view=view)
    served: dict[WorkloadRef, set[str]] = {}
    if view == "service":
        for edge in edge_list:
            if edge.destination_workload is not None and "/" in edge.destination_host:
                served.setdefault(edge.destination_workload, set()).add(edge.destination_host)
    for edge in edge_list:
        target, target_attrs = _service_node(edge.destination_host)
        if view != "service" and edge.destination_workload is not None:
            target, target_attrs = _workload_node(
                edge.destination_workload, edge.destination_app, edge.destination_version, view
            )
        graph.add_node(target, **target_attrs)
        sources = [_service_node(host) for host in sorted(served.get(edge.source, ()))]
        if not sources:
            sources = [_workload_node(edge.source, edge.source_app, edge.source_version, view)]
        for source, source_attrs in sources:
            if source == target:
                continue
            graph.add_node(source, **source_attrs)
            _add_edge(graph, source, target, edge)
    return graph


def _scalar(value: Any) -> Any:
    return round(value, 6) if isinstance(value, float) else value


def to_json(graph: nx.MultiDiGraph) -> str:
    nodes = [
        {"id": node, **{k: _scalar(v) for k, v in sorted(data.items())}}
        for node, data in graph.nodes(data=True)
    ]
    edges = [
        {"source": source, "target": target, **{k: _scalar(v) for k, v in sorted(data.items())}}
        for source, target, data in graph.edges(data=True)
    ]
    nodes.sort(key=lambda node: str(node["id"]))
    edges.sort(key=lambda edge: (edge["source"], edge["target"], edge["protocol"]))
    return json.dumps({"view": graph.graph.get("view", "workload"), "nodes": nodes, "edges": edges}, indent=1)


def _dot_quote(value: Any) -> str:
    text = str(_scalar(value))
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def to_dot(graph: nx.MultiDiGraph) -> str:
    lines = [f"digraph {_dot_quote(graph.graph.get('view', 'workload'))} {{"]
    for node, data in sorted(graph.nodes(data=True)):
        attrs = ",".join(f"{k}={_dot_quote(v)}" for k, v in sorted(data.items()))
        lines.append(f"  {_dot_quote(node)} [{attrs}];")
    for source, target, data in sorted(graph.edges(data=True), key=lambda e: (e[0], e[1], e[2]["protocol"])):
        label = f"{data['protocol']} {data['request_rate']:.3g}/s"
        attrs = ",".join(f"{k}={_dot_quote(v)}" for k, v in sorted(data.items()))
        lines.append(f"  {_dot_quote(source)} -> {_dot_quote(target)} [label={_dot_quote(label)},{attrs}];")
    lines.append("}")
    return "\n".join(lines) + "\n"


def to_graphml(graph: nx.MultiDiGraph) -> str:
    clean = nx.MultiDiGraph()
    for node, data in sorted(graph.nodes(data=True)):
        clean.add_node(node, **{k: _scalar(v) for k, v in data.items()})
    for source, target, key, data in sorted(
        graph.edges(keys=True, data=True), key=lambda e: (e[0], e[1], e[2])
    ):
        clean.add_edge(source, target, key=key, **{k: _scalar(v) for k, v in data.items()})
    return "\n".join(nx.generate_graphml(clean)) + "\n"


def export(graph: nx.MultiDiGraph, fmt: ExportFormat) -> str:
    if fmt == "json":
        return to_json(graph)
    if fmt == "dot":
        return to_dot(graph)
    return to_graphml(graph)
