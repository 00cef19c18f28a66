"""Alembic migrations of the policy tables (version table alembic_version_policy)."""
