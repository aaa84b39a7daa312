"""The journey dashboard in the staff console (marketer, admin): /console/dashboard.

The page is server-rendered (filters and the funnel form pre-filled from the URL, so a view can be
shared); `static/dashboard.js` fetches the analyses from the session-authenticated JSON routes under
`/console/dashboard/data/...` and draws them with Plotly. Those routes only parse the same query
parameters as `/api/analytics/*` (the very same dependency functions) and call
`analytics.service.run`: no analysis is defined here. plotly.js comes from the `plotly` Python
package's own file, served by `/console/dashboard/assets/plotly.min.js` (no CDN, no npm).
"""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import orjson
from fastapi import APIRouter, Depends, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, RedirectResponse, Response

from omnijourney.analytics import filters as flt
from omnijourney.analytics import lake, service
from omnijourney.analytics.attribution import AttributionSpec
from omnijourney.analytics.config import load_stage_config
from omnijourney.analytics.funnels import FunnelSpec
from omnijourney.analytics.service import AnalyticsError
from omnijourney.analytics.views import (
    attribution_spec,
    common_filters,
    funnel_spec,
    lifecycle_spec,
    path_spec,
    retention_spec,
)
from omnijourney.commerce import service as commerce
from omnijourney.engage import service as engage
from omnijourney.errors import ApiError
from omnijourney.ingest.spec import CHANNELS
from omnijourney.store import db
from omnijourney.store.base import utcnow
from omnijourney.web.service import Session
from omnijourney.web.views import HERE, _render, action, page

router = APIRouter(prefix="/console/dashboard", include_in_schema=False)

#: who may see the dashboard and refresh the lake
ANALYSTS = ("admin", "marketer")
#: analyses the dashboard draws (each also a CSV export with format=csv)
KPIS = ("cross-channel", "click-and-collect", "multi-channel", "revenue", "service")
#: lake columns a general funnel may be broken down by in the form
BREAKDOWNS = ("channel", "device_type", "utm_source", "utm_campaign", "store_id", "os")
DEVICE_TYPES = ("mobile", "desktop", "tablet")
DEFAULT_STEPS = ("Product Viewed", "Checkout Started", "Order Completed")
#: the list-valued filters (repeatable or comma-separated, as in the API)
LIST_FILTERS = ("channel", "device_type", "utm_source", "utm_campaign", "store", "city", "segment")


@cache
def plotly_js() -> Path:
    """plotly.min.js as shipped inside the `plotly` Python package."""
    import plotly

    path = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"
    if not path.is_file():  # pragma: no cover - a broken plotly installation
        raise RuntimeError(f"plotly.js is missing from the plotly package ({path})")
    return path


_JS_KEY = re.compile(r"[A-Za-z_$][\w$]*")


def _js_string(src: str, i: int) -> tuple[str, int]:
    quote, j, out = src[i], i + 1, []
    while src[j] != quote:
        if src[j] == "\\":
            out.append(src[j + 1])
            j += 2
        else:
            out.append(src[j])
            j += 1
    return "".join(out), j + 1


@cache
def plotly_css() -> str:
    """plotly.js's own stylesheet as a file. plotly.js normally inserts these rules into a <style> element it
    creates, which the console's CSP (no inline styles) refuses; a stylesheet link with the id
    `plotly.js-style-global` and the class `no-inline-styles` makes it skip that (see dashboard.html).
    The rules are read from the bundle itself (its `{"X,X div": ..., ...}` table, X = `.js-plotly-plot .plotly`,
    Y = `.plotly-notifier`), so they always match the installed plotly.js."""
    src = plotly_js().read_text(encoding="utf-8")
    start = src.find('{"X,X div":')
    rules: list[str] = []
    try:
        i = start + 1
        while start >= 0 and src[i] != "}":
            if src[i] in "'\"":
                key, i = _js_string(src, i)
            else:
                m = _JS_KEY.match(src, i)
                if m is None:
                    raise ValueError(f"unexpected {src[i : i + 20]!r}")
                key, i = m.group(0), m.end()
            if src[i] != ":":
                raise ValueError(f"unexpected {src[i : i + 20]!r}")
            value, i = _js_string(src, i + 1)
            selector = re.sub(r"^,", " ,", key).replace("X", ".js-plotly-plot .plotly").replace("Y", ".plotly-notifier")
            rules.append(f"{selector}{{{value}}}")
            if src[i] == ",":
                i += 1
    except (ValueError, IndexError):
        rules = []
    if not rules:  # pragma: no cover - a plotly.js whose bundle changed shape: charts work, unstyled modebar
        return "/* plotly.js stylesheet rules not found in this plotly version */\n"
    return (
        f"/* plotly.js stylesheet (plotly {plotly_version()}), extracted from its bundle */\n" + "\n".join(rules) + "\n"
    )


@cache
def plotly_version() -> str:
    import plotly

    return str(plotly.__version__)


ASSETS: dict[str, tuple[str, Any]] = {
    "dashboard.js": ("text/javascript", lambda: HERE / "static" / "dashboard.js"),
    "dashboard.css": ("text/css", lambda: HERE / "static" / "dashboard.css"),
    "plotly.min.js": ("text/javascript", plotly_js),
}


@router.get("/assets/{name}")
def assets(name: str) -> Response:
    """The dashboard's script and stylesheet, and plotly.js (public, like the console's own static files)."""
    if name not in ASSETS and name != "plotly.css":
        return Response(status_code=404)
    if name == "plotly.css":
        return Response(plotly_css(), media_type="text/css", headers={"Cache-Control": "public, max-age=86400"})
    media_type, path = ASSETS[name]
    # plotly.js is big and only changes with the package version (the page asks for ?v=<version>)
    cache_control = "public, max-age=86400" if name == "plotly.min.js" else "no-cache"
    return FileResponse(path(), media_type=media_type, headers={"Cache-Control": cache_control})


# ------------------------------------------------------------------ the page


def _values(request: Request, key: str) -> list[str]:
    out: list[str] = []
    for v in request.query_params.getlist(key):
        out.extend(p.strip() for p in v.split(",") if p.strip())
    return out


@router.get("")
@router.get("/")
def dashboard(request: Request, session: Session = Depends(page(*ANALYSTS))) -> Response:
    with db.read(request.app.state.engine) as conn:
        locations = commerce.list_locations(conn=conn)
        segments = [{"key": s["key"], "name": s["name"]} for s in engage.list_segments(conn=conn)]
    stores = [{"code": loc["code"], "name": loc["name"] or loc["code"]} for loc in locations]
    cities = sorted(
        {str(a["city"]) for a in (loc["address"] for loc in locations) if isinstance(a, dict) and a.get("city")}
    )
    q = request.query_params
    chosen = {k: _values(request, k) for k in LIST_FILTERS}
    steps = [s for s in q.getlist("step") if s.strip()] or list(DEFAULT_STEPS)
    try:
        stage_names = [s.name for s in load_stage_config().stages]
    except (OSError, ValueError):
        stage_names = []
    context = {
        # the date inputs hold dates: a time in a shared URL is shortened to its date
        "f": {"start": q.get("start", "")[:10], "end": q.get("end", "")[:10], **chosen},
        "funnel": {
            "steps": steps,
            "window": q.get("window", "14d"),
            "order": q.get("order", "ordered"),
            "breakdown": q.get("breakdown", ""),
            "attribution": q.get("attribution", "first_touch"),
        },
        "all_channels": sorted(CHANNELS),
        "device_types": DEVICE_TYPES,
        "stores": stores,
        "cities": cities,
        "segments": segments,
        "breakdowns": BREAKDOWNS,
        "stage_names": stage_names,
        "plotly_version": plotly_version(),
        "journey": {k: q.get(k, v) for k, v in JOURNEY_DEFAULTS.items()},
        "notice": q.get("notice"),
        "error": q.get("error"),
    }
    return _render(request, "dashboard.html", session, context)


# ------------------------------------------------------------------ data (JSON or CSV)


async def _run(
    request: Request,
    analysis: str,
    f: flt.Filters,
    fmt: str,
    spec: FunnelSpec | None = None,
    attribution: AttributionSpec | None = None,
    options: Any = None,
) -> Response:
    settings = request.app.state.settings
    # as the API does: the period end is "now" for in-progress funnels; here "now" is the current minute, so
    # the 14 analyses of a load and reloads within the minute share the result cache (analytics/cache.py)
    as_of = f.end_ms if f.end_ms is not None else flt.to_ms(utcnow()) // 60_000 * 60_000

    def work() -> dict[str, Any]:
        return service.run(
            data_dir=settings.data_dir,
            analysis=analysis,
            filters=f,
            funnel=spec,
            as_of_ms=as_of,
            attribution=attribution,
            options=options,
        )

    try:
        result = await run_in_threadpool(work)
    except AnalyticsError as exc:
        raise ApiError(exc.status, exc.code, exc.message) from exc
    except ValueError as exc:
        raise ApiError(422, "invalid_request", str(exc)) from exc
    if fmt == "csv":
        return Response(
            service.to_csv(result.get("rows", [])),
            media_type="text/csv",
            headers={"Content-Disposition": f'attachment; filename="{analysis}.csv"', "Cache-Control": "no-store"},
        )
    return Response(
        orjson.dumps(result, option=orjson.OPT_NON_STR_KEYS),
        media_type="application/json",
        headers={"Cache-Control": "no-store"},
    )


FormatQ = Query("json", alias="format", pattern="^(json|csv)$")


@router.get("/data/lake")
async def data_lake(request: Request, _: Session = Depends(page(*ANALYSTS))) -> Response:
    """What the lake holds and what waits to be exported."""
    settings, engine = request.app.state.settings, request.app.state.engine
    body = await run_in_threadpool(lambda: lake.status(engine=engine, data_dir=settings.data_dir))
    return Response(orjson.dumps(body), media_type="application/json", headers={"Cache-Control": "no-store"})


@router.get("/data/funnel")
async def data_funnel(
    request: Request,
    f: flt.Filters = Depends(common_filters),
    spec: FunnelSpec = Depends(funnel_spec),
    fmt: str = FormatQ,
    _: Session = Depends(page(*ANALYSTS)),
) -> Response:
    """A general funnel (the parameters of /api/analytics/funnel)."""
    return await _run(request, "funnel", f, fmt, spec)


def _data_route(name: str) -> None:
    async def endpoint(
        request: Request,
        f: flt.Filters = Depends(common_filters),
        fmt: str = FormatQ,
        _: Session = Depends(page(*ANALYSTS)),
    ) -> Response:
        return await _run(request, name, f, fmt)

    endpoint.__doc__ = f"/api/analytics/{name} for a console session."
    router.add_api_route(f"/data/{name}", endpoint, methods=["GET"], name=f"dashboard_{name.replace('-', '_')}")


for _name in ("stages", *KPIS):
    _data_route(_name)


# ---- attribution, gap report, stage KPIs (analytics/attribution.py, gaps.py, stage_kpis.py)


@router.get("/data/attribution")
async def data_attribution(
    request: Request,
    f: flt.Filters = Depends(common_filters),
    spec: AttributionSpec = Depends(attribution_spec),
    fmt: str = FormatQ,
    _: Session = Depends(page(*ANALYSTS)),
) -> Response:
    """Multi-touch attribution (the parameters of /api/analytics/attribution)."""
    return await _run(request, "attribution", f, fmt, attribution=spec)


for _name in ("gaps", "stage-kpis"):
    _data_route(_name)
# ------------------------------------------------------------------ journeys: retention, lifecycle, paths, golden paths

#: the journey panels' options (query parameters of /api/analytics/retention, /lifecycle and /paths)
JOURNEY_DEFAULTS = {"granularity": "week", "mode": "on", "cohort_type": "first_time", "level": "channel"}


@router.get("/data/retention")
async def data_retention(
    request: Request,
    f: flt.Filters = Depends(common_filters),
    spec: Any = Depends(retention_spec),
    fmt: str = FormatQ,
    _: Session = Depends(page(*ANALYSTS)),
) -> Response:
    """/api/analytics/retention for a console session."""
    return await _run(request, "retention", f, fmt, options=spec)


@router.get("/data/lifecycle")
async def data_lifecycle(
    request: Request,
    f: flt.Filters = Depends(common_filters),
    spec: Any = Depends(lifecycle_spec),
    fmt: str = FormatQ,
    _: Session = Depends(page(*ANALYSTS)),
) -> Response:
    """/api/analytics/lifecycle for a console session."""
    return await _run(request, "lifecycle", f, fmt, options=spec)


@router.get("/data/paths")
async def data_paths(
    request: Request,
    f: flt.Filters = Depends(common_filters),
    spec: Any = Depends(path_spec),
    fmt: str = FormatQ,
    _: Session = Depends(page(*ANALYSTS)),
) -> Response:
    """/api/analytics/paths for a console session."""
    return await _run(request, "paths", f, fmt, options=spec)


_data_route("golden-paths")


# ------------------------------------------------------------------ refresh the lake


@router.post("/refresh")
async def refresh(request: Request, _: Session = Depends(action(*ANALYSTS))) -> Response:
    """Run the incremental lake export (exactly once; a second concurrent export gets a 409)."""
    settings, engine = request.app.state.settings, request.app.state.engine
    wants_json = "application/json" in request.headers.get("accept", "")
    try:
        result = await run_in_threadpool(lambda: lake.export(engine=engine, data_dir=settings.data_dir))
    except (lake.ExportBusy, BlockingIOError) as exc:
        if wants_json:
            raise ApiError(409, "export_busy", "another export is running; try again in a moment") from exc
        return _back(error="another export is running; try again in a moment")
    message = f"{result.rows} new event{'' if result.rows == 1 else 's'} exported to the lake"
    if wants_json:
        body = {"rows": result.rows, "files": result.files, "position": result.position, "message": message}
        return Response(orjson.dumps(body), media_type="application/json", headers={"Cache-Control": "no-store"})
    return _back(notice=message)


def _back(**params: str) -> RedirectResponse:
    return RedirectResponse("/console/dashboard?" + urlencode(params), status_code=303)
