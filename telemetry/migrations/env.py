"""Alembic environment: always run programmatically with a connection in config.attributes."""

from __future__ import annotations

from alembic import context

from remixer.calledges import metadata

VERSION_TABLE = "alembic_version_telemetry"

connection = context.config.attributes["connection"]
schema = context.config.attributes.get("schema")
context.configure(
    connection=connection,
    target_metadata=metadata,
    version_table=VERSION_TABLE,
    version_table_schema=schema,
)
with context.begin_transaction():
    context.run_migrations()
