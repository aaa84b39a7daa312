"""Console users, their sessions and login attempts (for throttling)."""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from omnijourney.store.base import Base, UTCDateTime, utcnow


class ConsoleUser(Base):
    """A person who logs in to the staff console."""

    __tablename__ = "console_users"

    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True)
    #: stored lower-case; unique
    username: Mapped[str] = mapped_column(sa.String(64), unique=True)
    role: Mapped[str] = mapped_column(sa.String(32))
    #: store staff work at one store (a commerce location code); None for everyone else
    home_location: Mapped[str | None] = mapped_column(sa.String(64), nullable=True)
    #: argon2id hash (PHC string); the password itself is never stored or logged
    password_hash: Mapped[str] = mapped_column(sa.String(255))
    active: Mapped[bool] = mapped_column(sa.Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_login_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)

    __table_args__ = (sa.CheckConstraint("role IN ('admin', 'marketer', 'agent', 'store_staff')", name="role_known"),)


class ConsoleSession(Base):
    """A logged-in browser. The cookie carries a 256-bit random token; only its SHA-256 is stored."""

    __tablename__ = "console_sessions"

    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True)
    token_hash: Mapped[str] = mapped_column(sa.String(64), unique=True)
    user_id: Mapped[int] = mapped_column(sa.ForeignKey("console_users.id", ondelete="CASCADE"), index=True)
    #: the synchronizer token every state-changing request of this session must echo
    csrf_token: Mapped[str] = mapped_column(sa.String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class ConsoleLoginAttempt(Base):
    """Every login attempt, kept for throttling (per username and per client address)."""

    __tablename__ = "console_login_attempts"

    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True)
    username: Mapped[str] = mapped_column(sa.String(64))
    client: Mapped[str] = mapped_column(sa.String(64))
    succeeded: Mapped[bool] = mapped_column(sa.Boolean)
    at: Mapped[datetime] = mapped_column(UTCDateTime)

    __table_args__ = (
        sa.Index("ix_console_login_attempts_username_at", "username", "at"),
        sa.Index("ix_console_login_attempts_client_at", "client", "at"),
    )
