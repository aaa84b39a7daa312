"""engage: segments, memberships, recommendation model, offers

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-26 13:20:19.983384
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

import omnijourney.store.base

revision = "0008"
down_revision = "0007"
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
        "engage_offers",
        sa.Column("key", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("description", sa.String(length=2000), nullable=False),
        sa.Column("segment_key", sa.String(length=64), nullable=True),
        sa.Column(
            "channels", sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"), nullable=False
        ),
        sa.Column(
            "skus", sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"), nullable=False
        ),
        sa.Column("starts_at", omnijourney.store.base.UTCDateTime(), nullable=True),
        sa.Column("ends_at", omnijourney.store.base.UTCDateTime(), nullable=True),
        sa.Column("priority", sa.Integer(), nullable=False),
        sa.Column("max_redemptions", sa.Integer(), nullable=True),
        sa.Column("per_profile_limit", sa.Integer(), nullable=False),
        sa.Column("redeemed", sa.Integer(), nullable=False),
        sa.Column(
            "benefit", sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"), nullable=False
        ),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("updated_at", omnijourney.store.base.UTCDateTime(), nullable=False),
        sa.Column("updated_by", sa.String(length=100), nullable=False),
        sa.CheckConstraint(
            "ends_at IS NULL OR starts_at IS NULL OR ends_at > starts_at", name=op.f("ck_engage_offers_period_ordered")
        ),
        sa.CheckConstraint(
            "max_redemptions IS NULL OR redeemed <= max_redemptions",
            name=op.f("ck_engage_offers_redeemed_within_limit"),
        ),
        sa.CheckConstraint("per_profile_limit >= 1", name=op.f("ck_engage_offers_per_profile_positive")),
        sa.CheckConstraint("redeemed >= 0", name=op.f("ck_engage_offers_redeemed_non_negative")),
        sa.PrimaryKeyConstraint("key", name=op.f("pk_engage_offers")),
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
    op.create_table(
        "engage_offer_redemptions",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("offer_key", sa.String(length=64), nullable=False),
        sa.Column("profile_id", sa.BigInteger(), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("channel", sa.String(length=32), nullable=False),
        sa.Column("order_ref", sa.String(length=128), nullable=True),
        sa.Column("idempotency_key", sa.String(length=128), nullable=False),
        sa.Column("redeemed_at", omnijourney.store.base.UTCDateTime(), nullable=False),
        sa.Column("actor", sa.String(length=100), nullable=False),
        sa.CheckConstraint("seq >= 1", name=op.f("ck_engage_offer_redemptions_seq_positive")),
        sa.ForeignKeyConstraint(
            ["offer_key"], ["engage_offers.key"], name=op.f("fk_engage_offer_redemptions_offer_key_engage_offers")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_engage_offer_redemptions")),
        sa.UniqueConstraint("idempotency_key", name=op.f("uq_engage_offer_redemptions_idempotency_key")),
        sa.UniqueConstraint(
            "offer_key", "profile_id", "seq", name=op.f("uq_engage_offer_redemptions_offer_key_profile_id_seq")
        ),
    )


def downgrade() -> None:

    op.drop_table("engage_offer_redemptions")
    op.drop_table("engage_segments")
    op.drop_table("engage_segment_versions")
    with op.batch_alter_table("engage_segment_members", schema=None) as batch_op:
        batch_op.drop_index("ix_engage_segment_members_profile")

    op.drop_table("engage_segment_members")
    with op.batch_alter_table("engage_segment_history", schema=None) as batch_op:
        batch_op.drop_index("ix_engage_segment_history_profile")

    op.drop_table("engage_segment_history")
    op.drop_table("engage_reco_models")
    op.drop_table("engage_offers")
    op.drop_table("engage_item_similarity")
    op.drop_table("engage_item_popularity")
