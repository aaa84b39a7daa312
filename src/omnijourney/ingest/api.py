"""Authenticated routes to inspect what was collected: stored events and dead letters."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Query, Request

from omnijourney.access.deps import require_role
from omnijourney.access.service import Principal
from omnijourney.ingest import service
from omnijourney.store import db

router = APIRouter(prefix="/api", tags=["collect"])


@router.get("/events")
def list_events(
    request: Request,
    after: int = Query(0, ge=0, description="return events with a log position after this one"),
    limit: int = Query(100, ge=1, le=1000),
    source_id: int | None = None,
    _: Principal = Depends(require_role("marketer")),
) -> dict[str, Any]:
    with db.read(request.app.state.engine) as conn:
        events = service.list_events(conn=conn, after=after, limit=limit, source_id=source_id)
    next_after = events[-1]["id"] if len(events) == limit else None
    return {"events": events, "next_after": next_after}


@router.get("/dead-letters")
def list_dead_letters(
    request: Request,
    limit: int = Query(100, ge=1, le=1000),
    before: int | None = None,
    _: Principal = Depends(require_role()),
) -> dict[str, Any]:
    with db.read(request.app.state.engine) as conn:
        rows = service.list_dead_letters(conn=conn, limit=limit, before=before)
    return {"dead_letters": rows, "next_before": rows[-1]["id"] if len(rows) == limit else None}
