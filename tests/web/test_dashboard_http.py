"""The journey dashboard over HTTP (SQLite and PostgreSQL, live server): roles, the session-authenticated data
routes give exactly the analytics service's numbers on a small lake built from events ingested through
/v1/batch, CSV export, bad input, plotly.js from the Python package, and the CSRF-protected lake refresh."""

from __future__ import annotations

import csv
import fcntl
import io
import re
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from omnijourney.access import service as access
from omnijourney.analytics import filters as flt
from omnijourney.analytics import lake, service
from omnijourney.analytics.attribution import AttributionSpec
from omnijourney.analytics.funnels import FunnelSpec, Step
from omnijourney.store import db
from omnijourney.web import dashboard
from tests.commerce.helpers import bearer
from tests.conftest import LiveServer, World, wait_for
from tests.web.helpers import USERS, create_users, csrf_of, login, processed

pytestmark = pytest.mark.server

NOW = datetime.now(UTC).replace(microsecond=0)
DAY0 = NOW - timedelta(days=10)


def at(days: float = 0, hours: float = 0, minutes: float = 0) -> str:
    return (DAY0 + timedelta(days=days, hours=hours, minutes=minutes)).isoformat().replace("+00:00", "Z")


def web(
    user: str, event: str | None, when: str, *, device: str = "mobile", utm: tuple[str, str] | None = None, **props: Any
) -> dict:
    ctx: dict[str, Any] = {"device": {"type": device}}
    if utm:
        ctx["campaign"] = {"source": utm[0], "name": utm[1]}
    if event is None:
        return {"type": "page", "userId": user, "name": "Home", "timestamp": when, "context": ctx, "properties": props}
    return {"type": "track", "userId": user, "event": event, "timestamp": when, "context": ctx, "properties": props}


def track(user: str, event: str, when: str, **props: Any) -> dict:
    return {"type": "track", "userId": user, "event": event, "timestamp": when, "properties": props}


LOCATIONS = [
    {"code": "store-praha-1", "name": "Praha Centrum", "kind": "store", "pickup": True, "address": {"city": "Praha"}},
    {"code": "store-brno-1", "name": "Brno Náměstí", "kind": "store", "pickup": True, "address": {"city": "Brno"}},
]


@pytest.fixture
def shop(live_server: LiveServer, client: httpx.Client, world: World, engine: sa.Engine) -> dict[str, str]:
    """Six customers across web, store, chat and the call centre, ingested and processed (not yet exported)."""
    create_users(engine)
    r = client.put("/api/commerce/locations", json={"locations": LOCATIONS}, headers=bearer(world.admin_token))
    assert r.status_code == 200, r.text
    with db.write(engine) as conn:
        chat = access.create_source(conn=conn, name="chat", channel="chat", trusted=True).write_key
        call = access.create_source(conn=conn, name="calls", channel="call_center", trusted=True).write_key
    web_events = [
        web("c0", None, at(0), utm=("instagram", "spring")),
        web("c0", "Product Viewed", at(0, minutes=5), utm=("instagram", "spring"), sku="SHOE-42"),
        web("c0", "Order Completed", at(2), order_id="W-0", revenue=50.0, currency="CZK"),
        web("c0", "Product Reviewed", at(3), sku="SHOE-42", rating=5),
        web("c1", None, at(1), device="desktop", utm=("google", "brand")),
        web("c1", "Product Viewed", at(1, minutes=3), device="desktop", sku="SOCK-1"),
        web("c1", "Checkout Started", at(1, minutes=9), device="desktop"),
        web(
            "c1", "Order Completed", at(1, minutes=12), device="desktop", order_id="W-1", revenue=200.0, currency="CZK"
        ),
        web("c3", None, at(2), utm=("instagram", "spring")),
        web("c3", "Product Viewed", at(2, minutes=1), sku="SHOE-42"),
        web("c5", None, at(4), device="tablet"),
    ]
    store_events = [
        track("c0", "Order Completed", at(1), order_id="S-0", revenue=100.0, currency="CZK", store_id="store-praha-1"),
        track("c1", "Order Refunded", at(3), order_id="W-1", revenue=200.0, currency="CZK", store_id="store-praha-1"),
        track("c2", "Store Visited", at(2), store_id="store-brno-1"),
        track(
            "c2",
            "Order Completed",
            at(2, hours=1),
            order_id="S-2",
            revenue=80.0,
            currency="CZK",
            store_id="store-brno-1",
        ),
    ]
    chat_events = [
        track("c4", "Conversation Started", at(5), conversation_id="cv-1"),
        track("c4", "Message Sent", at(5, minutes=2), conversation_id="cv-1", author="agent"),
        track("c4", "Conversation Resolved", at(5, minutes=20), conversation_id="cv-1"),
        track("c4", "Survey Responded", at(5, minutes=21), conversation_id="cv-1", survey_type="csat", score=5),
    ]
    call_events = [
        track("c4", "Call Completed", at(6), call_id="call-1", wait_seconds=30, duration_seconds=240, resolved=True),
        track("c4", "Survey Responded", at(6, minutes=1), survey_type="nps", score=9),
    ]
    for key, batch in (
        (world.web_key, web_events),
        (world.pos_key, store_events),
        (chat, chat_events),
        (call, call_events),
    ):
        r = client.post("/v1/batch", auth=(key, ""), json={"batch": batch})
        assert r.status_code == 200, r.text
    assert wait_for(lambda: processed(client, world), timeout=30)
    return {"chat": chat, "call": call}


@pytest.fixture
def session_for(live_server: LiveServer) -> Iterator:
    opened: list[httpx.Client] = []

    def make(role: str | None) -> httpx.Client:
        c = httpx.Client(base_url=live_server.url, timeout=60)
        opened.append(c)
        if role is not None:
            assert login(c, USERS[role]).status_code == 303
        return c

    yield make
    for c in opened:
        c.close()


def exported(engine: sa.Engine) -> int:
    with db.read(engine) as conn:
        return lake.export_checkpoint(conn=conn)


DATA = ["stages", "cross-channel", "click-and-collect", "multi-channel", "revenue", "service"]
FUNNEL = {"step": ["Product Viewed", "Order Completed"], "window": "3d"}
#: attribution, gap report, stage KPIs
MORE = ["attribution", "gaps", "stage-kpis"]


def test_roles_on_the_page_data_routes_and_refresh(shop: dict, session_for, engine: sa.Engine) -> None:
    anonymous = session_for(None)
    r = anonymous.get("/console/dashboard")
    assert r.status_code == 303 and r.headers["location"].startswith("/console/login?next=%2Fconsole%2Fdashboard")
    assert anonymous.get("/console/dashboard/data/stages").status_code == 303
    assert anonymous.post("/console/dashboard/refresh", data={"csrf_token": "x"}).status_code == 401
    for role in ("agent", "store_staff"):
        c = session_for(role)
        assert "/console/dashboard" not in c.get("/console/search").text  # the nav link is hidden
        token = csrf_of(c.get("/console/search").text)
        assert c.get("/console/dashboard").status_code == 403, role
        for name in [*DATA, *MORE, "lake"]:
            assert c.get(f"/console/dashboard/data/{name}").status_code == 403, (role, name)
        assert c.get("/console/dashboard/data/funnel", params=FUNNEL).status_code == 403
        assert c.get("/console/dashboard/data/revenue", params={"format": "csv"}).status_code == 403
        r = c.post("/console/dashboard/refresh", data={"csrf_token": token})
        assert r.status_code == 403, role
    assert exported(engine) == 0  # nobody refused could export
    for role in ("marketer", "admin"):
        c = session_for(role)
        page = c.get("/console/dashboard")
        assert page.status_code == 200, role
        assert 'href="/console/dashboard"' in page.text
        assert c.get("/console/dashboard/data/lake").status_code == 200


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)  # lake/static only
def test_the_page_has_filters_csv_links_and_no_inline_script(shop: dict, session_for) -> None:
    c = session_for("marketer")
    r = c.get(
        "/console/dashboard",
        params={
            "channel": "web,store",
            "city": "Praha",
            "utm_source": "instagram",
            "step": ["A", "B"],
            "order": "strict",
        },
    )
    assert r.status_code == 200
    csp = r.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "unsafe-eval" not in csp
    html = r.text
    assert not re.search(r"<script(?![^>]*\bsrc=)", html), "inline script"
    assert not re.search(r"\son[a-z]+=", html), "inline event handler"
    assert '<script src="/console/dashboard/assets/plotly.min.js?v=' in html
    assert 'id="plotly.js-style-global" class="no-inline-styles"' in html
    # the shared URL pre-fills the filters and the funnel form
    assert '<option value="web" selected>' in html and '<option value="store" selected>' in html
    assert '<option value="email" >' in html or '<option value="email">' in html
    assert 'value="instagram"' in html and ">A\nB</textarea>" in html and '<option value="strict" selected>' in html
    for name in [*DATA, *MORE, "funnel"]:
        assert f'href="/console/dashboard/data/{name}?format=csv"' in html, name
    assert 'id="f-segment" name="segment"' in html and "Gap report" in html and "Attribution" in html
    for label in ("Journey stages", "Cross-channel conversion", "Click &amp; collect", "Service per channel"):
        assert label in html


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)  # lake/static only
def test_plotly_js_comes_from_the_python_package(live_server: LiveServer) -> None:
    with httpx.Client(base_url=live_server.url) as c:
        r = c.get("/console/dashboard/assets/plotly.min.js")
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/javascript")
        assert r.content == dashboard.plotly_js().read_bytes()
        assert b"plotly.js v" in r.content[:200]
        css = c.get("/console/dashboard/assets/plotly.css")  # plotly.js's own rules, so it needs no inline <style>
        assert css.status_code == 200 and css.headers["content-type"].startswith("text/css")
        assert ".js-plotly-plot .plotly .main-svg{position:absolute;" in css.text
        assert ".js-plotly-plot .plotly .modebar-btn{" in css.text and "X " not in css.text
        assert c.get("/console/dashboard/assets/dashboard.js").status_code == 200
        assert c.get("/console/dashboard/assets/dashboard.css").headers["content-type"].startswith("text/css")
        assert c.get("/console/dashboard/assets/..%2Fviews.py").status_code == 404
        assert c.get("/console/dashboard/assets/views.py").status_code == 404


def test_refresh_needs_the_csrf_token_then_exports_incrementally(
    shop: dict, session_for, engine: sa.Engine, live_server: LiveServer, client: httpx.Client, world: World
) -> None:
    c = session_for("marketer")
    token = csrf_of(c.get("/console/dashboard").text)
    other = csrf_of(session_for("admin").get("/console/dashboard").text)
    refused = [
        c.post("/console/dashboard/refresh"),
        c.post("/console/dashboard/refresh", data={"csrf_token": "forged"}),
        c.post("/console/dashboard/refresh", data={"csrf_token": other}),  # another session's token
        c.post("/console/dashboard/refresh", headers={"X-CSRF-Token": "forged"}),
        c.post("/console/dashboard/refresh", data={"csrf_token": token}, headers={"Origin": "https://evil.example"}),
    ]
    assert [r.status_code for r in refused] == [403] * 5
    data_dir = live_server.app.state.settings.data_dir  # type: ignore[attr-defined]
    assert exported(engine) == 0 and not lake.event_files(lake.lake_dir(data_dir))
    # the button's fetch: header token, JSON answer
    r = c.post("/console/dashboard/refresh", headers={"X-CSRF-Token": token, "Accept": "application/json"})
    assert r.status_code == 200, r.text
    assert r.json()["rows"] == 21 and "21 new events" in r.json()["message"]
    assert c.get("/console/dashboard/data/lake").json()["pending"] == 0
    # a new event, then the form without JavaScript: redirect back with a notice; nothing is exported twice
    r = client.post(
        "/v1/track", auth=(world.pos_key, ""), json=track("c2", "Store Visited", at(7), store_id="store-brno-1")
    )
    assert r.status_code == 200
    assert wait_for(lambda: processed(client, world), timeout=20)
    r = c.post("/console/dashboard/refresh", data={"csrf_token": token}, follow_redirects=False)
    assert r.status_code == 303 and "1+new+event+exported" in r.headers["location"]
    assert (
        c.post("/console/dashboard/refresh", headers={"X-CSRF-Token": token, "Accept": "application/json"}).json()[
            "rows"
        ]
        == 0
    )
    status = c.get("/console/dashboard/data/lake").json()
    assert status["exported_rows"] == 22 and status["pending"] == 0
    # while another exporter holds the lake's lock, the button answers 409 and nothing moves
    r = client.post(
        "/v1/track", auth=(world.pos_key, ""), json=track("c2", "Store Visited", at(8), store_id="store-brno-1")
    )
    assert wait_for(lambda: processed(client, world), timeout=20)
    with open(lake.lake_dir(data_dir) / ".export.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        busy = c.post("/console/dashboard/refresh", headers={"X-CSRF-Token": token, "Accept": "application/json"})
        assert busy.status_code == 409 and busy.json()["code"] == "export_busy"
        fcntl.flock(fh, fcntl.LOCK_UN)
    assert c.get("/console/dashboard/data/lake").json()["pending"] == 1


FILTER_CASES: list[tuple[dict[str, Any], flt.Filters]] = [
    ({}, flt.Filters()),
    ({"channel": "web"}, flt.Filters(channels=("web",))),
    ({"channel": ["web", "store"]}, flt.Filters(channels=("web", "store"))),
    ({"device_type": "desktop"}, flt.Filters(device_types=("desktop",))),
    (
        {"utm_source": "instagram", "utm_campaign": "spring"},
        flt.Filters(utm_sources=("instagram",), utm_campaigns=("spring",)),
    ),
    ({"store": "store-praha-1"}, flt.Filters(stores=("store-praha-1",))),
    ({"city": "Brno"}, flt.Filters(cities=("Brno",))),
    (
        {"start": at(1)[:10], "end": at(3)[:10]},
        flt.Filters(
            start_ms=flt.to_ms(datetime.fromisoformat(at(1)[:10]).replace(tzinfo=UTC)),
            end_ms=flt.to_ms(datetime.fromisoformat(at(3)[:10]).replace(tzinfo=UTC)),
        ),
    ),
]


# After the export the numbers come from the Parquet lake alone, so the database behind it does not change them:
# this long comparison (every analysis under every filter, three ways) runs once, on SQLite; the export itself is
# tested on both databases in tests/analytics.
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_data_routes_give_the_analytics_service_numbers_for_every_filter(
    shop: dict, session_for, live_server: LiveServer, client: httpx.Client, world: World
) -> None:
    c = session_for("marketer")
    token = csrf_of(c.get("/console/dashboard").text)
    assert (
        c.post("/console/dashboard/refresh", headers={"X-CSRF-Token": token, "Accept": "application/json"}).json()[
            "rows"
        ]
        == 21
    )
    data_dir = live_server.app.state.settings.data_dir  # type: ignore[attr-defined]
    api = bearer(world.marketer_token)
    spec = FunnelSpec(
        steps=(Step("Product Viewed", ("Product Viewed",)), Step("Order Completed", ("Order Completed",))),
        window_seconds=3 * 86400,
    )
    # Every result carries the filters it ran with (`filters.describe()`), so one route per filter case proves the
    # parsing and the pass-through; every route is compared unfiltered, and each route meets some filter case.
    for i, (params, expected_filters) in enumerate(FILTER_CASES):
        for name in DATA if not params else [DATA[i % len(DATA)]]:
            # the period end (or now) is "as of" for funnels: pin it for a stable comparison
            p = {**params} if name != "stages" or "end" in params else {**params, "end": NOW.isoformat()}
            f = expected_filters
            if name == "stages" and "end" not in params:
                f = replace(expected_filters, end_ms=flt.to_ms(NOW))
            got = c.get(f"/console/dashboard/data/{name}", params=p)
            assert got.status_code == 200, (name, params, got.text)
            want = service.run(data_dir=data_dir, analysis=name, filters=f, as_of_ms=f.end_ms)
            assert got.json() == want, (name, params)
            if not params:  # the API parses the same filters (tests/analytics/test_api.py): one case is enough
                assert client.get(f"/api/analytics/{name}", params=p, headers=api).json() == want
        if params and i % 3:
            continue  # the funnel route: unfiltered and with every third filter case
        p = {**FUNNEL, **params, "end": params.get("end", NOW.isoformat())}
        f = replace(expected_filters, end_ms=expected_filters.end_ms or flt.to_ms(NOW))
        got = c.get("/console/dashboard/data/funnel", params=p)
        assert got.status_code == 200, got.text
        want = service.run(data_dir=data_dir, analysis="funnel", filters=f, funnel=spec, as_of_ms=f.end_ms)
        assert got.json() == want
        if not params:
            assert client.get("/api/analytics/funnel", params=p, headers=api).json() == want

    # attribution and the gap report: the console's data routes give the service's numbers too
    p = {"model": "first_touch,markov", "end": NOW.isoformat()}
    got = c.get("/console/dashboard/data/attribution", params=p).json()
    want = service.run(
        data_dir=data_dir,
        analysis="attribution",
        filters=flt.Filters(end_ms=flt.to_ms(NOW)),
        attribution=AttributionSpec(models=("first_touch", "markov")),
    )
    assert got == want and got["conversions"] > 0
    gaps = c.get("/console/dashboard/data/gaps", params={"end": NOW.isoformat()}).json()
    assert gaps == service.run(
        data_dir=data_dir, analysis="gaps", filters=flt.Filters(end_ms=flt.to_ms(NOW)), as_of_ms=flt.to_ms(NOW)
    )

    # and the numbers are the ones this small world should give (so the comparison is not of empty results)
    stages = c.get("/console/dashboard/data/stages", params={"end": NOW.isoformat()}).json()
    assert [(s["name"], s["count"]) for s in stages["steps"]] == [
        ("awareness", 5),  # c0, c1, c2 (store visit), c3, c5; c4 only contacted service
        ("consideration", 3),
        ("purchase", 2),  # c0 (store, after viewing on the web), c1
        ("retention", 1),  # c0's second order
        ("advocacy", 1),  # c0's review
    ]
    cross = c.get("/console/dashboard/data/cross-channel").json()
    assert cross["customers"] == 3 and cross["cross_channel_customers"] == 1  # c0: web -> store
    assert dict(zip(cross["start_channels"], cross["matrix"], strict=True)) == {"store": [1, 0], "web": [1, 1]}
    revenue = c.get("/console/dashboard/data/revenue").json()
    assert [(r["channel"], r["orders"], r["revenue"]) for r in revenue["rows"]] == [
        ("store", 2, 180.0),
        ("web", 2, 250.0),
    ]
    assert revenue["return_rate"] == 0.25
    by_city = c.get("/console/dashboard/data/revenue", params={"city": "Brno"}).json()
    assert [(r["channel"], r["orders"]) for r in by_city["rows"]] == [("store", 1)]
    svc = c.get("/console/dashboard/data/service").json()
    assert svc["contacts"] == 2 and svc["lost_context_rate"] == 0.5
    rows = {r["channel"]: r for r in svc["rows"]}
    assert rows["chat"]["median_first_response_seconds"] == 120.0 and rows["chat"]["csat_average"] == 5.0
    assert rows["call_center"]["nps"] == 100.0 and rows["call_center"]["median_first_response_seconds"] == 30.0
    funnel = c.get(
        "/console/dashboard/data/funnel", params={**FUNNEL, "end": NOW.isoformat(), "breakdown": "device_type"}
    )
    body = funnel.json()
    assert [s["count"] for s in body["steps"]] == [3, 2]
    assert {b["value"]: b["converted"] for b in body["breakdown_values"]} == {"desktop": 1, "mobile": 1}


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)  # lake/static only
def test_csv_export_and_bad_input(shop: dict, session_for, live_server: LiveServer) -> None:
    c = session_for("admin")
    token = csrf_of(c.get("/console/dashboard").text)
    c.post("/console/dashboard/refresh", headers={"X-CSRF-Token": token, "Accept": "application/json"})
    data_dir = live_server.app.state.settings.data_dir  # type: ignore[attr-defined]
    r = c.get("/console/dashboard/data/revenue", params={"format": "csv", "channel": "web"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    assert 'filename="revenue.csv"' in r.headers["content-disposition"]
    want = service.run(data_dir=data_dir, analysis="revenue", filters=flt.Filters(channels=("web",)))
    assert r.text == service.to_csv(want["rows"])
    assert [(x["channel"], x["orders"], x["revenue"]) for x in csv.DictReader(io.StringIO(r.text))] == [
        ("web", "2", "250.0")
    ]
    r = c.get("/console/dashboard/data/funnel", params={**FUNNEL, "format": "csv"})
    rows = list(csv.DictReader(io.StringIO(r.text)))
    assert [(x["name"], x["count"]) for x in rows] == [("Product Viewed", "3"), ("Order Completed", "2")]
    bad = [
        ("funnel", {**FUNNEL, "window": "-3h"}),
        ("funnel", {"step": "Only One"}),
        ("funnel", {**FUNNEL, "order": "sideways"}),
        ("funnel", {**FUNNEL, "breakdown": "payload"}),
        ("revenue", {"start": "yesterday"}),
        ("revenue", {"start": "2026-12-01", "end": "2026-11-01"}),
        ("revenue", {"store": "store-praha-1", "city": "Praha"}),
        ("revenue", {"format": "xml"}),
    ]
    for name, p in bad:
        r = c.get(f"/console/dashboard/data/{name}", params=p)
        assert r.status_code == 422, (name, p, r.text)
        assert r.headers["content-type"].startswith("application/json")
    assert c.get("/console/dashboard/data/nothing").status_code == 404
