"""The processing stage: apply handlers to the event log in order, exactly once.

Each step reads the next events after the checkpoint, applies every handler and moves
the checkpoint, all in the caller's transaction. A crash anywhere before commit leaves
both the handlers' effects and the checkpoint as they were, so the step simply runs
again: nothing is lost and nothing is applied twice.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any, Protocol

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Row

from omnijourney.ingest.models import Event
from omnijourney.pipeline.models import Checkpoint, DailyEventCount
from omnijourney.store import dialect
from omnijourney.store.base import utcnow

EVENTS = Event.__table__
CHECKPOINTS = Checkpoint.__table__
DAILY_COUNTS = DailyEventCount.__table__

MAIN = "main"

#: the columns handlers see (context is not loaded: no handler needs it yet, and decoding costs)
EVENT_COLUMNS = [
    EVENTS.c.id,
    EVENTS.c.source_id,
    EVENTS.c.type,
    EVENTS.c.event,
    EVENTS.c.user_id,
    EVENTS.c.anonymous_id,
    EVENTS.c.channel,
    EVENTS.c.timestamp,
    EVENTS.c.order_id,
    EVENTS.c.cart_id,
    EVENTS.c.revenue,
    EVENTS.c.currency,
    EVENTS.c.payload,
]


class Handler(Protocol):
    """One consumer of the event log. `apply` must only use `conn` (no commit, no side channels).

    `ctx` is shared by the handlers of one step, so a later handler can use what an earlier
    one computed (profiles use the profile identity resolved for each event).
    """

    name: str

    def apply(self, conn: Connection, events: Sequence[Row[Any]], ctx: dict[str, Any]) -> None: ...


class DailyCounts:
    """Maintains `daily_event_counts`: the ingestion health view per day, source, channel and type."""

    name = "daily_counts"

    def apply(self, conn: Connection, events: Sequence[Row[Any]], ctx: dict[str, Any]) -> None:
        counts = Counter((e.timestamp.date(), e.source_id, e.channel, e.type) for e in events)
        rows = [
            {"day": day, "source_id": src, "channel": ch, "type": typ, "count": n}
            for (day, src, ch, typ), n in counts.items()
        ]
        dialect.upsert_add(conn, DAILY_COUNTS, rows, ["day", "source_id", "channel", "type"], "count")


def default_handlers() -> list[Handler]:
    """Handlers in the order they run inside each step. Later capabilities append theirs."""
    return [DailyCounts()]


def checkpoint(*, conn: Connection, name: str = MAIN, lock: bool = False) -> int:
    stmt = sa.select(CHECKPOINTS.c.position).where(CHECKPOINTS.c.name == name)
    if lock:
        stmt = dialect.for_update(stmt, conn)
    position = conn.execute(stmt).scalar_one_or_none()
    if position is None:
        conn.execute(sa.insert(CHECKPOINTS).values(name=name, position=0, updated_at=utcnow()))
        if lock:  # re-read under the lock the insert just took
            return checkpoint(conn=conn, name=name, lock=True)
        return 0
    return int(position)


def process_step(*, conn: Connection, handlers: Sequence[Handler], limit: int = 2000, name: str = MAIN) -> int:
    """Apply the next `limit` events to every handler; returns how many were processed."""
    position = checkpoint(conn=conn, name=name, lock=True)
    events = conn.execute(
        sa.select(*EVENT_COLUMNS).where(EVENTS.c.id > position).order_by(EVENTS.c.id).limit(limit)
    ).all()
    if not events:
        return 0
    ctx: dict[str, Any] = {}
    for handler in handlers:
        handler.apply(conn, events, ctx)
    conn.execute(
        sa.update(CHECKPOINTS).where(CHECKPOINTS.c.name == name).values(position=events[-1].id, updated_at=utcnow())
    )
    return len(events)


def lag(*, conn: Connection, name: str = MAIN) -> int:
    """Events stored but not yet processed (an upper bound on PostgreSQL, where ids may have gaps)."""
    last = conn.execute(sa.select(sa.func.coalesce(sa.func.max(EVENTS.c.id), 0))).scalar_one()
    position = conn.execute(sa.select(CHECKPOINTS.c.position).where(CHECKPOINTS.c.name == name)).scalar_one_or_none()
    return max(0, int(last) - int(position or 0))
