"""The segment and recommendation API: roles, versioned definitions, bad definitions are a 400
that changes nothing, counts, members, CSV export, a profile's segments."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from omnijourney.access import service as access
from omnijourney.engage.config import default_config
from omnijourney.store import db
from tests.conftest import World, count, wait_for
from tests.engage.helpers import ago


@pytest.fixture
def config_segments(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """engage.yaml with two configuration segments (the shipped file has none)."""
    monkeypatch.setenv("OMNIJOURNEY_ENGAGE_CONFIG", str(Path(__file__).with_name("engage.test.yaml")))
    default_config.cache_clear()
    yield
    default_config.cache_clear()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def definitions(engine: sa.Engine) -> tuple[int, int, int]:
    return (
        count(engine, "engage_segments"),
        count(engine, "engage_segment_versions"),
        count(engine, "engage_segment_members"),
    )


BAD = [
    ({"key": "x", "name": "x", "rule": {"computed": {"field": "shoe_size", "op": "gt", "value": 1}}}, "shoe_size"),
    (
        {
            "key": "x",
            "name": "x",
            "rule": {"event": {"name": "Order Completed", "did": False, "count": {"op": "gt", "value": 1}}},
        },
        "did: false",
    ),
    ({"key": "x", "name": "x", "rule": {"all": []}}, "non-empty list"),
    ({"key": "x", "name": "x", "rule": {"trait": {"key": "city", "op": "in", "value": "Brno"}}}, "list value"),
    ({"key": "x", "name": "x", "rule": {"segment": {"key": "y"}}}, "unknown rule key"),
    ({"key": "Bad Key", "name": "x", "rule": {"cart": {}}}, "segment key"),
    ({"key": "x", "name": "x", "rule": {"event": {"name": "Order Completed", "within_days": 0}}}, "within_days"),
    ({"key": "x", "name": "x", "rule": {"computed": {"field": "order_count", "op": "gte"}}}, "needs a value"),
]


def test_definitions_roles_versions_and_bad_input(
    config_segments: None, client: httpx.Client, world: World, engine: sa.Engine
) -> None:
    marketer, agent, admin = bearer(world.marketer_token), bearer(world.agent_token), bearer(world.admin_token)
    r = client.get("/api/segments", headers=agent)  # syncs the configuration segments
    assert r.status_code == 200
    assert {"cart_abandoners", "repeat_buyers"} <= {s["key"] for s in r.json()["segments"]}
    before = definitions(engine)
    for body, needle in BAD:
        r = client.post("/api/segments", json=body, headers=marketer)
        assert r.status_code == 400, (body, r.text)
        assert r.json()["code"] == "invalid_segment"
        assert needle in r.json()["message"], r.json()["message"]
    r = client.post("/api/segments", content=b"{nope", headers={**marketer, "content-type": "application/json"})
    assert r.status_code == 400
    assert definitions(engine) == before

    good = {"key": "buyers", "name": "Buyers", "rule": {"event": {"name": "Order Completed"}}}
    assert client.post("/api/segments", json=good).status_code == 401
    assert client.post("/api/segments", json=good, headers=agent).status_code == 403
    assert definitions(engine) == before
    r = client.post("/api/segments", json=good, headers=marketer)
    assert r.status_code == 201, r.text
    assert r.json()["version"] == 1 and r.json()["origin"] == "api"
    assert client.post("/api/segments", json=good, headers=marketer).status_code == 409

    # a bad update is refused and changes nothing
    r = client.put("/api/segments/buyers", json={"rule": {"any": [{"cart": {"value_gte": -1}}]}}, headers=marketer)
    assert r.status_code == 400 and "value_gte" in r.json()["message"]
    assert client.get("/api/segments/buyers", headers=agent).json()["version"] == 1
    r = client.put("/api/segments/buyers", json={"name": "Anyone who bought"}, headers=admin)
    assert r.status_code == 200 and r.json()["version"] == 2
    r = client.put("/api/segments/repeat_buyers", json={"name": "changed"}, headers=admin)
    assert r.status_code == 409 and r.json()["code"] == "config_segment"
    assert client.delete("/api/segments/repeat_buyers", headers=admin).status_code == 409
    assert client.delete("/api/segments/buyers", headers=agent).status_code == 403
    versions = client.get("/api/segments/buyers/versions", headers=agent).json()["versions"]
    assert [(v["version"], v["name"], v["active"]) for v in versions] == [
        (1, "Buyers", True),
        (2, "Anyone who bought", True),
    ]
    assert client.delete("/api/segments/buyers", headers=marketer).status_code == 200
    assert client.get("/api/segments/buyers", headers=agent).status_code == 404
    assert client.get("/api/segments/buyers/versions", headers=agent).json()["versions"][-1]["active"] is False
    # re-created: the version history continues
    r = client.post("/api/segments", json=good, headers=marketer)
    assert r.status_code == 201 and r.json()["version"] == 4


def test_members_count_export_and_profile_segments(client: httpx.Client, world: World, engine: sa.Engine) -> None:
    marketer, agent = bearer(world.marketer_token), bearer(world.agent_token)
    with db.write(engine) as conn:
        staff = bearer(access.create_token(conn=conn, role="store_staff"))
    batch = []
    for i in range(5):
        batch.append(
            {
                "type": "identify",
                "userId": f"u-{i}",
                "traits": {"email": f"c{i}@example.com", "city": "Brno" if i % 2 else "Praha"},
            }
        )
        batch.append(
            {
                "type": "track",
                "event": "Product Viewed",
                "userId": f"u-{i}",
                "timestamp": ago(i),
                "properties": {"sku": "X"},
            }
        )
    r = client.post("/v1/batch", json={"batch": batch}, auth=(world.web_key, ""))
    assert r.status_code == 200, r.text
    assert wait_for(lambda: count(engine, "profile_events") == 10)
    # created after the data: evaluated for everyone at once
    body = {
        "key": "brno_recent_viewers",
        "name": "Brno, viewed in 2.5 days",
        "rule": {
            "all": [
                {"trait": {"key": "city", "op": "eq", "value": "Brno"}},
                {"event": {"name": "Product Viewed", "within_days": 2}},
            ]
        },
    }
    r = client.post("/api/segments", json=body, headers=marketer)
    assert r.status_code == 201, r.text
    assert r.json()["count"] == 1  # u-1 (u-3 viewed 3 days ago)
    assert client.get("/api/segments/brno_recent_viewers/count", headers=agent).json()["count"] == 1
    body["rule"]["all"][1]["event"]["within_days"] = 4
    r = client.put("/api/segments/brno_recent_viewers", json={"rule": body["rule"]}, headers=marketer)
    assert r.status_code == 200 and r.json()["count"] == 2 and r.json()["version"] == 2

    page = client.get("/api/segments/brno_recent_viewers/members", params={"limit": 1}, headers=marketer).json()
    assert len(page["items"]) == 1 and page["next"] is not None
    page2 = client.get(
        "/api/segments/brno_recent_viewers/members", params={"limit": 1, "after": page["next"]}, headers=marketer
    ).json()
    assert len(page2["items"]) == 1 and page2["items"][0]["profile_id"] > page["next"]
    assert client.get("/api/segments/brno_recent_viewers/members", headers=agent).status_code == 403

    r = client.get("/api/segments/brno_recent_viewers/export.csv", headers=marketer)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(r.text)))
    assert sorted(x["email"] for x in rows) == ["c1@example.com", "c3@example.com"]
    assert client.get("/api/segments/nope/export.csv", headers=marketer).status_code == 404

    pid = page["items"][0]["profile_id"]
    r = client.get(f"/api/profiles/{pid}/segments", headers=staff)
    assert r.status_code == 200
    assert "brno_recent_viewers" in [s["key"] for s in r.json()["segments"]]
    assert [h["action"] for h in r.json()["history"] if h["segment"] == "brno_recent_viewers"] == ["entered"]
    assert client.get("/api/profiles/999999/segments", headers=staff).status_code == 404
    assert client.get(f"/api/profiles/{pid}/segments").status_code == 401
