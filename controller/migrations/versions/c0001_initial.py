"""Controller tables: dependencies with first/last seen (TTL), workload selectors, run history.

Revision ID: c0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "c0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "controller_dependencies",
        sa.Column("namespace", sa.String(63), primary_key=True),
        sa.Column("workload", sa.String(253), primary_key=True),
        sa.Column("host", sa.String(320), primary_key=True),
        sa.Column("first_seen", sa.Float, nullable=False),
        sa.Column("last_seen", sa.Float, nullable=False),
    )
    op.create_table(
        "controller_workloads",
        sa.Column("namespace", sa.String(63), primary_key=True),
        sa.Column("workload", sa.String(253), primary_key=True),
        sa.Column("selector", sa.String(4000), nullable=False),
        sa.Column("last_seen", sa.Float, nullable=False),
    )
    op.create_table(
        "controller_runs",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("at", sa.Float, nullable=False),
        sa.Column("scope", sa.String(2000), nullable=False),
        sa.Column("edges", sa.Integer, nullable=False),
        sa.Column("written", sa.Integer, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("controller_runs")
    op.drop_table("controller_workloads")
    op.drop_table("controller_dependencies")
