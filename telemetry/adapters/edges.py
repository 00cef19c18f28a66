"""The call-edge table (remixer.kit.calledges) written with batched upserts; SQLite or PostgreSQL."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from sqlalchemy import case
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from remixer.kit.calledges import call_edges
from telemetry.structs import CallEdgeKey, EdgeCounts

_KEY_COLUMNS = ["source_namespace", "source_workload", "destination_service", "destination_port", "protocol"]


def async_url(database_url: str | None, data_dir: Path) -> str:
    """The configured URL with an async driver; unset means SQLite DATA_DIR/edges.db."""
    if not database_url:
        return f"sqlite+aiosqlite:///{data_dir / 'edges.db'}"
    for plain, driver in (
        ("sqlite://", "sqlite+aiosqlite://"),
        ("postgresql://", "postgresql+asyncpg://"),
        ("postgres://", "postgresql+asyncpg://"),
    ):
        if database_url.startswith(plain):
            return driver + database_url[len(plain) :]
    return database_url


class SqlCallEdgeStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._insert = postgresql.insert if engine.dialect.name == "postgresql" else sqlite.insert

    @classmethod
    def connect(cls, url: str, *, schema: str | None = None) -> SqlCallEdgeStore:
        # SQLite: no pooled connection, so no aiosqlite worker thread polls between flushes.
        engine = (
            create_async_engine(url, poolclass=NullPool)
            if url.startswith("sqlite")
            else create_async_engine(url)
        )
        if schema:
            engine = engine.execution_options(schema_translate_map={None: schema})
        return cls(engine)

    @property
    def engine(self) -> AsyncEngine:
        return self._engine

    async def upsert(self, edges: Mapping[CallEdgeKey, EdgeCounts]) -> int:
        rows = [
            {
                "source_namespace": key.source_namespace[:253],
                "source_workload": key.source_workload[:253],
                "destination_service": key.destination_service[:253],
                "destination_port": key.destination_port,
                "protocol": key.protocol,
                "first_seen": counts.first_seen,
                "last_seen": counts.last_seen,
                "count": counts.count,
            }
            for key, counts in sorted(edges.items(), key=lambda kv: _sort_key(kv[0]))
        ]
        if not rows:
            return 0
        stmt = self._insert(call_edges)
        excluded = stmt.excluded
        stmt = stmt.on_conflict_do_update(
            index_elements=_KEY_COLUMNS,
            set_={
                "count": call_edges.c.count + excluded["count"],
                "last_seen": case(
                    (excluded.last_seen > call_edges.c.last_seen, excluded.last_seen),
                    else_=call_edges.c.last_seen,
                ),
                "first_seen": case(
                    (excluded.first_seen < call_edges.c.first_seen, excluded.first_seen),
                    else_=call_edges.c.first_seen,
                ),
            },
        )
        async with self._engine.begin() as conn:
            await conn.execute(stmt, rows)
        return len(rows)

    async def close(self) -> None:
        await self._engine.dispose()


def _sort_key(key: CallEdgeKey) -> tuple[str, str, str, int, str]:
    # A stable order keeps concurrent upserts from different workers from deadlocking (PostgreSQL).
    return (
        key.source_namespace,
        key.source_workload,
        key.destination_service,
        key.destination_port,
        key.protocol,
    )
