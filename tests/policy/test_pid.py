"""The adaptive limits' PID (policy/core/pid.py) against a simulated plant, plus its invariants.

The plant is a fluid queue in front of a server of fixed capacity: admitted work beyond capacity
queues, latency is the service time plus the queue's drain time, and the queue is bounded (past it
requests fail). It is the shape bench/adaptive.py's upstream has, without the noise of a real run.
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Callable
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from policy.core import pid

CAPACITY = 200.0  # requests per second
SERVICE = 0.010  # seconds
SETPOINT = 0.050  # seconds
QUEUE_BOUND = 400.0
TICK = 0.5


@dataclass
class Run:
    times: list[float]
    limits: list[float]
    latencies: list[float]
    admitted: list[float]
    modes: list[str]


def simulate(
    offered: Callable[[float], float],
    *,
    seconds: float,
    control: pid.Control | None = None,
    noise: float = 0.0,
    dead_after: float | None = None,
    seed: int = 7,
) -> Run:
    control = control or pid.Control(min_rate=5, max_rate=1000)
    rng = random.Random(seed)
    state = pid.start(control, 0.0)
    queue = 0.0
    run = Run([], [], [], [], [])
    t = 0.0
    while t < seconds:
        t += TICK
        admitted = min(offered(t), state.limit)
        queue = min(QUEUE_BOUND, max(0.0, queue + (admitted - CAPACITY) * TICK))
        latency = SERVICE + queue / CAPACITY
        measured: float | None = latency * (1 + noise * rng.gauss(0, 1)) / SETPOINT
        if dead_after is not None and t > dead_after:
            measured = None
        step = pid.pid_step(state, measured, control, t, offered_rate=offered(t))
        state = step.state
        run.times.append(t)
        run.limits.append(state.limit)
        run.latencies.append(latency)
        run.admitted.append(admitted)
        run.modes.append(step.mode)
    return run


def _window(run: Run, start: float, end: float) -> list[int]:
    return [i for i, t in enumerate(run.times) if start <= t < end]


def test_step_to_three_times_capacity_settles_near_capacity_with_latency_near_setpoint() -> None:
    run = simulate(lambda t: 0.5 * CAPACITY if t < 10 else 3 * CAPACITY, seconds=60)
    settled = _window(run, 20, 60)
    assert max(run.latencies[i] for i in settled) <= 1.5 * SETPOINT
    goodput = sum(run.admitted[i] for i in settled) / len(settled)
    assert goodput >= 0.9 * CAPACITY
    # Settles: within 10 s of the step the latency is back under 1.5x the setpoint for good.
    after = _window(run, 20, 60)
    assert all(run.latencies[i] <= 1.5 * SETPOINT for i in after)


def test_step_back_down_releases_the_limit() -> None:
    run = simulate(lambda t: 3 * CAPACITY if t < 30 else 0.5 * CAPACITY, seconds=60)
    calm = _window(run, 40, 60)
    assert all(run.admitted[i] == pytest.approx(0.5 * CAPACITY) for i in calm)
    assert all(run.latencies[i] == pytest.approx(SERVICE) for i in calm)


def test_ramp_up_and_down_keeps_latency_bounded() -> None:
    def ramp(t: float) -> float:
        # 0.5x -> 3x over 30 s, then back over 30 s
        return CAPACITY * (0.5 + 2.5 * (t / 30 if t < 30 else max(0.0, (60 - t) / 30)))

    run = simulate(ramp, seconds=70)
    # Crossing capacity is the worst transient: the queue grows before the signal can say so.
    assert max(run.latencies) <= 2 * SETPOINT
    overloaded = [i for i, t in enumerate(run.times) if ramp(t) > 1.2 * CAPACITY]
    assert sum(run.admitted[i] for i in overloaded) / len(overloaded) >= 0.85 * CAPACITY


def test_noisy_signal_still_settles_and_the_limit_does_not_thrash() -> None:
    run = simulate(lambda t: 3 * CAPACITY, seconds=60, noise=0.15)
    settled = _window(run, 25, 60)
    assert sum(run.latencies[i] for i in settled) / len(settled) <= SETPOINT
    assert sum(run.admitted[i] for i in settled) / len(settled) >= 0.8 * CAPACITY
    moves = [abs(run.limits[i] - run.limits[i - 1]) / run.limits[i - 1] for i in settled]
    assert sum(moves) / len(moves) < 0.15


def test_dead_signal_holds_then_decays_to_max_never_down() -> None:
    control = pid.Control(min_rate=5, max_rate=1000, signal_timeout=10)
    run = simulate(lambda t: 3 * CAPACITY, seconds=60, control=control, dead_after=20)
    at_death = run.limits[_window(run, 19.9, 20.1)[0]]
    held = _window(run, 20.1, 30)
    assert all(run.modes[i] == "hold" for i in held)
    assert all(run.limits[i] == at_death for i in held)
    decaying = _window(run, 30.1, 60)
    assert all(run.modes[i] == "decay" for i in decaying)
    limits = [run.limits[i] for i in decaying]
    assert all(b >= a for a, b in itertools.pairwise(limits))
    assert limits[-1] == control.max_rate


def test_derivative_is_on_measurement_so_a_setpoint_change_does_not_kick() -> None:
    # Same normalised reading twice: the derivative term is zero whatever the setpoint did meanwhile.
    control = pid.Control(min_rate=1, max_rate=100)
    state = pid.start(control, 0.0)
    first = pid.pid_step(state, 0.8, control, 1.0)
    second = pid.pid_step(first.state, 0.8, control, 2.0)
    assert second.d == 0.0
    rising = pid.pid_step(first.state, 1.3, control, 2.0)
    assert rising.d < 0


def test_saturated_controller_does_not_wind_up() -> None:
    # A long healthy stretch at max must not store up "room": one bad reading moves the limit at once.
    control = pid.Control(min_rate=1, max_rate=100, max_step=1.0, headroom=0)
    state = pid.start(control, 0.0)
    for t in range(1, 200):
        state = pid.pid_step(state, 0.1, control, float(t)).state
    assert state.limit == 100
    assert state.integral <= 0.0
    bad = pid.pid_step(state, 2.0, control, 200.0)
    assert bad.state.limit < 100


@settings(max_examples=300, deadline=None)
@given(
    kp=st.floats(0, 50),
    ki=st.floats(0, 50),
    kd=st.floats(0, 50),
    low=st.floats(0.1, 1000),
    span=st.floats(1, 1000),
    max_step=st.floats(0.01, 1.0),
    headroom=st.sampled_from([0.0, 1.0, 2.0, 10.0]),
    readings=st.lists(
        st.one_of(st.none(), st.floats(0, 1e6), st.just(math.inf), st.just(math.nan)),
        min_size=1,
        max_size=60,
    ),
    admitted=st.lists(st.floats(0, 1e5), min_size=1, max_size=60),
    gaps=st.lists(st.floats(0.01, 100), min_size=1, max_size=60),
)
def test_limit_stays_in_bounds_and_moves_at_most_the_step(
    kp: float,
    ki: float,
    kd: float,
    low: float,
    span: float,
    max_step: float,
    headroom: float,
    readings: list[float | None],
    admitted: list[float],
    gaps: list[float],
) -> None:
    control = pid.Control(
        min_rate=low,
        max_rate=low + span,
        gains=pid.Gains(kp, ki, kd),
        max_step=max_step,
        signal_timeout=5,
        headroom=headroom,
    )
    state = pid.start(control, 0.0)
    now = 0.0
    for i, reading in enumerate(readings):
        now += gaps[i % len(gaps)]
        step = pid.pid_step(state, reading, control, now, offered_rate=admitted[i % len(admitted)])
        new = step.state.limit
        assert control.min_rate <= new <= control.max_rate
        assert abs(new - state.limit) <= max_step * state.limit * (1 + 1e-9)
        assert math.isfinite(step.state.integral)
        state = step.state


def test_normalised_takes_the_most_stressed_fresh_signal() -> None:
    setpoints = {"p99": 50.0, "error_ratio": 0.01}
    assert pid.normalised({"p99": 25.0, "error_ratio": 0.02}, setpoints) == pytest.approx(2.0)
    assert pid.normalised({"p99": 75.0, "error_ratio": None}, setpoints) == pytest.approx(1.5)
    assert pid.normalised({"p99": None, "error_ratio": math.nan}, setpoints) is None


def test_histogram_quantile_interpolates_like_prometheus() -> None:
    # Prometheus promql/quantile.go bucketQuantile: linear within the bucket, lower bound 0 for the
    # first, the highest finite bound for ranks in +Inf.
    bounds = (10.0, 20.0, 40.0)
    assert pid.histogram_quantile(0.5, bounds, [0, 10, 0, 0]) == pytest.approx(15.0)
    assert pid.histogram_quantile(0.99, bounds, [50, 50, 0, 0]) == pytest.approx(19.8)
    assert pid.histogram_quantile(0.99, bounds, [0, 0, 0, 5]) == 40.0
    assert pid.histogram_quantile(0.5, bounds, [0, 0, 0, 0]) is None


def test_allocate_serves_priority_first_and_unknown_callers_last() -> None:
    callers = [pid.CallerShare("batch", priority=1, share=1.0), pid.CallerShare("web", priority=0, share=0.8)]
    given, unknown = pid.allocate(100.0, callers, {"web": 40.0, "batch": 200.0}, slack=0.0, floor=1.0)
    # web may take its whole share at once; batch gets what web is expected to leave, none is held back.
    assert given["web"] == pytest.approx(80.0)
    assert given["batch"] == pytest.approx(60.0)
    assert unknown == 0.0
    # The priority caller's demand beyond its share waits for pass 2, after lower priorities' shares.
    given, unknown = pid.allocate(100.0, callers, {"web": 200.0, "batch": 200.0}, slack=0.0, floor=1.0)
    assert given["web"] == pytest.approx(80.0)
    assert given["batch"] == pytest.approx(20.0)
    given, unknown = pid.allocate(100.0, callers, {"web": 200.0, "batch": 10.0}, slack=0.0, floor=1.0)
    assert given["web"] == pytest.approx(90.0)
    assert given["batch"] == pytest.approx(20.0)
    assert unknown == 0.0
    # Quiet callers keep their shares ready and leave everything else to unknown ones.
    given, unknown = pid.allocate(100.0, callers, {}, slack=0.0, floor=1.0)
    assert given == {"web": pytest.approx(80.0), "batch": pytest.approx(100.0)}
    assert unknown == pytest.approx(100.0)


@settings(max_examples=300, deadline=None)
@given(
    total=st.floats(1, 1e5),
    shares=st.lists(st.tuples(st.integers(0, 3), st.floats(0.01, 1)), min_size=0, max_size=5),
    demands=st.lists(st.floats(0, 1e5), min_size=5, max_size=5),
)
def test_allocate_expects_no_more_than_the_total_and_serves_shares_by_priority(
    total: float, shares: list[tuple[int, float]], demands: list[float]
) -> None:
    callers = [pid.CallerShare(f"c{i}", prio, share) for i, (prio, share) in enumerate(shares)]
    demand = {f"c{i}": demands[i] for i in range(len(shares))}
    given, unknown = pid.allocate(total, callers, demand, floor=1.0)
    assert unknown >= 0
    assert all(v >= 1.0 for v in given.values())
    # What the callers will use at last tick's demand, plus the unknown rest, stays within the total.
    expected = sum(min(demand[c.caller], given[c.caller]) for c in callers)
    assert expected + unknown <= total + len(callers) * 1.0 + 1e-6 * total
    # Each caller may take its whole share at once, whatever it used last tick, unless those served
    # before it (higher priorities; in the given order within one) are expected to use up the total.
    ordered = sorted(callers, key=lambda c: c.priority)
    for i, c in enumerate(ordered):
        before = sum(min(demand[o.caller], given[o.caller]) for o in ordered[:i])
        floor = min(c.share * total, total - before)
        assert given[c.caller] >= floor - 1e-6 * total
