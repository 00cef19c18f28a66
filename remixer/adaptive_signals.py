"""Where adaptive limits read their signals: telemetry's aggregates in the same process, or Prometheus.

Both read the same Istio-standard series (istio_requests_total, istio_request_duration_milliseconds)
for the rule's target, as one reporter sees it, leaving out requests ext_authz itself denied
(response_flags UAEX: their latency and status say nothing about the destination's health).
Lives in the composition root: it is the one place that may know both the policy and the telemetry card.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from controller.adapters.prometheus import PrometheusSource
from controller.core.promql import matcher
from controller.errors import SourceUnavailable
from policy.adaptive import Readings
from policy.core import pid
from policy.core.adaptive import AdaptiveDoc
from telemetry.core.aggregates import BUCKET_COUNT, Aggregates
from telemetry.structs import ENVOY_BUCKETS, LABEL_INDEX, LABEL_NAMES

__all__ = ["PrometheusSignals", "TelemetrySignals", "readings", "signal_queries"]

_EXT_AUTHZ_DENIED = "UAEX"
_REPORTER = LABEL_INDEX["reporter"]
_SERVICE = LABEL_INDEX["destination_service"]
_WORKLOAD = LABEL_INDEX["destination_workload"]
_CODE = LABEL_INDEX["response_code"]
_FLAGS = LABEL_INDEX["response_flags"]
_PATH = len(LABEL_NAMES)  # request_path follows the standard labels when enabled


@dataclass(slots=True)
class Totals:
    """Cumulative totals over a rule's series; two of them a window apart give its signals."""

    count: int = 0
    errors: int = 0
    duration_sum: float = 0.0
    duration: list[int] = field(default_factory=lambda: [0] * BUCKET_COUNT)


def readings(rule: AdaptiveDoc, before: Totals, after: Totals, seconds: float) -> Readings:
    """The rule's signals over the window between two totals (None where there was no traffic)."""
    count = after.count - before.count
    if count <= 0 or seconds <= 0:
        return {s.signal: None for s in rule.signals}
    buckets = [a - b for a, b in zip(after.duration, before.duration, strict=True)]
    out: dict[str, float | None] = {}
    for s in rule.signals:
        if s.signal == "p99_latency_ms":
            out[s.signal] = pid.histogram_quantile(0.99, ENVOY_BUCKETS, buckets)
        elif s.signal == "p90_latency_ms":
            out[s.signal] = pid.histogram_quantile(0.90, ENVOY_BUCKETS, buckets)
        elif s.signal == "error_ratio":
            out[s.signal] = (after.errors - before.errors) / count
        else:  # concurrency, by Little's law: arrival rate x mean latency = total latency / window
            out[s.signal] = (after.duration_sum - before.duration_sum) / 1000.0 / seconds
    return out


class TelemetrySignals:
    """Reads the telemetry part's running totals in process (same event loop: consistent reads)."""

    def __init__(
        self, aggregates: Aggregates, *, reporter: str, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._aggregates = aggregates
        self._reporter = reporter
        self._last: dict[str, tuple[float, Totals]] = {}
        self._clock = clock

    def totals(self, rule: AdaptiveDoc) -> Totals:
        target = rule.target
        out = Totals()
        for labels, series in self._aggregates.http_items():
            if (
                labels[_SERVICE] != target.service
                or labels[_REPORTER] != self._reporter
                or _EXT_AUTHZ_DENIED in labels[_FLAGS]
                or (target.workload is not None and labels[_WORKLOAD] != target.workload)
                or (target.path is not None and (len(labels) <= _PATH or labels[_PATH] != target.path))
            ):
                continue
            out.count += series.count
            out.duration_sum += series.duration_sum
            if labels[_CODE].startswith("5"):
                out.errors += series.count
            for i, n in enumerate(series.duration):
                out.duration[i] += n
        return out

    async def read(self, rule: AdaptiveDoc, window: float) -> Readings:
        now = self._clock()
        current = self.totals(rule)
        previous = self._last.get(rule.name)
        self._last[rule.name] = (now, current)
        if previous is None:
            return {s.signal: None for s in rule.signals}
        return readings(rule, previous[1], current, now - previous[0])


def _selector(rule: AdaptiveDoc, reporter: str, more: Iterable[str] = ()) -> str:
    target = rule.target
    parts = [
        matcher("reporter", "=", reporter),
        matcher("destination_service", "=", target.service),
        matcher("response_flags", "!~", f".*{_EXT_AUTHZ_DENIED}.*"),
    ]
    if target.workload is not None:
        parts.append(matcher("destination_workload", "=", target.workload))
    if target.path is not None:
        parts.append(matcher("request_path", "=", target.path))
    return "{" + ",".join([*parts, *more]) + "}"


def signal_queries(rule: AdaptiveDoc, *, reporter: str, window: float) -> dict[str, str]:
    """One PromQL query per signal of the rule; every label value escaped."""
    w = f"[{max(1, round(window))}s]"
    sel = _selector(rule, reporter)
    queries: dict[str, str] = {}
    for s in rule.signals:
        if s.signal in ("p99_latency_ms", "p90_latency_ms"):
            q = "0.99" if s.signal == "p99_latency_ms" else "0.9"
            buckets = f"rate(istio_request_duration_milliseconds_bucket{sel}{w})"
            queries[s.signal] = f"histogram_quantile({q}, sum by (le) ({buckets}))"
        elif s.signal == "error_ratio":
            errors = _selector(rule, reporter, [matcher("response_code", "=~", "5..")])
            queries[s.signal] = (
                # No 5xx series at all is a ratio of 0, not an empty answer.
                f"(sum(rate(istio_requests_total{errors}{w})) or vector(0))"
                f" / sum(rate(istio_requests_total{sel}{w}))"
            )
        else:
            queries[s.signal] = f"sum(rate(istio_request_duration_milliseconds_sum{sel}{w})) / 1000"
    return queries


class PrometheusSignals:
    """Reads the signals from Prometheus when telemetry runs in another process (queries off the loop)."""

    def __init__(self, source: PrometheusSource, *, reporter: str, window: float) -> None:
        self._source = source
        self._reporter = reporter
        self._window = window

    async def read(self, rule: AdaptiveDoc, window: float) -> Readings:
        out: dict[str, float | None] = {}
        for signal, promql in signal_queries(rule, reporter=self._reporter, window=self._window).items():
            try:
                rows = await asyncio.to_thread(self._source.query, promql, at=time.time())
            except SourceUnavailable:
                rows = []
            values = [r.value for r in rows if math.isfinite(r.value)]
            out[signal] = values[0] if values else None
        return out

    def close(self) -> None:
        self._source.close()
