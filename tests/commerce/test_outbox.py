"""Commerce changes become events in the log, in the change's transaction: on the customer's timeline,
once each, never applied a second time by the commerce handler, not even after a rebuild."""

from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy as sa

from omnijourney.commerce import events, service
from omnijourney.commerce.config import load_commerce_config
from omnijourney.commerce.service import CommerceError
from omnijourney.identity import service as identity
from omnijourney.pipeline import service as pipeline
from omnijourney.profiles import service as profiles
from omnijourney.profiles.config import load_profile_config
from omnijourney.store import db, dialect
from omnijourney.store.base import utcnow
from tests.commerce.helpers import count, seed_service, set_stock, stock
from tests.identity.helpers import append, process, profile_of, source

CONFIG = load_commerce_config()


def commerce_events(engine) -> list[tuple[str, str, str]]:  # type: ignore[no-untyped-def]
    with db.read(engine) as conn:
        sid = events.internal_source_id(conn, create=False)
        return [
            (r.event, r.message_id, r.channel)
            for r in conn.execute(
                sa.text("SELECT event, message_id, channel FROM events WHERE source_id = :s ORDER BY id"), {"s": sid}
            )
        ]


def timeline(engine, pid: int) -> list[dict[str, Any]]:  # type: ignore[no-untyped-def]
    with db.read(engine) as conn:
        members = identity.members(conn=conn, root=identity.canonical_id(conn=conn, profile_id=pid))
        items, _ = profiles.timeline(conn=conn, member_ids=members, limit=500)
    return list(reversed(items))


def state(engine) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    return {
        "orders": count(engine, "SELECT count(*) FROM commerce_orders"),
        "lines": count(engine, "SELECT count(*) FROM commerce_order_lines"),
        "ledger": count(engine, "SELECT count(*) FROM commerce_loyalty_ledger"),
        "balance": count(engine, "SELECT coalesce(sum(balance), 0) FROM commerce_loyalty_accounts"),
        "cart_lines": count(engine, "SELECT count(*) FROM commerce_cart_lines"),
        "changes": count(engine, "SELECT count(*) FROM commerce_cart_changes"),
        "events": count(engine, "SELECT count(*) FROM events"),
        "stock": stock(engine, "SHOE-42", "store-brno-1"),
    }


def test_api_changes_are_on_the_timeline_once_and_never_applied_twice(engine) -> None:
    seed_service(engine)
    set_stock(engine, "SHOE-42", "store-praha-1", 3)
    set_stock(engine, "SOCK-1", "store-praha-1", 5)
    web = source(engine, "web", "web", False)
    append(
        engine,
        web,
        "web",
        [{"type": "identify", "userId": "u-eva", "anonymousId": "anon-eva", "traits": {"email": "eva@example.com"}}],
    )
    process(engine)
    pid = profile_of(engine, "user_id", "u-eva")
    assert pid is not None
    now = utcnow()
    with db.write(engine) as conn:
        cart = service.resolve_cart(conn=conn, rules=None, profile_id=pid, currency="CZK", now=now)
        assert cart is not None
        for sku, q in (("SHOE-42", 1), ("SOCK-1", 2)):
            service.add_to_cart(
                conn=conn, cart_id=cart, sku=sku, quantity=q, channel="app", device="mobile", actor=None, now=now
            )
        service.set_cart_quantity(
            conn=conn, cart_id=cart, sku="SOCK-1", quantity=1, channel="call_center", device=None, actor=None, now=now
        )
        co = service.start_checkout(
            conn=conn,
            cart_id=cart,
            fulfilment="click_and_collect",
            pickup_location="store-praha-1",
            ship_address=None,
            channel="web",
            now=now,
            ttl_seconds=600,
        )
    for attempt in range(2):  # a retried completion answers with the same order and appends nothing
        with db.write(engine) as conn:
            order, created = service.complete_checkout(
                conn=conn,
                checkout_id=co["id"],
                idempotency_key="eva-1",
                redeem_points=0,
                rules=None,
                config=CONFIG,
                channel=None,
                actor="test",
                now=now,
            )
        assert created is (attempt == 0)
    with db.write(engine) as conn:
        for status in ("ready_for_pickup", "picked_up", "picked_up"):  # the repeat is a no-op
            service.transition_order(
                conn=conn,
                order_id=order["id"],
                status=status,
                actor="staff",
                location="store-praha-1",
                now=now,
                config=CONFIG,
            )
        service.create_return(
            conn=conn,
            order_id=order["id"],
            location="store-brno-1",
            items=[{"sku": "SHOE-42", "quantity": 1, "condition": "sellable"}],
            reason="too small",
            refund_minor=None,
            idempotency_key="ret-eva",
            channel="store",
            actor="staff",
            now=now,
            config=CONFIG,
        )
        service.redeem_loyalty(
            conn=conn,
            profile_id=pid,
            points=5,
            dedupe_key="redeem:key:eva-r1",
            order_id=None,
            channel="store",
            actor="staff",
            now=now,
            config=CONFIG,
        )
    process(engine)

    oid = order["id"]
    ref = order["order_ref"]
    assert commerce_events(engine) == [
        ("Product Added", "oj:cart-change:1", "app"),
        ("Product Added", "oj:cart-change:2", "app"),
        ("Product Removed", "oj:cart-change:3", "call_center"),
        ("Checkout Started", f"oj:checkout:{co['id']}:started", "web"),
        ("Order Completed", f"oj:order:{oid}:placed", "web"),
        ("Order Ready for Pickup", f"oj:order:{oid}:ready_for_pickup", "store"),
        ("Order Picked Up", f"oj:order:{oid}:picked_up", "store"),
        ("Order Refunded", "oj:return:1", "store"),
        ("Loyalty Points Redeemed", f"oj:loyalty:{_redeem_entry(engine)}", "store"),
    ]
    seen = timeline(engine, pid)
    ours = [e for e in seen if e["event"] != "Identify" and e["type"] == "track"]
    assert [e["event"] for e in ours] == [name for name, _, _ in commerce_events(engine)]
    completed = [e for e in seen if e["event"] == "Order Completed"]
    assert len(completed) == 1 and completed[0]["order_id"] == ref
    props = completed[0]["properties"]
    assert props["revenue"] == 2685.0 and props["points_earned"] == 268 and props["fulfilment"] == "click_and_collect"
    assert [(p["sku"], p["quantity"], p["location"]) for p in props["products"]] == [
        ("SHOE-42", 1, "store-praha-1"),
        ("SOCK-1", 1, "store-praha-1"),
    ]
    added = next(e for e in seen if e["event"] == "Product Added")
    assert added["cart_id"] == str(cart) and added["properties"]["sku"] == "SHOE-42"
    refunded = next(e for e in seen if e["event"] == "Order Refunded")
    assert refunded["order_id"] == ref and refunded["properties"]["location_id"] == "store-brno-1"
    assert refunded["properties"]["status"] == "partially_returned"
    # one order, counted once in the profile, and the cart not changed by its own events
    before = state(engine)
    assert before["orders"] == 1 and before["lines"] == 2 and before["cart_lines"] == 2
    with db.read(engine) as conn:
        view = profiles.profile_360(conn=conn, profile_id=pid, config=load_profile_config())
    assert view is not None and view["computed"]["order_count"] == 1

    # a rebuild replays the log, our events included: nothing commerce holds changes, nothing is added twice
    with db.write(engine) as conn:
        pipeline.reset(conn=conn, handlers=pipeline.default_handlers())
    process(engine)
    assert state(engine) == before
    assert [e["event"] for e in timeline(engine, pid)] == [e["event"] for e in seen]

    # appending the same change again (a retry after an unknown outcome) is skipped by its message id
    with db.write(engine) as conn:
        service._emit_order(conn, oid, "placed", now, channel="web")
    assert state(engine)["events"] == before["events"]


def _redeem_entry(engine) -> int:  # type: ignore[no-untyped-def]
    return count(engine, "SELECT id FROM commerce_loyalty_ledger WHERE dedupe_key = 'redeem:key:eva-r1'")


def test_a_refused_change_appends_nothing(engine) -> None:
    seed_service(engine)
    set_stock(engine, "SHOE-42", "store-praha-1", 1)
    now = utcnow()
    with db.write(engine) as conn:
        cart = service.resolve_cart(conn=conn, rules=None, anonymous_id="anon-x", currency="CZK", now=now)
        service.add_to_cart(
            conn=conn, cart_id=cart, sku="SHOE-42", quantity=2, channel="web", device=None, actor=None, now=now
        )
    appended = len(commerce_events(engine))
    assert appended == 1
    with pytest.raises(CommerceError), db.write(engine) as conn:
        service.start_checkout(
            conn=conn,
            cart_id=cart,
            fulfilment="click_and_collect",
            pickup_location="store-praha-1",
            ship_address=None,
            channel="web",
            now=now,
            ttl_seconds=600,
        )
    assert len(commerce_events(engine)) == appended
    # an anonymous cart's events carry its device's anonymous id, so they land on that visitor's profile
    process(engine)
    anon = profile_of(engine, "anonymous_id", "anon-x")
    assert anon is not None
    assert [e["event"] for e in timeline(engine, anon)] == ["Product Added"]


def test_a_batch_appends_its_changes_events_once_at_its_end(engine) -> None:
    seed_service(engine)
    now = utcnow()
    logged = "SELECT count(*) FROM events"
    before = count(engine, logged)

    def add(conn: Any, cart: int, sku: str) -> None:
        service.add_to_cart(
            conn=conn, cart_id=cart, sku=sku, quantity=1, channel="web", device=None, actor=None, now=now
        )

    with db.write(engine) as conn, events.batch(conn):
        cart = service.resolve_cart(conn=conn, rules=None, anonymous_id="anon-b", currency="CZK", now=now)
        assert cart is not None
        for sku in ("SHOE-42", "SOCK-1"):
            add(conn, cart, sku)
            assert conn.execute(sa.text(logged)).scalar_one() == before  # held back until the block ends
    assert [e[0] for e in commerce_events(engine)] == ["Product Added", "Product Added"]
    with pytest.raises(CommerceError), db.write(engine) as conn, events.batch(conn):
        add(conn, cart, "SHOE-42")
        add(conn, cart, "NO-SUCH-SKU")
    assert len(commerce_events(engine)) == 2  # the failed block's events went with it
    with db.write(engine) as conn:  # and outside a block, each change appends at once again
        add(conn, cart, "SHOE-42")
        assert conn.execute(sa.text(logged)).scalar_one() == before + 3


def test_events_of_the_internal_source_are_skipped_by_the_handler(engine) -> None:
    """An `Order Completed` of the internal source is our own order: the handler never records it again
    (nor under another reference), while the same event from a shop is recorded."""
    seed_service(engine)
    shop = source(engine, "shop", "web", True)
    message = {
        "type": "track",
        "event": "Order Completed",
        "userId": "u-1",
        "properties": {"order_id": "X-1", "revenue": 10, "products": [{"sku": "SOCK-1", "quantity": 1}]},
    }
    with db.write(engine) as conn:
        internal = events.internal_source_id(conn)
    append(engine, internal, "web", [message])
    process(engine)
    assert count(engine, "SELECT count(*) FROM commerce_orders") == 0
    append(engine, shop, "web", [message])
    process(engine)
    assert count(engine, "SELECT count(*) FROM commerce_orders WHERE order_ref = 'X-1' AND origin = 'event'") == 1
    with db.read(engine) as conn:
        row = conn.execute(sa.text("SELECT enabled, trusted FROM sources WHERE id = :i"), {"i": internal}).one()
    assert (bool(row.enabled), bool(row.trusted)) == (False, False)  # no write key can send in its name


def test_the_internal_source_id_is_remembered_once_its_row_is_committed(engine) -> None:
    """The hot paths ask for the internal source's id on every change: it is remembered per database
    connection, but a row created in a transaction that rolled back is never remembered."""
    name = "omnijourney:test-remembered"
    asked: list[str] = []
    with engine.connect() as conn:
        with conn.begin() as tx:
            events.internal_source_id(conn, name=name)
            tx.rollback()
        with conn.begin():  # the rolled-back row is gone and is created again, not taken from memory
            created = events.internal_source_id(conn, name=name)
            stored = conn.execute(sa.text("SELECT id FROM sources WHERE name = :n"), {"n": name}).scalar_one()
            assert created == stored
        sa.event.listen(conn, "before_cursor_execute", lambda *a: asked.append(a[2]))
        for _ in range(2):
            with conn.begin():  # committed: the first later lookup reads it, then it is remembered
                assert events.internal_source_id(conn, name=name) == created
    assert len([s for s in asked if "sources" in s]) == 1


@pytest.mark.postgres
@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)  # the event-log lock is PostgreSQL's
def test_a_pipelined_append_holds_the_event_log_lock_until_commit(engine) -> None:
    """On PostgreSQL the append sends the log lock and the INSERT in one round trip: the lock must
    still be taken before the row and held to commit, or ids could become visible out of order."""
    seed_service(engine)
    now = utcnow()
    free = sa.text("SELECT pg_try_advisory_xact_lock(:k)")
    with engine.connect() as other, db.write(engine) as conn:
        cart = service.resolve_cart(conn=conn, rules=None, anonymous_id="anon-lock", currency="CZK", now=now)
        assert cart is not None
        service.add_to_cart(
            conn=conn, cart_id=cart, sku="SHOE-42", quantity=1, channel="web", device=None, actor=None, now=now
        )
        assert conn.execute(sa.text("SELECT count(*) FROM events")).scalar_one() == 1  # the row is in
        with other.begin():
            assert other.execute(free, {"k": dialect.INGEST_LOCK_KEY}).scalar_one() is False  # and the lock held
    with engine.connect() as other, other.begin():
        assert other.execute(free, {"k": dialect.INGEST_LOCK_KEY}).scalar_one() is True  # released at commit
