"""Tasks for store staff that journeys create (`task` steps): listed per store, marked done by staff.

A task belongs to one store (`location`); it can only be completed *at* that store, so a member
of staff can never close another store's work. Completing is idempotent (a second click or a
retried request changes nothing) and is put on the customer's timeline as `Store Task Completed`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from omnijourney.engage import schedule
from omnijourney.engage.service import SegmentError
from omnijourney.identity.models import Profile

TASKS = schedule.TASKS
PROFILES = Profile.__table__
COMPLETED = "Store Task Completed"


#: the engage domain's error (status, code, message), as offers use it
TaskError = SegmentError


def _view(row: Any, roots: dict[int, int]) -> dict[str, Any]:
    return {
        "id": row.id,
        "journey_key": row.journey_key,
        "profile_id": roots.get(row.profile_id, row.profile_id),
        "location": row.location,
        "title": row.title,
        "status": row.status,
        "created_at": row.created_at,
        "done_at": row.done_at,
        "done_by": row.done_by,
    }


def open_tasks(*, conn: Connection, location: str, limit: int = 100) -> list[dict[str, Any]]:
    """The store's open tasks, oldest first; `profile_id` is the customer's surviving profile now
    (the task was created for the profile of the time, which a merge may have absorbed since)."""
    rows = conn.execute(
        sa.select(TASKS)
        .where(TASKS.c.location == location, TASKS.c.status == "open")
        .order_by(TASKS.c.created_at, TASKS.c.id)
        .limit(limit)
    ).all()
    ids = sorted({r.profile_id for r in rows})
    roots = dict(conn.execute(sa.select(PROFILES.c.id, PROFILES.c.canonical_id).where(PROFILES.c.id.in_(ids))).all())
    return [_view(r, roots) for r in rows]


def complete_task(*, conn: Connection, task_id: int, location: str, actor: str, now: datetime) -> dict[str, Any]:
    """Mark a task of `location` done. 404 for a task that does not exist *or belongs to another
    store* (staff of one store learn nothing about another's tasks); done already: unchanged."""
    row = conn.execute(sa.select(TASKS).where(TASKS.c.id == task_id)).first()
    if row is None or row.location != location:
        raise TaskError(404, "not_found", f"no task {task_id} at this store")
    changed = conn.execute(
        sa.update(TASKS)
        .where(TASKS.c.id == task_id, TASKS.c.status == "open")
        .values(status="done", done_at=now, done_by=actor[:100])
    ).rowcount
    if changed:
        schedule.emit_event(
            conn,
            profile_id=row.profile_id,
            event=COMPLETED,
            message_id=f"oj:journey:task:{task_id}:done",
            channel="store",
            properties={"task_id": task_id, "journey": row.journey_key, "title": row.title, "location": location},
            now=now,
        )
    view = _view(row, {})
    if changed:
        view.update(status="done", done_at=now, done_by=actor[:100])
    return view
