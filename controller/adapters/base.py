"""The small interfaces the runtime depends on; the concrete adapters are chosen in app.py."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Protocol

from controller.core.edges import CallEdgeRow
from controller.core.shrink import ServiceInfo
from controller.structs import Manifest, QueryRow, WorkloadInfo, WorkloadRef


class MetricsSource(Protocol):
    def query(self, promql: str, *, at: float) -> list[QueryRow]: ...


class CallEdgeSource(Protocol):
    async def read(self, *, since: float) -> list[CallEdgeRow]: ...


class SidecarSink(Protocol):
    name: str

    def observe(self) -> list[Manifest]: ...

    def apply(
        self, manifests: Sequence[Manifest], deletes: Iterable[tuple[str, str]], *, dry_run: bool
    ) -> None: ...


class Inventory(Protocol):
    """What the cluster itself says: workload pod selectors and the Service list (kube sink only)."""

    def workloads(self) -> dict[WorkloadRef, WorkloadInfo]: ...

    def services(self, cluster_domain: str) -> dict[str, ServiceInfo]: ...
