"""A small retailer for console tests: users of every role, catalog, stock, one customer with a pickup."""

from __future__ import annotations

import re
from dataclasses import dataclass

import httpx
import sqlalchemy as sa

from omnijourney.store import db
from omnijourney.store.base import utcnow
from omnijourney.web import service
from tests.commerce.helpers import bearer, set_stock, setup_catalog
from tests.conftest import World, wait_for

PASSWORD = "correct horse battery staple"
USERS = {"admin": "ada", "marketer": "mark", "agent": "agnes", "store_staff": "stan"}
STORE = "store-praha-1"
CARD = "LC0012345678"
PHONE = "+420601123456"
EMAIL = "jana@example.com"


@dataclass
class Shop:
    profile_id: int
    order_ref: str


def create_users(engine: sa.Engine) -> None:
    with db.write(engine) as conn:
        for role, name in USERS.items():
            service.create_user(
                conn=conn,
                username=name,
                role=role,
                password=PASSWORD,
                home_location=STORE if role == "store_staff" else None,
                now=utcnow(),
            )


def processed(client: httpx.Client, world: World) -> bool:
    return client.get("/api/pipeline/status", headers=bearer(world.admin_token)).json()["lag"] == 0


def build_shop(client: httpx.Client, world: World, engine: sa.Engine) -> Shop:
    """Catalog, stock, Jana (identified at the POS with card and phone, browsing on the web) and her
    click & collect order at Praha, placed through the commerce API."""
    create_users(engine)
    setup_catalog(client, world.admin_token)
    set_stock(engine, "SHOE-42", STORE, 5)
    set_stock(engine, "SOCK-1", STORE, 5)
    r = client.post(
        "/v1/identify",
        auth=(world.pos_key, ""),
        json={
            "userId": "user-jana",
            "traits": {
                "email": EMAIL,
                "phone": PHONE,
                "loyalty_card": CARD,
                "first_name": "Jana",
                "last_name": "Nováková",
                "shoe_size": "38",
                "birthday": "31.02.1990",  # not ISO 8601: refused by the trait's type
            },
        },
    )
    assert r.status_code == 200, r.text
    r = client.post(
        "/v1/track",
        auth=(world.web_key, ""),
        json={
            "userId": "user-jana",
            "event": "Product Viewed",
            "properties": {"sku": "SHOE-43", "name": "Trail shoe 43"},
        },
    )
    assert r.status_code == 200, r.text
    assert wait_for(lambda: processed(client, world), timeout=20)
    pid = client.get(
        "/api/profiles/lookup", params={"type": "loyalty_card", "value": CARD}, headers=bearer(world.agent_token)
    ).json()["id"]
    agent = bearer(world.agent_token)
    cart = client.post("/api/commerce/carts", json={"profile_id": pid}, headers=agent).json()
    r = client.post(f"/api/commerce/carts/{cart['id']}/items", json={"sku": "SHOE-42", "quantity": 1}, headers=agent)
    assert r.status_code == 200, r.text
    co = client.post(
        "/api/commerce/checkouts",
        json={"cart_id": cart["id"], "fulfilment": "click_and_collect", "pickup_location": STORE},
        headers=agent,
    )
    assert co.status_code == 201, co.text
    done = client.post(f"/api/commerce/checkouts/{co.json()['id']}/complete", headers=agent)
    assert done.status_code == 201, done.text
    return Shop(profile_id=pid, order_ref=done.json()["order_ref"])


CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


def csrf_of(html: str) -> str:
    m = CSRF.search(html)
    assert m, "no CSRF token in the page"
    return m.group(1)


def login(client: httpx.Client, username: str, password: str = PASSWORD) -> httpx.Response:
    """Log in like a browser: fetch the form (login CSRF cookie + field), post it."""
    form = client.get("/console/login")
    assert form.status_code == 200
    return client.post(
        "/console/login",
        data={"username": username, "password": password, "csrf_token": csrf_of(form.text)},
        follow_redirects=False,
    )
