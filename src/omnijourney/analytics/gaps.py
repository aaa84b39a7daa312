"""The journey gap report: where customers are lost, as a short ranked list a manager can act on.

Four kinds of finding, each a sentence with the numbers behind it, ranked by the customers (or
conversations) affected:

- `stage_drop`: customers who stopped at a journey stage (window closed) instead of reaching the next;
- `channel_gap` / `segment_gap`: a start channel or a segment converting from one stage to the next below
  the overall rate, scored by the customers it is short of the overall rate;
- `lost_context`: service conversations that followed a contact in another channel about the same matter
  (the service package's lost-context signal, from the lake's conversations snapshot);
- `friction`: events that happen before abandonment (an add to cart never followed by a purchase) clearly
  more often than before a purchase, scored by the abandonments in excess of the buyers' rate.

The funnels and counts are Ibis expressions (identical on DuckDB and Spark); ranking and wording are here.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import ibis

from omnijourney.analytics import filters as flt
from omnijourney.analytics.config import StageConfig
from omnijourney.analytics.engine import LakeTables
from omnijourney.analytics.funnels import FunnelSpec, run_funnel

PURCHASE = "Order Completed"
CART_EVENTS = ("Product Added", "Checkout Started")
FRICTION_WINDOW_MS = 24 * 3600 * 1000
#: events never reported as friction (the funnel's own steps and outbound sends)
NOT_FRICTION = (PURCHASE, *CART_EVENTS, "Email Delivered", "Push Delivered", "SMS Delivered")
#: a finding needs at least this many customers behind it
MIN_BASE = 5
MAX_SEGMENTS = 5


def _pct(x: float) -> str:
    return f"{100 * x:.0f}%"


def _finding(kind: str, score: float, text: str, **numbers: Any) -> dict[str, Any]:
    return {"kind": kind, "score": round(float(score), 3), "text": text, **numbers}


def _transitions(steps: list[dict[str, Any]]) -> list[tuple[int, str, str, int, int]]:
    """(index, stage, next stage, reached stage, reached next) for consecutive stages."""
    return [
        (i, steps[i]["name"], steps[i + 1]["name"], int(steps[i]["count"]), int(steps[i + 1]["count"]))
        for i in range(len(steps) - 1)
    ]


def _stage_findings(overall: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    steps = overall["steps"]
    for i, stage, nxt, n, _m in _transitions(steps):
        dropped = int(steps[i]["dropped"])
        if n < MIN_BASE or dropped == 0:
            continue
        text = (
            f"{dropped} of {n} customers who reached {stage} ({_pct(dropped / n)}) stopped there and never "
            f"reached {nxt}"
            + (f"; {steps[i]['in_progress']} more are still within the window" if steps[i]["in_progress"] else "")
            + "."
        )
        out.append(_finding("stage_drop", dropped, text, stage=stage, next_stage=nxt, base=n, lost=dropped))
    return out


def _gap_findings(kind: str, label: str, name: str, part: dict[str, Any], overall: dict[str, Any]) -> list[dict]:
    out = []
    for (_, stage, nxt, n, m), (_, _, _, n_all, m_all) in zip(
        _transitions(part["steps"]), _transitions(overall["steps"]), strict=True
    ):
        if n < MIN_BASE or n_all == 0:
            continue
        rate, rate_all = m / n, m_all / n_all
        short = n * rate_all - m
        if short < 1 or rate >= rate_all:
            continue
        text = (
            f"{label} {name}: {_pct(rate)} go on from {stage} to {nxt} ({m} of {n}) against {_pct(rate_all)} "
            f"overall, {short:.0f} customers short of the average."
        )
        out.append(
            _finding(
                kind,
                short,
                text,
                **{"channel" if kind == "channel_gap" else "segment": name},
                stage=stage,
                next_stage=nxt,
                base=n,
                converted=m,
                rate=round(rate, 6),
                overall_rate=round(rate_all, 6),
            )
        )
    return out


def _lost_context(lt: LakeTables, f: flt.Filters) -> list[dict[str, Any]]:
    if lt.conversations is None:
        return []
    c = lt.conversations
    idm = lt.identity_map.select(m_profile="profile_id", m_canonical="canonical_id")
    c = c.left_join(idm, c.profile_id == idm.m_profile)
    c = c.mutate(unit=c.m_canonical.coalesce(c.profile_id))
    preds = []
    if f.start_ms is not None:
        preds.append(c.started_ms >= f.start_ms)
    if f.end_ms is not None:
        preds.append(c.started_ms < f.end_ms)
    if f.channels:
        preds.append(c.channel.isin(list(f.channels)))
    if f.segments:
        preds.append(c.unit.isin(flt.segment_units(lt, f.segments)))
    if preds:
        c = c.filter(*preds)
    q = c.group_by("channel").aggregate(conversations=c.count(), lost=c.lost_context.cast("int64").sum())
    out = []
    for r in sorted(lt.execute(q).to_pylist(), key=lambda r: str(r["channel"])):
        n, lost = int(r["conversations"]), int(r["lost"] or 0)
        if lost == 0:
            continue
        text = (
            f"{lost} of {n} {r['channel']} conversations ({_pct(lost / n)}) came after a contact in another channel "
            f"about the same matter: the customer had to explain everything again."
        )
        out.append(_finding("lost_context", lost, text, channel=r["channel"], base=n, lost=lost))
    return out


def friction_expr(lt: LakeTables, f: flt.Filters) -> ibis.Table:
    """Customers who added to cart, by outcome (abandoned / bought; rows with a null event), and per event
    the customers of each outcome who had it in the 24 hours before they left (their last event) or bought
    (their first purchase)."""
    ev = flt.apply(lt, lt.events, f)
    ev = ev.filter(ev.unit.notnull())
    adds = ev.filter(ev.event.isin(list(CART_EVENTS)))
    adds = adds.group_by(a_unit=adds.unit).aggregate(first_add=adds.ts_ms.min(), last_add=adds.ts_ms.max())
    buys = ev.filter(ev.event == PURCHASE)
    buys = buys.group_by(b_unit=buys.unit).aggregate(first_buy=buys.ts_ms.min(), last_buy=buys.ts_ms.max())
    seen = ev.group_by(s_unit=ev.unit).aggregate(last_seen=ev.ts_ms.max())
    j = adds.left_join(buys, adds.a_unit == buys.b_unit)
    j = j.join(seen, j.a_unit == seen.s_unit)
    abandoned = j.last_buy.isnull() | (j.last_buy < j.last_add)
    anchors = j.select(
        x_unit=j.a_unit,
        outcome=ibis.ifelse(abandoned, "abandoned", "bought"),
        anchor=ibis.ifelse(abandoned, j.last_seen, j.first_buy),
    )
    sizes = anchors.group_by("outcome").aggregate(customers=anchors.count())
    sizes = sizes.select(event=ibis.null("string"), outcome=sizes.outcome, customers=sizes.customers)
    cand = ev.filter(ev.event.notnull() & ~ev.event.isin(list(NOT_FRICTION)))
    k = cand.join(
        anchors,
        [cand.unit == anchors.x_unit, cand.ts_ms <= anchors.anchor, cand.ts_ms >= anchors.anchor - FRICTION_WINDOW_MS],
    )
    k = k.select("outcome", "event", "unit").distinct()
    per_event = k.group_by(["event", "outcome"]).aggregate(customers=k.count())
    return sizes.union(per_event.select("event", "outcome", "customers"))


def _friction(lt: LakeTables, f: flt.Filters) -> list[dict[str, Any]]:
    rows = lt.execute(friction_expr(lt, f)).to_pylist()
    sizes = {r["outcome"]: int(r["customers"]) for r in rows if r["event"] is None}
    n_ab, n_buy = sizes.get("abandoned", 0), sizes.get("bought", 0)
    if n_ab < MIN_BASE:
        return []
    per: dict[str, dict[str, int]] = {}
    for r in (r for r in rows if r["event"] is not None):
        per.setdefault(str(r["event"]), {})[str(r["outcome"])] = int(r["customers"])
    out = []
    for event, c in sorted(per.items()):
        ab, buy = c.get("abandoned", 0), c.get("bought", 0)
        share_ab = ab / n_ab
        share_buy = buy / n_buy if n_buy else 0.0
        excess = ab - share_buy * n_ab
        if ab < 2 or share_ab < 0.05 or share_ab < 1.25 * share_buy or excess < 1:
            continue
        text = (
            f"'{event}' came in the 24 hours before {_pct(share_ab)} of abandoned carts ({ab} of {n_ab}) but before "
            f"only {_pct(share_buy)} of purchases ({buy} of {n_buy})."
        )
        out.append(
            _finding(
                "friction",
                excess,
                text,
                event=event,
                abandoned=ab,
                abandoned_total=n_ab,
                bought=buy,
                bought_total=n_buy,
            )
        )
    return out


def gap_report(lt: LakeTables, cfg: StageConfig, f: flt.Filters, as_of_ms: int, limit: int = 10) -> dict[str, Any]:
    spec = FunnelSpec(
        steps=cfg.stages,
        order="ordered",
        window_seconds=cfg.window_days * 86400,
        breakdown="channel",
        attribution="first_touch",
    )
    overall = run_funnel(lt, spec, f, as_of_ms)
    findings = _stage_findings(overall)
    for part in overall.get("breakdown_values", []):
        findings += _gap_findings("channel_gap", "Journeys starting in", str(part["value"]), part, overall)
    segments = []
    if lt.segment_members is not None and not f.segments:
        sm = lt.segment_members
        q = sm.group_by(["segment_key", "segment_name"]).aggregate(members=sm.count())
        seg_rows = sorted(lt.execute(q).to_pylist(), key=lambda r: (-int(r["members"]), str(r["segment_key"])))
        plain = dataclasses.replace(spec, breakdown=None)
        for r in seg_rows[:MAX_SEGMENTS]:
            part = run_funnel(lt, plain, dataclasses.replace(f, segments=(r["segment_key"],)), as_of_ms)
            segments.append(r["segment_key"])
            findings += _gap_findings("segment_gap", "Segment", str(r["segment_name"]), part, overall)
    findings += _lost_context(lt, f)
    findings += _friction(lt, f)
    findings.sort(key=lambda x: (-x["score"], x["kind"], x["text"]))
    top = findings[:limit]
    for i, item in enumerate(top, 1):
        item["rank"] = i
    return {
        "findings": top,
        "total_findings": len(findings),
        "segments_compared": segments,
        "stage_counts": [{"stage": s["name"], "customers": s["count"]} for s in overall["steps"]],
        "rows": [{"rank": x["rank"], "kind": x["kind"], "score": x["score"], "text": x["text"]} for x in top],
    }
