"""Checkpoint of the processing stage, and the event-count projection it maintains."""

from __future__ import annotations

from datetime import date, datetime

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from omnijourney.store.base import Base, UTCDateTime


class Checkpoint(Base):
    """Last event id fully applied by a pipeline; advanced in the same transaction as its effects."""

    __tablename__ = "pipeline_checkpoints"

    name: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    position: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    #: the last manual identity action (unmerge) applied, replayed in order by a rebuild
    action_seq: Mapped[int] = mapped_column(sa.BigInteger, default=0, server_default="0")
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)


class DailyEventCount(Base):
    """Events per day, source, channel and type: the ingestion health projection."""

    __tablename__ = "daily_event_counts"

    day: Mapped[date] = mapped_column(sa.Date, primary_key=True)
    source_id: Mapped[int] = mapped_column(sa.ForeignKey("sources.id"), primary_key=True)
    channel: Mapped[str] = mapped_column(sa.String(32), primary_key=True)
    type: Mapped[str] = mapped_column(sa.String(16), primary_key=True)
    count: Mapped[int] = mapped_column(sa.BigInteger, default=0)

    __table_args__ = (sa.CheckConstraint("count >= 0", name="count_not_negative"),)
