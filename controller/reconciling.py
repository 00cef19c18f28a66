"""One controller run (query -> core -> write) and the loop that repeats it.

Order matters for safety: every source is read and every guard checked before anything is
written; the TTL store and the run history are updated only after the sink accepted the writes,
so a failed write is retried in full by the next run.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Literal, Protocol

from controller import structs
from controller.adapters.base import CallEdgeSource, Inventory, MetricsSource, SidecarSink
from controller.core import edges as edge_rows
from controller.core import plans, promql, scopes, shrink
from controller.errors import ControllerError, GuardRefused
from controller.settings import ControllerSettings, parse_duration
from controller.structs import (
    CallEdge,
    Manifest,
    QueryRow,
    RunSummary,
    StoredDependency,
    WorkloadInfo,
    WorkloadRef,
)

log = logging.getLogger("remixer.controller")


class DependencyStore(Protocol):
    async def load(
        self, *, scope: str = "*"
    ) -> tuple[list[StoredDependency], dict[WorkloadRef, WorkloadInfo], int | None]: ...

    async def save(
        self,
        *,
        upserts: list[StoredDependency],
        expired: list[StoredDependency],
        infos: list[WorkloadInfo],
        now: float,
        edges: int,
        written: int,
        scope: str = "*",
    ) -> None: ...


class RunObserver(Protocol):
    def observe(self, summary: RunSummary, *, seconds: float, now: float) -> None: ...


@dataclass(slots=True)
class Observation:
    """Everything the sources said in one run."""

    edges: list[CallEdge]
    services: dict[str, shrink.ServiceInfo]
    stats: edge_rows.RowStats = field(default_factory=edge_rows.RowStats)


async def observe_sources(
    *,
    settings: ControllerSettings,
    metrics_source: MetricsSource,
    call_edges: CallEdgeSource | None,
    now: float,
    namespaces: list[str] | None = None,
) -> Observation:
    """Query Prometheus (and the call-edge table); raises SourceUnavailable on any failure."""
    stats = edge_rows.RowStats()
    wanted = namespaces if namespaces is not None else settings.namespaces
    queries = promql.build_queries(
        window=settings.window,
        namespaces=wanted,
        extra=settings.query_selector,
        include_tcp=settings.include_tcp,
    )
    by_reporter: dict[str, list[CallEdge]] = {"source": [], "destination": []}
    error_edges: list[CallEdge] = []
    answers: list[tuple[promql.Query, list[QueryRow]]] = []
    for query in queries:
        answers.append((query, await asyncio.to_thread(metrics_source.query, query.promql, at=now)))
    namespaces_seen = set().union(*(edge_rows.namespaces_in(rows) for _, rows in answers))
    for query, rows in answers:
        protocol: structs.Protocol = "tcp" if query.kind.startswith("tcp") else "http"
        found = edge_rows.edges_from_rows(
            rows,
            reporter=query.reporter,
            protocol=protocol,
            cluster_domain=settings.cluster_domain,
            stats=stats if query.kind != "errors" else edge_rows.RowStats(),
            known_namespaces=namespaces_seen,
        )
        (error_edges if query.kind == "errors" else by_reporter[query.reporter]).extend(found)
    merged = edge_rows.merge_reporters(
        by_reporter["source"], by_reporter["destination"], edge_rows.error_rates(error_edges)
    )
    if call_edges is not None:
        window = parse_duration(settings.window)
        table_rows = await call_edges.read(since=now - window)
        covered = {(edge.source, edge.destination_host) for edge in merged}
        for edge in edge_rows.edges_from_call_edge_rows(
            table_rows,
            cluster_domain=settings.cluster_domain,
            stats=stats,
            known_namespaces=namespaces_seen | {row.source_namespace for row in table_rows},
        ):
            if (edge.source, edge.destination_host) not in covered and (
                not wanted or edge.source.namespace in wanted
            ):
                covered.add((edge.source, edge.destination_host))
                merged.append(edge)
    service_rows = await asyncio.to_thread(
        metrics_source.query,
        promql.services_query(window=settings.window, extra=settings.query_selector).promql,
        at=now,
    )
    return Observation(merged, services_from(service_rows, merged, settings.cluster_domain), stats)


def services_from(
    rows: list[QueryRow], edges: list[CallEdge], cluster_domain: str
) -> dict[str, shrink.ServiceInfo]:
    """Every service known from telemetry, with the number of workloads behind it as its endpoint estimate."""
    backends: dict[str, set[str]] = {}
    for row in rows:
        host = edge_rows.service_host(
            row.labels.get("destination_service", ""),
            row.labels.get("destination_service_namespace"),
            cluster_domain,
        )
        if host is not None and not host.startswith("*/"):
            backends.setdefault(host, set()).add(row.labels.get("destination_workload", ""))
    for edge in edges:
        if edge_rows.is_scopable(edge) and not edge.destination_host.startswith("*/"):
            backends.setdefault(edge.destination_host, set()).add(str(edge.destination_workload or ""))
    return {
        host: shrink.ServiceInfo(host, endpoints=max(1, len(names - {""})))
        for host, names in backends.items()
    }


@dataclass(slots=True)
class Reconciler:
    settings: ControllerSettings
    metrics_source: MetricsSource
    store: DependencyStore
    sink: SidecarSink
    call_edges: CallEdgeSource | None = None
    inventory: Inventory | None = None
    observer: RunObserver | None = None
    namespaces: list[str] | None = None

    async def run_once(self, *, now: float, dry_run: bool = False, force: bool = False) -> RunSummary:
        started = time.monotonic()
        try:
            summary = await self._run(now=now, dry_run=dry_run, force=force)
        except GuardRefused as refusal:
            summary = RunSummary("refused", str(refusal))
        except ControllerError as error:
            summary = RunSummary("source-failure", str(error))
        log.info("controller run outcome=%s %s", summary.outcome, summary.message)
        if self.observer is not None:
            self.observer.observe(summary, seconds=time.monotonic() - started, now=now)
        return summary

    async def _run(self, *, now: float, dry_run: bool, force: bool) -> RunSummary:
        settings = self.settings
        observation = await observe_sources(
            settings=settings,
            metrics_source=self.metrics_source,
            call_edges=self.call_edges,
            now=now,
            namespaces=self.namespaces,
        )
        observed = scopes.observed_dependencies(observation.edges, settings)
        if self.namespaces is not None:
            observed = {pair for pair in observed if pair[0].namespace in self.namespaces}
        stored, stored_infos, last_edges = await self.store.load(scope=self._scope())
        refusal = plans.volume_refusal(
            edges=len(observed), last_edges=last_edges, min_ratio=settings.min_edges_ratio
        )
        if refusal:
            raise GuardRefused(refusal)
        merge = scopes.merge_ttl(stored, observed, now=now, ttl_seconds=parse_duration(settings.ttl))
        infos = {**stored_infos, **scopes.selectors_from_edges(observation.edges)}
        services = dict(observation.services)
        if self.inventory is not None:
            infos.update(await asyncio.to_thread(self.inventory.workloads))
            listed = await asyncio.to_thread(self.inventory.services, settings.cluster_domain)
            for host, info in listed.items():
                # Kubernetes knows the ports; telemetry knows how many workloads answer behind them.
                seen = services.get(host)
                services[host] = replace(info, endpoints=seen.endpoints) if seen else info
        active = self._in_scope(merge.active)
        specs, skipped = scopes.compute_sidecars(active, infos, settings)
        desired = [scopes.to_manifest(spec, settings) for spec in specs]
        current = [m for m in await asyncio.to_thread(self.sink.observe) if self._namespace_in_scope(m)]
        plan = plans.make_plan(
            desired, current, owner_label=settings.owner_label, owner_value=settings.owner_value
        )
        refusal = plans.removal_refusal(plan, max_percent=settings.max_removed_percent, force=force)
        if refusal:
            raise GuardRefused(refusal)
        if plan.to_write or plan.to_delete:
            await asyncio.to_thread(self.sink.apply, plan.to_write, plan.to_delete, dry_run=dry_run)
        workload_count = len(set(active) | {ref for ref, info in infos.items() if info.from_kubernetes})
        estimate = shrink.estimate(specs, services, workloads=workload_count)
        if not dry_run:
            await self.store.save(
                upserts=merge.upserts,
                expired=merge.expired,
                infos=[
                    infos[ref] for ref in sorted(active) if ref in infos and not infos[ref].from_kubernetes
                ],
                now=now,
                edges=len(observed),
                written=len(plan.to_write),
                scope=self._scope(),
            )
        written, deleted = len(plan.to_write), len(plan.to_delete)
        outcome: Literal["wrote", "nothing-to-write", "dry-run"] = (
            "dry-run" if dry_run else "wrote" if written or deleted else "nothing-to-write"
        )
        return RunSummary(
            outcome,
            f"{written} written, {deleted} deleted, {len(plan.changes) - written - deleted} kept",
            edges=len(observed),
            workloads=len(active),
            changes=plan.changes,
            written=written,
            deleted=deleted,
            unchanged=sum(1 for change in plan.changes if change.action == "unchanged"),
            shrink=estimate,
            skipped_rows=observation.stats.skipped,
            extra={"no_sidecar": [f"{ref}: {why}" for ref, why in skipped]},
        )

    def _scope(self) -> str:
        wanted = self.namespaces if self.namespaces is not None else self.settings.namespaces
        return ",".join(sorted(set(wanted))) or "*"

    def _in_scope(self, active: dict[WorkloadRef, set[str]]) -> dict[WorkloadRef, set[str]]:
        return {ref: hosts for ref, hosts in active.items() if self._namespace_allowed(ref.namespace)}

    def _namespace_allowed(self, namespace: str) -> bool:
        wanted = self.namespaces if self.namespaces is not None else self.settings.namespaces
        if namespace in self.settings.excluded_namespaces:
            return False
        return not wanted or namespace in wanted

    def _namespace_in_scope(self, manifest: Manifest) -> bool:
        return self._namespace_allowed(str((manifest.get("metadata") or {}).get("namespace", "")))


async def loop(
    reconciler: Reconciler,
    *,
    interval: float,
    stop: asyncio.Event,
    clock: Callable[[], float] = time.time,
    force: bool = False,
    dry_run: bool = False,
) -> int:
    """Run forever (until `stop`): every interval, the same logic as run-once. Returns the run count."""
    count = 0
    while not stop.is_set():
        await reconciler.run_once(now=clock(), force=force, dry_run=dry_run)
        count += 1
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=interval)
    return count
