"""identity graph and profiles

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26 09:37:28.825328
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

import omnijourney.store.base

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:

    op.create_table(
        "consent_records",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("profile_id", sa.BigInteger(), nullable=False),
        sa.Column("purpose", sa.String(length=64), nullable=False),
        sa.Column("channel", sa.String(length=32), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("recorded_at", omnijourney.store.base.UTCDateTime(), nullable=False),
        sa.Column("source_id", sa.Integer(), nullable=True),
        sa.Column("event_id", sa.BigInteger(), nullable=True),
        sa.Column("actor", sa.String(length=100), nullable=True),
        sa.Column(
            "evidence", sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"), nullable=False
        ),
        sa.CheckConstraint(
            "status IN ('granted', 'denied', 'withdrawn')", name=op.f("ck_consent_records_status_known")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_consent_records")),
    )
    with op.batch_alter_table("consent_records", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_consent_records_profile_id"), ["profile_id"], unique=False)

    op.create_table(
        "identity_actions",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("survivor_id", sa.BigInteger(), nullable=False),
        sa.Column("merged_id", sa.BigInteger(), nullable=False),
        sa.Column("position", sa.BigInteger(), nullable=False),
        sa.Column("actor", sa.String(length=100), nullable=False),
        sa.Column("created_at", omnijourney.store.base.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_identity_actions")),
    )
    op.create_table(
        "identity_blocks",
        sa.Column("profile_a", sa.BigInteger(), nullable=False),
        sa.Column("profile_b", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("profile_a", "profile_b", name=op.f("pk_identity_blocks")),
    )
    op.create_table(
        "identity_conflicts",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("id_type", sa.String(length=32), nullable=False),
        sa.Column("value", sa.String(length=255), nullable=False),
        sa.Column("profile_id", sa.BigInteger(), nullable=False),
        sa.Column("other_profile_id", sa.BigInteger(), nullable=True),
        sa.Column("event_id", sa.BigInteger(), nullable=False),
        sa.Column("source_id", sa.Integer(), nullable=False),
        sa.Column("detail", sa.String(length=500), nullable=False),
        sa.Column("created_at", omnijourney.store.base.UTCDateTime(), nullable=False),
        sa.CheckConstraint(
            "kind IN ('veto', 'limit', 'untrusted', 'unmerged', 'moved')", name=op.f("ck_identity_conflicts_kind_known")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_identity_conflicts")),
    )
    with op.batch_alter_table("identity_conflicts", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_identity_conflicts_kind"), ["kind"], unique=False)
        batch_op.create_index(batch_op.f("ix_identity_conflicts_profile_id"), ["profile_id"], unique=False)

    op.create_table(
        "identity_links",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("id_type", sa.String(length=32), nullable=False),
        sa.Column("value", sa.String(length=255), nullable=False),
        sa.Column("profile_id", sa.BigInteger(), nullable=False),
        sa.Column("linked_at", omnijourney.store.base.UTCDateTime(), nullable=False),
        sa.Column("event_id", sa.BigInteger(), nullable=False),
        sa.Column("source_id", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_identity_links")),
        sa.UniqueConstraint("id_type", "value", name=op.f("uq_identity_links_id_type_value")),
    )
    with op.batch_alter_table("identity_links", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_identity_links_profile_id"), ["profile_id"], unique=False)

    op.create_table(
        "identity_merges",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("survivor_id", sa.BigInteger(), nullable=False),
        sa.Column("merged_id", sa.BigInteger(), nullable=False),
        sa.Column("id_type", sa.String(length=32), nullable=False),
        sa.Column("value", sa.String(length=255), nullable=False),
        sa.Column("event_id", sa.BigInteger(), nullable=False),
        sa.Column("source_id", sa.Integer(), nullable=False),
        sa.Column("merged_at", omnijourney.store.base.UTCDateTime(), nullable=False),
        sa.Column("unmerged_at", omnijourney.store.base.UTCDateTime(), nullable=True),
        sa.Column("unmerged_by", sa.String(length=100), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_identity_merges")),
    )
    with op.batch_alter_table("identity_merges", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_identity_merges_merged_id"), ["merged_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_identity_merges_survivor_id"), ["survivor_id"], unique=False)

    op.create_table(
        "profile_changes",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("profile_id", sa.BigInteger(), nullable=False),
        sa.Column("changed_at", omnijourney.store.base.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_profile_changes")),
    )
    op.create_table(
        "profile_counters",
        sa.Column("profile_id", sa.BigInteger(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("key", sa.String(length=128), nullable=False),
        sa.Column("count", sa.BigInteger(), nullable=False),
        sa.Column("last_at", omnijourney.store.base.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("profile_id", "kind", "key", name=op.f("pk_profile_counters")),
    )
    op.create_table(
        "profile_events",
        sa.Column("event_id", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("profile_id", sa.BigInteger(), nullable=False),
        sa.Column("timestamp", omnijourney.store.base.UTCDateTime(), nullable=False),
        sa.Column("channel", sa.String(length=32), nullable=False),
        sa.Column("event", sa.String(length=200), nullable=True),
        sa.PrimaryKeyConstraint("event_id", name=op.f("pk_profile_events")),
    )
    with op.batch_alter_table("profile_events", schema=None) as batch_op:
        batch_op.create_index("ix_profile_events_timeline", ["profile_id", "timestamp", "event_id"], unique=False)

    op.create_table(
        "profile_search_terms",
        sa.Column("term", sa.String(length=100), nullable=False),
        sa.Column("profile_id", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("term", "profile_id", name=op.f("pk_profile_search_terms")),
    )
    op.create_table(
        "profile_stats",
        sa.Column("profile_id", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("first_seen", omnijourney.store.base.UTCDateTime(), nullable=False),
        sa.Column("last_seen", omnijourney.store.base.UTCDateTime(), nullable=False),
        sa.Column("event_count", sa.BigInteger(), nullable=False),
        sa.Column("order_count", sa.Integer(), nullable=False),
        sa.Column("revenue", sa.Float(), nullable=False),
        sa.Column("last_order_at", omnijourney.store.base.UTCDateTime(), nullable=True),
        sa.Column("last_order_id", sa.String(length=128), nullable=True),
        sa.Column("nps", sa.Integer(), nullable=True),
        sa.Column("nps_at", omnijourney.store.base.UTCDateTime(), nullable=True),
        sa.Column("csat", sa.Integer(), nullable=True),
        sa.Column("csat_at", omnijourney.store.base.UTCDateTime(), nullable=True),
        sa.Column("stage_rank", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("profile_id", name=op.f("pk_profile_stats")),
    )
    op.create_table(
        "profile_traits",
        sa.Column("profile_id", sa.BigInteger(), nullable=False),
        sa.Column("key", sa.String(length=100), nullable=False),
        sa.Column(
            "value", sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"), nullable=False
        ),
        sa.Column("observed_at", omnijourney.store.base.UTCDateTime(), nullable=False),
        sa.Column("first_observed_at", omnijourney.store.base.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("profile_id", "key", name=op.f("pk_profile_traits")),
    )
    op.create_table(
        "profiles",
        sa.Column("id", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("created_at", omnijourney.store.base.UTCDateTime(), nullable=False),
        sa.Column("merged_into", sa.BigInteger(), nullable=True),
        sa.Column("canonical_id", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_profiles")),
    )
    with op.batch_alter_table("profiles", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_profiles_canonical_id"), ["canonical_id"], unique=False)

    with op.batch_alter_table("pipeline_checkpoints", schema=None) as batch_op:
        batch_op.add_column(sa.Column("action_seq", sa.BigInteger(), server_default="0", nullable=False))


def downgrade() -> None:

    with op.batch_alter_table("pipeline_checkpoints", schema=None) as batch_op:
        batch_op.drop_column("action_seq")

    with op.batch_alter_table("profiles", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_profiles_canonical_id"))

    op.drop_table("profiles")
    op.drop_table("profile_traits")
    op.drop_table("profile_stats")
    op.drop_table("profile_search_terms")
    with op.batch_alter_table("profile_events", schema=None) as batch_op:
        batch_op.drop_index("ix_profile_events_timeline")

    op.drop_table("profile_events")
    op.drop_table("profile_counters")
    op.drop_table("profile_changes")
    with op.batch_alter_table("identity_merges", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_identity_merges_survivor_id"))
        batch_op.drop_index(batch_op.f("ix_identity_merges_merged_id"))

    op.drop_table("identity_merges")
    with op.batch_alter_table("identity_links", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_identity_links_profile_id"))

    op.drop_table("identity_links")
    with op.batch_alter_table("identity_conflicts", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_identity_conflicts_profile_id"))
        batch_op.drop_index(batch_op.f("ix_identity_conflicts_kind"))

    op.drop_table("identity_conflicts")
    op.drop_table("identity_blocks")
    op.drop_table("identity_actions")
    with op.batch_alter_table("consent_records", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_consent_records_profile_id"))

    op.drop_table("consent_records")
