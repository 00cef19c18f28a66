"""Adaptive limit rules in the policy store: YAML files, the /v1/adaptive API, validation, audit, the
state table and the leader election (SQLite, real PostgreSQL, real Redis)."""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from policy.adapters.adaptive_state import (
    AdaptiveState,
    AdaptiveStateStore,
    PostgresLeadership,
    RedisLeadership,
)
from policy.adapters.sql import SqlPolicyStore
from policy.core import documents, rules
from policy.structs import CheckInput, PolicyError
from tests.policy.conftest import ADMIN_TOKEN, POSTGRES_URL, REDIS_URL, PolicyFactory, RunningPolicy
from tests.policy.deciding import decide

AUTH = {"authorization": f"Bearer {ADMIN_TOKEN}"}
CHECKOUT: dict[str, Any] = {
    "name": "checkout",
    "target": {"service": "checkout.shop.svc.cluster.local"},
    "signals": [{"signal": "p99_latency_ms", "setpoint": 250}, {"signal": "error_ratio", "setpoint": 0.02}],
    "min_rate": 2,
    "max_rate": 3,
    "caller": "source.principal",
    "callers": [{"caller": "spiffe://cluster.local/ns/shop/sa/web", "priority": 0, "share": 0.5}],
}


def _check(principal: str = "spiffe://cluster.local/ns/shop/sa/web") -> CheckInput:
    return CheckInput(
        path="/cart", destination_service="checkout.shop.svc.cluster.local", source_principal=principal
    )


@pytest.fixture(params=["sqlite", "postgresql"])
async def running(request: pytest.FixtureRequest, policy_factory: PolicyFactory) -> RunningPolicy:
    if request.param == "postgresql":
        schema = request.getfixturevalue("pg_schema")
        return await policy_factory(
            policy={"adaptive": [CHECKOUT]}, database_url=POSTGRES_URL, database_schema=schema
        )
    return await policy_factory(policy={"adaptive": [CHECKOUT]})


def test_an_adaptive_rule_compiles_into_a_rate_limit_rule_and_the_limit_it_owns() -> None:
    doc = documents.parse_document({"adaptive": [CHECKOUT]})
    snap = rules.compile_snapshot(doc, revision=1)
    limit = snap.limits["adaptive:checkout"]
    assert (limit.requests, limit.period, limit.algorithm, limit.shadow) == (3, 1.0, "token_bucket", False)
    # The listing shows the document as written, not the rule it compiles to.
    assert snap.document.rules == []
    assert snap.document.adaptive[0].name == "checkout"
    dry = documents.parse_document({"adaptive": [{**CHECKOUT, "dry_run": True}]})
    assert rules.compile_snapshot(dry, revision=1).limits["adaptive:checkout"].shadow


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"min_rate": 10}, "adaptive limit 'checkout': field (item): min_rate 10 is above max_rate 3"),
        ({"signals": []}, "adaptive limit 'checkout': field signals: List should have at least 1 item"),
        (
            {"signals": [{"signal": "error_ratio", "setpoint": 5}]},
            "adaptive limit 'checkout': field signals.0: an error_ratio setpoint is a fraction",
        ),
        (
            {"signals": [{"signal": "p50", "setpoint": 5}]},
            "adaptive limit 'checkout': field signals.0.signal",
        ),
        ({"caller": "request.nope"}, "adaptive limit 'checkout': field caller: unknown attribute"),
        ({"gains": {"kp": -1}}, "adaptive limit 'checkout': field gains.kp"),
        ({"name": "bad\nname"}, "adaptive limit 'bad\\nname': field name"),
        ({"target": {"service": "x\n"}}, "adaptive limit 'checkout': field target.service"),
    ],
)
def test_invalid_adaptive_rules_name_the_item_and_field(change: dict[str, Any], message: str) -> None:
    with pytest.raises(PolicyError) as caught:
        documents.parse_document({"adaptive": [{**CHECKOUT, **change}]}, source="f.yaml")
    assert f"f.yaml: {message}" in str(caught.value)


def test_an_adaptive_name_clashing_with_a_rule_is_refused() -> None:
    doc = documents.parse_document(
        {
            "adaptive": [CHECKOUT],
            "limits": [{"name": "l", "requests": 1, "unit": "second"}],
            "rules": [{"id": "adaptive:checkout", "action": "rate_limit", "limit": "l", "match": {}}],
        }
    )
    with pytest.raises(PolicyError, match="rule 'adaptive:checkout': defined twice"):
        rules.compile_snapshot(doc, revision=1)


async def test_a_rule_from_a_policy_file_limits_checks_at_its_max_rate(running: RunningPolicy) -> None:
    service = running.part.service
    kinds = [(await decide(service, _check())).kind for _ in range(5)]
    # A token bucket of max_rate (3) requests per second: the first three pass, then 429s.
    assert kinds[:3] == ["allow"] * 3
    assert "rate_limited" in kinds[3:]
    assert (await decide(service, CheckInput(path="/cart", destination_service="other"))).kind == "allow"


async def test_api_crud_validates_and_audits_adaptive_rules(running: RunningPolicy) -> None:
    admin = running.admin
    body = {**CHECKOUT, "name": "search", "target": {"service": "search.shop.svc.cluster.local"}}
    assert (await admin.put("/v1/adaptive/search", json=body)).status_code == 401
    created = await admin.put("/v1/adaptive/search", json=body, headers={**AUTH, "x-remixer-actor": "ops"})
    assert created.status_code == 200, created.text
    got = (await admin.get("/v1/adaptive/search")).json()
    assert got["max_rate"] == 3
    assert got["callers"][0]["share"] == 0.5
    assert [x["name"] for x in (await admin.get("/v1/adaptive")).json()] == ["checkout", "search"]
    bad = await admin.put("/v1/adaptive/search", json={**body, "min_rate": 9}, headers=AUTH)
    assert bad.status_code == 422
    assert "min_rate 9 is above max_rate 3" in bad.json()["detail"]
    owned = await admin.put("/v1/adaptive/checkout", json=CHECKOUT, headers=AUTH)
    assert owned.status_code == 409
    assert (await admin.delete("/v1/adaptive/search", headers=AUTH)).status_code == 200
    assert (await admin.get("/v1/adaptive/search")).status_code == 404
    trail = (await admin.get("/v1/policy/audit")).json()
    assert [(e["action"], e["kind"], e["name"]) for e in trail[:2]] == [
        ("delete", "adaptive", "search"),
        ("put", "adaptive", "search"),
    ]
    assert trail[1]["actor"].startswith("api:ops@")


@pytest.fixture(params=["sqlite", "postgresql"])
async def state_store(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    if request.param == "postgresql":
        store = SqlPolicyStore(POSTGRES_URL, schema=request.getfixturevalue("pg_schema"))
    else:
        store = SqlPolicyStore(f"sqlite:///{tmp_path / 'p.db'}")
    await store.migrate()
    yield store
    await store.close()


async def test_state_is_shared_and_each_change_audited_with_its_signal(state_store: SqlPolicyStore) -> None:
    states = AdaptiveStateStore(state_store.engine)
    step = {"measured": 1.8, "readings": {"p99_latency_ms": 450.0}, "p": -0.32, "i": -0.1, "d": 0.0}
    first = AdaptiveState("checkout", 120.0, {"web": 60.0}, 60.0, "track", step, "replica-a", time.time())
    await states.write(first, changed=True)
    await states.write(
        AdaptiveState("checkout", 100.0, {"web": 50.0}, 50.0, "track", step, "replica-a", time.time()),
        changed=False,
    )
    read = await states.read()
    assert read["checkout"].limit == 100.0
    assert read["checkout"].callers == {"web": 50.0}
    assert read["checkout"].step["readings"] == {"p99_latency_ms": 450.0}
    trail = await state_store.audit(limit=10)
    assert len(trail) == 1
    assert (trail[0].action, trail[0].kind, trail[0].name, trail[0].actor) == (
        "adapt",
        "adaptive",
        "checkout",
        "adaptive:replica-a",
    )
    assert trail[0].body is not None
    assert trail[0].body["limit"] == 120.0
    assert trail[0].body["readings"] == {"p99_latency_ms": 450.0}
    await states.forget({"other"})
    assert await states.read() == {}


async def test_one_postgres_replica_leads_until_it_goes(pg_schema: str) -> None:
    store = SqlPolicyStore(POSTGRES_URL, schema=pg_schema)
    key = int(uuid.uuid4().int % 2**31)  # a lock key of this test's own: others run side by side
    a = PostgresLeadership(store.engine, "a", key=key)
    b = PostgresLeadership(store.engine, "b", key=key)
    try:
        assert await a.hold()
        assert not await b.hold()
        assert await a.hold()
        await a.release()
        assert await b.hold()
        assert not await a.hold()
    finally:
        await a.release()
        await b.release()
        await store.close()


async def test_a_redis_lease_has_one_holder_and_expires(redis_prefix: str) -> None:
    client = aioredis.Redis.from_url(REDIS_URL)
    key = redis_prefix + "adaptive-leader"
    a = RedisLeadership(client, key, "a", ttl=0.3)
    b = RedisLeadership(client, key, "b", ttl=0.3)
    try:
        assert await a.hold()
        assert not await b.hold()
        assert await a.hold()  # renews
        deadline = time.monotonic() + 5
        while not await b.hold():  # a stopped renewing: its lease runs out
            assert time.monotonic() < deadline
        assert not await a.hold()
        await b.release()
        assert await a.hold()
    finally:
        await client.aclose()
