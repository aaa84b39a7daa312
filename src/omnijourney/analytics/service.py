"""Run an analysis over the lake on an engine; shape results as JSON and CSV rows."""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

from omnijourney.analytics import attribution as attr
from omnijourney.analytics import cache as result_cache
from omnijourney.analytics import filters as flt
from omnijourney.analytics import funnels, gaps, kpis, stage_kpis
from omnijourney.analytics.config import StageConfig, load_stage_config
from omnijourney.analytics.engine import ENGINES, LakeTables, open_lake
from omnijourney.analytics.funnels import FunnelSpec


class AnalyticsError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def stage_funnel(lt: LakeTables, cfg: StageConfig, f: flt.Filters, as_of_ms: int) -> dict[str, Any]:
    spec = FunnelSpec(steps=cfg.stages, order="ordered", window_seconds=cfg.window_days * 86400)
    out = funnels.run_funnel(lt, spec, f, as_of_ms)
    out["stages"] = [s.name for s in cfg.stages]
    return out


KPI: dict[str, Callable[[LakeTables, flt.Filters], dict[str, Any]]] = {
    "cross-channel": kpis.cross_channel_matrix,
    "click-and-collect": kpis.click_and_collect,
    "multi-channel": kpis.multi_vs_single,
    "revenue": kpis.revenue_per_channel,
    "service": kpis.service_kpis,
}
# ---- attribution, gap report, stage KPIs (analytics/attribution.py, analytics/gaps.py)
#: analyses that take the stage configuration and "now" (as_of_ms)
STAGE_ANALYSES = ("gaps",)

# --- journeys: retention, lifecycle, channel paths, golden paths (options = the analysis' spec)
JOURNEYS = ("retention", "lifecycle", "paths", "golden-paths")


def _journey(lt: LakeTables, analysis: str, options: Any, f: flt.Filters, as_of_ms: int) -> dict[str, Any]:
    from omnijourney.analytics import golden, paths, retention

    if analysis == "retention":
        return retention.run_retention(lt, options or retention.RetentionSpec(), f, as_of_ms)
    if analysis == "lifecycle":
        return retention.run_lifecycle(lt, options or retention.LifecycleSpec(), f, as_of_ms)
    if analysis == "paths":
        return paths.run_paths(lt, options or paths.PathSpec(), f)
    return golden.run_golden(lt, options or golden.load_golden_config(), f, as_of_ms)


ANALYSES = ("stages", "funnel", *KPI, "attribution", "gaps", "stage-kpis", *JOURNEYS)


def run(
    *,
    data_dir: Path,
    analysis: str,
    filters: flt.Filters,
    engine: str = "duckdb",
    funnel: FunnelSpec | None = None,
    as_of_ms: int | None = None,
    stage_config: StageConfig | None = None,
    spark: Any = None,
    attribution: attr.AttributionSpec | None = None,
    options: Any = None,
) -> dict[str, Any]:
    if analysis not in ANALYSES:
        raise AnalyticsError(404, "not_found", f"unknown analysis {analysis!r}")
    if engine not in ENGINES:
        raise AnalyticsError(422, "invalid_request", f"engine must be one of {', '.join(ENGINES)}")
    if engine == "spark":
        try:
            import pyspark  # noqa: F401
        except ImportError as exc:
            raise AnalyticsError(
                422, "engine_unavailable", "install omnijourney[spark] to use the Spark engine"
            ) from exc
    if analysis in ("stages", "funnel", *STAGE_ANALYSES, *JOURNEYS) and as_of_ms is None:
        raise AnalyticsError(422, "invalid_request", "as_of is required for funnels")
    if analysis == "funnel" and funnel is None:
        raise AnalyticsError(422, "invalid_request", "a funnel needs steps")
    if analysis in ("stages", "gaps", "stage-kpis"):
        stage_config = stage_config or load_stage_config()  # resolved first: the cache key spells it
    if analysis == "golden-paths" and options is None:
        from omnijourney.analytics import golden

        options = golden.load_golden_config()
    key = (analysis, engine, filters, funnel, as_of_ms, stage_config, attribution, options)

    def compute() -> dict[str, Any]:
        return _compute(
            data_dir, analysis, filters, engine, funnel, as_of_ms, stage_config, spark, attribution, options
        )

    return result_cache.cached(data_dir, key, compute)


def _compute(
    data_dir: Path,
    analysis: str,
    filters: flt.Filters,
    engine: str,
    funnel: FunnelSpec | None,
    as_of_ms: int | None,
    stage_config: StageConfig | None,
    spark: Any,
    attribution: attr.AttributionSpec | None,
    options: Any,
) -> dict[str, Any]:
    lt = open_lake(data_dir, engine, spark=spark)
    try:
        if analysis == "stages":
            result = stage_funnel(lt, stage_config or load_stage_config(), filters, as_of_ms)  # type: ignore[arg-type]
        elif analysis == "funnel":
            result = funnels.run_funnel(lt, funnel, filters, as_of_ms)  # type: ignore[arg-type]
        elif analysis == "attribution":
            result = attr.attribution(lt, filters, attribution)
        elif analysis == "gaps":
            result = gaps.gap_report(lt, stage_config or load_stage_config(), filters, as_of_ms)  # type: ignore[arg-type]
        elif analysis == "stage-kpis":
            result = stage_kpis.stage_kpis(lt, stage_config or load_stage_config(), filters)
        elif analysis in JOURNEYS:
            result = _journey(lt, analysis, options, filters, as_of_ms)  # type: ignore[arg-type]
        else:
            result = KPI[analysis](lt, filters)
    finally:
        lt.close()
    result.setdefault("filters", filters.describe())
    return {"analysis": analysis, "engine": engine, **result}


def to_csv(rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    if rows:
        writer = csv.DictWriter(buf, fieldnames=list(rows[0].keys()), lineterminator="\n")
        writer.writeheader()
        for r in rows:
            writer.writerow({k: "" if v is None else v for k, v in r.items()})
    return buf.getvalue()
