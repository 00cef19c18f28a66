"""A PostgreSQL store that hangs (accepts connections, never answers) or refuses them, failed from
outside through a TCP proxy process: admin calls answer 503 naming the store within the store timeouts,
the reload loop logs and counts the failure, Checks keep being decided from the last snapshot."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import Any

import pytest

from policy.structs import CheckInput
from tests.policy.conftest import ADMIN_TOKEN, PolicyFactory, RunningPolicy, eventually
from tests.policy.deciding import decide
from tests.realparts.tcpproxy import TcpProxy

AUTH = {"authorization": f"Bearer {ADMIN_TOKEN}"}
POLICY = {"rules": [{"id": "deny-admin", "action": "deny", "match": {"request.path": {"prefix": "/admin"}}}]}
CONNECT_TIMEOUT, STATEMENT_TIMEOUT = 0.5, 1.0
# The slowest a store call may answer: both timeouts, plus room for a loaded CI machine.
BOUND = CONNECT_TIMEOUT + STATEMENT_TIMEOUT + 1.5


@pytest.fixture
def proxy() -> Iterator[TcpProxy]:
    made = TcpProxy("127.0.0.1", 5432)
    yield made
    made.stop()


async def _through(proxy: TcpProxy, policy_factory: PolicyFactory, schema: str) -> RunningPolicy:
    return await policy_factory(
        policy=POLICY,
        database_url=f"postgresql://postgres@127.0.0.1:{proxy.port}/test",
        database_schema=schema,
        store_connect_timeout=CONNECT_TIMEOUT,
        store_timeout=STATEMENT_TIMEOUT,
    )


async def _timed(call: Any) -> tuple[Any, float]:
    started = time.monotonic()
    result = await call
    return result, time.monotonic() - started


@pytest.mark.parametrize("fault", ["frozen", "refused"])
async def test_a_failed_store_answers_503_naming_it_fast_and_checks_go_on(
    policy_factory: PolicyFactory,
    pg_schema: str,
    proxy: TcpProxy,
    caplog: pytest.LogCaptureFixture,
    fault: str,
) -> None:
    run = await _through(proxy, policy_factory, pg_schema)
    admin, service = run.admin, run.part.service
    errors_before = run.metric("remixer_policy_reload_errors_total", source="store")
    caplog.set_level(logging.WARNING, logger="remixer.policy")
    if fault == "frozen":
        proxy.freeze()
    else:
        proxy.stop()

    rule = {"action": "deny", "match": {"request.path": {"prefix": "/x"}}}
    written, took = await _timed(admin.put("/v1/rules/new", json=rule, headers=AUTH))
    assert written.status_code == 503, written.text
    assert f"127.0.0.1:{proxy.port}/test (schema {pg_schema})" in written.json()["detail"]
    assert took < BOUND
    audit, took = await _timed(admin.get("/v1/policy/audit"))
    assert audit.status_code == 503
    assert "policy store postgresql+asyncpg://postgres@127.0.0.1" in audit.json()["detail"]
    assert took < BOUND
    revision, took = await _timed(admin.get("/v1/policy/revision"))
    assert revision.status_code == 200
    assert revision.json()["store_revision"] is None
    assert took < BOUND

    await eventually(
        lambda: run.metric("remixer_policy_reload_errors_total", source="store") > errors_before,
        what="a counted reload error",
    )
    said = [r.getMessage() for r in caplog.records if r.name == "remixer.policy"]
    expected = "did not answer within" if fault == "frozen" else "unavailable"
    assert any(expected in line and "serving revision" in line for line in said), said
    for _ in range(100):
        decision, took = await _timed(decide(service, CheckInput(method="GET", path="/admin/1")))
        assert decision.rule_id == "deny-admin"
        # A check that waited on the store at all would take at least its connect timeout; a fixed 0.1 s
        # was also what a loaded machine's scheduling pauses reach.
        assert took < CONNECT_TIMEOUT

    if fault == "frozen":
        proxy.thaw()
        await eventually(lambda: service.staleness() < 0.5, within=BOUND * 3, what="store recovery")
        again = await admin.put("/v1/rules/new", json=rule, headers=AUTH)
        assert again.status_code == 200, again.text


async def test_the_store_password_never_shows_in_errors(
    policy_factory: PolicyFactory, pg_schema: str
) -> None:
    """A store refusing connections: the message names it, without the password in its URL."""
    from remixer.kit.envoy import free_port

    port = free_port()
    run = await policy_factory(policy=POLICY, store_connect_timeout=CONNECT_TIMEOUT)
    store = type(run.part.service.store)(f"postgresql://remixer:s3cret-pw@127.0.0.1:{port}/db")
    with pytest.raises(
        Exception, match=r"policy store postgresql\+asyncpg://remixer:\*\*\*@127.0.0.1"
    ) as err:
        await store.revision()
    assert "s3cret-pw" not in str(err.value)
    assert type(err.value).__name__ == "BackendUnavailable"
    await store.close()


async def test_a_starting_replica_waits_for_another_ones_migration(pg_schema: str) -> None:
    """The migration lock is waited for beyond the statement timeout: replicas start together."""
    import asyncio

    import sqlalchemy as sa
    from sqlalchemy.ext.asyncio import create_async_engine

    from policy.adapters.sql import SqlPolicyStore
    from tests.policy.conftest import POSTGRES_URL

    holder = create_async_engine(POSTGRES_URL.replace("postgresql://", "postgresql+asyncpg://"))
    store = SqlPolicyStore(
        POSTGRES_URL, schema=pg_schema, connect_timeout=CONNECT_TIMEOUT, timeout=STATEMENT_TIMEOUT
    )
    hold = CONNECT_TIMEOUT + STATEMENT_TIMEOUT + 1.5
    try:
        async with holder.begin() as conn:
            await conn.execute(sa.text("SELECT pg_advisory_xact_lock(7312024)"))
            migrating = asyncio.create_task(store.migrate())
            await asyncio.sleep(hold)  # the other replica's migration takes longer than any statement may
            assert not migrating.done()
        _, took = await _timed(migrating)
        assert took < BOUND
        assert await store.revision() == 0
    finally:
        await store.close()
        await holder.dispose()
