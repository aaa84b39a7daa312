"""The processing stage: apply handlers to the event log in order, exactly once.

Each step reads the next events after the checkpoint, applies every handler and moves
the checkpoint, all in the caller's transaction. A crash anywhere before commit leaves
both the handlers' effects and the checkpoint as they were, so the step simply runs
again: nothing is lost and nothing is applied twice.

Manual identity actions (unmerge) are part of the same order: each is recorded with the
log position it was made at, and a step never processes events past an action it has not
applied yet. A rebuild (reset, then steps until idle) therefore replays events and
actions interleaved exactly as they happened, and ends in the same state.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any, Protocol

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Row

from omnijourney.commerce import events as outbox
from omnijourney.commerce.handler import CommerceHandler
from omnijourney.engage.handler import EngageHandler
from omnijourney.engage.journey_handler import JourneyHandler
from omnijourney.identity import service as identity_service
from omnijourney.identity.handler import IdentityHandler
from omnijourney.identity.models import IdentityAction
from omnijourney.identity.rules import IdentityRules, load_rules
from omnijourney.ingest.models import Event
from omnijourney.pipeline.models import Checkpoint, DailyEventCount
from omnijourney.profiles.config import ProfileConfig, load_profile_config
from omnijourney.profiles.handler import ProfileHandler
from omnijourney.service.handler import ServiceHandler
from omnijourney.store import dialect
from omnijourney.store.base import utcnow

EVENTS = Event.__table__
CHECKPOINTS = Checkpoint.__table__
DAILY_COUNTS = DailyEventCount.__table__
ACTIONS = IdentityAction.__table__
UNMERGE_SOURCE = identity_service.UNMERGE_SOURCE

MAIN = "main"

#: the columns handlers see (context is not loaded: the payload carries the original context)
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
    one computed (profiles use the member each event was resolved to by identity).
    `reset` deletes everything the handler derived from the log (for a rebuild).
    """

    name: str

    def apply(self, conn: Connection, events: Sequence[Row[Any]], ctx: dict[str, Any]) -> None: ...

    def reset(self, conn: Connection) -> None: ...


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

    def reset(self, conn: Connection) -> None:
        conn.execute(sa.delete(DAILY_COUNTS))


def default_handlers(rules: IdentityRules | None = None, profile_config: ProfileConfig | None = None) -> list[Handler]:
    """Handlers in the order they run inside each step. Loading validates the YAML configuration."""
    return [
        DailyCounts(),
        IdentityHandler(rules or load_rules()),
        ProfileHandler(profile_config or load_profile_config()),
        CommerceHandler(),
        ServiceHandler(),
        EngageHandler(profile_config=profile_config),
        JourneyHandler(),
    ]


def checkpoint_row(*, conn: Connection, name: str = MAIN, lock: bool = False) -> Row[Any]:
    stmt = sa.select(CHECKPOINTS.c.position, CHECKPOINTS.c.action_seq).where(CHECKPOINTS.c.name == name)
    if lock:
        stmt = dialect.for_update(stmt, conn)
    row = conn.execute(stmt).first()
    if row is None:
        conn.execute(sa.insert(CHECKPOINTS).values(name=name, position=0, action_seq=0, updated_at=utcnow()))
        row = conn.execute(stmt).one()
    return row


def checkpoint(*, conn: Connection, name: str = MAIN, lock: bool = False) -> int:
    return int(checkpoint_row(conn=conn, name=name, lock=lock).position)


def _apply_due_actions(conn: Connection, position: int, action_seq: int, name: str) -> tuple[int, int | None]:
    """Apply actions made at or before `position`; return the new action_seq and the next barrier."""
    rows = conn.execute(sa.select(ACTIONS).where(ACTIONS.c.id > action_seq).order_by(ACTIONS.c.id)).all()
    barrier = None
    for a in rows:
        if a.position > position:
            barrier = a.position
            break
        if a.kind == "unmerge":
            identity_service.apply_unmerge(conn=conn, survivor_id=a.survivor_id, merged_id=a.merged_id)
        action_seq = a.id
    conn.execute(sa.update(CHECKPOINTS).where(CHECKPOINTS.c.name == name).values(action_seq=action_seq))
    return action_seq, barrier


def process_step(
    *, conn: Connection, handlers: Sequence[Handler], limit: int = 2000, name: str = MAIN, rebuild: bool = False
) -> int:
    """Apply the next `limit` events to every handler; returns how many were processed.

    `rebuild` says this process is replaying the log after a `reset`, alone: handlers may
    keep state in memory across steps. They get the checkpoint the step started from
    (`ctx["checkpoint"]`: position, action sequence), the action sequence after it
    (`ctx["action_seq"]`) and whether identity actions were applied first
    (`ctx["actions_applied"]`), to tell whether what they kept is still valid.
    """
    row = checkpoint_row(conn=conn, name=name, lock=True)
    position, action_seq = int(row.position), int(row.action_seq)
    start = (position, action_seq)
    barrier = None
    if conn.execute(sa.select(ACTIONS.c.id).where(ACTIONS.c.id > action_seq).limit(1)).first() is not None:
        action_seq, barrier = _apply_due_actions(conn, position, action_seq, name)
    stmt = sa.select(*EVENT_COLUMNS).where(EVENTS.c.id > position).order_by(EVENTS.c.id).limit(limit)
    if barrier is not None:
        stmt = stmt.where(EVENTS.c.id <= barrier)
    events = conn.execute(stmt).all()
    if not events:
        return 0
    ctx: dict[str, Any] = {
        "rebuild": rebuild,
        "checkpoint": start,
        "action_seq": action_seq,
        "actions_applied": action_seq != start[1],
    }
    for handler in handlers:
        handler.apply(conn, events, ctx)
    conn.execute(
        sa.update(CHECKPOINTS).where(CHECKPOINTS.c.name == name).values(position=events[-1].id, updated_at=utcnow())
    )
    return len(events)


def reset(*, conn: Connection, handlers: Sequence[Handler], name: str = MAIN) -> None:
    """Forget everything derived from the log; the next steps recompute it from the start."""
    checkpoint_row(conn=conn, name=name, lock=True)
    for handler in reversed(handlers):
        handler.reset(conn)
    conn.execute(
        sa.update(CHECKPOINTS).where(CHECKPOINTS.c.name == name).values(position=0, action_seq=0, updated_at=utcnow())
    )


def lag(*, conn: Connection, name: str = MAIN) -> int:
    """Events stored but not yet processed (an upper bound on PostgreSQL, where ids may have gaps)."""
    last = conn.execute(sa.select(sa.func.coalesce(sa.func.max(EVENTS.c.id), 0))).scalar_one()
    position = conn.execute(sa.select(CHECKPOINTS.c.position).where(CHECKPOINTS.c.name == name)).scalar_one_or_none()
    return max(0, int(last) - int(position or 0))


def unmerge(
    *, conn: Connection, profile_id: int, merged_id: int | None, actor: str, name: str = MAIN
) -> dict[str, Any]:
    """Unmerge now, in order with processing: under the checkpoint lock, recorded at its position."""
    row = checkpoint_row(conn=conn, name=name, lock=True)
    if conn.execute(sa.select(ACTIONS.c.id).where(ACTIONS.c.id > row.action_seq).limit(1)).first() is not None:
        _apply_due_actions(conn, int(row.position), int(row.action_seq), name)
    result = identity_service.unmerge(
        conn=conn, profile_id=profile_id, merged_id=merged_id, actor=actor, position=int(row.position)
    )
    conn.execute(sa.update(CHECKPOINTS).where(CHECKPOINTS.c.name == name).values(action_seq=result["action_id"]))
    _announce_unmerge(conn, result, actor=actor)
    return result


def _announce_unmerge(conn: Connection, result: dict[str, Any], *, actor: str) -> None:
    """A `Profile Unmerged` event on both timelines, in the unmerge's transaction (the outbox).

    Processing it re-derives what was computed for the merged cluster (segment memberships,
    via the engage handler's touched clusters), and the timeline shows who split the profile."""
    now = utcnow()
    rows = [
        outbox.prepare(
            conn,
            message_id=f"oj:unmerge:{result['action_id']}:{side}",
            event=identity_service.UNMERGED_EVENT,
            channel="other",
            profile_id=result[side],
            anonymous_id=None,
            properties={
                "survivor_id": result["survivor_id"],
                "restored_id": result["restored_id"],
                "actor": actor,
            },
            now=now,
            source_name=UNMERGE_SOURCE,
            origin="identity",
        )
        for side in ("survivor_id", "restored_id")
    ]
    outbox.append(conn, rows)
