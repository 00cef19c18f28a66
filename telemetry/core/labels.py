"""Istio-standard labels from node metadata, peer metadata, cluster names and TLS SANs."""

from __future__ import annotations

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
MAX_NAME = 253  # Kubernetes names (and so Istio's label values) are at most this long
_DEFAULT_PORTS = {"http": 80, "grpc": 80, "tcp": 0}


def _text(value: Any) -> str:
    return value if isinstance(value, str) and 0 < len(value) <= MAX_NAME else UNKNOWN


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


# The keys of istio-proxy's peer object (extensions/common/metadata_object.h *Token, 1.24+).
PEER_TOKENS = frozenset(
    ("type", "workload", "name", "cluster", "namespace", "service", "revision", "app", "version", "identity")
)


def peer_identity(fields: Mapping[str, Any]) -> WorkloadIdentity:
    """istio-proxy's peer object (the Struct of WorkloadMetadataObject::serializeAsProto, keyed by baggage
    tokens) -> identity, with istio_stats' defaults: "unknown", and "latest" for a missing revision. A
    Struct in the older node-metadata shape (NAMESPACE, WORKLOAD_NAME, LABELS: the exchange header's) is
    read as node metadata."""
    if not PEER_TOKENS.intersection(fields):
        return workload_identity(fields)
    revision = _text(fields.get("revision"))
    identity = fields.get("identity")
    return WorkloadIdentity(
        workload=_text(fields.get("workload")),
        namespace=_text(fields.get("namespace")),
        app=_text(fields.get("app")),
        version=_text(fields.get("version")),
        canonical_service=_text(fields.get("service")),
        canonical_revision="latest" if revision == UNKNOWN else revision,
        cluster=_text(fields.get("cluster")),
        principal=identity
        if isinstance(identity, str) and identity.startswith("spiffe://") and len(identity) <= 512
        else "",
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


def service_name_and_namespace(host: str) -> tuple[str, str]:
    """reviews.default.svc.cluster.local -> (reviews, default); other hosts name themselves."""
    if host == UNKNOWN or not host:
        return UNKNOWN, UNKNOWN
    parts = host.split(".")
    if len(parts) >= 3 and parts[2] == "svc" and parts[0] and parts[1]:
        return parts[0], parts[1]
    return host, UNKNOWN


def _inbound_service(node: WorkloadIdentity) -> str:
    """The inbound service at reporter="destination": Istio takes it from the inbound cluster's metadata,
    which the access log does not carry; the closest fact the proxy itself holds is its workload's
    canonical service in its namespace. Never the Host or SNI the caller chose (an IP, the SNI string
    `outbound_.PORT_._.HOST`, or any name a client makes up)."""
    if node.canonical_service == UNKNOWN or node.namespace == UNKNOWN:
        return ""
    return f"{node.canonical_service}.{node.namespace}.svc.cluster.local"


def _destination_service(
    cluster: ClusterName, facts: EntryFacts, reporter: str, node: WorkloadIdentity
) -> tuple[str, str, str, int]:
    """(destination_service, _name, _namespace, port), as istio_stats' populatePeerInfo finds them."""
    if reporter == "destination":
        host = _inbound_service(node)
        name, _ = service_name_and_namespace(host)
        return host or UNKNOWN, name, node.namespace, cluster.port
    if reporter != "source":
        return UNKNOWN, UNKNOWN, UNKNOWN, 0
    if cluster.host:
        name, namespace = service_name_and_namespace(cluster.host)
        return cluster.host, name, namespace, cluster.port
    # No outbound|PORT||HOST cluster: the passthrough / blackhole clusters and local replies on the outbound
    # side, where Istio falls back to the Host header (the app on this pod chose it; it left this side).
    host, port = split_authority(facts.authority) if facts.protocol != "tcp" and facts.authority else ("", 0)
    egress = facts.upstream_cluster if facts.upstream_cluster in EGRESS_CLUSTERS else ""
    if not host:
        return UNKNOWN, egress or UNKNOWN, UNKNOWN, port
    name, namespace = service_name_and_namespace(host)
    return host, egress or name, namespace, port


def log_direction(log_name: str) -> str:
    """deploy/istio gives the client-side and server-side providers (Telemetry match mode CLIENT / SERVER) log
    names ending in `_outbound` / `_inbound`; other names say nothing."""
    word = re.split(r"[-_.]", log_name.lower())[-1]
    return word if word in ("inbound", "outbound") else ""


def direction_of(upstream_cluster: str, stream: StreamIdentity, local_ip: str) -> str:
    """Which side of the proxy an entry went through, from what the proxy itself set: istiod's cluster names,
    the provider's log name, or a downstream local address that is one of the pod's own. Never from the
    request; "" when none of them says."""
    if upstream_cluster.startswith(("outbound|", "PassthroughCluster", "BlackHoleCluster")):
        return "outbound"
    if upstream_cluster.startswith(("inbound|", "InboundPassthroughCluster")):
        return "inbound"
    if stream.direction:
        return stream.direction
    if local_ip and local_ip in stream.instance_ips:
        return "inbound"
    return ""


def _namespace_of(principal: str) -> str:
    """spiffe://td/ns/NAMESPACE/sa/x -> NAMESPACE (istio_stats' getNamespace), else ""."""
    begin = principal.find("/ns/")
    if begin < 0:
        return ""
    begin += 4
    end = principal.find("/", begin)
    return principal[begin:end] if end > begin else ""


_NO_PEER = WorkloadIdentity()
_REPORTERS = {"outbound": "source", "inbound": "destination"}


def derive(stream: StreamIdentity, facts: EntryFacts) -> Derived:
    """All 25 labels (LABEL_NAMES order), the record key and the call edge for one kind of entry, following
    istio/proxy source/extensions/filters/http/istio_stats/istio_stats.cc (populatePeerInfo)."""
    cluster = parse_cluster(facts.upstream_cluster)
    reporter = _REPORTERS.get(facts.direction, UNKNOWN)
    node = stream.workload
    peer = facts.peer or _NO_PEER
    if reporter == "destination":
        src, dst = peer, node
        src_principal, dst_principal = facts.peer_principal, facts.local_principal
        security = "mutual_tls" if src_principal and dst_principal else "none"
        src_ns, dst_ns = _namespace_of(src_principal) or peer.namespace, node.namespace
    elif reporter == "source":
        # The upstream TLS session is not in the access log: the peer object's identity stands in for its
        # certificate, and our own identity is claimed only towards a peer that is in the mesh.
        src, dst = node, peer
        src_principal = stream.principal if facts.peer is not None else ""
        dst_principal = peer.principal
        security = UNKNOWN
        src_ns, dst_ns = node.namespace, _namespace_of(dst_principal) or peer.namespace
    else:
        src = dst = _NO_PEER
        src_principal = dst_principal = ""
        security = UNKNOWN
        src_ns = dst_ns = UNKNOWN
    service, service_name, service_ns, port = _destination_service(cluster, facts, reporter, node)
    if reporter == "source" and service_ns == UNKNOWN:
        service_ns = dst_ns
    # Never an empty label value: odd hosts (".", "..svc") still read "unknown".
    service, service_name, service_ns = service or UNKNOWN, service_name or UNKNOWN, service_ns or UNKNOWN
    is_http = facts.protocol != "tcp"
    labels: Labels = (
        reporter,
        src.workload,
        src.canonical_service,
        src.canonical_revision,
        src_ns or UNKNOWN,
        src_principal or UNKNOWN,
        src.app,
        src.version,
        src.cluster,
        dst.workload,
        dst_ns or UNKNOWN,
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
    # A call edge only for traffic that left through an upstream cluster on the outbound side: a local reply
    # (denied, no route) names a host the caller chose and reached nothing.
    left = bool(cluster.host) or facts.upstream_cluster in EGRESS_CLUSTERS
    if reporter == "source" and left and service != UNKNOWN:
        edge = CallEdgeKey(
            source_namespace=node.namespace,
            source_workload=node.workload,
            destination_service=service,
            destination_port=port or _DEFAULT_PORTS.get(facts.protocol, 0),
            protocol=facts.protocol,
        )
    misses = tuple(
        name
        for name, value in (
            ("reporter", reporter),
            ("source_workload", src.workload),
            ("destination_workload", dst.workload),
            ("destination_service", service),
        )
        if value == UNKNOWN
    )
    return Derived(
        labels=labels, record_key=service.encode(), edge=edge, misses=misses, booked=reporter != UNKNOWN
    )


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
    "direction_of",
    "log_direction",
    "parse_cluster",
    "peer_identity",
    "service_name_and_namespace",
    "split_authority",
    "tcp_labels",
    "workload_identity",
]
