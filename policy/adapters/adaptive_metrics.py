"""Metrics of adaptive limits, per rule: setpoints, readings, P/I/D terms, limits, and what each caller
had admitted or rejected. Caller labels are only the callers a rule names, or "unknown": traffic
cannot create series."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Gauge
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from policy.adapters.adaptive_state import AdaptiveState
from policy.core import pid
from policy.core.adaptive import AdaptiveDoc

__all__ = ["AdaptiveMetrics"]

_MODES = ("track", "hold", "decay")


class _Counts(Collector):
    def __init__(self, counts: Any) -> None:
        self._counts = counts  # () -> {rule: {caller: (admitted, rejected)}}

    def collect(self) -> Any:
        family = CounterMetricFamily(
            "remixer_adaptive_requests",
            "Requests an adaptive limit admitted or rejected (dry run: would have), by caller.",
            labels=["rule", "caller", "decision"],
        )
        for rule, callers in self._counts().items():
            for caller, (admitted, rejected) in callers.items():
                label = caller or "unknown"
                family.add_metric([rule, label, "admitted"], admitted)
                family.add_metric([rule, label, "rejected"], rejected)
        yield family


class AdaptiveMetrics:
    def __init__(self, registry: CollectorRegistry, counts: Any) -> None:
        registry.register(_Counts(counts))
        self.setpoint = Gauge(
            "remixer_adaptive_setpoint", "Setpoint of each signal.", ["rule", "signal"], registry=registry
        )
        self.signal = Gauge(
            "remixer_adaptive_signal",
            "Last reading of each signal (NaN: no fresh data).",
            ["rule", "signal"],
            registry=registry,
        )
        self.measured = Gauge(
            "remixer_adaptive_measured_ratio",
            "The steering signal: the largest reading / setpoint, clipped to [0, 2].",
            ["rule"],
            registry=registry,
        )
        self.term = Gauge(
            "remixer_adaptive_term", "PID terms (log-limit units).", ["rule", "term"], registry=registry
        )
        self.limit = Gauge(
            "remixer_adaptive_limit",
            "Limit set by the controller, requests per second.",
            ["rule"],
            registry=registry,
        )
        self.caller_limit = Gauge(
            "remixer_adaptive_caller_limit",
            "Each known caller's part of the limit (unknown: what every other caller shares).",
            ["rule", "caller"],
            registry=registry,
        )
        self.bounds = Gauge(
            "remixer_adaptive_bound",
            "min_rate and max_rate of each rule.",
            ["rule", "bound"],
            registry=registry,
        )
        self.mode = Gauge(
            "remixer_adaptive_mode",
            "1 for the controller's mode (track, hold, decay).",
            ["rule", "mode"],
            registry=registry,
        )
        self.dry_run = Gauge(
            "remixer_adaptive_dry_run", "1 when the rule only computes.", ["rule"], registry=registry
        )
        self.leader = Gauge(
            "remixer_adaptive_leader", "1 while this replica computes the limits.", registry=registry
        )

    def leading(self, leader: bool) -> None:
        self.leader.set(1 if leader else 0)

    def tick(self, rule: AdaptiveDoc, step: pid.Step, readings: Any, state: AdaptiveState) -> None:
        name = rule.name
        for s in rule.signals:
            self.setpoint.labels(name, s.signal).set(s.setpoint)
            value = readings.get(s.signal)
            self.signal.labels(name, s.signal).set(float("nan") if value is None else value)
        self.measured.labels(name).set(float("nan") if step.measured is None else step.measured)
        for term, value in (("p", step.p), ("i", step.i), ("d", step.d)):
            self.term.labels(name, term).set(value)
        self.limit.labels(name).set(state.limit)
        for caller, value in state.callers.items():
            self.caller_limit.labels(name, caller).set(value)
        self.caller_limit.labels(name, "unknown").set(state.unknown)
        self.bounds.labels(name, "min").set(rule.min_rate)
        self.bounds.labels(name, "max").set(rule.max_rate)
        for mode in _MODES:
            self.mode.labels(name, mode).set(1 if mode == step.mode else 0)
        self.dry_run.labels(name).set(1 if rule.dry_run else 0)
