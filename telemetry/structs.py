"""Plain values the telemetry card passes between its layers (no protobuf, no I/O)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import NamedTuple

# The Istio standard label set, in the order Istio's stats filter pushes its tags (reference/mixer.md §4.2).
LABEL_NAMES: tuple[str, ...] = (
    "reporter",
    "source_workload",
    "source_canonical_service",
    "source_canonical_revision",
    "source_workload_namespace",
    "source_principal",
    "source_app",
    "source_version",
    "source_cluster",
    "destination_workload",
    "destination_workload_namespace",
    "destination_principal",
    "destination_app",
    "destination_version",
    "destination_service",
    "destination_canonical_service",
    "destination_canonical_revision",
    "destination_service_name",
    "destination_service_namespace",
    "destination_cluster",
    "request_protocol",
    "response_code",
    "grpc_response_status",
    "response_flags",
    "connection_security_policy",
)
# TCP metrics carry every label but the two HTTP-only ones.
TCP_LABEL_NAMES: tuple[str, ...] = tuple(
    n for n in LABEL_NAMES if n not in ("response_code", "grpc_response_status")
)
LABEL_INDEX: dict[str, int] = {name: i for i, name in enumerate(LABEL_NAMES)}

UNKNOWN = "unknown"
OVERFLOW = "overflow"

# Envoy's default histogram buckets (HistogramSettingsImpl::defaultBuckets), as Istio uses.
ENVOY_BUCKETS: tuple[float, ...] = (
    0.5, 1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000,
    30000, 60000, 300000, 600000, 1800000, 3600000,
)  # fmt: skip

# One label set: a tuple of label values in LABEL_NAMES order (plus request_path when enabled).
Labels = tuple[str, ...]


@dataclass(frozen=True, slots=True)
class WorkloadIdentity:
    """Who a proxy (or its peer) is, from Istio node / peer metadata. Missing parts are 'unknown'."""

    workload: str = UNKNOWN
    namespace: str = UNKNOWN
    app: str = UNKNOWN
    version: str = UNKNOWN
    canonical_service: str = UNKNOWN
    # Istio reports "latest" when a workload has no canonical revision (or is not known at all).
    canonical_revision: str = "latest"
    cluster: str = UNKNOWN
    principal: str = ""  # SPIFFE identity, when the peer object carries one (istio-proxy 1.25+ `identity`)


@dataclass(frozen=True, slots=True)
class StreamIdentity:
    """The reporting proxy of one ALS stream (from the stream's first message)."""

    node_id: str
    log_name: str
    workload: WorkloadIdentity
    # "inbound" / "outbound" when the log name says which listeners log on this stream (deploy/istio splits
    # the providers by Telemetry match mode), else "".
    direction: str = ""
    # The proxy's own addresses (Istio node metadata INSTANCE_IPS): a request whose downstream local
    # address is one of them arrived on the inbound side.
    instance_ips: frozenset[str] = frozenset()
    service_account: str = ""  # node metadata SERVICE_ACCOUNT
    # The proxy's own SPIFFE identity (spiffe://TRUST_DOMAIN/ns/NAMESPACE/sa/SERVICE_ACCOUNT), "" if unknown.
    principal: str = ""


@dataclass(frozen=True, slots=True)
class EntryFacts:
    """The few fields of one access-log entry that decide its labels. Entries sharing facts share labels."""

    upstream_cluster: str = ""
    # "outbound" (reporter=source), "inbound" (reporter=destination) or "" when nothing the proxy set says
    # (such entries are not booked: a guess could make this workload the caller of a client-chosen host).
    direction: str = ""
    authority: str = ""
    response_code: int = 0
    grpc_status: str = ""
    response_flags: str = "-"
    protocol: str = "http"  # http | grpc | tcp
    peer: WorkloadIdentity | None = None
    peer_principal: str = ""  # URI SAN of the TLS peer certificate
    local_principal: str = ""  # URI SAN of our own certificate
    mtls: bool = False
    request_path: str | None = None  # the templated path, only when the request_path label is on


class CallEdgeKey(NamedTuple):
    """Who called which service. A tuple, so dict keys are hashed and compared in C: the pipeline sums
    each batch's entry counts per edge (one update per kind and batch)."""

    source_namespace: str
    source_workload: str
    destination_service: str
    destination_port: int
    protocol: str


@dataclass(slots=True)
class EdgeCounts:
    """One call edge's calls since the last flush to the call-edge store."""

    count: int
    first_seen: datetime
    last_seen: datetime


@dataclass(frozen=True, slots=True)
class Derived:
    """Everything computed once per distinct EntryFacts: metric labels, the Kafka key, the call edge."""

    labels: Labels
    record_key: bytes
    edge: CallEdgeKey | None
    misses: tuple[str, ...] = ()
    booked: bool = True  # False: the direction is unknown, so no istio_* series (the record still ships)
