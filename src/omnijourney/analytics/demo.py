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
