"""journey frequency-cap holds; store-staff tasks can be completed

Revision ID: 0014
Revises: 0012
Create Date: 2026-11-26 23:20:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import omnijourney.store.base

revision = "0014"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "engage_journey_send_holds",
        sa.Column("step_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("profile_id", sa.BigInteger(), nullable=False),
        sa.Column("channel", sa.String(length=32), nullable=False),
        sa.Column("held_at", omnijourney.store.base.UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["step_id"],
            ["engage_journey_steps.id"],
            name=op.f("fk_engage_journey_send_holds_step_id_engage_journey_steps"),
        ),
        sa.PrimaryKeyConstraint("step_id", name=op.f("pk_engage_journey_send_holds")),
    )
    op.create_index(
        "ix_engage_journey_send_holds_profile", "engage_journey_send_holds", ["profile_id", "channel"], unique=False
    )
    with op.batch_alter_table("engage_journey_tasks", schema=None) as batch_op:
        batch_op.add_column(sa.Column("done_at", omnijourney.store.base.UTCDateTime(), nullable=True))
        batch_op.add_column(sa.Column("done_by", sa.String(length=100), nullable=True))
        batch_op.create_index("ix_engage_journey_tasks_location", ["location", "status"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("engage_journey_tasks", schema=None) as batch_op:
        batch_op.drop_index("ix_engage_journey_tasks_location")
        batch_op.drop_column("done_by")
        batch_op.drop_column("done_at")
    op.drop_index("ix_engage_journey_send_holds_profile", table_name="engage_journey_send_holds")
    op.drop_table("engage_journey_send_holds")
