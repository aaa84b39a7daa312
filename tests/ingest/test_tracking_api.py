"""The Segment HTTP Tracking API, over real HTTP, on SQLite and PostgreSQL."""

from __future__ import annotations

import base64
import gzip
from datetime import UTC, datetime, timedelta

import httpx
import orjson
import sqlalchemy as sa

from omnijourney.app import create_app
from omnijourney.store import db
from tests.conftest import World, count, start_server


def basic(key: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{key}:".encode()).decode()}


def stored(engine: sa.Engine) -> list[dict]:
    with db.read(engine) as conn:
        return [dict(r._mapping) for r in conn.execute(sa.text("SELECT * FROM events ORDER BY id"))]


def as_json(value: object) -> dict:
    """A JSON column read with plain SQL: text on SQLite, already decoded on PostgreSQL."""
    return orjson.loads(value) if isinstance(value, str | bytes) else value  # type: ignore[return-value]


def test_every_call_type_and_short_path_is_stored(client: httpx.Client, world: World, engine: sa.Engine) -> None:
    calls = {
        "identify": {"userId": "u1", "traits": {"email": "a@example.com"}},
        "track": {"userId": "u1", "event": "Product Viewed", "properties": {"product_id": "p1"}},
        "page": {"anonymousId": "a1", "name": "Home"},
        "screen": {"anonymousId": "a1", "name": "Cart"},
        "group": {"userId": "u1", "groupId": "g1"},
        "alias": {"userId": "u1", "previousId": "a1"},
    }
    for i, (kind, body) in enumerate(calls.items()):
        r = client.post(f"/v1/{kind}", json={**body, "messageId": f"long-{i}"}, headers=basic(world.web_key))
        assert r.status_code == 200, r.text
        assert r.json()["success"] is True
        short = kind[0]
        r = client.post(f"/v1/{short}", json={**body, "messageId": f"short-{i}"}, headers=basic(world.web_key))
        assert r.status_code == 200, r.text
    rows = stored(engine)
    assert [r["type"] for r in rows] == [k for k in calls for _ in (0, 1)]
    assert all(r["channel"] == "web" and r["source_id"] == world.web_source_id for r in rows)
    assert rows[2]["event"] == "Product Viewed"
    assert rows[4]["event"] == "Home"  # page name


def test_browser_sdk_shape_text_plain_with_write_key_in_body(client: httpx.Client, world: World, engine) -> None:
    body = {"writeKey": world.web_key, "type": "track", "event": "Cart Viewed", "anonymousId": "anon-9"}
    r = client.post("/v1/t", content=orjson.dumps(body), headers={"Content-Type": "text/plain"})
    assert r.status_code == 200, r.text
    row = stored(engine)[0]
    assert row["event"] == "Cart Viewed" and row["anonymous_id"] == "anon-9"
    payload = as_json(row["payload"])
    assert payload["event"] == "Cart Viewed" and "writeKey" not in payload


def test_stored_event_records_its_context_and_the_connection_ip(client: httpx.Client, world: World, engine) -> None:
    context = {
        "userAgent": "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X)",
        "device": {"type": "mobile", "model": "iPhone15,2", "manufacturer": "Apple"},
        "locale": "cs-CZ",
        "campaign": {"source": "instagram", "medium": "social", "name": "autumn", "content": "reel-3"},
        "library": {"name": "analytics.js", "version": "next-1.70.0"},
    }
    body = {"anonymousId": "a1", "event": "Product Viewed", "properties": {"sku": "S1"}, "context": context}
    assert client.post("/v1/track", json=body, headers=basic(world.web_key)).status_code == 200
    # an ip the client sends (a server-side SDK relaying its visitor's) is kept, not replaced
    relayed = {"userId": "u1", "event": "E", "context": {"ip": "203.0.113.9"}}
    assert client.post("/v1/track", json=relayed, headers=basic(world.pos_key)).status_code == 200
    first, second = stored(engine)
    assert as_json(first["context"]) == {**context, "ip": "127.0.0.1"}  # filled from the connection
    payload = as_json(first["payload"])  # the original message, as sent
    assert payload["context"] == context and payload["properties"] == {"sku": "S1"}
    assert (first["channel"], first["source_id"]) == ("web", world.web_source_id)
    assert as_json(second["context"]) == {"ip": "203.0.113.9"}


def test_gzip_batch_with_basic_auth(client: httpx.Client, world: World, engine) -> None:
    batch = {"batch": [{"type": "track", "event": f"E{i}", "userId": "u", "messageId": f"g{i}"} for i in range(50)]}
    r = client.post(
        "/v1/batch",
        content=gzip.compress(orjson.dumps(batch)),
        headers={**basic(world.pos_key), "Content-Encoding": "gzip", "Content-Type": "application/json"},
    )
    assert r.status_code == 200, r.text
    assert r.json() == {"success": True, "accepted": 50, "rejected": 0}
    assert count(engine, "events") == 50
    assert {r["channel"] for r in stored(engine)} == {"store"}


def test_unknown_write_key_is_401_and_stores_nothing(client: httpx.Client, world: World, engine) -> None:
    r = client.post("/v1/track", json={"userId": "u", "event": "X"}, headers=basic("nope"))
    assert r.status_code == 401
    assert r.json()["code"] == "unauthorized"
    r = client.post("/v1/track", json={"userId": "u", "event": "X"})
    assert r.status_code == 401
    assert count(engine, "events") == 0


def test_retried_batch_never_stores_twice_even_after_restart(settings, engine, world: World) -> None:
    batch = {"batch": [{"type": "track", "event": "E", "userId": "u", "messageId": f"m{i}"} for i in range(20)]}
    srv = start_server(create_app(settings, engine=engine, migrate_db=False), engine)
    try:
        assert httpx.post(srv.url + "/v1/batch", json=batch, headers=basic(world.web_key)).status_code == 200
        assert httpx.post(srv.url + "/v1/batch", json=batch, headers=basic(world.web_key)).status_code == 200
    finally:
        srv.stop()
    srv = start_server(create_app(settings, engine=engine, migrate_db=False), engine)  # a restarted process
    try:
        r = httpx.post(srv.url + "/v1/batch", json=batch, headers=basic(world.web_key))
        assert r.status_code == 200
    finally:
        srv.stop()
    assert count(engine, "events") == 20


def test_missing_message_id_is_assigned_and_retries_still_deduplicate(client, world: World, engine) -> None:
    batch = {
        "batch": [{"type": "track", "event": "E", "userId": "u", "timestamp": "2026-01-01T00:00:00Z"}],
        "sentAt": "2026-01-01T00:00:01Z",
    }
    client.post("/v1/batch", json=batch, headers=basic(world.web_key))
    batch["sentAt"] = "2026-01-01T00:00:09Z"  # a retry carries a new sentAt
    client.post("/v1/batch", json=batch, headers=basic(world.web_key))
    rows = stored(engine)
    assert len(rows) == 1
    assert rows[0]["message_id"].startswith("oj-")


def test_same_message_id_from_two_sources_are_two_events(client, world: World, engine) -> None:
    msg = {"userId": "u", "event": "E", "messageId": "shared"}
    client.post("/v1/track", json=msg, headers=basic(world.web_key))
    client.post("/v1/track", json=msg, headers=basic(world.pos_key))
    assert count(engine, "events") == 2


def test_clock_skew_is_corrected_and_received_at_stamped(client, world: World, engine) -> None:
    # the device clock is 1 hour fast; the event happened 30 s before it was sent
    device_now = datetime.now(UTC) + timedelta(hours=1)
    original = device_now - timedelta(seconds=30)
    body = {
        "batch": [{"type": "track", "event": "E", "userId": "u", "originalTimestamp": original.isoformat()}],
        "sentAt": device_now.isoformat(),
    }
    before = datetime.now(UTC)
    client.post("/v1/batch", json=body, headers=basic(world.web_key))
    after = datetime.now(UTC)
    with db.read(engine) as conn:
        from omnijourney.ingest.models import Event

        row = conn.execute(sa.select(Event.__table__)).one()
    assert before <= row.received_at <= after
    assert abs((row.received_at - row.timestamp) - timedelta(seconds=30)) < timedelta(milliseconds=5)


def test_partially_invalid_batch_keeps_valid_and_dead_letters_the_rest(client, world: World, engine) -> None:
    batch = {
        "batch": [
            {"type": "track", "event": "Ok", "userId": "u", "messageId": "ok1"},
            {"type": "track", "userId": "u", "messageId": "no-event"},
            {"type": "track", "event": "Order Completed", "userId": "u", "properties": {"revenue": "lots"}},
            {"type": "identify", "traits": {"email": "x@example.com"}},
            {"type": "track", "event": "Ok", "anonymousId": "a", "messageId": "ok2"},
        ]
    }
    r = client.post("/v1/batch", json=batch, headers=basic(world.web_key))
    assert r.status_code == 200
    body = r.json()
    assert body["accepted"] == 2 and body["rejected"] == 3
    assert {e["index"] for e in body["errors"]} == {1, 2, 3}
    assert [r["message_id"] for r in stored(engine)] == ["ok1", "ok2"]
    admin = {"Authorization": f"Bearer {world.admin_token}"}
    letters = client.get("/api/dead-letters", headers=admin).json()["dead_letters"]
    assert len(letters) == 3
    reasons = {e["field"] for letter in letters for e in letter["errors"]}
    assert {"event", "userId"} <= reasons
    assert any(f.startswith("properties.revenue") for f in reasons)


def test_ecommerce_properties_are_typed(client, world: World, engine) -> None:
    props = {"order_id": 1001, "total": "19.90", "currency": "czk", "products": [{"sku": "S1", "quantity": 2}]}
    r = client.post(
        "/v1/track", json={"userId": "u", "event": "Order Completed", "properties": props}, headers=basic(world.web_key)
    )
    assert r.status_code == 200, r.text
    row = stored(engine)[0]
    assert row["order_id"] == "1001" and row["revenue"] == 19.9 and row["currency"] == "CZK"
    bad = {"order_id": "1", "products": [{"sku": "S1", "quantity": -1}]}
    r = client.post(
        "/v1/track", json={"userId": "u", "event": "Order Completed", "properties": bad}, headers=basic(world.web_key)
    )
    assert r.status_code == 400
    assert r.json()["errors"][0]["field"].startswith("properties.products.0.quantity")


def test_service_events_are_validated(client, world: World) -> None:
    ok = {"userId": "u", "event": "Survey Responded", "properties": {"survey_type": "nps", "score": 9}}
    assert client.post("/v1/track", json=ok, headers=basic(world.web_key)).status_code == 200
    bad = {"userId": "u", "event": "Survey Responded", "properties": {"survey_type": "csat", "score": 9}}
    r = client.post("/v1/track", json=bad, headers=basic(world.web_key))
    assert r.status_code == 400 and "csat score" in r.json()["errors"][0]["message"]


def test_channel_can_be_overridden_by_context(client, world: World, engine) -> None:
    msg = {"userId": "u", "event": "E", "context": {"channel": "kiosk", "campaign": {"source": "ig"}}}
    client.post("/v1/track", json=msg, headers=basic(world.pos_key))
    msg = {"userId": "u", "event": "E", "context": {"channel": "server"}}  # Segment's own value: not ours
    client.post("/v1/track", json=msg, headers=basic(world.pos_key))
    rows = stored(engine)
    assert [r["channel"] for r in rows] == ["kiosk", "store"]


def test_cors_headers_on_preflight_success_and_errors(client, world: World) -> None:
    origin = {"Origin": "https://shop.example"}
    pre = client.options(
        "/v1/t",
        headers={
            **origin,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type,x-retry-count,authorization",
        },
    )
    assert pre.status_code == 204
    assert pre.headers["access-control-allow-origin"] == "https://shop.example"
    allowed = pre.headers["access-control-allow-headers"].lower()
    for h in ("authorization", "content-type", "x-retry-count"):
        assert h in allowed
    ok = client.post(
        "/v1/t", content=orjson.dumps({"writeKey": world.web_key, "event": "E", "anonymousId": "a"}), headers=origin
    )
    assert ok.status_code == 200 and ok.headers["access-control-allow-origin"] == "https://shop.example"
    bad = client.post("/v1/t", content=b"{not json", headers=origin)
    assert bad.status_code == 400 and bad.headers["access-control-allow-origin"] == "https://shop.example"
    unauth = client.post("/v1/t", json={"writeKey": "wrong", "event": "E", "anonymousId": "a"}, headers=origin)
    assert unauth.status_code == 401 and "access-control-allow-origin" in unauth.headers


def test_origin_not_allowed_for_the_source_is_rejected(client, world: World, engine) -> None:
    # the pos source allows any origin; the web source only https://shop.example
    evil = {"Origin": "https://evil.example"}
    r = client.post("/v1/t", json={"writeKey": world.web_key, "event": "E", "anonymousId": "a"}, headers=evil)
    assert r.status_code == 403 and r.json()["code"] == "origin_not_allowed"
    assert count(engine, "events") == 0


def test_browser_settings_and_sdk_metrics(client, world: World) -> None:
    r = client.get(f"/v1/projects/{world.web_key}/settings")
    assert r.status_code == 200
    seg = r.json()["integrations"]["Segment.io"]
    assert seg["apiKey"] == world.web_key
    assert seg["apiHost"] == client.base_url.netloc.decode() + "/v1"
    assert client.get("/v1/projects/unknown/settings").status_code == 404
    m = client.post("/v1/m", content=b'{"series":[{"type":"Counter","metric":"analytics_js.invoke","value":1}]}')
    assert m.status_code == 200


def test_processing_stage_applies_every_stored_event(client, world: World, engine) -> None:
    from tests.conftest import wait_for

    batch = {"batch": [{"type": "track", "event": "E", "userId": "u", "messageId": f"p{i}"} for i in range(300)]}
    client.post("/v1/batch", json=batch, headers=basic(world.web_key))
    admin = {"Authorization": f"Bearer {world.admin_token}"}
    assert wait_for(lambda: client.get("/api/pipeline/status", headers=admin).json()["lag"] == 0)
    status = client.get("/api/pipeline/status", headers=admin).json()
    assert status["processed_by_source"] == [{"source_id": world.web_source_id, "channel": "web", "events": 300}]
