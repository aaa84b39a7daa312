"""engage: segments, memberships, recommendation model, offers

Revision ID: 0008
Revises: 0003
Create Date: 2026-11-26 12:59:29.601231
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

import omnijourney.store.base

revision = "0008"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:

    op.create_table(
        "engage_item_popularity",
        sa.Column("model_id", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("sku", sa.String(length=64), nullable=False),
        sa.Column("buyers", sa.Integer(), nullable=False),
        sa.Column("viewers", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("model_id", "sku", name=op.f("pk_engage_item_popularity")),
    )
    op.create_table(
        "engage_item_similarity",
        sa.Column("model_id", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("sku", sa.String(length=64), nullable=False),
        sa.Column("other_sku", sa.String(length=64), nullable=False),
        sa.Column("score", sa.Float(), nullable=False),
        sa.CheckConstraint("kind IN ('purchase', 'view')", name=op.f("ck_engage_item_similarity_kind_known")),
        sa.PrimaryKeyConstraint("model_id", "kind", "sku", "other_sku", name=op.f("pk_engage_item_similarity")),
    )
    op.create_table(
        "engage_reco_models",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("trained_at", omnijourney.store.base.UTCDateTime(), nullable=False),
        sa.Column(
            "stats", sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"), nullable=False
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_engage_reco_models")),
    )
    op.create_table(
        "engage_segment_history",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("segment_key", sa.String(length=64), nullable=False),
        sa.Column("profile_id", sa.BigInteger(), nullable=False),
        sa.Column("action", sa.String(length=16), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("at", omnijourney.store.base.UTCDateTime(), nullable=False),
        sa.Column("reason", sa.String(length=32), nullable=False),
        sa.CheckConstraint("action IN ('entered', 'left')", name=op.f("ck_engage_segment_history_action_known")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_engage_segment_history")),
        sa.UniqueConstraint(
            "segment_key",
            "profile_id",
            "action",
            "seq",
            name=op.f("uq_engage_segment_history_segment_key_profile_id_action_seq"),
        ),
    )
    with op.batch_alter_table("engage_segment_history", schema=None) as batch_op:
        batch_op.create_index("ix_engage_segment_history_profile", ["profile_id", "id"], unique=False)

    op.create_table(
        "engage_segment_members",
        sa.Column("segment_key", sa.String(length=64), nullable=False),
        sa.Column("profile_id", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("entered_at", omnijourney.store.base.UTCDateTime(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("segment_key", "profile_id", name=op.f("pk_engage_segment_members")),
    )
    with op.batch_alter_table("engage_segment_members", schema=None) as batch_op:
        batch_op.create_index("ix_engage_segment_members_profile", ["profile_id"], unique=False)

    op.create_table(
        "engage_segment_versions",
        sa.Column("segment_key", sa.String(length=64), nullable=False),
        sa.Column("version", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column(
            "rule", sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"), nullable=False
        ),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("changed_at", omnijourney.store.base.UTCDateTime(), nullable=False),
        sa.Column("changed_by", sa.String(length=100), nullable=False),
        sa.PrimaryKeyConstraint("segment_key", "version", name=op.f("pk_engage_segment_versions")),
    )
    op.create_table(
        "engage_segments",
        sa.Column("key", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("description", sa.String(length=2000), nullable=False),
        sa.Column(
            "rule", sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"), nullable=False
        ),
        sa.Column("origin", sa.String(length=16), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("updated_at", omnijourney.store.base.UTCDateTime(), nullable=False),
        sa.Column("updated_by", sa.String(length=100), nullable=False),
        sa.CheckConstraint("origin IN ('config', 'api')", name=op.f("ck_engage_segments_origin_known")),
        sa.CheckConstraint("version >= 1", name=op.f("ck_engage_segments_version_positive")),
        sa.PrimaryKeyConstraint("key", name=op.f("pk_engage_segments")),
    )


def downgrade() -> None:

    op.drop_table("engage_segments")
    op.drop_table("engage_segment_versions")
    with op.batch_alter_table("engage_segment_members", schema=None) as batch_op:
        batch_op.drop_index("ix_engage_segment_members_profile")

    op.drop_table("engage_segment_members")
    with op.batch_alter_table("engage_segment_history", schema=None) as batch_op:
        batch_op.drop_index("ix_engage_segment_history_profile")

    op.drop_table("engage_segment_history")
    op.drop_table("engage_reco_models")
    op.drop_table("engage_item_similarity")
    op.drop_table("engage_item_popularity")
