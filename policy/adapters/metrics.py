"""The policy card's Prometheus metrics, registered on the server's registry (never the global one)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["PolicyMetrics"]

_LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)


class PolicyMetrics:
    def __init__(self, registry: CollectorRegistry | None) -> None:
        registry = registry if registry is not None else CollectorRegistry()
        self.checks = Counter(
            "remixer_policy_checks",
            "Check decisions by decision and deciding rule.",
            ["decision", "rule"],
            registry=registry,
        )
        self.dry_run = Counter(
            "remixer_policy_dry_run_matches",
            "Dry-run rules that matched (not enforced).",
            ["rule"],
            registry=registry,
        )
        self.latency = Histogram(
            "remixer_policy_check_duration_seconds",
            "Time to decide one Check, from receipt to response.",
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.cache_hits = Counter("remixer_policy_cache_hits", "Decision cache hits.", registry=registry)
        self.cache_misses = Counter(
            "remixer_policy_cache_misses", "Decision cache misses.", registry=registry
        )
        self.quota_rejections = Counter(
            "remixer_policy_quota_rejections",
            "Requests over a limit (shadow limits included).",
            ["limit", "shadow"],
            registry=registry,
        )
        self.redis_errors = Counter(
            "remixer_policy_redis_errors",
            "Quota calls that failed on Redis, by the fallback applied.",
            ["fallback"],
            registry=registry,
        )
        self.odd_inputs = Counter(
            "remixer_policy_odd_inputs",
            "Malformed or unusual Check inputs (still decided).",
            ["kind"],
            registry=registry,
        )
        self.reload_errors = Counter(
            "remixer_policy_reload_errors",
            "Policy loads refused or failed (the last good snapshot stays).",
            ["source"],
            registry=registry,
        )
        self.decision_log_dropped = Counter(
            "remixer_policy_decision_log_dropped",
            "Decision records dropped (buffer full or sink refused).",
            registry=registry,
        )
        self.revision = Gauge("remixer_policy_revision", "Policy revision being enforced.", registry=registry)
        self.rules = Gauge("remixer_policy_rules", "Rules in the enforced snapshot.", registry=registry)
        self.staleness = Gauge(
            "remixer_policy_store_staleness_seconds",
            "Seconds since the policy store was last read successfully.",
            registry=registry,
        )
        self._check_children: dict[tuple[str, str], Any] = {}

    def watch_staleness(self, staleness: Callable[[], float]) -> None:
        self.staleness.set_function(staleness)

    def count_check(self, decision: str, rule: str) -> None:
        child = self._check_children.get((decision, rule))
        if child is None:
            child = self.checks.labels(decision=decision, rule=rule)
            if len(self._check_children) < 10_000:
                self._check_children[(decision, rule)] = child
        child.inc()
