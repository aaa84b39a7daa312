"""Storing validated messages. Plain functions; the caller owns the transaction."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from omnijourney.ingest.models import DeadLetter, Event
from omnijourney.ingest.schemas import FieldError
from omnijourney.store import dialect

EVENTS = Event.__table__
DEAD_LETTERS = DeadLetter.__table__
MAX_DEAD_LETTER_PAYLOAD = 64 * 1024


def append_events(*, conn: Connection, rows: Sequence[dict[str, Any]]) -> None:
    """Append rows to the event log; a (source, messageId) already stored is skipped, not duplicated."""
    if not rows:
        return
    dialect.lock_event_log(conn)
    stmt = dialect.insert_ignoring_conflicts(conn, EVENTS, ["source_id", "message_id"])
    conn.execute(stmt, list(rows))


def dead_letter_row(*, source_id: int, received_at: datetime, raw: Any, errors: list[FieldError]) -> dict[str, Any]:
    try:
        text = orjson.dumps(raw).decode()
    except TypeError:
        text = repr(raw)
    message_id = raw.get("messageId") if isinstance(raw, dict) else None
    return {
        "source_id": source_id,
        "received_at": received_at,
        "message_id": str(message_id)[:128] if message_id is not None else None,
        "errors": [e.as_dict() for e in errors],
        "payload": text[:MAX_DEAD_LETTER_PAYLOAD],
    }


def append_dead_letters(*, conn: Connection, rows: Sequence[dict[str, Any]]) -> None:
    if rows:
        conn.execute(sa.insert(DEAD_LETTERS), list(rows))


def count_events(*, conn: Connection, source_id: int | None = None) -> int:
    stmt = sa.select(sa.func.count()).select_from(EVENTS)
    if source_id is not None:
        stmt = stmt.where(EVENTS.c.source_id == source_id)
    return int(conn.execute(stmt).scalar_one())


def last_event_id(*, conn: Connection) -> int:
    return int(conn.execute(sa.select(sa.func.coalesce(sa.func.max(EVENTS.c.id), 0))).scalar_one())


def list_events(
    *, conn: Connection, after: int = 0, limit: int = 100, source_id: int | None = None
) -> list[dict[str, Any]]:
    stmt = sa.select(EVENTS).where(EVENTS.c.id > after).order_by(EVENTS.c.id).limit(limit)
    if source_id is not None:
        stmt = stmt.where(EVENTS.c.source_id == source_id)
    return [dict(r._mapping) for r in conn.execute(stmt)]


def list_dead_letters(*, conn: Connection, limit: int = 100, before: int | None = None) -> list[dict[str, Any]]:
    stmt = sa.select(DEAD_LETTERS).order_by(DEAD_LETTERS.c.id.desc()).limit(limit)
    if before is not None:
        stmt = stmt.where(DEAD_LETTERS.c.id < before)
    return [dict(r._mapping) for r in conn.execute(stmt)]
