"""The identity graph: profiles (members of clusters), typed links, merges, conflicts, actions.

A profile's id is the log position of the event that created it, so a rebuild from the
log recreates the same ids (and recorded unmerges replay onto the same profiles).
Nothing is physically combined on merge: the merged profile points at the survivor and
keeps its own identifiers, traits and events, which is what makes unmerge exact.
"""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from omnijourney.store.base import Base, BigIntId, UTCDateTime


class Profile(Base):
    __tablename__ = "profiles"

    id: Mapped[int] = mapped_column(sa.BigInteger, primary_key=True, autoincrement=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    #: the survivor this profile was merged into (its direct parent), NULL while it stands alone
    merged_into: Mapped[int | None] = mapped_column(sa.BigInteger, nullable=True)
    #: the root of its cluster (itself when not merged): what every read resolves to
    canonical_id: Mapped[int] = mapped_column(sa.BigInteger, index=True)


class IdentityLink(Base):
    """An identifier value owned by one profile; the unique key is what makes resolution O(1)."""

    __tablename__ = "identity_links"

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True, autoincrement=True)
    id_type: Mapped[str] = mapped_column(sa.String(32))
    value: Mapped[str] = mapped_column(sa.String(255))
    profile_id: Mapped[int] = mapped_column(sa.BigInteger)
    linked_at: Mapped[datetime] = mapped_column(UTCDateTime)
    event_id: Mapped[int] = mapped_column(sa.BigInteger)
    source_id: Mapped[int] = mapped_column(sa.Integer)

    __table_args__ = (
        sa.UniqueConstraint("id_type", "value"),
        # migration 0012: a member's identifiers of one type (it replaced an index on profile_id alone)
        sa.Index("ix_identity_links_profile_type", "profile_id", "id_type"),
        # migration 0012: prefix search (store.dialect.prefix_match) compares byte-wise on PostgreSQL
        sa.Index(
            "ix_identity_links_value_prefix", "id_type", "value", postgresql_ops={"value": "varchar_pattern_ops"}
        ).ddl_if(dialect="postgresql"),
    )


class IdentityMerge(Base):
    """Provenance of a merge: which identifier bridged which profiles, from which event and source."""

    __tablename__ = "identity_merges"

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True, autoincrement=True)
    survivor_id: Mapped[int] = mapped_column(sa.BigInteger, index=True)
    merged_id: Mapped[int] = mapped_column(sa.BigInteger, index=True)
    id_type: Mapped[str] = mapped_column(sa.String(32))
    value: Mapped[str] = mapped_column(sa.String(255))
    event_id: Mapped[int] = mapped_column(sa.BigInteger)
    source_id: Mapped[int] = mapped_column(sa.Integer)
    merged_at: Mapped[datetime] = mapped_column(UTCDateTime)
    unmerged_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    unmerged_by: Mapped[str | None] = mapped_column(sa.String(100), nullable=True)


class IdentityConflict(Base):
    """A link or merge that was refused (veto, limit, trust, manual unmerge), kept for review."""

    __tablename__ = "identity_conflicts"

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(sa.String(16), index=True)
    id_type: Mapped[str] = mapped_column(sa.String(32))
    value: Mapped[str] = mapped_column(sa.String(255))
    profile_id: Mapped[int] = mapped_column(sa.BigInteger, index=True)
    other_profile_id: Mapped[int | None] = mapped_column(sa.BigInteger, nullable=True)
    event_id: Mapped[int] = mapped_column(sa.BigInteger)
    source_id: Mapped[int] = mapped_column(sa.Integer)
    detail: Mapped[str] = mapped_column(sa.String(500))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)

    __table_args__ = (
        sa.CheckConstraint("kind IN ('veto', 'limit', 'untrusted', 'unmerged', 'moved')", name="kind_known"),
    )


class IdentityAction(Base):
    """A manual change to the graph (unmerge), with the log position it applies after, for rebuilds."""

    __tablename__ = "identity_actions"

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(sa.String(16))
    survivor_id: Mapped[int] = mapped_column(sa.BigInteger)
    merged_id: Mapped[int] = mapped_column(sa.BigInteger)
    position: Mapped[int] = mapped_column(sa.BigInteger)
    actor: Mapped[str] = mapped_column(sa.String(100))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class IdentityBlock(Base):
    """Two profiles an admin separated: their clusters never merge again automatically."""

    __tablename__ = "identity_blocks"

    profile_a: Mapped[int] = mapped_column(sa.BigInteger, primary_key=True)
    profile_b: Mapped[int] = mapped_column(sa.BigInteger, primary_key=True)


class ProfileEvent(Base):
    """Which profile (cluster member) each event belongs to, with what the timeline filters on."""

    __tablename__ = "profile_events"

    event_id: Mapped[int] = mapped_column(sa.BigInteger, primary_key=True, autoincrement=False)
    profile_id: Mapped[int] = mapped_column(sa.BigInteger)
    timestamp: Mapped[datetime] = mapped_column(UTCDateTime)
    channel: Mapped[str] = mapped_column(sa.String(32))
    event: Mapped[str | None] = mapped_column(sa.String(200), nullable=True)

    __table_args__ = (sa.Index("ix_profile_events_timeline", "profile_id", "timestamp", "event_id"),)
