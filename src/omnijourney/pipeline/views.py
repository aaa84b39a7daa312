"""Status of the processing stage."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from fastapi import APIRouter, Depends, Request

from omnijourney.access.deps import require_role
from omnijourney.access.service import Principal
from omnijourney.pipeline import service
from omnijourney.store import db

router = APIRouter(prefix="/api/pipeline", tags=["pipeline"])


@router.get("/status")
def status(request: Request, _: Principal = Depends(require_role("marketer"))) -> dict[str, Any]:
    with db.read(request.app.state.engine) as conn:
        position = conn.execute(
            sa.select(service.CHECKPOINTS.c.position).where(service.CHECKPOINTS.c.name == service.MAIN)
        ).scalar_one_or_none()
        lag = service.lag(conn=conn)
        counts = conn.execute(
            sa.select(
                service.DAILY_COUNTS.c.source_id,
                service.DAILY_COUNTS.c.channel,
                sa.func.sum(service.DAILY_COUNTS.c.count).label("events"),
            ).group_by(service.DAILY_COUNTS.c.source_id, service.DAILY_COUNTS.c.channel)
        ).all()
    return {
        "checkpoint": int(position or 0),
        "lag": lag,
        "processed_by_source": [
            {"source_id": r.source_id, "channel": r.channel, "events": int(r.events)} for r in counts
        ],
    }
