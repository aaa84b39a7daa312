"""Stage KPIs from the product seeds, one Ibis definition each (docs/ANALYTICS.md, "Stage KPIs").

awareness (reach, CTR, ad spend and cost per visit when the ad platform's clicks carry a `cost`),
consideration (time on site, abandoned carts), purchase (conversion, AOV), retention (repeat rate,
frequency), advocacy (reviews, referrals, shares, NPS promoters).
"""

from __future__ import annotations

from typing import Any

import ibis

from omnijourney.analytics import filters as flt
from omnijourney.analytics.config import StageConfig
from omnijourney.analytics.engine import LakeTables
from omnijourney.analytics.funnels import Step

PURCHASE = "Order Completed"
CART_EVENTS = ("Product Added",)
#: exposures and clicks of outbound marketing (CTR = clicks / impressions)
IMPRESSIONS = ("Ad Viewed", "Promotion Viewed", "Email Delivered", "Push Delivered", "SMS Delivered")
CLICKS = ("Ad Clicked", "Promotion Clicked", "Email Link Clicked", "Push Clicked", "SMS Link Clicked")
#: the ad platform's cost of a click, in `properties` as exported (orjson: no spaces)
COST_RE = r'"cost":(-?[0-9]+(?:\.[0-9]+)?)'
CURRENCY_RE = r'"currency":"([A-Za-z]{3})"'
SITE_CHANNELS = ("web", "app")
ADVOCACY = {"reviews": "Product Reviewed", "referrals": "Referral Completed", "shares": "Product Shared"}


def _ratio(a: float, b: float) -> float:
    return round(a / b, 6) if b else 0.0


def _matches(ev: ibis.Table, step: Step) -> ibis.BooleanValue:
    """An event matches a stage step (the same rules as funnels, without `where` conditions on alternatives)."""
    preds = []
    if step.events:
        preds.append(ev.event.isin(list(step.events)))
    if step.types:
        preds.append(ev.type.isin(list(step.types)))
    for alt in step.any_of:
        preds.append(_matches(ev, alt))
    out = preds[0]
    for p in preds[1:]:
        out = out | p
    return out


def stage_kpis(lt: LakeTables, cfg: StageConfig, f: flt.Filters) -> dict[str, Any]:
    ev = flt.apply(lt, lt.events, f)
    known = ev.filter(ev.unit.notnull())
    awareness_step = cfg.stages[0]

    # one pass for the counts
    counts = known.aggregate(
        customers=known.unit.nunique(),
        reached=known.unit.nunique(where=_matches(known, awareness_step)),
        buyers=known.unit.nunique(where=known.event == PURCHASE),
        carts=known.unit.nunique(where=known.event.isin(list(CART_EVENTS))),
        reviews=(known.event == ADVOCACY["reviews"]).cast("int64").sum(),
        referrals=(known.event == ADVOCACY["referrals"]).cast("int64").sum(),
        shares=(known.event == ADVOCACY["shares"]).cast("int64").sum(),
        promoters=((known.event == "Survey Responded") & (known.survey_type == "nps") & (known.score >= 9))
        .cast("int64")
        .sum(),
        advocates=known.unit.nunique(where=known.event.isin(list(ADVOCACY.values()))),
    )
    c = lt.execute(counts).to_pylist()[0]

    # CTR and ad spend (all events: ad clicks are often anonymous)
    mk = ev.filter(ev.event.isin(list(IMPRESSIONS + CLICKS)))
    mk = mk.mutate(
        click=mk.event.isin(list(CLICKS)).cast("int64"),
        cost=mk.properties.re_extract(COST_RE, 1).nullif("").cast("float64"),
        cost_currency=mk.properties.re_extract(CURRENCY_RE, 1).nullif(""),
    )
    mkt = mk.group_by(channel=mk.channel).aggregate(impressions=(1 - mk.click).sum(), clicks=mk.click.sum())
    # visits: a customer-day with a page or screen, per campaign (UTM name) that brought it
    pages = ev.filter(ev.type.isin(["page", "screen"]) & ev.utm_campaign.notnull())
    pages = pages.mutate(visitor=pages.unit.cast("string").coalesce(pages.anonymous_id))
    visits = pages.select("utm_campaign", "visitor", day=(pages.ts_ms / 86_400_000).floor()).distinct()
    visits = visits.group_by("utm_campaign").aggregate(visits=visits.count())

    # time on site: a visit is a customer-day on the web or in the app; its length from the first to the last event
    site = known.filter(known.channel.isin(list(SITE_CHANNELS)))
    site = site.mutate(day=(site.ts_ms / 86_400_000).floor())
    sessions = site.group_by(["unit", "channel", "day"]).aggregate(length=site.ts_ms.max() - site.ts_ms.min())
    tos = sessions.aggregate(visits=sessions.count(), total_ms=sessions.length.sum())

    # abandoned carts: added to cart, no purchase at or after the last add in the period
    adds = known.filter(known.event.isin(list(CART_EVENTS)))
    last_add = adds.group_by(a_unit=adds.unit).aggregate(last_add=adds.ts_ms.max())
    buys = known.filter(known.event == PURCHASE)
    last_buy = buys.group_by(b_unit=buys.unit).aggregate(last_buy=buys.ts_ms.max())
    ab = last_add.left_join(last_buy, last_add.a_unit == last_buy.b_unit)
    abandoned = ab.aggregate(abandoned=(ab.last_buy.isnull() | (ab.last_buy < ab.last_add)).cast("int64").sum())

    # purchase and retention
    per = buys.group_by("unit").aggregate(orders=buys.count())
    ret = per.aggregate(buyers=per.count(), repeat=(per.orders >= 2).cast("int64").sum(), orders=per.orders.sum())
    aov = buys.group_by("currency").aggregate(orders=buys.count(), revenue=buys.revenue.coalesce(0.0).sum())

    mrows = sorted(lt.execute(mkt).to_pylist(), key=lambda r: str(r["channel"]))
    spend = _spend(lt, mk)
    vrows = {r["utm_campaign"]: int(r["visits"]) for r in lt.execute(visits).to_pylist()}
    t = a = r = lt.execute(tos.cross_join(abandoned).cross_join(ret)).to_pylist()[0]
    arows = sorted(lt.execute(aov).to_pylist(), key=lambda x: str(x["currency"]))

    impressions = sum(int(x["impressions"] or 0) for x in mrows)
    clicks = sum(int(x["clicks"] or 0) for x in mrows)
    campaigns = []
    for s in sorted(spend, key=lambda x: (str(x["campaign"]), str(x["currency"]))):
        v = vrows.get(s["campaign"], 0)
        campaigns.append(
            {
                "campaign": s["campaign"],
                "currency": s["currency"],
                "spend": round(float(s["spend"]), 2),
                "paid_clicks": int(s["paid_clicks"]),
                "visits": v,
                "cost_per_visit": round(float(s["spend"]) / v, 4) if v else None,
            }
        )
    buyers, orders = int(r["buyers"] or 0), int(r["orders"] or 0)
    carts = int(c["carts"] or 0)
    visits_n = int(t["visits"] or 0)
    stages = {
        "awareness": {
            "reach": int(c["reached"] or 0),
            "impressions": impressions,
            "clicks": clicks,
            "ctr": _ratio(clicks, impressions),
            "ctr_by_channel": [
                {
                    "channel": x["channel"],
                    "impressions": int(x["impressions"] or 0),
                    "clicks": int(x["clicks"] or 0),
                    "ctr": _ratio(int(x["clicks"] or 0), int(x["impressions"] or 0)),
                }
                for x in mrows
            ],
            "costs_imported": bool(campaigns),
            "campaigns": campaigns,
        },
        "consideration": {
            "visits": visits_n,
            "average_time_on_site_seconds": round(int(t["total_ms"] or 0) / visits_n / 1000, 3) if visits_n else None,
            "customers_with_cart": carts,
            "abandoned_carts": int(a["abandoned"] or 0),
            "cart_abandonment_rate": _ratio(int(a["abandoned"] or 0), carts),
        },
        "purchase": {
            "customers": int(c["customers"] or 0),
            "buyers": buyers,
            "conversion_rate": _ratio(buyers, int(c["customers"] or 0)),
            "orders": orders,
            "average_order_value": {
                str(x["currency"]): round(float(x["revenue"]) / int(x["orders"]), 2) for x in arows if x["orders"]
            },
        },
        "retention": {
            "repeat_customers": int(r["repeat"] or 0),
            "repeat_rate": _ratio(int(r["repeat"] or 0), buyers),
            "purchase_frequency": round(orders / buyers, 4) if buyers else 0.0,
        },
        "advocacy": {
            "reviews": int(c["reviews"] or 0),
            "referrals": int(c["referrals"] or 0),
            "shares": int(c["shares"] or 0),
            "nps_promoters": int(c["promoters"] or 0),
            "advocates": int(c["advocates"] or 0),
        },
    }
    rows = []
    for stage, kpis in stages.items():
        for name, value in kpis.items():
            if isinstance(value, int | float) or value is None:
                rows.append({"stage": stage, "kpi": name, "value": value})
    for camp in campaigns:
        rows.append(
            {"stage": "awareness", "kpi": f"cost_per_visit[{camp['campaign']}]", "value": camp["cost_per_visit"]}
        )
    return {"stages": stages, "rows": rows}


def _spend(lt: LakeTables, mk: ibis.Table) -> list[dict[str, Any]]:
    paid = mk.filter(mk.cost.notnull())
    paid = paid.mutate(campaign=paid.utm_campaign.coalesce("(none)"), currency=paid.cost_currency.coalesce("(none)"))
    q = paid.group_by(["campaign", "currency"]).aggregate(spend=paid.cost.sum(), paid_clicks=paid.count())
    return lt.execute(q).to_pylist()
