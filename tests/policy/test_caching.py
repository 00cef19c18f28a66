"""The decision cache (policy/core/caching.py): least recently used goes first, a TTL bounds every entry.

The unit tests pin the order by hand; the property test runs random gets and puts against a plain
reference model (a list in recency order), and the service test shows what the LRU buys on the Check
path: a hot key keeps hitting while more cold keys than the cache holds pass through.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from policy.core.caching import DecisionCache
from policy.structs import CheckInput, Decision
from tests.policy.conftest import PolicyFactory
from tests.policy.deciding import decide

ALLOW = Decision(kind="allow", status=200, rule_id="r")


def keys(cache: DecisionCache, candidates: range, now: float) -> list[int]:
    return [k for k in candidates if cache.get(k, now) is not None]


def test_a_hit_keeps_its_entry_and_the_least_recently_used_goes() -> None:
    cache = DecisionCache(size=3, ttl=60)
    for key in (1, 2, 3):
        cache.put(key, ALLOW, (), now=0)
    assert cache.get(1, now=1) is not None  # 1 is now the most recently used
    cache.put(4, ALLOW, (), now=2)  # full: 2 is the least recently used
    assert len(cache) == 3
    assert cache.get(2, now=3) is None
    assert cache.get(1, now=3) is not None
    cache.put(5, ALLOW, (), now=4)  # order now 3, 4, 1 (hit at 3): 3 goes
    assert keys(cache, range(1, 6), now=5) == [1, 4, 5]


def test_storing_a_key_again_makes_it_young() -> None:
    cache = DecisionCache(size=2, ttl=60)
    cache.put("a", ALLOW, (), now=0)
    cache.put("b", ALLOW, (), now=0)
    cache.put("a", Decision(kind="deny", status=403, rule_id="d"), ("dry",), now=1)
    cache.put("c", ALLOW, (), now=2)
    assert cache.get("b", now=2) is None
    hit = cache.get("a", now=2)
    assert hit is not None
    assert (hit.decision.kind, hit.dry_run_rules, hit.expires) == ("deny", ("dry",), 61)


def test_an_entry_expires_at_its_ttl_and_a_hit_does_not_extend_it() -> None:
    cache = DecisionCache(size=10, ttl=5)
    cache.put("k", ALLOW, (), now=100)
    assert cache.get("k", now=104.999) is not None
    assert cache.get("k", now=104.999) is not None  # hits refresh recency, not the deadline
    assert cache.get("k", now=105) is None  # expires <= now: gone, and removed
    assert len(cache) == 0
    cache.put("k", ALLOW, (), now=105)
    assert cache.get("k", now=109) is not None


def test_a_cache_without_size_or_ttl_is_disabled() -> None:
    assert DecisionCache(size=10, ttl=1).enabled
    assert not DecisionCache(size=0, ttl=1).enabled
    assert not DecisionCache(size=10, ttl=0).enabled


operations = st.lists(
    st.tuples(st.sampled_from(["get", "put"]), st.integers(0, 7), st.integers(0, 3)), max_size=60
)


@settings(max_examples=300, deadline=None, database=None)
@given(size=st.integers(1, 5), ttl=st.integers(1, 6), ops=operations)
def test_the_cache_behaves_as_a_reference_lru(size: int, ttl: int, ops: list[tuple[str, int, int]]) -> None:
    cache = DecisionCache(size=size, ttl=ttl)
    model: list[tuple[int, float]] = []  # (key, expires), least recently used first
    now = 0.0
    for op, key, step in ops:
        now += step
        held = next((e for e in model if e[0] == key), None)
        if op == "get":
            hit = cache.get(key, now)
            if held is None or held[1] <= now:
                assert hit is None
                if held is not None:
                    model.remove(held)
            else:
                assert hit is not None
                assert hit.expires == held[1]
                model.remove(held)
                model.append(held)
        else:
            cache.put(key, ALLOW, (), now)
            if held is not None:
                model.remove(held)
            model.append((key, now + ttl))
            del model[:-size]
        assert len(cache) == len(model)
    assert [k for k, _ in model] == list(cache._entries)


async def test_a_hot_key_keeps_hitting_while_cold_keys_pass_through(policy_factory: PolicyFactory) -> None:
    # The cache key holds request.path (the only attribute the rule reads): one path, one entry.
    run = await policy_factory(
        policy={
            "rules": [{"id": "deny-admin", "action": "deny", "match": {"request.path": {"prefix": "/admin"}}}]
        },
        cache_size=100,
    )
    service = run.part.service
    await decide(service, CheckInput(path="/hot"))
    for i in range(500):  # five times what the cache holds
        await decide(service, CheckInput(path=f"/cold/{i}"))
        if i % 10 == 0:
            await decide(service, CheckInput(path="/hot"))
    assert run.metric("remixer_policy_cache_misses_total") == 501  # the hot key missed once only
    assert run.metric("remixer_policy_cache_hits_total") == 50
    await decide(service, CheckInput(path="/cold/0"))  # long evicted
    assert run.metric("remixer_policy_cache_misses_total") == 502
