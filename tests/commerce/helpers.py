"""Shared set-up for commerce tests: a small catalog, four locations, stock, a store-staff token."""

from __future__ import annotations

from typing import Any

import httpx
import sqlalchemy as sa

from omnijourney.access import service as access
from omnijourney.commerce import service
from omnijourney.store import db
from omnijourney.store.base import utcnow

PRODUCTS = [
    {
        "sku": "SHOE-42",
        "product_id": "SHOE",
        "name": "Trail shoe 42",
        "category": "shoes",
        "brand": "Hory",
        "prices": {"CZK": "2490.00", "EUR": "99.90"},
        "attributes": {"size": "42"},
    },
    {
        "sku": "SHOE-43",
        "product_id": "SHOE",
        "name": "Trail shoe 43",
        "category": "shoes",
        "brand": "Hory",
        "prices": {"CZK": "2490.00"},
        "attributes": {"size": "43"},
        "related": [{"sku": "SHOE-42", "kind": "alternative"}],
    },
    {"sku": "SOCK-1", "name": "Merino socks", "category": "socks", "prices": {"CZK": "195.00"}},
    {
        "sku": "SPRAY-1",
        "name": "Waterproofing spray",
        "category": "care",
        "prices": {"CZK": "149.50"},
    },
]
RELATIONS = {"SHOE-42": [{"sku": "SOCK-1", "kind": "accessory"}, {"sku": "SPRAY-1", "kind": "accessory"}]}

LOCATIONS = [
    {
        "code": "wh-central",
        "name": "Central warehouse",
        "kind": "warehouse",
        "latitude": 50.10,
        "longitude": 14.26,
        "ships": True,
        "channels": ["web", "app"],
    },
    {
        "code": "store-praha-1",
        "name": "Praha Centrum",
        "kind": "store",
        "latitude": 50.0870,
        "longitude": 14.4208,
        "pickup": True,
        "opening_hours": {"mon": [["09:00", "20:00"]]},
        "channels": ["store"],
    },
    {
        "code": "store-brno-1",
        "name": "Brno Náměstí",
        "kind": "store",
        "latitude": 49.1951,
        "longitude": 16.6068,
        "pickup": True,
        "channels": ["store"],
    },
    {
        "code": "store-ostrava",
        "name": "Ostrava (no pickup)",
        "kind": "store",
        "latitude": 49.8209,
        "longitude": 18.2625,
        "pickup": False,
        "channels": ["store"],
    },
]


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def staff_token(engine: sa.Engine) -> str:
    with db.write(engine) as conn:
        return access.create_token(conn=conn, role="store_staff", name="store")


def setup_catalog(client: httpx.Client, admin: str) -> None:
    products = [dict(p) for p in PRODUCTS]
    r = client.post("/api/commerce/products", json={"products": products}, headers=bearer(admin))
    assert r.status_code == 200, r.text
    rel = [{**next(p for p in PRODUCTS if p["sku"] == s), "related": v} for s, v in RELATIONS.items()]
    r = client.post("/api/commerce/products", json={"products": rel}, headers=bearer(admin))
    assert r.status_code == 200, r.text
    r = client.put("/api/commerce/locations", json={"locations": LOCATIONS}, headers=bearer(admin))
    assert r.status_code == 200, r.text


def seed_service(engine: sa.Engine) -> None:
    """The same catalog and locations, written through the service layer (no server)."""
    from omnijourney.commerce.schemas import LocationIn, ProductIn

    now = utcnow()
    with db.write(engine) as conn:
        service.upsert_products(conn=conn, items=[ProductIn.model_validate(p).row() for p in PRODUCTS], now=now)
        rel = [{**next(p for p in PRODUCTS if p["sku"] == s), "related": v} for s, v in RELATIONS.items()]
        service.upsert_products(conn=conn, items=[ProductIn.model_validate(p).row() for p in rel], now=now)
        service.upsert_locations(
            conn=conn, items=[LocationIn.model_validate(x).model_dump() for x in LOCATIONS], now=now
        )


def set_stock(engine: sa.Engine, sku: str, location: str, on_hand: int, key: str | None = None) -> None:
    with db.write(engine) as conn:
        service.update_stock(
            conn=conn,
            external_id=key or f"init:{sku}:{location}:{on_hand}",
            sku=sku,
            location=location,
            mode="absolute",
            quantity=on_hand,
            now=utcnow(),
        )


def stock(engine: sa.Engine, sku: str, location: str) -> dict[str, Any]:
    with db.read(engine) as conn:
        row = service.stock_row(conn=conn, sku=sku, location=location)
    return row or {"on_hand": 0, "reserved": 0, "allocated": 0, "available": 0, "damaged": 0}


def count(engine: sa.Engine, sql: str, **params: Any) -> int:
    with db.read(engine) as conn:
        return int(conn.execute(sa.text(sql), params).scalar_one())
