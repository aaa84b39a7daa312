"""The segments page of the staff console (marketer, admin): /console/segments.

Lists every active segment (from `engage.yaml` and from the API) with its rule, version and
member count; a marketer defines a new segment with a form (the rule in YAML or JSON, the same
grammar as the API, docs/ENGAGE.md) and downloads the members as CSV. A new segment is applied to
every profile right after its definition commits, as `POST /api/segments` does.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import orjson
import yaml
from fastapi import APIRouter, Depends, Form, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import RedirectResponse, Response, StreamingResponse
from pydantic import ValidationError

from omnijourney.engage import service
from omnijourney.engage.config import default_config
from omnijourney.engage.schemas import SegmentIn
from omnijourney.engage.service import SegmentError
from omnijourney.store import db
from omnijourney.store.base import utcnow
from omnijourney.web.service import Session
from omnijourney.web.views import _render, action, page

router = APIRouter(prefix="/console/segments", include_in_schema=False)
MARKETING = ("admin", "marketer")


def _list(engine: Any) -> list[dict[str, Any]]:
    with db.read(engine) as conn:
        items = service.list_segments(conn=conn)
    for s in items:
        s["rule_text"] = yaml.safe_dump(s["rule"], sort_keys=False, allow_unicode=True).strip()
    return items


def _page(request: Request, session: Session, form: dict[str, str], error: str | None, status: int = 200) -> Response:
    items = _list(request.app.state.engine)
    return _render(request, "segments.html", session, {"segments": items, "form": form, "error": error}, status=status)


@router.get("")
async def segments_page(request: Request, session: Session = Depends(page(*MARKETING))) -> Response:
    return await run_in_threadpool(_page, request, session, {}, None)


def _parse(key: str, name: str, description: str, rule_text: str) -> SegmentIn:
    try:
        rule = yaml.safe_load(rule_text)
    except yaml.YAMLError as exc:
        raise ValueError(f"the rule is not valid YAML or JSON: {exc}") from exc
    if not isinstance(rule, dict):
        raise ValueError("the rule must be a mapping, e.g. {all: [{trait: {key: city, op: eq, value: Praha}}]}")
    try:
        return SegmentIn.model_validate({"key": key, "name": name, "description": description, "rule": rule})
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()))
        raise ValueError(f"{where}: {first.get('msg')}" if where else str(first.get("msg"))) from exc


@router.post("")
async def create_segment(
    request: Request,
    key: str = Form("", max_length=64),
    name: str = Form("", max_length=200),
    description: str = Form("", max_length=2000),
    rule: str = Form("", max_length=20_000),
    session: Session = Depends(action(*MARKETING)),
) -> Response:
    form = {"key": key, "name": name, "description": description, "rule": rule}
    engine = request.app.state.engine

    def run() -> Response:
        try:
            segment = _parse(key.strip(), name.strip(), description.strip(), rule)
            with db.write(engine) as conn:
                service.create_segment(
                    conn=conn, segment=segment, actor=f"console:{session.user.username}", now=utcnow()
                )
        except (ValueError, SegmentError) as exc:
            message = exc.message if isinstance(exc, SegmentError) else str(exc)
            return _page(request, session, form, message, status=400)
        service.refresh_all(
            engine=engine, config=default_config(), profile_config=request.app.state.profile_config, keys=[segment.key]
        )
        return RedirectResponse(f"/console/segments#s-{segment.key}", status_code=303)

    return await run_in_threadpool(run)


@router.get("/{key}/export.csv")
async def export_segment(key: str, request: Request, _: Session = Depends(page(*MARKETING))) -> Response:
    engine = request.app.state.engine

    def check() -> SegmentError | None:
        try:
            with db.read(engine) as conn:
                service.get_segment(conn=conn, key=key)
        except SegmentError as exc:
            return exc
        return None

    missing = await run_in_threadpool(check)
    if missing is not None:
        return Response(orjson.dumps({"error": missing.code, "message": missing.message}), status_code=404,
                        media_type="application/json")  # fmt: skip
    config = request.app.state.profile_config

    def lines() -> Iterator[str]:
        with db.read(engine) as conn:
            yield from service.export_csv(conn=conn, key=key, config=config)

    return StreamingResponse(
        lines(),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="segment-{key}.csv"'},
    )
