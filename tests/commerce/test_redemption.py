"""Points redeemed at checkout are a discount on the order: total, revenue, earned points and refunds
all follow what was paid; cancellation and returns give the redeemed points back."""

from __future__ import annotations

import json
from typing import Any

import pytest
import sqlalchemy as sa

from omnijourney.commerce import service
from omnijourney.commerce.config import load_commerce_config
from omnijourney.commerce.service import CommerceError
from omnijourney.store import db
from omnijourney.store.base import utcnow
from tests.commerce.helpers import seed_service, set_stock
from tests.identity.helpers import append, process, profile_of, source

CONFIG = load_commerce_config()  # CZK: 1 point per 10 CZK earned, a point is worth 10 minor units (0.10 CZK)


def customer(engine: sa.Engine, user: str, points: int) -> int:
    web = source(engine, f"web-{user}", "web", False)
    append(engine, web, "web", [{"type": "identify", "userId": user, "traits": {"email": f"{user}@example.com"}}])
    process(engine)
    pid = profile_of(engine, "user_id", user)
    assert pid is not None
    with db.write(engine) as conn:
        service._credit(
            conn,
            profile_id=pid,
            points=points,
            kind="adjust",
            order_id=None,
            dedupe_key=f"gift:{user}",
            channel="store",
            actor=None,
            now=utcnow(),
        )
    return pid


def place(engine: sa.Engine, pid: int, redeem: int, key: str) -> dict[str, Any]:
    """Shoe (2490.00) + socks (195.00) = 2685.00 CZK, shipped from the warehouse."""
    now = utcnow()
    with db.write(engine) as conn:
        cart = service.resolve_cart(conn=conn, rules=None, profile_id=pid, currency="CZK", now=now)
        assert cart is not None
        for sku in ("SHOE-42", "SOCK-1"):
            service.add_to_cart(
                conn=conn, cart_id=cart, sku=sku, quantity=1, channel="web", device=None, actor=None, now=now
            )
        co = service.start_checkout(
            conn=conn,
            cart_id=cart,
            fulfilment="ship",
            pickup_location=None,
            ship_address={"city": "Praha"},
            channel="web",
            now=now,
            ttl_seconds=600,
        )
        order, created = service.complete_checkout(
            conn=conn,
            checkout_id=co["id"],
            idempotency_key=key,
            redeem_points=redeem,
            rules=None,
            config=CONFIG,
            channel=None,
            actor="test",
            now=now,
        )
    assert created
    return order


def balance(engine: sa.Engine, pid: int) -> int:
    with db.read(engine) as conn:
        return int(service.loyalty_view(conn=conn, profile_id=pid, config=CONFIG, history=0)["balance"])


def placed_event(engine: sa.Engine, order_id: int) -> dict[str, Any]:
    with db.read(engine) as conn:
        row = conn.execute(
            sa.text("SELECT payload FROM events WHERE message_id = :m"), {"m": f"oj:order:{order_id}:placed"}
        ).one()
    payload = row[0] if isinstance(row[0], dict) else json.loads(row[0])
    return payload["properties"]


def move(engine: sa.Engine, order_id: int, *statuses: str) -> None:
    with db.write(engine) as conn:
        for status in statuses:
            service.transition_order(
                conn=conn, order_id=order_id, status=status, actor="t", location=None, now=utcnow(), config=CONFIG
            )


def give_back(engine: sa.Engine, order_id: int, sku: str, key: str) -> dict[str, Any]:
    with db.write(engine) as conn:
        ret, created = service.create_return(
            conn=conn,
            order_id=order_id,
            location="wh-central",
            items=[{"sku": sku, "quantity": 1, "condition": "sellable"}],
            reason="changed mind",
            refund_minor=None,
            idempotency_key=key,
            channel="store",
            actor="t",
            now=utcnow(),
            config=CONFIG,
        )
    assert created
    return ret


def test_redeemed_points_discount_the_order_and_come_back_pro_rata_on_returns(engine) -> None:
    seed_service(engine)
    set_stock(engine, "SHOE-42", "wh-central", 5)
    set_stock(engine, "SOCK-1", "wh-central", 5)
    pid = customer(engine, "u-red", 5000)

    order = place(engine, pid, 3000, "red-1")  # 3000 points x 0.10 CZK = 300.00 CZK off
    assert (order["total_minor"], order["discount"], order["points_redeemed"]) == (238500, "300.00", 3000)
    props = placed_event(engine, order["id"])
    assert props["revenue"] == 2385.0 and props["discount"] == 300.0
    assert props["points_redeemed"] == 3000 and props["points_earned"] == 238  # earned on what was paid
    assert balance(engine, pid) == 5000 - 3000 + 238
    with db.read(engine) as conn:
        assert service.order_view(conn=conn, order_id=order["id"])["discount_minor"] == 30000

    move(engine, order["id"], "paid", "shipped", "delivered")
    # the socks come back: refunded their share of what was paid, and their share of the points
    socks = give_back(engine, order["id"], "SOCK-1", "red-ret-1")
    assert socks["refund_minor"] == 19500 * 238500 // 268500 == 17321
    assert socks["order_status"] == "partially_returned"
    reversed_1 = 238 * 17321 // 238500
    assert balance(engine, pid) == 5000 - 3000 + 238 - reversed_1 + 3000 * 19500 // 268500
    # then the shoe: the last return refunds what is left and gives back every redeemed point
    shoe = give_back(engine, order["id"], "SHOE-42", "red-ret-2")
    assert shoe["refund_minor"] == 238500 - 17321 and shoe["order_status"] == "returned"
    with db.read(engine) as conn:
        o = service.order_view(conn=conn, order_id=order["id"])
        restored = conn.execute(
            sa.text("SELECT sum(points) FROM commerce_loyalty_ledger WHERE order_id = :o AND kind = 'adjust'"),
            {"o": order["id"]},
        ).scalar_one()
    assert o["refunded"] == o["total"] == "2385.00"
    assert restored == 3000
    # every redeemed point back, every earned point taken back: where the customer started
    assert balance(engine, pid) == 5000


def test_redemption_is_capped_at_the_total_and_a_cancel_gives_the_points_back(engine) -> None:
    seed_service(engine)
    set_stock(engine, "SHOE-42", "wh-central", 5)
    set_stock(engine, "SOCK-1", "wh-central", 5)
    pid = customer(engine, "u-cap", 40_000)

    order = place(engine, pid, 40_000, "cap-1")  # 2685.00 CZK is 26850 points: no more are taken
    assert (order["total_minor"], order["points_redeemed"], order["discount"]) == (0, 26850, "2685.00")
    assert placed_event(engine, order["id"])["revenue"] == 0.0
    assert balance(engine, pid) == 40_000 - 26850  # nothing earned on a free order
    move(engine, order["id"], "cancelled")
    assert balance(engine, pid) == 40_000

    # asking for more points than the order needs takes only what it needs, even beyond the balance
    again = place(engine, pid, 50_000, "cap-2")
    assert (again["total_minor"], again["points_redeemed"]) == (0, 26850)
    assert balance(engine, pid) == 40_000 - 26850
    # needing more points than the balance holds is refused and changes nothing
    with db.read(engine) as conn:
        orders = conn.execute(sa.text("SELECT count(*) FROM commerce_orders")).scalar_one()
    with pytest.raises(CommerceError) as exc:
        place(engine, pid, 26850, "cap-3")
    assert exc.value.code == "insufficient_points"
    assert balance(engine, pid) == 40_000 - 26850
    with db.read(engine) as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM commerce_orders")).scalar_one() == orders
