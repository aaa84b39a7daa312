"""What `omnijourney demo` shows of analytics: the lake export and the headline figures."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import sqlalchemy as sa
from rich.console import Console
from rich.table import Table

from omnijourney.analytics import filters as flt
from omnijourney.analytics import lake, service
from omnijourney.store.base import utcnow


def export_and_summarise(engine: sa.Engine, data_dir: Path, console: Console) -> dict[str, Any]:
    with console.status("exporting the event lake"):
        result = lake.export(engine=engine, data_dir=data_dir)
    console.print(
        f"event lake: [bold]{result.rows}[/bold] events exported to {lake.lake_dir(data_dir)} "
        "(query it with DuckDB or Spark, docs/ANALYTICS.md)"
    )
    if result.rows == 0 and lake.event_files(lake.lake_dir(data_dir)):
        # a rerun over an unchanged lake: the figures are those of the last run (and on the dashboard)
        console.print("the lake is unchanged since the last run: its figures are on the journey dashboard")
        return {"export": result}
    now = flt.to_ms(utcnow())
    with console.status("computing the journey stage funnel and the omnichannel KPIs"):
        stages = service.run(data_dir=data_dir, analysis="stages", filters=flt.Filters(), as_of_ms=now)
        cross = service.run(data_dir=data_dir, analysis="cross-channel", filters=flt.Filters())
        cc = service.run(data_dir=data_dir, analysis="click-and-collect", filters=flt.Filters())
    table = Table("stage", "customers", "from previous", title="journey stages (GET /api/analytics/stages)")
    for s in stages["steps"]:
        table.add_row(s["name"], str(s["count"]), f"{100 * s['conversion_from_previous']:.1f} %")
    console.print(table)
    console.print(
        f"cross-channel purchases: [bold]{100 * cross['cross_channel_share']:.1f} %[/bold] of buyers started their "
        f"journey in another channel; click & collect: [bold]{100 * cc['share']:.1f} %[/bold] of online orders"
    )
    out = {"export": result, "stages": stages, "cross_channel": cross, "click_and_collect": cc}
    out.update(_attribution_and_gaps(data_dir, console, now))
    out.update(summarise_journeys(data_dir, console, now))
    return out


def _attribution_and_gaps(data_dir: Path, console: Console, now: int) -> dict[str, Any]:
    """The Markov attribution next to last touch, and the top of the gap report."""
    with console.status("computing attribution and the gap report"):
        attr = service.run(data_dir=data_dir, analysis="attribution", filters=flt.Filters())
        gaps = service.run(data_dir=data_dir, analysis="gaps", filters=flt.Filters(), as_of_ms=now)
    table = Table(
        "channel", "last touch", "Markov", "Shapley", title="attribution of purchases (GET /api/analytics/attribution)"
    )
    by = {
        m: {r["touchpoint"]: r["conversions"] for r in attr["results"][m]} for m in ("last_touch", "markov", "shapley")
    }
    for tp in sorted(attr["touchpoints"], key=lambda t: -by["markov"].get(t, 0.0))[:8]:
        table.add_row(tp, *(f"{by[m].get(tp, 0.0):.1f}" for m in ("last_touch", "markov", "shapley")))
    console.print(table)
    console.print("gap report (GET /api/analytics/gaps):")
    for item in gaps["findings"][:3]:
        console.print(f"  {item['rank']}. {item['text']}")
    return {"attribution": attr, "gaps": gaps}


def summarise_journeys(data_dir: Path, console: Console, now: int) -> dict[str, Any]:
    """Retention, channel paths and golden paths of the demo world (the dashboard's journey panels)."""
    with console.status("computing retention, channel paths and golden paths"):
        out = {
            name.replace("-", "_"): service.run(data_dir=data_dir, analysis=name, filters=flt.Filters(), as_of_ms=now)
            for name in ("retention", "lifecycle", "paths", "golden-paths")
        }
    cohorts = out["retention"]["cohorts"]
    repeat = sum(c["retained"][1] or 0 for c in cohorts)
    first = sum(c["size"] for c in cohorts if c["retained"][1] is not None)
    top = out["paths"]["top_paths_to_purchase"]
    console.print(
        f"retention: [bold]{len(cohorts)}[/bold] weekly cohorts of first orders, "
        f"{100 * repeat / first if first else 0:.1f} % ordered again the next week (GET /api/analytics/retention); "
        f"top path to purchase: [bold]{top[0]['path'] if top else '-'}[/bold] (GET /api/analytics/paths)"
    )
    table = Table("golden path", "customers", "followers", "followers convert", "others convert", title="golden paths")
    for p in out["golden_paths"]["paths"]:
        conv = p["conversion"]

        def rate(x: float | None) -> str:
            return "-" if x is None else f"{100 * x:.1f} %"

        table.add_row(
            p["name"],
            str(p["customers"]),
            f"{p['followers']} ({rate(p['share_of_customers'])})",
            rate(conv["followers"]["conversion_rate"]),
            rate(conv["others"]["conversion_rate"]),
        )
    console.print(table)
    return out
