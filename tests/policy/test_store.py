"""The SQL store on SQLite and PostgreSQL: migrations, revisions, file ownership, replicas."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import sqlalchemy as sa

from policy.adapters.sql import SqlPolicyStore
from policy.structs import CheckInput, PolicyError
from tests.policy.conftest import POSTGRES_URL, PolicyFactory, eventually
from tests.policy.deciding import decide


def _accept(data: object) -> None:
    return None


@pytest.fixture(params=["sqlite", "postgresql"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> SqlPolicyStore:
    if request.param == "postgresql":
        made = SqlPolicyStore(POSTGRES_URL, schema=request.getfixturevalue("pg_schema"))
    else:
        made = SqlPolicyStore(f"sqlite:///{tmp_path / 'p.db'}")
    await made.migrate()
    await made.migrate()  # idempotent
    return made


async def test_migrations_use_their_own_version_table(store: SqlPolicyStore) -> None:
    engine = store._engine
    async with engine.connect() as conn:
        tables = await conn.run_sync(lambda c: sa.inspect(c).get_table_names())
        version = (await conn.execute(sa.text("SELECT version_num FROM alembic_version_policy"))).scalar()
    assert {
        "policy_items",
        "policy_revision",
        "policy_audit",
        "policy_adaptive_state",
        "alembic_version_policy",
    } <= set(tables)
    assert version == "policy_0002"
    await store.close()


async def test_revision_is_monotonic_and_refused_writes_leave_no_trace(store: SqlPolicyStore) -> None:
    assert await store.revision() == 0
    r1 = await store.put(
        "rule", "a", {"id": "a", "action": "deny"}, actor="t", origin="api", validate=_accept
    )
    r2 = await store.put(
        "rule", "b", {"id": "b", "action": "deny"}, actor="t", origin="api", validate=_accept
    )
    assert (r1, r2) == (1, 2)

    def refuse(data: object) -> None:
        raise PolicyError("no")

    with pytest.raises(PolicyError):
        await store.put("rule", "c", {"id": "c", "action": "deny"}, actor="t", origin="api", validate=refuse)
    assert await store.revision() == 2
    loaded = await store.load()
    assert [r["id"] for r in loaded.data["rules"]] == ["a", "b"]
    assert len(await store.audit(limit=10)) == 2
    await store.close()


async def test_file_import_is_idempotent_and_owns_its_items(store: SqlPolicyStore) -> None:
    data = {
        "rules": [{"id": "f1", "action": "deny"}, {"id": "f2", "action": "allow"}],
        "lists": [],
        "limits": [],
    }
    await store.put(
        "rule", "api1", {"id": "api1", "action": "deny"}, actor="t", origin="api", validate=_accept
    )
    rev = await store.sync_origin("file:a.yaml", data, actor="file", validate=_accept)
    assert await store.sync_origin("file:a.yaml", data, actor="file", validate=_accept) == rev
    # File rules come first (file order), then API rules.
    assert [r["id"] for r in (await store.load()).data["rules"]] == ["f1", "f2", "api1"]
    smaller = {"rules": [{"id": "f2", "action": "allow"}], "lists": [], "limits": []}
    assert await store.sync_origin("file:a.yaml", smaller, actor="file", validate=_accept) == rev + 1
    assert [r["id"] for r in (await store.load()).data["rules"]] == ["f2", "api1"]
    clash = {"rules": [{"id": "api1", "action": "allow"}], "lists": [], "limits": []}
    with pytest.raises(PolicyError, match="already defined by another source"):
        await store.sync_origin("file:b.yaml", clash, actor="file", validate=_accept)
    await store.close()


async def test_concurrent_writers_never_lose_a_revision(store: SqlPolicyStore) -> None:
    async def write(i: int) -> int:
        body = {"id": f"r{i}", "action": "deny"}
        return await store.put("rule", f"r{i}", body, actor="t", origin="api", validate=_accept)

    revisions = await asyncio.gather(*(write(i) for i in range(10)))
    assert sorted(revisions) == list(range(1, 11))
    assert len((await store.load()).data["rules"]) == 10
    await store.close()


async def test_a_second_replica_picks_up_changes_without_restart(
    policy_factory: PolicyFactory, pg_schema: str
) -> None:
    shared = {"database_url": POSTGRES_URL, "database_schema": pg_schema}
    writer = await policy_factory(**shared)
    reader = await policy_factory(**shared)
    assert (await decide(reader.part.service, CheckInput(path="/x"))).kind == "allow"
    rule = {"action": "deny", "match": {"request.path": {"exact": "/x"}}}
    assert (await writer.put("rules", "close-x", rule)).status_code == 200
    await eventually(
        lambda: reader.part.service.snapshot.rule_count == 1, what="replica picked up the change"
    )
    assert (await decide(reader.part.service, CheckInput(path="/x"))).rule_id == "close-x"
