"""Estimate of the xDS a proxy receives before (every service exported to it) and after scoping.

Clusters are counted per service port (Istio builds one outbound cluster per service port) and
endpoints per backing workload instance when nothing better is known.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from controller.structs import ShrinkEstimate, SidecarSpec


@dataclass(frozen=True, slots=True)
class ServiceInfo:
    host: str  # "ns/fqdn"
    ports: int = 1
    endpoints: int = 1


@dataclass(frozen=True, slots=True)
class _Index:
    services: Mapping[str, ServiceInfo]
    by_namespace: dict[str, list[ServiceInfo]]
    by_name: dict[str, list[ServiceInfo]]


def _index(services: Mapping[str, ServiceInfo]) -> _Index:
    by_namespace: dict[str, list[ServiceInfo]] = {}
    by_name: dict[str, list[ServiceInfo]] = {}
    for info in services.values():
        namespace, _, name = info.host.partition("/")
        by_namespace.setdefault(namespace, []).append(info)
        by_name.setdefault(name, []).append(info)
    return _Index(services, by_namespace, by_name)


def _visible(spec_namespace: str, hosts: Iterable[str], index: _Index) -> list[ServiceInfo]:
    services = index.services
    by_namespace = index.by_namespace
    chosen: dict[str, ServiceInfo] = {}
    for host in hosts:
        namespace, _, name = host.partition("/")
        namespace = spec_namespace if namespace == "." else namespace
        if name == "*":
            pool = list(services.values()) if namespace == "*" else by_namespace.get(namespace, [])
            chosen.update((info.host, info) for info in pool)
        elif namespace == "*":
            chosen.update((info.host, info) for info in index.by_name.get(name, []))
        else:
            chosen[host] = services.get(host, ServiceInfo(host))
    return list(chosen.values())


def estimate(
    specs: Iterable[SidecarSpec], services: Mapping[str, ServiceInfo], *, workloads: int
) -> ShrinkEstimate:
    """Totals over `workloads` proxies; those without a Sidecar keep the full set."""
    all_clusters = sum(info.ports for info in services.values())
    all_endpoints = sum(info.endpoints * info.ports for info in services.values())
    index = _index(services)
    scoped = 0
    clusters_after = 0
    endpoints_after = 0
    per_sidecar = []
    for spec in specs:
        if spec.selector is None:
            continue
        visible = _visible(spec.namespace, spec.hosts, index)
        count = max(1, len(spec.workloads))
        scoped += count
        proxy_clusters = sum(info.ports for info in visible)
        per_sidecar.append((f"{spec.namespace}/{spec.name}", all_clusters, proxy_clusters))
        clusters_after += count * proxy_clusters
        endpoints_after += count * sum(info.endpoints * info.ports for info in visible)
    unscoped = max(0, workloads - scoped)
    return ShrinkEstimate(
        workloads=workloads,
        clusters_before=workloads * all_clusters,
        clusters_after=clusters_after + unscoped * all_clusters,
        endpoints_before=workloads * all_endpoints,
        endpoints_after=endpoints_after + unscoped * all_endpoints,
        per_sidecar=tuple(per_sidecar),
    )
