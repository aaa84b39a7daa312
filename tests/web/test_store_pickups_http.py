"""Pickups due today on the store page (in-process HTTP with TestClient): overdue and ready orders first, later
ones apart, another store's never. Orders are placed through the commerce service at chosen times."""

from __future__ import annotations

from datetime import datetime, timedelta

import sqlalchemy as sa
from argon2 import PasswordHasher
from fastapi.testclient import TestClient

from omnijourney.app import create_app
from omnijourney.commerce import service as commerce
from omnijourney.commerce.config import CommerceConfig, PickupRules
from omnijourney.store import db
from omnijourney.store.base import utcnow
from omnijourney.web import service
from omnijourney.web import views as web_views
from tests.commerce.helpers import seed_service, set_stock
from tests.web.helpers import PASSWORD, STORE, csrf_of

BRNO = "store-brno-1"
#: Praha promises pickups two days after the order, so an order placed now is always "later", whatever the hour
CONFIG = CommerceConfig(pickup=PickupRules(preparation_hours=2, by_store={STORE: 48}))


def place(engine: sa.Engine, guest: str, store: str, at: datetime) -> str:
    """A guest's click & collect order of one shoe at `store`, placed at `at`; its order number."""
    with db.write(engine) as conn:
        cart = commerce.resolve_cart(conn=conn, rules=None, currency="CZK", now=at, anonymous_id=guest)
        assert cart is not None
        commerce.add_to_cart(
            conn=conn, cart_id=cart, sku="SHOE-42", quantity=1, channel="web", device=None, actor=None, now=at
        )
        co = commerce.start_checkout(conn=conn, cart_id=cart, fulfilment="click_and_collect", pickup_location=store,
                                     ship_address=None, channel="web", now=at, ttl_seconds=600)  # fmt: skip
        order, _ = commerce.complete_checkout(conn=conn, checkout_id=co["id"], idempotency_key=None, redeem_points=0,
                                              rules=None, config=CONFIG, channel=None, actor="test", now=at)  # fmt: skip
    return str(order["order_ref"])


def table(html: str, testid: str) -> list[str]:
    """The order numbers of the rows of the table marked `testid`, in page order ([] when absent)."""
    if f'data-testid="{testid}"' not in html:
        return []
    body = html.split(f'data-testid="{testid}"', 1)[1].split("</table>", 1)[0]
    return [row.split('"', 1)[0] for row in body.split('data-order="')[1:]]


def test_pickups_due_today_come_first_with_the_overdue_flagged(settings, engine: sa.Engine, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(service, "_hasher", PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1))
    monkeypatch.setattr(web_views, "_commerce_config", [CONFIG])
    seed_service(engine)
    for store in (STORE, BRNO):
        set_stock(engine, "SHOE-42", store, 10)
    now = utcnow()
    overdue = place(engine, "g-overdue", STORE, now - timedelta(days=3))  # promised a day ago, not ready
    ready = place(engine, "g-ready", STORE, now - timedelta(hours=1))  # ready: waits for the customer now
    fresh = place(engine, "g-fresh", STORE, now)  # promised in two days
    elsewhere = place(engine, "g-brno", BRNO, now - timedelta(days=3))
    with db.write(engine) as conn:
        order_id = commerce.find_order(conn=conn, ref=ready)
        assert order_id is not None
        commerce.transition_order(conn=conn, order_id=order_id, status="ready_for_pickup", actor="test",
                                  location=STORE, now=now, config=CONFIG)  # fmt: skip
        user = service.create_user(conn=conn, username="stan", role="store_staff", password=PASSWORD,
                                   home_location=STORE, now=now)  # fmt: skip
        token = service.start_session(conn=conn, user=user, now=now)

    app = create_app(settings, engine=engine, migrate_db=False)
    with TestClient(app) as c:
        c.cookies.set(web_views.COOKIE, token)
        page = c.get("/console/store")
        assert page.status_code == 200
        html = page.text
        assert table(html, "pickups-due") == [overdue, ready]
        assert table(html, "pickups-later") == [fresh]
        assert elsewhere not in html
        assert "Pickups due today (2)" in html and "1 overdue" in html and "Later (1)" in html
        row = html.split(f'data-order="{overdue}"', 1)[1].split("</tr>", 1)[0]
        assert "overdue" in row and "Mark ready" in row
        assert "overdue" not in html.split(f'data-order="{ready}"', 1)[1].split("</tr>", 1)[0]
        # made ready now, the fresh order is due today too (after the overdue one)
        r = c.post(f"/console/store/orders/{fresh}/status", data={"status": "ready_for_pickup",
                                                                  "csrf_token": csrf_of(html)})  # fmt: skip
        assert r.status_code == 200 and f"order {fresh} is ready for pickup" in r.text
        due = table(r.text, "pickups-due")
        assert due[0] == overdue and sorted(due[1:]) == sorted([ready, fresh])
        assert table(r.text, "pickups-later") == [] and "Pickups due today (3)" in r.text
