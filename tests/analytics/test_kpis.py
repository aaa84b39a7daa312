"""Stage funnel and omnichannel / service KPIs over one hand-built lake: hand-computed numbers, both engines equal."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from omnijourney.analytics import filters as flt
from omnijourney.analytics import service
from tests.analytics.lakefix import T0, at, ev, write_lake

AS_OF = int(at(days=120).timestamp() * 1000)
KPI_NAMES = ("stages", "cross-channel", "click-and-collect", "multi-channel", "revenue", "service")


def build(data_dir: Path) -> None:
    d = 24 * 60  # minutes per day
    events = [
        # customer 1: web page -> product view -> order in the app -> repeat order in the store -> review
        ev(1, 1, None, at(0), type="page", channel="web", device_type="desktop"),
        ev(2, 1, "Product Viewed", at(1), channel="web", device_type="desktop"),
        ev(3, 1, "Order Completed", at(10), channel="app", order_id="O1", revenue=100.0, currency="CZK"),
        ev(
            4,
            1,
            "Order Completed",
            at(2 * d),
            channel="store",
            order_id="O2",
            revenue=50.0,
            currency="CZK",
            store_id="PRG-1",
        ),
        ev(5, 1, "Product Reviewed", at(3 * d), channel="web"),
        # customer 2: store visit -> order in the store -> returned
        ev(6, 2, "Store Visited", at(0), channel="store", store_id="BRN-1"),
        ev(
            7,
            2,
            "Order Completed",
            at(30),
            channel="store",
            order_id="O3",
            revenue=200.0,
            currency="CZK",
            store_id="BRN-1",
        ),
        ev(8, 2, "Return Received", at(4 * d), channel="store", order_id="O3", store_id="PRG-1"),
        # customer 3: campaign e-mail -> web page -> product view -> web order (starts in e-mail, buys on the web)
        ev(9, 3, "Email Opened", at(0), channel="email"),
        ev(10, 3, None, at(2), type="page", channel="web", device_type="mobile", utm_campaign="spring"),
        ev(11, 3, "Product Viewed", at(3), channel="web", device_type="mobile"),
        ev(12, 3, "Order Completed", at(20), channel="web", order_id="O4", revenue=300.0, currency="CZK"),
        # customer 4: one page view
        ev(13, 4, None, at(0), type="page", channel="web"),
        # service: customer 1 chats, then calls the next day about the same thing (lost context)
        ev(20, 1, "Conversation Started", at(d + 0), channel="chat", conversation_id="c1"),
        ev(21, 1, "Message Sent", at(d + 0.5), channel="chat", conversation_id="c1", author="customer"),
        ev(22, 1, "Message Sent", at(d + 1), channel="chat", conversation_id="c1", author="agent"),
        ev(23, 1, "Conversation Resolved", at(d + 10), channel="chat", conversation_id="c1", resolved=True),
        ev(24, 1, "Survey Responded", at(d + 11), channel="chat", survey_type="csat", score=5),
        ev(
            25,
            1,
            "Call Completed",
            at(2 * d - 60),
            channel="call_center",
            conversation_id="k1",
            wait_seconds=30.0,
            duration_seconds=300.0,
            resolved=True,
        ),
        ev(26, 1, "Survey Responded", at(2 * d - 55), channel="call_center", survey_type="nps", score=10),
        # customer 2 chats; the agent answers in 2 minutes; never resolved
        ev(27, 2, "Conversation Started", at(d + 100), channel="chat", conversation_id="c2"),
        ev(28, 2, "Message Sent", at(d + 102), channel="chat", conversation_id="c2", author="agent"),
        ev(29, 2, "Survey Responded", at(d + 130), channel="chat", survey_type="csat", score=2),
        # customer 3 calls, unresolved, and is a detractor
        ev(
            30,
            3,
            "Call Completed",
            at(5 * d),
            channel="call_center",
            conversation_id="k2",
            wait_seconds=10.0,
            duration_seconds=100.0,
            resolved=False,
        ),
        ev(31, 3, "Survey Responded", at(5 * d + 5), channel="call_center", survey_type="nps", score=3),
    ]

    def order(i: int, ref: str, channel: str, fulfilment: str, total: int) -> dict[str, Any]:
        return {
            "id": i,
            "order_ref": ref,
            "channel": channel,
            "store_id": None,
            "fulfilment": fulfilment,
            "pickup_location": "PRG-1" if fulfilment == "click_and_collect" else None,
            "status": "placed",
            "currency": "CZK",
            "profile_id": 1,
            "total_minor": total,
            "refunded_minor": 0,
            "placed_at": T0,
            "placed_ms": int(T0.timestamp() * 1000),
        }

    orders = [
        order(1, "O1", "app", "ship", 10000),
        order(2, "O4", "web", "click_and_collect", 30000),
        order(3, "O5", "web", "ship", 5000),
        order(4, "O3", "store", "external", 20000),
    ]
    locations = [
        {"code": "PRG-1", "name": "Praha", "kind": "store", "city": "Praha", "country": "CZ"},
        {"code": "BRN-1", "name": "Brno", "kind": "store", "city": "Brno", "country": "CZ"},
    ]
    write_lake(data_dir, events, orders=orders, locations=locations)


@pytest.fixture(scope="module")
def lake_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("kpi-lake")
    build(d)
    return d


def run_all(lake_dir: Path, engine: str, spark: Any = None, f: flt.Filters | None = None) -> dict[str, Any]:
    return {
        name: service.run(
            data_dir=lake_dir, analysis=name, filters=f or flt.Filters(), engine=engine, as_of_ms=AS_OF, spark=spark
        )
        for name in KPI_NAMES
    }


@pytest.fixture(scope="module")
def duck(lake_dir: Path) -> dict[str, Any]:
    return run_all(lake_dir, "duckdb")


def test_stage_funnel(duck: dict[str, Any]) -> None:
    r = duck["stages"]
    assert r["stages"] == ["awareness", "consideration", "purchase", "retention", "advocacy"]
    assert [s["count"] for s in r["steps"]] == [4, 2, 2, 1, 1]
    assert r["steps"][2]["conversion_from_previous"] == 1.0 and r["conversion_rate"] == 0.25


def test_cross_channel_matrix(duck: dict[str, Any]) -> None:
    r = duck["cross-channel"]
    assert r["customers"] == 3 and r["cross_channel_customers"] == 2
    assert r["start_channels"] == ["email", "store", "web"] and r["purchase_channels"] == ["app", "store", "web"]
    assert r["matrix"] == [[0, 0, 1], [0, 1, 0], [1, 0, 0]]


def test_click_and_collect_share(duck: dict[str, Any]) -> None:
    r = duck["click-and-collect"]
    assert (r["online_orders"], r["click_and_collect"], r["share"]) == (3, 1, round(1 / 3, 6))
    assert [(x["channel"], x["orders"], x["click_and_collect"]) for x in r["rows"]] == [("app", 1, 0), ("web", 2, 1)]


def test_multi_vs_single_channel(duck: dict[str, Any]) -> None:
    multi, single = duck["multi-channel"]["groups"]
    assert multi == {
        "group": "multi_channel",
        "customers": 1,
        "repeat_customers": 1,
        "repeat_rate": 1.0,
        "orders": 2,
        "orders_per_customer": 2.0,
        "average_order_value": {"CZK": 75.0},
    }
    # customer 3's e-mail is outbound: a web-only customer
    assert single == {
        "group": "single_channel",
        "customers": 2,
        "repeat_customers": 0,
        "repeat_rate": 0.0,
        "orders": 2,
        "orders_per_customer": 1.0,
        "average_order_value": {"CZK": 250.0},
    }


def test_revenue_and_returns(duck: dict[str, Any]) -> None:
    r = duck["revenue"]
    assert [(x["channel"], x["orders"], x["revenue"]) for x in r["rows"]] == [
        ("app", 1, 100.0),
        ("store", 2, 250.0),
        ("web", 1, 300.0),
    ]
    assert {x["channel"]: x["return_rate"] for x in r["return_rates"]} == {"app": 0.0, "store": 0.5, "web": 0.0}
    assert r["return_rate"] == 0.25


def test_service_kpis(duck: dict[str, Any]) -> None:
    r = duck["service"]
    assert r["contacts"] == 4 and r["lost_context_rate"] == 0.25 and r["first_contact_resolution"] == 0.25
    chat, call = sorted(r["rows"], key=lambda x: x["channel"])[1], sorted(r["rows"], key=lambda x: x["channel"])[0]
    assert chat["channel"] == "chat" and call["channel"] == "call_center"
    assert (chat["contacts"], chat["median_first_response_seconds"], chat["median_resolution_seconds"]) == (
        2,
        90.0,
        600.0,
    )
    assert (chat["first_contact_resolution"], chat["lost_context_rate"]) == (0.0, 0.5)
    assert (chat["csat_responses"], chat["csat_average"], chat["csat_satisfied_share"]) == (2, 3.5, 0.5)
    assert (call["contacts"], call["median_first_response_seconds"], call["median_resolution_seconds"]) == (
        2,
        20.0,
        300.0,
    )
    assert (call["first_contact_resolution"], call["lost_context_rate"], call["nps"]) == (0.5, 0.0, 0.0)


def test_filters_restrict_every_analysis(lake_dir: Path) -> None:
    web_mobile = run_all(lake_dir, "duckdb", f=flt.Filters(device_types=("mobile",)))
    assert [s["count"] for s in web_mobile["stages"]["steps"]] == [1, 1, 0, 0, 0]
    prague = run_all(lake_dir, "duckdb", f=flt.Filters(cities=("Praha",)))
    assert [(x["channel"], x["orders"]) for x in prague["revenue"]["rows"]] == [("store", 1)]
    assert prague["click-and-collect"]["online_orders"] == 1
    first_day = run_all(lake_dir, "duckdb", f=flt.Filters(end_ms=int(at(days=1).timestamp() * 1000)))
    assert first_day["cross-channel"]["customers"] == 3 and first_day["service"]["contacts"] == 0
    assert [(x["channel"], x["orders"]) for x in first_day["revenue"]["rows"]] == [("app", 1), ("store", 1), ("web", 1)]
    chat = run_all(lake_dir, "duckdb", f=flt.Filters(channels=("chat",)))
    assert chat["service"]["contacts"] == 2 and chat["service"]["lost_context_rate"] == 0.0
    campaign = run_all(lake_dir, "duckdb", f=flt.Filters(utm_campaigns=("spring",)))
    assert campaign["stages"]["steps"][0]["count"] == 1


@pytest.mark.spark
def test_spark_gives_identical_results(lake_dir: Path, duck: dict[str, Any], spark: Any) -> None:
    on_spark = run_all(lake_dir, "spark", spark)
    for name in KPI_NAMES:
        a = {k: v for k, v in duck[name].items() if k != "engine"}
        b = {k: v for k, v in on_spark[name].items() if k != "engine"}
        assert a == b, name
