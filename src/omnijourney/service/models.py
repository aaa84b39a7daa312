"""Conversations, their messages, internal notes and linked orders; the outbox ledger.

Ids of conversations, messages and notes are the log positions of the events that created
them (an API change appends its event first and uses that position), so a rebuild from the
log recreates the same ids. Profiles are referenced by the member an event was resolved to
and read across every member of the cluster, as the profile tables do.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from omnijourney.store.base import Base, JSONType, UTCDateTime

CHANNELS = ("chat", "email", "phone", "social", "sms", "store")
STATUSES = ("open", "pending", "resolved")
AUTHORS = ("customer", "agent", "bot")


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


class Conversation(Base):
    __tablename__ = "service_conversations"

    id: Mapped[int] = mapped_column(sa.BigInteger, primary_key=True, autoincrement=False)
    #: the source whose id space `external_id` belongs to (the internal service source for API-made ones)
    source_id: Mapped[int] = mapped_column(sa.Integer)
    external_id: Mapped[str] = mapped_column(sa.String(128))
    channel: Mapped[str] = mapped_column(sa.String(16), index=True)
    #: the profile member the conversation belongs to (read across its cluster)
    profile_id: Mapped[int | None] = mapped_column(sa.BigInteger, nullable=True)
    status: Mapped[str] = mapped_column(sa.String(16), index=True)
    assignee: Mapped[str | None] = mapped_column(sa.String(100), nullable=True, index=True)
    topic: Mapped[str | None] = mapped_column(sa.String(100), nullable=True)
    subject: Mapped[str | None] = mapped_column(sa.String(300), nullable=True)
    resolution: Mapped[str | None] = mapped_column(sa.String(100), nullable=True)
    #: channel-specific details (call direction, durations, entry point, language, ...)
    attributes: Mapped[dict[str, Any]] = mapped_column(JSONType)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime)
    last_activity_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    # ---- measures
    message_count: Mapped[int] = mapped_column(sa.Integer, default=0)
    first_customer_message_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    #: first reply by a human agent after the first customer message (calls: when the agent answered)
    first_response_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    #: first reply by an agent or a bot after the first customer message
    first_reply_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    bot_involved: Mapped[bool] = mapped_column(sa.Boolean, default=False)
    handoff_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    first_assigned_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    resolved_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    reopen_count: Mapped[int] = mapped_column(sa.Integer, default=0)
    #: 1 for a new matter; n+1 for a repeat contact about the matter of a conversation with number n
    contact_number: Mapped[int] = mapped_column(sa.Integer, default=1)
    #: later conversations that were repeat contacts about this one's matter
    followup_count: Mapped[int] = mapped_column(sa.Integer, default=0)
    previous_conversation_id: Mapped[int | None] = mapped_column(sa.BigInteger, nullable=True)
    lost_context: Mapped[bool] = mapped_column(sa.Boolean, default=False)
    csat: Mapped[int | None] = mapped_column(sa.Integer, nullable=True)
    csat_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    nps: Mapped[int | None] = mapped_column(sa.Integer, nullable=True)
    nps_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)

    __table_args__ = (
        sa.UniqueConstraint("source_id", "external_id"),
        sa.CheckConstraint(_in("channel", CHANNELS), name="channel_known"),
        sa.CheckConstraint(_in("status", STATUSES), name="status_known"),
        sa.CheckConstraint("csat IS NULL OR csat BETWEEN 1 AND 5", name="csat_range"),
        sa.CheckConstraint("nps IS NULL OR nps BETWEEN 0 AND 10", name="nps_range"),
        sa.CheckConstraint("contact_number >= 1 AND followup_count >= 0 AND reopen_count >= 0", name="counts"),
        sa.Index("ix_service_conversations_profile_started", "profile_id", "started_at"),
        sa.Index("ix_service_conversations_previous", "previous_conversation_id"),  # migration 0012
    )


class Message(Base):
    """One message of a transcript; (channel, external_id) is unique, so a redelivered message is stored once."""

    __tablename__ = "service_messages"

    id: Mapped[int] = mapped_column(sa.BigInteger, primary_key=True, autoincrement=False)
    conversation_id: Mapped[int] = mapped_column(
        sa.ForeignKey("service_conversations.id", ondelete="CASCADE"), index=True
    )
    channel: Mapped[str] = mapped_column(sa.String(16))
    external_id: Mapped[str] = mapped_column(sa.String(160))
    author: Mapped[str] = mapped_column(sa.String(16))
    author_id: Mapped[str | None] = mapped_column(sa.String(100), nullable=True)
    text: Mapped[str] = mapped_column(sa.Text)
    sent_at: Mapped[datetime] = mapped_column(UTCDateTime)

    __table_args__ = (
        sa.UniqueConstraint("channel", "external_id"),
        sa.CheckConstraint(_in("author", AUTHORS), name="author_known"),
    )


class Note(Base):
    """An internal note (staff only): call notes, hand-over remarks."""

    __tablename__ = "service_notes"

    id: Mapped[int] = mapped_column(sa.BigInteger, primary_key=True, autoincrement=False)
    conversation_id: Mapped[int] = mapped_column(
        sa.ForeignKey("service_conversations.id", ondelete="CASCADE"), index=True
    )
    external_id: Mapped[str] = mapped_column(sa.String(160))
    author_id: Mapped[str | None] = mapped_column(sa.String(100), nullable=True)
    text: Mapped[str] = mapped_column(sa.Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)

    __table_args__ = (sa.UniqueConstraint("conversation_id", "external_id"),)


class ConversationOrder(Base):
    """A link from a conversation to an order (the order reference shops, POS and commerce use)."""

    __tablename__ = "service_conversation_orders"

    conversation_id: Mapped[int] = mapped_column(
        sa.ForeignKey("service_conversations.id", ondelete="CASCADE"), primary_key=True
    )
    order_ref: Mapped[str] = mapped_column(sa.String(128), primary_key=True, index=True)
    linked_at: Mapped[datetime] = mapped_column(UTCDateTime)


class OutboxEntry(Base):
    """An event this package appended to the log for an API change, already applied by the API.

    The processing stage skips such events while the entry exists; a reset deletes the entries
    with everything else, so a rebuild applies the events like any other.
    """

    __tablename__ = "service_outbox"

    event_id: Mapped[int] = mapped_column(sa.BigInteger, primary_key=True, autoincrement=False)
    conversation_id: Mapped[int] = mapped_column(sa.BigInteger, index=True)
    kind: Mapped[str] = mapped_column(sa.String(32))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
