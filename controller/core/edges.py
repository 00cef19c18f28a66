"""Prometheus rows and call-edge rows -> CallEdges, with Kiali's handling of unknown and bad telemetry.

Rules (reference/lazyxds.md §5.2): a source whose namespace and workload are both `unknown` is the
single unknown-source node (traffic from outside the mesh); a known namespace without workload or
app is bad telemetry and skipped. PassthroughCluster, BlackHoleCluster, `unknown` and IP-looking
destinations stay in the graph but are never egress hosts. Values that are not valid Kubernetes
names (quotes, newlines, ...) are skipped and counted, never written.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, replace

from controller.structs import CallEdge, Protocol, QueryRow, Reporter, WorkloadRef

UNKNOWN = "unknown"
UNKNOWN_SOURCE = WorkloadRef(UNKNOWN, UNKNOWN)
EGRESS_CLUSTERS = frozenset({"PassthroughCluster", "BlackHoleCluster"})

_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
_DNS_SUBDOMAIN = re.compile(r"(\*\.)?[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_WORKLOAD_NAME = re.compile(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?")
_LABEL_VALUE = re.compile(r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?")


def is_namespace(value: str) -> bool:
    return bool(_DNS_LABEL.fullmatch(value))


def is_fqdn(value: str) -> bool:
    return len(value) <= 253 and bool(_DNS_SUBDOMAIN.fullmatch(value))


def is_label_value(value: str) -> bool:
    return len(value) <= 63 and bool(_LABEL_VALUE.fullmatch(value))


def is_workload_name(value: str) -> bool:
    return len(value) <= 253 and bool(_WORKLOAD_NAME.fullmatch(value))


def looks_like_ip(value: str) -> bool:
    if not (value[:1].isdigit() or value[:1] == "[" or ":" in value):
        return False  # the common case (a service name) without parsing
    host = value.rsplit(":", 1)[0] if value.count(":") == 1 else value
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


def known(value: str | None) -> bool:
    return bool(value) and value != UNKNOWN


def service_host(
    service: str,
    service_namespace: str | None,
    cluster_domain: str,
    source_namespace: str | None = None,
    known_namespaces: Collection[str] = frozenset(),
) -> str | None:
    """A destination service as a Sidecar egress host `ns/fqdn`; None when it cannot be one.

    Names taken from a Host header may be short; they are completed the way Kubernetes DNS
    resolves them for the caller (slime's accesslog rules): `name` in the caller's namespace,
    `name.ns.svc` with the cluster domain, `name.ns` when `ns` is a namespace seen in the telemetry.
    """
    if not known(service) or service in EGRESS_CLUSTERS or looks_like_ip(service) or not is_fqdn(service):
        return None
    namespace = service_namespace if known(service_namespace) else None
    if namespace is not None and not is_namespace(namespace):
        return None
    parts = service.split(".")
    suffix = f"svc.{cluster_domain}"
    if len(parts) == 1:
        home = namespace or (source_namespace if known(source_namespace) else None)
        return f"{home}/{service}.{home}.{suffix}" if home and is_namespace(home) else None
    if (len(parts) == 3 and parts[2] == "svc") or (
        len(parts) == 2 and parts[1] in {namespace, *known_namespaces}
    ):
        return f"{parts[1]}/{parts[0]}.{parts[1]}.{suffix}" if is_namespace(parts[1]) else None
    if len(parts) >= 4 and ".".join(parts[2:]) == suffix:
        return f"{parts[1]}/{service}"
    # Other names (ServiceEntry hosts) live in any namespace unless telemetry said which.
    return f"{namespace or '*'}/{service}"


NAMESPACE_LABELS = (
    "source_workload_namespace",
    "destination_service_namespace",
    "destination_workload_namespace",
)


def namespaces_in(rows: Iterable[QueryRow]) -> set[str]:
    """Every valid namespace the telemetry mentions: lets `name.ns` host names be read as services."""
    found = set()
    for row in rows:
        for label in NAMESPACE_LABELS:
            value = row.labels.get(label, UNKNOWN)
            if known(value) and is_namespace(value):
                found.add(value)
    return found


def is_scopable(edge: CallEdge) -> bool:
    """Whether this edge can put a host into a Sidecar: a real source and a real service host."""
    return edge.source != UNKNOWN_SOURCE and "/" in edge.destination_host


@dataclass(slots=True)
class RowStats:
    """Why rows were dropped; surfaced in the run summary and as metrics."""

    bad_source: int = 0
    bad_destination: int = 0

    @property
    def skipped(self) -> int:
        return self.bad_source + self.bad_destination


def _source(labels: Mapping[str, str], stats: RowStats) -> WorkloadRef | None:
    namespace = labels.get("source_workload_namespace", UNKNOWN)
    workload = labels.get("source_workload", UNKNOWN)
    if not known(namespace) and not known(workload):
        return UNKNOWN_SOURCE
    if not known(workload) or not is_namespace(namespace) or not is_workload_name(workload):
        stats.bad_source += 1
        return None
    return WorkloadRef(namespace, workload)


def _destination_node(
    labels: Mapping[str, str], cluster_domain: str, stats: RowStats, known_namespaces: Collection[str]
) -> str | None:
    service = labels.get("destination_service", UNKNOWN)
    if service in EGRESS_CLUSTERS:
        return service
    if not known(service) or looks_like_ip(service):
        # Kiali: one unknown service node per namespace (it still shows in the graph, never in a scope).
        return f"{UNKNOWN}:{labels.get('destination_service_namespace', UNKNOWN)}"
    host = service_host(
        service,
        labels.get("destination_service_namespace"),
        cluster_domain,
        labels.get("source_workload_namespace"),
        known_namespaces,
    )
    if host is None:
        stats.bad_destination += 1
    return host


def _destination_workload(labels: Mapping[str, str]) -> WorkloadRef | None:
    namespace = labels.get("destination_workload_namespace", UNKNOWN)
    workload = labels.get("destination_workload", UNKNOWN)
    if known(namespace) and known(workload) and is_namespace(namespace) and is_workload_name(workload):
        return WorkloadRef(namespace, workload)
    return None


def _label(labels: Mapping[str, str], *names: str) -> str:
    for name in names:
        value = labels.get(name, UNKNOWN)
        if known(value) and is_label_value(value):
            return value
    return UNKNOWN


def _canonical(labels: Mapping[str, str], side: str) -> tuple[str, str] | None:
    """The (canonical name, revision) Istio's injector labelled the pods with, when both are known."""
    name = labels.get(f"{side}_canonical_service", UNKNOWN)
    revision = labels.get(f"{side}_canonical_revision", UNKNOWN)
    if known(name) and known(revision) and is_label_value(name) and is_label_value(revision):
        return (name, revision)
    return None


def _protocol(labels: Mapping[str, str], default: Protocol) -> Protocol:
    if default == "tcp":
        return "tcp"
    return "grpc" if labels.get("request_protocol") == "grpc" else "http"


def edges_from_rows(
    rows: Iterable[QueryRow],
    *,
    reporter: Reporter,
    protocol: Protocol,
    cluster_domain: str,
    stats: RowStats,
    known_namespaces: Collection[str] = frozenset(),
) -> list[CallEdge]:
    edges: list[CallEdge] = []
    for row in rows:
        labels = row.labels
        source = _source(labels, stats)
        if source is None:
            continue
        host = _destination_node(labels, cluster_domain, stats, known_namespaces)
        if host is None:
            continue
        edges.append(
            CallEdge(
                source=source,
                destination_host=host,
                protocol=_protocol(labels, protocol),
                reporter=reporter,
                request_rate=row.value,
                source_app=_label(labels, "source_canonical_service", "source_app"),
                source_version=_label(labels, "source_canonical_revision", "source_version"),
                destination_workload=_destination_workload(labels),
                destination_app=_label(labels, "destination_canonical_service", "destination_app"),
                destination_version=_label(labels, "destination_canonical_revision", "destination_version"),
                source_canonical=_canonical(labels, "source"),
                destination_canonical=_canonical(labels, "destination"),
            )
        )
    return edges


EdgeKey = tuple[WorkloadRef, str, str, WorkloadRef | None]


def edge_key(edge: CallEdge) -> EdgeKey:
    return (edge.source, edge.destination_host, edge.protocol, edge.destination_workload)


def merge_reporters(
    source_edges: Iterable[CallEdge],
    destination_edges: Iterable[CallEdge],
    errors: Mapping[EdgeKey, float] | None = None,
) -> list[CallEdge]:
    """One edge per (source, host, protocol, destination workload).

    Source-reported rows win (Kiali's outgoing query); destination-reported rows only fill in
    callers the source side did not report, e.g. callers without a sidecar.
    """
    merged: dict[EdgeKey, CallEdge] = {}
    for edge in source_edges:
        key = edge_key(edge)
        previous = merged.get(key)
        merged[key] = (
            edge
            if previous is None
            else replace(previous, request_rate=previous.request_rate + edge.request_rate)
        )
    source_keys = set(merged)
    for edge in destination_edges:
        key = edge_key(edge)
        if key in source_keys:
            continue
        previous = merged.get(key)
        merged[key] = (
            edge
            if previous is None
            else replace(previous, request_rate=previous.request_rate + edge.request_rate)
        )
    if errors:
        merged = {key: replace(edge, error_rate=errors.get(key, 0.0)) for key, edge in merged.items()}
    return [merged[key] for key in sorted(merged, key=_sort_key)]


def _sort_key(key: EdgeKey) -> tuple[str, str, str, str, str]:
    source, host, protocol, destination = key
    return (source.namespace, source.name, host, protocol, str(destination or ""))


def error_rates(edges: Iterable[CallEdge]) -> dict[EdgeKey, float]:
    rates: dict[EdgeKey, float] = {}
    for edge in edges:
        key = edge_key(edge)
        rates[key] = rates.get(key, 0.0) + edge.request_rate
    return rates


@dataclass(frozen=True, slots=True)
class CallEdgeRow:
    """One row of telemetry's call-edge table, as plain values."""

    source_namespace: str
    source_workload: str
    destination_service: str
    destination_port: int
    protocol: str
    last_seen: float
    count: int


def edges_from_call_edge_rows(
    rows: Iterable[CallEdgeRow],
    *,
    cluster_domain: str,
    stats: RowStats,
    known_namespaces: Collection[str] = frozenset(),
) -> list[CallEdge]:
    """The call-edge table sees calls that went through PassthroughCluster: the first call to a
    service not yet in a scope. Those become edges like any other."""
    edges = []
    for row in rows:
        if not is_namespace(row.source_namespace) or not is_workload_name(row.source_workload):
            stats.bad_source += 1
            continue
        host = service_host(
            row.destination_service, None, cluster_domain, row.source_namespace, known_namespaces
        )
        if host is None:
            stats.bad_destination += 1
            continue
        protocol: Protocol = "grpc" if row.protocol == "grpc" else "tcp" if row.protocol == "tcp" else "http"
        edges.append(
            CallEdge(
                source=WorkloadRef(row.source_namespace, row.source_workload),
                destination_host=host,
                protocol=protocol,
                reporter="calledges",
            )
        )
    return edges
