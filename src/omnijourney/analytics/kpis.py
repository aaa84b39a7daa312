"""Omnichannel and service KPIs, each defined once with Ibis (DuckDB and Spark run the same expression).

The engine does the scanning, joining and grouping; ratios and medians are computed here from the
small aggregated results (integer counts and per-contact rows), so both engines give identical figures.
Definitions are in docs/ANALYTICS.md ("KPIs").
"""

from __future__ import annotations

from typing import Any

import ibis
import numpy as np

from omnijourney.analytics import filters as flt
from omnijourney.analytics.engine import LakeTables

PURCHASE = "Order Completed"
RETURN_EVENTS = ("Return Requested", "Return Received", "Order Refunded")
ONLINE_CHANNELS = ("web", "app")
#: channels we send through, and service channels: a customer is multi-channel when they
#: shop (browse or buy) in two or more of the other channels
OUTBOUND_CHANNELS = ("email", "sms", "push", "ads")
SERVICE_CHANNELS = ("chat", "call_center")
FCR_WINDOW_MS = 7 * 86400 * 1000
LOST_CONTEXT_WINDOW_MS = 48 * 3600 * 1000


def _ratio(a: int, b: int) -> float:
    return round(a / b, 6) if b else 0.0


def _known(lt: LakeTables, f: flt.Filters) -> ibis.Table:
    ev = flt.apply(lt, lt.events, f)
    return ev.filter(ev.unit.notnull())


def _first_per_unit(t: ibis.Table) -> ibis.Table:
    rn = ibis.row_number().over(group_by=t.unit, order_by=[t.ts_ms, t.event_id])
    t = t.mutate(rn=rn)
    return t.filter(t.rn == 0).drop("rn")


# --------------------------------------------------------------------------- cross-channel


def cross_channel_matrix(lt: LakeTables, f: flt.Filters) -> dict[str, Any]:
    """Units by the channel their journey started in (first event in the period) x the channel of their first purchase."""
    ev = _known(lt, f)
    start = _first_per_unit(ev).select(s_unit="unit", start_channel="channel")
    purchases = ev.filter(ev.event == PURCHASE)
    first_purchase = _first_per_unit(purchases).select("unit", purchase_channel="channel")
    j = first_purchase.join(start, first_purchase.unit == start.s_unit)
    expr = j.group_by(["start_channel", "purchase_channel"]).aggregate(customers=j.count())
    rows = sorted(lt.execute(expr).to_pylist(), key=lambda r: (r["start_channel"], r["purchase_channel"]))
    total = sum(r["customers"] for r in rows)
    cross = sum(r["customers"] for r in rows if r["start_channel"] != r["purchase_channel"])
    out_rows = [{**r, "customers": int(r["customers"]), "share": _ratio(int(r["customers"]), total)} for r in rows]
    starts = sorted({r["start_channel"] for r in rows})
    ends = sorted({r["purchase_channel"] for r in rows})
    lookup = {(r["start_channel"], r["purchase_channel"]): int(r["customers"]) for r in rows}
    return {
        "customers": total,
        "cross_channel_customers": cross,
        "cross_channel_share": _ratio(cross, total),
        "start_channels": starts,
        "purchase_channels": ends,
        "matrix": [[lookup.get((s, e), 0) for e in ends] for s in starts],
        "rows": out_rows,
        "filters": f.describe(),
    }


# --------------------------------------------------------------------------- orders


def _orders(lt: LakeTables, f: flt.Filters) -> ibis.Table:
    o = lt.orders
    preds = []
    if f.start_ms is not None:
        preds.append(o.placed_ms >= f.start_ms)
    if f.end_ms is not None:
        preds.append(o.placed_ms < f.end_ms)
    if f.channels:
        preds.append(o.channel.isin(list(f.channels)))
    place = o.pickup_location.coalesce(o.store_id)
    if f.stores:
        preds.append(place.isin(list(f.stores)))
    if f.cities:
        preds.append(place.isin(lt.locations.filter(lt.locations.city.isin(list(f.cities))).code))
    if f.segments:
        # an order's customer is its profile's cluster now, as for events
        idm = lt.identity_map
        members = idm.filter(idm.canonical_id.isin(flt.segment_units(lt, f.segments))).profile_id
        preds.append(o.profile_id.isin(members))
    return o.filter(*preds) if preds else o


def click_and_collect(lt: LakeTables, f: flt.Filters) -> dict[str, Any]:
    """Share of online orders (web, app) fulfilled by click & collect, per channel and overall (orders snapshot)."""
    o = _orders(lt, f)
    o = o.filter(o.channel.isin(list(ONLINE_CHANNELS)))
    expr = o.group_by("channel").aggregate(
        orders=o.count(), click_and_collect=(o.fulfilment == "click_and_collect").cast("int64").sum()
    )
    rows = sorted(lt.execute(expr).to_pylist(), key=lambda r: r["channel"])
    out = [
        {
            "channel": r["channel"],
            "orders": int(r["orders"]),
            "click_and_collect": int(r["click_and_collect"] or 0),
            "share": _ratio(int(r["click_and_collect"] or 0), int(r["orders"])),
        }
        for r in rows
    ]
    orders = sum(r["orders"] for r in out)
    cc = sum(r["click_and_collect"] for r in out)
    return {"online_orders": orders, "click_and_collect": cc, "share": _ratio(cc, orders), "rows": out}


def _purchases(lt: LakeTables, f: flt.Filters) -> ibis.Table:
    ev = _known(lt, f)
    return ev.filter(ev.event == PURCHASE)


def multi_vs_single(lt: LakeTables, f: flt.Filters) -> dict[str, Any]:
    """Customers (a purchase in the period) who shopped in 2+ channels vs one: repeat rate, frequency, AOV."""
    ev = _known(lt, f)
    touch = ev.filter(~ev.channel.isin(list(OUTBOUND_CHANNELS + SERVICE_CHANNELS)))
    channels = touch.group_by(c_unit=touch.unit).aggregate(channels=touch.channel.nunique())
    p = ev.filter(ev.event == PURCHASE)
    per_unit = p.group_by("unit").aggregate(orders=p.count())
    j = per_unit.join(channels, per_unit.unit == channels.c_unit)
    j = j.mutate(group=ibis.ifelse(j.channels >= 2, "multi_channel", "single_channel"))
    stats = j.group_by("group").aggregate(
        customers=j.count(), repeat_customers=(j.orders >= 2).cast("int64").sum(), orders=j.orders.sum()
    )
    groups = j.select(g_unit="unit", g_group="group")
    pj = p.join(groups, p.unit == groups.g_unit)
    money = pj.group_by([pj.g_group.name("group"), pj.currency]).aggregate(
        orders=pj.count(), revenue=pj.revenue.coalesce(0.0).sum()
    )
    srows = {r["group"]: r for r in lt.execute(stats).to_pylist()}
    mrows = lt.execute(money).to_pylist()
    out = []
    for g in ("multi_channel", "single_channel"):
        r = srows.get(g, {"customers": 0, "repeat_customers": 0, "orders": 0})
        customers, orders = int(r["customers"]), int(r["orders"] or 0)
        aov = {
            str(m["currency"]): round(float(m["revenue"]) / int(m["orders"]), 2)
            for m in sorted(mrows, key=lambda m: str(m["currency"]))
            if m["group"] == g and m["orders"]
        }
        out.append(
            {
                "group": g,
                "customers": customers,
                "repeat_customers": int(r["repeat_customers"] or 0),
                "repeat_rate": _ratio(int(r["repeat_customers"] or 0), customers),
                "orders": orders,
                "orders_per_customer": round(orders / customers, 4) if customers else 0.0,
                "average_order_value": aov,
            }
        )
    return {"groups": out, "rows": [{**r, "average_order_value": str(r["average_order_value"])} for r in out]}


def revenue_per_channel(lt: LakeTables, f: flt.Filters) -> dict[str, Any]:
    """Orders, revenue and refunds per channel and currency, and the return rate of each purchase channel."""
    ev = _known(lt, f)
    p = ev.filter(ev.event == PURCHASE)
    sales = p.group_by(["channel", "currency"]).aggregate(orders=p.count(), revenue=p.revenue.coalesce(0.0).sum())
    all_ev = lt.events
    returned = all_ev.filter(all_ev.event.isin(list(RETURN_EVENTS)) & all_ev.order_id.notnull())
    returned = returned.select(r_order=returned.order_id).distinct()
    po = p.filter(p.order_id.notnull()).select("channel", "order_id").distinct()
    rj = po.left_join(returned, po.order_id == returned.r_order)
    rates = rj.group_by("channel").aggregate(orders=rj.count(), returned=rj.r_order.notnull().cast("int64").sum())
    refunds = ev.filter(ev.event == "Order Refunded")
    refunds = refunds.group_by(["channel", "currency"]).aggregate(refunded=refunds.revenue.coalesce(0.0).sum())
    sales_rows = lt.execute(sales).to_pylist()
    refund_rows = {(r["channel"], r["currency"]): float(r["refunded"]) for r in lt.execute(refunds).to_pylist()}
    rate_rows = {r["channel"]: r for r in lt.execute(rates).to_pylist()}
    rows = []
    for r in sorted(sales_rows, key=lambda r: (r["channel"], str(r["currency"]))):
        rows.append(
            {
                "channel": r["channel"],
                "currency": r["currency"],
                "orders": int(r["orders"]),
                "revenue": round(float(r["revenue"]), 2),
                "refunded": round(refund_rows.get((r["channel"], r["currency"]), 0.0), 2),
            }
        )
    returns = [
        {
            "channel": ch,
            "orders": int(v["orders"]),
            "returned_orders": int(v["returned"] or 0),
            "return_rate": _ratio(int(v["returned"] or 0), int(v["orders"])),
        }
        for ch, v in sorted(rate_rows.items())
    ]
    total_orders = sum(r["orders"] for r in returns)
    total_returned = sum(r["returned_orders"] for r in returns)
    return {
        "rows": rows,
        "return_rates": returns,
        "return_rate": _ratio(total_returned, total_orders),
    }


# --------------------------------------------------------------------------- service


def contacts_expr(lt: LakeTables, f: flt.Filters) -> ibis.Table:
    """One row per service contact (a chat conversation or a call) with its timings and follow-ups."""
    ev = _known(lt, f)
    starts = ev.filter(ev.event == "Conversation Started")
    starts = starts.select("unit", "channel", cid="conversation_id", start_ms="ts_ms")
    msgs = ev.filter((ev.event == "Message Sent") & (ev.author == "agent"))
    first_reply = msgs.group_by(r_cid=msgs.conversation_id).aggregate(reply_ms=msgs.ts_ms.min())
    res = ev.filter(ev.event == "Conversation Resolved")
    resolved = res.group_by(x_cid=res.conversation_id).aggregate(resolved_ms=res.ts_ms.min())
    chats = starts.left_join(first_reply, starts.cid == first_reply.r_cid)
    chats = chats.left_join(resolved, chats.cid == resolved.x_cid)
    chats = chats.select(
        "unit",
        "channel",
        "cid",
        "start_ms",
        first_response_s=(chats.reply_ms - chats.start_ms).cast("float64") / 1000.0,
        resolution_s=(chats.resolved_ms - chats.start_ms).cast("float64") / 1000.0,
        resolved=chats.resolved_ms.notnull(),
    )
    calls = ev.filter(ev.event == "Call Completed")
    talk = calls.wait_seconds.coalesce(0.0) + calls.duration_seconds.coalesce(0.0)
    calls = calls.select(
        "unit",
        "channel",
        cid=calls.conversation_id,
        start_ms=calls.ts_ms - (talk * 1000.0).cast("int64"),
        first_response_s=calls.wait_seconds,
        resolution_s=calls.duration_seconds,
        resolved=calls.resolved.coalesce(False),
    )
    contacts = chats.union(calls)
    later = contacts.select(l_unit="unit", l_channel="channel", l_start="start_ms", l_cid="cid")
    j = contacts.join(
        later,
        [
            contacts.unit == later.l_unit,
            later.l_start > contacts.start_ms,
            later.l_start <= contacts.start_ms + FCR_WINDOW_MS,
        ],
    )
    follow = j.group_by(f_unit=j.unit, f_cid=j.cid).aggregate(
        again_7d=j.count(),
        other_channel_48h=((j.l_channel != j.channel) & (j.l_start <= j.start_ms + LOST_CONTEXT_WINDOW_MS))
        .cast("int64")
        .sum(),
    )
    out = contacts.left_join(follow, [contacts.unit == follow.f_unit, contacts.cid == follow.f_cid])
    return out.select(
        "channel",
        "cid",
        "first_response_s",
        "resolution_s",
        "resolved",
        contacted_again=out.again_7d.coalesce(0) > 0,
        lost_context=out.other_channel_48h.coalesce(0) > 0,
    )


def _med(values: list[float | None]) -> float | None:
    arr = np.array([v for v in values if v is not None], dtype=np.float64)
    return None if arr.size == 0 else round(float(np.median(arr)), 3)


def service_kpis(lt: LakeTables, f: flt.Filters) -> dict[str, Any]:
    """Per channel: first response and resolution (median s), first-contact resolution, lost context, CSAT, NPS."""
    contacts = lt.execute(contacts_expr(lt, f)).to_pylist()
    ev = _known(lt, f)
    s = ev.filter((ev.event == "Survey Responded") & ev.score.notnull())
    surveys = lt.execute(s.group_by(["channel", "survey_type", "score"]).aggregate(n=s.count())).to_pylist()
    channels = sorted({c["channel"] for c in contacts} | {r["channel"] for r in surveys})
    rows = []
    for ch in channels:
        cs = [c for c in contacts if c["channel"] == ch]
        n = len(cs)
        fcr = sum(1 for c in cs if c["resolved"] and not c["contacted_again"])
        lost = sum(1 for c in cs if c["lost_context"])
        csat = [(int(r["score"]), int(r["n"])) for r in surveys if r["channel"] == ch and r["survey_type"] == "csat"]
        nps = [(int(r["score"]), int(r["n"])) for r in surveys if r["channel"] == ch and r["survey_type"] == "nps"]
        csat_n = sum(k for _, k in csat)
        nps_n = sum(k for _, k in nps)
        promoters = sum(k for sc, k in nps if sc >= 9)
        detractors = sum(k for sc, k in nps if sc <= 6)
        rows.append(
            {
                "channel": ch,
                "contacts": n,
                "median_first_response_seconds": _med([c["first_response_s"] for c in cs]),
                "median_resolution_seconds": _med([c["resolution_s"] for c in cs if c["resolved"]]),
                "resolved": sum(1 for c in cs if c["resolved"]),
                "first_contact_resolution": _ratio(fcr, n),
                "lost_context_rate": _ratio(lost, n),
                "csat_responses": csat_n,
                "csat_average": round(sum(sc * k for sc, k in csat) / csat_n, 4) if csat_n else None,
                "csat_satisfied_share": _ratio(sum(k for sc, k in csat if sc >= 4), csat_n),
                "nps_responses": nps_n,
                "nps": round(100.0 * (promoters - detractors) / nps_n, 2) if nps_n else None,
            }
        )
    total = len(contacts)
    return {
        "contacts": total,
        "lost_context_rate": _ratio(sum(1 for c in contacts if c["lost_context"]), total),
        "first_contact_resolution": _ratio(
            sum(1 for c in contacts if c["resolved"] and not c["contacted_again"]), total
        ),
        "rows": rows,
    }
