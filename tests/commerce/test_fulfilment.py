"""Parcel-locker delivery and order cancellation, on both backends."""

from __future__ import annotations

from typing import Any

import pytest

from omnijourney.commerce import service
from omnijourney.commerce.config import load_commerce_config
from omnijourney.commerce.schemas import LocationIn
from omnijourney.commerce.service import CommerceError
from omnijourney.store import db
from omnijourney.store.base import utcnow
from tests.commerce.helpers import count, seed_service, set_stock, stock
from tests.commerce.test_outbox import commerce_events
from tests.identity.helpers import append, process, profile_of, source

CONFIG = load_commerce_config()
LOCKER = {
    "code": "locker-praha-7",
    "name": "Parcel locker Praha 7",
    "kind": "locker",
    "latitude": 50.1,
    "longitude": 14.43,
    "pickup": True,
    "channels": ["web", "app"],
}


def refused(engine, code: str, fn, **kw: Any) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(CommerceError) as exc, db.write(engine) as conn:
        fn(conn=conn, **kw)
    assert exc.value.code == code, exc.value.message


def cart_with(engine, owner: dict[str, Any], items: dict[str, int]) -> int:  # type: ignore[no-untyped-def]
    now = utcnow()
    with db.write(engine) as conn:
        cart = service.resolve_cart(conn=conn, rules=None, currency="CZK", now=now, **owner)
        assert cart is not None
        for sku, q in items.items():
            service.add_to_cart(
                conn=conn, cart_id=cart, sku=sku, quantity=q, channel="web", device=None, actor=None, now=now
            )
    return cart


def checkout(engine, cart: int, fulfilment: str, **kw: Any) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    with db.write(engine) as conn:
        return service.start_checkout(
            conn=conn,
            cart_id=cart,
            fulfilment=fulfilment,
            pickup_location=kw.get("pickup_location"),
            ship_address=kw.get("ship_address"),
            channel="web",
            now=utcnow(),
            ttl_seconds=600,
        )


def complete(engine, co: dict[str, Any], redeem: int = 0) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    with db.write(engine) as conn:
        order, _ = service.complete_checkout(
            conn=conn,
            checkout_id=co["id"],
            idempotency_key=None,
            redeem_points=redeem,
            rules=None,
            config=CONFIG,
            channel=None,
            actor="test",
            now=utcnow(),
        )
    return order


def move(engine, order: dict[str, Any], status: str, location: str | None = None) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    with db.write(engine) as conn:
        return service.transition_order(
            conn=conn,
            order_id=order["id"],
            status=status,
            actor="staff",
            location=location,
            now=utcnow(),
            config=CONFIG,
        )


def test_parcel_locker_delivery(engine) -> None:
    seed_service(engine)
    with db.write(engine) as conn:
        service.upsert_locations(conn=conn, items=[LocationIn.model_validate(LOCKER).model_dump()], now=utcnow())
    set_stock(engine, "SHOE-42", "wh-central", 3)
    set_stock(engine, "SHOE-42", "store-praha-1", 1)  # stores do not ship: never sourced for a locker
    cart = cart_with(engine, {"anonymous_id": "anon-l"}, {"SHOE-42": 2})
    for where, code in (
        (None, "pickup_location_required"),
        ("nowhere", "unknown_location"),
        ("store-praha-1", "not_a_locker"),
    ):
        refused(
            engine,
            code,
            service.start_checkout,
            cart_id=cart,
            fulfilment="parcel_locker",
            pickup_location=where,
            ship_address=None,
            channel="web",
            now=utcnow(),
            ttl_seconds=600,
        )
    co = checkout(engine, cart, "parcel_locker", pickup_location="locker-praha-7")
    assert co["fulfilment"] == "parcel_locker" and co["pickup_location"] == "locker-praha-7"
    assert [(r["sku"], r["location"], r["quantity"]) for r in co["reservations"]] == [("SHOE-42", "wh-central", 2)]
    order = complete(engine, co)
    assert (order["fulfilment"], order["pickup_location"], order["status"]) == (
        "parcel_locker",
        "locker-praha-7",
        "placed",
    )
    assert stock(engine, "SHOE-42", "wh-central")["allocated"] == 2

    # the parcel must be shipped before it can wait in the locker, and it is never "delivered" to a door
    refused(
        engine,
        "invalid_transition",
        service.transition_order,
        order_id=order["id"],
        status="ready_for_pickup",
        actor=None,
        location="locker-praha-7",
        now=utcnow(),
        config=CONFIG,
    )
    move(engine, order, "shipped", "wh-central")
    s = stock(engine, "SHOE-42", "wh-central")
    assert (s["on_hand"], s["allocated"], s["available"]) == (1, 0, 1)
    refused(
        engine,
        "invalid_transition",
        service.transition_order,
        order_id=order["id"],
        status="delivered",
        actor=None,
        location=None,
        now=utcnow(),
        config=CONFIG,
    )
    refused(
        engine,
        "wrong_store",
        service.transition_order,
        order_id=order["id"],
        status="ready_for_pickup",
        actor=None,
        location="store-praha-1",
        now=utcnow(),
        config=CONFIG,
    )
    move(engine, order, "ready_for_pickup", "locker-praha-7")
    refused(
        engine,
        "invalid_transition",
        service.transition_order,
        order_id=order["id"],
        status="cancelled",
        actor=None,
        location=None,
        now=utcnow(),
        config=CONFIG,
    )
    done = move(engine, order, "picked_up", "locker-praha-7")
    assert done["status"] == "picked_up"
    assert stock(engine, "SHOE-42", "wh-central")["on_hand"] == 1  # consumed once, when shipped
    assert [h["status"] for h in done["history"]] == ["placed", "shipped", "ready_for_pickup", "picked_up"]
    names = [(e, ch) for e, _, ch in commerce_events(engine)][-4:]
    assert names == [
        ("Order Completed", "web"),
        ("Order Shipped", "store"),
        ("Order Ready for Pickup", "store"),
        ("Order Picked Up", "store"),
    ]
    # a locker parcel can be returned at any store
    with db.write(engine) as conn:
        ret, _ = service.create_return(
            conn=conn,
            order_id=order["id"],
            location="store-brno-1",
            items=[{"sku": "SHOE-42", "quantity": 2, "condition": "sellable"}],
            reason="changed my mind",
            refund_minor=None,
            idempotency_key=None,
            channel="store",
            actor=None,
            now=utcnow(),
            config=CONFIG,
        )
    assert ret["order_status"] == "returned" and stock(engine, "SHOE-42", "store-brno-1")["available"] == 2


def test_cancelling_an_order_releases_stock_and_reverses_points(engine) -> None:
    seed_service(engine)
    web = source(engine, "web", "web", False)
    append(engine, web, "web", [{"type": "identify", "userId": "u-c", "traits": {"email": "c@example.com"}}])
    process(engine)
    pid = profile_of(engine, "user_id", "u-c")
    set_stock(engine, "SHOE-42", "wh-central", 5)
    set_stock(engine, "SOCK-1", "store-praha-1", 4)
    first = complete(
        engine,
        checkout(
            engine, cart_with(engine, {"profile_id": pid}, {"SHOE-42": 1}), "ship", ship_address={"city": "Praha"}
        ),
    )
    move(engine, first, "shipped")

    def balance() -> int:
        with db.read(engine) as conn:
            return int(service.loyalty_view(conn=conn, profile_id=pid, config=CONFIG, history=0)["balance"])

    assert balance() == 249
    cart = cart_with(engine, {"profile_id": pid}, {"SOCK-1": 3})
    second = complete(engine, checkout(engine, cart, "click_and_collect", pickup_location="store-praha-1"), redeem=100)
    # 100 points are 10.00 CZK off the 585.00: 575.00 paid earns 57 points
    assert (second["total"], second["discount"]) == ("575.00", "10.00")
    assert balance() == 249 - 100 + 57
    s = stock(engine, "SOCK-1", "store-praha-1")
    assert (s["allocated"], s["available"]) == (3, 1)

    cancelled = move(engine, second, "cancelled", "store-praha-1")
    assert cancelled["status"] == "cancelled"
    s = stock(engine, "SOCK-1", "store-praha-1")
    assert (s["on_hand"], s["allocated"], s["available"]) == (4, 0, 4)
    assert balance() == 249  # the 57 earned taken back, the 100 redeemed given back
    ledger = count(engine, "SELECT count(*) FROM commerce_loyalty_ledger")
    events = len(commerce_events(engine))
    again = move(engine, second, "cancelled")  # a retry: nothing happens twice
    assert again["status"] == "cancelled" and balance() == 249
    assert count(engine, "SELECT count(*) FROM commerce_loyalty_ledger") == ledger
    assert len(commerce_events(engine)) == events
    assert commerce_events(engine)[-1][:2] == ("Order Cancelled", f"oj:order:{second['id']}:cancelled")
    # what has left the warehouse cannot be cancelled any more (it comes back as a return)
    refused(
        engine,
        "invalid_transition",
        service.transition_order,
        order_id=first["id"],
        status="cancelled",
        actor=None,
        location=None,
        now=utcnow(),
        config=CONFIG,
    )
    refused(
        engine,
        "not_returnable",
        service.create_return,
        order_id=second["id"],
        location="store-praha-1",
        items=[{"sku": "SOCK-1", "quantity": 1, "condition": "sellable"}],
        reason="x",
        refund_minor=None,
        idempotency_key=None,
        channel="store",
        actor=None,
        now=utcnow(),
        config=CONFIG,
    )
