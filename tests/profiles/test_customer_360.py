"""The seed scenario end to end: official SDK → ingestion → identity → one profile, one timeline."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta

import httpx
import orjson
import pytest
import sqlalchemy as sa
from segment.analytics.client import Client as SegmentClient

from omnijourney.access import service as access
from omnijourney.commerce import service as commerce
from omnijourney.identity import service as identity
from omnijourney.profiles import service as profiles
from omnijourney.store import db
from tests.conftest import World, wait_for

pytestmark = pytest.mark.server

T0 = datetime(2026, 11, 20, 9, 0, tzinfo=UTC)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def processed(client: httpx.Client, token: str) -> bool:
    return client.get("/api/pipeline/status", headers=bearer(token)).json()["lag"] == 0


def sdk(key: str, url: str) -> SegmentClient:
    return SegmentClient(key, host=url, sync_mode=True)


def test_seed_journey_resolves_to_one_profile_with_one_timeline(live_server, client, world: World, engine) -> None:
    with db.write(engine) as conn:
        call_key = access.create_source(conn=conn, name="hotline", channel="call_center", trusted=True).write_key
    mobile_ctx = {"device": {"type": "mobile"}, "campaign": {"source": "instagram", "medium": "paid_social"}}
    desktop_ctx = {"device": {"type": "desktop"}}

    web = sdk(world.web_key, live_server.url)
    web.page(anonymous_id="anon-mobile", name="Trail shoes", context=mobile_ctx, timestamp=T0)
    web.track(
        anonymous_id="anon-mobile",
        event="Product Added",
        properties={"cart_id": "cart-1", "product_id": "shoe-42", "price": 2490, "quantity": 1},
        context=mobile_ctx,
        timestamp=T0 + timedelta(minutes=2),
    )
    web.identify(
        anonymous_id="anon-mobile",
        traits={"email": "jana@example.com"},
        context=mobile_ctx,
        timestamp=T0 + timedelta(minutes=3),
    )
    web.identify(
        "user-jana",
        {"email": "Jana@Example.com", "phone": "+420 601 123 456", "first_name": "Jana", "last_name": "Nováková"},
        anonymous_id="anon-desktop",
        context=desktop_ctx,
        timestamp=T0 + timedelta(hours=5),
    )
    web.track(
        "user-jana",
        "Cart Viewed",
        {"cart_id": "cart-1"},
        anonymous_id="anon-desktop",
        context=desktop_ctx,
        timestamp=T0 + timedelta(hours=5, minutes=1),
    )

    pos = sdk(world.pos_key, live_server.url)
    pos.identify(
        anonymous_id="till-3-txn-981",
        traits={"loyalty_card": "LC0012345678", "email": "jana@example.com"},
        timestamp=T0 + timedelta(days=1),
    )
    pos.track(
        anonymous_id="till-3-txn-981",
        event="Order Completed",
        properties={
            "order_id": "POS-981",
            "revenue": 390.0,
            "currency": "CZK",
            "store_id": "store-praha-1",
            "products": [{"sku": "SOCK-1", "quantity": 2, "price": 195}],
        },
        context={"traits": {"loyalty_card": "LC0012345678"}},
        timestamp=T0 + timedelta(days=1, minutes=5),
    )
    hotline = sdk(call_key, live_server.url)
    hotline.track(
        anonymous_id="call-5521",
        event="Call Completed",
        properties={"call_id": "5521", "duration_seconds": 240, "notes": "asked about sizes"},
        context={"traits": {"phone": "601123456"}},
        timestamp=T0 + timedelta(days=2),
    )
    assert wait_for(lambda: processed(client, world.admin_token), timeout=20)

    r = client.get(
        "/api/profiles/lookup", params={"type": "phone", "value": "+420601123456"}, headers=bearer(world.agent_token)
    )
    assert r.status_code == 200, r.text
    profile = r.json()
    pid = profile["id"]
    for id_type, value in (("email", "JANA@example.com"), ("loyalty_card", "lc 0012345678"), ("user_id", "user-jana")):
        other = client.get(
            "/api/profiles/lookup", params={"type": id_type, "value": value}, headers=bearer(world.agent_token)
        )
        assert other.json()["id"] == pid
    ids = {(i["type"], i["value"]) for i in profile["identifiers"]}
    assert {
        ("anonymous_id", "anon-mobile"),
        ("anonymous_id", "anon-desktop"),
        ("user_id", "user-jana"),
        ("email", "jana@example.com"),
        ("phone", "+420601123456"),
        ("loyalty_card", "LC0012345678"),
        ("anonymous_id", "till-3-txn-981"),
        ("anonymous_id", "call-5521"),
    } <= ids
    assert all(i["source_id"] and i["event_id"] for i in profile["identifiers"])  # provenance
    computed = profile["computed"]
    assert set(computed["channels"]) == {"web", "store", "call_center"}
    assert computed["order_count"] == 1 and computed["lifetime_revenue"] == 390.0
    assert computed["preferred_store"] == "store-praha-1"
    assert set(computed["devices"]) >= {"mobile", "desktop"}
    assert computed["lifecycle_stage"] == "purchase"
    assert profile["traits"]["first_name"] == "Jana"

    t = client.get(f"/api/profiles/{pid}/timeline", headers=bearer(world.agent_token)).json()
    names = [(e["channel"], e["event"] or e["type"]) for e in reversed(t["events"])]
    assert names == [
        ("web", "Trail shoes"),
        ("web", "Product Added"),
        ("web", "identify"),
        ("web", "identify"),
        ("web", "Cart Viewed"),
        ("store", "identify"),
        ("store", "Order Completed"),
        ("call_center", "Call Completed"),
    ]
    # filters and pagination
    calls = client.get(
        f"/api/profiles/{pid}/timeline", params={"channel": "call_center"}, headers=bearer(world.agent_token)
    ).json()
    assert [e["event"] for e in calls["events"]] == ["Call Completed"]
    page1 = client.get(f"/api/profiles/{pid}/timeline", params={"limit": 3}, headers=bearer(world.agent_token)).json()
    page2 = client.get(
        f"/api/profiles/{pid}/timeline",
        params={"limit": 3, "cursor": page1["next_cursor"]},
        headers=bearer(world.agent_token),
    ).json()
    assert [e["event_id"] for e in page1["events"] + page2["events"]] == [e["event_id"] for e in t["events"][:6]]

    found = client.get("/api/profiles/search", params={"q": "novak"}, headers=bearer(world.agent_token)).json()[
        "results"
    ]
    assert [p["id"] for p in found] == [pid]
    assert found[0]["loyalty_card"] == "LC0012345678"
    by_phone = client.get("/api/profiles/search", params={"q": "601123"}, headers=bearer(world.agent_token)).json()[
        "results"
    ]
    assert [p["id"] for p in by_phone] == [pid]

    # the console's set-based reads answer what the one-at-a-time reads answer
    rules = live_server.app.state.identity_rules
    asked = [
        ("email", "JANA@example.com"),
        ("phone", "601 123 456"),
        ("loyalty_card", "LC 9999"),
        ("email", "nobody@example.com"),
        ("phone", "not a phone"),
    ]
    with db.read(engine) as conn:
        cluster = identity.cluster(conn=conn, profile_id=pid)
        assert cluster is not None
        one_each = [identity.lookup_cluster(conn=conn, rules=rules, id_type=t, value=v) for t, v in asked]
        assert identity.lookup_clusters(conn=conn, rules=rules, identifiers=asked) == one_each
        assert one_each[:2] == [cluster, cluster] and one_each[2:] == [None, None, None]
        names = ["Product Added", "Cart Viewed", "Order Completed"]
        entries, _ = profiles.timeline(conn=conn, member_ids=cluster.members, limit=100, events=names)
        props = profiles.recent_properties(conn=conn, member_ids=cluster.members, events=names, limit=100)
        assert props == [e["properties"] for e in entries] and len(props) == 3
        assert profiles.recent_properties(conn=conn, member_ids=cluster.members, events=names, limit=1) == props[:1]
        carts = commerce.active_carts(conn=conn, member_ids=cluster.members)
        now = T0 + timedelta(days=1)
        assert commerce.current_cart(
            conn=conn, profile_id=pid, members=cluster.members, carts=carts
        ) == commerce.current_cart(conn=conn, profile_id=pid, members=cluster.members)
        assert commerce.active_cart_signal(
            conn=conn, member_ids=cluster.members, now=now, carts=carts
        ) == commerce.active_cart_signal(conn=conn, member_ids=cluster.members, now=now)


def test_profile_api_needs_a_reader_role_and_validates(client, world: World) -> None:
    assert client.get("/api/profiles/lookup", params={"type": "email", "value": "x@example.com"}).status_code == 401
    r = client.get(
        "/api/profiles/lookup", params={"type": "shoe_size", "value": "42"}, headers=bearer(world.agent_token)
    )
    assert r.status_code == 400
    assert client.get("/api/profiles/999999", headers=bearer(world.agent_token)).status_code == 404
    bad = client.get("/api/profiles/1/timeline", params={"cursor": "garbage"}, headers=bearer(world.agent_token))
    assert bad.status_code in (400, 404)
    assert client.post("/api/profiles/1/unmerge", headers=bearer(world.agent_token)).status_code == 403


def test_alias_answers_with_survivor_consent_is_most_restrictive_and_unmerge_is_admin_only(
    live_server, client, world: World
) -> None:
    pos = sdk(world.pos_key, live_server.url)
    pos.identify(anonymous_id="kiosk-1", traits={"email": "petr@example.com"}, timestamp=T0)
    pos.track(
        anonymous_id="kiosk-1",
        event="Consent Updated",
        properties={"purpose": "marketing", "channel": "email", "status": "granted"},
        timestamp=T0,
    )
    pos.identify(anonymous_id="kiosk-2", traits={"loyalty_card": "LC0099887766"}, timestamp=T0 + timedelta(hours=1))
    pos.track(
        anonymous_id="kiosk-2",
        event="Consent Updated",
        properties={"purpose": "marketing", "channel": "email", "status": "denied"},
        timestamp=T0 + timedelta(hours=1),
    )
    assert wait_for(lambda: processed(client, world.admin_token))
    a = client.get(
        "/api/profiles/lookup", params={"type": "email", "value": "petr@example.com"}, headers=bearer(world.agent_token)
    ).json()
    b = client.get(
        "/api/profiles/lookup",
        params={"type": "loyalty_card", "value": "LC0099887766"},
        headers=bearer(world.agent_token),
    ).json()
    assert a["id"] != b["id"]
    assert a["consents"][0]["status"] == "granted"
    pos.identify(
        anonymous_id="kiosk-3",
        traits={"email": "petr@example.com", "loyalty_card": "LC0099887766"},
        timestamp=T0 + timedelta(hours=2),
    )
    assert wait_for(lambda: processed(client, world.admin_token))
    merged = client.get(f"/api/profiles/{b['id']}", headers=bearer(world.agent_token)).json()
    assert merged["id"] == a["id"] and merged["merged_ids"] == [b["id"]]
    assert merged["consents"] == [
        {**merged["consents"][0], "purpose": "marketing", "channel": "email", "status": "denied"}
    ]
    assert merged["merges"][0]["id_type"] in ("email", "loyalty_card")

    assert client.post(f"/api/profiles/{a['id']}/unmerge", headers=bearer(world.marketer_token)).status_code == 403
    r = client.post(f"/api/profiles/{a['id']}/unmerge", headers=bearer(world.admin_token))
    assert r.status_code == 200 and r.json()["restored_id"] == b["id"]
    again = client.post(f"/api/profiles/{a['id']}/unmerge", headers=bearer(world.admin_token))
    assert again.status_code == 409
    split = client.get(f"/api/profiles/{a['id']}", headers=bearer(world.agent_token)).json()
    assert split["merged_ids"] == [] and split["consents"][0]["status"] == "granted"
    conflicts = client.get("/api/identity/conflicts", headers=bearer(world.admin_token))
    assert conflicts.status_code == 200
    changes = client.get("/api/profiles/changes", params={"since": 0}, headers=bearer(world.agent_token)).json()
    assert a["id"] in changes["profile_ids"] and changes["next_since"] > 0


def test_stream_pushes_new_timeline_entries_live(live_server, client, world: World) -> None:
    web = sdk(world.web_key, live_server.url)
    web.identify("user-s", {"email": "s@example.com"}, anonymous_id="anon-s")
    assert wait_for(lambda: processed(client, world.admin_token))
    pid = client.get(
        "/api/profiles/lookup", params={"type": "user_id", "value": "user-s"}, headers=bearer(world.agent_token)
    ).json()["id"]
    received: list[dict] = []
    sent_at: list[float] = []

    def listen() -> None:
        with (
            httpx.Client(base_url=live_server.url, timeout=20) as c,
            c.stream("GET", f"/api/profiles/{pid}/stream", headers=bearer(world.agent_token)) as resp,
        ):
            assert resp.headers["content-type"].startswith("text/event-stream")
            for line in resp.iter_lines():
                if line.startswith("data: "):
                    received.append(orjson.loads(line[6:]))
                    received[-1]["_at"] = time.monotonic()
                    return

    listener = threading.Thread(target=listen)
    listener.start()
    time.sleep(0.5)
    sent_at.append(time.monotonic())
    web.track("user-s", "Product Viewed", {"product_id": "p-9"}, anonymous_id="anon-s")
    listener.join(20)
    assert received and received[0]["event"] == "Product Viewed"
    assert received[0]["_at"] - sent_at[0] < 5


def test_consent_api(client, live_server, world: World, engine) -> None:
    web = sdk(world.web_key, live_server.url)
    web.identify("user-c", {"email": "c@example.com"})
    assert wait_for(lambda: processed(client, world.admin_token))
    pid = client.get(
        "/api/profiles/lookup", params={"type": "user_id", "value": "user-c"}, headers=bearer(world.agent_token)
    ).json()["id"]
    body = {"purpose": "marketing", "channel": "sms", "status": "withdrawn", "evidence": {"call_id": "77"}}
    r = client.post(f"/api/profiles/{pid}/consents", json=body, headers=bearer(world.agent_token))
    assert r.status_code == 201 and r.json()["consents"][0]["status"] == "withdrawn"
    bad = client.post(
        f"/api/profiles/{pid}/consents", json={**body, "status": "maybe"}, headers=bearer(world.agent_token)
    )
    assert bad.status_code == 422
    assert (
        client.post(f"/api/profiles/{pid}/consents", json=body, headers=bearer(world.marketer_token)).status_code == 403
    )
    hist = client.get(f"/api/profiles/{pid}/consents", headers=bearer(world.agent_token)).json()
    assert len(hist["history"]) == 1 and hist["history"][0]["actor"].startswith("token:")
    with db.read(engine) as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM consent_records")).scalar_one() == 1
