"""Customer 360 routes: lookup, search, profile, timeline, live stream, changes feed, consents."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any, Literal

import orjson
from fastapi import APIRouter, Depends, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response, StreamingResponse
from pydantic import BaseModel, Field
from sqlalchemy.engine import Connection

from omnijourney.access.deps import require_role
from omnijourney.access.service import Principal
from omnijourney.errors import ApiError
from omnijourney.identity import service as identity
from omnijourney.identity.normalise import country_calling_code
from omnijourney.identity.service import IdentityError
from omnijourney.profiles import service
from omnijourney.profiles.service import ProfileError
from omnijourney.responses import json_response
from omnijourney.store import db
from omnijourney.store.base import utcnow

router = APIRouter(prefix="/api/profiles", tags=["profiles"])
readers = require_role("marketer", "agent", "store_staff")
STREAM_POLL_SECONDS = 0.25


def _cluster(conn: Connection, profile_id: int) -> identity.Cluster:
    found = identity.cluster(conn=conn, profile_id=profile_id)
    if found is None:
        raise ApiError(404, "not_found", f"no profile {profile_id}")
    return found


@router.get("/lookup", response_model=None)
def lookup(
    request: Request,
    type: str = Query(..., description="identifier type: email, phone, loyalty_card, user_id, ..."),
    value: str = Query(..., min_length=1, max_length=255),
    _: Principal = Depends(readers),
) -> Response:
    """The 360 view of whoever holds this identifier (one read transaction)."""
    with db.read(request.app.state.engine) as conn:
        try:
            found = identity.lookup_cluster(
                conn=conn, rules=request.app.state.identity_rules, id_type=type, value=value
            )
        except IdentityError as exc:
            raise ApiError(400, "unknown_identifier_type", str(exc)) from exc
        if found is None:
            raise ApiError(404, "not_found", f"no profile with {type} {value!r}")
        view = service.profile_360(
            conn=conn, profile_id=found.root, config=request.app.state.profile_config, cluster=found
        )
    return json_response(view)


@router.get("/search")
def search(
    request: Request,
    q: str = Query(..., min_length=2, max_length=100),
    limit: int = Query(20, ge=1, le=100),
    _: Principal = Depends(readers),
) -> dict[str, Any]:
    try:
        with db.read(request.app.state.engine) as conn:
            code = country_calling_code(request.app.state.identity_rules.default_phone_region)
            ids = service.search(conn=conn, query=q, limit=limit, phone_country_code=code)
            results = service.summaries(conn=conn, root_ids=ids, config=request.app.state.profile_config)
    except ProfileError as exc:
        raise ApiError(400, "invalid_query", str(exc)) from exc
    return {"results": results}


@router.get("/changes")
def changes(
    request: Request,
    since: int = Query(0, ge=0, description="cursor from the previous answer; 0 for everything"),
    limit: int = Query(500, ge=1, le=5000),
    _: Principal = Depends(readers),
) -> dict[str, Any]:
    with db.read(request.app.state.engine) as conn:
        ids, cursor = service.changes(conn=conn, since=since, limit=limit)
    return {"profile_ids": ids, "next_since": cursor}


@router.get("/{profile_id:int}", response_model=None)
def get_profile(profile_id: int, request: Request, _: Principal = Depends(readers)) -> Response:
    with db.read(request.app.state.engine) as conn:
        found = _cluster(conn, profile_id)
        view = service.profile_360(
            conn=conn, profile_id=profile_id, config=request.app.state.profile_config, cluster=found
        )
    return json_response(view)


@router.get("/{profile_id:int}/timeline", response_model=None)
def get_timeline(
    profile_id: int,
    request: Request,
    limit: int = Query(50, ge=1, le=500),
    cursor: str | None = None,
    channel: list[str] | None = Query(None),
    event: list[str] | None = Query(None),
    since: datetime | None = None,
    until: datetime | None = None,
    _: Principal = Depends(readers),
) -> Response:
    with db.read(request.app.state.engine) as conn:
        root, members = _cluster(conn, profile_id)
        try:
            items, next_cursor = service.timeline(
                conn=conn,
                member_ids=members,
                limit=limit,
                cursor=cursor,
                channels=channel,
                events=event,
                since=_aware(since),
                until=_aware(until),
            )
        except ProfileError as exc:
            raise ApiError(400, "invalid_cursor", str(exc)) from exc
    return json_response({"profile_id": root, "events": items, "next_cursor": next_cursor})


def _aware(value: datetime | None) -> datetime | None:
    from datetime import UTC

    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


@router.get("/{profile_id:int}/stream")
async def stream(profile_id: int, request: Request, _: Principal = Depends(readers)) -> StreamingResponse:
    """Server-sent events: each new timeline entry of the profile (and anything merged into it), live."""
    engine = request.app.state.engine

    def latest_id() -> int:
        with db.read(engine) as conn:
            items, _ = service.timeline(conn=conn, member_ids=_cluster(conn, profile_id).members, limit=1)
            return items[0]["event_id"] if items else 0

    last = await run_in_threadpool(latest_id)

    def poll(after: int) -> list[dict[str, Any]]:
        with db.read(engine) as conn:
            found = identity.cluster(conn=conn, profile_id=profile_id)
            if found is None:
                return []
            items, _ = service.timeline(conn=conn, member_ids=found.members, limit=100, after_event_id=after)
        return sorted(items, key=lambda i: i["event_id"])

    async def events() -> AsyncIterator[bytes]:
        nonlocal last
        yield b": connected\n\n"
        idle = 0.0
        while not await request.is_disconnected():
            items = await run_in_threadpool(poll, last)
            for item in items:
                last = max(last, item["event_id"])
                data = orjson.dumps(item, option=orjson.OPT_NAIVE_UTC)
                yield b"id: %d\nevent: timeline\ndata: " % item["event_id"] + data + b"\n\n"
            if items:
                idle = 0.0
            else:
                idle += STREAM_POLL_SECONDS
                if idle >= 15:
                    idle = 0.0
                    yield b": keep-alive\n\n"
            await asyncio.sleep(STREAM_POLL_SECONDS)

    return StreamingResponse(
        events(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


class ConsentIn(BaseModel):
    purpose: str = Field(min_length=1, max_length=64, pattern=r"^[a-z][a-z0-9_]*$")
    channel: str = Field(default="all", min_length=1, max_length=32, pattern=r"^[a-z][a-z0-9_]*$")
    status: Literal["granted", "denied", "withdrawn"]
    evidence: dict[str, Any] = Field(default_factory=dict)


@router.post("/{profile_id:int}/consents", status_code=201)
def add_consent(
    profile_id: int,
    body: ConsentIn,
    request: Request,
    principal: Principal = Depends(require_role("agent", "store_staff")),
) -> dict[str, Any]:
    with db.write(request.app.state.engine) as conn:
        root = identity.canonical_id(conn=conn, profile_id=profile_id)
        if root is None:
            raise ApiError(404, "not_found", f"no profile {profile_id}")
        service.record_consent(
            conn=conn,
            profile_id=root,
            purpose=body.purpose,
            channel=body.channel,
            status=body.status,
            recorded_at=utcnow(),
            actor=f"token:{principal.token_id}:{principal.name}",
            evidence=body.evidence,
        )
        current = service.consents(conn=conn, member_ids=identity.members(conn=conn, root=root))
    return {"profile_id": root, "consents": current}


@router.get("/{profile_id:int}/consents")
def consent_history(profile_id: int, request: Request, _: Principal = Depends(readers)) -> dict[str, Any]:
    with db.read(request.app.state.engine) as conn:
        root = identity.canonical_id(conn=conn, profile_id=profile_id)
        if root is None:
            raise ApiError(404, "not_found", f"no profile {profile_id}")
        members = identity.members(conn=conn, root=root)
        return {
            "profile_id": root,
            "current": service.consents(conn=conn, member_ids=members),
            "history": service.consent_history(conn=conn, member_ids=members),
        }
