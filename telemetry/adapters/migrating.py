"""Bring the call-edge database to the newest schema (Alembic, run in-process at start)."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy.ext.asyncio import AsyncEngine

from remixer.kit.migrating import upgrade as alembic_upgrade

MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"


async def upgrade(engine: AsyncEngine, *, schema: str | None = None) -> None:
    async with engine.begin() as conn:
        await conn.run_sync(lambda sync_conn: alembic_upgrade(sync_conn, MIGRATIONS, schema=schema))
