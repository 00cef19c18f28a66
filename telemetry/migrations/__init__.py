"""Alembic migrations for the call-edge table (version table: alembic_version_telemetry)."""
