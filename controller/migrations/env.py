"""Alembic environment for the controller's own tables; run through controller.adapters.sql.

The caller hands over an open connection (config.attributes["connection"]); the version table
is alembic_version_controller so the cards' migrations never collide in a shared database.
"""

from __future__ import annotations

from alembic import context

from controller.adapters.sql import VERSION_TABLE, metadata

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
