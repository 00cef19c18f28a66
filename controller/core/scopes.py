"""Dependencies with a TTL -> one Sidecar scope per workload (Istio precedence rules kept).

A host leaves a scope only after it was not seen for the whole TTL; a workload with no
dependency gets no Sidecar at all (never an empty scope); output is sorted so that the same
input always gives the same objects.
"""

from __future__ import annotations

import fnmatch
import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from controller.core.edges import is_label_value, is_scopable, known
from controller.settings import ControllerSettings
from controller.structs import CallEdge, Manifest, SidecarSpec, StoredDependency, WorkloadInfo, WorkloadRef

Selector = tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class TtlMerge:
    upserts: list[StoredDependency]
    expired: list[StoredDependency]
    active: dict[WorkloadRef, set[str]]


def observed_dependencies(
    edges: Iterable[CallEdge], settings: ControllerSettings
) -> set[tuple[WorkloadRef, str]]:
    """The (workload, host) pairs this run saw, after namespace filters and host exclusions."""
    wanted = set(settings.namespaces)
    pairs = set()
    for edge in edges:
        if not is_scopable(edge) or edge.source.namespace in settings.excluded_namespaces:
            continue
        if wanted and edge.source.namespace not in wanted:
            continue
        if any(fnmatch.fnmatchcase(edge.destination_host, pattern) for pattern in settings.excluded_hosts):
            continue
        pairs.add((edge.source, edge.destination_host))
    return pairs


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


def selectors_from_edges(edges: Iterable[CallEdge]) -> dict[WorkloadRef, WorkloadInfo]:
    """Fallback selectors from the metrics' app/version labels, for workloads Kubernetes did not describe."""
    infos: dict[WorkloadRef, WorkloadInfo] = {}
    for edge in edges:
        if not known(edge.source_app) or not is_label_value(edge.source_app):
            continue
        labels = [("app", edge.source_app)]
        if known(edge.source_version) and is_label_value(edge.source_version):
            labels.append(("version", edge.source_version))
        infos.setdefault(edge.source, WorkloadInfo(edge.source, tuple(sorted(labels))))
    return infos


def sidecar_name(prefix: str, workload: str) -> str:
    name = f"{prefix}{workload}"
    if len(name) <= 253:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:10]
    return f"{name[:242]}-{digest}"


def _pinned(workload: WorkloadRef, settings: ControllerSettings) -> set[str]:
    return (
        set(settings.pinned_hosts)
        | set(settings.pinned_hosts_by_namespace.get(workload.namespace, ()))
        | set(settings.pinned_hosts_by_workload.get(str(workload), ()))
    )


def _is_subset(small: Selector, big: Selector) -> bool:
    return set(small) <= set(big)


def compute_sidecars(
    active: Mapping[WorkloadRef, set[str]],
    infos: Mapping[WorkloadRef, WorkloadInfo],
    settings: ControllerSettings,
) -> tuple[list[SidecarSpec], list[tuple[WorkloadRef, str]]]:
    """Desired Sidecars and the workloads that get none, with why.

    Two selectors that could match the same pod are undefined behaviour in Istio, so workloads
    whose selectors are equal or nested share one Sidecar (the union of their hosts): a superset
    scope is safe, a missing host is not.
    """
    skipped: list[tuple[WorkloadRef, str]] = []
    groups: dict[str, dict[Selector, tuple[list[WorkloadRef], set[str]]]] = {}
    for workload in sorted(active):
        hosts = active[workload]
        if not hosts:
            skipped.append((workload, "no dependencies: keeps the default (full) scope"))
            continue
        info = infos.get(workload)
        if info is None or not info.selector:
            skipped.append((workload, "no pod labels known to select it"))
            continue
        namespace_groups = groups.setdefault(workload.namespace, {})
        members, group_hosts = namespace_groups.setdefault(info.selector, ([], set()))
        members.append(workload)
        group_hosts.update(hosts | _pinned(workload, settings))
    specs: list[SidecarSpec] = []
    for namespace in sorted(groups):
        merged = _merge_nested(groups[namespace])
        for selector, (members, hosts) in sorted(merged.items()):
            names = sorted(member.name for member in members)
            specs.append(
                SidecarSpec(
                    namespace=namespace,
                    name=sidecar_name(settings.sidecar_name_prefix, names[0]),
                    selector=selector,
                    hosts=tuple(sorted(hosts)),
                    workloads=tuple(names),
                )
            )
        if settings.namespace_default_sidecar:
            union = set().union(*(hosts for _, hosts in merged.values())) | {"./*"}
            specs.append(SidecarSpec(namespace, "default", None, tuple(sorted(union)), ()))
    return specs, skipped


def _merge_nested(
    groups: dict[Selector, tuple[list[WorkloadRef], set[str]]],
) -> dict[Selector, tuple[list[WorkloadRef], set[str]]]:
    merged: dict[Selector, tuple[list[WorkloadRef], set[str]]] = {}
    # A kept selector can only be a subset of `selector` if it has one of its label pairs.
    kept_by_pair: dict[tuple[str, str], list[Selector]] = {}
    for selector in sorted(groups, key=lambda s: (len(s), s)):
        members, hosts = groups[selector]
        candidates = sorted({kept for pair in selector for kept in kept_by_pair.get(pair, ())})
        into = next((kept for kept in candidates if _is_subset(kept, selector)), None)
        if into is None:
            merged[selector] = (list(members), set(hosts))
            for pair in selector:
                kept_by_pair.setdefault(pair, []).append(selector)
        else:
            merged[into][0].extend(members)
            merged[into][1].update(hosts)
    return merged


def to_manifest(spec: SidecarSpec, settings: ControllerSettings) -> Manifest:
    metadata: Manifest = {
        "name": spec.name,
        "namespace": spec.namespace,
        "labels": {settings.owner_label: settings.owner_value},
    }
    if spec.workloads:
        metadata["annotations"] = {"remixer.io/workloads": ",".join(spec.workloads)}
    body: Manifest = {"egress": [{"hosts": list(spec.hosts)}]}
    if spec.selector is not None:
        body = {"workloadSelector": {"labels": dict(spec.selector)}, **body}
    return {"apiVersion": "networking.istio.io/v1", "kind": "Sidecar", "metadata": metadata, "spec": body}
