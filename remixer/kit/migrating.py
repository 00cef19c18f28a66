"""Alembic, run in-process: each card keeps its own migrations folder and version table, so the
cards can share one database without their histories colliding. Shared here so the three cards run
migrations the same way."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config


def upgrade(connection: Any, migrations: Path, *, schema: str | None = None) -> None:
    """Upgrade to head on an open synchronous connection (use inside `conn.run_sync`)."""
    config = Config()
    config.set_main_option("script_location", str(migrations))
    config.attributes["connection"] = connection
    config.attributes["schema"] = schema
    command.upgrade(config, "head")


def run_env(metadata: Any, version_table: str, **options: Any) -> None:
    """The body of a card's migrations/env.py: always online, on the connection `upgrade` passed."""
    from alembic import context

    config = context.config
    context.configure(
        connection=config.attributes["connection"],
        target_metadata=metadata,
        version_table=version_table,
        version_table_schema=config.attributes.get("schema"),
        **options,
    )
    with context.begin_transaction():
        context.run_migrations()
