"""adaptive limits: the limit each rule's controller last set, per caller, for every replica to enforce

Revision ID: policy_0002
Revises: policy_0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "policy_0002"
down_revision = "policy_0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "policy_adaptive_state",
        sa.Column("name", sa.String(128), primary_key=True),
        sa.Column("limit_rps", sa.Float, nullable=False),
        sa.Column("callers", sa.Text, nullable=False),
        sa.Column("unknown_rps", sa.Float, nullable=False),
        sa.Column("mode", sa.String(16), nullable=False),
        sa.Column("step", sa.Text, nullable=False),
        sa.Column("leader", sa.String(256), nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("policy_adaptive_state")
