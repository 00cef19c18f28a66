"""Alembic environment for the policy tables; run programmatically by SqlPolicyStore.migrate()."""

from __future__ import annotations

from alembic import context

from policy.adapters.sql import metadata

config = context.config
connection = config.attributes["connection"]
schema = config.attributes.get("schema")

context.configure(
    connection=connection,
    target_metadata=metadata,
    version_table="alembic_version_policy",
    version_table_schema=schema,
    transaction_per_migration=False,
)
with context.begin_transaction():
    context.run_migrations()
