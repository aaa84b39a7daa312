"""Bad input answers a clear 4xx and changes nothing."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from omnijourney.store import db
from tests.commerce.helpers import bearer, count, set_stock, setup_catalog, stock
from tests.conftest import World

pytestmark = pytest.mark.server


def snapshot(engine) -> tuple:  # type: ignore[no-untyped-def]
    with db.read(engine) as conn:
        return tuple(
            tuple(conn.execute(sa.text(f"SELECT * FROM {t} ORDER BY 1, 2")).all())
            for t in ("commerce_stock", "commerce_cart_lines", "commerce_reservations", "commerce_orders")
        )


def test_bad_input_is_refused_and_changes_nothing(live_server, client, world: World, engine) -> None:
    setup_catalog(client, world.admin_token)
    auth = bearer(world.agent_token)
    set_stock(engine, "SHOE-42", "store-ostrava", 4)
    set_stock(engine, "SHOE-42", "store-praha-1", 1)
    cart = client.post("/api/commerce/carts", json={"anonymous_id": "bad"}, headers=auth).json()
    client.post(f"/api/commerce/carts/{cart['id']}/items", json={"sku": "SHOE-42"}, headers=auth)
    before = snapshot(engine)

    def refused(method: str, url: str, body: object, status: int, code: str) -> None:
        r = client.request(method, url, json=body, headers=auth)
        assert r.status_code == status, (url, body, r.text)
        assert r.json()["success"] is False and r.json()["code"] == code, r.text
        assert r.json()["message"]

    items = f"/api/commerce/carts/{cart['id']}/items"
    refused("POST", items, {"sku": "NOPE-1"}, 422, "unknown_sku")
    for q in (0, -1, 1000, 10**9, "2", 1.5, True):
        refused("POST", items, {"sku": "SHOE-42", "quantity": q}, 422, "invalid_request")
    refused("POST", items, {"sku": "SHOE-42", "quantity": 999}, 422, "invalid_quantity")  # 1 + 999 > 999
    refused("POST", items, {"sku": "SHOE-42", "colour": "red"}, 422, "invalid_request")
    refused("POST", "/api/commerce/carts", {"anonymous_id": "x", "currency": "XYZ"}, 422, "invalid_request")
    refused("POST", "/api/commerce/carts", {"anonymous_id": "x", "currency": "czkk"}, 422, "invalid_request")
    refused("POST", "/api/commerce/carts", {}, 422, "invalid_request")
    refused(
        "POST",
        "/api/commerce/checkouts",
        {"cart_id": cart["id"], "fulfilment": "click_and_collect", "pickup_location": "store-ostrava"},
        422,
        "pickup_not_offered",
    )
    refused(
        "POST",
        "/api/commerce/checkouts",
        {"cart_id": cart["id"], "fulfilment": "click_and_collect", "pickup_location": "nowhere"},
        422,
        "unknown_location",
    )
    refused(
        "POST", "/api/commerce/checkouts", {"cart_id": cart["id"], "fulfilment": "ship"}, 422, "ship_address_required"
    )
    refused(
        "POST",
        "/api/commerce/checkouts",
        {"cart_id": cart["id"], "fulfilment": "parcel_locker", "pickup_location": "store-praha-1"},
        422,
        "not_a_locker",
    )
    refused(
        "POST",
        "/api/commerce/checkouts",
        {"cart_id": cart["id"], "fulfilment": "parcel_locker"},
        422,
        "pickup_location_required",
    )
    refused("POST", "/api/commerce/checkouts", {"cart_id": cart["id"], "fulfilment": "drone"}, 422, "invalid_request")
    refused("GET", "/api/commerce/carts/abandoned?idle_minutes=-5", None, 422, "invalid_request")
    refused(
        "POST",
        "/api/commerce/checkouts",
        {"cart_id": 999999, "fulfilment": "ship", "ship_address": {}},
        404,
        "not_found",
    )
    refused(
        "POST",
        "/api/commerce/stock",
        {"updates": [{"external_id": "x1", "sku": "SHOE-42", "location": "store-praha-1", "delta": -2}]},
        409,
        "insufficient_stock",
    )
    refused(
        "POST",
        "/api/commerce/stock",
        {"updates": [{"external_id": "x2", "sku": "SHOE-42", "location": "store-praha-1", "on_hand": -1}]},
        422,
        "invalid_request",
    )
    refused(
        "POST",
        "/api/commerce/holds",
        {"sku": "SHOE-42", "location": "store-praha-1", "quantity": 2},
        409,
        "insufficient_stock",
    )
    assert snapshot(engine) == before
    assert count(engine, "SELECT count(*) FROM events") == 1  # only the one cart line added: nothing refused was told

    admin = bearer(world.admin_token)
    bad_prices = {"products": [{"sku": "X-1", "name": "x", "prices": {"ABC": "1.00"}}]}
    r = client.post("/api/commerce/products", json=bad_prices, headers=admin)
    assert r.status_code == 422 and r.json()["code"] == "invalid_request"
    too_precise = {"products": [{"sku": "X-1", "name": "x", "prices": {"CZK": "1.001"}}]}
    assert client.post("/api/commerce/products", json=too_precise, headers=admin).status_code == 422
    unknown_rel = {"products": [{"sku": "X-1", "name": "x", "related": [{"sku": "NOPE", "kind": "accessory"}]}]}
    r = client.post("/api/commerce/products", json=unknown_rel, headers=admin)
    assert r.status_code == 422 and r.json()["code"] == "unknown_sku"
    assert count(engine, "SELECT count(*) FROM commerce_products WHERE sku = 'X-1'") == 0
    # only admins change the catalog
    assert client.post("/api/commerce/products", json=bad_prices, headers=auth).status_code == 403
    assert client.get("/api/commerce/availability/SHOE-42").status_code == 401


def test_expired_reservation_is_refused_at_completion(live_server, client, world: World, engine) -> None:
    setup_catalog(client, world.admin_token)
    auth = bearer(world.agent_token)
    set_stock(engine, "SHOE-42", "store-praha-1", 1)
    cart = client.post("/api/commerce/carts", json={"anonymous_id": "late"}, headers=auth).json()
    client.post(f"/api/commerce/carts/{cart['id']}/items", json={"sku": "SHOE-42"}, headers=auth)
    co = client.post(
        "/api/commerce/checkouts",
        json={"cart_id": cart["id"], "fulfilment": "click_and_collect", "pickup_location": "store-praha-1"},
        headers=auth,
    ).json()
    with db.write(engine) as conn:  # time passes
        conn.execute(sa.text("UPDATE commerce_checkouts SET expires_at = '2000-01-01 00:00:00'"))
        conn.execute(sa.text("UPDATE commerce_reservations SET expires_at = '2000-01-01 00:00:00'"))
    r = client.post(f"/api/commerce/checkouts/{co['id']}/complete", json={"idempotency_key": "late-1"}, headers=auth)
    assert r.status_code == 409 and r.json()["code"] == "reservation_expired"
    assert count(engine, "SELECT count(*) FROM commerce_orders") == 0
    assert client.post("/api/commerce/reservations/sweep", headers=bearer(world.admin_token)).json() == {"released": 1}
    assert stock(engine, "SHOE-42", "store-praha-1")["available"] == 1
    # a new checkout of the same cart works again
    again = client.post(
        "/api/commerce/checkouts",
        json={"cart_id": cart["id"], "fulfilment": "click_and_collect", "pickup_location": "store-praha-1"},
        headers=auth,
    )
    assert again.status_code == 201, again.text
