"""Quota arithmetic (pure), the in-memory backend and the Redis backend (real Redis), concurrency included."""

from __future__ import annotations

import asyncio
from collections import deque

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from policy.adapters.base import BackendUnavailable
from policy.adapters.memory import MemoryQuotas
from policy.adapters.redis_quotas import RedisQuotas
from policy.core import quotas
from tests.policy.conftest import REDIS_URL


def test_token_bucket_bursts_then_refills() -> None:
    state = None
    admitted = []
    for _ in range(12):
        state, verdict = quotas.take_from_bucket(state, requests=10, period=1.0, now=100.0)
        admitted.append(verdict.allowed)
    assert admitted == [True] * 10 + [False] * 2
    assert verdict.retry_after == pytest.approx(0.1)
    state, verdict = quotas.take_from_bucket(state, requests=10, period=1.0, now=100.25)
    assert verdict.allowed
    assert verdict.remaining == 1


def test_sliding_window_has_no_boundary_double_burst() -> None:
    log = None
    # 5 at the end of one minute, then 5 more just after a fixed-window boundary: a fixed window admits 10.
    for t in (59.0, 59.1, 59.2, 59.3, 59.4):
        log, verdict = quotas.take_from_window(log, requests=5, period=60.0, now=t)
        assert verdict.allowed
    log, verdict = quotas.take_from_window(log, requests=5, period=60.0, now=60.5)
    assert not verdict.allowed
    assert verdict.retry_after == pytest.approx(58.5)
    log, verdict = quotas.take_from_window(log, requests=5, period=60.0, now=119.01)
    assert verdict.allowed


@settings(max_examples=300, deadline=None)
@given(
    limit=st.integers(1, 20),
    period=st.sampled_from([1.0, 10.0, 60.0]),
    gaps=st.lists(st.floats(0, 5, allow_nan=False), min_size=1, max_size=120),
)
def test_sliding_window_never_admits_more_than_limit_in_any_window(
    limit: int, period: float, gaps: list[float]
) -> None:
    log: deque[float] | None = None
    now = 0.0
    admitted: list[float] = []
    for gap in gaps:
        now += gap
        log, verdict = quotas.take_from_window(log, requests=limit, period=period, now=now)
        if verdict.allowed:
            admitted.append(now)
    for i, start in enumerate(admitted):
        assert sum(1 for t in admitted[i:] if t < start + period) <= limit


@settings(max_examples=300, deadline=None)
@given(
    limit=st.integers(1, 50),
    gaps=st.lists(st.floats(0, 2, allow_nan=False), min_size=1, max_size=120),
)
def test_token_bucket_admits_at_most_capacity_plus_refill(limit: int, gaps: list[float]) -> None:
    state = None
    now = 0.0
    admitted = 0
    for gap in gaps:
        now += gap
        state, verdict = quotas.take_from_bucket(state, requests=limit, period=1.0, now=now)
        admitted += verdict.allowed
    assert admitted <= limit + now * limit + 1e-9


async def test_memory_backend_is_exact_under_concurrency() -> None:
    backend = MemoryQuotas()
    results = await asyncio.gather(
        *(backend.take(key="k", requests=10, period=60, algorithm="sliding_window") for _ in range(100))
    )
    assert sum(r.allowed for r in results) == 10


@pytest.mark.parametrize("algorithm", ["sliding_window", "token_bucket"])
async def test_redis_backend_is_exact_under_concurrency_across_clients(
    algorithm: str, redis_prefix: str
) -> None:
    # Two clients play two replicas sharing one counter.
    replicas = [RedisQuotas(REDIS_URL, prefix=redis_prefix, timeout=2.0) for _ in range(2)]
    try:
        takes = [
            replicas[i % 2].take(key="shared", requests=25, period=60, algorithm=algorithm)
            for i in range(120)
        ]
        results = await asyncio.gather(*takes)
        assert sum(r.allowed for r in results) == 25
        rejected = [r for r in results if not r.allowed]
        assert all(r.remaining == 0 and r.retry_after > 0 for r in rejected)
    finally:
        for replica in replicas:
            await replica.close()


async def test_redis_sliding_window_admits_again_after_the_window(redis_prefix: str) -> None:
    backend = RedisQuotas(REDIS_URL, prefix=redis_prefix, timeout=2.0)
    try:
        first = [
            await backend.take(key="w", requests=2, period=0.3, algorithm="sliding_window") for _ in range(3)
        ]
        assert [v.allowed for v in first] == [True, True, False]
        await asyncio.sleep(0.35)
        assert (await backend.take(key="w", requests=2, period=0.3, algorithm="sliding_window")).allowed
    finally:
        await backend.close()


async def test_redis_unreachable_raises_backend_unavailable() -> None:
    from remixer.kit.envoy import free_port

    backend = RedisQuotas(f"redis://127.0.0.1:{free_port()}/0", prefix="x:", timeout=0.2)
    try:
        with pytest.raises(BackendUnavailable):
            await backend.take(key="k", requests=1, period=1, algorithm="token_bucket")
    finally:
        await backend.close()
