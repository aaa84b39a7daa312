"""Storing validated messages. Plain functions; the caller owns the transaction."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from omnijourney.ingest.models import DeadLetter, Event
from omnijourney.ingest.schemas import FieldError, ValidMessage
from omnijourney.store import dialect

EVENTS = Event.__table__
DEAD_LETTERS = DeadLetter.__table__
MAX_DEAD_LETTER_PAYLOAD = 64 * 1024

#: the columns an appended event carries, in statement order (all but the log position `id`)
EVENT_COLUMNS = (
    "source_id",
    "message_id",
    "type",
    "event",
    "user_id",
    "anonymous_id",
    "channel",
    "timestamp",
    "received_at",
    "sent_at",
    "original_timestamp",
    "order_id",
    "cart_id",
    "revenue",
    "currency",
    "context",
    "payload",
)
_EVENT_KEY = ("source_id", "message_id")
_EVENT_JSON = ("context", "payload")
_UNSET: Any = object()


class EventEncoder:
    """Turns event rows into the flat, driver-ready values `append_encoded_events` inserts.

    Rows are `ValidMessage.row()` dicts (aware datetimes, JSON values or `Encoded` text). The
    values are exactly what the column types would bind (`dialect.datetime_binder`,
    `dialect.json_binder`), so reading them back through SQLAlchemy gives the same objects;
    binding thousands of rows through SQLAlchemy's type processors cost more than the insert.
    The group-commit writer encodes on the submitting thread, keeping its own thread (and the
    GIL it has to win back after every SQLite call) for the database.
    """

    def __init__(self, bind: Connection | sa.Engine) -> None:
        self._dt = dialect.datetime_binder(bind)
        self._js = dialect.json_binder(bind)

    def encode(self, rows: Sequence[dict[str, Any]]) -> list[Any]:
        dt, js = self._dt, self._js
        out: list[Any] = []
        extend = out.extend
        # the rows of one request share received_at (and usually sent_at): convert those once
        received_prev = sent_prev = _UNSET
        received = sent = None
        for r in rows:
            value = r["received_at"]
            if value is not received_prev:
                received_prev, received = value, dt(value)
            value = r.get("sent_at")
            if value is not sent_prev:
                sent_prev, sent = value, dt(value)
            extend(
                (
                    r["source_id"],
                    r["message_id"],
                    r["type"],
                    r.get("event"),
                    r.get("user_id"),
                    r.get("anonymous_id"),
                    r["channel"],
                    dt(r["timestamp"]),
                    received,
                    sent,
                    dt(r.get("original_timestamp")),
                    r.get("order_id"),
                    r.get("cart_id"),
                    r.get("revenue"),
                    r.get("currency"),
                    js(r["context"]),
                    js(r["payload"]),
                )
            )
        return out

    def encode_messages(self, source_id: int, messages: Sequence[ValidMessage]) -> list[Any]:
        """`encode([m.row(source_id) for m in messages])`, without building the dicts."""
        dt, js = self._dt, self._js
        out: list[Any] = []
        extend = out.extend
        received_prev = sent_prev = _UNSET
        received = sent = None
        for m in messages:
            value = m.received_at
            if value is not received_prev:
                received_prev, received = value, dt(value)
            value = m.sent_at
            if value is not sent_prev:
                sent_prev, sent = value, dt(value)
            extend(
                (
                    source_id,
                    m.message_id,
                    m.type,
                    m.event,
                    m.user_id,
                    m.anonymous_id,
                    m.channel,
                    dt(m.timestamp),
                    received,
                    sent,
                    dt(m.original_timestamp),
                    m.order_id,
                    m.cart_id,
                    m.revenue,
                    m.currency,
                    js(m.context),
                    js(m.payload),
                )
            )
        return out


def append_events(*, conn: Connection, rows: Sequence[dict[str, Any]]) -> None:
    """Append rows to the event log; a (source, messageId) already stored is skipped, not duplicated."""
    if rows:
        append_encoded_events(conn=conn, values=EventEncoder(conn).encode(rows))


def append_encoded_events(*, conn: Connection, values: Sequence[Any]) -> None:
    """`append_events` for rows already encoded by an `EventEncoder` for this connection's dialect."""
    if not values:
        return
    dialect.lock_event_log(conn)
    dialect.insert_values_ignoring_conflicts(conn, EVENTS, EVENT_COLUMNS, values, _EVENT_KEY, json_columns=_EVENT_JSON)


def dead_letter_row(*, source_id: int, received_at: datetime, raw: Any, errors: list[FieldError]) -> dict[str, Any]:
    try:
        text = orjson.dumps(raw).decode()
    except TypeError:
        text = repr(raw)
    message_id = raw.get("messageId") if isinstance(raw, dict) else None
    return {
        "source_id": source_id,
        "received_at": received_at,
        # NUL cannot be stored in a PostgreSQL text column: the row keeps it escaped, as the payload does
        "message_id": str(message_id).replace("\x00", "\\u0000")[:128] if message_id is not None else None,
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
