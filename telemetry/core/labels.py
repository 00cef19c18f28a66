"""Istio-standard labels from node metadata, peer metadata, cluster names and TLS SANs."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from telemetry.structs import (
    LABEL_INDEX,
    LABEL_NAMES,
    TCP_LABEL_NAMES,
    UNKNOWN,
    CallEdgeKey,
    Derived,
    EntryFacts,
    Labels,
    StreamIdentity,
    WorkloadIdentity,
)

CANONICAL_NAME = "service.istio.io/canonical-name"
CANONICAL_REVISION = "service.istio.io/canonical-revision"
EGRESS_CLUSTERS = ("PassthroughCluster", "BlackHoleCluster", "InboundPassthroughCluster")
_DEFAULT_PORTS = {"http": 80, "grpc": 80, "tcp": 0}


def _text(value: Any) -> str:
    return value if isinstance(value, str) and value else UNKNOWN


def workload_identity(metadata: Mapping[str, Any], node_id: str = "") -> WorkloadIdentity:
    """Istio node metadata (NAME, NAMESPACE, WORKLOAD_NAME, LABELS, CLUSTER_ID) -> identity."""
    raw_labels = metadata.get("LABELS")
    labels: Mapping[str, Any] = raw_labels if isinstance(raw_labels, Mapping) else {}
    namespace = _text(metadata.get("NAMESPACE"))
    if namespace == UNKNOWN and node_id.count("~") == 3:
        # sidecar~10.0.0.1~pod-abc.ns~ns.svc.cluster.local: the pod's namespace follows its name.
        _, _, pod_dot_ns, _ = node_id.split("~")
        if "." in pod_dot_ns:
            namespace = pod_dot_ns.rsplit(".", 1)[1] or UNKNOWN
    app = _text(labels.get("app") or labels.get("app.kubernetes.io/name"))
    version = _text(labels.get("version") or labels.get("app.kubernetes.io/version"))
    workload = _text(metadata.get("WORKLOAD_NAME"))
    canonical = _text(labels.get(CANONICAL_NAME)) if labels.get(CANONICAL_NAME) else app
    if canonical == UNKNOWN:
        canonical = workload
    revision = _text(labels.get(CANONICAL_REVISION)) if labels.get(CANONICAL_REVISION) else version
    if revision == UNKNOWN:
        revision = "latest"
    return WorkloadIdentity(
        workload=workload,
        namespace=namespace,
        app=app,
        version=version,
        canonical_service=canonical,
        canonical_revision=revision,
        cluster=_text(metadata.get("CLUSTER_ID")),
    )


@dataclass(frozen=True, slots=True)
class ClusterName:
    """What an Envoy cluster name says: direction, port and host of the service."""

    direction: str  # outbound | inbound | other
    port: int
    host: str


def _port(text: str) -> int:
    """A TCP port from text, 0 when it is not one (str.isdigit alone accepts '²', which int() refuses)."""
    if text.isascii() and text.isdigit() and len(text) <= 5:
        port = int(text)
        return port if port <= 65535 else 0
    return 0


def parse_cluster(name: str) -> ClusterName:
    """`outbound|9080||reviews.default.svc.cluster.local`, `inbound|9080||`, or anything else."""
    parts = name.split("|")
    if len(parts) == 4 and parts[0] in ("outbound", "inbound"):
        port = _port(parts[1])
        return ClusterName(parts[0], port, parts[3])
    return ClusterName("other", 0, "")


def split_authority(authority: str) -> tuple[str, int]:
    """`host:port` / `[v6]:port` / `host` -> (host, port or 0), lower-cased."""
    host, port = authority.strip().lower(), 0
    if host.startswith("["):
        end = host.find("]")
        tail = host[end + 1 :]
        host = host[1:end] if end > 0 else host
        if tail.startswith(":"):
            port = _port(tail[1:])
    elif host.count(":") == 1:
        name, _, port_text = host.partition(":")
        host = name
        port = _port(port_text)
    return host, port


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def service_name_and_namespace(host: str) -> tuple[str, str]:
    """reviews.default.svc.cluster.local -> (reviews, default); other hosts name themselves."""
    if host == UNKNOWN or not host:
        return UNKNOWN, UNKNOWN
    parts = host.split(".")
    if len(parts) >= 3 and parts[2] == "svc" and parts[0] and parts[1]:
        return parts[0], parts[1]
    return host, UNKNOWN


def _destination_service(
    cluster: ClusterName, facts: EntryFacts, reporter: str, node: WorkloadIdentity
) -> tuple[str, str, str, int]:
    """(destination_service, _name, _namespace, port)."""
    auth_host, auth_port = split_authority(facts.authority) if facts.authority else ("", 0)
    port = cluster.port or auth_port
    if cluster.host:
        name, namespace = service_name_and_namespace(cluster.host)
        return cluster.host, name, namespace, port
    egress = facts.upstream_cluster if facts.upstream_cluster in EGRESS_CLUSTERS else ""
    if not auth_host:
        return UNKNOWN, egress or UNKNOWN, UNKNOWN, port
    host = auth_host
    if reporter == "destination" and "." not in host and not _is_ip(host) and node.namespace != UNKNOWN:
        # Inside the mesh a short name resolves in the caller's namespace; the destination proxy is there.
        host = f"{host}.{node.namespace}.svc.cluster.local"
    name, namespace = service_name_and_namespace(host)
    if egress:
        # Istio names traffic that left through the passthrough cluster after that cluster (Kiali knows it).
        name = egress
    elif reporter == "destination" and namespace == UNKNOWN and not _is_ip(host):
        namespace = node.namespace
    return host, name, namespace, port


def reporter_of(upstream_cluster: str, fallback: str) -> str:
    if upstream_cluster.startswith("outbound|"):
        return "source"
    if upstream_cluster.startswith("inbound|"):
        return "destination"
    return fallback


_NO_PEER = WorkloadIdentity()


def derive(stream: StreamIdentity, facts: EntryFacts, *, fallback_reporter: str) -> Derived:
    """All 25 labels (LABEL_NAMES order), the record key and the call edge for one kind of entry."""
    cluster = parse_cluster(facts.upstream_cluster)
    reporter = reporter_of(facts.upstream_cluster, fallback_reporter)
    node = stream.workload
    peer = facts.peer or _NO_PEER
    if reporter == "destination":
        src, dst = peer, node
        src_principal, dst_principal = facts.peer_principal, facts.local_principal
        security = "mutual_tls" if facts.mtls else "none"
    else:
        src, dst = node, peer
        src_principal, dst_principal = facts.local_principal, facts.peer_principal
        security = UNKNOWN
    service, service_name, service_ns, port = _destination_service(cluster, facts, reporter, node)
    # Never an empty label value: odd hosts (".", "..svc") still read "unknown".
    service, service_name, service_ns = service or UNKNOWN, service_name or UNKNOWN, service_ns or UNKNOWN
    is_http = facts.protocol != "tcp"
    labels: Labels = (
        reporter,
        src.workload,
        src.canonical_service,
        src.canonical_revision,
        src.namespace,
        src_principal or UNKNOWN,
        src.app,
        src.version,
        src.cluster,
        dst.workload,
        dst.namespace,
        dst_principal or UNKNOWN,
        dst.app,
        dst.version,
        service,
        dst.canonical_service,
        dst.canonical_revision,
        service_name,
        service_ns,
        dst.cluster,
        facts.protocol,
        str(facts.response_code) if is_http else "",
        facts.grpc_status if is_http else "",
        facts.response_flags or "-",
        security,
    )
    if facts.request_path is not None:
        labels = (*labels, facts.request_path)
    edge = None
    if reporter == "source" and service != UNKNOWN:
        edge = CallEdgeKey(
            source_namespace=src.namespace,
            source_workload=src.workload,
            destination_service=service,
            destination_port=port or _DEFAULT_PORTS.get(facts.protocol, 0),
            protocol=facts.protocol,
        )
    misses = tuple(
        name
        for name, value in (
            ("source_workload", src.workload),
            ("destination_workload", dst.workload),
            ("destination_service", service),
        )
        if value == UNKNOWN
    )
    return Derived(labels=labels, record_key=service.encode(), edge=edge, misses=misses)


_TCP_INDEXES = tuple(LABEL_INDEX[name] for name in TCP_LABEL_NAMES)


def tcp_labels(labels: Labels) -> Labels:
    """The TCP metrics' label values (no response_code, grpc_response_status)."""
    return tuple(labels[i] for i in _TCP_INDEXES)


class LabelPolicy:
    """Settings' drops and rewrites, compiled; applied once per distinct label set, never per entry."""

    def __init__(
        self,
        *,
        names: Sequence[str],
        drop: Sequence[str] = (),
        rewrites: Sequence[tuple[str, str, str]] = (),
    ) -> None:
        self.source_names = tuple(names)
        self._keep = tuple(i for i, name in enumerate(names) if name not in set(drop))
        self.names = tuple(names[i] for i in self._keep)
        self._rewrites = [
            (names.index(label), re.compile(pattern), replacement)
            for label, pattern, replacement in rewrites
            if label in names
        ]

    def apply(self, labels: Labels) -> Labels:
        if self._rewrites:
            values = list(labels)
            for index, pattern, replacement in self._rewrites:
                match = pattern.fullmatch(values[index])
                if match:
                    values[index] = match.expand(replacement)
            labels = tuple(values)
        if len(self._keep) != len(labels):
            labels = tuple(labels[i] for i in self._keep)
        return labels


__all__ = [
    "LABEL_NAMES",
    "ClusterName",
    "LabelPolicy",
    "derive",
    "parse_cluster",
    "reporter_of",
    "service_name_and_namespace",
    "split_authority",
    "tcp_labels",
    "workload_identity",
]
