"""analytics: the lake export checkpoint

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-26 12:45:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import omnijourney.store.base

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "analytics_export_checkpoints",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("position", sa.BigInteger(), nullable=False),
        sa.Column("exported_rows", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", omnijourney.store.base.UTCDateTime(), nullable=False),
        sa.CheckConstraint("position >= 0", name=op.f("ck_analytics_export_checkpoints_position_non_negative")),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_analytics_export_checkpoints")),
    )


def downgrade() -> None:
    op.drop_table("analytics_export_checkpoints")
