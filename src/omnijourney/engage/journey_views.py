"""Journey routes: definitions and statistics (`/api/engage/journeys`, marketer), and the public
tracking routes of sent messages (`/e/...`: open pixel, click redirect, unsubscribe).

The public routes need no login: the signed token in the URL is the credential (HMAC over the
step and, for clicks, the target URL, so they are not an open redirect). An unsubscribe GET only
shows a confirmation page (mail scanners follow links); the POST — the page's button, or a
mail client's RFC 8058 one-click `List-Unsubscribe-Post` — records the withdrawal.
"""

from __future__ import annotations

import base64
import html
import threading
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from omnijourney.access.deps import require_role
from omnijourney.access.service import Principal
from omnijourney.engage import schedule
from omnijourney.engage.delivery import DeliveryConfig, click_redirect_target, verify_token
from omnijourney.engage.journeys import default_journeys
from omnijourney.errors import ApiError
from omnijourney.responses import json_response
from omnijourney.store import db
from omnijourney.store.base import utcnow

router = APIRouter(tags=["journeys"])
public = APIRouter(include_in_schema=False)
marketers = require_role("marketer")

#: a 1x1 transparent GIF
PIXEL = base64.b64decode("R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7")
_lock = threading.Lock()
PAGE_HEADERS = {
    "Cache-Control": "no-store",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": "default-src 'none'; style-src 'self'; form-action 'self'; frame-ancestors 'none'",
}


def delivery_config(request: Request) -> DeliveryConfig:
    state = request.app.state
    if getattr(state, "delivery_config", None) is None:
        with _lock:
            if getattr(state, "delivery_config", None) is None:
                state.delivery_config = DeliveryConfig.from_env(state.settings.data_dir)
    return state.delivery_config  # type: ignore[no-any-return]


def _journeys_with_stats(engine: Any, key: str | None = None) -> list[dict[str, Any]]:
    with db.write(engine) as conn:  # the files are the truth: a changed definition is stored first
        schedule.sync_journeys(conn=conn, journeys=default_journeys(), now=utcnow())
    with db.read(engine) as conn:
        return schedule.overview(conn, key=key)


@router.get("/api/engage/journeys")
async def list_journeys(request: Request, _: Principal = Depends(marketers)) -> Response:
    items = await run_in_threadpool(_journeys_with_stats, request.app.state.engine)
    return json_response({"journeys": items})


@router.get("/api/engage/journeys/{key}")
async def get_journey(key: str, request: Request, _: Principal = Depends(marketers)) -> Response:
    items = await run_in_threadpool(_journeys_with_stats, request.app.state.engine, key)
    if not items:
        raise ApiError(404, "not_found", f"no journey {key!r}")
    return json_response(items[0])


@router.get("/api/engage/journeys/{key}/stats")
async def journey_stats(key: str, request: Request, _: Principal = Depends(marketers)) -> Response:
    items = await run_in_threadpool(_journeys_with_stats, request.app.state.engine, key)
    if not items:
        raise ApiError(404, "not_found", f"no journey {key!r}")
    return json_response({"key": key, "version": items[0]["version"], **items[0]["stats"]})


# ------------------------------------------------------------------ public: opens, clicks, unsubscribe


@public.get("/e/o/{token}.gif")
async def open_pixel(token: str, request: Request) -> Response:
    data = verify_token(delivery_config(request).secret, "open", token)
    if data and isinstance(data.get("s"), int):

        def record() -> None:
            with db.write(request.app.state.engine) as conn:
                schedule.record_open(conn, step_id=data["s"], now=utcnow())

        await run_in_threadpool(record)
    # the same pixel either way: a forged token learns nothing
    return Response(PIXEL, media_type="image/gif", headers={"Cache-Control": "no-store"})


@public.get("/e/c/{token}")
async def click(token: str, request: Request) -> Response:
    found = click_redirect_target(delivery_config(request).secret, token)
    if found is None:
        return HTMLResponse("<p>This link is not valid.</p>", status_code=404, headers=PAGE_HEADERS)
    step_id, url = found

    def record() -> None:
        with db.write(request.app.state.engine) as conn:
            schedule.record_click(conn, step_id=step_id, url=url, now=utcnow())

    await run_in_threadpool(record)
    return RedirectResponse(url, status_code=302, headers={"Cache-Control": "no-store"})


def _unsubscribe_data(request: Request, token: str) -> dict[str, Any] | None:
    data = verify_token(delivery_config(request).secret, "unsubscribe", token)
    if not data or not all(isinstance(data.get(k), t) for k, t in (("s", int), ("p", int), ("pu", str), ("c", str))):
        return None
    return data


def _page(body: str, status: int = 200) -> HTMLResponse:
    doc = (
        "<!doctype html><html lang='en'><head><meta charset='utf-8'><title>Unsubscribe</title></head>"
        f"<body><main>{body}</main></body></html>"
    )
    return HTMLResponse(doc, status_code=status, headers=PAGE_HEADERS)


@public.get("/e/u/{token}")
async def unsubscribe_form(token: str, request: Request) -> Response:
    data = _unsubscribe_data(request, token)
    if data is None:
        return _page("<p>This unsubscribe link is not valid.</p>", 404)
    what = html.escape(f"{data['pu']} messages by {data['c']}")
    return _page(
        f"<h1>Unsubscribe</h1><p>Stop receiving {what}?</p>"
        f"<form method='post' action='/e/u/{html.escape(token)}'><button type='submit'>Unsubscribe</button></form>"
    )


@public.post("/e/u/{token}")
async def unsubscribe(token: str, request: Request) -> Response:
    data = _unsubscribe_data(request, token)
    if data is None:
        return _page("<p>This unsubscribe link is not valid.</p>", 404)

    def record() -> None:
        with db.write(request.app.state.engine) as conn:
            schedule.unsubscribe(
                conn, step_id=data["s"], profile_id=data["p"], purpose=data["pu"], channel=data["c"], now=utcnow()
            )

    await run_in_threadpool(record)
    what = html.escape(f"{data['pu']} messages by {data['c']}")
    return _page(f"<h1>Unsubscribed</h1><p>You will no longer receive {what}.</p>")
