"""Real threads against the real databases (SQLite and PostgreSQL): never oversell, never two orders,
never overdraw points."""

from __future__ import annotations

import threading
from collections import Counter

import httpx
import pytest

from omnijourney.commerce import service
from omnijourney.commerce.config import load_commerce_config
from omnijourney.commerce.service import CommerceError
from omnijourney.store import db
from omnijourney.store.base import utcnow
from tests.commerce.helpers import bearer, count, seed_service, set_stock, setup_catalog, stock
from tests.conftest import World
from tests.identity.helpers import append, process, profile_of, source

pytestmark = pytest.mark.server
CLIENTS = 12
UNITS = 5


def run_threads(n: int, fn) -> None:  # type: ignore[no-untyped-def]
    barrier = threading.Barrier(n)

    def go(i: int) -> None:
        barrier.wait()
        fn(i)

    threads = [threading.Thread(target=go, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)


def test_concurrent_checkouts_for_the_last_units(live_server, world: World, engine) -> None:
    with httpx.Client(base_url=live_server.url, timeout=60) as c:
        setup_catalog(c, world.admin_token)
    set_stock(engine, "SHOE-42", "store-praha-1", UNITS)
    set_stock(engine, "SOCK-1", "store-praha-1", 100)
    auth = bearer(world.agent_token)
    outcomes: list[str] = []

    def shopper(i: int) -> None:
        with httpx.Client(base_url=live_server.url, timeout=60) as c:
            cart = c.post("/api/commerce/carts", json={"anonymous_id": f"anon-{i}"}, headers=auth).json()
            for sku in ("SOCK-1", "SHOE-42"):  # lines in different orders per cart: locks are still sorted
                c.post(f"/api/commerce/carts/{cart['id']}/items", json={"sku": sku}, headers=auth)
            co = c.post(
                "/api/commerce/checkouts",
                json={"cart_id": cart["id"], "fulfilment": "click_and_collect", "pickup_location": "store-praha-1"},
                headers=auth,
            )
            if co.status_code != 201:
                outcomes.append(co.json()["code"])
                return
            r = c.post(f"/api/commerce/checkouts/{co.json()['id']}/complete", json={}, headers=auth)
            outcomes.append("order" if r.status_code == 201 else r.json()["code"])

    run_threads(CLIENTS, shopper)
    assert Counter(outcomes) == {"order": UNITS, "insufficient_stock": CLIENTS - UNITS}
    assert count(engine, "SELECT count(*) FROM commerce_orders") == UNITS
    s = stock(engine, "SHOE-42", "store-praha-1")
    assert (s["on_hand"], s["reserved"], s["allocated"], s["available"]) == (UNITS, 0, UNITS, 0)
    socks = stock(engine, "SOCK-1", "store-praha-1")
    assert (socks["reserved"], socks["allocated"]) == (0, UNITS)  # the refused checkouts reserved nothing


def test_concurrent_duplicate_completions_make_one_order(live_server, world: World, engine) -> None:
    with httpx.Client(base_url=live_server.url, timeout=60) as c:
        setup_catalog(c, world.admin_token)
        auth = bearer(world.agent_token)
        set_stock(engine, "SHOE-42", "wh-central", 3)
        cart = c.post("/api/commerce/carts", json={"anonymous_id": "dup"}, headers=auth).json()
        c.post(f"/api/commerce/carts/{cart['id']}/items", json={"sku": "SHOE-42", "quantity": 2}, headers=auth)
        co = c.post(
            "/api/commerce/checkouts",
            json={"cart_id": cart["id"], "fulfilment": "ship", "ship_address": {"city": "Praha"}},
            headers=auth,
        ).json()
    results: list[tuple[int, int]] = []

    def complete(i: int) -> None:
        with httpx.Client(base_url=live_server.url, timeout=60) as c:
            # half retry with the idempotency key, half without: the cart alone must also deduplicate
            headers = {**auth, "Idempotency-Key": "pay-1"} if i % 2 else auth
            r = c.post(f"/api/commerce/checkouts/{co['id']}/complete", headers=headers)
            results.append((r.status_code, r.json()["id"]))

    run_threads(10, complete)
    assert len({oid for _, oid in results}) == 1
    assert sorted(code for code, _ in results) == [200] * 9 + [201]
    assert count(engine, "SELECT count(*) FROM commerce_orders") == 1
    s = stock(engine, "SHOE-42", "wh-central")
    assert (s["reserved"], s["allocated"], s["available"]) == (0, 2, 1)


def test_concurrent_redemptions_never_overdraw(engine) -> None:
    web = source(engine, "web", "web", False)
    append(engine, web, "web", [{"type": "identify", "userId": "u-points", "traits": {"email": "p@example.com"}}])
    process(engine)
    pid = profile_of(engine, "user_id", "u-points")
    config = load_commerce_config()
    with db.write(engine) as conn:
        service._credit(
            conn,
            profile_id=pid,
            points=100,
            kind="adjust",
            order_id=None,
            dedupe_key="seed",
            channel=None,
            actor=None,
            now=utcnow(),
        )
    outcomes: list[str] = []

    def redeem(i: int) -> None:
        try:
            with db.write(engine) as conn:
                service.redeem_loyalty(
                    conn=conn,
                    profile_id=pid,
                    points=30,
                    dedupe_key=None,
                    order_id=None,
                    channel="store",
                    actor=f"till-{i}",
                    now=utcnow(),
                    config=config,
                )
            outcomes.append("ok")
        except CommerceError as exc:
            outcomes.append(exc.code)

    run_threads(10, redeem)
    assert Counter(outcomes) == {"ok": 3, "insufficient_points": 7}
    with db.read(engine) as conn:
        view = service.loyalty_view(conn=conn, profile_id=pid, config=config)
    assert view["balance"] == 10
    assert sum(h["points"] for h in view["history"]) == 10


def test_concurrent_returns_with_one_key_answer_the_same_return(engine) -> None:
    """A till retrying a return while the first attempt is still running: every attempt answers the
    one return (none a 409), the units are restocked and refunded once."""
    seed_service(engine)
    config = load_commerce_config()
    with db.write(engine) as conn:
        oid = service.record_external_order(
            conn=conn,
            order_ref="POS-RACE-1",
            profile_id=None,
            anonymous_id="till",
            source_id=1,
            channel="store",
            store_id="store-praha-1",
            currency="CZK",
            total_minor=39000,
            lines=[{"sku": "SOCK-1", "name": "Merino socks", "quantity": 2, "unit_price_minor": 19500}],
            event_id=1,
            placed_at=utcnow(),
            config=config,
        )
    assert oid is not None
    answers: list[tuple[int, bool] | str] = []

    def give_back(i: int) -> None:
        try:
            with db.write(engine) as conn:
                ret, created = service.create_return(
                    conn=conn,
                    order_id=oid,
                    location="store-brno-1",
                    items=[{"sku": "SOCK-1", "quantity": 1, "condition": "sellable"}],
                    reason="too big",
                    refund_minor=None,
                    idempotency_key="till-7:return:1",
                    channel="store",
                    actor=f"till-{i}",
                    now=utcnow(),
                    config=config,
                )
            answers.append((ret["id"], created))
        except CommerceError as exc:
            answers.append(exc.code)

    run_threads(8, give_back)
    assert all(isinstance(a, tuple) for a in answers), answers
    assert len({a[0] for a in answers}) == 1 and sorted(a[1] for a in answers) == [False] * 7 + [True]
    assert stock(engine, "SOCK-1", "store-brno-1")["on_hand"] == 1
    assert count(engine, "SELECT count(*) FROM commerce_returns") == 1
    assert count(engine, "SELECT refunded_minor FROM commerce_orders WHERE order_ref = 'POS-RACE-1'") == 19500
