"""Sidecars, Deployments and Services through lightkube; the only module that knows the Kubernetes client.

Writes are server-side apply with our field manager and owner label; only objects with that label
are ever pruned; `dry_run` becomes the API server's dryRun=All.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import httpx2
from lightkube import ApiError, Client, KubeConfig
from lightkube.config import models
from lightkube.generic_resource import create_namespaced_resource
from lightkube.resources.apps_v1 import DaemonSet, Deployment, StatefulSet
from lightkube.resources.core_v1 import Service

from controller.core.shrink import ServiceInfo
from controller.errors import SinkFailed, SourceUnavailable
from controller.structs import Manifest, WorkloadInfo, WorkloadRef

Sidecar = create_namespaced_resource("networking.istio.io", "v1", "Sidecar", "sidecars")


def _describe(error: Exception) -> str:
    if isinstance(error, ApiError):
        return f"{error.status.code} {error.status.reason}: {error.status.message}"
    return type(error).__name__


class KubeSink:
    name = "kube"

    def __init__(
        self,
        *,
        api_url: str | None,
        field_manager: str,
        owner_label: str,
        owner_value: str,
        timeout: float = 30.0,
    ) -> None:
        # An explicit URL carries no credentials (a local proxy such as `kubectl proxy` adds them).
        config = (
            KubeConfig.from_one(cluster=models.Cluster(server=api_url), user=models.User())
            if api_url
            else KubeConfig.from_env()
        )
        self.client = Client(config, timeout=httpx2.Timeout(timeout), field_manager=field_manager)
        self.field_manager = field_manager
        self.owner_label = owner_label
        self.owner_value = owner_value

    def observe(self) -> list[Manifest]:
        """Every Sidecar: ours to compare and prune, the others to stay clear of (Istio precedence)."""
        try:
            return [dict(obj.to_dict()) for obj in self.client.list(Sidecar, namespace="*")]  # type: ignore[no-untyped-call]
        except (ApiError, httpx2.HTTPError) as error:
            raise SinkFailed(f"cannot list Sidecars: {_describe(error)}") from None

    def apply(
        self, manifests: Sequence[Manifest], deletes: Iterable[tuple[str, str]], *, dry_run: bool
    ) -> None:
        try:
            for manifest in manifests:
                self.client.apply(Sidecar.from_dict(manifest), force=True, dry_run=dry_run)
            for namespace, name in deletes:
                current = self.client.get(Sidecar, name, namespace=namespace)
                labels = (current.metadata.labels if current.metadata else None) or {}
                if labels.get(self.owner_label) != self.owner_value:
                    continue  # a person took the name over since we listed: not ours to delete
                self.client.delete(Sidecar, name, namespace=namespace, dry_run=dry_run)
        except (ApiError, httpx2.HTTPError) as error:
            raise SinkFailed(f"cannot write Sidecars: {_describe(error)}") from None

    def workloads(self) -> dict[WorkloadRef, WorkloadInfo]:
        """Pod selectors of Deployments, StatefulSets and DaemonSets (Istio names their pods' workload
        after them): the exact labels that select each workload's pods."""
        owners: list[Any] = []
        for kind in (Deployment, StatefulSet, DaemonSet):
            try:
                owners.extend(self.client.list(kind, namespace="*"))
            except (ApiError, httpx2.HTTPError) as error:
                raise SourceUnavailable(f"cannot list {kind.__name__}s: {_describe(error)}") from None
        infos = {}
        for owner in owners:
            metadata = owner.metadata
            spec: Any = owner.spec
            labels = (spec.selector.matchLabels if spec and spec.selector else None) or {}
            if metadata is None or not metadata.name or not metadata.namespace or not labels:
                continue
            ref = WorkloadRef(metadata.namespace, metadata.name)
            infos[ref] = WorkloadInfo(ref, tuple(sorted(labels.items())), from_kubernetes=True)
        return infos

    def services(self, cluster_domain: str) -> dict[str, ServiceInfo]:
        try:
            items = list(self.client.list(Service, namespace="*"))
        except (ApiError, httpx2.HTTPError) as error:
            raise SourceUnavailable(f"cannot list Services: {_describe(error)}") from None
        services = {}
        for service in items:
            metadata = service.metadata
            if metadata is None or not metadata.name or not metadata.namespace:
                continue
            host = f"{metadata.namespace}/{metadata.name}.{metadata.namespace}.svc.{cluster_domain}"
            ports = len(service.spec.ports or []) if service.spec else 0
            services[host] = ServiceInfo(host, ports=max(ports, 1))
        return services

    def close(self) -> None:
        self.client.close()
