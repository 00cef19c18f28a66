"""Alembic environment for the controller's own tables (version table alembic_version_controller)."""

from __future__ import annotations

from controller.adapters.sql import VERSION_TABLE, metadata
from remixer.kit.migrating import run_env

run_env(metadata, VERSION_TABLE)
