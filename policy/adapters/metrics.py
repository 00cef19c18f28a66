"""The policy card's Prometheus metrics, registered on the server's registry (never the global one)."""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

__all__ = ["PolicyMetrics"]

_LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)


class _HotPathCollector(Collector):
    """Per-Check counters kept as plain ints and exported at scrape time (client_python's custom
    collector pattern): a locked prometheus_client child per increment costs more than the rest of a
    cache hit."""

    def __init__(self) -> None:
        self.checks: dict[tuple[str, str], int] = {}
        self.cache_hits = 0
        self.cache_misses = 0
        self.latency_buckets = [0] * (len(_LATENCY_BUCKETS) + 1)
        self.latency_sum = 0.0

    def collect(self) -> Any:
        checks = CounterMetricFamily(
            "remixer_policy_checks", "Check decisions by decision and rule.", labels=["decision", "rule"]
        )
        for (decision, rule), count in list(self.checks.items()):
            checks.add_metric([decision, rule], count)
        yield checks
        yield CounterMetricFamily("remixer_policy_cache_hits", "Decision cache hits.", value=self.cache_hits)
        yield CounterMetricFamily(
            "remixer_policy_cache_misses", "Decision cache misses.", value=self.cache_misses
        )
        cumulative = 0
        buckets = []
        for bound, count in zip((*_LATENCY_BUCKETS, float("inf")), self.latency_buckets, strict=True):
            cumulative += count
            buckets.append(("+Inf" if bound == float("inf") else repr(bound), cumulative))
        yield HistogramMetricFamily(
            "remixer_policy_check_duration_seconds",
            "Time to decide one Check, from receipt to response.",
            buckets=buckets,
            sum_value=self.latency_sum,
        )


class PolicyMetrics:
    def __init__(self, registry: CollectorRegistry | None) -> None:
        registry = registry if registry is not None else CollectorRegistry()
        self.hot = _HotPathCollector()
        registry.register(self.hot)
        self.dry_run = Counter(
            "remixer_policy_dry_run_matches",
            "Dry-run rules that matched (not enforced).",
            ["rule"],
            registry=registry,
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

    def watch_staleness(self, staleness: Callable[[], float]) -> None:
        self.staleness.set_function(staleness)

    def count_check(self, decision: str, rule: str, latency: float) -> None:
        hot = self.hot
        key = (decision, rule)
        hot.checks[key] = hot.checks.get(key, 0) + 1
        hot.latency_buckets[bisect_left(_LATENCY_BUCKETS, latency)] += 1
        hot.latency_sum += latency
