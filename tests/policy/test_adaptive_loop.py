"""The adaptive limits' controller loop over real parts: the policy part and its store (SQLite,
PostgreSQL), telemetry's aggregates as the signal source, the quota path (memory, Redis), the leader
election. Time is a clock the test advances; the latencies are what telemetry would have aggregated
from Envoy access logs (telemetry/core/aggregates.py, fed as telemetry/pipeline.py feeds it).
"""

from __future__ import annotations

import itertools
import math
import time
import uuid
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from policy.adapters.adaptive_metrics import AdaptiveMetrics
from policy.adapters.adaptive_state import AdaptiveStateStore, PostgresLeadership, SoleLeadership
from policy.adapters.sql import SqlPolicyStore
from policy.adaptive import AdaptiveController, bucket
from policy.structs import CheckInput
from remixer.adaptive_signals import TelemetrySignals
from telemetry.core.aggregates import Aggregates, HttpTally
from telemetry.structs import LABEL_INDEX, LABEL_NAMES
from tests.policy.conftest import POSTGRES_URL, REDIS_URL, PolicyFactory, RunningPolicy
from tests.policy.deciding import decide

SERVICE = "checkout.shop.svc.cluster.local"
WEB = "spiffe://cluster.local/ns/shop/sa/web"
RULE: dict[str, Any] = {
    "name": "checkout",
    "target": {"service": SERVICE},
    "signals": [{"signal": "p99_latency_ms", "setpoint": 100}],
    "min_rate": 5,
    "max_rate": 100,
    "interval": 1.0,
    "signal_timeout": 5.0,
    "headroom": 0,
    "callers": [{"caller": WEB, "priority": 0, "share": 0.5}],
}


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _labels(*, code: str = "200", flags: str = "-", reporter: str = "destination") -> tuple[str, ...]:
    values = ["unknown"] * len(LABEL_NAMES)
    values[LABEL_INDEX["reporter"]] = reporter
    values[LABEL_INDEX["destination_service"]] = SERVICE
    values[LABEL_INDEX["response_code"]] = code
    values[LABEL_INDEX["response_flags"]] = flags
    return tuple(values)


def observe(agg: Aggregates, latency_ms: float, n: int = 50, **labels: str) -> None:
    tally = HttpTally()
    for _ in range(n):
        tally.observe(latency_ms, 100, 200)
    tally.apply(agg.http_slot(_labels(**labels)))


class Loop:
    def __init__(self, running: RunningPolicy, leadership: Any = None) -> None:
        self.clock = Clock()
        self.aggregates = Aggregates(http_label_count=len(LABEL_NAMES), tcp_label_count=23, max_series=100)
        store = running.part.service.store
        assert isinstance(store, SqlPolicyStore)
        self.store = store
        service = running.part.service
        self.metrics = AdaptiveMetrics(
            running.registry, lambda: {"checkout": service.adaptive.counts("checkout")}
        )
        self.controller = AdaptiveController(
            rules=lambda: list(service.snapshot.document.adaptive),
            table=service.adaptive,
            states=AdaptiveStateStore(store.engine),
            leadership=leadership or SoleLeadership("replica-a", leads=True),
            source=TelemetrySignals(self.aggregates, reporter="destination", clock=self.clock),
            observer=self.metrics,
            clock=self.clock,
        )

    async def tick(self, latency_ms: float | None = None, seconds: float = 1.0) -> float:
        if latency_ms is not None:
            observe(self.aggregates, latency_ms)
        self.clock.now += seconds
        await self.controller.tick()
        return self.controller.last["checkout"].limit


@pytest.fixture(params=["sqlite", "postgresql+redis"])
async def running(request: pytest.FixtureRequest, policy_factory: PolicyFactory) -> RunningPolicy:
    if request.param == "postgresql+redis":
        # The production shape: PostgreSQL store, quota counters in Redis shared by replicas.
        return await policy_factory(
            policy={"adaptive": [RULE]},
            database_url=POSTGRES_URL,
            database_schema=request.getfixturevalue("pg_schema"),
            quota_backend="redis",
            redis_url=REDIS_URL,
            redis_key_prefix=request.getfixturevalue("redis_prefix"),
            redis_timeout=1.0,
        )
    return await policy_factory(policy={"adaptive": [RULE]})


async def _admitted(running: RunningPolicy, principal: str, n: int) -> int:
    service = running.part.service
    checks = [
        await decide(service, CheckInput(path="/", destination_service=SERVICE, source_principal=principal))
        for _ in range(n)
    ]
    return sum(c.kind == "allow" for c in checks)


def refilled(rate: float, since: float) -> int:
    """The most tokens a bucket refilling at `rate`/s can have gained since `since` (time.monotonic()):
    checks on a loaded machine take longer, and the bucket refills meanwhile."""
    return math.floor(rate * (time.monotonic() - since)) + 1


async def test_high_latency_tightens_the_limit_step_by_step_and_audits_each_change(
    running: RunningPolicy,
) -> None:
    loop = Loop(running)
    limits = [await loop.tick(20)]  # first tick: the baseline of the counters, no window yet
    for _ in range(6):
        limits.append(await loop.tick(2000))
    assert limits[0] == 100
    for before, after in itertools.pairwise(limits):
        assert after < before
        assert after >= before * 0.8 - 1e-9  # max_step 0.2
    state = (await AdaptiveStateStore(loop.store.engine).read())["checkout"]
    assert state.limit == pytest.approx(limits[-1])
    assert state.step["readings"]["p99_latency_ms"] > 1000
    trail = [e for e in await loop.store.audit(limit=50) if e.action == "adapt"]
    assert len(trail) == 6
    assert trail[0].body is not None
    assert trail[0].body["limit"] == pytest.approx(limits[-1], abs=0.01)
    assert trail[0].body["readings"]["p99_latency_ms"] > 1000
    assert running.metric("remixer_adaptive_limit", rule="checkout") == pytest.approx(limits[-1])
    assert running.metric("remixer_adaptive_term", rule="checkout", term="p") < 0
    assert running.metric("remixer_adaptive_setpoint", rule="checkout", signal="p99_latency_ms") == 100


async def test_the_limit_is_enforced_per_caller_through_the_quota_path(running: RunningPolicy) -> None:
    loop = Loop(running)
    await loop.tick(20)
    for _ in range(12):
        await loop.tick(2000)
    state = loop.controller.last["checkout"]
    assert state.limit < 40
    web = state.callers[WEB]
    # The known caller gets its own token bucket: its allocation per second, 0.1 s of it at once (burst).
    web_depth, _ = bucket(web, 0.1)
    started = time.monotonic()
    admitted_web = await _admitted(running, WEB, 40)
    assert web_depth <= admitted_web <= web_depth + refilled(web, started)
    # Every unknown caller shares one bucket: two of them together get the unknown allocation once.
    depth, _ = bucket(state.unknown, 0.1)
    started = time.monotonic()
    a = await _admitted(running, "spiffe://cluster.local/ns/x/sa/a", 20)
    b = await _admitted(running, "spiffe://cluster.local/ns/x/sa/b", 20)
    assert depth <= a + b <= depth + refilled(state.unknown, started)
    assert b < 20
    counts = running.part.service.adaptive.counts("checkout")
    assert counts[WEB] == (admitted_web, 40 - admitted_web)
    assert counts[""][0] == a + b
    assert (
        running.metric(
            "remixer_adaptive_requests_total", rule="checkout", caller="unknown", decision="rejected"
        )
        == 40 - a - b
    )


async def test_priority_caller_keeps_its_demand_while_unknown_callers_are_shed(
    running: RunningPolicy,
) -> None:
    loop = Loop(running)
    await loop.tick(20)
    # Web asks ~10/s, unknown callers ~100/s, at a limit the latency holds near 40/s.
    for _ in range(8):
        await _admitted(running, WEB, 10)
        await _admitted(running, "spiffe://cluster.local/ns/x/sa/bulk", 100)
        await loop.tick(2000 if loop.controller.last["checkout"].limit > 40 else 20)
    state = loop.controller.last["checkout"]
    assert state.callers[WEB] >= 10  # its demand comes first
    assert state.unknown <= state.limit - 10
    assert running.part.service.adaptive.counts("checkout")[""][1] > 0  # the bulk caller was shed


async def test_a_priority_callers_unused_reserve_does_not_pull_a_healthy_limit_down(
    running: RunningPolicy,
) -> None:
    # Web may take its whole share at any moment, more than it uses. The headroom ceiling reads the
    # offered rate, not what was granted, so a healthy destination keeps its limit at max_rate.
    loop = Loop(running)
    await loop.tick(20)
    for _ in range(15):
        await _admitted(running, WEB, 40)
        await _admitted(running, "spiffe://cluster.local/ns/x/sa/bulk", 100)
        await loop.tick(20)
    state = loop.controller.last["checkout"]
    assert state.limit == RULE["max_rate"]
    assert state.step["offered_rps"] == pytest.approx(140, rel=0.05)


async def test_dead_signal_holds_then_decays_to_max(running: RunningPolicy) -> None:
    loop = Loop(running)
    await loop.tick(20)
    for _ in range(5):
        low = await loop.tick(2000)
    held = [await loop.tick(None) for _ in range(4)]  # no traffic: no fresh signal
    assert held == [low] * 4
    assert loop.controller.last["checkout"].mode == "hold"
    decayed = [await loop.tick(None) for _ in range(30)]
    assert loop.controller.last["checkout"].mode == "decay"
    assert all(b >= a for a, b in itertools.pairwise(decayed))
    assert decayed[-1] == RULE["max_rate"]


async def test_denied_by_ext_authz_and_other_reporters_are_not_the_destinations_health(
    running: RunningPolicy,
) -> None:
    loop = Loop(running)
    await loop.tick(20)
    # Fast 429s ext_authz answered itself (UAEX) and the source proxy's view do not count.
    observe(loop.aggregates, 1, n=5000, code="429", flags="UAEX")
    observe(loop.aggregates, 1, n=5000, reporter="source")
    await loop.tick(2000)
    assert loop.controller.last["checkout"].step["readings"]["p99_latency_ms"] > 1000


async def test_one_replica_computes_and_the_other_enforces_its_limits(
    policy_factory: PolicyFactory, pg_schema: str
) -> None:
    shared = {"database_url": POSTGRES_URL, "database_schema": pg_schema}
    first = await policy_factory(policy={"adaptive": [RULE]}, **shared)
    second = await policy_factory(**shared)
    await second.part.service.reload()
    key = int(uuid.uuid4().int % 2**31)
    engine_a = first.part.service.store
    engine_b = second.part.service.store
    assert isinstance(engine_a, SqlPolicyStore)
    assert isinstance(engine_b, SqlPolicyStore)
    a = Loop(first, PostgresLeadership(engine_a.engine, "a", key=key))
    b = Loop(second, PostgresLeadership(engine_b.engine, "b", key=key))
    try:
        await a.tick(20)
        await b.controller.tick()
        assert a.controller.leader
        assert not b.controller.leader
        for _ in range(5):
            await a.tick(2000)
        await b.controller.tick()
        led = a.controller.last["checkout"]
        assert b.controller.last["checkout"].limit == led.limit
        depth, _ = bucket(led.callers[WEB], 0.1)
        started = time.monotonic()
        assert depth <= await _admitted(second, WEB, 60) <= depth + refilled(led.callers[WEB], started)
        # The leader goes: the follower takes over from the limit it enforced, not from max_rate.
        await a.controller.stop()
        await b.tick(2000)
        assert b.controller.leader
        assert b.controller.last["checkout"].limit <= led.limit
        assert b.controller.last["checkout"].limit >= led.limit * 0.8 - 1e-9
    finally:
        await a.controller.stop()
        await b.controller.stop()


@settings(max_examples=200, deadline=None)
@given(rate=st.floats(0.01, 1e6), burst=st.floats(0.01, 10))
def test_a_bucket_admits_exactly_the_rate_at_least_one_request_deep(rate: float, burst: float) -> None:
    depth, period = bucket(rate, burst)
    assert depth >= 1
    assert depth / period == pytest.approx(rate)
    assert depth <= max(1, rate * burst) + 1
