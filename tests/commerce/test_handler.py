"""Events -> commerce: orders placed elsewhere, cart events, stock events; idempotent and never stalling."""

from __future__ import annotations

import sqlalchemy as sa

from omnijourney.commerce import service
from omnijourney.commerce.config import load_commerce_config
from omnijourney.commerce.handler import CommerceHandler
from omnijourney.pipeline import service as pipeline
from omnijourney.pipeline.worker import run_until_idle
from omnijourney.store import db
from tests.commerce.helpers import count, seed_service, set_stock, stock
from tests.identity.helpers import append, profile_of, source


def handlers() -> list:
    hs = pipeline.default_handlers()
    return hs if any(h.name == "commerce" for h in hs) else [*hs, CommerceHandler()]


def test_events_record_orders_carts_and_stock(engine) -> None:
    seed_service(engine)
    set_stock(engine, "SOCK-1", "store-praha-1", 10)
    pos = source(engine, "pos", "store", True)
    web = source(engine, "web", "web", False)
    order = {
        "type": "track",
        "event": "Order Completed",
        "anonymousId": "till-1",
        "properties": {
            "order_id": "POS-981",
            "revenue": 390.0,
            "currency": "CZK",
            "store_id": "store-praha-1",
            "products": [{"sku": "SOCK-1", "quantity": 2, "price": 195}],
        },
        "context": {"traits": {"loyalty_card": "LC0012345678"}},
    }
    append(engine, pos, "store", [order])
    append(engine, pos, "store", [{**order, "messageId": "resent"}])  # the POS sends it twice
    append(
        engine,
        pos,
        "store",
        [
            {
                "type": "track",
                "event": "Inventory Updated",
                "anonymousId": "pos-sys",
                "properties": {"sku": "SOCK-1", "store_id": "store-praha-1", "delta": -2, "update_id": "till-1-981"},
            },
            {
                "type": "track",
                "event": "Inventory Updated",
                "anonymousId": "pos-sys",
                "properties": {"sku": "SOCK-1", "store_id": "store-praha-1", "delta": -50, "update_id": "bad"},
            },
            {
                "type": "track",
                "event": "Inventory Updated",
                "anonymousId": "pos-sys",
                "properties": {"sku": "NOPE", "store_id": "store-praha-1", "delta": 1},
            },
        ],
    )
    append(
        engine,
        web,
        "web",
        [
            {
                "type": "track",
                "event": "Product Added",
                "anonymousId": "anon-x",
                "properties": {"cart_id": "c-1", "sku": "SHOE-42", "quantity": 1},
                "context": {"device": {"type": "mobile"}},
            },
            {
                "type": "track",
                "event": "Product Added",
                "anonymousId": "anon-x",
                "properties": {"cart_id": "c-1", "product_id": "SOCK-1", "quantity": 2},
            },
            {
                "type": "track",
                "event": "Product Removed",
                "anonymousId": "anon-x",
                "properties": {"cart_id": "c-1", "sku": "SOCK-1", "quantity": 1},
            },
            {
                "type": "track",
                "event": "Product Added",
                "anonymousId": "anon-x",
                "properties": {"cart_id": "c-1", "sku": "UNKNOWN", "quantity": 1},
            },
        ],
    )
    hs = handlers()
    assert run_until_idle(engine, hs, batch=3) == 9  # small batches: every step is its own transaction
    pid = profile_of(engine, "loyalty_card", "LC0012345678")
    with db.read(engine) as conn:
        oid = service.find_order(conn=conn, ref="POS-981")
        o = service.order_view(conn=conn, order_id=oid)
        loyalty = service.loyalty_view(conn=conn, profile_id=pid, config=load_commerce_config())
        cart_id = conn.execute(sa.text("SELECT id FROM commerce_carts WHERE external_id = 'c-1'")).scalar_one()
        cart = service.cart_view(conn=conn, cart_id=cart_id)
        rejected = conn.execute(
            sa.text("SELECT status FROM commerce_stock_updates WHERE external_id = 'bad'")
        ).scalar_one()
    assert (o["origin"], o["channel"], o["store_id"], o["status"], o["total"]) == (
        "event",
        "store",
        "store-praha-1",
        "completed",
        "390.00",
    )
    assert o["profile_id"] == pid and [(x["sku"], x["quantity"]) for x in o["lines"]] == [("SOCK-1", 2)]
    assert count(engine, "SELECT count(*) FROM commerce_orders") == 1
    assert loyalty["balance"] == 39 and len(loyalty["history"]) == 1
    assert {x["sku"]: (x["quantity"], x["device"]) for x in cart["lines"]} == {
        "SHOE-42": (1, "mobile"),
        "SOCK-1": (1, None),
    }
    assert stock(engine, "SOCK-1", "store-praha-1")["on_hand"] == 8 and rejected == "rejected"

    # a rebuild replays the log: nothing is applied twice
    with db.write(engine) as conn:
        pipeline.reset(conn=conn, handlers=hs)
    run_until_idle(engine, hs)
    with db.read(engine) as conn:
        cart = service.cart_view(conn=conn, cart_id=cart_id)
        loyalty = service.loyalty_view(
            conn=conn, profile_id=profile_of(engine, "loyalty_card", "LC0012345678"), config=load_commerce_config()
        )
    assert {x["sku"]: x["quantity"] for x in cart["lines"]} == {"SHOE-42": 1, "SOCK-1": 1}
    assert count(engine, "SELECT count(*) FROM commerce_orders") == 1 and loyalty["balance"] == 39
    assert stock(engine, "SOCK-1", "store-praha-1")["on_hand"] == 8
