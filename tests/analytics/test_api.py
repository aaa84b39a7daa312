"""The analytics API: roles, JSON and CSV, filters in the URL, clear 4xx for bad input."""

from __future__ import annotations

import csv
import io

import httpx

from omnijourney.analytics import lake
from omnijourney.pipeline import service as pipeline
from omnijourney.pipeline.worker import run_until_idle
from tests.analytics.test_export import seed
from tests.conftest import LiveServer, World


def _prepare(live_server: LiveServer) -> None:
    specs = []
    for u in range(6):
        specs.append({"event": "Store Visited", "user": f"cust{u}", "hour": u, "store": True})
        if u % 2 == 0:
            specs.append({"event": "Order Completed", "user": f"cust{u}", "hour": u + 1, "revenue": 100.0 + u})
    seed(live_server.engine, specs)
    run_until_idle(live_server.engine, pipeline.default_handlers())
    settings = live_server.app.state.settings
    assert lake.export(engine=live_server.engine, data_dir=settings.data_dir).rows == len(specs)


def test_roles_json_csv_and_bad_input(live_server: LiveServer, client: httpx.Client, world: World) -> None:
    _prepare(live_server)
    marketer = {"Authorization": f"Bearer {world.marketer_token}"}
    params = {"step": ["Store Visited", "Order Completed"], "window": "2h", "end": "2026-12-01T00:00:00Z"}

    assert client.get("/api/analytics/funnel", params=params).status_code == 401
    agent = client.get("/api/analytics/funnel", params=params, headers={"Authorization": f"Bearer {world.agent_token}"})
    assert agent.status_code == 403

    r = client.get("/api/analytics/funnel", params=params, headers=marketer)
    assert r.status_code == 200, r.text
    body = r.json()
    assert [s["count"] for s in body["steps"]] == [6, 3] and body["conversion_rate"] == 0.5
    assert body["engine"] == "duckdb" and body["steps"][1]["median_seconds_from_previous"] == 3600.0

    r = client.get("/api/analytics/funnel", params={**params, "format": "csv"}, headers=marketer)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(r.text)))
    assert [(x["name"], x["count"]) for x in rows] == [("Store Visited", "6"), ("Order Completed", "3")]

    admin = {"Authorization": f"Bearer {world.admin_token}"}
    rev = client.get("/api/analytics/revenue", params={"channel": "store"}, headers=admin)
    assert rev.status_code == 200
    assert [(x["channel"], x["orders"], x["revenue"]) for x in rev.json()["rows"]] == [("store", 3, 306.0)]
    empty = client.get("/api/analytics/revenue", params={"channel": "web,app"}, headers=admin)
    assert empty.json()["rows"] == []
    for name in ("stages", "cross-channel", "click-and-collect", "multi-channel", "service"):
        got = client.get(f"/api/analytics/{name}", headers=marketer)
        assert got.status_code == 200, (name, got.text)
        assert got.json()["analysis"] == name
        assert client.get(f"/api/analytics/{name}", params={"format": "csv"}, headers=marketer).status_code == 200
    # attribution, the gap report and stage KPIs (tests/analytics/test_attribution.py, test_gaps.py)
    attr = client.get("/api/analytics/attribution", params={"model": "first_touch,linear"}, headers=marketer)
    assert attr.status_code == 200, attr.text
    assert attr.json()["conversions"] == 3 and list(attr.json()["results"]) == ["first_touch", "linear"]
    attr_csv = client.get(
        "/api/analytics/attribution", params={"model": "last_touch", "format": "csv"}, headers=marketer
    )
    assert attr_csv.text.splitlines()[0] == "model,touchpoint,conversions,value,share"
    gaps = client.get("/api/analytics/gaps", params={"format": "csv", "segment": "nobody"}, headers=marketer)
    assert gaps.status_code == 200 and gaps.text == ""
    kpis = client.get("/api/analytics/stage-kpis", headers=marketer).json()
    assert kpis["stages"]["purchase"]["buyers"] == 3
    status = client.get("/api/analytics/lake", headers=marketer).json()
    assert status["exported_rows"] == 9 and status["pending"] == 0

    bad = [
        ("/api/analytics/funnel", {**params, "window": "-3h"}),
        ("/api/analytics/funnel", {**params, "step": ["Only One"]}),
        ("/api/analytics/funnel", {**params, "order": "sideways"}),
        ("/api/analytics/funnel", {**params, "breakdown": "payload"}),
        ("/api/analytics/funnel", {**params, "exclude": "X:1:0"}),
        ("/api/analytics/revenue", {"start": "yesterday"}),
        ("/api/analytics/revenue", {"start": "2026-12-01", "end": "2026-11-01"}),
        ("/api/analytics/revenue", {"engine": "oracle"}),
        ("/api/analytics/revenue", {"store": "PRG-1", "city": "Praha"}),
        ("/api/analytics/attribution", {"model": "magic"}),
        ("/api/analytics/attribution", {"markov_order": "9"}),
        ("/api/analytics/attribution", {"half_life": "0"}),
        ("/api/analytics/attribution", {"touch": "payload"}),
    ]
    for path, p in bad:
        r = client.get(path, params=p, headers=marketer)
        assert r.status_code == 422, (path, p, r.text)
        assert r.json()["success"] is False and r.json()["message"]
