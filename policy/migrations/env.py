"""Alembic environment for the policy tables (version table alembic_version_policy)."""

from __future__ import annotations

from policy.adapters.sql import metadata
from remixer.kit.migrating import run_env

run_env(metadata, "alembic_version_policy", transaction_per_migration=False)
