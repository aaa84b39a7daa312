"""The journeys page of the staff console (marketer, admin): /console/journeys.

Read-only: journeys are defined in YAML files (docs/ENGAGE.md); the page lists each with its
trigger, steps, version and statistics (entered, control, sent, converted, uplift) — the same data
as `GET /api/engage/journeys`.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response

from omnijourney.engage import schedule
from omnijourney.engage.journeys import default_journeys
from omnijourney.store import db
from omnijourney.store.base import utcnow
from omnijourney.web.service import Session
from omnijourney.web.views import _render, page

router = APIRouter(prefix="/console/journeys", include_in_schema=False)
MARKETING = ("admin", "marketer")


def _load(engine: Any) -> list[dict[str, Any]]:
    with db.write(engine) as conn:
        schedule.sync_journeys(conn=conn, journeys=default_journeys(), now=utcnow())
    with db.read(engine) as conn:
        return schedule.overview(conn)


def _describe(step: dict[str, Any]) -> str:
    """One line per step for the page."""
    kind = step["kind"]
    body = step.get(kind) or {}
    if kind == "wait":
        parts = [f"{v:g} {k}" for k, v in body.items() if v]
        return "wait " + (" ".join(parts) or "0 minutes")
    if kind == "send":
        return f"send {body.get('template')} ({body.get('purpose')}) via {' / '.join(body.get('channels', []))}"
    if kind == "webhook":
        return f"webhook {body.get('event')} to {body.get('url')}"
    if kind == "update_trait":
        return f"set trait {body.get('key')} = {body.get('value')!r}"
    if kind == "task":
        return f"task for {body.get('location') or 'staff'}: {body.get('title')}"
    if kind == "branch":
        return f"branch: then {body.get('then')}, else {body.get('else')}"
    return "condition (ends the journey when false)"


@router.get("")
async def journeys_page(request: Request, session: Session = Depends(page(*MARKETING))) -> Response:
    items = await run_in_threadpool(_load, request.app.state.engine)
    for j in items:
        for s in j["steps"]:
            s["text"] = _describe(s)
    return _render(request, "journeys.html", session, {"journeys": items})
