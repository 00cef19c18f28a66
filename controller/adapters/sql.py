"""The dependency TTL store (our tables, migrated by Alembic) and the reader of the call-edge table."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import (
    Column,
    Connection,
    Float,
    Integer,
    MetaData,
    String,
    Table,
    delete,
    inspect,
    select,
    tuple_,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from controller.core.edges import CallEdgeRow
from controller.errors import SourceUnavailable, UsageError
from controller.structs import StoredDependency, WorkloadInfo, WorkloadRef
from remixer.kit.calledges import call_edges
from remixer.kit.migrating import upgrade as alembic_upgrade

VERSION_TABLE = "alembic_version_controller"
MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"

metadata = MetaData()

dependencies = Table(
    "controller_dependencies",
    metadata,
    Column("namespace", String(63), primary_key=True),
    Column("workload", String(253), primary_key=True),
    Column("host", String(320), primary_key=True),
    # Unix seconds: plain numbers compare the same on SQLite and PostgreSQL.
    Column("first_seen", Float, nullable=False),
    Column("last_seen", Float, nullable=False),
)

workloads = Table(
    "controller_workloads",
    metadata,
    Column("namespace", String(63), primary_key=True),
    Column("workload", String(253), primary_key=True),
    # JSON list of [label, value] pairs that select the workload's pods.
    Column("selector", String(4000), nullable=False),
    Column("last_seen", Float, nullable=False),
)

runs = Table(
    "controller_runs",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("at", Float, nullable=False),
    # Which namespaces the run covered ("*" for all): the volume guard compares like with like.
    Column("scope", String(2000), nullable=False),
    Column("edges", Integer, nullable=False),
    Column("written", Integer, nullable=False),
)

_BATCH = 2000


def default_url(data_dir: Path) -> str:
    return f"sqlite+aiosqlite:///{data_dir / 'controller.db'}"


def async_url(url: str) -> str:
    """The async-driver form of a database URL, so sync-style URLs (as telemetry's) work too."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise ValueError(f"{url!r} is not a database URL (e.g. sqlite:///path or postgresql://...)")
    base = scheme.split("+", 1)[0]
    if base == "sqlite":
        return f"sqlite+aiosqlite://{rest}"
    if base in ("postgresql", "postgres"):
        return f"postgresql+asyncpg://{rest}"
    return url


def _upgrade(connection: Connection, schema: str | None) -> None:
    alembic_upgrade(connection, MIGRATIONS, schema=schema)


def _insert(dialect: str, table: Table) -> Any:
    return postgresql.insert(table) if dialect == "postgresql" else sqlite.insert(table)


class DependencyStore:
    def __init__(self, url: str, *, schema: str | None = None) -> None:
        self.url = url
        self.schema = schema
        execution_options = {"schema_translate_map": {None: schema}} if schema else {}
        try:
            self.engine: AsyncEngine = create_async_engine(
                async_url(url), execution_options=execution_options
            )
        except (ValueError, ImportError, SQLAlchemyError) as error:
            raise UsageError(f"database URL is not usable: {error}") from None

    async def migrate(self) -> None:
        if self.url.startswith("sqlite") and ":///" in self.url:
            Path(self.url.split(":///", 1)[1]).parent.mkdir(parents=True, exist_ok=True)
        try:
            async with self.engine.begin() as connection:
                await connection.run_sync(_upgrade, self.schema)
        except SQLAlchemyError as error:
            raise SourceUnavailable(
                f"controller database {self._safe_url()} failed: {error.__class__.__name__}"
            ) from None

    def _safe_url(self) -> str:
        from sqlalchemy.engine import make_url

        return make_url(self.url).render_as_string(hide_password=True)

    async def load(
        self, *, scope: str = "*"
    ) -> tuple[list[StoredDependency], dict[WorkloadRef, WorkloadInfo], int | None]:
        """Stored dependencies, remembered selectors, and the edge count of the last good run."""
        async with self.engine.connect() as connection:
            dep_rows = (await connection.execute(select(dependencies))).all()
            wl_rows = (await connection.execute(select(workloads))).all()
            last = (
                await connection.execute(
                    select(runs.c.edges).where(runs.c.scope == scope).order_by(runs.c.id.desc()).limit(1)
                )
            ).first()
        deps = [
            StoredDependency(WorkloadRef(r.namespace, r.workload), r.host, r.first_seen, r.last_seen)
            for r in dep_rows
        ]
        infos = {}
        for row in wl_rows:
            ref = WorkloadRef(row.namespace, row.workload)
            selector = tuple((k, v) for k, v in json.loads(row.selector))
            infos[ref] = WorkloadInfo(ref, selector, last_seen=row.last_seen)
        return deps, infos, (last.edges if last else None)

    async def save(
        self,
        *,
        upserts: Sequence[StoredDependency],
        expired: Iterable[StoredDependency],
        infos: Iterable[WorkloadInfo],
        now: float,
        edges: int,
        written: int,
        scope: str = "*",
        forget_workloads_before: float | None = None,
    ) -> None:
        async with self.engine.begin() as connection:
            if forget_workloads_before is not None:
                await connection.execute(
                    delete(workloads).where(workloads.c.last_seen < forget_workloads_before)
                )
            dialect = connection.dialect.name
            for start in range(0, len(upserts), _BATCH):
                chunk = upserts[start : start + _BATCH]
                statement = _insert(dialect, dependencies)
                statement = statement.on_conflict_do_update(
                    index_elements=["namespace", "workload", "host"],
                    set_={"last_seen": statement.excluded.last_seen},
                )
                await connection.execute(
                    statement,
                    [
                        {
                            "namespace": d.workload.namespace,
                            "workload": d.workload.name,
                            "host": d.host,
                            "first_seen": d.first_seen,
                            "last_seen": d.last_seen,
                        }
                        for d in chunk
                    ],
                )
            expired_keys = [(d.workload.namespace, d.workload.name, d.host) for d in expired]
            for start in range(0, len(expired_keys), _BATCH):
                await connection.execute(
                    delete(dependencies).where(
                        tuple_(dependencies.c.namespace, dependencies.c.workload, dependencies.c.host).in_(
                            expired_keys[start : start + _BATCH]
                        )
                    )
                )
            info_rows = [
                {
                    "namespace": info.workload.namespace,
                    "workload": info.workload.name,
                    "selector": json.dumps([list(pair) for pair in info.selector]),
                    "last_seen": now,
                }
                for info in infos
            ]
            for start in range(0, len(info_rows), _BATCH):
                statement = _insert(dialect, workloads)
                statement = statement.on_conflict_do_update(
                    index_elements=["namespace", "workload"],
                    set_={"selector": statement.excluded.selector, "last_seen": statement.excluded.last_seen},
                )
                await connection.execute(statement, info_rows[start : start + _BATCH])
            await connection.execute(runs.insert().values(at=now, scope=scope, edges=edges, written=written))

    async def close(self) -> None:
        await self.engine.dispose()


class CallEdgeReader:
    """Reads telemetry's call-edge table (remixer.kit.calledges); an absent table means no such input."""

    def __init__(self, engine: AsyncEngine, schema: str | None = None) -> None:
        self.engine = engine
        self.schema = schema

    async def read(self, *, since: float, new_only: bool = False) -> list[CallEdgeRow]:
        """Rows seen since `since`; with `new_only`, rows first seen since then (the loop's cheap poll)."""
        cutoff = dt.datetime.fromtimestamp(since, tz=dt.UTC)
        column = call_edges.c.first_seen if new_only else call_edges.c.last_seen
        try:
            async with self.engine.connect() as connection:
                present = await connection.run_sync(
                    lambda c: inspect(c).has_table(call_edges.name, schema=self.schema)
                )
                if not present:
                    return []
                rows = (await connection.execute(select(call_edges).where(column >= cutoff))).all()
        except SQLAlchemyError as error:
            raise SourceUnavailable(f"call-edge database failed: {error.__class__.__name__}") from None
        return [
            CallEdgeRow(
                source_namespace=row.source_namespace,
                source_workload=row.source_workload,
                destination_service=row.destination_service,
                destination_port=row.destination_port,
                protocol=row.protocol,
                last_seen=_epoch(row.last_seen),
                count=int(row._mapping["count"]),
            )
            for row in rows
        ]


def _epoch(value: dt.datetime) -> float:
    # SQLite hands back naive datetimes; they were written as UTC.
    return (value if value.tzinfo else value.replace(tzinfo=dt.UTC)).timestamp()
