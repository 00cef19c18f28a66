"""Quota arithmetic, backend-neutral and clock-free: token bucket and sliding window (log).

Token bucket: capacity `requests`, refilled continuously at requests/period; bursts up to capacity.
Sliding window: admits a request when fewer than `requests` were admitted in the last `period`
seconds; exact (a log of admission times), so no window boundary lets a double burst through.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

from policy.structs import QuotaVerdict

__all__ = ["BucketState", "rejected_headers", "take_from_bucket", "take_from_window"]


@dataclass(slots=True)
class BucketState:
    tokens: float
    updated: float


def take_from_bucket(
    state: BucketState | None, *, requests: int, period: float, now: float, cost: int = 1
) -> tuple[BucketState, QuotaVerdict]:
    rate = requests / period
    if state is None:
        state = BucketState(tokens=float(requests), updated=now)
    elif now > state.updated:
        state.tokens = min(float(requests), state.tokens + (now - state.updated) * rate)
        state.updated = now
    if state.tokens >= cost:
        state.tokens -= cost
        return state, QuotaVerdict(True, requests, int(state.tokens), 0.0)
    return state, QuotaVerdict(False, requests, 0, (cost - state.tokens) / rate)


def take_from_window(
    log: deque[float] | None, *, requests: int, period: float, now: float
) -> tuple[deque[float], QuotaVerdict]:
    if log is None:
        log = deque()
    horizon = now - period
    while log and log[0] <= horizon:
        log.popleft()
    if len(log) < requests:
        log.append(now)
        return log, QuotaVerdict(True, requests, requests - len(log), 0.0)
    return log, QuotaVerdict(False, requests, 0, max(0.0, log[0] + period - now))


def rejected_headers(verdict: QuotaVerdict) -> tuple[tuple[str, str], ...]:
    return (
        ("x-ratelimit-limit", str(verdict.limit)),
        ("x-ratelimit-remaining", "0"),
        ("retry-after", str(max(1, math.ceil(verdict.retry_after)))),
    )
