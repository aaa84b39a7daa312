"""The commerce API's success paths and the rules around them, over HTTP on both databases: catalog
CSV import, locations, stock, holds, cart edits by agents, checkout cancel / replace, network click &
collect, the order lifecycle, returns (of POS orders, by mail, refunds), loyalty tiers and redemption.
Few tests, each walking one area, so the server is started rarely."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from omnijourney.store import db
from tests.commerce.helpers import LOCATIONS, bearer, count, set_stock, setup_catalog, staff_token, stock
from tests.commerce.test_outbox import commerce_events, timeline
from tests.conftest import World, wait_for
from tests.identity.helpers import append, process, profile_of, source

pytestmark = pytest.mark.server

CSV = """sku,name,product_id,category,brand,price_CZK,price_EUR,attr_size,attr_colour,alternatives,bundle_parts
BOOT-40,Hiking boot 40,BOOT,boots,Hory,1990.00,79.90,40,brown,BOOT-41,LACE-1
BOOT-41,Hiking boot 41,BOOT,boots,Hory,1990.00,79.90,41,brown,,LACE-1
LACE-1,Spare laces,,care,Hory,49.00,,,,,
"""


def ok(r: httpx.Response, status: int = 200) -> Any:
    assert r.status_code == status, r.text
    return r.json()


def refused(r: httpx.Response, status: int, code: str) -> None:
    assert r.status_code == status, r.text
    body = r.json()
    assert body["success"] is False and body["code"] == code and body["message"], body


def lag_zero(client: httpx.Client, world: World) -> bool:
    return client.get("/api/pipeline/status", headers=bearer(world.admin_token)).json()["lag"] == 0


def test_catalog_locations_stock_holds_and_agent_cart_edits(client, world: World, engine) -> None:
    admin, agent = bearer(world.admin_token), bearer(world.agent_token)
    setup_catalog(client, world.admin_token)

    # catalog CSV: import, then an update changes a price; the product shows prices, variants, attributes, related
    csv_headers = {**admin, "Content-Type": "text/csv"}
    assert ok(client.post("/api/commerce/products/import.csv", content=CSV, headers=csv_headers)) == {"imported": 3}
    updated = CSV.replace(
        "BOOT-40,Hiking boot 40,BOOT,boots,Hory,1990.00", "BOOT-40,Hiking boot 40,BOOT,boots,Hory,1790.00"
    )
    ok(client.post("/api/commerce/products/import.csv", content=updated, headers=csv_headers))
    boot = ok(client.get("/api/commerce/products/BOOT-40", headers=agent))
    assert {c: p["amount"] for c, p in boot["prices"].items()} == {"CZK": "1790.00", "EUR": "79.90"}
    assert boot["prices"]["CZK"]["minor"] == 179000
    assert boot["variants"] == ["BOOT-40", "BOOT-41"] and boot["product_id"] == "BOOT"
    assert boot["attributes"] == {"size": "40", "colour": "brown"}
    assert {k: [x["sku"] for x in v] for k, v in boot["related"].items()} == {
        "alternative": ["BOOT-41"],
        "bundle_part": ["LACE-1"],
    }
    lace = ok(client.get("/api/commerce/products/LACE-1", headers=agent))
    assert lace["variants"] == ["LACE-1"] and lace["prices"] == {"CZK": {"amount": "49.00", "minor": 4900}}
    refused(client.get("/api/commerce/products/NOPE", headers=agent), 404, "not_found")

    # locations: address, opening hours, ships, pickup, channels
    praha = {**LOCATIONS[1], "address": {"street": "Na Příkopě 1", "city": "Praha", "country": "CZ"}}
    ok(client.put("/api/commerce/locations", json={"locations": [praha]}, headers=admin))
    codes = [loc["code"] for loc in ok(client.get("/api/commerce/locations", headers=agent))["locations"]]
    assert codes == sorted(x["code"] for x in LOCATIONS)
    loc = ok(client.get("/api/commerce/locations/store-praha-1", headers=agent))
    assert loc["address"]["city"] == "Praha" and loc["opening_hours"] == {"mon": [["09:00", "20:00"]]}
    assert (loc["ships"], loc["pickup"], loc["channels"], loc["kind"]) == (False, True, ["store"], "store")
    wh = ok(client.get("/api/commerce/locations/wh-central", headers=agent))
    assert (wh["ships"], wh["pickup"], wh["channels"]) == (True, False, ["web", "app"])
    refused(client.get("/api/commerce/locations/nowhere", headers=agent), 404, "not_found")

    # stock from POS / ERP: an absolute count and a delta, each once per external id
    updates = {
        "updates": [
            {"external_id": "erp-1", "sku": "BOOT-40", "location": "store-praha-1", "on_hand": 5},
            {"external_id": "pos-1", "sku": "BOOT-40", "location": "store-praha-1", "delta": -1},
        ]
    }
    first = ok(client.post("/api/commerce/stock", json=updates, headers=agent))["results"]
    assert [(x["status"], x["duplicate"]) for x in first] == [("applied", False), ("applied", False)]
    again = ok(client.post("/api/commerce/stock", json=updates, headers=agent))["results"]
    assert all(x["duplicate"] for x in again)
    assert stock(engine, "BOOT-40", "store-praha-1")["on_hand"] == 4

    # an in-store hold takes units out of availability until it is released
    hold = ok(
        client.post(
            "/api/commerce/holds",
            json={"sku": "BOOT-40", "location": "store-praha-1", "quantity": 3, "reference": "fitting"},
            headers=agent,
        ),
        201,
    )
    assert hold["status"] == "active" and stock(engine, "BOOT-40", "store-praha-1")["available"] == 1
    assert ok(client.delete(f"/api/commerce/holds/{hold['id']}", headers=agent))["status"] == "released"
    assert stock(engine, "BOOT-40", "store-praha-1")["available"] == 4
    refused(client.delete("/api/commerce/holds/99999", headers=agent), 404, "not_found")

    # a cart edited by agents: set a quantity in the store, remove a line from the call centre
    cart = ok(client.post("/api/commerce/carts", json={"anonymous_id": "kiosk-1"}, headers=agent))
    items = f"/api/commerce/carts/{cart['id']}/items"
    ok(client.post(items, json={"sku": "BOOT-40", "channel": "app", "device": "phone"}, headers=agent))
    ok(client.post(items, json={"sku": "LACE-1"}, headers=agent))
    view = ok(client.put(f"{items}/BOOT-40", json={"quantity": 2, "channel": "store"}, headers=agent))
    assert [(x["sku"], x["quantity"]) for x in view["lines"]] == [("BOOT-40", 2), ("LACE-1", 1)]
    assert view["value"] == "3629.00"
    view = ok(client.delete(f"{items}/LACE-1", params={"channel": "call_center", "device": "headset"}, headers=agent))
    assert [x["sku"] for x in view["lines"]] == ["BOOT-40"]
    refused(client.delete(f"{items}/BOOT-40", params={"channel": "pigeon"}, headers=agent), 422, "invalid_request")
    assert ok(client.get(f"/api/commerce/carts/{cart['id']}", headers=agent))["lines"][0]["quantity"] == 2
    changes = ok(client.get(f"/api/commerce/carts/{cart['id']}/changes", headers=agent))["changes"]
    newest = changes[0]
    assert (newest["sku"], newest["channel"], newest["device"]) == ("LACE-1", "call_center", "headset")
    assert [c["channel"] for c in changes] == ["call_center", "store", "web", "app"]
    removed = [e for e in commerce_events(engine) if e[0] == "Product Removed"]
    assert [e[2] for e in removed] == ["call_center"]  # on the timeline as the call centre's step


def test_checkout_cancel_replace_network_pickup_and_the_order_lifecycle(client, world: World, engine) -> None:
    admin, agent = bearer(world.admin_token), bearer(world.agent_token)
    store = bearer(staff_token(engine))
    setup_catalog(client, world.admin_token)
    brno = {**LOCATIONS[2], "pickup_sourcing": "network"}
    ok(client.put("/api/commerce/locations", json={"locations": [brno]}, headers=admin))
    set_stock(engine, "SHOE-42", "wh-central", 3)  # none in the stores
    web = source(engine, "web", "web", False)
    append(engine, web, "web", [{"type": "identify", "userId": "u-life", "traits": {"email": "life@example.com"}}])
    process(engine)
    pid = profile_of(engine, "user_id", "u-life")

    def cart_with_shoe(owner: dict[str, Any]) -> int:
        cart = ok(client.post("/api/commerce/carts", json=owner, headers=agent))
        ok(client.post(f"/api/commerce/carts/{cart['id']}/items", json={"sku": "SHOE-42"}, headers=agent))
        return int(cart["id"])

    def checkout(cart: int, **body: Any) -> httpx.Response:
        return client.post("/api/commerce/checkouts", json={"cart_id": cart, **body}, headers=agent)

    cart = cart_with_shoe({"profile_id": pid})
    # a store that picks up from its own stock only has none; Brno sources from the network (a transfer)
    refused(checkout(cart, fulfilment="click_and_collect", pickup_location="store-praha-1"), 409, "insufficient_stock")
    first = ok(checkout(cart, fulfilment="click_and_collect", pickup_location="store-brno-1"), 201)
    assert [(r["sku"], r["location"]) for r in first["reservations"]] == [("SHOE-42", "wh-central")]
    seen = ok(client.get(f"/api/commerce/checkouts/{first['id']}", headers=agent))
    assert (seen["status"], seen["pickup_location"], seen["total"]) == ("open", "store-brno-1", "2490.00")
    assert stock(engine, "SHOE-42", "wh-central")["reserved"] == 1
    # a new checkout for the same cart replaces the open one and releases its reservation
    second = ok(checkout(cart, fulfilment="ship", ship_address={"city": "Brno"}), 201)
    assert ok(client.get(f"/api/commerce/checkouts/{first['id']}", headers=agent))["status"] == "cancelled"
    assert stock(engine, "SHOE-42", "wh-central")["reserved"] == 1
    # cancelling releases the reservation; completing a cancelled checkout is refused
    cancelled = ok(client.post(f"/api/commerce/checkouts/{second['id']}/cancel", headers=agent))
    assert cancelled["status"] == "cancelled" and cancelled["reservations"][0]["status"] == "released"
    assert stock(engine, "SHOE-42", "wh-central")["available"] == 3
    refused(
        client.post(f"/api/commerce/checkouts/{second['id']}/complete", json={}, headers=agent),
        409,
        "reservation_expired",
    )
    refused(client.get("/api/commerce/checkouts/99999", headers=agent), 404, "not_found")

    # network click & collect: the line records where the units come from
    co = ok(checkout(cart, fulfilment="click_and_collect", pickup_location="store-brno-1"), 201)
    order = ok(
        client.post(f"/api/commerce/checkouts/{co['id']}/complete", headers={**agent, "Idempotency-Key": "n-1"}), 201
    )
    assert [(x["sku"], x["location"]) for x in order["lines"]] == [("SHOE-42", "wh-central")]
    assert order["pickup_location"] == "store-brno-1"
    status = f"/api/commerce/orders/{order['order_ref']}/status"
    # only the pickup store marks it ready, and it must say which store it is
    refused(client.post(status, json={"status": "ready_for_pickup"}, headers=store), 422, "location_required")
    refused(
        client.post(status, json={"status": "ready_for_pickup", "location": "store-praha-1"}, headers=store),
        409,
        "wrong_store",
    )
    for step in ("ready_for_pickup", "picked_up"):
        assert (
            ok(client.post(status, json={"status": step, "location": "store-brno-1"}, headers=store))["status"] == step
        )
    s = stock(engine, "SHOE-42", "wh-central")
    assert (s["on_hand"], s["allocated"], s["available"]) == (2, 0, 2)  # consumed at the source

    # shipped order: paid, shipped, delivered, each on the customer's timeline
    cart = cart_with_shoe({"profile_id": pid})
    co = ok(checkout(cart, fulfilment="ship", ship_address={"city": "Brno"}), 201)
    shipped = ok(client.post(f"/api/commerce/checkouts/{co['id']}/complete", json={}, headers=agent), 201)
    status = f"/api/commerce/orders/{shipped['order_ref']}/status"
    refused(client.post(status, json={"status": "delivered"}, headers=agent), 409, "invalid_transition")
    for step in ("paid", "shipped", "delivered"):
        assert ok(client.post(status, json={"status": step}, headers=agent))["status"] == step
    done = ok(client.get(f"/api/commerce/orders/{shipped['order_ref']}", headers=agent))
    assert [h["status"] for h in done["history"]] == ["placed", "paid", "shipped", "delivered"]
    assert wait_for(lambda: lag_zero(client, world), timeout=20)
    ref = shipped["order_ref"]
    steps = [e["event"] for e in timeline(engine, pid) if (e.get("properties") or {}).get("order_id") == ref]
    assert steps == ["Order Completed", "Order Paid", "Order Shipped", "Order Delivered"]


def test_returns_event_orders_and_loyalty_over_the_api(client, world: World, engine) -> None:
    agent = bearer(world.agent_token)
    setup_catalog(client, world.admin_token)
    pos = source(engine, "pos-till", "store", True)

    def pos_order(ref: str, revenue: float, products: list[dict[str, Any]]) -> None:
        props = {"order_id": ref, "revenue": revenue, "currency": "CZK", "store_id": "store-praha-1"}
        append(
            engine,
            pos,
            "store",
            [
                {
                    "type": "track",
                    "event": "Order Completed",
                    "userId": "u-pos",
                    "properties": {**props, "products": products},
                }
            ],
        )
        process(engine)

    pos_order(
        "POS-1",
        2880.0,
        [{"sku": "SOCK-1", "quantity": 2, "price": 195.0}, {"sku": "SHOE-42", "quantity": 1, "price": 2490.0}],
    )
    pid = profile_of(engine, "user_id", "u-pos")
    loyalty = f"/api/commerce/profiles/{pid}/loyalty"
    assert (ok(client.get(loyalty, headers=agent))["balance"], ok(client.get(loyalty, headers=agent))["tier"]) == (
        288,
        "basic",
    )
    # the POS order is in the customer's order history, marked with its origin
    orders = ok(client.get(f"/api/commerce/profiles/{pid}/orders", headers=agent))["orders"]
    assert [(o["order_ref"], o["origin"], o["status"], o["channel"]) for o in orders] == [
        ("POS-1", "event", "completed", "store")
    ]
    assert orders[0]["store_id"] == "store-praha-1" and orders[0]["source_id"] == pos

    returns = "/api/commerce/orders/POS-1/returns"
    sock = [{"sku": "SOCK-1", "quantity": 1, "condition": "sellable"}]
    before = count(engine, "SELECT count(*) FROM commerce_returns")
    # no idempotency key: refused (a retry must never restock twice), nothing changed
    refused(
        client.post(returns, json={"location": "store-brno-1", "reason": "r", "items": sock}, headers=agent),
        400,
        "idempotency_key_required",
    )
    refused(
        client.post(
            returns,
            json={
                "location": "store-brno-1",
                "reason": "r",
                "items": [{**sock[0], "sku": "SPRAY-1"}],
                "idempotency_key": "x1",
            },
            headers=agent,
        ),
        422,
        "not_in_order",
    )
    refused(
        client.post(
            returns,
            json={
                "location": "store-brno-1",
                "reason": "r",
                "items": [{**sock[0], "quantity": 3}],
                "idempotency_key": "x2",
            },
            headers=agent,
        ),
        422,
        "not_in_order",
    )
    refused(
        client.post(
            returns,
            json={
                "location": "store-brno-1",
                "reason": "r",
                "items": sock,
                "refund": "2880.01",
                "idempotency_key": "x3",
            },
            headers=agent,
        ),
        422,
        "refund_too_large",
    )
    refused(
        client.post(
            returns, json={"mode": "mail", "reason": "r", "items": sock, "idempotency_key": "x4"}, headers=agent
        ),
        422,
        "location_required",  # no default returns location configured
    )
    assert count(engine, "SELECT count(*) FROM commerce_returns") == before == 0
    assert stock(engine, "SOCK-1", "store-brno-1")["on_hand"] == 0

    # one sock in Brno with an explicit refund; a retry with the key in the header answers the same return
    body = {"location": "store-brno-1", "reason": "worn once", "items": sock, "refund": "150.00"}
    first = client.post(returns, json=body, headers={**agent, "Idempotency-Key": "pos-1-ret-1"})
    assert first.status_code == 201, first.text
    assert (first.json()["refund"], first.json()["order_status"]) == ("150.00", "partially_returned")
    again = client.post(returns, json=body, headers={**agent, "Idempotency-Key": "pos-1-ret-1"})
    assert again.status_code == 200 and again.json()["id"] == first.json()["id"]
    assert stock(engine, "SOCK-1", "store-brno-1")["on_hand"] == 1
    # the rest by mail, received at the warehouse: the order is returned, the shoe restocked there
    rest = ok(
        client.post(
            returns,
            json={
                "mode": "mail",
                "location": "wh-central",
                "reason": "parcel",
                "items": [sock[0], {"sku": "SHOE-42", "quantity": 1, "condition": "damaged"}],
                "idempotency_key": "pos-1-ret-2",
            },
            headers=agent,
        ),
        201,
    )
    assert (rest["order_status"], rest["channel"], rest["location"], rest["refund"]) == (
        "returned",
        "other",
        "wh-central",
        "2685.00",
    )
    s = stock(engine, "SHOE-42", "wh-central")
    assert (s["on_hand"], s["damaged"]) == (0, 1) and stock(engine, "SOCK-1", "wh-central")["on_hand"] == 1
    order = ok(client.get("/api/commerce/orders/POS-1", headers=agent))
    assert (order["status"], order["refunded"]) == ("returned", "2835.00")
    assert order["history"][-1]["detail"]["mode"] == "mail"
    refused(client.post(returns, json={**body, "idempotency_key": "pos-1-ret-3"}, headers=agent), 409, "not_returnable")
    # refunds took back the points earned on them (2835 of 2880: 283 of 288)
    assert ok(client.get(loyalty, headers=agent))["balance"] == 288 - 288 * 15000 // 288000 - 288 * 268500 // 288000

    # tiers by lifetime points: silver from 1000, gold from 5000 (returns do not lower the lifetime)
    pos_order("POS-2", 8000.0, [{"sku": "SHOE-42", "quantity": 1, "price": 8000.0}])
    view = ok(client.get(loyalty, headers=agent))
    assert (view["lifetime_earned"], view["tier"]) == (1088, "silver")
    pos_order("POS-3", 40000.0, [{"sku": "SHOE-42", "quantity": 1, "price": 40000.0}])
    view = ok(client.get(loyalty, headers=agent))
    assert (view["lifetime_earned"], view["tier"]) == (5088, "gold")

    # redeemed over HTTP in the store, once per key, never below zero
    redeem = f"/api/commerce/profiles/{pid}/loyalty/redeem"
    balance = view["balance"]
    out = ok(client.post(redeem, json={"points": 500, "idempotency_key": "till-1"}, headers=agent))
    assert (out["balance"], out["duplicate"]) == (balance - 500, False)
    out = ok(client.post(redeem, json={"points": 500, "idempotency_key": "till-1"}, headers=agent))
    assert (out["balance"], out["duplicate"]) == (balance - 500, True)
    refused(
        client.post(redeem, json={"points": balance, "idempotency_key": "till-2"}, headers=agent),
        409,
        "insufficient_points",
    )
    refused(client.post(redeem, json={"points": 0}, headers=agent), 422, "invalid_request")
    assert ok(client.get(loyalty, headers=agent))["balance"] == balance - 500
    with db.read(engine) as conn:
        redeemed = conn.execute(
            sa.text("SELECT count(*) FROM commerce_loyalty_ledger WHERE kind = 'redeem' AND dedupe_key = :k"),
            {"k": "redeem:key:till-1"},
        ).scalar_one()
    assert redeemed == 1
