"""Adaptive limits in the store: the limits each controller last set (every replica enforces them), the
audit of every change with the signal that caused it, and which replica computes.

One replica computes (the leader): with PostgreSQL it holds a session advisory lock on a connection of
its own, with Redis a lease it renews each tick; SQLite is one host, where worker 0 leads. The others
read the state table every tick and enforce what it says.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import sqlalchemy as sa
from redis.exceptions import RedisError
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from policy.adapters.base import BackendUnavailable
from policy.adapters.sql import audit as audit_table
from policy.adapters.sql import metadata, revision_row

__all__ = [
    "AdaptiveState",
    "AdaptiveStateStore",
    "Leadership",
    "PostgresLeadership",
    "RedisLeadership",
    "SoleLeadership",
    "replica_identity",
]

state_table = sa.Table(
    "policy_adaptive_state",
    metadata,
    sa.Column("name", sa.String(128), primary_key=True),
    sa.Column("limit_rps", sa.Float, nullable=False),
    sa.Column("callers", sa.Text, nullable=False),
    sa.Column("unknown_rps", sa.Float, nullable=False),
    sa.Column("mode", sa.String(16), nullable=False),
    sa.Column("step", sa.Text, nullable=False),
    sa.Column("leader", sa.String(256), nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
)

# pg_advisory_lock key of the adaptive leader (the migration lock is 7312024).
LEADER_LOCK = 7312025


@dataclass(frozen=True, slots=True)
class AdaptiveState:
    """What one rule's controller decided last: the total, each known caller's part, the rest's."""

    name: str
    limit: float
    callers: Mapping[str, float]
    unknown: float
    mode: str  # track | hold | decay
    step: Mapping[str, Any]  # the signal readings and P/I/D terms behind it
    leader: str
    updated_at: float


def replica_identity() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class AdaptiveStateStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def read(self) -> dict[str, AdaptiveState]:
        try:
            async with self._engine.connect() as conn:
                rows = (await conn.execute(sa.select(state_table))).all()
        except (SQLAlchemyError, OSError) as exc:
            raise BackendUnavailable(f"adaptive state unreadable: {type(exc).__name__}") from exc
        return {
            r.name: AdaptiveState(
                name=r.name,
                limit=r.limit_rps,
                callers=json.loads(r.callers),
                unknown=r.unknown_rps,
                mode=r.mode,
                step=json.loads(r.step),
                leader=r.leader,
                updated_at=r.updated_at,
            )
            for r in rows
        }

    async def write(self, state: AdaptiveState, *, changed: bool) -> None:
        """Store the rule's state; when the enforced limit changed, audit it with its cause."""
        values = {
            "limit_rps": state.limit,
            "callers": json.dumps(dict(state.callers), sort_keys=True),
            "unknown_rps": state.unknown,
            "mode": state.mode,
            "step": json.dumps(dict(state.step), sort_keys=True),
            "leader": state.leader[:256],
            "updated_at": state.updated_at,
        }
        try:
            async with self._engine.begin() as conn:
                done = await conn.execute(
                    state_table.update().where(state_table.c.name == state.name).values(**values)
                )
                if not done.rowcount:
                    await conn.execute(state_table.insert().values(name=state.name, **values))
                if changed:
                    await _audit(conn, state)
        except (SQLAlchemyError, OSError) as exc:
            raise BackendUnavailable(f"adaptive state not written: {type(exc).__name__}") from exc

    async def forget(self, keep: set[str]) -> None:
        """Drop the state of rules that no longer exist."""
        try:
            async with self._engine.begin() as conn:
                await conn.execute(state_table.delete().where(state_table.c.name.not_in(keep)))
        except (SQLAlchemyError, OSError) as exc:
            raise BackendUnavailable(f"adaptive state not pruned: {type(exc).__name__}") from exc


async def _audit(conn: AsyncConnection, state: AdaptiveState) -> None:
    revision = (await conn.execute(sa.select(revision_row.c.revision).where(revision_row.c.id == 1))).scalar()
    body = {
        "limit": round(state.limit, 3),
        "callers": {k: round(v, 3) for k, v in state.callers.items()},
        "unknown": round(state.unknown, 3),
        "mode": state.mode,
        **state.step,
    }
    await conn.execute(
        audit_table.insert().values(
            at=time.time(),
            actor=f"adaptive:{state.leader}"[:256],
            action="adapt",
            kind="adaptive",
            name=state.name,
            revision=int(revision or 0),
            body=json.dumps(body, sort_keys=True),
        )
    )


class Leadership(Protocol):
    identity: str

    async def hold(self) -> bool:
        """True while this replica leads; tries to become leader when it does not."""
        ...

    async def release(self) -> None: ...


class SoleLeadership:
    """One host (SQLite): the first worker leads."""

    def __init__(self, identity: str, *, leads: bool) -> None:
        self.identity = identity
        self._leads = leads

    async def hold(self) -> bool:
        return self._leads

    async def release(self) -> None:
        return None


class PostgresLeadership:
    """A session advisory lock on a connection of our own: the lock goes when the replica does."""

    def __init__(self, engine: AsyncEngine, identity: str, *, key: int = LEADER_LOCK) -> None:
        self.identity = identity
        self._engine = engine
        self._key = key
        self._conn: AsyncConnection | None = None
        self._held = False

    async def hold(self) -> bool:
        try:
            if self._conn is None:
                self._conn = await self._engine.connect()
            if self._held:
                await self._conn.execute(sa.text("SELECT 1"))
                return True
            got = (
                await self._conn.execute(sa.text("SELECT pg_try_advisory_lock(:k)"), {"k": self._key})
            ).scalar()
            await self._conn.commit()
            self._held = bool(got)
            return self._held
        except (SQLAlchemyError, OSError):
            await self.release()
            return False

    async def release(self) -> None:
        self._held = False
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(SQLAlchemyError, OSError):
                # Closing the session releases the lock; the pool must not hand it out still held.
                await conn.invalidate()
                await conn.close()


_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""
_DROP = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


class RedisLeadership:
    """A lease (SET NX PX) renewed each tick; a leader that stops renewing loses it after `ttl`."""

    def __init__(self, client: Any, key: str, identity: str, *, ttl: float) -> None:
        self.identity = identity
        self._client = client
        self._key = key
        self._ttl_ms = max(1, int(ttl * 1000))
        self._renew = client.register_script(_RENEW)
        self._drop = client.register_script(_DROP)

    async def hold(self) -> bool:
        try:
            if await self._renew(keys=[self._key], args=[self.identity, self._ttl_ms]):
                return True
            return bool(await self._client.set(self._key, self.identity, nx=True, px=self._ttl_ms))
        except (RedisError, OSError):
            return False

    async def release(self) -> None:
        with contextlib.suppress(RedisError, OSError):
            await self._drop(keys=[self._key], args=[self.identity])
