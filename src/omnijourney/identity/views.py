"""Identity review routes: conflicts, and unmerge (admins only)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel

from omnijourney.access.deps import require_role
from omnijourney.access.service import Principal
from omnijourney.errors import ApiError
from omnijourney.identity import service
from omnijourney.identity.service import IdentityError
from omnijourney.store import db

router = APIRouter(tags=["identity"])


class UnmergeRequest(BaseModel):
    #: the profile to split off; the cluster's latest merge when omitted
    merged_id: int | None = None


@router.get("/api/identity/conflicts")
def conflicts(
    request: Request,
    kind: str | None = Query(None, pattern="^(veto|limit|untrusted|unmerged|moved)$"),
    profile_id: int | None = None,
    limit: int = Query(100, ge=1, le=1000),
    before: int | None = None,
    _: Principal = Depends(require_role()),
) -> dict[str, Any]:
    with db.read(request.app.state.engine) as conn:
        rows = service.list_conflicts(conn=conn, kind=kind, profile_id=profile_id, limit=limit, before=before)
    return {"conflicts": rows, "next_before": rows[-1]["id"] if len(rows) == limit else None}


@router.post("/api/profiles/{profile_id:int}/unmerge")
def unmerge(
    profile_id: int,
    request: Request,
    body: UnmergeRequest | None = None,
    principal: Principal = Depends(require_role()),
) -> dict[str, Any]:
    from omnijourney.pipeline import service as pipeline

    try:
        with db.write(request.app.state.engine) as conn:
            return pipeline.unmerge(
                conn=conn,
                profile_id=profile_id,
                merged_id=body.merged_id if body else None,
                actor=f"token:{principal.token_id}:{principal.name}",
            )
    except IdentityError as exc:
        raise ApiError(
            409 if "no merge" in str(exc) or "not merged" in str(exc) else 404, "unmerge_failed", str(exc)
        ) from exc
