"""Events -> commerce: orders placed elsewhere, cart events, stock events; idempotent and never stalling."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa

from omnijourney.commerce import service
from omnijourney.commerce.config import load_commerce_config
from omnijourney.commerce.handler import CommerceHandler
from omnijourney.pipeline import service as pipeline
from omnijourney.pipeline.worker import run_until_idle
from omnijourney.store import db
from omnijourney.store.base import utcnow
from tests.commerce.helpers import count, seed_service, set_stock, stock
from tests.identity.helpers import append, process, profile_of, source


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


# --------------------------------------------------------------------------- set-based carts = one event at a time


@pytest.fixture
def twin_engine(request: pytest.FixtureRequest, database_url: str, tmp_path: Path) -> Iterator[sa.Engine]:
    """A second fresh, migrated database on the same backend as `engine`."""
    if database_url.startswith("sqlite"):
        path = tmp_path / "twin.db"
        shutil.copy(request.getfixturevalue("sqlite_template"), path)
        eng = db.create_engine(f"sqlite:///{path}", sqlite_synchronous="NORMAL")
        yield eng
        eng.dispose()
        return
    admin_url = request.getfixturevalue("pg_admin_url")
    template = request.getfixturevalue("pg_template")
    name = database_url.rsplit("/", 1)[1] + "_twin"
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f"CREATE DATABASE {name} TEMPLATE {template}")
    eng = db.create_engine(admin_url.rsplit("/", 1)[0] + "/" + name)
    try:
        yield eng
    finally:
        eng.dispose()
        with admin.connect() as conn:
            conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        admin.dispose()


def _cart_event(n: int, event: str, cart: str, sku: str, quantity: int | None = None, **who: object) -> dict:
    props: dict[str, object] = {"cart_id": cart, "sku": sku}
    if quantity is not None:
        props["quantity"] = quantity
    msg = {
        "type": "track",
        "event": event,
        "properties": props,
        "timestamp": f"2026-05-01T10:{n // 60:02d}:{n % 60:02d}Z",
    }
    return {**msg, **who}


def _cart_scenario(engine: sa.Engine, batch: int) -> None:
    """Many cart events for several carts in three appends, processed `batch` events per step.

    c-A: anonymous device, adds, partial and full removes, a re-add from another device;
    c-B: a known user, a line at its limit, refused overflows, a removal; c-C: checked out between
    appends, later events ignored; c-D: anonymous, then the device logs in, and the shop's new
    cart id c-D2 for the user lands on c-D's cart; c-E: a removal of an unknown SKU; then anon-a
    logs in as u-b and the new cart id c-F merges c-A's and c-B's carts (later c-A and c-B events
    land on the surviving cart).
    """
    seed_service(engine)
    set_stock(engine, "SHOE-42", "wh-central", 10)
    web = source(engine, "web", "web", False)
    mobile = {"anonymousId": "anon-a", "context": {"device": {"type": "mobile"}}}
    desktop = {"anonymousId": "anon-a", "context": {"userAgent": "Mozilla/5.0 (X11; Linux x86_64)"}}
    user_b = {"userId": "u-b", "anonymousId": "anon-b"}
    first = [
        _cart_event(1, "Product Added", "c-A", "SHOE-42", 1, **mobile),
        _cart_event(2, "Product Added", "c-A", "SOCK-1", 2, **mobile),
        _cart_event(3, "Product Added", "c-B", "SHOE-43", 2, **user_b),
        _cart_event(4, "Product Removed", "c-A", "SOCK-1", 1, **mobile),
        _cart_event(5, "Product Added", "c-A", "SPRAY-1", **mobile),
        _cart_event(6, "Product Added", "c-C", "SHOE-42", 2, anonymousId="anon-c"),
        _cart_event(7, "Product Removed", "c-A", "SPRAY-1", **mobile),  # no quantity: the whole line
        _cart_event(8, "Product Added", "c-B", "SOCK-1", 999, **user_b),
        _cart_event(9, "Product Added", "c-B", "SOCK-1", 1, **user_b),  # over 999 units: refused
        _cart_event(10, "Product Added", "c-A", "SPRAY-1", 3, **desktop),  # re-added: new device, new time
        _cart_event(11, "Product Added", "c-B", "NOPE-1", 1, **user_b),  # unknown SKU: refused
        _cart_event(12, "Product Added", "c-D", "SOCK-1", 1, anonymousId="anon-d"),
        {"type": "identify", "anonymousId": "anon-d", "userId": "u-d", "timestamp": "2026-05-01T10:00:13Z"},
        _cart_event(14, "Product Added", "c-D", "SHOE-43", 1, anonymousId="anon-d"),
        _cart_event(15, "Product Added", "c-D2", "SOCK-1", 2, userId="u-d"),  # the user's cart is c-D's
        _cart_event(16, "Product Removed", "c-E", "NOPE-1", 1, anonymousId="anon-e"),
        _cart_event(17, "Product Removed", "c-B", "SHOE-43", 5, **user_b),
        _cart_event(18, "Product Added", "c-B", "SHOE-43", 998, **user_b),
        _cart_event(19, "Product Added", "c-B", "SHOE-43", 2, **user_b),  # 1000: refused
    ]
    append(engine, web, "web", first)
    process(engine, batch=batch)
    with db.write(engine) as conn:  # c-C is checked out through the API
        cart_id = conn.execute(sa.text("SELECT id FROM commerce_carts WHERE external_id = 'c-C'")).scalar_one()
        now = datetime(2026, 5, 1, 10, 0, 19, 500000, tzinfo=UTC)
        co = service.start_checkout(
            conn=conn,
            cart_id=cart_id,
            fulfilment="ship",
            pickup_location=None,
            ship_address={"city": "Praha"},
            channel="web",
            now=now,
            ttl_seconds=900,
        )
        service.complete_checkout(
            conn=conn,
            checkout_id=co["id"],
            idempotency_key=None,
            redeem_points=0,
            rules=None,
            config=load_commerce_config(),
            channel="web",
            actor=None,
            now=now,
        )
    second = [
        _cart_event(20, "Product Added", "c-C", "SOCK-1", 1, anonymousId="anon-c"),  # checked out: ignored
        _cart_event(21, "Product Removed", "c-C", "SHOE-42", 1, anonymousId="anon-c"),
        _cart_event(22, "Product Added", "c-A", "SOCK-1", 4, **desktop),
        _cart_event(23, "Product Removed", "c-D2", "SOCK-1", 1, userId="u-d"),
        {"type": "identify", "anonymousId": "anon-a", "userId": "u-b", "timestamp": "2026-05-01T10:00:24Z"},
        _cart_event(25, "Product Added", "c-A", "SHOE-43", 1, **desktop),
        _cart_event(26, "Product Added", "c-F", "SPRAY-1", 1, userId="u-b"),  # merges c-A's and c-B's carts
        _cart_event(27, "Product Added", "c-A", "SPRAY-1", 2, **desktop),  # c-A may be merged: followed
        _cart_event(28, "Product Removed", "c-F", "SOCK-1", 1, userId="u-b"),
        _cart_event(29, "Product Added", "c-C", "SHOE-42", 1, anonymousId="anon-c"),
        _cart_event(30, "Product Added", "c-B", "SHOE-42", 1, **user_b),  # whichever was merged is followed
    ]
    append(engine, web, "web", second)
    process(engine, batch=batch)


def _cart_state(engine: sa.Engine, *, changes: bool = False) -> dict:
    """Carts by their shop cart id: owner (its cluster's identifiers), status, merge target, value and lines."""
    with db.read(engine) as conn:
        carts = conn.execute(sa.text("SELECT * FROM commerce_carts")).mappings().all()
        lines = conn.execute(sa.text("SELECT * FROM commerce_cart_lines")).mappings().all()
        roots = dict(conn.execute(sa.text("SELECT id, canonical_id FROM profiles")).all())
        links = conn.execute(sa.text("SELECT id_type, value, profile_id FROM identity_links")).all()
        rows = conn.execute(
            sa.text(
                "SELECT c.cart_id, c.action, c.sku, c.quantity, c.channel, c.device, c.actor, c.at, e.message_id "
                "FROM commerce_cart_changes c LEFT JOIN events e ON e.id = c.event_id ORDER BY c.id"
            )
        ).all()
    cluster: dict[int, set] = {}
    for t, v, pid in links:
        cluster.setdefault(roots[pid], set()).add((t, v))
    name = {c["id"]: c["external_id"] or f"anonymous:{c['anonymous_id']}" for c in carts}
    state: dict = {}
    for c in carts:
        owner = frozenset(cluster.get(roots[c["profile_id"]], ())) if c["profile_id"] is not None else None
        state[name[c["id"]]] = {
            "owner": owner,
            "anonymous_id": c["anonymous_id"] if c["profile_id"] is None else None,
            "status": c["status"],
            "merged_into": name.get(c["merged_into"]),
            "value_minor": c["value_minor"],
            "updated_at": c["updated_at"],
            "lines": {
                x["sku"]: (x["quantity"], x["channel"], x["device"], x["added_at"], x["updated_at"])
                for x in lines
                if x["cart_id"] == c["id"]
            },
        }
    if changes:
        state["changes"] = [(name[r[0]], *r[1:]) for r in rows]
    return state


def test_batched_cart_events_give_the_same_carts_as_one_event_per_batch(
    engine: sa.Engine, twin_engine: sa.Engine
) -> None:
    _cart_scenario(engine, batch=1)
    _cart_scenario(twin_engine, batch=1000)
    one, batched = _cart_state(engine), _cart_state(twin_engine)
    assert batched == one
    # the scenario did what it says
    assert one["c-A"]["status"] == "merged" or one["c-B"]["status"] == "merged"
    survivor = one["c-B"] if one["c-A"]["status"] == "merged" else one["c-A"]
    assert survivor["status"] == "active" and "c-F" not in one
    assert {sku: line[0] for sku, line in survivor["lines"].items()} == {
        "SHOE-42": 2,  # c-A's, and one more through c-B
        "SPRAY-1": 6,  # re-added 3 on the desktop, 1 through c-F, then 2 more through the merged c-A
        "SOCK-1": 998,  # c-B's 999 (larger than c-A's 5, never the sum), less one
        "SHOE-43": 998,
    }
    assert survivor["lines"]["SPRAY-1"][2] == "desktop" and survivor["lines"]["SHOE-42"][2] == "mobile"
    assert one["c-C"]["status"] == "checked_out" and set(one["c-C"]["lines"]) == {"SHOE-42"}
    assert {sku: line[0] for sku, line in one["c-D"]["lines"].items()} == {"SOCK-1": 2, "SHOE-43": 1}
    assert ("user_id", "u-d") in one["c-D"]["owner"] and "c-D2" not in one
    assert one["c-E"]["lines"] == {} and one["c-E"]["status"] == "active"


def test_set_based_carts_match_the_per_event_path(
    engine: sa.Engine, twin_engine: sa.Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The in-memory batch applies the API's rules exactly: the same carts, lines and change records as
    `resolve_cart` / `add_to_cart` / `set_cart_quantity` event by event (the handler's fallback)."""

    def conflict(self: service.CartBatch, wanted: object) -> None:
        raise service.BatchConflict("forced: apply one by one")

    monkeypatch.setattr(service.CartBatch, "load", conflict)
    _cart_scenario(engine, batch=1000)
    monkeypatch.undo()

    def per_event(*args: object) -> None:
        raise AssertionError("the set-based path fell back to one event at a time")

    monkeypatch.setattr(CommerceHandler, "_cart_event", per_event)
    _cart_scenario(twin_engine, batch=1000)
    assert _cart_state(twin_engine, changes=True) == _cart_state(engine, changes=True)


def test_cart_viewed_merges_the_shops_cart_by_the_rule_in_log_order(engine) -> None:
    """`Cart Viewed` with products: lines united, larger quantity wins, lines only we have stay;
    applied in log order between the batch's other cart events, once per event (rebuilds too)."""
    seed_service(engine)
    shop = source(engine, "shop", "web", False)

    def cart_event(name: str, mid: str, **props: object) -> dict[str, object]:
        return {
            "type": "track",
            "event": name,
            "anonymousId": "anon-v",
            "messageId": mid,
            "properties": {"cart_id": "shop-cart-9", **props},
        }

    append(
        engine,
        shop,
        "web",
        [
            cart_event("Product Added", "v1", sku="SHOE-42"),
            cart_event(
                "Cart Viewed",
                "v2",
                products=[{"sku": "SHOE-42", "quantity": 1}, {"sku": "SOCK-1", "quantity": 2}, {"sku": "NOPE-1"}],
            ),
            cart_event("Product Added", "v3", sku="SHOE-42"),
        ],
    )
    process(engine)

    def lines() -> dict[str, int]:
        with db.read(engine) as conn:
            cart = conn.execute(sa.text("SELECT id FROM commerce_carts WHERE external_id = 'shop-cart-9'")).scalar_one()
            return {line["sku"]: line["quantity"] for line in service.cart_view(conn=conn, cart_id=cart)["lines"]}

    assert lines() == {"SHOE-42": 2, "SOCK-1": 2}  # added, viewed (1 <= 1: unchanged), added again
    with db.write(engine) as conn:
        cart = conn.execute(sa.text("SELECT id FROM commerce_carts WHERE external_id = 'shop-cart-9'")).scalar_one()
        service.add_to_cart(
            conn=conn,
            cart_id=cart,
            sku="SPRAY-1",
            quantity=1,
            channel="call_center",
            device=None,
            actor="agent",
            now=utcnow(),
        )
    append(engine, shop, "web", [cart_event("Cart Viewed", "v4", products=[{"sku": "SOCK-1", "quantity": 3}])])
    process(engine)
    assert lines() == {"SHOE-42": 2, "SOCK-1": 3, "SPRAY-1": 1}  # the agent's line stays
    with db.write(engine) as conn:
        pipeline.reset(conn=conn, handlers=pipeline.default_handlers())
    process(engine)
    assert lines() == {"SHOE-42": 2, "SOCK-1": 3, "SPRAY-1": 1}
