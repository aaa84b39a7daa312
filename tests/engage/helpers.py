"""Shared set-up for engage tests."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa

from omnijourney.engage import service
from omnijourney.engage.schemas import SegmentIn
from omnijourney.identity import service as identity
from omnijourney.profiles import service as profiles
from omnijourney.profiles.config import load_profile_config
from omnijourney.store import db
from omnijourney.store.base import utcnow

PROFILE_CONFIG = load_profile_config()


def ago(days: float) -> str:
    return (datetime.now(UTC) - timedelta(days=days)).isoformat()


def create(engine: sa.Engine, key: str, rule: dict[str, Any], name: str | None = None) -> dict[str, Any]:
    with db.write(engine) as conn:
        return service.create_segment(
            conn=conn, segment=SegmentIn(key=key, name=name or key, rule=rule), actor="test", now=utcnow()
        )


def segments_of(engine: sa.Engine, pid: int) -> list[str]:
    with db.read(engine) as conn:
        return [s["key"] for s in service.profile_segments(conn=conn, profile_id=pid)["segments"]]


def segment_timeline(engine: sa.Engine, pid: int, key: str) -> list[tuple[str, int]]:
    """(event, version) of this segment's entries / exits on the profile's timeline, oldest first."""
    with db.read(engine) as conn:
        root = identity.canonical_id(conn=conn, profile_id=pid)
        assert root is not None
        items, _ = profiles.timeline(
            conn=conn,
            member_ids=identity.members(conn=conn, root=root),
            limit=500,
            events=[service.ENTERED, service.LEFT],
        )
    return [
        (i["event"], i["properties"]["segment_version"]) for i in reversed(items) if i["properties"]["segment"] == key
    ]


def refresh(engine: sa.Engine) -> dict[str, int]:
    total = {"entered": 0, "left": 0}
    after = 0
    while True:
        with db.write(engine) as conn:
            nxt, counts = service.refresh_chunk(
                conn=conn, after=after, limit=100, now=utcnow(), profile_config=PROFILE_CONFIG
            )
        for k in total:
            total[k] += counts[k]
        if nxt is None:
            return total
        after = nxt
