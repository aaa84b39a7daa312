"""Engage routes: segments (/api/segments), a profile's segments and recommendations
(/api/profiles/{id}/segments, /api/profiles/{id}/recommendations), model training."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response, StreamingResponse
from pydantic import ValidationError
from sqlalchemy.exc import IntegrityError

from omnijourney.access.deps import require_role
from omnijourney.access.service import Principal
from omnijourney.engage import offers, recommend, service
from omnijourney.engage.config import default_config
from omnijourney.engage.recommend import RecoError
from omnijourney.engage.schemas import OfferIn, RedeemIn, SegmentIn, SegmentUpdate
from omnijourney.engage.service import SegmentError
from omnijourney.errors import ApiError
from omnijourney.profiles.config import ProfileConfig, load_profile_config
from omnijourney.responses import json_response
from omnijourney.store import db
from omnijourney.store.base import utcnow

router = APIRouter(tags=["engage"])
marketers = require_role("marketer")
readers = require_role("marketer", "agent", "store_staff")

_sync_lock = threading.Lock()
_profile_config: list[ProfileConfig] = []


def _pcfg() -> ProfileConfig:
    if not _profile_config:
        _profile_config.append(load_profile_config())
    return _profile_config[0]


def _actor(p: Principal) -> str:
    return f"token:{p.token_id}:{p.name}"


@contextmanager
def _errors() -> Iterator[None]:
    try:
        yield
    except (SegmentError, RecoError) as exc:
        raise ApiError(exc.status, exc.code, exc.message) from exc


def _engine(request: Request) -> Any:
    engine = request.app.state.engine
    if not getattr(request.app.state, "engage_synced", False):  # the configuration segments, once per app
        with _sync_lock, db.write(engine) as conn:
            service.sync_config(conn=conn, config=default_config(), now=utcnow())
        request.app.state.engage_synced = True
    return engine


def _invalid(exc: ValidationError | ValueError) -> ApiError:
    if isinstance(exc, ValidationError):
        errors = [
            {"field": ".".join(str(x) for x in e["loc"]) or "body", "message": e["msg"].removeprefix("Value error, ")}
            for e in exc.errors()
        ]
    else:
        errors = [{"field": "body", "message": str(exc)}]
    message = "; ".join(f"{e['field']}: {e['message']}" for e in errors)
    return ApiError(400, "invalid_segment", f"the segment definition is invalid: {message}", errors=errors)


async def _json(request: Request) -> Any:
    try:
        return await request.json()
    except ValueError as exc:
        raise ApiError(400, "invalid_json", "the body must be a JSON object") from exc


def _evaluate_everyone(engine: Any, key: str) -> dict[str, Any]:
    """A new or changed definition (committed) is applied to every profile, in short chunked
    transactions so ingestion and processing are not blocked; the next refresh completes it
    should this stop half-way."""
    counts: dict[str, Any] = service.refresh_all(
        engine=engine, config=default_config(), profile_config=_pcfg(), keys=[key]
    )
    with db.read(engine) as conn:
        counts["count"] = service.count(conn=conn, key=key)
    return counts


# ------------------------------------------------------------------ segments


@router.get("/api/segments")
def list_segments(request: Request, include_inactive: bool = False, _: Principal = Depends(readers)) -> dict[str, Any]:
    with db.read(_engine(request)) as conn:
        return {"segments": service.list_segments(conn=conn, include_inactive=include_inactive)}


@router.post("/api/segments", status_code=201)
async def create_segment(request: Request, principal: Principal = Depends(marketers)) -> dict[str, Any]:
    body = await _json(request)
    try:
        seg = SegmentIn.model_validate(body)
    except ValidationError as exc:
        raise _invalid(exc) from exc
    engine = _engine(request)

    def run() -> dict[str, Any]:
        with _errors(), db.write(engine) as conn:
            out = service.create_segment(conn=conn, segment=seg, actor=_actor(principal), now=utcnow())
        out["evaluated"] = _evaluate_everyone(engine, seg.key)
        out["count"] = out["evaluated"].pop("count")
        return out

    return await run_in_threadpool(run)


@router.post("/api/segments/refresh")
def refresh_segments(request: Request, _: Principal = Depends(marketers)) -> dict[str, Any]:
    """Re-evaluate every profile (the 'within a period' conditions move with the clock)."""
    return service.refresh_all(engine=_engine(request), config=default_config(), profile_config=_pcfg())


@router.get("/api/segments/{key}")
def get_segment(key: str, request: Request, _: Principal = Depends(readers)) -> dict[str, Any]:
    with _errors(), db.read(_engine(request)) as conn:
        out = service.get_segment(conn=conn, key=key)
        out["count"] = service.count(conn=conn, key=key)
        return out


@router.put("/api/segments/{key}")
async def update_segment(key: str, request: Request, principal: Principal = Depends(marketers)) -> dict[str, Any]:
    body = await _json(request)
    try:
        update = SegmentUpdate.model_validate(body)
    except ValidationError as exc:
        raise _invalid(exc) from exc
    engine = _engine(request)

    def run() -> dict[str, Any]:
        with _errors(), db.write(engine) as conn:
            before = service.get_segment(conn=conn, key=key)["version"]
            out = service.update_segment(conn=conn, key=key, update=update, actor=_actor(principal), now=utcnow())
        if out["version"] != before:
            out["evaluated"] = _evaluate_everyone(engine, key)
            out["count"] = out["evaluated"].pop("count")
        else:
            with db.read(engine) as conn:
                out["count"] = service.count(conn=conn, key=key)
        return out

    return await run_in_threadpool(run)


@router.delete("/api/segments/{key}")
def delete_segment(key: str, request: Request, principal: Principal = Depends(marketers)) -> dict[str, Any]:
    with _errors(), db.write(_engine(request)) as conn:
        service.delete_segment(conn=conn, key=key, actor=_actor(principal), now=utcnow())
    return {"deleted": key}


@router.get("/api/segments/{key}/versions")
def segment_versions(key: str, request: Request, _: Principal = Depends(readers)) -> dict[str, Any]:
    with _errors(), db.read(_engine(request)) as conn:
        return {"versions": service.segment_versions(conn=conn, key=key)}


@router.get("/api/segments/{key}/count")
def segment_count(key: str, request: Request, _: Principal = Depends(readers)) -> dict[str, Any]:
    with _errors(), db.read(_engine(request)) as conn:
        return {"key": key, "count": service.count(conn=conn, key=key)}


@router.get("/api/segments/{key}/members")
def segment_members(
    key: str,
    request: Request,
    after: int | None = Query(None, description="the last profile id of the previous page"),
    limit: int = Query(100, ge=1, le=1000),
    _: Principal = Depends(marketers),
) -> dict[str, Any]:
    with _errors(), db.read(_engine(request)) as conn:
        items = service.members(conn=conn, key=key, after=after, limit=limit)
    return {"items": items, "next": items[-1]["profile_id"] if len(items) == limit else None}


@router.get("/api/segments/{key}/export.csv")
def export_segment(key: str, request: Request, _: Principal = Depends(marketers)) -> StreamingResponse:
    engine = _engine(request)
    with _errors(), db.read(engine) as conn:
        service.get_segment(conn=conn, key=key)

    def lines() -> Iterator[str]:
        with db.read(engine) as conn:
            yield from service.export_csv(conn=conn, key=key, config=_pcfg())

    return StreamingResponse(
        lines(),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="segment-{key}.csv"'},
    )


@router.get("/api/profiles/{profile_id}/segments")
def profile_segments(profile_id: int, request: Request, _: Principal = Depends(readers)) -> dict[str, Any]:
    with _errors(), db.read(_engine(request)) as conn:
        return service.profile_segments(conn=conn, profile_id=profile_id)


# ------------------------------------------------------------------ recommendations


@router.get("/api/profiles/{profile_id}/recommendations")
def profile_recommendations(
    profile_id: int,
    request: Request,
    context: str = Query("web"),
    store: str | None = Query(None, max_length=64),
    limit: int = Query(10),
    _: Principal = Depends(readers),
) -> Response:
    # encoded once by orjson: FastAPI's jsonable_encoder walk of the items cost more CPU than a query
    with _errors(), db.read(request.app.state.engine) as conn:
        return json_response(
            recommend.recommend(
                conn=conn,
                profile_id=profile_id,
                context=context,
                store=store,
                limit=limit,
                config=default_config().recommendations,
            )
        )


@router.post("/api/recommendations/train")
def train_recommendations(request: Request, _: Principal = Depends(marketers)) -> dict[str, Any]:
    with db.write(request.app.state.engine) as conn:
        return recommend.train(conn=conn, config=default_config().recommendations, now=utcnow())


# ------------------------------------------------------------------ offers


def _offer_invalid(exc: ValidationError) -> ApiError:
    errors = [
        {"field": ".".join(str(x) for x in e["loc"]) or "body", "message": e["msg"].removeprefix("Value error, ")}
        for e in exc.errors()
    ]
    message = "; ".join(f"{e['field']}: {e['message']}" for e in errors)
    return ApiError(400, "invalid_offer", f"the offer is invalid: {message}", errors=errors)


@router.get("/api/offers")
def list_offers(request: Request, _: Principal = Depends(readers)) -> dict[str, Any]:
    with db.read(request.app.state.engine) as conn:
        return {"offers": offers.list_offers(conn=conn)}


@router.put("/api/offers/{key}")
async def put_offer(key: str, request: Request, principal: Principal = Depends(marketers)) -> dict[str, Any]:
    body = await _json(request)
    if not isinstance(body, dict):
        raise ApiError(400, "invalid_offer", "the body must be a JSON object")
    try:
        offer = OfferIn.model_validate({**body, "key": key})
    except ValidationError as exc:
        raise _offer_invalid(exc) from exc
    engine = _engine(request)

    def run() -> dict[str, Any]:
        with _errors(), db.write(engine) as conn:
            return offers.put_offer(conn=conn, offer=offer, actor=_actor(principal), now=utcnow())

    return await run_in_threadpool(run)


@router.get("/api/offers/{key}")
def get_offer(key: str, request: Request, _: Principal = Depends(readers)) -> dict[str, Any]:
    with _errors(), db.read(request.app.state.engine) as conn:
        return offers.get_offer(conn=conn, key=key)


@router.get("/api/profiles/{profile_id}/offers")
def profile_offers(
    profile_id: int,
    request: Request,
    channel: str = Query(..., max_length=32),
    sku: str | None = Query(None, max_length=64),
    _: Principal = Depends(readers),
) -> dict[str, Any]:
    """The offers this customer may use in this channel, best first (the same in every channel)."""
    with _errors(), db.read(request.app.state.engine) as conn:
        return offers.eligible_offers(conn=conn, profile_id=profile_id, channel=channel, sku=sku, now=utcnow())


@router.post("/api/offers/{key}/redeem")
async def redeem_offer(key: str, request: Request, principal: Principal = Depends(readers)) -> dict[str, Any]:
    body = await _json(request)
    try:
        redeem = RedeemIn.model_validate(body)
    except ValidationError as exc:
        raise _offer_invalid(exc) from exc
    engine = request.app.state.engine

    def run() -> dict[str, Any]:
        try:
            with _errors(), db.write(engine) as conn:
                return offers.redeem(conn=conn, key=key, body=redeem, actor=_actor(principal), now=utcnow())
        except IntegrityError as exc:  # a database limit refused it (CHECK / UNIQUE)
            raise ApiError(409, "exhausted", f"offer {key!r} has no redemptions left") from exc

    return await run_in_threadpool(run)
