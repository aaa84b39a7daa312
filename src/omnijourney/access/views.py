"""Admin routes for sources, write keys and API tokens."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request

from omnijourney.access import service
from omnijourney.access.deps import require_role
from omnijourney.access.schemas import SourceCreate, SourceOut, TokenCreate, TokenOut
from omnijourney.access.service import AccessError, Principal
from omnijourney.errors import ApiError
from omnijourney.store import db

router = APIRouter(prefix="/api", tags=["access"])
admin_only = require_role("admin")


@router.get("/sources", response_model=list[SourceOut])
def list_sources(request: Request, _: Principal = Depends(admin_only)) -> list[SourceOut]:
    with db.read(request.app.state.engine) as conn:
        return [SourceOut.of(s) for s in service.list_sources(conn=conn)]


@router.post("/sources", response_model=SourceOut, status_code=201)
def create_source(body: SourceCreate, request: Request, _: Principal = Depends(admin_only)) -> SourceOut:
    try:
        with db.write(request.app.state.engine) as conn:
            info = service.create_source(
                conn=conn,
                name=body.name,
                channel=body.channel,
                trusted=body.trusted,
                allowed_origins=body.allowed_origins,
            )
    except AccessError as exc:
        raise ApiError(400, "invalid_source", str(exc)) from exc
    request.app.state.sources.invalidate()
    return SourceOut.of(info)


@router.post("/sources/{source_id}/disable", status_code=204)
def disable_source(source_id: int, request: Request, _: Principal = Depends(admin_only)) -> None:
    with db.write(request.app.state.engine) as conn:
        service.set_source_enabled(conn=conn, source_id=source_id, enabled=False)
    request.app.state.sources.invalidate()


@router.post("/tokens", response_model=TokenOut, status_code=201)
def create_token(body: TokenCreate, request: Request, _: Principal = Depends(admin_only)) -> TokenOut:
    try:
        with db.write(request.app.state.engine) as conn:
            token = service.create_token(conn=conn, role=body.role, name=body.name)
    except AccessError as exc:
        raise ApiError(400, "invalid_token_request", str(exc)) from exc
    return TokenOut(token=token, role=body.role)


@router.post("/tokens/{token_id}/revoke", status_code=204)
def revoke_token(token_id: int, request: Request, _: Principal = Depends(admin_only)) -> None:
    """Revoke at once on this node; other API nodes stop accepting it within the token cache's TTL."""
    with db.write(request.app.state.engine) as conn:
        revoked = service.revoke_token(conn=conn, token_id=token_id)
    request.app.state.tokens.invalidate()
    if not revoked:
        raise ApiError(404, "not_found", f"no active token {token_id}")


@router.get("/me")
def whoami(
    principal: Principal = Depends(require_role("marketer", "agent", "store_staff")),
) -> dict[str, str]:
    return {"name": principal.name, "role": principal.role}
