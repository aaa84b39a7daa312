"""What the demo adds for the staff console: console users, and click & collect orders waiting at the
stores today (the catalog, locations and stock come from `demo.commerce`).

Orders go through the real API (carts, checkouts) at a store that has the unit; console users are
created like `omnijourney users create` does. Safe to run again: orders carry deterministic
idempotency keys, and users keep the passwords saved in demo-credentials.json.
"""

from __future__ import annotations

import secrets
from typing import Any

import httpx
import sqlalchemy as sa

from omnijourney.demo.world import DemoWorld
from omnijourney.store import db
from omnijourney.store.base import utcnow
from omnijourney.web import service as console

#: username -> (role, home store)
DEMO_USERS: dict[str, tuple[str, str | None]] = {
    "admin": ("admin", None),
    "marketer": ("marketer", None),
    "agent": ("agent", None),
    "store.praha": ("store_staff", "store-praha-1"),
}
#: click & collect orders placed for today per store (the hero's order comes first, at Praha)
PICKUPS_PER_STORE = 3


def ensure_console_users(engine: sa.Engine, saved: dict[str, Any] | None) -> tuple[dict[str, dict[str, Any]], bool]:
    """The demo's console users with their passwords; (users, created or reset now)."""
    out: dict[str, dict[str, Any]] = {}
    changed = False
    now = utcnow()
    with db.write(engine) as conn:
        for username, (role, home) in DEMO_USERS.items():
            password = ((saved or {}).get(username) or {}).get("password")
            user = console.user_by_name(conn=conn, username=username)
            if user is None:
                password = secrets.token_urlsafe(12)
                console.create_user(
                    conn=conn, username=username, role=role, password=password, home_location=home, now=now
                )
                changed = True
            elif not password or console.authenticate(conn=conn, username=username, password=password) is None:
                password = secrets.token_urlsafe(12)
                console.update_user(conn=conn, user_id=user.id, password=password, active=True, now=now)
                changed = True
            out[username] = {"role": role, "home_store": home, "password": password}
    return out, changed


def place_pickups(client: httpx.Client, world: DemoWorld, admin_token: str) -> list[dict[str, Any]]:
    """Click & collect orders for today: the hero's at Praha, and a few other customers' at their store."""
    headers = {"Authorization": f"Bearer {admin_token}"}
    chosen = []
    if world.hero is not None:
        chosen.append(world.hero)
    per_store: dict[str, int] = {}
    for c in world.customers:
        if c is world.hero or not c.loyalty_card or c.currency != "CZK":
            continue
        if per_store.get(c.preferred_store, 0) < PICKUPS_PER_STORE - (c.preferred_store == "store-praha-1"):
            per_store[c.preferred_store] = per_store.get(c.preferred_store, 0) + 1
            chosen.append(c)
    main = [p for p in world.catalog if p.accessories]
    placed = []
    day = world.anchor.strftime("%Y%m%d")
    for n, c in enumerate(chosen):
        found = client.get(
            "/api/profiles/lookup", params={"type": "loyalty_card", "value": c.loyalty_card}, headers=headers
        )
        if found.status_code != 200:
            continue
        pid = found.json()["id"]
        key = f"demo-pickup:{day}:{c.index}"
        orders = client.get(f"/api/commerce/profiles/{pid}/orders", headers=headers).json()["orders"]
        if any(
            o["fulfilment"] == "click_and_collect" and o["status"] in ("placed", "paid", "ready_for_pickup")
            for o in orders
        ):
            continue
        product = _in_stock_at(client, headers, main, c.preferred_store, start=c.index * 7 + n)
        if product is None:
            continue
        cart = client.post("/api/commerce/carts", json={"profile_id": pid, "currency": "CZK"}, headers=headers)
        cart.raise_for_status()
        cart_id = cart.json()["id"]
        if any(line["sku"] == product.sku for line in cart.json().get("lines", [])):
            continue  # placed in an earlier run, or its checkout was refused then: do not add it twice
        client.post(
            f"/api/commerce/carts/{cart_id}/items",
            json={"sku": product.sku, "quantity": 1, "channel": "web", "device": "mobile"},
            headers=headers,
        ).raise_for_status()
        co = client.post(
            "/api/commerce/checkouts",
            json={
                "cart_id": cart_id,
                "fulfilment": "click_and_collect",
                "pickup_location": c.preferred_store,
                "channel": "web",
            },
            headers=headers,
        )
        if co.status_code != 201:
            continue
        done = client.post(
            f"/api/commerce/checkouts/{co.json()['id']}/complete", headers={**headers, "Idempotency-Key": key}
        )
        if done.status_code in (200, 201):
            placed.append({"customer": c.name, "order": done.json()["order_ref"], "store": c.preferred_store})
    return placed


def _in_stock_at(client: httpx.Client, headers: dict[str, str], products: list[Any], store: str, *, start: int) -> Any:
    """The first of `products` (rotating from `start`) with a unit available at `store`, or None."""
    for k in range(len(products)):
        product = products[(start + k) % len(products)]
        stock = client.get(f"/api/commerce/availability/{product.sku}", headers=headers)
        if stock.status_code == 200 and any(
            loc["location"] == store and loc["available"] > 0 for loc in stock.json()["locations"]
        ):
            return product
    return None
