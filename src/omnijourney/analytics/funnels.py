"""Funnels over any event steps, defined once with Ibis (DuckDB and Spark run the same expression).

Semantics (docs/ANALYTICS.md, "Funnel rules"; PostHog's funnels are the model):

- **Unit**: the customer (the canonical profile at query time). Events without a profile are ignored.
- **Order of events**: a unit's events are ordered by (timestamp, log position). Two events with the
  same timestamp count in the order they were stored; one event never fills two steps.
- **Attempts and re-entry**: every occurrence of step 1 starts an attempt. A unit is counted once,
  with its best attempt: the one that reached the furthest step, the earliest start on a tie.
- **Ordered**: step k is the first event matching step k after the attempt's step k-1 event.
  **Strict**: step k must be the unit's very next event (any event in between breaks the attempt).
  **Any order**: an attempt starts at any step's event; it counts the distinct steps done at or
  after that event; step i counts the units that did at least i steps.
- **Window**: inclusive, measured from the attempt's first step: a step counts when
  `ts <= ts(step 1) + window`.
- **Exclusions**: an attempt is discarded when an exclusion event happens after its from-step event
  and before its to-step event (or, when it never reached the to-step, before its window closes).
  A unit all of whose attempts are discarded is not in the funnel.
- **In progress**: a unit that has not completed the funnel and whose best attempt's window is still
  open at `as_of` (the period end, or now) is "in progress", not dropped.
- **Breakdown**: the value of a lake column on one event of the best attempt: step 1 (first touch),
  the furthest step reached (last touch), or a given step (at step; "(none)" if not reached).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import ibis
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from omnijourney.analytics import filters as flt
from omnijourney.analytics.engine import LakeTables, materialise

Order = Literal["ordered", "strict", "any"]
Attribution = Literal["first_touch", "last_touch", "step"]

#: lake columns a step condition or a breakdown may use
COLUMNS = (
    "type",
    "event",
    "channel",
    "source_id",
    "order_id",
    "currency",
    "device_type",
    "os",
    "utm_source",
    "utm_medium",
    "utm_campaign",
    "store_id",
    "page_path",
    "author",
    "survey_type",
    "score",
    "resolved",
    "revenue",
)
OPS = ("=", "!=", ">=", "<=", ">", "<")

#: conversion-time distribution buckets (upper bounds in seconds, the last is open)
BUCKETS: tuple[tuple[str, float], ...] = (
    ("< 1 min", 60),
    ("1-10 min", 600),
    ("10-60 min", 3600),
    ("1-6 h", 6 * 3600),
    ("6-24 h", 86400),
    ("1-3 d", 3 * 86400),
    ("3-7 d", 7 * 86400),
    ("7-30 d", 30 * 86400),
    (">= 30 d", float("inf")),
)


@dataclass(frozen=True)
class Step:
    name: str
    #: any of these event names (empty: any event); `type` conditions select pages/screens
    events: tuple[str, ...] = ()
    #: (column, op, value) conditions, all must hold
    where: tuple[tuple[str, str, Any], ...] = ()
    #: message types that also match (e.g. "page", "screen": page views have no event name)
    types: tuple[str, ...] = ()
    #: alternatives: the step matches when any of these matches (in addition to the fields above)
    any_of: tuple[Step, ...] = ()

    def __post_init__(self) -> None:
        for col, op, _ in self.where:
            if col not in COLUMNS:
                raise ValueError(f"step {self.name!r}: unknown column {col!r}")
            if op not in OPS:
                raise ValueError(f"step {self.name!r}: unknown operator {op!r}")


@dataclass(frozen=True)
class Exclusion:
    step: Step
    #: zero-based funnel step indexes the exclusion applies between
    from_step: int = 0
    to_step: int = 1


@dataclass(frozen=True)
class FunnelSpec:
    steps: tuple[Step, ...]
    order: Order = "ordered"
    window_seconds: int = 14 * 86400
    exclusions: tuple[Exclusion, ...] = ()
    breakdown: str | None = None
    attribution: Attribution = "first_touch"
    attribution_step: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.steps)
        if not 2 <= n <= 10:
            raise ValueError("a funnel has 2 to 10 steps")
        if self.order not in ("ordered", "strict", "any"):
            raise ValueError(f"unknown order {self.order!r}")
        if self.window_seconds <= 0:
            raise ValueError("the conversion window must be positive")
        if self.breakdown is not None and self.breakdown not in COLUMNS:
            raise ValueError(f"cannot break down by {self.breakdown!r}")
        if self.attribution not in ("first_touch", "last_touch", "step"):
            raise ValueError(f"unknown attribution {self.attribution!r}")
        if self.attribution == "step" and not 0 <= self.attribution_step < n:
            raise ValueError("attribution_step is out of range")
        for x in self.exclusions:
            if not 0 <= x.from_step < x.to_step < n:
                raise ValueError("an exclusion needs 0 <= from_step < to_step < number of steps")


def match(t: ibis.Table, step: Step) -> ibis.expr.types.BooleanValue:
    if step.any_of:
        own = Step(step.name, step.events, step.where, step.types)
        alts = [match(t, a) for a in step.any_of]
        out = match(t, own) if (step.events or step.types or step.where) else alts.pop(0)
        for a in alts:
            out = out | a
        return out
    preds = []
    if step.events and step.types:
        preds.append(t.event.isin(list(step.events)) | t.type.isin(list(step.types)))
    elif step.events:
        preds.append(t.event.isin(list(step.events)))
    elif step.types:
        preds.append(t.type.isin(list(step.types)))
    for col, op, value in step.where:
        c = t[col]
        preds.append(
            {
                "=": lambda c=c, v=value: c == v,
                "!=": lambda c=c, v=value: c != v,
                ">=": lambda c=c, v=value: c >= v,
                "<=": lambda c=c, v=value: c <= v,
                ">": lambda c=c, v=value: c > v,
                "<": lambda c=c, v=value: c < v,
            }[op]()
        )
    if not preds:
        return ibis.literal(True)
    out = preds[0]
    for p in preds[1:]:
        out = out & p
    return out


def _step_columns(step: Step) -> set[str]:
    out = {c for c, _, _ in step.where}
    for a in step.any_of:
        out |= _step_columns(a)
    return out


def needed_columns(spec: FunnelSpec) -> list[str]:
    cols = {"unit", "event_id", "ts_ms", "event", "type"}
    for s in spec.steps:
        cols |= _step_columns(s)
    for x in spec.exclusions:
        cols |= _step_columns(x.step)
    if spec.breakdown:
        cols.add(spec.breakdown)
    return sorted(cols)


def sequenced(lt: LakeTables, f: flt.Filters, columns: list[str] | None = None) -> ibis.Table:
    """The filtered events of known units, numbered per unit in (timestamp, log position) order."""

    def build() -> ibis.Table:
        ev = flt.apply(lt, lt.events, f)
        ev = ev.filter(ev.unit.notnull())
        if columns:
            ev = ev.select(*columns)
        return ev.mutate(seq=ibis.row_number().over(group_by=ev.unit, order_by=[ev.ts_ms, ev.event_id]))

    # every step joins this table: on DuckDB materialise it once (a temp table of this connection)
    return materialise(lt, _sequenced_key(f, columns), build)


def _sequenced_key(f: flt.Filters, columns: list[str] | None) -> tuple[Any, ...]:
    return ("funnel-events", f, tuple(columns) if columns else None)


def _candidates(ev: ibis.Table, step: Step) -> ibis.Table:
    m = ev.filter(match(ev, step))
    return m.select(c_unit=m.unit, c_seq=m.seq, c_ts=m.ts_ms)


def _extend(att: ibis.Table, c: ibis.Table, conds: list[Any], seq: str, ts: str) -> ibis.Table:
    """`att` with the first matching candidate of `c` per attempt (null when none) as columns seq / ts.

    One left join and one group-by per step, keyed by the attempt (unit, s0_seq): the previous
    columns ride along as `min()` of a single value. The plan stays linear in the number of
    steps (joining an aggregate of `att` back onto `att` doubled the plan at every step).
    """
    j = att.left_join(c, conds)
    keep = {name: j[name].min() for name in att.columns if name not in ("unit", "s0_seq")}
    return j.group_by(unit=j.unit, s0_seq=j.s0_seq).aggregate(**keep, **{seq: j.c_seq.min(), ts: j.c_ts.min()})


def _attempts_sequential(ev: ibis.Table, spec: FunnelSpec) -> ibis.Table:
    w = spec.window_seconds * 1000
    first = ev.filter(match(ev, spec.steps[0]))
    att = first.select(unit=first.unit, s0_seq=first.seq, s0_ts=first.ts_ms)
    for k in range(1, len(spec.steps)):
        c = _candidates(ev, spec.steps[k])
        prev = att[f"s{k - 1}_seq"]
        order = c.c_seq == prev + 1 if spec.order == "strict" else c.c_seq > prev
        att = _extend(att, c, [att.unit == c.c_unit, order, c.c_ts <= att.s0_ts + w], f"s{k}_seq", f"s{k}_ts")
    return att


def _attempts_any(ev: ibis.Table, spec: FunnelSpec) -> ibis.Table:
    w = spec.window_seconds * 1000
    any_step = match(ev, spec.steps[0])
    for s in spec.steps[1:]:
        any_step = any_step | match(ev, s)
    first = ev.filter(any_step)
    att = first.select(unit=first.unit, s0_seq=first.seq, s0_ts=first.ts_ms)
    # q{k}/t{k}: the first event of step k at or after the anchor, within the window
    for k in range(len(spec.steps)):
        c = _candidates(ev, spec.steps[k])
        att = _extend(att, c, [att.unit == c.c_unit, c.c_seq >= att.s0_seq, c.c_ts <= att.s0_ts + w], f"q{k}", f"t{k}")
    return att


def _steps_done(att: ibis.Table, spec: FunnelSpec) -> ibis.Table:
    n = len(spec.steps)
    if spec.order == "any":
        cols = [att[f"q{k}"].notnull().cast("int64") for k in range(n)]
        last = ibis.greatest(*[att[f"q{k}"].coalesce(-1) for k in range(n)])
    else:
        cols = [ibis.literal(1, "int64")] + [att[f"s{k}_seq"].notnull().cast("int64") for k in range(1, n)]
        last = att[f"s{n - 1}_seq"]
        for k in range(n - 2, -1, -1):
            last = last.coalesce(att[f"s{k}_seq"])
    total = cols[0]
    for c in cols[1:]:
        total = total + c
    return att.mutate(steps=total, last_seq=last)


def _apply_exclusions(ev: ibis.Table, att: ibis.Table, spec: FunnelSpec) -> ibis.Table:
    w = spec.window_seconds * 1000
    n = len(spec.steps)
    for x in spec.exclusions:
        xs = ev.filter(match(ev, x.step))
        xs = xs.select(x_unit=xs.unit, x_seq=xs.seq, x_ts=xs.ts_ms)
        if spec.order == "any":
            lo, hi = att.s0_seq, ibis.ifelse(att.steps == n, att.last_seq, ibis.null("int64"))
        else:
            lo, hi = att[f"s{x.from_step}_seq"], att[f"s{x.to_step}_seq"]
        inside = ibis.ifelse(hi.isnull(), xs.x_ts <= att.s0_ts + w, xs.x_seq < hi)
        j = att.join(xs, [att.unit == xs.x_unit, xs.x_seq > lo, inside])
        bad = j.select(b_unit=j.unit, b_s0=j.s0_seq).distinct()
        att = att.anti_join(bad, [att.unit == bad.b_unit, att.s0_seq == bad.b_s0])
    return att


def best_attempts(lt: LakeTables, spec: FunnelSpec, f: flt.Filters, as_of_ms: int) -> ibis.Table:
    """One row per unit: its best attempt (steps done, step times, window open?, breakdown value).

    On DuckDB a temp table (two queries read it), its SQL compiled once per (spec, filters, as_of).
    """
    columns = needed_columns(spec)
    ev = sequenced(lt, f, columns)
    key = ("funnel-best", spec, as_of_ms, _sequenced_key(f, columns))
    return materialise(lt, key, lambda: _best_attempts(ev, spec, as_of_ms))


def _best_attempts(ev: ibis.Table, spec: FunnelSpec, as_of_ms: int) -> ibis.Table:
    att = _attempts_any(ev, spec) if spec.order == "any" else _attempts_sequential(ev, spec)
    att = _steps_done(att, spec)
    att = _apply_exclusions(ev, att, spec)
    rank = ibis.row_number().over(group_by=att.unit, order_by=[ibis.desc(att.steps), att.s0_seq])
    best = att.mutate(rank=rank)
    best = best.filter(best.rank == 0).drop("rank")
    n = len(spec.steps)
    w = spec.window_seconds * 1000
    best = best.mutate(open=(best.steps < n) & (best.s0_ts + w >= as_of_ms))
    if spec.breakdown is None:
        return best.mutate(breakdown=ibis.literal("all"))
    if spec.attribution == "first_touch":
        bseq = best.s0_seq
    elif spec.attribution == "last_touch":
        bseq = best.last_seq
    else:
        k = spec.attribution_step
        bseq = best[f"q{k}"] if spec.order == "any" else best[f"s{k}_seq"]
    best = best.mutate(b_seq_key=bseq)
    values = ev.select(v_unit=ev.unit, v_seq=ev.seq, v_value=ev[spec.breakdown].cast("string"))
    j = best.left_join(values, [best.unit == values.v_unit, best.b_seq_key == values.v_seq])
    j = j.mutate(breakdown=j.v_value.coalesce("(none)"))
    return j.drop("v_unit", "v_seq", "v_value", "b_seq_key")


def _time_cols(spec: FunnelSpec) -> list[str]:
    n = len(spec.steps)
    return [f"t{k}" for k in range(n)] if spec.order == "any" else ["s0_ts"] + [f"s{k}_ts" for k in range(1, n)]


def funnel_expressions(
    lt: LakeTables, spec: FunnelSpec, f: flt.Filters, as_of_ms: int
) -> tuple[ibis.Table, ibis.Table]:
    """(counts by breakdown/steps/open, step times of units past step 1): what the engine computes."""
    best = best_attempts(lt, spec, f, as_of_ms)
    counts = best.group_by(["breakdown", "steps", "open"]).aggregate(units=best.count())
    times = best.filter(best.steps >= 2).select("breakdown", "steps", *_time_cols(spec))
    return counts, times


def _median(values: np.ndarray) -> float | None:
    return None if values.size == 0 else round(float(np.median(values)) / 1000.0, 3)


def _summarise(spec: FunnelSpec, counts: list[dict[str, Any]], times: dict[str, np.ndarray]) -> dict[str, Any]:
    n = len(spec.steps)
    done = [0] * (n + 1)  # units with exactly i steps done
    open_ = [0] * (n + 1)
    for r in counts:
        done[int(r["steps"])] += int(r["units"])
        if r["open"]:
            open_[int(r["steps"])] += int(r["units"])
    reached = [sum(done[i:]) for i in range(1, n + 1)]
    # step matrix: per unit with >= 2 steps, the completion time of each step (ms), NaN when not reached
    mat = times["matrix"]
    steps_done = times["steps"]
    out_steps = []
    for i, step in enumerate(spec.steps):
        count = reached[i]
        entry: dict[str, Any] = {
            "step": i + 1,
            "name": step.name,
            "count": count,
            "conversion_from_start": round(count / reached[0], 6) if reached[0] else 0.0,
            "conversion_from_previous": (
                1.0 if i == 0 else (round(count / reached[i - 1], 6) if reached[i - 1] else 0.0)
            ),
        }
        if i < n - 1:
            entry["in_progress"] = open_[i + 1]
            entry["dropped"] = done[i + 1] - open_[i + 1]
        else:
            entry["in_progress"] = 0
            entry["dropped"] = 0
        if i > 0:
            sel = steps_done >= i + 1
            entry["median_seconds_from_previous"] = _median(mat[sel, i] - mat[sel, i - 1])
            entry["median_seconds_from_start"] = _median(mat[sel, i] - mat[sel, 0])
        out_steps.append(entry)
    converted = steps_done == n
    total_times = (mat[converted, n - 1] - mat[converted, 0]) / 1000.0 if mat.size else np.array([])
    dist = []
    lo = 0.0
    for label, hi in BUCKETS:
        dist.append({"bucket": label, "units": int(((total_times >= lo) & (total_times < hi)).sum())})
        lo = hi
    return {
        "entered": reached[0],
        "converted": reached[-1],
        "in_progress": sum(open_[1:n]),
        "conversion_rate": round(reached[-1] / reached[0], 6) if reached[0] else 0.0,
        "median_seconds_to_convert": None if total_times.size == 0 else round(float(np.median(total_times)), 3),
        "time_to_convert_distribution": dist,
        "steps": out_steps,
    }


def run_funnel(lt: LakeTables, spec: FunnelSpec, f: flt.Filters, as_of_ms: int) -> dict[str, Any]:
    counts_expr, times_expr = funnel_expressions(lt, spec, f, as_of_ms)
    counts = lt.execute(counts_expr).to_pylist()
    times_tbl: pa.Table = lt.execute(times_expr)
    n = len(spec.steps)
    tcols = _time_cols(spec)
    # column-wise to NumPy (one row per unit past step 1: up to a million rows at the size)
    bd = np.asarray(times_tbl.column("breakdown").cast(pa.string()).to_numpy(), dtype=object)
    steps = np.asarray(times_tbl.column("steps").cast(pa.int64()).to_numpy(), dtype=np.int64)
    if times_tbl.num_rows:
        mat = np.column_stack(
            [pc.fill_null(times_tbl.column(c).cast(pa.float64()), np.nan).to_numpy() for c in tcols]  # null -> nan
        )
        if spec.order == "any":  # steps done in any order: their times in completion order
            mat = np.sort(mat, axis=1)  # NaN sorts last
    else:
        mat = np.empty((0, n))

    def part(rows: list[dict[str, Any]], sel: np.ndarray) -> dict[str, Any]:
        return _summarise(spec, rows, {"matrix": mat[sel], "steps": steps[sel]})

    result = part(counts, np.ones(len(steps), dtype=bool))
    result["rows"] = [{"breakdown": "all", **_flat(s)} for s in result["steps"]]
    result["order"] = spec.order
    result["window_seconds"] = spec.window_seconds
    result["filters"] = f.describe()
    if spec.breakdown is not None:
        result["breakdown"] = {"by": spec.breakdown, "attribution": spec.attribution}
        values = sorted({str(r["breakdown"]) for r in counts})
        result["breakdown_values"] = [
            {"value": v, **part([r for r in counts if r["breakdown"] == v], bd == v)} for v in values
        ]
        for b in result["breakdown_values"]:
            result["rows"].extend({"breakdown": b["value"], **_flat(s)} for s in b["steps"])
    return result


def _flat(step: dict[str, Any]) -> dict[str, Any]:
    keys = (
        "step",
        "name",
        "count",
        "conversion_from_start",
        "conversion_from_previous",
        "in_progress",
        "dropped",
        "median_seconds_from_previous",
        "median_seconds_from_start",
    )
    return {k: step.get(k) for k in keys}
