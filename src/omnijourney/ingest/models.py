"""The event log (append-only, deduplicated) and the dead-letter table for rejected messages."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from omnijourney.store.base import Base, BigIntId, JSONType, UTCDateTime


class Event(Base):
    """One accepted message. `id` is the log position the processing stage checkpoints on."""

    __tablename__ = "events"

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True, autoincrement=True)
    source_id: Mapped[int] = mapped_column(sa.ForeignKey("sources.id"))
    message_id: Mapped[str] = mapped_column(sa.String(128))
    type: Mapped[str] = mapped_column(sa.String(16))
    event: Mapped[str | None] = mapped_column(sa.String(200), nullable=True)
    user_id: Mapped[str | None] = mapped_column(sa.String(255), nullable=True)
    anonymous_id: Mapped[str | None] = mapped_column(sa.String(255), nullable=True)
    channel: Mapped[str] = mapped_column(sa.String(32))
    #: skew-corrected event time: receivedAt - (sentAt - originalTimestamp)
    timestamp: Mapped[datetime] = mapped_column(UTCDateTime)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime)
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    original_timestamp: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # typed E-commerce Spec v2 fields, lifted out of properties for projections and analytics
    order_id: Mapped[str | None] = mapped_column(sa.String(128), nullable=True)
    cart_id: Mapped[str | None] = mapped_column(sa.String(128), nullable=True)
    revenue: Mapped[float | None] = mapped_column(sa.Float, nullable=True)
    currency: Mapped[str | None] = mapped_column(sa.String(3), nullable=True)
    #: the message's context enriched by the server (ip)
    context: Mapped[dict[str, Any]] = mapped_column(JSONType)
    #: the message exactly as received
    payload: Mapped[dict[str, Any]] = mapped_column(JSONType)

    __table_args__ = (sa.UniqueConstraint("source_id", "message_id"),)


class DeadLetter(Base):
    """A message rejected from an otherwise accepted batch, kept with its reasons for inspection."""

    __tablename__ = "dead_letters"

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True, autoincrement=True)
    source_id: Mapped[int] = mapped_column(sa.ForeignKey("sources.id"))
    received_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    message_id: Mapped[str | None] = mapped_column(sa.String(128), nullable=True)
    errors: Mapped[list[dict[str, Any]]] = mapped_column(JSONType)
    #: the rejected message as received (truncated past 64 KiB)
    payload: Mapped[str] = mapped_column(sa.Text)
