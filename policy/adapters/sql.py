"""The policy store on SQLAlchemy 2 (async): SQLite by default, PostgreSQL in production.

Every write runs in one transaction that first bumps the revision row (taking the write lock), then
validates the whole would-be policy and only then writes: a refused change leaves nothing behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from policy.adapters.base import AuditEntry, BackendUnavailable, ItemKind, StoredPolicy, Validator
from policy.structs import ItemOwnedByFile, PolicyError
from remixer.kit.migrating import upgrade as alembic_upgrade

__all__ = ["SqlPolicyStore", "async_url", "metadata"]

metadata = sa.MetaData()

items = sa.Table(
    "policy_items",
    metadata,
    sa.Column("kind", sa.String(16), primary_key=True),
    sa.Column("name", sa.String(128), primary_key=True),
    sa.Column("position", sa.BigInteger, nullable=False),
    sa.Column("origin", sa.String(512), nullable=False),
    sa.Column("body", sa.Text, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
    sa.Column("updated_by", sa.String(256), nullable=False),
)
revision_row = sa.Table(
    "policy_revision",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("revision", sa.BigInteger, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
)
audit = sa.Table(
    "policy_audit",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True),
    sa.Column("at", sa.Float, nullable=False),
    sa.Column("actor", sa.String(256), nullable=False),
    sa.Column("action", sa.String(16), nullable=False),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("name", sa.String(128), nullable=False),
    sa.Column("revision", sa.BigInteger, nullable=False),
    sa.Column("body", sa.Text, nullable=True),
)

_SECTIONS: dict[str, str] = {"rule": "rules", "list": "lists", "limit": "limits", "adaptive": "adaptive"}
_KEY = {"rule": "id", "list": "name", "limit": "name", "adaptive": "name"}
MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"
MIGRATION_LOCK_WAIT = 120.0  # seconds a starting replica waits for another one's migrations


def async_url(url: str) -> str:
    """Map plain URLs onto the async drivers remixer ships (aiosqlite, asyncpg)."""
    for plain, driver in (
        ("sqlite://", "sqlite+aiosqlite://"),
        ("postgresql://", "postgresql+asyncpg://"),
        ("postgres://", "postgresql+asyncpg://"),
    ):
        if url.startswith(plain):
            return driver + url[len(plain) :]
    return url


class SqlPolicyStore:
    """Every call is bounded (`connect_timeout` to open a connection, `timeout` for the statements) and
    every failure of the store leaves as BackendUnavailable naming the store, never as a driver error."""

    def __init__(
        self, url: str, *, schema: str | None = None, connect_timeout: float = 2.0, timeout: float = 5.0
    ) -> None:
        self.url = async_url(url)
        self.schema = schema
        self._postgres = self.url.startswith("postgresql")
        connect_args: dict[str, Any] = {}
        if self._postgres:
            # asyncpg: `timeout` covers opening a connection (TCP and startup), `command_timeout`
            # each statement, so a store that accepts and never answers fails in seconds, not minutes.
            connect_args = {"timeout": connect_timeout, "command_timeout": timeout}
            if schema:
                connect_args["server_settings"] = {"search_path": schema}
        elif self.url.startswith("sqlite"):
            connect_args = {"timeout": timeout}  # how long to wait for another writer's lock
        self._engine: AsyncEngine = create_async_engine(
            self.url, connect_args=connect_args, pool_pre_ping=True, pool_timeout=timeout
        )
        # A backstop over a whole call, whatever the driver does: a connection, then the statements.
        self._deadline = connect_timeout + timeout
        self.name = make_url(self.url).render_as_string(hide_password=True) + (
            f" (schema {schema})" if schema else ""
        )

    @contextlib.asynccontextmanager
    async def _call(self, *, waits: float = 0.0) -> AsyncIterator[asyncio.Timeout]:
        """Translate every way the store can fail into BackendUnavailable naming the store.
        `waits`: seconds the call may also spend waiting for a lock another client holds."""
        try:
            async with asyncio.timeout(self._deadline + waits) as deadline:
                yield deadline
        except TimeoutError:
            raise BackendUnavailable(
                f"policy store {self.name} did not answer within {self._deadline + waits:g}s"
            ) from None
        except (SQLAlchemyError, OSError) as exc:
            raise BackendUnavailable(f"policy store {self.name} unavailable: {_brief(exc)}") from exc

    @property
    def engine(self) -> AsyncEngine:
        """For the adaptive limits' state table beside the policy (adapters/adaptive_state.py)."""
        return self._engine

    # ---- schema ------------------------------------------------------------------------------

    async def migrate(self) -> None:
        """Alembic upgrade to head (version table alembic_version_policy)."""
        async with self._call(waits=MIGRATION_LOCK_WAIT), self._engine.begin() as conn:
            if self._postgres:
                # Replicas starting together must not race each other's migrations: the lock is
                # waited for beyond the statement timeout (another replica may be migrating).
                await conn.execute(sa.text("SELECT 1"))  # opens the transaction the lock belongs to
                driver = (await conn.get_raw_connection()).driver_connection
                assert driver is not None
                await driver.execute("SELECT pg_advisory_xact_lock(7312024)", timeout=MIGRATION_LOCK_WAIT)
                if self.schema:
                    await conn.execute(sa.text(f'CREATE SCHEMA IF NOT EXISTS "{self.schema}"'))
            await conn.run_sync(self._upgrade)

    def _upgrade(self, sync_conn: sa.Connection) -> None:
        alembic_upgrade(sync_conn, MIGRATIONS, schema=self.schema)

    # ---- reads -------------------------------------------------------------------------------

    async def revision(self) -> int:
        async with self._call(), self._engine.connect() as conn:
            return await _current_revision(conn)

    async def load(self) -> StoredPolicy:
        async with self._call(), self._engine.connect() as conn:
            rev = await _current_revision(conn)
            data = await _read_all(conn)
            return StoredPolicy(revision=rev, data=data)

    async def audit(self, *, limit: int) -> Sequence[AuditEntry]:
        async with self._call(), self._engine.connect() as conn:
            rows = await conn.execute(sa.select(audit).order_by(audit.c.id.desc()).limit(limit))
            return [
                AuditEntry(
                    id=r.id,
                    at=r.at,
                    actor=r.actor,
                    action=r.action,
                    kind=r.kind,
                    name=r.name,
                    revision=r.revision,
                    body=json.loads(r.body) if r.body else None,
                )
                for r in rows
            ]

    # ---- writes ------------------------------------------------------------------------------

    async def put(
        self, kind: ItemKind, name: str, body: dict[str, Any], *, actor: str, origin: str, validate: Validator
    ) -> int:
        async with self._call() as deadline, self._engine.begin() as conn:
            rev = await _bump(conn)
            await _refuse_file_owned(conn, kind, name, origin)
            data = await _read_all(conn)
            section = data[_SECTIONS[kind]]
            key = _KEY[kind]
            replaced = False
            for i, existing in enumerate(section):
                if existing.get(key) == name:
                    section[i] = body
                    replaced = True
            if not replaced:
                section.append(body)
            await _validate(deadline, validate, data)
            now = time.time()
            text = json.dumps(body, sort_keys=True)
            updated = await conn.execute(
                items.update()
                .where(items.c.kind == kind, items.c.name == name)
                .values(body=text, origin=origin, updated_at=now, updated_by=actor)
            )
            if not updated.rowcount:
                position = (
                    await conn.execute(sa.select(sa.func.coalesce(sa.func.max(items.c.position), 0)))
                ).scalar()
                await conn.execute(
                    items.insert().values(
                        kind=kind,
                        name=name,
                        position=int(position or 0) + 1,
                        origin=origin,
                        body=text,
                        updated_at=now,
                        updated_by=actor,
                    )
                )
            await _audit(conn, actor=actor, action="put", kind=kind, name=name, revision=rev, body=text)
            return rev

    async def delete(self, kind: ItemKind, name: str, *, actor: str, validate: Validator) -> int | None:
        async with self._call() as deadline, self._engine.begin() as conn:
            exists = (
                await conn.execute(sa.select(items.c.name).where(items.c.kind == kind, items.c.name == name))
            ).first()
            if exists is None:
                return None
            rev = await _bump(conn)
            await _refuse_file_owned(conn, kind, name, "api")
            data = await _read_all(conn)
            key = _KEY[kind]
            data[_SECTIONS[kind]] = [x for x in data[_SECTIONS[kind]] if x.get(key) != name]
            await _validate(deadline, validate, data)
            await conn.execute(items.delete().where(items.c.kind == kind, items.c.name == name))
            await _audit(conn, actor=actor, action="delete", kind=kind, name=name, revision=rev, body=None)
            return rev

    async def sync_origin(
        self, origin: str, data: dict[str, list[dict[str, Any]]], *, actor: str, validate: Validator
    ) -> int:
        """Make the items owned by `origin` (a policy file) exactly `data`; no-op when nothing changed."""
        async with self._call() as deadline, self._engine.begin() as conn:
            rows = (await conn.execute(sa.select(items).order_by(items.c.position))).all()
            mine = {(r.kind, r.name): r for r in rows if r.origin == origin}
            others = {(r.kind, r.name) for r in rows if r.origin != origin}
            wanted: list[tuple[str, str, str]] = []
            for kind, section in _SECTIONS.items():
                for body in data.get(section, []):
                    name = str(body.get(_KEY[kind], ""))
                    wanted.append((kind, name, json.dumps(body, sort_keys=True)))
            wanted_keys = [(k, n) for k, n, _ in wanted]
            unchanged = set(wanted_keys) == set(mine) and all(mine[(k, n)].body == t for k, n, t in wanted)
            # File order is evaluation order: positions must follow it too.
            order = [(r.kind, r.name) for r in rows if r.origin == origin]
            if unchanged and order == wanted_keys:
                return await _current_revision(conn)
            clash = [f"{k} {n!r}" for k, n in wanted_keys if (k, n) in others]
            if clash:
                raise PolicyError(f"{origin}: {clash[0]} is already defined by another source")
            rev = await _bump(conn)
            merged = await _read_all(conn, exclude_origin=origin)
            for section in _SECTIONS.values():
                merged[section] = list(data.get(section, [])) + merged[section]
            await _validate(deadline, validate, merged)
            await conn.execute(items.delete().where(items.c.origin == origin))
            now = time.time()
            base = (
                await conn.execute(sa.select(sa.func.coalesce(sa.func.min(items.c.position), 0)))
            ).scalar()
            start = int(base or 0) - len(wanted) - 1
            for offset, (kind, name, text) in enumerate(wanted):
                await conn.execute(
                    items.insert().values(
                        kind=kind,
                        name=name,
                        position=start + offset,
                        origin=origin,
                        body=text,
                        updated_at=now,
                        updated_by=actor,
                    )
                )
            await _audit(
                conn, actor=actor, action="import", kind="file", name=origin[-128:], revision=rev, body=None
            )
            return rev

    async def close(self) -> None:
        await self._engine.dispose()


async def _validate(deadline: asyncio.Timeout, validate: Validator, data: dict[str, Any]) -> None:
    """Compile the would-be policy in a thread: a large one takes seconds of CPU, which must neither
    stall the event loop the Checks run on nor count against the store's deadline."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    await asyncio.to_thread(validate, data)
    when = deadline.when()
    if when is not None:
        deadline.reschedule(when + loop.time() - started)


async def _refuse_file_owned(conn: AsyncConnection, kind: str, name: str, origin: str) -> None:
    owner = (
        await conn.execute(sa.select(items.c.origin).where(items.c.kind == kind, items.c.name == name))
    ).scalar()
    if owner is not None and owner != origin and str(owner).startswith("file:"):
        raise ItemOwnedByFile(f"{kind} {name!r} is defined by {owner[5:]}: change it there")


async def _current_revision(conn: AsyncConnection) -> int:
    value = (await conn.execute(sa.select(revision_row.c.revision).where(revision_row.c.id == 1))).scalar()
    return int(value or 0)


async def _bump(conn: AsyncConnection) -> int:
    now = time.time()
    done = await conn.execute(
        revision_row.update()
        .where(revision_row.c.id == 1)
        .values(revision=revision_row.c.revision + 1, updated_at=now)
    )
    if not done.rowcount:
        await conn.execute(revision_row.insert().values(id=1, revision=1, updated_at=now))
    return await _current_revision(conn)


async def _read_all(
    conn: AsyncConnection, *, exclude_origin: str | None = None
) -> dict[str, list[dict[str, Any]]]:
    data: dict[str, list[dict[str, Any]]] = {section: [] for section in _SECTIONS.values()}
    query = sa.select(items.c.kind, items.c.body, items.c.origin).order_by(items.c.position)
    for row in await conn.execute(query):
        if exclude_origin is not None and row.origin == exclude_origin:
            continue
        body = json.loads(row.body)
        if row.kind == "rule":
            # Rows written while `match` was optional left out an empty one: it meant every request.
            body.setdefault("match", {})
        data[_SECTIONS[row.kind]].append(body)
    return data


async def _audit(
    conn: AsyncConnection, *, actor: str, action: str, kind: str, name: str, revision: int, body: str | None
) -> None:
    await conn.execute(
        audit.insert().values(
            at=time.time(), actor=actor, action=action, kind=kind, name=name, revision=revision, body=body
        )
    )


def _brief(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text[:300]
