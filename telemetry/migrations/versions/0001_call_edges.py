"""Create the call-edge table.

Revision ID: 0001_call_edges
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001_call_edges"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "remixer_call_edges",
        sa.Column("source_namespace", sa.String(253), primary_key=True),
        sa.Column("source_workload", sa.String(253), primary_key=True),
        sa.Column("destination_service", sa.String(253), primary_key=True),
        sa.Column("destination_port", sa.Integer, primary_key=True),
        sa.Column("protocol", sa.String(16), primary_key=True),
        sa.Column("first_seen", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_seen", sa.DateTime(timezone=True), nullable=False),
        sa.Column("count", sa.BigInteger, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("remixer_call_edges")
