"""In-process quota counters: the default backend, and the local fallback when Redis is away."""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from collections.abc import Callable
from typing import TypeVar

from policy.core import quotas
from policy.structs import QuotaVerdict

__all__ = ["MemoryQuotas"]

_State = TypeVar("_State")


class MemoryQuotas:
    """Exact under asyncio concurrency: `take_now` runs without awaiting, so no two takes interleave."""

    name = "memory"

    def __init__(self, *, max_keys: int = 100_000, clock: Callable[[], float] = time.monotonic) -> None:
        self._buckets: OrderedDict[str, quotas.BucketState] = OrderedDict()
        self._windows: OrderedDict[str, deque[float]] = OrderedDict()
        self._max_keys = max_keys
        self._clock = clock

    def take_now(self, *, key: str, requests: int, period: float, algorithm: str) -> QuotaVerdict:
        now = self._clock()
        if algorithm == "token_bucket":
            bucket, verdict = quotas.take_from_bucket(
                self._buckets.get(key), requests=requests, period=period, now=now
            )
            self._remember(self._buckets, key, bucket)
            return verdict
        window, verdict = quotas.take_from_window(
            self._windows.get(key), requests=requests, period=period, now=now
        )
        self._remember(self._windows, key, window)
        return verdict

    def _remember(self, table: OrderedDict[str, _State], key: str, value: _State) -> None:
        table[key] = value
        table.move_to_end(key)
        # Idle keys go first; evicting one only forgets an old counter.
        while len(table) > self._max_keys:
            table.popitem(last=False)

    async def take(self, *, key: str, requests: int, period: float, algorithm: str) -> QuotaVerdict:
        return self.take_now(key=key, requests=requests, period=period, algorithm=algorithm)

    async def close(self) -> None:
        self._buckets.clear()
        self._windows.clear()
