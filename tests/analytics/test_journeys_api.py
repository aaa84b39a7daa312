"""The journey analyses over HTTP: /api/analytics/retention, /lifecycle, /paths, /golden-paths with roles,
JSON and CSV, filters and parameters in the URL, and clear 4xx errors."""

from __future__ import annotations

import csv
import io

import httpx

from omnijourney.analytics import lake
from omnijourney.pipeline import service as pipeline
from omnijourney.pipeline.worker import run_until_idle
from tests.analytics.test_export import seed
from tests.conftest import LiveServer, World

END = "2026-12-31T00:00:00Z"


def _prepare(live_server: LiveServer) -> None:
    """Six customers visit a store; the even ones order on the web an hour later, customer 0 again 8 days later."""
    specs = []
    for u in range(6):
        specs.append({"event": "Store Visited", "user": f"cust{u}", "hour": u, "store": True})
        if u % 2 == 0:
            specs.append({"event": "Order Completed", "user": f"cust{u}", "hour": u + 1, "channel": "web"})
    specs.append({"event": "Order Completed", "user": "cust0", "hour": 8 * 24, "channel": "web"})
    seed(live_server.engine, specs)
    run_until_idle(live_server.engine, pipeline.default_handlers())
    assert lake.export(engine=live_server.engine, data_dir=live_server.app.state.settings.data_dir).rows == len(specs)


def test_journey_routes(live_server: LiveServer, client: httpx.Client, world: World) -> None:
    _prepare(live_server)
    marketer = {"Authorization": f"Bearer {world.marketer_token}"}
    agent = {"Authorization": f"Bearer {world.agent_token}"}
    for name in ("retention", "lifecycle", "paths", "golden-paths"):
        assert client.get(f"/api/analytics/{name}").status_code == 401
        assert client.get(f"/api/analytics/{name}", headers=agent).status_code == 403

    params = {"granularity": "day", "periods": "9", "end": END}
    r = client.get("/api/analytics/retention", params=params, headers=marketer)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["analysis"] == "retention" and body["cohort_type"] == "first_time"
    assert [c["retained"] for c in body["cohorts"]] == [[3, 0, 0, 0, 0, 0, 0, 0, 1, 0]]
    visits = client.get(
        "/api/analytics/retention",
        params={**params, "cohort_event": "Store Visited", "mode": "on_or_after"},
        headers=marketer,
    ).json()
    assert visits["cohorts"][0]["size"] == 6 and visits["cohorts"][0]["retained"][8] == 1
    rows = list(
        csv.DictReader(
            io.StringIO(
                client.get("/api/analytics/retention", params={**params, "format": "csv"}, headers=marketer).text
            )
        )
    )
    assert rows[8] == {"cohort": rows[0]["cohort"], "size": "3", "period": "8", "customers": "1", "rate": "0.333333"}

    life = client.get("/api/analytics/lifecycle", params={"granularity": "week", "end": END}, headers=marketer).json()
    assert sum(p["new"] for p in life["periods"]) == 6

    paths = client.get("/api/analytics/paths", params={"end": END}, headers=marketer).json()
    assert {(x["source_label"], x["target_label"], x["customers"]) for x in paths["sankey"]["links"]} == {
        ("store", "web", 3)
    }
    assert paths["top_paths_to_purchase"] == [{"path": "store → web", "customers": 3, "share": 1.0}]
    only_store = client.get("/api/analytics/paths", params={"end": END, "channel": "store"}, headers=marketer)
    assert only_store.json()["sankey"]["links"] == []
    csv_paths = client.get("/api/analytics/paths", params={"end": END, "format": "csv"}, headers=marketer)
    assert csv_paths.headers["content-type"].startswith("text/csv") and "store,web,3" in csv_paths.text

    golden = client.get("/api/analytics/golden-paths", params={"end": END}, headers=marketer)
    assert golden.status_code == 200
    names = [p["name"] for p in golden.json()["paths"]]
    assert names[0] == "social → store → online → pick-up"
    assert golden.json()["paths"][0]["customers"] == 6
    assert client.get("/api/analytics/golden-paths", params={"format": "csv"}, headers=marketer).status_code == 200

    bad = [
        ("/api/analytics/retention", {"granularity": "year"}),
        ("/api/analytics/retention", {"mode": "before"}),
        ("/api/analytics/retention", {"cohort_type": "sometimes"}),
        ("/api/analytics/retention", {"periods": "0"}),
        ("/api/analytics/lifecycle", {"granularity": "hour"}),
        ("/api/analytics/paths", {"level": "device"}),
        ("/api/analytics/paths", {"steps": "1"}),
        ("/api/analytics/golden-paths", {"start": "yesterday"}),
    ]
    for path, p in bad:
        r = client.get(path, params=p, headers=marketer)
        assert r.status_code == 422, (path, p, r.text)
        assert r.json()["success"] is False and r.json()["message"]
