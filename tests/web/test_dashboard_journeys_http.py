"""The dashboard's journey panels over HTTP (live server, SQLite and PostgreSQL): the session data routes for
channel paths, retention, lifecycle and golden paths give exactly the API's JSON with the same parameters,
CSV exports, the options pre-filled from a shared URL, and the roles."""

from __future__ import annotations

import httpx
import pytest

from tests.commerce.helpers import bearer
from tests.conftest import World
from tests.web.helpers import csrf_of
from tests.web.test_dashboard_http import NOW, session_for, shop

__all__ = ["session_for", "shop"]
pytestmark = pytest.mark.server

CASES = {
    "paths": [{}, {"level": "channel_action", "steps": "3"}, {"channel": "web,store", "end_node": "web"}],
    "retention": [{}, {"granularity": "day", "mode": "on_or_after", "cohort_type": "recurring", "cohort_event": "*"}],
    "lifecycle": [{"granularity": "day"}],
    "golden-paths": [{}, {"device_type": "desktop"}],
}


def test_journey_panels(shop: dict, session_for, client: httpx.Client, world: World) -> None:
    agent = session_for("agent")
    for name in CASES:
        assert agent.get(f"/console/dashboard/data/{name}").status_code == 403
    c = session_for("marketer")
    page = c.get("/console/dashboard", params={"level": "channel_action", "granularity": "month"})
    for name in CASES:
        assert f'href="/console/dashboard/data/{name}?format=csv"' in page.text, name
    assert '<option value="channel_action" selected>' in page.text and '<option value="month" selected>' in page.text
    for label in ("Channel paths", "Retention", "Lifecycle", "Golden paths"):
        assert label in page.text
    token = csrf_of(page.text)
    c.post("/console/dashboard/refresh", headers={"X-CSRF-Token": token, "Accept": "application/json"})
    api = bearer(world.marketer_token)
    for name, cases in CASES.items():
        for params in cases:
            p = {**params, "end": NOW.isoformat()}
            got = c.get(f"/console/dashboard/data/{name}", params=p)
            assert got.status_code == 200, (name, p, got.text)
            assert got.json() == client.get(f"/api/analytics/{name}", params=p, headers=api).json(), (name, p)
            csv = c.get(f"/console/dashboard/data/{name}", params={**p, "format": "csv"})
            assert csv.status_code == 200 and csv.headers["content-type"].startswith("text/csv")
    paths = c.get("/console/dashboard/data/paths", params={"end": NOW.isoformat()}).json()
    assert paths["customers"] >= 5 and paths["sankey"]["links"] and paths["top_paths_to_purchase"]
    retention = c.get("/console/dashboard/data/retention", params={"end": NOW.isoformat(), "granularity": "day"})
    assert retention.json()["cohorts"]
    assert c.get("/console/dashboard/data/retention", params={"granularity": "year"}).status_code == 422
