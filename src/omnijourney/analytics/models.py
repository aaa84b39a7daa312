"""The lake export checkpoint: the last log position whose rows are durably in the lake."""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from omnijourney.store.base import Base, UTCDateTime


class ExportCheckpoint(Base):
    """Advanced only after the Parquet files holding every event up to `position` are fsynced and renamed."""

    __tablename__ = "analytics_export_checkpoints"

    name: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    position: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    exported_rows: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)

    __table_args__ = (sa.CheckConstraint("position >= 0", name="position_non_negative"),)
