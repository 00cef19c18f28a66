"""The decision cache: an LRU with a TTL, keyed on the values of the attributes the snapshot's rules
read. One cache belongs to one snapshot, so a policy change can never serve an old decision.

A hit moves its entry to the young end (OrderedDict.move_to_end, O(1) in C), so a full cache evicts the
entry used longest ago, not the one stored first: a hot key stays however many cold keys pass through.
An expired entry is dropped when it is looked up, or in its turn at the old end."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass

from policy.structs import Decision

__all__ = ["CachedDecision", "DecisionCache"]


@dataclass(frozen=True, slots=True)
class CachedDecision:
    decision: Decision
    dry_run_rules: tuple[str, ...]
    expires: float


class DecisionCache:
    def __init__(self, *, size: int, ttl: float) -> None:
        self._entries: OrderedDict[Hashable, CachedDecision] = OrderedDict()
        # Bound once: a hit is two C calls, not two attribute lookups and two calls.
        self._lookup = self._entries.get
        self._refresh = self._entries.move_to_end
        self._size = size
        self._ttl = ttl

    @property
    def enabled(self) -> bool:
        return self._size > 0 and self._ttl > 0

    def get(self, key: Hashable, now: float) -> CachedDecision | None:
        entry = self._lookup(key)
        if entry is None:
            return None
        if entry.expires <= now:
            del self._entries[key]
            return None
        self._refresh(key)
        return entry

    def put(self, key: Hashable, decision: Decision, dry_run_rules: tuple[str, ...], now: float) -> None:
        entries = self._entries
        entries[key] = CachedDecision(decision, dry_run_rules, now + self._ttl)
        entries.move_to_end(key)  # a key two concurrent misses both decided: stored again, so young
        if len(entries) > self._size:
            entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)
