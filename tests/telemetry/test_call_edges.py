"""Call edges observed in access logs, upserted in batches into SQLite (default) and PostgreSQL."""

from __future__ import annotations

import uuid
from pathlib import Path

import grpc
import pytest
from envoy.service.accesslog.v3 import als_pb2
from google.protobuf import struct_pb2
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import create_async_engine

from remixer.kit.calledges import call_edges
from telemetry.settings import CallEdgeSettings, TelemetrySettings
from tests.telemetry.harness import RunningTelemetry, running_telemetry

METHOD = "/envoy.service.accesslog.v3.AccessLogService/StreamAccessLogs"
POSTGRES = "postgresql://postgres@127.0.0.1:5432/test"


def message() -> bytes:
    msg = als_pb2.StreamAccessLogsMessage()
    msg.identifier.log_name = "http_envoy_accesslog"
    msg.identifier.node.id = "sidecar~10.0.0.1~frontend-1.shop~shop.svc.cluster.local"
    meta = struct_pb2.Struct()
    meta.update({"NAMESPACE": "shop", "WORKLOAD_NAME": "frontend", "LABELS": {"app": "frontend"}})
    msg.identifier.node.metadata.CopyFrom(meta)
    for cluster, authority, count in (
        ("outbound|8080||cart.shop.svc.cluster.local", "cart:8080", 3),
        ("PassthroughCluster", "api.stripe.com:443", 2),  # left the mesh: resolved from :authority
        ("inbound|80||", "frontend", 5),  # server side: not a call this workload made
    ):
        for _ in range(count):
            e = msg.http_logs.log_entry.add()
            e.common_properties.upstream_cluster = cluster
            e.request.authority = authority
            e.response.response_code.value = 200
    return msg.SerializeToString()


async def send(tel: RunningTelemetry) -> None:
    async with grpc.aio.insecure_channel(tel.target) as channel:
        rpc = channel.stream_unary(METHOD, request_serializer=None, response_deserializer=None)()
        await rpc.write(message())
        await rpc.done_writing()
        await rpc


async def rows(tel: RunningTelemetry) -> dict[tuple[str, str, str, int, str], int]:
    assert tel.part.edge_store is not None
    async with tel.part.edge_store.engine.connect() as conn:
        result = await conn.execute(select(call_edges))
        return {
            (
                r.source_namespace,
                r.source_workload,
                r.destination_service,
                r.destination_port,
                r.protocol,
            ): r.count
            for r in result
        }


async def check_edges(tel: RunningTelemetry) -> None:
    await send(tel)
    await tel.part.pipeline.flush_edges()
    assert await rows(tel) == {
        ("shop", "frontend", "cart.shop.svc.cluster.local", 8080, "http"): 3,
        ("shop", "frontend", "api.stripe.com", 443, "http"): 2,
    }
    await send(tel)
    await send(tel)
    await tel.part.pipeline.flush_edges()  # one batched upsert for both messages
    counts = await rows(tel)
    assert counts[("shop", "frontend", "cart.shop.svc.cluster.local", 8080, "http")] == 9
    assert tel.value("remixer_telemetry_call_edges_written_total") == 4


async def test_call_edges_in_sqlite_by_default(tmp_path: Path) -> None:
    async with running_telemetry(tmp_path) as tel:
        await check_edges(tel)
    assert (tmp_path / "edges.db").exists()


@pytest.fixture
async def pg_schema() -> str:
    schema = f"telemetry_test_{uuid.uuid4().hex[:10]}"
    engine = create_async_engine(POSTGRES.replace("postgresql://", "postgresql+asyncpg://"))
    async with engine.begin() as conn:
        await conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    yield schema
    async with engine.begin() as conn:
        await conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
    await engine.dispose()


async def test_call_edges_in_postgresql(tmp_path: Path, pg_schema: str) -> None:
    settings = TelemetrySettings(call_edges=CallEdgeSettings(database_url=POSTGRES, schema_name=pg_schema))
    async with running_telemetry(tmp_path, settings=settings) as tel:
        await check_edges(tel)
        assert tel.part.edge_store is not None
        async with tel.part.edge_store.engine.connect() as conn:
            tables = await conn.execute(
                text("SELECT table_name FROM information_schema.tables WHERE table_schema = :s"),
                {"s": pg_schema},
            )
            assert {r[0] for r in tables} == {"remixer_call_edges", "alembic_version_telemetry"}


async def test_a_failed_flush_is_merged_into_the_next_one(tmp_path: Path, pg_schema: str) -> None:
    # The table is renamed away under the running writer (PostgreSQL answers "relation does not exist"),
    # more calls arrive, the table comes back: the next flush writes both batches' counts in one upsert,
    # first_seen from the failed batch, last_seen from the later one.
    settings = TelemetrySettings(
        call_edges=CallEdgeSettings(database_url=POSTGRES, schema_name=pg_schema, flush_interval_s=3600)
    )
    admin = create_async_engine(POSTGRES.replace("postgresql://", "postgresql+asyncpg://"))
    table = f'"{pg_schema}".remixer_call_edges'
    try:
        async with running_telemetry(tmp_path, settings=settings) as tel:
            async with admin.begin() as conn:
                await conn.execute(text(f"ALTER TABLE {table} RENAME TO away"))
            await send(tel)
            await tel.part.pipeline.flush_edges()
            assert tel.value("remixer_telemetry_call_edge_errors_total") == 1
            assert tel.value("remixer_telemetry_call_edges_written_total") == 0
            await send(tel)
            async with admin.begin() as conn:
                await conn.execute(text(f'ALTER TABLE "{pg_schema}".away RENAME TO remixer_call_edges'))
            await tel.part.pipeline.flush_edges()
            assert tel.value("remixer_telemetry_call_edge_errors_total") == 1
            assert tel.value("remixer_telemetry_call_edges_written_total") == 2  # one row per edge
            assert await rows(tel) == {
                ("shop", "frontend", "cart.shop.svc.cluster.local", 8080, "http"): 6,
                ("shop", "frontend", "api.stripe.com", 443, "http"): 4,
            }
            async with admin.connect() as conn:
                seen = (await conn.execute(text(f"SELECT first_seen, last_seen FROM {table}"))).all()
            assert all(first < last for first, last in seen)
            await tel.part.pipeline.flush_edges()  # nothing pending: nothing written twice
            assert tel.value("remixer_telemetry_call_edges_written_total") == 2
    finally:
        await admin.dispose()
