"""Fixtures for the policy card: the Part running in-process (gRPC server, HTTP ext_authz listener,
admin router over ASGI), real PostgreSQL schemas and Redis key prefixes unique to each test."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
import redis
import sqlalchemy as sa
import yaml
from prometheus_client import CollectorRegistry

from policy.app import PolicyPart
from policy.settings import PolicySettings
from remixer.kit.admin import build_admin_app, token_guard
from remixer.kit.parts import PartContext, Record
from tests.waiting import eventually as eventually  # the policy tests import it from here

POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/test"
REDIS_URL = "redis://127.0.0.1:6379/0"
ADMIN_TOKEN = "test-admin-token"


class MemorySink:
    def __init__(self) -> None:
        self.records: list[Record] = []

    def offer(self, records: Sequence[Record]) -> int:
        self.records.extend(records)
        return len(records)

    async def put(self, records: Sequence[Record]) -> None:
        self.records.extend(records)


class MemorySinks:
    def __init__(self) -> None:
        self.sinks: dict[str, MemorySink] = {}

    def sink(self, stream: str) -> MemorySink:
        return self.sinks.setdefault(stream, MemorySink())


@dataclass
class RunningPolicy:
    part: PolicyPart
    grpc_port: int
    registry: CollectorRegistry
    sinks: MemorySinks
    admin: httpx.AsyncClient
    server: Any = field(repr=False)

    @property
    def http_port(self) -> int:
        port = self.part.http_port
        assert port
        return port

    def metric(self, name: str, **labels: str) -> float:
        return self.registry.get_sample_value(name, labels) or 0.0

    async def put(self, section: str, name: str, body: dict[str, Any]) -> httpx.Response:
        return await self.admin.put(
            f"/v1/{section}/{name}", json=body, headers={"authorization": f"Bearer {ADMIN_TOKEN}"}
        )


PolicyFactory = Callable[..., Awaitable[RunningPolicy]]


def write_policy(directory: Path, document: dict[str, Any] | str) -> Path:
    path = directory / f"policy-{uuid.uuid4().hex[:8]}.yaml"
    path.write_text(document if isinstance(document, str) else yaml.safe_dump(document, sort_keys=False))
    return path


@pytest.fixture
async def policy_factory(tmp_path: Path) -> AsyncIterator[PolicyFactory]:
    running: list[RunningPolicy] = []

    async def start(
        *,
        policy: dict[str, Any] | str | None = None,
        records: Any = None,
        max_body_bytes: int = 4 << 20,
        **overrides: Any,
    ) -> RunningPolicy:
        files = [write_policy(tmp_path, policy)] if policy is not None else []
        settings = PolicySettings(
            **{"policy_files": files, "http_address": "127.0.0.1:0", "reload_interval": 0.2, **overrides}
        )
        registry = CollectorRegistry()
        sinks = MemorySinks()
        context = PartContext(
            data_dir=tmp_path / f"data-{len(running)}",
            registry=registry,
            records=records if records is not None else sinks,
            require_writer=token_guard(ADMIN_TOKEN),
        )
        part = PolicyPart(settings, context)
        server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
        part.register_grpc(server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            await part.start()
        except BaseException:
            await server.stop(0)
            raise
        app = build_admin_app(
            registry=registry,
            routers=part.admin_routers(),
            readiness=lambda: {"policy": part.readiness()},
            alive=lambda: True,
            max_body_bytes=max_body_bytes,
        )
        admin = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://admin")
        run = RunningPolicy(
            part=part, grpc_port=port, registry=registry, sinks=sinks, admin=admin, server=server
        )
        running.append(run)
        return run

    yield start
    for run in running:
        await run.admin.aclose()
        await run.part.stop(1.0)
        await run.server.stop(0.5)


@pytest.fixture(scope="session")
def pg_schemas() -> Iterator[list[str]]:
    """The schemas pg_schema handed out, dropped when the run ends."""
    names: list[str] = []
    yield names
    if names:
        asyncio.run(_drop_schemas(names))


@pytest.fixture
def pg_schema(pg_schemas: list[str]) -> str:
    """A PostgreSQL schema of our own, dropped at the end of the run, not at the test's teardown: a policy
    part the test started (policy_factory, often torn down after this fixture) may still hold a session
    idle in a transaction on it, which a DROP from this thread would wait on forever while the part's
    event loop waits for the teardown."""
    name = f"policy_test_{uuid.uuid4().hex[:10]}"
    pg_schemas.append(name)
    return name


async def _drop_schemas(names: Sequence[str]) -> None:
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = create_async_engine(POSTGRES_URL.replace("postgresql://", "postgresql+asyncpg://"))
    try:
        for name in names:
            async with engine.begin() as conn:
                # Every part has stopped by now: a lock still held is a leaked session, an error, not a hang.
                await conn.execute(sa.text("SET LOCAL lock_timeout = '30s'"))
                await conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{name}" CASCADE'))
    finally:
        await engine.dispose()


@pytest.fixture
def redis_prefix() -> Iterator[str]:
    prefix = f"remixer-test:{uuid.uuid4().hex[:10]}:"
    yield prefix
    client = redis.Redis.from_url(REDIS_URL)
    keys = list(client.scan_iter(match=prefix + "*"))
    if keys:
        client.delete(*keys)
    client.close()
