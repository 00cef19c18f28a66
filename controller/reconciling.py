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
from controller.core import meshconfig, plans, promql, scopes, shrink
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
        forget_workloads_before: float | None = None,
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
    # Each scoped workload's hosts after the last run: `loop` compares new call edges with them.
    scoped: dict[WorkloadRef, set[str]] = field(default_factory=dict)
    # (workload, host) pairs the loop already started a run for, or that a run already saw.
    noticed: set[tuple[WorkloadRef, str]] = field(default_factory=set)

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
        ttl = parse_duration(settings.ttl)
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
        merge = scopes.merge_ttl(stored, observed, now=now, ttl_seconds=ttl)
        seen_infos = scopes.selectors_from_telemetry(observation.edges, now=now)
        # Workloads seen within the TTL (callers and callees); older selectors of another form are not reused.
        remembered = {
            ref: info
            for ref, info in stored_infos.items()
            if now - info.last_seen <= ttl and scopes.is_injector_selector(info.selector)
        }
        infos = {**remembered, **seen_infos}
        notes: list[str] = []
        provider_hosts: set[str] = set()
        services = dict(observation.services)
        inventoried: set[WorkloadRef] = set()
        if self.inventory is not None:
            from_cluster = await asyncio.to_thread(self.inventory.workloads)
            inventoried = set(from_cluster)
            infos.update(from_cluster)
            listed = await asyncio.to_thread(self.inventory.services, settings.cluster_domain)
            for host, info in listed.items():
                # Kubernetes knows the ports; telemetry knows how many workloads answer behind them.
                seen = services.get(host)
                services[host] = replace(info, endpoints=seen.endpoints) if seen else info
            mesh = await asyncio.to_thread(self.inventory.mesh_config)
            if mesh is None:
                notes.append(
                    f"mesh config {settings.control_plane_namespace}/{settings.mesh_config_map} not "
                    "readable: extension providers outside the pinned namespaces are not pinned"
                )
            else:
                provider_hosts = meshconfig.provider_hosts(mesh, settings.cluster_domain)
        infos = scopes.without_ambiguity(infos)
        required = scopes.required_hosts(settings, provider_hosts)
        active = self._in_scope(merge.active)
        # Leaves: seen (now or within the TTL) but calling nothing still get a scope.
        for ref in scopes.observed_workloads(observation.edges, settings) | set(remembered):
            if self.allows_namespace(ref.namespace):
                active.setdefault(ref, set())
        specs, skipped = scopes.compute_sidecars(active, infos, settings, required=required)
        desired = [scopes.to_manifest(spec, settings, required=required) for spec in specs]
        current = [m for m in await asyncio.to_thread(self.sink.observe) if self._namespace_in_scope(m)]
        plan = plans.make_plan(
            desired,
            current,
            owner_label=settings.owner_label,
            owner_value=settings.owner_value,
            manager=settings.field_manager,
        )
        refusal = plans.removal_refusal(
            plan,
            max_percent=settings.max_removed_percent,
            max_percent_per_workload=settings.max_removed_percent_per_workload,
            force=force,
        )
        if refusal:
            raise GuardRefused(refusal)
        failures: list[structs.WriteFailure] = []
        if plan.to_write or plan.to_delete:
            failures = await asyncio.to_thread(
                self.sink.apply, plan.to_write, plan.to_delete, dry_run=dry_run
            )
        changes = _with_failures(plan.changes, failures)
        estimate = shrink.estimate(specs, services, workloads=len(set(active) | inventoried))
        if not dry_run:
            await self.store.save(
                upserts=merge.upserts,
                expired=merge.expired,
                infos=[seen_infos[ref] for ref in sorted(seen_infos) if ref in active],
                now=now,
                edges=len(observed),
                written=len(plan.to_write),
                scope=self._scope(),
                forget_workloads_before=now - ttl,
            )
        failed = {(f.namespace, f.name) for f in failures}
        written = sum(
            1 for m in plan.to_write if (m["metadata"]["namespace"], m["metadata"]["name"]) not in failed
        )
        deleted = sum(1 for key in plan.to_delete if key not in failed)
        outcome: Literal["wrote", "nothing-to-write", "dry-run"] = (
            "dry-run" if dry_run else "wrote" if written or deleted else "nothing-to-write"
        )
        self.scoped = {
            ref: set(spec.hosts) for spec in specs if spec.selector is not None for ref in _refs(spec)
        }
        self.noticed |= observed
        return RunSummary(
            outcome,
            f"{written} written, {deleted} deleted, {len(failures)} failed, "
            f"{sum(1 for c in changes if c.action == 'unchanged')} kept",
            edges=len(observed),
            workloads=len(active),
            changes=changes,
            written=written,
            deleted=deleted,
            failed=len(failures),
            unchanged=sum(1 for change in changes if change.action == "unchanged"),
            shrink=estimate,
            skipped_rows=observation.stats.skipped,
            extra={"no_sidecar": [f"{ref}: {why}" for ref, why in skipped], "notes": notes},
        )

    def _scope(self) -> str:
        wanted = self.namespaces if self.namespaces is not None else self.settings.namespaces
        return ",".join(sorted(set(wanted))) or "*"

    def _in_scope(self, active: dict[WorkloadRef, set[str]]) -> dict[WorkloadRef, set[str]]:
        return {ref: hosts for ref, hosts in active.items() if self.allows_namespace(ref.namespace)}

    def allows_namespace(self, namespace: str) -> bool:
        wanted = self.namespaces if self.namespaces is not None else self.settings.namespaces
        return scopes.namespace_allowed(namespace, self.settings, wanted)

    def _namespace_in_scope(self, manifest: Manifest) -> bool:
        return self.allows_namespace(str((manifest.get("metadata") or {}).get("namespace", "")))


def _refs(spec: structs.SidecarSpec) -> list[WorkloadRef]:
    return [WorkloadRef(spec.namespace, name) for name in spec.workloads]


def _with_failures(
    changes: tuple[structs.SidecarChange, ...], failures: list[structs.WriteFailure]
) -> tuple[structs.SidecarChange, ...]:
    reasons = {(f.namespace, f.name): f.reason for f in failures}
    return tuple(
        replace(change, action="failed", reason=reasons[(change.namespace, change.name)])
        if (change.namespace, change.name) in reasons
        else change
        for change in changes
    )


# A call-edge row is written a flush (and an Envoy access-log flush) after the call it records.
EDGE_POLL_LOOKBACK = 60.0
RETRY_FIRST = 5.0


async def unscoped_calls(reconciler: Reconciler, *, since: float) -> list[tuple[WorkloadRef, str]]:
    """Calls first seen since `since` (telemetry's call-edge table) to a host not in the caller's scope and
    not looked at yet: a first call through PassthroughCluster, or one a stricter mode refused."""
    if reconciler.call_edges is None:
        return []
    rows = await reconciler.call_edges.read(since=since, new_only=True)
    settings = reconciler.settings
    fresh = []
    found = edge_rows.edges_from_call_edge_rows(
        rows,
        cluster_domain=settings.cluster_domain,
        stats=edge_rows.RowStats(),
        known_namespaces={row.source_namespace for row in rows},
    )
    for pair in sorted(scopes.observed_dependencies(found, settings)):
        workload, host = pair
        if (
            reconciler.allows_namespace(workload.namespace)
            and host not in reconciler.scoped.get(workload, ())
            and pair not in reconciler.noticed
        ):
            reconciler.noticed.add(pair)
            fresh.append(pair)
    return fresh


async def _run_safely(reconciler: Reconciler, *, now: float, force: bool, dry_run: bool) -> RunSummary:
    """The loop never dies of one bad run: an unexpected error is logged and counted like a failed source."""
    try:
        return await reconciler.run_once(now=now, force=force, dry_run=dry_run)
    except Exception as error:
        log.exception("controller run failed unexpectedly")
        summary = RunSummary("source-failure", f"unexpected error: {type(error).__name__}")
        if reconciler.observer is not None:
            reconciler.observer.observe(summary, seconds=0.0, now=now)
        return summary


async def loop(
    reconciler: Reconciler,
    *,
    interval: float,
    stop: asyncio.Event,
    clock: Callable[[], float] = time.time,
    force: bool = False,
    dry_run: bool = False,
    poll: float | None = None,
    on_edge_trigger: Callable[[list[tuple[WorkloadRef, str]]], None] | None = None,
) -> int:
    """Run until `stop`: every `interval`, and at once when the call-edge table (polled every `poll`
    seconds) shows a call to a host its caller's scope lacks. A failed source is retried sooner
    (5 s, doubling, at most `interval`). Returns the run count."""
    poll = poll if poll is not None else reconciler.settings.edge_poll_seconds
    count = 0
    failures = 0
    while not stop.is_set():
        started = clock()
        summary = await _run_safely(reconciler, now=started, force=force, dry_run=dry_run)
        count += 1
        failures = failures + 1 if summary.outcome == "source-failure" else 0
        wait = min(interval, RETRY_FIRST * 2 ** (failures - 1)) if failures else interval
        deadline = time.monotonic() + wait
        since = started - EDGE_POLL_LOOKBACK
        while not stop.is_set() and (remaining := deadline - time.monotonic()) > 0:
            step = min(poll, remaining) if reconciler.call_edges is not None else remaining
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=step)
            if stop.is_set() or reconciler.call_edges is None:
                continue
            polled = clock()
            try:
                fresh = await unscoped_calls(reconciler, since=since)
            except ControllerError as error:
                log.warning("call-edge poll failed: %s", error)
                continue
            since = polled - EDGE_POLL_LOOKBACK
            if fresh:
                log.info("new call edges outside scopes, running now: %s", fresh[:5])
                if on_edge_trigger is not None:
                    on_edge_trigger(fresh)
                break
    return count
