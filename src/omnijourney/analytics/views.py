"""Analytics routes under /api/analytics: every analysis as JSON, or CSV with `?format=csv` (admin, marketer).

Filters are query parameters, so a URL is a shareable view: start, end (ISO 8601), channel, device_type,
utm_source, utm_campaign, store, city, segment (each repeatable or comma-separated), engine (duckdb | spark).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

import orjson
from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.concurrency import run_in_threadpool

from omnijourney.access.deps import require_role
from omnijourney.analytics import filters as flt
from omnijourney.analytics import lake, service
from omnijourney.analytics.attribution import MODELS, TOUCH_COLUMNS, AttributionSpec
from omnijourney.analytics.funnels import Exclusion, FunnelSpec, Step
from omnijourney.analytics.service import AnalyticsError
from omnijourney.errors import ApiError
from omnijourney.store.base import utcnow

router = APIRouter(prefix="/api/analytics", tags=["analytics"])
marketers = require_role("marketer")

_WINDOW = re.compile(r"^(\d+)([smhd]?)$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def _list(values: list[str] | None) -> tuple[str, ...]:
    out: list[str] = []
    for v in values or []:
        out.extend(p.strip() for p in v.split(",") if p.strip())
    return tuple(out)


def _time(value: str | None, name: str) -> int | None:
    if not value:
        return None
    try:
        t = datetime.fromisoformat(value)
    except ValueError as exc:
        raise ApiError(422, "invalid_request", f"{name} must be an ISO 8601 date or time") from exc
    return flt.to_ms(t if t.tzinfo else t.replace(tzinfo=UTC))


def common_filters(
    start: str | None = Query(None, description="period start (inclusive), ISO 8601"),
    end: str | None = Query(None, description="period end (exclusive), ISO 8601"),
    channel: list[str] | None = Query(None),
    device_type: list[str] | None = Query(None),
    utm_source: list[str] | None = Query(None),
    utm_campaign: list[str] | None = Query(None),
    store: list[str] | None = Query(None),
    city: list[str] | None = Query(None),
    segment: list[str] | None = Query(None, description="segment keys: customers who are members now"),
) -> flt.Filters:
    start_ms, end_ms = _time(start, "start"), _time(end, "end")
    if start_ms is not None and end_ms is not None and end_ms <= start_ms:
        raise ApiError(422, "invalid_request", "end must be after start")
    stores, cities = _list(store), _list(city)
    if stores and cities:
        raise ApiError(422, "invalid_request", "filter by store or by city, not both")
    return flt.Filters(
        start_ms=start_ms,
        end_ms=end_ms,
        channels=_list(channel),
        device_types=_list(device_type),
        utm_sources=_list(utm_source),
        utm_campaigns=_list(utm_campaign),
        stores=stores,
        cities=cities,
        segments=_list(segment),
    )


def _window(value: str) -> int:
    m = _WINDOW.match(value.strip())
    if not m or int(m.group(1)) <= 0:
        raise ApiError(422, "invalid_request", "window is a positive number with an optional unit s, m, h or d")
    return int(m.group(1)) * _UNITS[m.group(2)]


def funnel_spec(
    step: list[str] = Query(..., description="event name of each step, in order (2..10)"),
    order: str = Query("ordered", pattern="^(ordered|strict|any)$"),
    window: str = Query("14d", description="conversion window from step 1, e.g. 30m, 12h, 14d"),
    exclude: list[str] | None = Query(None, description="'Event Name:from:to' (zero-based step indexes)"),
    breakdown: str | None = Query(None),
    attribution: str = Query("first_touch", description="first_touch, last_touch or step:N (zero-based)"),
) -> FunnelSpec:
    exclusions = []
    for x in exclude or []:
        parts = x.rsplit(":", 2)
        if len(parts) != 3 or not parts[1].isdigit() or not parts[2].isdigit():
            raise ApiError(422, "invalid_request", f"exclude {x!r}: use 'Event Name:from:to'")
        exclusions.append(Exclusion(Step(parts[0], (parts[0],)), int(parts[1]), int(parts[2])))
    attr, attr_step = attribution, 0
    if attribution.startswith("step:"):
        if not attribution[5:].isdigit():
            raise ApiError(422, "invalid_request", "attribution step:N needs a step index")
        attr, attr_step = "step", int(attribution[5:])
    try:
        return FunnelSpec(
            steps=tuple(Step(s, (s,)) for s in step),
            order=order,  # type: ignore[arg-type]
            window_seconds=_window(window),
            exclusions=tuple(exclusions),
            breakdown=breakdown,
            attribution=attr,  # type: ignore[arg-type]
            attribution_step=attr_step,
        )
    except ValueError as exc:
        raise ApiError(422, "invalid_request", str(exc)) from exc


async def _respond(
    request: Request,
    analysis: str,
    f: flt.Filters,
    engine: str,
    fmt: str,
    spec: FunnelSpec | None = None,
    attribution: AttributionSpec | None = None,
    options: Any = None,
) -> Response:
    settings = request.app.state.settings
    as_of = f.end_ms if f.end_ms is not None else flt.to_ms(utcnow())

    def work() -> dict[str, Any]:
        return service.run(
            data_dir=settings.data_dir,
            analysis=analysis,
            filters=f,
            engine=engine,
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
            headers={"Content-Disposition": f'attachment; filename="{analysis}.csv"'},
        )
    return Response(orjson.dumps(result, option=orjson.OPT_NON_STR_KEYS), media_type="application/json")


EngineQ = Query("duckdb", pattern="^(duckdb|spark)$")
FormatQ = Query("json", alias="format", pattern="^(json|csv)$")


@router.get("/lake")
async def lake_status(request: Request, _: object = Depends(marketers)) -> Response:
    """Export checkpoint, rows exported and waiting, committed files."""
    settings = request.app.state.settings
    engine = request.app.state.engine
    body = await run_in_threadpool(lambda: lake.status(engine=engine, data_dir=settings.data_dir))
    return Response(orjson.dumps(body), media_type="application/json")


@router.get("/funnel")
async def funnel(
    request: Request,
    f: flt.Filters = Depends(common_filters),
    spec: FunnelSpec = Depends(funnel_spec),
    engine: str = EngineQ,
    fmt: str = FormatQ,
    _: object = Depends(marketers),
) -> Response:
    """A funnel over any event steps (ordered / strict / any order, window, exclusions, breakdown)."""
    return await _respond(request, "funnel", f, engine, fmt, spec)


def _route(name: str, doc: str) -> None:
    async def endpoint(
        request: Request,
        f: flt.Filters = Depends(common_filters),
        engine: str = EngineQ,
        fmt: str = FormatQ,
        _: object = Depends(marketers),
    ) -> Response:
        return await _respond(request, name, f, engine, fmt)

    endpoint.__doc__ = doc
    router.add_api_route(f"/{name}", endpoint, methods=["GET"], name=f"analytics_{name.replace('-', '_')}")


_route("stages", "The journey stage funnel awareness -> consideration -> purchase -> retention -> advocacy.")
_route("cross-channel", "Customers by the channel their journey started in x the channel they purchased in.")
_route("click-and-collect", "Share of online orders fulfilled by click & collect.")
_route("multi-channel", "Multi- vs single-channel customers: repeat rate, orders per customer, AOV.")
_route("revenue", "Orders, revenue and refunds per channel; return rate per purchase channel.")
_route("service", "Service efficiency per channel: first response, resolution, FCR, CSAT, NPS, lost context.")


# ------------------------------------------------------------------ attribution, gap report, stage KPIs


def attribution_spec(
    model: list[str] | None = Query(None, description=f"one or more of {', '.join(MODELS)} (default: all)"),
    touch: str = Query("channel", description=f"the touchpoint column: {', '.join(TOUCH_COLUMNS)}"),
    conversion: str = Query("Order Completed", max_length=200, description="the conversion event"),
    half_life: float = Query(7.0, description="time decay half-life in days"),
    markov_order: int = Query(1, description="Markov chain order, 1 to 4"),
    collapse: bool = Query(True, description="consecutive touches of one touchpoint are one touch"),
    first_weight: float = Query(0.4, description="position-based credit of the first touch"),
    last_weight: float = Query(0.4, description="position-based credit of the last touch"),
) -> AttributionSpec:
    try:
        return AttributionSpec(
            touch=touch,
            conversion=conversion,
            half_life_days=half_life,
            markov_order=markov_order,
            collapse=collapse,
            first_weight=first_weight,
            last_weight=last_weight,
            models=_list(model) or MODELS,
        )
    except ValueError as exc:
        raise ApiError(422, "invalid_request", str(exc)) from exc


@router.get("/attribution")
async def attribution(
    request: Request,
    f: flt.Filters = Depends(common_filters),
    spec: AttributionSpec = Depends(attribution_spec),
    engine: str = EngineQ,
    fmt: str = FormatQ,
    _: object = Depends(marketers),
) -> Response:
    """Multi-touch attribution: first / last touch, linear, position-based, time decay, Markov, Shapley."""
    return await _respond(request, "attribution", f, engine, fmt, attribution=spec)


_route("gaps", "The journey gap report: biggest drop-offs, lost context and friction, ranked.")
_route("stage-kpis", "Stage KPIs: reach, CTR, cost per visit, time on site, carts, conversion, AOV, repeat, advocacy.")


# ------------------------------------------------------------------ journeys: retention, lifecycle, paths, golden paths

ANY_EVENT = "*"


def event_step(names: list[str] | None, default: str) -> Step:
    """A step matching any of the named events; `*` matches every event."""
    chosen = [n.strip() for n in names or [] if n.strip()] or [default]
    if ANY_EVENT in chosen:
        return Step("any event")
    return Step(", ".join(chosen), tuple(chosen))


def retention_spec(
    cohort_event: list[str] | None = Query(None, description="cohort event(s); * = any event"),
    return_event: list[str] | None = Query(None, description="return event(s); * = any event"),
    cohort_type: str = Query("first_time", pattern="^(first_time|recurring)$"),
    mode: str = Query("on", pattern="^(on|on_or_after)$"),
    granularity: str = Query("week", pattern="^(day|week|month)$"),
    periods: int = Query(8, ge=1, le=120),
) -> Any:
    from omnijourney.analytics.retention import RetentionSpec

    return RetentionSpec(
        cohort=event_step(cohort_event, "Order Completed"),
        returning=event_step(return_event, "Order Completed"),
        cohort_type=cohort_type,  # type: ignore[arg-type]
        mode=mode,  # type: ignore[arg-type]
        granularity=granularity,  # type: ignore[arg-type]
        periods=periods,
    )


def lifecycle_spec(
    event: list[str] | None = Query(None, description="activity event(s); * (default) = any event"),
    granularity: str = Query("week", pattern="^(day|week|month)$"),
) -> Any:
    from omnijourney.analytics.retention import LifecycleSpec

    return LifecycleSpec(activity=event_step(event, ANY_EVENT), granularity=granularity)  # type: ignore[arg-type]


def path_spec(
    level: str = Query("channel", pattern="^(channel|channel_action)$"),
    start_node: str | None = Query(None, description="start anchor: a node label, e.g. ads or 'web · page'"),
    end_node: str | None = Query(None, description="end anchor: a node label"),
    steps: int = Query(5, ge=2, le=10),
    purchase_event: list[str] | None = Query(None, description="what a purchase is (default Order Completed)"),
    top: int = Query(10, ge=1, le=100),
) -> Any:
    from omnijourney.analytics.paths import PathSpec

    return PathSpec(
        level=level,  # type: ignore[arg-type]
        start=start_node or None,
        end=end_node or None,
        steps=steps,
        purchase=event_step(purchase_event, "Order Completed"),
        top=top,
    )


@router.get("/retention")
async def retention(
    request: Request,
    f: flt.Filters = Depends(common_filters),
    spec: Any = Depends(retention_spec),
    engine: str = EngineQ,
    fmt: str = FormatQ,
    _: object = Depends(marketers),
) -> Response:
    """Retention cohorts: cohort x period matrix (first-time or recurring, on or on-or-after, day/week/month)."""
    return await _respond(request, "retention", f, engine, fmt, options=spec)


@router.get("/lifecycle")
async def lifecycle(
    request: Request,
    f: flt.Filters = Depends(common_filters),
    spec: Any = Depends(lifecycle_spec),
    engine: str = EngineQ,
    fmt: str = FormatQ,
    _: object = Depends(marketers),
) -> Response:
    """Lifecycle per period: new, returning, resurrecting and dormant customers."""
    return await _respond(request, "lifecycle", f, engine, fmt, options=spec)


@router.get("/paths")
async def channel_paths(
    request: Request,
    f: flt.Filters = Depends(common_filters),
    spec: Any = Depends(path_spec),
    engine: str = EngineQ,
    fmt: str = FormatQ,
    _: object = Depends(marketers),
) -> Response:
    """Channel paths: transitions, Sankey nodes and links, top paths to purchase."""
    return await _respond(request, "paths", f, engine, fmt, options=spec)


@router.get("/golden-paths")
async def golden_paths(
    request: Request,
    f: flt.Filters = Depends(common_filters),
    engine: str = EngineQ,
    fmt: str = FormatQ,
    _: object = Depends(marketers),
) -> Response:
    """Golden paths (golden_paths.yaml): followers, deviations, conversion of followers vs others."""
    return await _respond(request, "golden-paths", f, engine, fmt)
