"""Alembic environment for the call-edge table (version table alembic_version_telemetry)."""

from __future__ import annotations

from remixer.kit.calledges import metadata
from remixer.kit.migrating import run_env

run_env(metadata, "alembic_version_telemetry")
