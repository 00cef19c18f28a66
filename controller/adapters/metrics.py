"""The controller's own metrics (remixer_controller_*), on a given registry, never the global one."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from controller.structs import RunSummary


class ControllerMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.runs = Counter(
            "remixer_controller_runs_total", "Controller runs by outcome.", ["outcome"], registry=registry
        )
        self.written = Counter(
            "remixer_controller_sidecars_written_total", "Sidecars created or updated.", registry=registry
        )
        self.deleted = Counter(
            "remixer_controller_sidecars_deleted_total", "Sidecars pruned.", registry=registry
        )
        self.failed = Counter(
            "remixer_controller_sidecars_failed_total",
            "Sidecars the sink could not write or delete (skipped; the others were written).",
            registry=registry,
        )
        self.edge_triggers = Counter(
            "remixer_controller_edge_triggered_runs_total",
            "Loop runs started early by a call edge to a host not yet in its caller's scope.",
            registry=registry,
        )
        self.hosts_added = Counter(
            "remixer_controller_hosts_added_total", "Egress hosts added to Sidecar scopes.", registry=registry
        )
        self.hosts_removed = Counter(
            "remixer_controller_hosts_removed_total",
            "Egress hosts removed from Sidecar scopes (unseen for the whole TTL).",
            registry=registry,
        )
        self.edges = Gauge(
            "remixer_controller_call_edges", "Call edges seen by the last run.", registry=registry
        )
        self.skipped_rows = Gauge(
            "remixer_controller_skipped_rows",
            "Telemetry rows skipped as bad by the last run.",
            registry=registry,
        )
        self.clusters = Gauge(
            "remixer_controller_xds_clusters",
            "Estimated outbound clusters pushed to all proxies, before and after scoping.",
            ["scope"],
            registry=registry,
        )
        self.endpoints = Gauge(
            "remixer_controller_xds_endpoints",
            "Estimated endpoints pushed to all proxies, before and after scoping.",
            ["scope"],
            registry=registry,
        )
        self.last_success = Gauge(
            "remixer_controller_last_success_timestamp_seconds",
            "When a run last ended without error.",
            registry=registry,
        )
        self.duration = Histogram(
            "remixer_controller_run_duration_seconds",
            "Wall time of one run.",
            buckets=(0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300),
            registry=registry,
        )

    def observe(self, summary: RunSummary, *, seconds: float, now: float) -> None:
        self.runs.labels(summary.outcome).inc()
        self.duration.observe(seconds)
        if summary.outcome in ("refused", "source-failure"):
            return
        self.last_success.set(now)
        self.written.inc(summary.written)
        self.failed.inc(summary.failed)
        self.deleted.inc(summary.deleted)
        if summary.outcome == "wrote":
            self.hosts_added.inc(sum(len(c.added) for c in summary.changes))
            self.hosts_removed.inc(sum(len(c.removed) for c in summary.changes))
        self.edges.set(summary.edges)
        self.skipped_rows.set(summary.skipped_rows)
        if summary.shrink is not None:
            self.clusters.labels("before").set(summary.shrink.clusters_before)
            self.clusters.labels("after").set(summary.shrink.clusters_after)
            self.endpoints.labels("before").set(summary.shrink.endpoints_before)
            self.endpoints.labels("after").set(summary.shrink.endpoints_after)
