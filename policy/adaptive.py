"""Adaptive limits at run time: what every replica enforces (`AdaptiveTable`, consulted on the quota
path) and the controller loop (`AdaptiveController`) that the leader runs.

Each tick of a rule the leader reads the rule's signals (a `SignalSource`: the telemetry aggregates in
process, or Prometheus), advances its PID, shares the new limit among callers by priority and demand,
writes it to the state table (audited when the enforced limit changes) and enforces it. The other
replicas read the state table each tick and enforce what it holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from policy.adapters.adaptive_state import AdaptiveState, AdaptiveStateStore, Leadership
from policy.adapters.base import BackendUnavailable
from policy.core import pid
from policy.core.adaptive import AdaptiveDoc, limit_name
from policy.core.indexing import CompiledLimit

__all__ = ["AdaptiveController", "AdaptiveTable", "Readings", "SignalSource", "control_of"]

log = logging.getLogger("remixer.adaptive")

# signal name -> its value over the last window (None: no fresh data)
Readings = Mapping[str, float | None]
UNKNOWN_CALLER = ""


class SignalSource(Protocol):
    async def read(self, rule: AdaptiveDoc, window: float) -> Readings:
        """The rule's signals over about the last `window` seconds. Raises nothing: stale is None."""
        ...


@dataclass(slots=True)
class _Entry:
    """One rule's enforced limits: a token bucket by quota key, and what its callers did."""

    callers: dict[str, tuple[int, float]]  # full quota key of a known caller -> (depth, period)
    unknown: tuple[int, float]
    unknown_key: str
    known: dict[str, str]  # full quota key -> caller value
    # caller value ("" for every unknown caller) -> [admitted, rejected] since the counters began
    counts: dict[str, list[int]] = field(default_factory=dict)


class AdaptiveTable:
    """Consulted on the quota path: a dict lookup per quota taken, nothing when no rule is adaptive."""

    def __init__(self) -> None:
        self._entries: dict[str, _Entry] = {}

    @property
    def active(self) -> bool:
        return bool(self._entries)

    def resolve(self, limit: CompiledLimit, key: str) -> tuple[str, int, float]:
        """Counter key, requests and period for one take (every unknown caller shares one counter)."""
        entry = self._entries.get(limit.name)
        if entry is None:
            return key, limit.requests, limit.period
        bucket = entry.callers.get(key)
        if bucket is None:
            return entry.unknown_key, *entry.unknown
        return key, *bucket

    def observe(self, limit: CompiledLimit, key: str, admitted: bool) -> None:
        entry = self._entries.get(limit.name)
        if entry is None:
            return
        caller = entry.known.get(key, UNKNOWN_CALLER)
        counts = entry.counts.get(caller)
        if counts is None:
            counts = entry.counts[caller] = [0, 0]
        counts[0 if admitted else 1] += 1

    def apply(self, rule: AdaptiveDoc, callers: Mapping[str, float], unknown: float) -> None:
        name = limit_name(rule.name)
        known = {f"{name}|{c.caller}": c.caller for c in rule.callers}
        old = self._entries.get(name)
        self._entries[name] = _Entry(
            callers={key: bucket(callers.get(caller, 1.0), rule.burst) for key, caller in known.items()},
            unknown=bucket(unknown, rule.burst),
            unknown_key=name + "#unknown",
            known=known,
            counts=old.counts if old is not None else {},
        )

    def counts(self, rule: str) -> dict[str, tuple[int, int]]:
        """caller -> (admitted, rejected) totals; "" stands for every unknown caller."""
        entry = self._entries.get(limit_name(rule))
        if entry is None:
            return {}
        return {caller: (c[0], c[1]) for caller, c in entry.counts.items()}

    def retain(self, rules: set[str]) -> None:
        for name in [n for n in self._entries if n not in {limit_name(r) for r in rules}]:
            del self._entries[name]


def bucket(rate: float, burst: float) -> tuple[int, float]:
    """A token bucket admitting `rate` per second, `burst` seconds deep: (depth, period).

    The depth is whole requests (at least one); the period follows from it, so the rate stays exact
    however small: 0.5/s is one request per 2 s, 1000/s with 0.1 s of burst is 100 per 0.1 s."""
    rate = rate if math.isfinite(rate) and rate > 0 else 1.0
    depth = max(1, math.ceil(rate * burst))
    return depth, depth / rate


def control_of(rule: AdaptiveDoc) -> pid.Control:
    g = rule.gains
    return pid.Control(
        min_rate=rule.min_rate,
        max_rate=rule.max_rate,
        gains=pid.Gains(g.kp, g.ki, g.kd),
        max_step=rule.max_step,
        signal_timeout=rule.signal_timeout,
        headroom=rule.headroom,
    )


class AdaptiveObserver(Protocol):
    """Where each tick is reported (metrics)."""

    def tick(self, rule: AdaptiveDoc, step: pid.Step, readings: Readings, state: AdaptiveState) -> None: ...

    def leading(self, leader: bool) -> None: ...


@dataclass(slots=True)
class _RuleRun:
    pid_state: pid.PidState
    next_tick: float
    counts: dict[str, tuple[int, int]]
    counted_at: float
    enforced: int  # the total limit last enforced, rounded: a change of it is audited


class AdaptiveController:
    def __init__(
        self,
        *,
        rules: Callable[[], list[AdaptiveDoc]],
        table: AdaptiveTable,
        states: AdaptiveStateStore,
        leadership: Leadership,
        source: SignalSource,
        observer: AdaptiveObserver,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        resolution: float = 0.1,
    ) -> None:
        self._rules = rules
        self.table = table
        self._states = states
        self._leadership = leadership
        self._source = source
        self._observer = observer
        self._clock = clock
        self._wall = wall
        self._resolution = resolution
        self._runs: dict[str, _RuleRun] = {}
        self._task: asyncio.Task[None] | None = None
        self.leader = False
        self.last: dict[str, AdaptiveState] = {}

    async def tick(self) -> None:
        rules = {r.name: r for r in self._rules()}
        self.table.retain(set(rules))
        for gone in [n for n in self._runs if n not in rules]:
            del self._runs[gone]
        leader = await self._leadership.hold()
        if leader != self.leader:
            log.info("adaptive limits: this replica %s", "leads" if leader else "follows")
            self.leader = leader
            self._observer.leading(leader)
            if leader:
                await self._take_over(rules)
        if leader:
            for rule in rules.values():
                await self._step(rule)
        else:
            await self._follow(rules)

    async def _take_over(self, rules: Mapping[str, AdaptiveDoc]) -> None:
        """Start from what the previous leader enforced, so a new leader does not jump."""
        try:
            stored = await self._states.read()
            await self._states.forget(set(rules))
        except BackendUnavailable as exc:
            log.warning("adaptive limits: previous state unreadable, starting at max_rate: %s", exc)
            return
        now = self._clock()
        for name, state in stored.items():
            rule = rules.get(name)
            if rule is None:
                continue
            control = control_of(rule)
            limit = min(max(state.limit, control.min_rate), control.max_rate)
            self._runs[name] = _RuleRun(
                pid.PidState(limit, math.log(limit / control.max_rate), None, now, now),
                now,
                self.table.counts(name),
                now,
                round(limit),
            )

    async def _step(self, rule: AdaptiveDoc) -> None:
        now = self._clock()
        control = control_of(rule)
        run = self._runs.get(rule.name)
        if run is None:
            run = self._runs[rule.name] = _RuleRun(
                pid.start(control, now), now, self.table.counts(rule.name), now, round(control.max_rate)
            )
            self.table.apply(rule, {c.caller: control.max_rate for c in rule.callers}, control.max_rate)
        if now < run.next_tick:
            return
        run.next_tick = now + rule.interval
        readings = await self._source.read(rule, rule.interval)
        setpoints: dict[str, float] = {s.signal: s.setpoint for s in rule.signals}
        measured = pid.normalised(readings, setpoints)
        counts = self.table.counts(rule.name)
        elapsed = max(now - run.counted_at, 1e-3)
        # Since the last tick: what each caller asked for (admitted or not).
        before = run.counts
        demand = {c: (a + r - sum(before.get(c, (0, 0)))) / elapsed for c, (a, r) in counts.items()}
        run.counts, run.counted_at = counts, now
        offered = sum(demand.values())
        step = pid.pid_step(run.pid_state, measured, control, now, offered_rate=offered)
        run.pid_state = step.state
        shares = [pid.CallerShare(c.caller, c.priority, c.share) for c in rule.callers]
        callers, unknown = pid.allocate(step.state.limit, shares, demand)
        state = AdaptiveState(
            name=rule.name,
            limit=step.state.limit,
            callers=callers,
            unknown=unknown,
            mode=step.mode,
            step={
                "readings": {k: v for k, v in readings.items() if v is not None},
                "measured": step.measured,
                "error": round(step.error, 4),
                "p": round(step.p, 4),
                "i": round(step.i, 4),
                "d": round(step.d, 4),
                "offered_rps": round(offered, 2),
            },
            leader=self._leadership.identity,
            updated_at=self._wall(),
        )
        self.table.apply(rule, callers, unknown)
        self.last[rule.name] = state
        changed = round(state.limit) != run.enforced
        run.enforced = round(state.limit)
        self._observer.tick(rule, step, readings, state)
        try:
            await self._states.write(state, changed=changed)
        except BackendUnavailable as exc:
            # Enforced here regardless; the followers keep the last stored limits until the store is back.
            log.warning("adaptive limit %r not stored: %s", rule.name, exc)

    async def _follow(self, rules: Mapping[str, AdaptiveDoc]) -> None:
        self._runs.clear()
        try:
            stored = await self._states.read()
        except BackendUnavailable as exc:
            log.warning("adaptive limits: state unreadable, keeping the last limits: %s", exc)
            return
        for name, state in stored.items():
            rule = rules.get(name)
            if rule is not None:
                self.table.apply(rule, state.callers, state.unknown)
                self.last[name] = state

    async def _loop(self) -> None:
        while True:
            try:
                await self.tick()
            except Exception:
                log.exception("adaptive limits: tick failed")
            await asyncio.sleep(self._resolution)

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="adaptive-limits")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self._leadership.release()
