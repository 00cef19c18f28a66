"""Sidecars, workloads, pods, Services and the mesh config through lightkube; the only module that knows
the Kubernetes client.

Writes are server-side apply with our field manager and owner label; only objects with that label
are ever pruned, and only in the version we listed (uid and resourceVersion preconditions);
`dry_run` becomes the API server's dryRun=All. An object the API server refuses is reported and
skipped; the others are still written.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import httpx2
import yaml
from lightkube import ApiError, Client, ConfigError, KubeConfig
from lightkube.config import models
from lightkube.generic_resource import create_namespaced_resource
from lightkube.resources.apps_v1 import DaemonSet, Deployment, StatefulSet
from lightkube.resources.core_v1 import ConfigMap, Pod, Service

from controller.core.selectors import PodLabels, PodTemplateOwner, exact_selectors, pod_workload
from controller.core.shrink import ServiceInfo
from controller.errors import SinkFailed, SourceUnavailable
from controller.structs import Manifest, WorkloadInfo, WorkloadRef, WriteFailure

Sidecar = create_namespaced_resource("networking.istio.io", "v1", "Sidecar", "sidecars")
_YAML = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _describe(error: Exception) -> str:
    if isinstance(error, ApiError):
        return f"{error.status.code} {error.status.reason}: {error.status.message}"
    return type(error).__name__


def _object_refused(error: ApiError) -> bool:
    """4xx about this one object (invalid, forbidden in its namespace, changed meanwhile), as opposed to
    the API server being unreachable or failing, which stops the run."""
    return 400 <= (error.status.code or 0) < 500 and error.status.code not in (401, 429)


def _labels(metadata: Any) -> tuple[tuple[str, str], ...]:
    return tuple(sorted(((metadata.labels if metadata else None) or {}).items()))


class KubeSink:
    name = "kube"

    def __init__(
        self,
        *,
        api_url: str | None,
        field_manager: str,
        owner_label: str,
        owner_value: str,
        control_plane_namespace: str = "istio-system",
        mesh_config_map: str = "istio",
        timeout: float = 30.0,
    ) -> None:
        try:
            # An explicit URL carries no credentials (a local proxy such as `kubectl proxy` adds them).
            config = (
                KubeConfig.from_one(cluster=models.Cluster(server=api_url), user=models.User())
                if api_url
                else KubeConfig.from_env()
            )
        except ConfigError:
            raise SinkFailed(
                "--sink kube: no Kubernetes cluster configured (not in a pod, no kubeconfig); "
                "set KUBECONFIG or --kube-api-url"
            ) from None
        self.client = Client(config, timeout=httpx2.Timeout(timeout), field_manager=field_manager)
        self.field_manager = field_manager
        self.owner_label = owner_label
        self.owner_value = owner_value
        self.control_plane_namespace = control_plane_namespace
        self.mesh_config_map = mesh_config_map
        self._listed: dict[tuple[str, str], tuple[str, str]] = {}

    def observe(self) -> list[Manifest]:
        """Every Sidecar: ours to compare and prune, the others to stay clear of (Istio precedence)."""
        try:
            found = [dict(obj.to_dict()) for obj in self.client.list(Sidecar, namespace="*")]  # type: ignore[no-untyped-call]
        except (ApiError, httpx2.HTTPError) as error:
            raise SinkFailed(f"cannot list Sidecars: {_describe(error)}") from None
        self._listed = {
            (m["metadata"]["namespace"], m["metadata"]["name"]): (
                m["metadata"].get("uid", ""),
                m["metadata"].get("resourceVersion", ""),
            )
            for m in found
        }
        return found

    def apply(
        self, manifests: Sequence[Manifest], deletes: Iterable[tuple[str, str]], *, dry_run: bool
    ) -> list[WriteFailure]:
        failures = []
        try:
            for manifest in manifests:
                metadata = manifest["metadata"]
                try:
                    self.client.apply(Sidecar.from_dict(manifest), force=True, dry_run=dry_run)
                except ApiError as error:
                    if not _object_refused(error):
                        raise
                    failures.append(WriteFailure(metadata["namespace"], metadata["name"], _describe(error)))
            for namespace, name in deletes:
                try:
                    self._delete_listed(namespace, name, dry_run=dry_run)
                except ApiError as error:
                    if error.status.code == 404:
                        continue  # already gone
                    if not _object_refused(error):
                        raise
                    failures.append(WriteFailure(namespace, name, f"not pruned: {_describe(error)}"))
        except (ApiError, httpx2.HTTPError) as error:
            raise SinkFailed(f"cannot write Sidecars: {_describe(error)}") from None
        return failures

    def _delete_listed(self, namespace: str, name: str, *, dry_run: bool) -> None:
        """Delete exactly the object we listed: if someone changed or re-created it since (took the name
        over, removed our label), the API server answers 409 and it stays."""
        uid, resource_version = self._listed.get((namespace, name), ("", ""))
        # lightkube's delete() sends no body; DeleteOptions with preconditions go through its request layer.
        request = self.client._client.prepare_request(
            "delete",
            res=Sidecar,
            name=name,
            namespace=namespace,
            params={"dryRun": "All" if dry_run else None},
        )
        request.data = {
            "kind": "DeleteOptions",
            "apiVersion": "v1",
            "preconditions": {"uid": uid, "resourceVersion": resource_version},
        }
        response = self.client._client.send(self.client._client.build_adapter_request(request))
        self.client._client.handle_response("delete", response, request)

    def workloads(self) -> dict[WorkloadRef, WorkloadInfo]:
        """Selectors for Deployments, StatefulSets and DaemonSets (Istio names their pods' workload after
        them), checked against every pod of the namespace."""
        owners = []
        for kind in (Deployment, StatefulSet, DaemonSet):
            for owner in self._list(kind):
                metadata, spec = owner.metadata, owner.spec
                if metadata is None or not metadata.name or not metadata.namespace or spec is None:
                    continue
                template = spec.template.metadata if spec.template else None
                owners.append(
                    PodTemplateOwner(
                        WorkloadRef(metadata.namespace, metadata.name),
                        tuple(sorted(((spec.selector.matchLabels if spec.selector else None) or {}).items())),
                        _labels(template),
                    )
                )
        pods = []
        for pod in self._list(Pod):
            metadata = pod.metadata
            if metadata is None or not metadata.name or not metadata.namespace:
                continue
            controller = next(
                ((ref.kind, ref.name) for ref in metadata.ownerReferences or [] if ref.controller), None
            )
            labels = _labels(metadata)
            workload = pod_workload(metadata.name, metadata.generateName or "", dict(labels), controller)
            pods.append(PodLabels(metadata.namespace, workload, labels))
        return exact_selectors(owners, pods)

    def services(self, cluster_domain: str) -> dict[str, ServiceInfo]:
        services = {}
        for service in self._list(Service):
            metadata = service.metadata
            if metadata is None or not metadata.name or not metadata.namespace:
                continue
            host = f"{metadata.namespace}/{metadata.name}.{metadata.namespace}.svc.{cluster_domain}"
            ports = len(service.spec.ports or []) if service.spec else 0
            services[host] = ServiceInfo(host, ports=max(ports, 1))
        return services

    def mesh_config(self) -> dict[str, Any] | None:
        """meshConfig from the control plane's ConfigMap (key `mesh`); None when it cannot be read."""
        try:
            found = self.client.get(ConfigMap, self.mesh_config_map, namespace=self.control_plane_namespace)
        except ApiError as error:
            if error.status.code in (403, 404):
                return None
            raise SourceUnavailable(f"cannot read the mesh config: {_describe(error)}") from None
        except httpx2.HTTPError as error:
            raise SourceUnavailable(f"cannot read the mesh config: {_describe(error)}") from None
        try:
            mesh = yaml.load((found.data or {}).get("mesh") or "{}", Loader=_YAML)  # noqa: S506 (safe loader)
        except yaml.YAMLError:
            return None
        return mesh if isinstance(mesh, dict) else None

    def _list(self, kind: Any) -> list[Any]:
        try:
            return list(self.client.list(kind, namespace="*"))
        except (ApiError, httpx2.HTTPError) as error:
            raise SourceUnavailable(f"cannot list {kind.__name__}s: {_describe(error)}") from None

    def close(self) -> None:
        self.client.close()
