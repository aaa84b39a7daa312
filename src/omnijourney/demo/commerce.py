"""The demo retailer's commerce, through the real commerce API: catalog, locations (stores, the
warehouse, a parcel locker), stock, and a few orders placed through omnijourney so their steps are
on the customers' timelines next to the shop's and the POS's events.

Everything is idempotent, so running the demo again changes nothing: products and locations are
upserts, stock updates carry external ids, and the scenarios run only for a customer who has no
order placed through omnijourney yet (completions carry idempotency keys on top).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import httpx

from omnijourney.demo.world import DemoWorld

#: store coordinates (the world's locations carry only the city)
COORDINATES: dict[str, tuple[float, float]] = {
    "warehouse-1": (50.1105, 14.5320),
    "store-praha-1": (50.0852, 14.4238),
    "store-praha-2": (50.0317, 14.4916),
    "store-brno-1": (49.1904, 16.6126),
    "store-ostrava-1": (49.8389, 18.2900),
    "store-warszawa-1": (52.2298, 21.0031),
    "store-warszawa-2": (52.2569, 20.9845),
    "store-krakow-1": (50.0676, 19.9470),
}
LOCKER = "locker-praha-holesovice"


class DemoCommerceError(RuntimeError):
    pass


@dataclass
class CommerceSummary:
    products: int = 0
    locations: int = 0
    stock_rows: int = 0
    orders: list[str] = field(default_factory=list)
    abandoned_carts: int = 0
    skipped: bool = False


def _ok(r: httpx.Response) -> dict[str, Any]:
    if r.status_code >= 300:
        raise DemoCommerceError(f"{r.request.method} {r.request.url.path}: {r.status_code} {r.text[:300]}")
    body: dict[str, Any] = r.json()
    return body


#: categories customers buy again (socks wear out, gels get eaten): recommendations do not exclude
#: them once bought, and rank them by how regularly the customer restocks them ("buy again")
CONSUMABLE_CATEGORIES = frozenset({"Socks", "Sports Nutrition"})


def load_catalog(client: httpx.Client, world: DemoWorld, admin: str) -> CommerceSummary:
    """Products with CZK/EUR prices and accessories, locations, and stock everywhere."""
    auth = {"Authorization": f"Bearer {admin}"}
    by_id = {p.product_id: p for p in world.catalog}
    products = [
        {
            "sku": p.sku,
            "product_id": p.product_id,
            "name": p.name,
            "category": p.category,
            "brand": p.brand,
            "prices": {"CZK": f"{p.price_czk:.2f}", "EUR": f"{p.price_eur:.2f}"},
            "attributes": {
                **({"sizing": p.sizing} if p.sizing else {}),
                # engage: a consumable may be recommended again after it was bought
                **({"consumable": True} if p.category in CONSUMABLE_CATEGORIES else {}),
            },
        }
        for p in world.catalog
    ]
    _ok(client.post("/api/commerce/products", json={"products": products}, headers=auth))
    related = [
        {**item, "related": [{"sku": by_id[a].sku, "kind": "accessory"} for a in p.accessories]}
        for item, p in zip(products, world.catalog, strict=True)
        if p.accessories
    ]
    if related:
        _ok(client.post("/api/commerce/products", json={"products": related}, headers=auth))
    locations = []
    for loc in world.locations:
        lat, lon = COORDINATES.get(loc.location_id, (None, None))
        store = loc.kind == "store"
        locations.append(
            {
                "code": loc.location_id,
                "name": loc.name,
                "kind": loc.kind,
                "address": {"city": loc.city, "country": loc.country},
                "latitude": lat,
                "longitude": lon,
                "opening_hours": {d: [["09:00", "21:00"]] for d in ("mon", "tue", "wed", "thu", "fri", "sat")}
                if store
                else {},
                "ships": not store,
                "pickup": store,
                "pickup_sourcing": "network" if loc.location_id == "store-praha-1" else "store_only",
                "channels": ["store"] if store else ["web", "app"],
            }
        )
    locations.append(
        {
            "code": LOCKER,
            "name": "Parcel locker Praha Holešovice",
            "kind": "locker",
            "address": {"city": "Praha", "country": "CZ"},
            "latitude": 50.1030,
            "longitude": 14.4380,
            "pickup": True,
            "channels": ["web", "app"],
        }
    )
    _ok(client.put("/api/commerce/locations", json={"locations": locations}, headers=auth))
    updates = []
    for n, p in enumerate(world.catalog):
        for m, loc in enumerate(world.locations):
            on_hand = 40 + (n * 7) % 25 if loc.kind == "warehouse" else (n * 3 + m * 5) % 7
            updates.append(
                {
                    "external_id": f"demo:init:{p.sku}:{loc.location_id}",
                    "sku": p.sku,
                    "location": loc.location_id,
                    "on_hand": on_hand,
                }
            )
    staff = {"Authorization": f"Bearer {admin}"}
    _ok(client.post("/api/commerce/stock", json={"updates": updates}, headers=staff))
    return CommerceSummary(products=len(products), locations=len(locations), stock_rows=len(updates))


def _profile_id(client: httpx.Client, auth: dict[str, str], user_id: str) -> int | None:
    r = client.get("/api/profiles/lookup", params={"type": "user_id", "value": user_id}, headers=auth)
    return int(r.json()["id"]) if r.status_code == 200 else None


def _stocked(client: httpx.Client, auth: dict[str, str], sku: str, location: str, quantity: int) -> bool:
    r = _ok(client.get(f"/api/commerce/availability/{sku}", headers=auth))
    return any(x["location"] == location and x["available"] >= quantity for x in r["locations"])


def place_orders(client: httpx.Client, world: DemoWorld, tokens: dict[str, str], summary: CommerceSummary) -> None:
    """Scenarios through the commerce API, for customers with an e-shop account:

    1. the hero: click & collect at her preferred store (shoe + accessory added on the phone),
       the store marks it ready and handed over, the accessory comes back in another store;
    2. parcel-locker delivery paid partly with loyalty points (a discount): shipped from the
       warehouse, waiting in the locker, picked up, then sent back by mail to the warehouse (the
       refund is the share paid, the points come back);
    3. an order cancelled before it left (stock and points given back);
    4. an abandoned cart: two items added in the app, never checked out.
    """
    agent = {"Authorization": f"Bearer {tokens['agent']}"}
    store = {"Authorization": f"Bearer {tokens['store_staff']}"}
    hero = world.hero
    known = [c for c in world.customers if c.has_account and c.country == "CZ" and c is not hero]
    if hero is not None and hero.has_account and hero.country == "CZ":
        known.insert(0, hero)
    known = known[:4]
    if len(known) < 4:
        return
    pids = [_profile_id(client, agent, c.user_id) for c in known]
    if any(p is None for p in pids):
        return
    if any(
        o["origin"] == "omnijourney"
        for o in _ok(client.get(f"/api/commerce/profiles/{pids[0]}/orders", headers=agent))["orders"]
    ):
        summary.skipped = True  # loaded before
        return
    shoes = [p for p in world.catalog if p.category == "Running Shoes"]

    def cart_of(pid: int | None, items: list[tuple[str, int]], channel: str, device: str) -> int:
        cart = _ok(client.post("/api/commerce/carts", json={"profile_id": pid}, headers=agent))
        for sku, q in items:
            _ok(
                client.post(
                    f"/api/commerce/carts/{cart['id']}/items",
                    json={"sku": sku, "quantity": q, "channel": channel, "device": device},
                    headers=agent,
                )
            )
        return int(cart["id"])

    def order(cart: int, key: str, redeem: int = 0, **checkout: Any) -> dict[str, Any]:
        co = _ok(client.post("/api/commerce/checkouts", json={"cart_id": cart, **checkout}, headers=agent))
        return _ok(
            client.post(
                f"/api/commerce/checkouts/{co['id']}/complete",
                json={"redeem_points": redeem},
                headers={**agent, "Idempotency-Key": key},
            )
        )

    def step(ref: str, status: str, location: str | None) -> None:
        _ok(
            client.post(
                f"/api/commerce/orders/{ref}/status", json={"status": status, "location": location}, headers=store
            )
        )

    # 1. the hero's click & collect and return anywhere
    pickup = known[0].preferred_store if known[0].preferred_store.startswith("store-") else "store-praha-1"
    shoe = next((p for p in shoes if _stocked(client, agent, p.sku, pickup, 1)), None)
    if shoe is not None:
        acc = next(
            (
                s
                for s in (p.sku for p in world.catalog if p.product_id in shoe.accessories)
                if _stocked(client, agent, s, pickup, 1)
            ),
            None,
        )
        items = [(shoe.sku, 1)] + ([(acc, 1)] if acc else [])
        o = order(
            cart_of(pids[0], items, "app", "mobile"),
            "demo:hero:1",
            fulfilment="click_and_collect",
            pickup_location=pickup,
            channel="app",
        )
        step(o["order_ref"], "ready_for_pickup", pickup)
        step(o["order_ref"], "picked_up", pickup)
        summary.orders.append(o["order_ref"])
        if acc:
            other = "store-brno-1" if pickup != "store-brno-1" else "store-praha-2"
            _ok(
                client.post(
                    f"/api/commerce/orders/{o['order_ref']}/returns",
                    json={
                        "location": other,
                        "reason": "wrong size",
                        "idempotency_key": "demo:hero:return:1",
                        "items": [{"sku": acc, "quantity": 1, "condition": "sellable"}],
                    },
                    headers=store,
                )
            )
    # 2. a parcel locker, partly paid with points, returned by mail
    jacket = next(p for p in world.catalog if p.category == "Jackets")
    points = _ok(client.get(f"/api/commerce/profiles/{pids[1]}/loyalty?history=0", headers=agent))["balance"]
    o = order(
        cart_of(pids[1], [(jacket.sku, 1)], "web", "desktop"),
        "demo:locker:1",
        redeem=min(int(points), 200),
        fulfilment="parcel_locker",
        pickup_location=LOCKER,
        ship_address={"name": known[1].name},
    )
    step(o["order_ref"], "shipped", "warehouse-1")
    step(o["order_ref"], "ready_for_pickup", LOCKER)
    step(o["order_ref"], "picked_up", LOCKER)
    summary.orders.append(o["order_ref"])
    _ok(
        client.post(
            f"/api/commerce/orders/{o['order_ref']}/returns",
            json={
                "mode": "mail",
                "location": "warehouse-1",
                "reason": "does not fit",
                "idempotency_key": "demo:locker:return:1",
                "items": [{"sku": jacket.sku, "quantity": 1, "condition": "sellable"}],
            },
            headers=agent,
        )
    )
    # 3. cancelled before it left the warehouse
    watch = next(p for p in world.catalog if p.category == "Sports Watches")
    o = order(
        cart_of(pids[2], [(watch.sku, 1)], "call_center", "phone"),
        "demo:cancel:1",
        fulfilment="ship",
        ship_address={"name": known[2].name, "city": known[2].city},
        channel="call_center",
    )
    step(o["order_ref"], "cancelled", None)
    summary.orders.append(o["order_ref"])
    # 4. abandoned in the app
    bottle = next(p for p in world.catalog if p.category == "Bottles")
    cart_of(pids[3], [(shoes[-1].sku, 1), (bottle.sku, 2)], "app", "mobile")


def describe(summary: CommerceSummary) -> str:
    head = (
        f"commerce: {summary.products} products, {summary.locations} locations (with a parcel locker), "
        f"{summary.stock_rows} stock rows"
    )
    if summary.skipped:
        return head + "; the demo orders were placed by an earlier run"
    if summary.orders:
        return head + f"; orders placed through the commerce API: {', '.join(summary.orders)}"
    return head
