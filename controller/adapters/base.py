"""The small interfaces the runtime depends on; the concrete adapters are chosen in app.py."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Protocol

from controller.core.edges import CallEdgeRow
from controller.core.shrink import ServiceInfo
from controller.structs import Manifest, QueryRow, WorkloadInfo, WorkloadRef, WriteFailure


class MetricsSource(Protocol):
    def query(self, promql: str, *, at: float) -> list[QueryRow]: ...


class CallEdgeSource(Protocol):
    async def read(self, *, since: float, new_only: bool = False) -> list[CallEdgeRow]: ...


class SidecarSink(Protocol):
    name: str

    def observe(self) -> list[Manifest]: ...

    def apply(
        self, manifests: Sequence[Manifest], deletes: Iterable[tuple[str, str]], *, dry_run: bool
    ) -> list[WriteFailure]:
        """Write and delete; objects that cannot be written are returned, never stop the others."""
        ...


class Inventory(Protocol):
    """What the cluster itself says: workload pod selectors, the Service list, the mesh config (kube sink)."""

    def workloads(self) -> dict[WorkloadRef, WorkloadInfo]: ...

    def services(self, cluster_domain: str) -> dict[str, ServiceInfo]: ...

    def mesh_config(self) -> dict[str, Any] | None: ...
