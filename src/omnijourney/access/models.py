"""Sources (who may send events, on which channel, how trusted) and API tokens (who may read)."""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from omnijourney.store.base import Base, JSONType, UTCDateTime, utcnow


class Source(Base):
    __tablename__ = "sources"

    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(100), unique=True)
    channel: Mapped[str] = mapped_column(sa.String(32))
    #: trusted server-side sources may merge identified profiles; client-side ones may not
    trusted: Mapped[bool] = mapped_column(sa.Boolean, default=False)
    #: write keys are public by design (they ship inside browser and app bundles)
    write_key: Mapped[str] = mapped_column(sa.String(64), unique=True)
    #: CORS origins allowed for browser traffic; ["*"] allows any
    allowed_origins: Mapped[list[str]] = mapped_column(JSONType, default=lambda: ["*"])
    enabled: Mapped[bool] = mapped_column(sa.Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class ApiToken(Base):
    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(100))
    role: Mapped[str] = mapped_column(sa.String(32))
    #: SHA-256 of the token; tokens carry 256 bits of randomness so a fast hash is sufficient
    token_hash: Mapped[str] = mapped_column(sa.String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)

    __table_args__ = (sa.CheckConstraint("role IN ('admin', 'marketer', 'agent', 'store_staff')", name="role_known"),)
