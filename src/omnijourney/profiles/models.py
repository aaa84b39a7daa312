"""Per-member profile data. Every table is keyed by the member profile, never by the cluster:
reads combine a cluster's members, so a merge needs no copying and an unmerge is exact."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from omnijourney.store.base import Base, BigIntId, JSONType, UTCDateTime


class ProfileTrait(Base):
    __tablename__ = "profile_traits"

    profile_id: Mapped[int] = mapped_column(sa.BigInteger, primary_key=True)
    key: Mapped[str] = mapped_column(sa.String(100), primary_key=True)
    value: Mapped[Any] = mapped_column(JSONType)
    #: event time of the value (for last/first strategies); the first time seen for sum/union/max
    observed_at: Mapped[datetime] = mapped_column(UTCDateTime)
    first_observed_at: Mapped[datetime] = mapped_column(UTCDateTime)


class ProfileStats(Base):
    """Computed traits that combine by min/max/sum across members and batches."""

    __tablename__ = "profile_stats"

    profile_id: Mapped[int] = mapped_column(sa.BigInteger, primary_key=True, autoincrement=False)
    first_seen: Mapped[datetime] = mapped_column(UTCDateTime)
    last_seen: Mapped[datetime] = mapped_column(UTCDateTime)
    event_count: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    order_count: Mapped[int] = mapped_column(sa.Integer, default=0)
    revenue: Mapped[float] = mapped_column(sa.Float, default=0.0)
    last_order_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    last_order_id: Mapped[str | None] = mapped_column(sa.String(128), nullable=True)
    nps: Mapped[int | None] = mapped_column(sa.Integer, nullable=True)
    nps_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    csat: Mapped[int | None] = mapped_column(sa.Integer, nullable=True)
    csat_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    stage_rank: Mapped[int] = mapped_column(sa.Integer, default=0)


class ProfileCounter(Base):
    """How often a member used a channel, device, store or source (kind), and when last."""

    __tablename__ = "profile_counters"

    profile_id: Mapped[int] = mapped_column(sa.BigInteger, primary_key=True)
    kind: Mapped[str] = mapped_column(sa.String(16), primary_key=True)
    key: Mapped[str] = mapped_column(sa.String(128), primary_key=True)
    count: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    last_at: Mapped[datetime] = mapped_column(UTCDateTime)


class ConsentRecord(Base):
    """Append-only consent ledger: purpose x channel, granted / denied / withdrawn, with evidence."""

    __tablename__ = "consent_records"

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True, autoincrement=True)
    profile_id: Mapped[int] = mapped_column(sa.BigInteger, index=True)
    purpose: Mapped[str] = mapped_column(sa.String(64))
    channel: Mapped[str] = mapped_column(sa.String(32))
    status: Mapped[str] = mapped_column(sa.String(16))
    recorded_at: Mapped[datetime] = mapped_column(UTCDateTime)
    source_id: Mapped[int | None] = mapped_column(sa.Integer, nullable=True)
    event_id: Mapped[int | None] = mapped_column(sa.BigInteger, nullable=True)
    actor: Mapped[str | None] = mapped_column(sa.String(100), nullable=True)
    evidence: Mapped[dict[str, Any]] = mapped_column(JSONType)

    __table_args__ = (sa.CheckConstraint("status IN ('granted', 'denied', 'withdrawn')", name="status_known"),)


class ProfileSearchTerm(Base):
    """Lower-cased name tokens for free-text search (identifiers are searched in identity_links)."""

    __tablename__ = "profile_search_terms"

    term: Mapped[str] = mapped_column(sa.String(100), primary_key=True)
    profile_id: Mapped[int] = mapped_column(sa.BigInteger, primary_key=True)

    # migration 0012: a profile's terms (multi-word search probes), and on PostgreSQL a byte-wise
    # index for the prefix ranges of store.dialect.prefix_match
    __table_args__ = (
        sa.Index("ix_profile_search_terms_profile_term", "profile_id", "term"),
        sa.Index("ix_profile_search_terms_term_prefix", "term", postgresql_ops={"term": "varchar_pattern_ops"}).ddl_if(
            dialect="postgresql"
        ),
    )


class ProfileChange(Base):
    """A feed of member profiles changed by processing, for `GET /api/profiles/changes`."""

    __tablename__ = "profile_changes"

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True, autoincrement=True)
    profile_id: Mapped[int] = mapped_column(sa.BigInteger)
    changed_at: Mapped[datetime] = mapped_column(UTCDateTime)
