"""Plain domain values shared by core, adapters and the runtime. No I/O, no third-party types."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

Protocol = Literal["http", "grpc", "tcp"]
Reporter = Literal["source", "destination", "calledges"]
# A Kubernetes object as plain JSON-shaped data (what YAML files and the API hold).
Manifest = dict[str, Any]


@dataclass(frozen=True, slots=True, order=True)
class WorkloadRef:
    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True, slots=True)
class QueryRow:
    """One sample of an instant-vector result: its labels and its value."""

    labels: dict[str, str]
    value: float


@dataclass(frozen=True, slots=True)
class CallEdge:
    """Who called which service, how much, as one reporter saw it."""

    source: WorkloadRef
    # Host in Sidecar form: "<service namespace>/<service fqdn>".
    destination_host: str
    protocol: Protocol
    reporter: Reporter
    request_rate: float = 0.0
    error_rate: float = 0.0
    source_app: str = "unknown"
    source_version: str = "unknown"
    destination_workload: WorkloadRef | None = None
    destination_app: str = "unknown"
    destination_version: str = "unknown"
    # The labels Istio's injector puts on every pod (service.istio.io/canonical-name, -revision).
    source_canonical: tuple[str, str] | None = None
    destination_canonical: tuple[str, str] | None = None


@dataclass(frozen=True, slots=True)
class StoredDependency:
    """A host a workload called, as the TTL store remembers it."""

    workload: WorkloadRef
    host: str
    first_seen: float
    last_seen: float


@dataclass(frozen=True, slots=True)
class WorkloadInfo:
    """What we know to select a workload's pods: its labels (from Kubernetes or from metrics).

    An empty selector with a `problem` means its pods cannot be told apart from another workload's.
    """

    workload: WorkloadRef
    selector: tuple[tuple[str, str], ...]
    from_kubernetes: bool = False
    problem: str = ""
    last_seen: float = 0.0


@dataclass(frozen=True, slots=True)
class SidecarSpec:
    namespace: str
    name: str
    # None for the namespace-wide default Sidecar.
    selector: tuple[tuple[str, str], ...] | None
    hosts: tuple[str, ...]
    workloads: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class SidecarChange:
    namespace: str
    name: str
    action: Literal["create", "update", "delete", "unchanged", "skipped", "failed"]
    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    reason: str = ""


@dataclass(frozen=True, slots=True)
class Plan:
    """Desired vs observed Sidecars: what to write, delete and why."""

    to_write: tuple[Manifest, ...]
    to_delete: tuple[tuple[str, str], ...]
    changes: tuple[SidecarChange, ...]
    hosts_before: int
    hosts_removed: int
    # Updates that remove hosts: (the workloads, hosts removed, hosts before).
    shrinking: tuple[tuple[str, int, int], ...] = ()


@dataclass(frozen=True, slots=True)
class WriteFailure:
    """One object the sink could not write or delete; the others were still written."""

    namespace: str
    name: str
    reason: str


@dataclass(frozen=True, slots=True)
class ShrinkEstimate:
    workloads: int
    clusters_before: int
    clusters_after: int
    endpoints_before: int
    endpoints_after: int
    # Per Sidecar ("ns/name"): clusters one of its proxies receives before and after scoping.
    per_sidecar: tuple[tuple[str, int, int], ...] = ()

    @property
    def cluster_reduction(self) -> float:
        return 0.0 if self.clusters_before == 0 else 1 - self.clusters_after / self.clusters_before

    @property
    def endpoint_reduction(self) -> float:
        return 0.0 if self.endpoints_before == 0 else 1 - self.endpoints_after / self.endpoints_before


@dataclass(frozen=True, slots=True)
class RunSummary:
    outcome: Literal["wrote", "nothing-to-write", "dry-run", "refused", "source-failure"]
    message: str
    edges: int = 0
    workloads: int = 0
    changes: tuple[SidecarChange, ...] = ()
    written: int = 0
    deleted: int = 0
    failed: int = 0
    unchanged: int = 0
    shrink: ShrinkEstimate | None = None
    skipped_rows: int = 0
    extra: dict[str, Any] = field(default_factory=dict)
