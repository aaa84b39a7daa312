"""Golden paths: target journeys from configuration (golden_paths.yaml), the share of customers following
each, where the others leave the path and what they did instead, and conversion of followers vs others.

A golden path is an ordered funnel (analytics/funnels.py: same matching, order, window and re-entry
rules, the same Ibis definition on DuckDB and Spark); this module adds the population, the deviations
and the conversion comparison. Rules: docs/ANALYTICS.md, "Golden paths".
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ibis
import yaml

from omnijourney.analytics import filters as flt
from omnijourney.analytics.config import _step
from omnijourney.analytics.engine import LakeTables
from omnijourney.analytics.funnels import FunnelSpec, Step, _step_columns, best_attempts, match, sequenced
from omnijourney.analytics.paths import SEP

DEFAULT_PATH = Path(__file__).with_name("golden_paths.yaml")
#: what customers did instead, per step: the most frequent next events shown
TOP_INSTEAD = 5
NOTHING = "(no later event)"


@dataclass(frozen=True)
class GoldenPath:
    name: str
    steps: tuple[Step, ...]
    description: str = ""


@dataclass(frozen=True)
class GoldenConfig:
    paths: tuple[GoldenPath, ...]
    conversion: Step
    window_days: int = 90


def load_golden_config(path: Path | None = None) -> GoldenConfig:
    path = path or Path(os.environ.get("OMNIJOURNEY_ANALYTICS_GOLDEN_PATHS", DEFAULT_PATH))
    raw = yaml.safe_load(path.read_text())
    if not isinstance(raw, dict) or not isinstance(raw.get("paths"), list) or not raw["paths"]:
        raise ValueError(f"{path}: needs a non-empty list of paths")
    paths = []
    for i, p in enumerate(raw["paths"]):
        where = f"paths[{i}]"
        if not isinstance(p, dict) or not isinstance(p.get("steps"), list):
            raise ValueError(f"{path}: {where} needs a name and a list of steps")
        unknown = set(p) - {"name", "description", "steps"}
        if unknown:
            raise ValueError(f"{path}: {where}: unknown keys {sorted(unknown)}")
        steps = tuple(_step(s, f"{where}.steps[{k}]") for k, s in enumerate(p["steps"]))
        if not 2 <= len(steps) <= 10:
            raise ValueError(f"{path}: {where} has 2 to 10 steps")
        for s in steps:
            if not (s.events or s.types or s.where or s.any_of):
                raise ValueError(f"{path}: {where}: step {s.name!r} matches every event")
        paths.append(GoldenPath(str(p.get("name", where)), steps, str(p.get("description", ""))))
    names = [p.name for p in paths]
    if len(set(names)) != len(names):
        raise ValueError(f"{path}: path names must be unique")
    conversion = _step(raw.get("conversion") or {"name": "purchase", "events": ["Order Completed"]}, "conversion")
    window = int(raw.get("window_days", 90))
    if window <= 0:
        raise ValueError(f"{path}: window_days must be positive")
    return GoldenConfig(paths=tuple(paths), conversion=conversion, window_days=window)


def golden_expressions(
    lt: LakeTables, path: GoldenPath, cfg: GoldenConfig, f: flt.Filters, as_of_ms: int
) -> tuple[ibis.Table, ibis.Table]:
    """(customers by steps done / window open / converted, deviations by step reached and next event)."""
    spec = FunnelSpec(steps=path.steps, order="ordered", window_seconds=cfg.window_days * 86400)
    best = best_attempts(lt, spec, f, as_of_ms)  # a temp table on DuckDB already
    ev = sequenced(
        lt, f, sorted({"unit", "event_id", "ts_ms", "event", "type", "channel"} | _step_columns(cfg.conversion))
    )
    customers = ev.select(c_unit=ev.unit).distinct()
    conv = ev.filter(match(ev, cfg.conversion))
    conv = conv.select(v_unit=conv.unit).distinct()
    b = best.select(b_unit=best.unit, b_steps=best.steps, b_open=best.open)
    j = customers.left_join(b, customers.c_unit == b.b_unit)
    j = j.left_join(conv, j.c_unit == conv.v_unit)
    status = j.group_by(
        steps=j.b_steps.coalesce(0).cast("int64"),
        open=j.b_open.coalesce(False),
        converted=j.v_unit.notnull(),
    ).aggregate(customers=j.count())
    n = len(path.steps)
    left = best.filter(best.steps < n)
    nxt = ev.select(
        n_unit=ev.unit, n_seq=ev.seq, n_label=ev.channel.coalesce("(none)").concat(SEP, ev.event.coalesce(ev.type))
    )
    d = left.left_join(nxt, [left.unit == nxt.n_unit, nxt.n_seq == left.last_seq + 1])
    deviations = d.group_by(steps=d.steps.cast("int64"), instead=d.n_label.coalesce(NOTHING)).aggregate(
        customers=d.count(), in_progress=d.open.cast("int64").sum()
    )
    return status, deviations


def _rate(a: int, b: int) -> float | None:
    return round(a / b, 6) if b else None


def _one(lt: LakeTables, path: GoldenPath, cfg: GoldenConfig, f: flt.Filters, as_of_ms: int) -> dict[str, Any]:
    status_expr, dev_expr = golden_expressions(lt, path, cfg, f, as_of_ms)
    status = lt.execute(status_expr).to_pylist()
    devs = lt.execute(dev_expr).to_pylist()
    n = len(path.steps)
    customers = sum(int(r["customers"]) for r in status)
    done = [sum(int(r["customers"]) for r in status if int(r["steps"]) >= k) for k in range(n + 1)]
    entered, followers = done[1], done[n]
    in_progress = sum(int(r["customers"]) for r in status if 1 <= int(r["steps"]) < n and r["open"])

    def group(pred: Any) -> dict[str, Any]:
        rows = [r for r in status if pred(int(r["steps"]))]
        total = sum(int(r["customers"]) for r in rows)
        conv = sum(int(r["customers"]) for r in rows if r["converted"])
        return {"customers": total, "converted": conv, "conversion_rate": _rate(conv, total)}

    follow, others = group(lambda s: s == n), group(lambda s: s < n)
    steps = []
    for k, step in enumerate(path.steps, start=1):
        # customers whose best attempt stopped at step k-1: they left the path at step k
        here = sorted(
            (r for r in devs if int(r["steps"]) == k - 1),
            key=lambda r: (-int(r["customers"]), str(r["instead"])),
        )
        steps.append(
            {
                "step": k,
                "name": step.name,
                "reached": done[k],
                "share_of_entered": _rate(done[k], entered) if k > 1 else (1.0 if entered else None),
                # step 1: the customers who never started the path
                "left_here": sum(int(r["customers"]) for r in here) if k > 1 else customers - entered,
                "in_progress": sum(int(r["in_progress"] or 0) for r in here),
                "instead": [{"event": r["instead"], "customers": int(r["customers"])} for r in here[:TOP_INSTEAD]],
            }
        )
    biggest = max(steps[1:], key=lambda s: (s["left_here"], -s["step"]))
    lift = None
    if follow["conversion_rate"] is not None and others["conversion_rate"]:
        lift = round(follow["conversion_rate"] / others["conversion_rate"], 4)
    return {
        "name": path.name,
        "description": path.description,
        "step_names": [s.name for s in path.steps],
        "customers": customers,
        "entered": entered,
        "followers": followers,
        "in_progress": in_progress,
        "share_of_customers": _rate(followers, customers),
        "share_of_entered": _rate(followers, entered),
        "steps": steps,
        "biggest_deviation": {"step": biggest["step"], "name": biggest["name"], "customers": biggest["left_here"]}
        if biggest["left_here"]
        else None,
        "conversion": {"event": cfg.conversion.name, "followers": follow, "others": others, "lift": lift},
    }


def run_golden(lt: LakeTables, cfg: GoldenConfig, f: flt.Filters, as_of_ms: int) -> dict[str, Any]:
    paths = [_one(lt, p, cfg, f, as_of_ms) for p in cfg.paths]
    rows = []
    for p in paths:
        for s in p["steps"]:
            top = s["instead"][0] if s["instead"] else {"event": None, "customers": None}
            rows.append(
                {
                    "path": p["name"],
                    "customers": p["customers"],
                    "followers": p["followers"],
                    "share_of_customers": p["share_of_customers"],
                    "followers_conversion_rate": p["conversion"]["followers"]["conversion_rate"],
                    "others_conversion_rate": p["conversion"]["others"]["conversion_rate"],
                    "step": s["step"],
                    "step_name": s["name"],
                    "reached": s["reached"],
                    "left_here": s["left_here"],
                    "in_progress": s["in_progress"],
                    "top_instead": top["event"],
                    "top_instead_customers": top["customers"],
                }
            )
    return {"window_days": cfg.window_days, "paths": paths, "rows": rows}
