"""Adaptive limits, the arithmetic: a discrete PID per rule, the signals it reads, and how a total
limit is shared among callers. Pure and clock-free: the caller passes `now` and the measurements.

The controller works in normalised units so one set of default gains fits every signal: a signal is
read as `measured / setpoint` (1.0 = on target, 2.0 = twice the target), the error is
`1 - that` clipped to [-1, 1], and the output is the limit's logarithm relative to `max_rate`
(`limit = max_rate * exp(P + I + D)`): a gain means the same relative move at 20 and at 20,000
requests per second, and the limit can never reach zero.

Textbook discrete PID (Åström & Murray, "Feedback Systems", ch. 10):
- derivative on measurement, not on error: a setpoint change does not kick the output;
- anti-windup by back-calculation: after clamping and rate limiting, the integral is reset to what
  the applied output needs, so a saturated controller never accumulates error it must unwind;
- output clamping to [min_rate, max_rate] (and to `headroom` x the offered rate, so an idle
  destination does not let its limit climb to max and then admit a flood at once; offered, not
  admitted: what a priority caller is granted but does not use must not pull the limit down);
- a rate-of-change limit: one tick moves the limit by at most `max_step` of its current value.
With no fresh measurement the limit holds; past `signal_timeout` it decays to `max_rate` at the rate
limit (never towards zero: losing telemetry must not shut a service off).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Literal

__all__ = [
    "CallerShare",
    "Control",
    "Gains",
    "PidState",
    "Step",
    "allocate",
    "clamp_step",
    "histogram_quantile",
    "normalised",
    "pid_step",
    "start",
]

Mode = Literal["track", "hold", "decay"]


@dataclass(frozen=True, slots=True)
class Gains:
    # Tuned on the fluid queue of tests/policy/test_pid.py (a grid over kp, ki, kd and headroom):
    # latency within 1.5x the setpoint once settled at ~97% of capacity, under 2x while ramping.
    kp: float = 0.4  # log-limit per unit of normalised error
    ki: float = 0.1  # per second
    kd: float = 0.1  # seconds


@dataclass(frozen=True, slots=True)
class Control:
    min_rate: float
    max_rate: float
    gains: Gains = Gains()
    max_step: float = 0.2  # fraction of the current limit one tick may move
    signal_timeout: float = 30.0  # seconds without a fresh signal before the limit decays to max
    headroom: float = 1.5  # limit <= headroom x offered rate while healthy; 0 disables


@dataclass(frozen=True, slots=True)
class PidState:
    limit: float
    integral: float  # log(limit / max_rate) the integral term holds
    last_measurement: float | None  # normalised, for the derivative
    last_fresh: float  # when the last fresh measurement arrived
    last_tick: float


@dataclass(frozen=True, slots=True)
class Step:
    """One tick's outcome: the new state plus the terms, for metrics and the audit."""

    state: PidState
    mode: Mode
    measured: float | None  # normalised measurement, clipped to [0, 2] (None: no fresh signal)
    error: float
    p: float
    i: float
    d: float


def start(control: Control, now: float) -> PidState:
    """A new controller begins at max_rate: the least restrictive limit until the signal says otherwise."""
    return PidState(
        limit=control.max_rate, integral=0.0, last_measurement=None, last_fresh=now, last_tick=now
    )


def clamp_step(previous: float, wanted: float, control: Control, ceiling: float | None = None) -> float:
    """`wanted` within [min_rate, min(max_rate, ceiling)], then moved at most `max_step` from `previous`."""
    top = control.max_rate if ceiling is None else max(control.min_rate, min(control.max_rate, ceiling))
    target = min(max(wanted, control.min_rate), top)
    room = previous * control.max_step
    moved = min(max(target, previous - room), previous + room)
    # previous lies within the bounds, so this last clamp can only shorten the move.
    return min(max(moved, control.min_rate), control.max_rate)


def pid_step(
    state: PidState,
    measured: float | None,
    control: Control,
    now: float,
    *,
    offered_rate: float | None = None,
) -> Step:
    """Advance one tick. `measured`: the normalised signal (measured / setpoint), None when stale."""
    gains = control.gains
    dt = max(now - state.last_tick, 1e-3)
    if measured is None or not math.isfinite(measured):
        if now - state.last_fresh < control.signal_timeout:
            return Step(replace(state, last_tick=now), "hold", None, 0.0, 0.0, state.integral, 0.0)
        limit = clamp_step(state.limit, control.max_rate, control)
        decayed = PidState(limit, math.log(limit / control.max_rate), None, state.last_fresh, now)
        return Step(decayed, "decay", None, 0.0, 0.0, decayed.integral, 0.0)
    # Past twice the setpoint the error is saturated anyway; clipping the reading there too keeps
    # the derivative from amplifying noise on a huge value (a queue at its bound reads 40x).
    measured = min(max(0.0, measured), 2.0)
    error = 1.0 - measured
    p = gains.kp * error
    d = 0.0
    if state.last_measurement is not None:
        d = -gains.kd * (measured - state.last_measurement) / dt
    integral = state.integral + gains.ki * error * dt
    wanted = control.max_rate * math.exp(min(0.0, p + integral + d))
    ceiling = None
    if control.headroom > 0 and offered_rate is not None and error >= 0:
        ceiling = control.headroom * offered_rate
    limit = clamp_step(state.limit, wanted, control, ceiling)
    # Back-calculation: the integral is what the applied limit needs, so saturation never winds it up.
    integral = math.log(limit / control.max_rate) - p - d
    new = PidState(limit, integral, measured, now, now)
    return Step(new, "track", measured, error, p, integral, d)


def normalised(readings: Mapping[str, float | None], setpoints: Mapping[str, float]) -> float | None:
    """Several signals as one: the most stressed (largest measured / setpoint). None if none is fresh."""
    ratios = [
        value / setpoints[name]
        for name, value in readings.items()
        if value is not None and math.isfinite(value) and name in setpoints
    ]
    return max(ratios) if ratios else None


def histogram_quantile(q: float, bounds: Sequence[float], counts: Sequence[float]) -> float | None:
    """Prometheus' histogram_quantile over per-bucket (not cumulative) counts; the last count is +Inf.

    Linear interpolation inside the bucket, the lower bound of the first bucket is 0, and a rank in
    the +Inf bucket answers the highest finite bound (as Prometheus does). None without observations.
    """
    total = sum(counts)
    if total <= 0:
        return None
    rank = q * total
    seen = 0.0
    for i, n in enumerate(counts):
        if n <= 0:
            continue
        if seen + n >= rank:
            if i >= len(bounds):
                return bounds[-1]
            lower = bounds[i - 1] if i > 0 else 0.0
            return lower + (bounds[i] - lower) * (rank - seen) / n
        seen += n
    return bounds[-1]


@dataclass(frozen=True, slots=True)
class CallerShare:
    caller: str
    priority: int = 0  # lower is served first
    share: float = 1.0  # fraction of the total this caller is guaranteed before lower priorities


def allocate(
    total: float,
    callers: Sequence[CallerShare],
    demand: Mapping[str, float],
    *,
    slack: float = 0.25,
    floor: float = 1.0,
) -> tuple[dict[str, float], float]:
    """Split `total` (requests per second) among known callers and the unknown rest.

    Pass 1, by priority: each known caller may take up to its guaranteed share of the total (out of
    what higher priorities leave), and is expected to use its demand of the last tick; lower
    priorities get what it is expected to leave. Holding back the unused rest of a share would waste
    it (a caller's unused tokens go to no one); the price is that a priority caller that grows within
    a tick is admitted in full while the others still hold last tick's rest, so the callers' sum may
    exceed `total` by that growth until the next tick. Pass 2, by priority: what is left goes to
    demand beyond a share (plus `slack` of it, so a growing caller is not cut at last tick's rate).
    Unknown callers get what remains last. Every known caller keeps at least `floor` so a caller that
    went quiet can be measured again. Returns (per caller, unknown).
    """
    ordered = sorted(callers, key=lambda c: c.priority)
    given: dict[str, float] = {}
    left = total  # the total less what the callers served so far are expected to use
    for c in ordered:
        given[c.caller] = min(c.share * total, max(left, 0.0))
        left -= min(demand.get(c.caller, 0.0), given[c.caller])
    for c in ordered:
        wanted = demand.get(c.caller, 0.0)
        if wanted > given[c.caller] and left > 0:
            more = min(wanted * (1.0 + slack) - given[c.caller], left)
            left -= min(wanted - given[c.caller], more)
            given[c.caller] += more
    return {name: max(floor, value) for name, value in given.items()}, max(0.0, left)
