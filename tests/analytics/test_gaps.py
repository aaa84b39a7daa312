"""Journey gap report and stage KPIs over one hand-built lake: hand-computed numbers, both engines equal."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from omnijourney.analytics import filters as flt
from omnijourney.analytics import service
from tests.analytics.lakefix import T0, at, ev, write_lake

AS_OF = int(at(days=120).timestamp() * 1000)
NAMES = ("gaps", "stage-kpis")


def build(data_dir: Path) -> None:
    """Customers 1-10 start on the web, 11-15 in the app; all view and add to cart; 1-6 and 11 buy.
    Web abandoners (7-10) were refused a coupon; 11-15 are the `app_fans` segment; 1 buys again and reviews."""
    rows: list[dict[str, Any]] = []

    def add(profile: int, event: str | None, minutes: float, **kw: Any) -> None:
        rows.append(ev(len(rows) + 1, profile, event, at(minutes), **kw))

    for i in range(1, 16):
        web = i <= 10
        ch = "web" if web else "app"
        add(i, None, i, type="page" if web else "screen", channel=ch, utm_campaign="spring" if i in (2, 3) else None)
        if i in (2, 3):
            add(
                i,
                "Ad Clicked",
                i + 0.2,
                channel="ads",
                utm_campaign="spring",
                properties='{"cost":2.5,"currency":"CZK"}',
            )
        if 4 <= i <= 7:
            add(i, "Email Delivered", i + 0.3, channel="email")
        if i == 4:
            add(i, "Email Link Clicked", i + 0.4, channel="email")
        add(i, "Product Viewed", i + 1, channel=ch)
        add(i, "Product Added", i + 2, channel=ch)
        if i <= 6 or i == 11:
            add(
                i,
                "Order Completed",
                i + 3,
                channel=ch,
                revenue=100.0 if web else 50.0,
                currency="CZK",
                order_id=f"O{i}",
            )
        elif web:
            add(i, "Coupon Denied", i + 3, channel=ch)
    add(1, "Order Completed", 2 * 24 * 60, channel="web", revenue=100.0, currency="CZK", order_id="O1b")
    add(1, "Product Reviewed", 3 * 24 * 60, channel="web")
    add(2, "Survey Responded", 3 * 24 * 60, channel="email", survey_type="nps", score=10)
    members = [
        {"segment_key": "app_fans", "segment_name": "App fans", "profile_id": p, "entered_at": T0}
        for p in range(11, 16)
    ]
    conversations = [
        {
            "id": k,
            "channel": "chat",
            "profile_id": p,
            "status": "resolved",
            "started_at": at(100 + k),
            "started_ms": int(at(100 + k).timestamp() * 1000),
            "contact_number": 2 if lost else 1,
            "lost_context": lost,
        }
        for k, (p, lost) in enumerate([(7, True), (8, True), (9, False)], 1)
    ]
    write_lake(data_dir, rows, segment_members=members, conversations=conversations)


@pytest.fixture(scope="module")
def lake_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("gaps-lake")
    build(d)
    return d


def run_all(lake_dir: Path, engine: str = "duckdb", spark: Any = None, f: flt.Filters | None = None) -> dict[str, Any]:
    return {
        name: service.run(
            data_dir=lake_dir, analysis=name, filters=f or flt.Filters(), engine=engine, as_of_ms=AS_OF, spark=spark
        )
        for name in NAMES
    }


@pytest.fixture(scope="module")
def duck(lake_dir: Path) -> dict[str, Any]:
    return run_all(lake_dir)


def test_gap_report_ranks_findings(duck: dict[str, Any]) -> None:
    r = duck["gaps"]
    got = [(x["rank"], x["kind"], x["score"]) for x in r["findings"]]
    assert got == [
        (1, "stage_drop", 8.0),
        (2, "stage_drop", 6.0),
        (3, "friction", 4.0),
        (4, "lost_context", 2.0),
        (5, "channel_gap", 1.333),
        (6, "segment_gap", 1.333),
    ]
    f = r["findings"]
    assert f[0]["text"] == "8 of 15 customers who reached consideration (53%) stopped there and never reached purchase."
    assert (f[1]["stage"], f[1]["base"], f[1]["lost"]) == ("purchase", 7, 6)
    assert f[2]["text"] == (
        "'Coupon Denied' came in the 24 hours before 50% of abandoned carts (4 of 8) but before only 0% of "
        "purchases (0 of 7)."
    )
    assert (f[3]["channel"], f[3]["base"], f[3]["lost"]) == ("chat", 3, 2)
    assert (f[4]["channel"], f[4]["converted"], f[4]["base"], f[4]["overall_rate"]) == ("app", 1, 5, round(7 / 15, 6))
    assert f[5]["segment"] == "App fans" and f[5]["text"].startswith("Segment App fans: 20% go on from consideration")
    assert r["segments_compared"] == ["app_fans"]
    assert [s["customers"] for s in r["stage_counts"]] == [15, 15, 7, 1, 1]
    assert r["rows"][0]["text"] == f[0]["text"]


def test_gap_report_follows_filters(lake_dir: Path) -> None:
    fans = service.run(data_dir=lake_dir, analysis="gaps", filters=flt.Filters(segments=("app_fans",)), as_of_ms=AS_OF)
    assert [s["customers"] for s in fans["stage_counts"]] == [5, 5, 1, 0, 0]
    # the chats were not app fans'; a segment is not compared with itself
    assert fans["segments_compared"] == [] and [x["kind"] for x in fans["findings"]] == ["stage_drop"]


def test_stage_kpis(lake_dir: Path, duck: dict[str, Any]) -> None:
    s = duck["stage-kpis"]["stages"]
    aw = s["awareness"]
    assert (aw["reach"], aw["impressions"], aw["clicks"], aw["ctr"]) == (15, 4, 3, 0.75)
    assert aw["costs_imported"] is True
    assert aw["campaigns"] == [
        {"campaign": "spring", "currency": "CZK", "spend": 5.0, "paid_clicks": 2, "visits": 2, "cost_per_visit": 2.5}
    ]
    assert s["consideration"] == {
        # customer 1's repeat order and review are two more (zero-length) visits on later days
        "visits": 17,
        "average_time_on_site_seconds": round(41 * 60 / 17, 3),
        "customers_with_cart": 15,
        "abandoned_carts": 8,
        "cart_abandonment_rate": round(8 / 15, 6),
    }
    assert s["purchase"] == {
        "customers": 15,
        "buyers": 7,
        "conversion_rate": round(7 / 15, 6),
        "orders": 8,
        "average_order_value": {"CZK": 93.75},
    }
    assert s["retention"] == {"repeat_customers": 1, "repeat_rate": round(1 / 7, 6), "purchase_frequency": 1.1429}
    assert s["advocacy"] == {"reviews": 1, "referrals": 0, "shares": 0, "nps_promoters": 1, "advocates": 1}
    fans = service.run(data_dir=lake_dir, analysis="stage-kpis", filters=flt.Filters(segments=("app_fans",)))
    assert fans["stages"]["purchase"]["buyers"] == 1 and fans["stages"]["awareness"]["costs_imported"] is False


@pytest.mark.spark
def test_spark_gives_identical_results(lake_dir: Path, duck: dict[str, Any], spark: Any) -> None:
    on_spark = run_all(lake_dir, "spark", spark)
    for name in NAMES:
        a = {k: v for k, v in duck[name].items() if k != "engine"}
        b = {k: v for k, v in on_spark[name].items() if k != "engine"}
        assert a == b, name
