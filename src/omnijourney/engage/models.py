"""Engage: segment definitions (versioned), memberships per surviving profile and their history,
and the item-to-item recommendation model.

Memberships are keyed by the surviving profile (the cluster root) at evaluation time; a merge
moves the membership to the survivor the next time the cluster is evaluated.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from omnijourney.store.base import Base, BigIntId, JSONType, UTCDateTime

SEGMENT_ORIGINS = ("config", "api")
HISTORY_ACTIONS = ("entered", "left")
SIMILARITY_KINDS = ("purchase", "view")


class Segment(Base):
    """The current definition of a segment; `version` grows with every change (see segment versions)."""

    __tablename__ = "engage_segments"

    key: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(200))
    description: Mapped[str] = mapped_column(sa.String(2000), default="")
    rule: Mapped[dict[str, Any]] = mapped_column(JSONType)
    origin: Mapped[str] = mapped_column(sa.String(16))
    version: Mapped[int] = mapped_column(sa.Integer)
    active: Mapped[bool] = mapped_column(sa.Boolean, default=True)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_by: Mapped[str] = mapped_column(sa.String(100))

    __table_args__ = (
        sa.CheckConstraint("origin IN ('config', 'api')", name="origin_known"),
        sa.CheckConstraint("version >= 1", name="version_positive"),
    )


class SegmentVersion(Base):
    """Every definition a segment ever had (deleted ones too: `active` false)."""

    __tablename__ = "engage_segment_versions"

    segment_key: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    version: Mapped[int] = mapped_column(sa.Integer, primary_key=True, autoincrement=False)
    name: Mapped[str] = mapped_column(sa.String(200))
    rule: Mapped[dict[str, Any]] = mapped_column(JSONType)
    active: Mapped[bool] = mapped_column(sa.Boolean)
    changed_at: Mapped[datetime] = mapped_column(UTCDateTime)
    changed_by: Mapped[str] = mapped_column(sa.String(100))


class SegmentMember(Base):
    __tablename__ = "engage_segment_members"

    segment_key: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    profile_id: Mapped[int] = mapped_column(sa.BigInteger, primary_key=True, autoincrement=False)
    entered_at: Mapped[datetime] = mapped_column(UTCDateTime)
    version: Mapped[int] = mapped_column(sa.Integer)

    __table_args__ = (sa.Index("ix_engage_segment_members_profile", "profile_id"),)


class SegmentHistory(Base):
    """Entries and exits, in order; `seq` numbers a profile's entries (exits) per segment, from 1."""

    __tablename__ = "engage_segment_history"

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True, autoincrement=True)
    segment_key: Mapped[str] = mapped_column(sa.String(64))
    profile_id: Mapped[int] = mapped_column(sa.BigInteger)
    action: Mapped[str] = mapped_column(sa.String(16))
    seq: Mapped[int] = mapped_column(sa.Integer)
    version: Mapped[int] = mapped_column(sa.Integer)
    at: Mapped[datetime] = mapped_column(UTCDateTime)
    reason: Mapped[str] = mapped_column(sa.String(32))

    __table_args__ = (
        sa.CheckConstraint("action IN ('entered', 'left')", name="action_known"),
        sa.UniqueConstraint("segment_key", "profile_id", "action", "seq"),
        sa.Index("ix_engage_segment_history_profile", "profile_id", "id"),
    )


class RecoModel(Base):
    """One trained recommendation model (the latest row is the one served)."""

    __tablename__ = "engage_reco_models"

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True, autoincrement=True)
    trained_at: Mapped[datetime] = mapped_column(UTCDateTime)
    stats: Mapped[dict[str, Any]] = mapped_column(JSONType)


class ItemSimilarity(Base):
    """Top neighbours of an item by cosine similarity over profiles (co-purchase, co-view)."""

    __tablename__ = "engage_item_similarity"

    model_id: Mapped[int] = mapped_column(sa.BigInteger, primary_key=True, autoincrement=False)
    kind: Mapped[str] = mapped_column(sa.String(16), primary_key=True)
    sku: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    other_sku: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    score: Mapped[float] = mapped_column(sa.Float)

    __table_args__ = (sa.CheckConstraint("kind IN ('purchase', 'view')", name="kind_known"),)


class ItemPopularity(Base):
    __tablename__ = "engage_item_popularity"

    model_id: Mapped[int] = mapped_column(sa.BigInteger, primary_key=True, autoincrement=False)
    sku: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    buyers: Mapped[int] = mapped_column(sa.Integer)
    viewers: Mapped[int] = mapped_column(sa.Integer)


class Offer(Base):
    """A promotion defined once, evaluated by one API for every channel (docs/ENGAGE.md, Offers).

    `redeemed` is bounded by `max_redemptions` in the database, so concurrent redemptions can
    never exceed the limit whatever the code does."""

    __tablename__ = "engage_offers"

    key: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(200))
    description: Mapped[str] = mapped_column(sa.String(2000), default="")
    #: only members of this segment (None: everyone)
    segment_key: Mapped[str | None] = mapped_column(sa.String(64), nullable=True)
    #: channels it is shown in ([]: every channel)
    channels: Mapped[list[str]] = mapped_column(JSONType)
    #: SKUs it applies to ([]: any)
    skus: Mapped[list[str]] = mapped_column(JSONType)
    starts_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    ends_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    priority: Mapped[int] = mapped_column(sa.Integer, default=0)
    max_redemptions: Mapped[int | None] = mapped_column(sa.Integer, nullable=True)
    per_profile_limit: Mapped[int] = mapped_column(sa.Integer, default=1)
    redeemed: Mapped[int] = mapped_column(sa.Integer, default=0)
    #: what the channel shows / applies: {"discount_percent": 10, "code": "RUN10", "text": ...}
    benefit: Mapped[dict[str, Any]] = mapped_column(JSONType)
    active: Mapped[bool] = mapped_column(sa.Boolean, default=True)
    version: Mapped[int] = mapped_column(sa.Integer, default=1)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_by: Mapped[str] = mapped_column(sa.String(100))

    __table_args__ = (
        sa.CheckConstraint("redeemed >= 0", name="redeemed_non_negative"),
        sa.CheckConstraint("max_redemptions IS NULL OR redeemed <= max_redemptions", name="redeemed_within_limit"),
        sa.CheckConstraint("per_profile_limit >= 1", name="per_profile_positive"),
        sa.CheckConstraint("ends_at IS NULL OR starts_at IS NULL OR ends_at > starts_at", name="period_ordered"),
    )


class OfferRedemption(Base):
    """One redemption; (offer, profile, seq) is unique and seq <= the offer's per-profile limit."""

    __tablename__ = "engage_offer_redemptions"

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True, autoincrement=True)
    offer_key: Mapped[str] = mapped_column(sa.ForeignKey("engage_offers.key"))
    profile_id: Mapped[int] = mapped_column(sa.BigInteger)
    seq: Mapped[int] = mapped_column(sa.Integer)
    channel: Mapped[str] = mapped_column(sa.String(32))
    order_ref: Mapped[str | None] = mapped_column(sa.String(128), nullable=True)
    idempotency_key: Mapped[str] = mapped_column(sa.String(128), unique=True)
    redeemed_at: Mapped[datetime] = mapped_column(UTCDateTime)
    actor: Mapped[str] = mapped_column(sa.String(100))

    __table_args__ = (
        sa.UniqueConstraint("offer_key", "profile_id", "seq"),
        sa.CheckConstraint("seq >= 1", name="seq_positive"),
    )


# ============================================================================ journey automations
#
# docs/ENGAGE.md, "Journey automations". The schedule row is the unit of exactly-once: UNIQUE
# (journey, step, profile, entry) means a step can be scheduled (and so fire) at most once per entry.

JOURNEY_ENTRY_STATUSES = ("active", "completed", "exited", "control")
JOURNEY_STEP_STATUSES = ("scheduled", "claimed", "done", "skipped", "failed", "cancelled")


class Journey(Base):
    """The current definition of a journey (from its YAML file); `version` grows when its content hash changes."""

    __tablename__ = "engage_journeys"

    key: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(200))
    version: Mapped[int] = mapped_column(sa.Integer)
    content_hash: Mapped[str] = mapped_column(sa.String(64))
    active: Mapped[bool] = mapped_column(sa.Boolean, default=True)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)

    __table_args__ = (sa.CheckConstraint("version >= 1", name="version_positive"),)


class JourneyVersion(Base):
    """Every definition a journey had: running entries keep executing the version they entered with."""

    __tablename__ = "engage_journey_versions"

    journey_key: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    version: Mapped[int] = mapped_column(sa.Integer, primary_key=True, autoincrement=False)
    content_hash: Mapped[str] = mapped_column(sa.String(64))
    definition: Mapped[dict[str, Any]] = mapped_column(JSONType)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class JourneyEntry(Base):
    """One profile's pass through a journey; `seq` numbers its entries (re-entry), `dedupe_key` names
    what caused it (`event:<id>`, `cart:<id>:<last change>`, …) so a replay never enters twice."""

    __tablename__ = "engage_journey_entries"

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True, autoincrement=True)
    journey_key: Mapped[str] = mapped_column(sa.String(64))
    journey_version: Mapped[int] = mapped_column(sa.Integer)
    profile_id: Mapped[int] = mapped_column(sa.BigInteger)
    seq: Mapped[int] = mapped_column(sa.Integer)
    dedupe_key: Mapped[str] = mapped_column(sa.String(200))
    status: Mapped[str] = mapped_column(sa.String(16))
    context: Mapped[dict[str, Any]] = mapped_column(JSONType)
    entered_at: Mapped[datetime] = mapped_column(UTCDateTime)
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    end_reason: Mapped[str | None] = mapped_column(sa.String(64), nullable=True)
    converted_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)

    __table_args__ = (
        sa.UniqueConstraint("journey_key", "profile_id", "seq"),
        sa.UniqueConstraint("journey_key", "dedupe_key"),
        sa.CheckConstraint("status IN ('active', 'completed', 'exited', 'control')", name="status_known"),
        sa.CheckConstraint("seq >= 1", name="seq_positive"),
        sa.Index("ix_engage_journey_entries_profile", "profile_id", "journey_key"),
    )


class JourneyStep(Base):
    """The durable schedule: one row per (journey, step, profile, entry), due at `due_at`.

    `scheduled` → `claimed` (a worker holds it until `lease_until`; an expired lease is claimed
    again after a crash) → `done` / `skipped` / `failed`, or `cancelled` when the entry exits."""

    __tablename__ = "engage_journey_steps"

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True, autoincrement=True)
    entry_id: Mapped[int] = mapped_column(sa.ForeignKey("engage_journey_entries.id"))
    journey_key: Mapped[str] = mapped_column(sa.String(64))
    step_key: Mapped[str] = mapped_column(sa.String(64))
    profile_id: Mapped[int] = mapped_column(sa.BigInteger)
    entry_seq: Mapped[int] = mapped_column(sa.Integer)
    due_at: Mapped[datetime] = mapped_column(UTCDateTime)
    status: Mapped[str] = mapped_column(sa.String(16))
    attempts: Mapped[int] = mapped_column(sa.Integer, default=0)
    claim_token: Mapped[str | None] = mapped_column(sa.String(64), nullable=True)
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    outcome: Mapped[str | None] = mapped_column(sa.String(64), nullable=True)
    detail: Mapped[dict[str, Any] | None] = mapped_column(JSONType, nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)

    __table_args__ = (
        sa.UniqueConstraint("journey_key", "step_key", "profile_id", "entry_seq"),
        sa.CheckConstraint(
            "status IN ('scheduled', 'claimed', 'done', 'skipped', 'failed', 'cancelled')", name="status_known"
        ),
        sa.Index("ix_engage_journey_steps_due", "status", "due_at"),
        sa.Index("ix_engage_journey_steps_entry", "entry_id"),
    )


class JourneyMessage(Base):
    """A message a step sent (or failed to send): one per step at most; opens and clicks are counted here."""

    __tablename__ = "engage_journey_messages"

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True, autoincrement=True)
    step_id: Mapped[int] = mapped_column(sa.ForeignKey("engage_journey_steps.id"), unique=True)
    entry_id: Mapped[int] = mapped_column(sa.BigInteger)
    journey_key: Mapped[str] = mapped_column(sa.String(64))
    profile_id: Mapped[int] = mapped_column(sa.BigInteger)
    channel: Mapped[str] = mapped_column(sa.String(32))
    purpose: Mapped[str] = mapped_column(sa.String(64))
    address: Mapped[str] = mapped_column(sa.String(320))
    status: Mapped[str] = mapped_column(sa.String(16))
    sent_at: Mapped[datetime] = mapped_column(UTCDateTime)
    opened_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    clicks: Mapped[int] = mapped_column(sa.Integer, default=0)

    __table_args__ = (
        sa.CheckConstraint("status IN ('sent', 'failed')", name="status_known"),
        sa.Index("ix_engage_journey_messages_profile", "profile_id", "channel", "sent_at"),
    )


class JourneyTask(Base):
    """A task for store staff created by a journey step (call the customer, prepare a fitting …)."""

    __tablename__ = "engage_journey_tasks"

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True, autoincrement=True)
    step_id: Mapped[int] = mapped_column(sa.ForeignKey("engage_journey_steps.id"), unique=True)
    journey_key: Mapped[str] = mapped_column(sa.String(64))
    profile_id: Mapped[int] = mapped_column(sa.BigInteger)
    location: Mapped[str | None] = mapped_column(sa.String(64), nullable=True)
    title: Mapped[str] = mapped_column(sa.String(300))
    #: `open` until a member of staff marks it `done` on the store page (who and when: `done_by`, `done_at`)
    status: Mapped[str] = mapped_column(sa.String(16), default="open")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    done_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    done_by: Mapped[str | None] = mapped_column(sa.String(100), nullable=True)

    __table_args__ = (sa.Index("ix_engage_journey_tasks_location", "location", "status"),)


class JourneySendHold(Base):
    """A frequency-cap slot a send step holds from its decision until its outcome commits.

    The message goes out between two transactions, so the cap cannot be "count, then record the
    message" in one. Instead the step takes a hold in a write transaction serialised per (customer,
    channel) — counting sent messages plus other steps' holds — and the outcome's transaction swaps
    the hold for the message. A hold counts only while its step is still `claimed` (a crashed
    worker's hold is reused when its step is claimed again; a leftover row never blocks anyone)."""

    __tablename__ = "engage_journey_send_holds"

    step_id: Mapped[int] = mapped_column(
        BigIntId, sa.ForeignKey("engage_journey_steps.id"), primary_key=True, autoincrement=False
    )
    #: the surviving profile (cluster root) when the hold was taken
    profile_id: Mapped[int] = mapped_column(sa.BigInteger)
    channel: Mapped[str] = mapped_column(sa.String(32))
    held_at: Mapped[datetime] = mapped_column(UTCDateTime)

    __table_args__ = (sa.Index("ix_engage_journey_send_holds_profile", "profile_id", "channel"),)
