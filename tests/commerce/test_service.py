"""Service-level behaviour on both backends: stock updates, holds and expiry, cart merge, loyalty."""

from __future__ import annotations

from datetime import timedelta

import pytest
import sqlalchemy as sa

from omnijourney.commerce import service
from omnijourney.commerce.config import load_commerce_config
from omnijourney.commerce.service import CommerceError
from omnijourney.store import db
from omnijourney.store.base import utcnow
from tests.commerce.helpers import seed_service, set_stock, stock
from tests.identity.helpers import append, process, profile_of, source

CONFIG = load_commerce_config()


def test_stock_updates_are_idempotent_and_never_oversell(engine) -> None:
    seed_service(engine)
    now = utcnow()
    with db.write(engine) as conn:
        r = service.update_stock(
            conn=conn, external_id="erp-1", sku="SHOE-42", location="wh-central", mode="absolute", quantity=10, now=now
        )
        assert r["status"] == "applied" and r["on_hand_after"] == 10 and not r["duplicate"]
        r = service.update_stock(
            conn=conn, external_id="pos-1", sku="SHOE-42", location="wh-central", mode="delta", quantity=-3, now=now
        )
        assert r["on_hand_after"] == 7
    with db.write(engine) as conn:  # a retry of the same delta changes nothing
        r = service.update_stock(
            conn=conn, external_id="pos-1", sku="SHOE-42", location="wh-central", mode="delta", quantity=-3, now=now
        )
        assert r["duplicate"] and r["on_hand_after"] == 7
    assert stock(engine, "SHOE-42", "wh-central")["on_hand"] == 7
    with db.write(engine) as conn:
        service.hold(
            conn=conn, sku="SHOE-42", location="wh-central", quantity=5, reference="t", ttl_seconds=60, now=now
        )
    with pytest.raises(CommerceError) as exc, db.write(engine) as conn:
        service.update_stock(
            conn=conn, external_id="pos-2", sku="SHOE-42", location="wh-central", mode="delta", quantity=-3, now=now
        )
    assert exc.value.code == "insufficient_stock"
    with pytest.raises(CommerceError), db.write(engine) as conn:
        service.update_stock(
            conn=conn, external_id="cnt-1", sku="SHOE-42", location="wh-central", mode="absolute", quantity=4, now=now
        )
    s = stock(engine, "SHOE-42", "wh-central")
    assert (s["on_hand"], s["reserved"], s["available"]) == (7, 5, 2)
    # the database refuses it too, whatever the code does
    with pytest.raises(sa.exc.IntegrityError), db.write(engine) as conn:
        conn.execute(sa.text("UPDATE commerce_stock SET reserved = 8 WHERE sku = 'SHOE-42'"))


def test_holds_expire_and_are_swept(engine) -> None:
    seed_service(engine)
    set_stock(engine, "SOCK-1", "store-praha-1", 3)
    now = utcnow()
    with db.write(engine) as conn:
        h = service.hold(
            conn=conn, sku="SOCK-1", location="store-praha-1", quantity=2, reference="r", ttl_seconds=60, now=now
        )
    assert stock(engine, "SOCK-1", "store-praha-1")["available"] == 1
    with db.write(engine) as conn:
        assert service.sweep_expired_reservations(conn=conn, now=now + timedelta(seconds=30)) == 0
        assert service.sweep_expired_reservations(conn=conn, now=now + timedelta(seconds=61)) == 1
        assert service.sweep_expired_reservations(conn=conn, now=now + timedelta(seconds=62)) == 0
    assert stock(engine, "SOCK-1", "store-praha-1")["available"] == 3
    with db.read(engine) as conn:
        assert service.reservation(conn=conn, reservation_id=h["id"])["status"] == "expired"


def test_expired_checkout_cannot_complete_and_sweep_releases_it(engine) -> None:
    seed_service(engine)
    set_stock(engine, "SHOE-42", "wh-central", 2)
    now = utcnow()
    with db.write(engine) as conn:
        cart = service.resolve_cart(conn=conn, rules=None, anonymous_id="a1", currency="CZK", now=now)
        service.add_to_cart(
            conn=conn, cart_id=cart, sku="SHOE-42", quantity=2, channel="web", device=None, actor=None, now=now
        )
        co = service.start_checkout(
            conn=conn,
            cart_id=cart,
            fulfilment="ship",
            pickup_location=None,
            ship_address={"city": "Praha"},
            channel="web",
            now=now,
            ttl_seconds=60,
        )
    assert stock(engine, "SHOE-42", "wh-central")["reserved"] == 2
    later = now + timedelta(seconds=61)
    with pytest.raises(CommerceError) as exc, db.write(engine) as conn:
        service.complete_checkout(
            conn=conn,
            checkout_id=co["id"],
            idempotency_key="k",
            redeem_points=0,
            rules=None,
            config=CONFIG,
            channel=None,
            actor=None,
            now=later,
        )
    assert exc.value.code == "reservation_expired"
    with db.write(engine) as conn:
        assert service.sweep_expired_reservations(conn=conn, now=later) == 1
    s = stock(engine, "SHOE-42", "wh-central")
    assert (s["reserved"], s["available"]) == (0, 2)
    with db.read(engine) as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM commerce_orders")).scalar_one() == 0
        assert service.get_checkout(conn=conn, checkout_id=co["id"], now=later)["status"] == "expired"


def test_anonymous_carts_merge_into_the_profile_cart_by_the_rule(engine) -> None:
    seed_service(engine)
    web = source(engine, "web", "web", False)
    t0 = utcnow() - timedelta(hours=1)
    with db.write(engine) as conn:
        mobile = service.resolve_cart(conn=conn, rules=None, anonymous_id="anon-m", currency="CZK", now=t0)
        service.add_to_cart(
            conn=conn, cart_id=mobile, sku="SHOE-42", quantity=1, channel="web", device="mobile", actor=None, now=t0
        )
        service.add_to_cart(
            conn=conn, cart_id=mobile, sku="SOCK-1", quantity=2, channel="web", device="mobile", actor=None, now=t0
        )
        desktop = service.resolve_cart(conn=conn, rules=None, anonymous_id="anon-d", currency="CZK", now=t0)
        later = t0 + timedelta(minutes=5)
        service.add_to_cart(
            conn=conn, cart_id=desktop, sku="SOCK-1", quantity=3, channel="web", device="desktop", actor=None, now=later
        )
        service.add_to_cart(
            conn=conn,
            cart_id=desktop,
            sku="SPRAY-1",
            quantity=1,
            channel="app",
            device="desktop",
            actor=None,
            now=later,
        )
    append(
        engine,
        web,
        "web",
        [
            {"type": "identify", "anonymousId": "anon-m", "traits": {"email": "eva@example.com"}},
            {"type": "identify", "userId": "u-eva", "anonymousId": "anon-d", "traits": {"email": "eva@example.com"}},
        ],
    )
    process(engine)
    pid = profile_of(engine, "email", "eva@example.com")
    assert pid is not None
    from omnijourney.identity.rules import load_rules

    with db.write(engine) as conn:
        merged = service.resolve_cart(
            conn=conn, rules=load_rules(), anonymous_id="anon-d", currency="CZK", now=utcnow()
        )
        again = service.resolve_cart(conn=conn, rules=None, profile_id=pid, currency="CZK", now=utcnow())
        view = service.cart_view(conn=conn, cart_id=merged)
    assert merged == again and merged in (mobile, desktop)
    lines = {line["sku"]: line for line in view["lines"]}
    assert {k: v["quantity"] for k, v in lines.items()} == {"SHOE-42": 1, "SOCK-1": 3, "SPRAY-1": 1}
    assert lines["SOCK-1"]["device"] == "mobile"  # added first on mobile; quantity is the larger, not the sum
    assert lines["SPRAY-1"]["channel"] == "app"
    assert view["profile_id"] == pid and view["value_minor"] == 249000 + 3 * 19500 + 14950
    with db.read(engine) as conn:
        statuses = dict(conn.execute(sa.text("SELECT id, status FROM commerce_carts")).all())
    assert sorted(statuses.values()) == ["active", "merged"]


def test_loyalty_is_credited_once_per_order_and_never_negative(engine) -> None:
    seed_service(engine)
    web = source(engine, "web", "web", False)
    append(engine, web, "web", [{"type": "identify", "userId": "u-1", "traits": {"email": "a@example.com"}}])
    process(engine)
    pid = profile_of(engine, "user_id", "u-1")
    now = utcnow()
    with db.write(engine) as conn:
        for _ in range(2):
            service._earn_for_order(conn, pid, 77, 250000, "CZK", CONFIG.loyalty, "web", now)
        view = service.loyalty_view(conn=conn, profile_id=pid, config=CONFIG)
    assert view["balance"] == 250 and view["lifetime_earned"] == 250 and len(view["history"]) == 1
    with pytest.raises(CommerceError) as exc, db.write(engine) as conn:
        service.redeem_loyalty(
            conn=conn,
            profile_id=pid,
            points=251,
            dedupe_key=None,
            order_id=None,
            channel="store",
            actor=None,
            now=now,
            config=CONFIG,
        )
    assert exc.value.code == "insufficient_points"
    with db.write(engine) as conn:
        for _ in range(2):  # the same key twice redeems once
            out = service.redeem_loyalty(
                conn=conn,
                profile_id=pid,
                points=100,
                dedupe_key="r-1",
                order_id=None,
                channel="store",
                actor=None,
                now=now,
                config=CONFIG,
            )
    assert out["balance"] == 150 and out["tier"] == "basic"


def test_the_background_sweeper_releases_expired_holds_without_a_checkout(engine) -> None:
    from omnijourney.commerce.sweeper import ReservationSweeper, sweep_once
    from tests.conftest import wait_for

    seed_service(engine)
    set_stock(engine, "SOCK-1", "store-praha-1", 3)
    with db.write(engine) as conn:
        for n in range(2):
            service.hold(
                conn=conn,
                sku="SOCK-1",
                location="store-praha-1",
                quantity=1,
                reference=f"r{n}",
                ttl_seconds=60,
                now=utcnow() - timedelta(seconds=61 if n == 0 else 0),
            )
    assert stock(engine, "SOCK-1", "store-praha-1")["available"] == 1
    sweeper = ReservationSweeper(engine, interval=0.05)
    sweeper.start()
    try:
        assert wait_for(lambda: stock(engine, "SOCK-1", "store-praha-1")["available"] == 2, timeout=10)
    finally:
        sweeper.stop()
    assert sweep_once(engine) == 0  # the other hold has not expired
    assert stock(engine, "SOCK-1", "store-praha-1")["reserved"] == 1
