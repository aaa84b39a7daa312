"""Sources, write keys, API tokens and roles. Plain functions; the caller owns the transaction."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from omnijourney.access.models import ApiToken, Source
from omnijourney.ingest.spec import CHANNELS
from omnijourney.store.base import utcnow

SOURCES = Source.__table__
TOKENS = ApiToken.__table__

ROLES: tuple[str, ...] = ("admin", "marketer", "agent", "store_staff")


class AccessError(ValueError):
    """A request to create or change access that is invalid (unknown role, duplicate name, ...)."""


@dataclass(frozen=True, slots=True)
class SourceInfo:
    """What the ingestion path needs to know about a write key, cached in memory."""

    id: int
    name: str
    channel: str
    trusted: bool
    write_key: str
    allowed_origins: tuple[str, ...]
    enabled: bool

    def allows_origin(self, origin: str | None) -> bool:
        return origin is None or "*" in self.allowed_origins or origin in self.allowed_origins


@dataclass(frozen=True, slots=True)
class Principal:
    """The caller behind a bearer token."""

    token_id: int
    name: str
    role: str


def _source_info(row: Any) -> SourceInfo:
    return SourceInfo(
        id=row.id,
        name=row.name,
        channel=row.channel,
        trusted=bool(row.trusted),
        write_key=row.write_key,
        allowed_origins=tuple(row.allowed_origins or ()),
        enabled=bool(row.enabled),
    )


def create_source(
    *,
    conn: Connection,
    name: str,
    channel: str,
    trusted: bool = False,
    allowed_origins: list[str] | None = None,
    write_key: str | None = None,
) -> SourceInfo:
    if channel not in CHANNELS:
        raise AccessError(f"unknown channel {channel!r}; one of: {', '.join(sorted(CHANNELS))}")
    if not name.strip():
        raise AccessError("a source needs a name")
    if conn.execute(sa.select(SOURCES.c.id).where(SOURCES.c.name == name)).first():
        raise AccessError(f"a source named {name!r} exists already")
    key = write_key or secrets.token_urlsafe(24)
    row = conn.execute(
        sa.insert(SOURCES)
        .values(
            name=name,
            channel=channel,
            trusted=trusted,
            write_key=key,
            allowed_origins=allowed_origins or ["*"],
            enabled=True,
            created_at=utcnow(),
        )
        .returning(*SOURCES.c)
    ).one()
    return _source_info(row)


def source_by_write_key(*, conn: Connection, write_key: str) -> SourceInfo | None:
    row = conn.execute(sa.select(SOURCES).where(SOURCES.c.write_key == write_key)).first()
    return _source_info(row) if row else None


def source_by_name(*, conn: Connection, name: str) -> SourceInfo | None:
    row = conn.execute(sa.select(SOURCES).where(SOURCES.c.name == name)).first()
    return _source_info(row) if row else None


_SOURCE_NAMES = sa.select(SOURCES.c.id, SOURCES.c.name)


def source_names(*, conn: Connection) -> dict[int, str]:
    """Source id -> name (the console's 360 page labels every identifier with its source)."""
    return dict(conn.execute(_SOURCE_NAMES).all())


def list_sources(*, conn: Connection) -> list[SourceInfo]:
    return [_source_info(r) for r in conn.execute(sa.select(SOURCES).order_by(SOURCES.c.id))]


def set_source_enabled(*, conn: Connection, source_id: int, enabled: bool) -> None:
    conn.execute(sa.update(SOURCES).where(SOURCES.c.id == source_id).values(enabled=enabled))


def all_allowed_origins(*, conn: Connection) -> set[str]:
    origins: set[str] = set()
    for (allowed,) in conn.execute(sa.select(SOURCES.c.allowed_origins).where(SOURCES.c.enabled)):
        origins.update(allowed or ())
    return origins


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def create_token(*, conn: Connection, role: str, name: str = "") -> str:
    """Create an API token and return it; only its hash is stored, so this is the one chance to see it."""
    if role not in ROLES:
        raise AccessError(f"unknown role {role!r}; one of: {', '.join(ROLES)}")
    token = "oj_" + secrets.token_urlsafe(32)
    conn.execute(
        sa.insert(TOKENS).values(name=name or role, role=role, token_hash=hash_token(token), created_at=utcnow())
    )
    return token


def principal_for_token(*, conn: Connection, token: str) -> Principal | None:
    row = conn.execute(
        sa.select(TOKENS.c.id, TOKENS.c.name, TOKENS.c.role).where(
            TOKENS.c.token_hash == hash_token(token), TOKENS.c.revoked_at.is_(None)
        )
    ).first()
    return Principal(token_id=row.id, name=row.name, role=row.role) if row else None


def revoke_token(*, conn: Connection, token_id: int) -> bool:
    res = conn.execute(
        sa.update(TOKENS).where(TOKENS.c.id == token_id, TOKENS.c.revoked_at.is_(None)).values(revoked_at=utcnow())
    )
    return res.rowcount == 1
