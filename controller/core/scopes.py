"""Dependencies with a TTL -> one Sidecar scope per workload (Istio precedence rules kept).

Every workload seen in the telemetry gets a scope, leaves included (a workload that calls nothing
gets only the hosts every scope has). A host leaves a scope only after it was not seen for the whole
TTL, and a workload after it was not seen at all for the TTL. Output is sorted so that the same
input always gives the same objects.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, replace

from controller.core.edges import is_scopable
from controller.core.names import object_name
from controller.settings import ControllerSettings
from controller.structs import CallEdge, Manifest, SidecarSpec, StoredDependency, WorkloadInfo, WorkloadRef

Selector = tuple[tuple[str, str], ...]
# Labels Istio's sidecar injector puts on every pod it injects (istio/istio
# manifests/charts/istio-control/istio-discovery/files/injection-template.yaml): the canonical name
# defaults to app.kubernetes.io/name, then app, then the workload name; the revision to
# app.kubernetes.io/version, then version, then "latest". Telemetry reports them as
# source_/destination_canonical_service and _canonical_revision.
CANONICAL_NAME = "service.istio.io/canonical-name"
CANONICAL_REVISION = "service.istio.io/canonical-revision"
WORKLOADS_ANNOTATION = "remixer.io/workloads"


@dataclass(frozen=True, slots=True)
class TtlMerge:
    upserts: list[StoredDependency]
    expired: list[StoredDependency]
    active: dict[WorkloadRef, set[str]]


def namespace_allowed(namespace: str, settings: ControllerSettings, wanted: Collection[str]) -> bool:
    """Whether workloads of `namespace` get scopes: never the control plane's or excluded ones."""
    if namespace == settings.control_plane_namespace or namespace in settings.excluded_namespaces:
        return False
    return not wanted or namespace in wanted


def observed_dependencies(
    edges: Iterable[CallEdge], settings: ControllerSettings
) -> set[tuple[WorkloadRef, str]]:
    """The (workload, host) pairs this run saw, after namespace filters and host exclusions."""
    pairs = set()
    for edge in edges:
        if not is_scopable(edge) or not namespace_allowed(
            edge.source.namespace, settings, settings.namespaces
        ):
            continue
        if any(fnmatch.fnmatchcase(edge.destination_host, pattern) for pattern in settings.excluded_hosts):
            continue
        pairs.add((edge.source, edge.destination_host))
    return pairs


def observed_workloads(edges: Iterable[CallEdge], settings: ControllerSettings) -> set[WorkloadRef]:
    """Every workload this run saw, as a caller or as a callee (leaves receive but never call)."""
    seen = set()
    for edge in edges:
        if is_scopable(edge):
            seen.add(edge.source)
        if edge.destination_workload is not None:
            seen.add(edge.destination_workload)
    return {ref for ref in seen if namespace_allowed(ref.namespace, settings, settings.namespaces)}


def merge_ttl(
    stored: Iterable[StoredDependency],
    observed: Iterable[tuple[WorkloadRef, str]],
    *,
    now: float,
    ttl_seconds: float,
) -> TtlMerge:
    by_key = {(dep.workload, dep.host): dep for dep in stored}
    upserts = []
    seen = set(observed)
    for workload, host in sorted(seen):
        previous = by_key.get((workload, host))
        upserts.append(StoredDependency(workload, host, previous.first_seen if previous else now, now))
    expired = []
    active: dict[WorkloadRef, set[str]] = {}
    for key, dep in by_key.items():
        if key not in seen and now - dep.last_seen > ttl_seconds:
            expired.append(dep)
        else:
            active.setdefault(dep.workload, set()).add(dep.host)
    for workload, host in seen:
        active.setdefault(workload, set()).add(host)
    return TtlMerge(upserts, sorted(expired, key=lambda d: (d.workload, d.host)), active)


def selectors_from_telemetry(
    edges: Iterable[CallEdge], *, now: float = 0.0
) -> dict[WorkloadRef, WorkloadInfo]:
    """Selectors for workloads Kubernetes did not describe: the canonical name and revision the injector
    put on every pod. App/version labels are not used: a pod's `app` may differ from its canonical name,
    and `app=<canonical name>` would then select another workload's pods."""
    infos: dict[WorkloadRef, WorkloadInfo] = {}
    for edge in edges:
        for ref, canonical in (
            (edge.source, edge.source_canonical),
            (edge.destination_workload, edge.destination_canonical),
        ):
            if ref is None or canonical is None or ref in infos:
                continue
            selector = ((CANONICAL_NAME, canonical[0]), (CANONICAL_REVISION, canonical[1]))
            infos[ref] = WorkloadInfo(ref, selector, last_seen=now)
    return infos


def is_injector_selector(selector: Selector) -> bool:
    return {key for key, _ in selector} == {CANONICAL_NAME, CANONICAL_REVISION}


def without_ambiguity(infos: Mapping[WorkloadRef, WorkloadInfo]) -> dict[WorkloadRef, WorkloadInfo]:
    """Workloads of one namespace whose selectors are equal or nested could select each other's pods
    (undefined behaviour in Istio): none of them gets a selector, each gets the reason instead."""
    by_namespace: dict[str, list[WorkloadInfo]] = {}
    for info in infos.values():
        if info.selector:
            by_namespace.setdefault(info.workload.namespace, []).append(info)
    clashes: dict[WorkloadRef, set[str]] = {}
    for members in by_namespace.values():
        holders: dict[tuple[str, str], list[WorkloadInfo]] = {}
        for info in members:
            for pair in info.selector:
                holders.setdefault(pair, []).append(info)
        for info in members:
            # Every selector containing all of ours holds its rarest pair.
            rarest = min((holders[pair] for pair in info.selector), key=len)
            mine = set(info.selector)
            for other in rarest:
                if other.workload != info.workload and mine <= set(other.selector):
                    clashes.setdefault(info.workload, set()).add(other.workload.name)
                    clashes.setdefault(other.workload, set()).add(info.workload.name)
    result = dict(infos)
    for ref, others in clashes.items():
        labels = ",".join(f"{k}={v}" for k, v in infos[ref].selector)
        result[ref] = replace(
            infos[ref],
            selector=(),
            problem=f"its pod labels ({labels}) do not tell it apart from {', '.join(sorted(others))}",
        )
    return result


def required_hosts(settings: ControllerSettings, provider_hosts: Iterable[str] = ()) -> frozenset[str]:
    """Hosts no generated Sidecar may lack: the control plane, remixer itself, the mesh's extension
    providers (ext_authz, access-log sinks). Dropping them would turn CUSTOM authorization into deny
    and stop access logs for every scoped proxy."""
    return frozenset(
        {f"{settings.control_plane_namespace}/*", f"{settings.remixer_namespace}/*", *provider_hosts}
    )


def sidecar_name(prefix: str, workload: str) -> str:
    return object_name(f"{prefix}{workload}")


def _pinned(workload: WorkloadRef, settings: ControllerSettings) -> set[str]:
    return (
        set(settings.pinned_hosts)
        | set(settings.pinned_hosts_by_namespace.get(workload.namespace, ()))
        | set(settings.pinned_hosts_by_workload.get(str(workload), ()))
    )


def compute_sidecars(
    active: Mapping[WorkloadRef, set[str]],
    infos: Mapping[WorkloadRef, WorkloadInfo],
    settings: ControllerSettings,
    *,
    required: frozenset[str],
) -> tuple[list[SidecarSpec], list[tuple[WorkloadRef, str]]]:
    """One Sidecar per workload (an empty dependency set still gets the pinned hosts), and the
    workloads that get none, with why."""
    skipped: list[tuple[WorkloadRef, str]] = []
    specs: list[SidecarSpec] = []
    union_by_namespace: dict[str, set[str]] = {}
    for workload in sorted(active):
        hosts = active[workload] | _pinned(workload, settings) | required
        # The namespace default also covers the workloads no selector can single out.
        union_by_namespace.setdefault(workload.namespace, set()).update(hosts)
        info = infos.get(workload)
        if info is None or not info.selector:
            reason = info.problem if info is not None and info.problem else "no pod labels known to select it"
            skipped.append((workload, reason))
            continue
        specs.append(
            SidecarSpec(
                namespace=workload.namespace,
                name=sidecar_name(settings.sidecar_name_prefix, workload.name),
                selector=info.selector,
                hosts=tuple(sorted(hosts)),
                workloads=(workload.name,),
            )
        )
    if settings.namespace_default_sidecar:
        for namespace, union in sorted(union_by_namespace.items()):
            specs.append(SidecarSpec(namespace, "default", None, tuple(sorted(union | {"./*"})), ()))
    return specs, skipped


def to_manifest(spec: SidecarSpec, settings: ControllerSettings, *, required: frozenset[str]) -> Manifest:
    """The Sidecar object; `required` hosts are added here again: no path writes a scope without them."""
    metadata: Manifest = {
        "name": spec.name,
        "namespace": spec.namespace,
        "labels": {settings.owner_label: settings.owner_value},
    }
    if spec.workloads:
        metadata["annotations"] = {WORKLOADS_ANNOTATION: ",".join(spec.workloads)}
    body: Manifest = {
        "egress": [{"hosts": sorted(set(spec.hosts) | required)}],
        "outboundTrafficPolicy": {"mode": settings.outbound_traffic_policy},
    }
    if spec.selector is not None:
        body = {"workloadSelector": {"labels": dict(spec.selector)}, **body}
    return {"apiVersion": "networking.istio.io/v1", "kind": "Sidecar", "metadata": metadata, "spec": body}
