"""The seed journey end to end over HTTP, with the official Segment SDK for the behavioural events:
mobile (anonymous) cart -> log in on desktop -> same cart -> click & collect -> ready -> picked up ->
returned in another store -> restocked there. Availability is checked at every step."""

from __future__ import annotations

import httpx
import pytest
from segment.analytics.client import Client as SegmentClient

from tests.commerce.helpers import bearer, set_stock, setup_catalog, staff_token
from tests.conftest import World, wait_for

pytestmark = pytest.mark.server


def avail(client: httpx.Client, token: str, sku: str) -> dict[str, int]:
    r = client.get(f"/api/commerce/availability/{sku}", headers=bearer(token))
    assert r.status_code == 200, r.text
    return {loc["location"]: loc["available"] for loc in r.json()["locations"]}


def test_seed_journey(live_server, client, world: World, engine) -> None:
    setup_catalog(client, world.admin_token)
    store = staff_token(engine)
    agent = bearer(world.agent_token)
    set_stock(engine, "SHOE-42", "store-praha-1", 2)
    set_stock(engine, "SHOE-42", "wh-central", 10)
    set_stock(engine, "SOCK-1", "store-praha-1", 5)
    assert avail(client, store, "SHOE-42") == {"store-praha-1": 2, "wh-central": 10}

    # mobile, anonymous: the shop backend asks for the device's cart and adds the shoe
    cart = client.post("/api/commerce/carts", json={"anonymous_id": "anon-mobile"}, headers=agent).json()
    r = client.post(
        f"/api/commerce/carts/{cart['id']}/items",
        json={"sku": "SHOE-42", "quantity": 1, "channel": "web", "device": "mobile"},
        headers=agent,
    )
    assert r.status_code == 200, r.text
    web = SegmentClient(world.web_key, host=live_server.url, sync_mode=True)
    web.identify(
        anonymous_id="anon-mobile", traits={"email": "jana@example.com"}, context={"device": {"type": "mobile"}}
    )
    # desktop: she logs in
    web.identify("user-jana", {"email": "jana@example.com"}, anonymous_id="anon-desktop")
    assert wait_for(
        lambda: client.get("/api/pipeline/status", headers=bearer(world.admin_token)).json()["lag"] == 0, timeout=20
    )
    desktop = client.post("/api/commerce/carts", json={"anonymous_id": "anon-desktop"}, headers=agent).json()
    assert desktop["id"] == cart["id"]  # the same cart
    assert [(line["sku"], line["quantity"], line["device"]) for line in desktop["lines"]] == [("SHOE-42", 1, "mobile")]
    pid = desktop["profile_id"]
    assert pid is not None
    # the store agent sees the same cart on the customer's profile, and suggests the accessory
    seen = client.get(f"/api/commerce/profiles/{pid}/cart", headers=bearer(store)).json()
    assert seen["id"] == cart["id"]
    product = client.get("/api/commerce/products/SHOE-42", headers=bearer(store)).json()
    assert [a["sku"] for a in product["related"]["accessory"]] == ["SOCK-1", "SPRAY-1"]
    r = client.post(
        f"/api/commerce/carts/{cart['id']}/items",
        json={"sku": "SOCK-1", "quantity": 1, "channel": "web", "device": "desktop"},
        headers=agent,
    )
    assert r.json()["value"] == "2685.00"

    # click & collect in Praha: reserved there only
    co = client.post(
        "/api/commerce/checkouts",
        json={"cart_id": cart["id"], "fulfilment": "click_and_collect", "pickup_location": "store-praha-1"},
        headers=agent,
    )
    assert co.status_code == 201, co.text
    assert {(x["sku"], x["location"]) for x in co.json()["reservations"]} == {
        ("SHOE-42", "store-praha-1"),
        ("SOCK-1", "store-praha-1"),
    }
    assert avail(client, store, "SHOE-42") == {"store-praha-1": 1, "wh-central": 10}
    done = client.post(
        f"/api/commerce/checkouts/{co.json()['id']}/complete", headers={**agent, "Idempotency-Key": "web-order-1"}
    )
    assert done.status_code == 201, done.text
    order = done.json()
    again = client.post(
        f"/api/commerce/checkouts/{co.json()['id']}/complete", headers={**agent, "Idempotency-Key": "web-order-1"}
    )
    assert again.status_code == 200 and again.json()["id"] == order["id"]
    assert order["status"] == "placed" and order["profile_id"] == pid
    assert avail(client, store, "SHOE-42") == {"store-praha-1": 1, "wh-central": 10}  # allocated, still not available
    ref = order["order_ref"]

    # the store marks it ready, then picked up
    for status in ("ready_for_pickup", "picked_up"):
        r = client.post(
            f"/api/commerce/orders/{ref}/status",
            json={"status": status, "location": "store-praha-1"},
            headers=bearer(store),
        )
        assert r.status_code == 200, r.text
        assert r.json()["status"] == status
    stock = client.get(
        "/api/commerce/locations/store-praha-1/stock", params={"sku": "SHOE-42"}, headers=bearer(store)
    ).json()["stock"][0]
    assert (stock["on_hand"], stock["reserved"], stock["allocated"], stock["available"]) == (1, 0, 0, 1)

    # returned in Brno: the shoe is restocked there, the socks were damaged and are recorded apart
    r = client.post(
        f"/api/commerce/orders/{ref}/returns",
        json={
            "location": "store-brno-1",
            "reason": "too small",
            "items": [
                {"sku": "SHOE-42", "quantity": 1, "condition": "sellable"},
                {"sku": "SOCK-1", "quantity": 1, "condition": "damaged"},
            ],
            "idempotency_key": "ret-1",
        },
        headers=bearer(store),
    )
    assert r.status_code == 201, r.text
    assert r.json()["order_status"] == "returned" and r.json()["refund"] == "2685.00"
    assert avail(client, store, "SHOE-42") == {"store-brno-1": 1, "store-praha-1": 1, "wh-central": 10}
    socks = client.get("/api/commerce/availability/SOCK-1", headers=bearer(store)).json()["locations"]
    brno = next(x for x in socks if x["location"] == "store-brno-1")
    assert (brno["available"], brno["damaged"]) == (0, 1)

    # staff see the whole story on the profile: the order with each step, points earned and taken back
    orders = client.get(f"/api/commerce/profiles/{pid}/orders", headers=bearer(store)).json()["orders"]
    assert [o["order_ref"] for o in orders] == [ref]
    assert [h["status"] for h in orders[0]["history"]] == ["placed", "ready_for_pickup", "picked_up", "returned"]
    loyalty = client.get(f"/api/commerce/profiles/{pid}/loyalty", headers=bearer(store)).json()
    assert loyalty["lifetime_earned"] == 268 and loyalty["balance"] == 0
    near = client.get(
        "/api/commerce/availability/SHOE-42/nearest",
        params={"lat": 49.2, "lon": 16.6, "pickup": True},
        headers=bearer(store),
    ).json()["locations"]
    assert [x["code"] for x in near] == ["store-brno-1", "store-praha-1"]

    # every step is on her unified timeline, once, with the channel that acted
    admin = bearer(world.admin_token)
    assert wait_for(lambda: client.get("/api/pipeline/status", headers=admin).json()["lag"] == 0, timeout=20)
    timeline = client.get(f"/api/profiles/{pid}/timeline", params={"limit": 100}, headers=bearer(store)).json()
    steps = [(e["event"], e["channel"]) for e in reversed(timeline["events"]) if e["type"] == "track"]
    assert steps == [
        ("Product Added", "web"),
        ("Product Added", "web"),
        ("Checkout Started", "web"),
        ("Order Completed", "web"),
        ("Order Ready for Pickup", "store"),
        ("Order Picked Up", "store"),
        ("Order Refunded", "store"),
    ]
    placed = next(e for e in timeline["events"] if e["event"] == "Order Completed")
    assert placed["order_id"] == ref and placed["revenue"] == 2685.0
    profile = client.get(f"/api/profiles/{pid}", headers=bearer(store)).json()
    assert profile["computed"]["order_count"] == 1
    assert profile["computed"]["active_cart"] is None  # checked out: nothing abandoned
    assert profile["computed"]["loyalty"] == {"balance": 0, "lifetime_earned": 268, "tier": "basic"}
