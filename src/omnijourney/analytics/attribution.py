"""Multi-touch attribution over touchpoint paths, converting and non-converting (docs/ANALYTICS.md, "Attribution").

A journey is a customer's touches in the period up to their first conversion (or all of them when they
never converted). Path extraction, the rule-based credits and the counts the data-driven models need
(Markov transition counts, Shapley coalition counts) are Ibis expressions, so DuckDB and Spark compute
them identically; only the small exact post-processing (an absorbing Markov chain, the Shapley sum over
coalitions) is NumPy on those aggregates.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import ibis
import numpy as np

from omnijourney.analytics import filters as flt
from omnijourney.analytics.engine import LakeTables

MODELS = ("first_touch", "last_touch", "linear", "position_based", "time_decay", "markov", "shapley")
HEURISTICS = MODELS[:5]
#: lake columns a touchpoint may be
TOUCH_COLUMNS = ("channel", "utm_source", "utm_medium", "utm_campaign", "device_type", "store_id")
#: message types that are not a customer touch
NOT_TOUCHES = ("identify", "alias", "group")
START, CONV, NULL = "(start)", "(conversion)", "(null)"
#: joins the touchpoints of a higher-order Markov state (never inside a touchpoint value)
SEP = "\x1f"
MAX_SHAPLEY_TOUCHPOINTS = 16
MAX_MARKOV_STATES = 3000


@dataclass(frozen=True)
class AttributionSpec:
    touch: str = "channel"
    conversion: str = "Order Completed"
    #: consecutive touches with the same touchpoint are one touch (the run's last event)
    collapse: bool = True
    half_life_days: float = 7.0
    first_weight: float = 0.4
    last_weight: float = 0.4
    markov_order: int = 1
    models: tuple[str, ...] = MODELS

    def __post_init__(self) -> None:
        if self.touch not in TOUCH_COLUMNS:
            raise ValueError(f"touch must be one of {', '.join(TOUCH_COLUMNS)}")
        if not self.conversion:
            raise ValueError("conversion needs an event name")
        if not (self.half_life_days > 0 and math.isfinite(self.half_life_days)):
            raise ValueError("half_life must be a positive number of days")
        if not (self.first_weight >= 0 and self.last_weight >= 0 and self.first_weight + self.last_weight <= 1):
            raise ValueError("position weights must be >= 0 and add up to at most 1")
        if not 1 <= self.markov_order <= 4:
            raise ValueError("markov_order is 1 to 4")
        unknown = set(self.models) - set(MODELS)
        if unknown or not self.models:
            raise ValueError(f"model must be among {', '.join(MODELS)}")


# --------------------------------------------------------------------------- paths (Ibis)


def conversions_expr(lt: LakeTables, f: flt.Filters, spec: AttributionSpec) -> ibis.Table:
    """Each customer's first conversion in the period: c_unit, c_ts, c_id, c_value."""
    ev = flt.apply(lt, lt.events, f)
    conv = ev.filter(ev.unit.notnull() & (ev.event == spec.conversion))
    conv = conv.mutate(rn=ibis.row_number().over(group_by=conv.unit, order_by=[conv.ts_ms, conv.event_id]))
    conv = conv.filter(conv.rn == 0)
    return conv.select(c_unit=conv.unit, c_ts=conv.ts_ms, c_id=conv.event_id, c_value=conv.revenue.coalesce(0.0))


def touches_expr(lt: LakeTables, f: flt.Filters, spec: AttributionSpec) -> ibis.Table:
    """One row per touch: unit, tp, ts_ms, pos (0-based), n (touches in the journey), converted, value, c_ts.

    Touches are the customer's events (not identify / alias / group, not the conversion itself) with a
    touchpoint value, before the first conversion: same-timestamp events count in storage order.
    """
    ev = flt.apply(lt, lt.events, f)
    tp = ev[spec.touch]
    t = ev.filter(
        ev.unit.notnull()
        & tp.notnull()
        & ~ev.type.isin(list(NOT_TOUCHES))
        & (ev.event.isnull() | (ev.event != spec.conversion))
    )
    t = t.select("unit", "ts_ms", "event_id", tp=t[spec.touch].cast("string"))
    conv = conversions_expr(lt, f, spec)
    j = t.left_join(conv, t.unit == conv.c_unit)
    j = j.filter(j.c_ts.isnull() | (j.ts_ms < j.c_ts) | ((j.ts_ms == j.c_ts) & (j.event_id < j.c_id)))
    j = j.select("unit", "ts_ms", "event_id", "tp", "c_ts", converted=j.c_ts.notnull(), value=j.c_value.coalesce(0.0))
    if spec.collapse:
        nxt = j.tp.lead().over(group_by=j.unit, order_by=[j.ts_ms, j.event_id])
        j = j.mutate(nxt=nxt)
        j = j.filter(j.nxt.isnull() | (j.nxt != j.tp)).drop("nxt")
    pos = ibis.row_number().over(group_by=j.unit, order_by=[j.ts_ms, j.event_id])
    n = j.event_id.count().over(group_by=j.unit)
    return j.mutate(pos=pos, n=n)


def heuristics_expr(touches: ibis.Table, spec: AttributionSpec) -> ibis.Table:
    """Per touchpoint (every one seen): the conversions and value each rule-based model credits it with,
    and the journeys it starts (`journeys`, `converting`, `converting_value` add up to the totals)."""
    c = touches
    n = c.n.cast("float64")
    fw, lw = spec.first_weight, spec.last_weight
    two = (fw / (fw + lw), lw / (fw + lw)) if fw + lw > 0 else (0.5, 0.5)
    position = ibis.cases(
        (c.n == 1, 1.0),
        (c.n == 2, ibis.ifelse(c.pos == 0, two[0], two[1])),
        (c.pos == 0, fw),
        (c.pos == c.n - 1, lw),
        else_=(1.0 - fw - lw) / (n - 2.0),
    )
    # non-converting journeys have no conversion time: their weight is 0 (and never normalised)
    age_days = (c.c_ts.coalesce(c.ts_ms) - c.ts_ms).cast("float64") / 86_400_000.0
    decay = (age_days * (-math.log(2) / spec.half_life_days)).exp()
    won = c.converted.cast("float64")
    c = c.mutate(
        first_touch=(c.pos == 0).cast("float64") * won,
        last_touch=(c.pos == c.n - 1).cast("float64") * won,
        linear=won / n,
        position_based=position * won,
        decay=decay,
        starts=(c.pos == 0).cast("int64"),
    )
    c = c.mutate(time_decay=won * c.decay / c.decay.sum().over(group_by=c.unit))
    aggs: dict[str, Any] = {
        "journeys": c.starts.sum(),
        "converting": (c.starts * c.converted.cast("int64")).sum(),
        "converting_value": (c.first_touch * c.value).sum(),
    }
    for m in HEURISTICS:
        aggs[m] = c[m].sum()
        aggs[f"{m}_value"] = (c[m] * c.value).sum()
    return c.group_by("tp").aggregate(**aggs)


def conversion_totals_expr(lt: LakeTables, f: flt.Filters, spec: AttributionSpec) -> ibis.Table:
    """All conversions in the period (with or without a touch before them) and their value."""
    conv = conversions_expr(lt, f, spec)
    return conv.aggregate(conversions=conv.count(), conversion_value=conv.c_value.sum())


def transitions_expr(touches: ibis.Table, order: int = 1) -> ibis.Table:
    """Markov transition counts between states (the last `order` touchpoints), from (start) and to the ends."""
    w = ibis.window(group_by=touches.unit, order_by=touches.pos)
    state = touches.tp
    for i in range(1, order):
        prev = touches.tp.lag(i).over(w)
        state = ibis.ifelse(prev.isnull(), state, prev.concat(SEP, state))
    t = touches.mutate(state=state)
    t = t.mutate(prev_state=t.state.lag().over(group_by=t.unit, order_by=t.pos))
    inner = t.select(frm=t.prev_state.coalesce(START), to=t.state)
    ends = t.filter(t.pos == t.n - 1)
    ends = ends.select(frm=ends.state, to=ibis.ifelse(ends.converted, CONV, NULL))
    u = inner.union(ends)
    return u.group_by(["frm", "to"]).aggregate(count=u.count())


def coalitions_expr(touches: ibis.Table, touchpoints: list[str]) -> ibis.Table:
    """Journeys and conversions per set of touchpoints seen (a bit mask over `touchpoints`)."""
    bit = ibis.cases(*((touches.tp == tp, 1 << i) for i, tp in enumerate(touchpoints)), else_=0).cast("int64")
    d = touches.select("unit", "tp", "converted", bit=bit).distinct()
    per = d.group_by("unit").aggregate(mask=d.bit.sum(), converted=d.converted.cast("int64").max())
    return per.group_by("mask").aggregate(journeys=per.count(), conversions=per.converted.sum())


# --------------------------------------------------------------------------- exact post-processing (NumPy)


def absorption_probability(counts: dict[tuple[str, str], int], removed: set[str] | None = None) -> float:
    """P(reaching (conversion) from (start)) of the absorbing chain estimated from transition counts.

    States in `removed` are cut out: a transition into one of them ends the journey in (null)."""
    removed = removed or set()
    states = sorted({s for s, _ in counts} | {t for _, t in counts} - {CONV, NULL})
    if START not in states:
        return 0.0
    idx = {s: i for i, s in enumerate(states)}
    m = len(states)
    q = np.zeros((m, m))
    r = np.zeros(m)
    out = np.zeros(m)
    for (s, _to), k in counts.items():
        out[idx[s]] += k
    for (s, t), k in counts.items():
        if s in removed or t in removed:
            continue
        if t == CONV:
            r[idx[s]] += k / out[idx[s]]
        elif t != NULL:
            q[idx[s], idx[t]] += k / out[idx[s]]
    x = np.linalg.solve(np.eye(m) - q, r)
    return float(x[idx[START]])


def markov_removal_effects(
    counts: dict[tuple[str, str], int], touchpoints: list[str]
) -> tuple[float, dict[str, float]]:
    """The conversion probability and each touchpoint's removal effect 1 - P(conv without it) / P(conv)."""
    base = absorption_probability(counts)
    states = {s for s, _ in counts} | {t for _, t in counts}
    effects = {}
    for tp in touchpoints:
        gone = {s for s in states if s not in (START, CONV, NULL) and tp in s.split(SEP)}
        effects[tp] = 1.0 - absorption_probability(counts, gone) / base if base > 0 else 0.0
    return base, effects


def shapley_values(coalitions: dict[int, tuple[int, int]], k: int) -> np.ndarray:
    """Shapley values of k players for v(S) = conversion rate of the journeys whose touchpoints are within S."""
    size = 1 << k
    journeys = np.zeros(size)
    conversions = np.zeros(size)
    for mask, (j, c) in coalitions.items():
        journeys[mask] += j
        conversions[mask] += c
    for i in range(k):  # subset sums (zeta transform): totals over all journeys whose set is within S
        bit = 1 << i
        masks = np.arange(size)
        has = (masks & bit) != 0
        journeys[has] += journeys[masks[has] ^ bit]
        conversions[has] += conversions[masks[has] ^ bit]
    v = np.divide(conversions, journeys, out=np.zeros(size), where=journeys > 0)
    masks = np.arange(size)
    popcount = np.array([bin(m).count("1") for m in range(size)])
    fact = [math.factorial(i) for i in range(k + 1)]
    weight = np.array([fact[s] * fact[k - s - 1] / fact[k] if s < k else 0.0 for s in range(k + 1)])
    phi = np.zeros(k)
    for i in range(k):
        bit = 1 << i
        without = masks[(masks & bit) == 0]
        phi[i] = float(np.sum(weight[popcount[without]] * (v[without | bit] - v[without])))
    return phi


# --------------------------------------------------------------------------- the analysis


def _r(x: float) -> float:
    return round(float(x), 6)


def attribution(lt: LakeTables, f: flt.Filters, spec: AttributionSpec | None = None) -> dict[str, Any]:
    """Credit of each touchpoint under each requested model, with the numbers behind Markov and Shapley."""
    spec = spec or AttributionSpec()
    # every model reads the same journeys: compute them once (a temp table / a cached Spark DataFrame)
    touches = touches_expr(lt, f, spec).cache()
    try:
        return _attribution(lt, f, spec, touches)
    finally:
        touches.release()


def _attribution(lt: LakeTables, f: flt.Filters, spec: AttributionSpec, touches: ibis.Table) -> dict[str, Any]:
    rows = sorted(lt.execute(heuristics_expr(touches, spec)).to_pylist(), key=lambda r: str(r["tp"]))
    tot = lt.execute(conversion_totals_expr(lt, f, spec)).to_pylist()[0]
    journeys = sum(int(r["journeys"] or 0) for r in rows)
    converting = sum(int(r["converting"] or 0) for r in rows)
    value = sum(float(r["converting_value"] or 0.0) for r in rows)
    conversions = int(tot["conversions"] or 0)
    out: dict[str, Any] = {
        "touch": spec.touch,
        "conversion": spec.conversion,
        "models": list(spec.models),
        "journeys": journeys,
        "converting_journeys": converting,
        "non_converting_journeys": journeys - converting,
        "conversions": conversions,
        # conversions with no touch before them: no model credits them
        "direct_conversions": conversions - converting,
        "attributed_value": _r(value),
        "settings": {
            "collapse": spec.collapse,
            "half_life_days": spec.half_life_days,
            "position_weights": [
                spec.first_weight,
                round(1 - spec.first_weight - spec.last_weight, 6),
                spec.last_weight,
            ],
            "markov_order": spec.markov_order,
        },
    }
    credit: dict[str, dict[str, tuple[float, float]]] = {}
    # every touchpoint seen, in non-converting journeys too
    touchpoints = sorted(str(r["tp"]) for r in rows)
    for m in HEURISTICS:
        credit[m] = {str(r["tp"]): (float(r[m] or 0.0), float(r[f"{m}_value"] or 0.0)) for r in rows}
    if "markov" in spec.models:
        trows = lt.execute(transitions_expr(touches, spec.markov_order)).to_pylist()
        counts = {(str(r["frm"]), str(r["to"])): int(r["count"]) for r in trows}
        n_states = len({s for s, _ in counts})
        if n_states > MAX_MARKOV_STATES:
            raise ValueError(f"{n_states} Markov states: lower markov_order or narrow the filters")
        base, effects = markov_removal_effects(counts, touchpoints) if counts else (0.0, {})
        total = sum(max(e, 0.0) for e in effects.values())
        credit["markov"] = {
            tp: (converting * max(e, 0.0) / total, value * max(e, 0.0) / total) if total > 0 else (0.0, 0.0)
            for tp, e in effects.items()
        }
        out["markov"] = {
            "order": spec.markov_order,
            "states": n_states,
            "conversion_probability": _r(base),
            "removal_effects": {tp: _r(e) for tp, e in sorted(effects.items())},
            "transitions": [
                {"from": s.replace(SEP, " > "), "to": t.replace(SEP, " > "), "count": k}
                for (s, t), k in sorted(counts.items())
            ],
        }
    if "shapley" in spec.models:
        if len(touchpoints) > MAX_SHAPLEY_TOUCHPOINTS:
            raise ValueError(
                f"Shapley values need at most {MAX_SHAPLEY_TOUCHPOINTS} touchpoints, there are {len(touchpoints)}: "
                "narrow the filters or pick another touch column"
            )
        crows = lt.execute(coalitions_expr(touches, touchpoints)).to_pylist() if touchpoints else []
        coal = {int(r["mask"]): (int(r["journeys"]), int(r["conversions"])) for r in crows}
        phi = shapley_values(coal, len(touchpoints)) if touchpoints else np.zeros(0)
        rate = float(phi.sum())
        credit["shapley"] = {
            tp: (converting * p / rate, value * p / rate) if rate > 0 else (0.0, 0.0)
            for tp, p in zip(touchpoints, phi, strict=True)
        }
        out["shapley"] = {
            "conversion_rate": _r(rate),
            "values": {tp: _r(p) for tp, p in zip(touchpoints, phi, strict=True)},
        }
    results: dict[str, list[dict[str, Any]]] = {}
    flat: list[dict[str, Any]] = []
    for m in spec.models:
        rows_m = []
        for tp in touchpoints:
            conv_c, val_c = credit.get(m, {}).get(tp, (0.0, 0.0))
            rows_m.append(
                {
                    "touchpoint": tp,
                    "conversions": _r(conv_c),
                    "value": _r(val_c),
                    "share": _r(conv_c / converting) if converting else 0.0,
                }
            )
        results[m] = rows_m
        flat.extend({"model": m, **r} for r in rows_m)
    out["touchpoints"] = touchpoints
    out["results"] = results
    out["rows"] = flat
    return out
