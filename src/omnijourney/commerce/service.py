"""Commerce continuity. Plain keyword-only functions taking `conn`; the caller owns the transaction.

Concurrency (see docs/COMMERCE.md):
- Stock changes are guarded atomic UPDATEs (`... WHERE on_hand - reserved - allocated >= :q`) whose
  rowcount decides; CHECK constraints are the last line. No read-then-write on stock counts.
- Locks are taken in one global order: cart -> checkout -> order -> reservations -> stock rows
  (sorted by (sku, location)) -> loyalty accounts (sorted by profile id). A transaction never holds
  a later lock while waiting for an earlier one, so there are no deadlock cycles.
- Idempotency is enforced by UNIQUE constraints, not by reads: stock updates by external id,
  orders by idempotency key, cart, checkout and order reference, loyalty ledger entries by key.
- Any error raises `CommerceError` before commit; the caller's scope rolls everything back, so a
  refused request changes nothing.
"""

from __future__ import annotations

import math
import uuid
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import lru_cache
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Row
from sqlalchemy.exc import IntegrityError

from omnijourney.commerce import events
from omnijourney.commerce.config import (
    CURRENCY_EXPONENTS,
    CommerceConfig,
    LoyaltyRules,
    is_currency,
    load_commerce_config,
    to_major,
)
from omnijourney.commerce.models import (
    Cart,
    CartChange,
    CartLine,
    Checkout,
    Location,
    LoyaltyAccount,
    LoyaltyEntry,
    Order,
    OrderHistory,
    OrderLine,
    Price,
    Product,
    RelatedProduct,
    Reservation,
    Return,
    ReturnLine,
    Stock,
    StockUpdate,
)
from omnijourney.identity import service as identity
from omnijourney.identity.models import IdentityLink, Profile
from omnijourney.identity.rules import IdentityRules
from omnijourney.store import dialect

PRODUCTS = Product.__table__
PRICES = Price.__table__
RELATED = RelatedProduct.__table__
LOCATIONS = Location.__table__
STOCK = Stock.__table__
STOCK_UPDATES = StockUpdate.__table__
CARTS = Cart.__table__
CART_LINES = CartLine.__table__
CART_CHANGES = CartChange.__table__
CHECKOUTS = Checkout.__table__
RESERVATIONS = Reservation.__table__
ORDERS = Order.__table__
ORDER_LINES = OrderLine.__table__
ORDER_HISTORY = OrderHistory.__table__
RETURNS = Return.__table__
RETURN_LINES = ReturnLine.__table__
ACCOUNTS = LoyaltyAccount.__table__
LEDGER = LoyaltyEntry.__table__
LINKS = IdentityLink.__table__
PROFILES = Profile.__table__

MAX_LINE_QUANTITY = 999
MAX_STOCK = 10_000_000
CHUNK = 500

#: allowed order status changes (returns set partially_returned / returned themselves)
TRANSITIONS: dict[str, set[str]] = {
    "placed": {"paid", "ready_for_pickup", "shipped", "cancelled"},
    "paid": {"ready_for_pickup", "shipped", "cancelled"},
    "ready_for_pickup": {"picked_up", "cancelled"},
    "shipped": {"delivered"},
}
PICKUP_ONLY = {"ready_for_pickup", "picked_up"}
SHIP_ONLY = {"shipped", "delivered"}
#: statuses from which goods are with the customer and may come back
RETURNABLE = {"picked_up", "shipped", "delivered", "completed", "partially_returned"}
#: statuses whose allocation is still held in stock (consumed on ship / pickup, released on cancel)
ALLOCATED = {"placed", "paid", "ready_for_pickup"}
#: parcel-locker orders ship from the network to the locker, wait there, and are picked up; once
#: shipped (units consumed) they are no longer cancellable: an uncollected parcel comes back as a return
LOCKER_TRANSITIONS: dict[str, set[str]] = {
    "placed": {"paid", "shipped", "cancelled"},
    "paid": {"shipped", "cancelled"},
    "shipped": {"ready_for_pickup"},
    "ready_for_pickup": {"picked_up"},
}


def fulfilment_of(stored: str, pickup_location: str | None) -> str:
    """The fulfilment type as the API shows it. A parcel-locker delivery is stored as shipping to a
    pickup point (`ship` + the locker's code in `pickup_location`), which keeps the CHECK constraints
    of migration 0003 (SQLite cannot widen a CHECK without rebuilding the orders table)."""
    return "parcel_locker" if stored == "ship" and pickup_location else stored


def _is_locker_order(o: Any) -> bool:
    return fulfilment_of(o.fulfilment, o.pickup_location) == "parcel_locker"


class CommerceError(ValueError):
    """A refused request: HTTP status, a stable machine code and a human message."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def _not_found(what: str) -> CommerceError:
    return CommerceError(404, "not_found", what)


def _savepoint_insert(conn: Connection, stmt: Any) -> int | None:
    """Run an INSERT .. RETURNING id in a savepoint; None when a UNIQUE constraint refused it."""
    try:
        with conn.begin_nested():
            return int(conn.execute(stmt).scalar_one())
    except IntegrityError:
        return None


def _inserted(conn: Connection, stmt: Any, row: dict[str, Any]) -> bool:
    """INSERT .. ON CONFLICT DO NOTHING RETURNING id: True if the row was new (rowcount is not
    reliable across drivers for this statement, RETURNING is)."""
    return conn.execute(stmt, row).first() is not None


# ============================================================================ catalog


def upsert_products(*, conn: Connection, items: Sequence[dict[str, Any]], now: datetime) -> int:
    """Create or replace products with their prices and related products (all or nothing)."""
    if not items:
        return 0
    skus = [i["sku"] for i in items]
    if len(set(skus)) != len(skus):
        raise CommerceError(422, "duplicate_sku", "a SKU appears twice in one import")
    rows = [
        {
            "sku": i["sku"],
            "product_id": i.get("product_id") or i["sku"],
            "name": i["name"],
            "category": i.get("category"),
            "brand": i.get("brand"),
            "attributes": i.get("attributes") or {},
            "active": bool(i.get("active", True)),
            "updated_at": now,
        }
        for i in items
    ]
    for start in range(0, len(rows), CHUNK):
        dialect.upsert_replace(conn, PRODUCTS, rows[start : start + CHUNK], ["sku"])
    # prices and relations are replaced as a whole for the SKUs given
    with_prices = [i["sku"] for i in items if i.get("prices") is not None]
    for start in range(0, len(with_prices), CHUNK):
        conn.execute(sa.delete(PRICES).where(PRICES.c.sku.in_(with_prices[start : start + CHUNK])))
    price_rows = [
        {"sku": i["sku"], "currency": cur, "amount_minor": amount}
        for i in items
        for cur, amount in (i.get("prices") or {}).items()
    ]
    if price_rows:
        conn.execute(sa.insert(PRICES), price_rows)
    with_related = [i["sku"] for i in items if i.get("related") is not None]
    for start in range(0, len(with_related), CHUNK):
        conn.execute(sa.delete(RELATED).where(RELATED.c.sku.in_(with_related[start : start + CHUNK])))
    rel_rows = {
        (i["sku"], r["sku"], r["kind"]): {
            "sku": i["sku"],
            "related_sku": r["sku"],
            "kind": r["kind"],
            "quantity": r.get("quantity", 1),
        }
        for i in items
        for r in (i.get("related") or [])
    }
    if rel_rows:
        targets = sorted({r["related_sku"] for r in rel_rows.values()})
        missing = sorted(set(targets) - known_skus(conn=conn, skus=targets))
        if missing:
            raise CommerceError(422, "unknown_sku", f"related products not in the catalog: {', '.join(missing[:20])}")
        if any(k[0] == k[1] for k in rel_rows):
            raise CommerceError(422, "invalid_relation", "a product cannot be related to itself")
        conn.execute(sa.insert(RELATED), list(rel_rows.values()))
    return len(items)


def known_skus(*, conn: Connection, skus: Iterable[str], active_only: bool = False) -> set[str]:
    skus = list(skus)
    out: set[str] = set()
    for start in range(0, len(skus), CHUNK):
        stmt = sa.select(PRODUCTS.c.sku).where(PRODUCTS.c.sku.in_(skus[start : start + CHUNK]))
        if active_only:
            stmt = stmt.where(PRODUCTS.c.active)
        out.update(r[0] for r in conn.execute(stmt))
    return out


def _require_skus(conn: Connection, skus: Iterable[str]) -> None:
    skus = set(skus)
    missing = sorted(skus - known_skus(conn=conn, skus=skus, active_only=True))
    if missing:
        raise CommerceError(422, "unknown_sku", f"unknown or inactive SKU: {', '.join(missing[:20])}")


def get_product(*, conn: Connection, sku: str) -> dict[str, Any] | None:
    row = conn.execute(sa.select(PRODUCTS).where(PRODUCTS.c.sku == sku)).first()
    if row is None:
        return None
    prices = {
        r.currency: {"amount": to_major(r.amount_minor, r.currency), "minor": r.amount_minor}
        for r in conn.execute(sa.select(PRICES).where(PRICES.c.sku == sku).order_by(PRICES.c.currency))
    }
    related: dict[str, list[dict[str, Any]]] = {}
    for r in conn.execute(
        sa.select(RELATED.c.related_sku, RELATED.c.kind, RELATED.c.quantity, PRODUCTS.c.name)
        .join(PRODUCTS, PRODUCTS.c.sku == RELATED.c.related_sku)
        .where(RELATED.c.sku == sku)
        .order_by(RELATED.c.kind, RELATED.c.related_sku)
    ):
        related.setdefault(r.kind, []).append({"sku": r.related_sku, "name": r.name, "quantity": r.quantity})
    variants = [
        r[0]
        for r in conn.execute(
            sa.select(PRODUCTS.c.sku).where(PRODUCTS.c.product_id == row.product_id).order_by(PRODUCTS.c.sku)
        )
    ]
    return {
        "sku": row.sku,
        "product_id": row.product_id,
        "name": row.name,
        "category": row.category,
        "brand": row.brand,
        "attributes": row.attributes,
        "active": bool(row.active),
        "prices": prices,
        "related": related,
        "variants": variants,
        "updated_at": row.updated_at,
    }


def _prices(conn: Connection, skus: Sequence[str], currency: str) -> dict[str, int]:
    if not skus:
        return {}
    return dict(
        conn.execute(
            sa.select(PRICES.c.sku, PRICES.c.amount_minor).where(PRICES.c.sku.in_(skus), PRICES.c.currency == currency)
        ).all()
    )


# ============================================================================ locations


def upsert_locations(*, conn: Connection, items: Sequence[dict[str, Any]], now: datetime) -> int:
    rows = [
        {
            "code": i["code"],
            "name": i["name"],
            "kind": i["kind"],
            "address": i.get("address") or {},
            "latitude": i.get("latitude"),
            "longitude": i.get("longitude"),
            "opening_hours": i.get("opening_hours") or {},
            "ships": bool(i.get("ships", False)),
            "pickup": bool(i.get("pickup", False)),
            "pickup_sourcing": i.get("pickup_sourcing") or "store_only",
            "channels": list(i.get("channels") or []),
            "active": bool(i.get("active", True)),
            "updated_at": now,
        }
        for i in items
    ]
    dialect.upsert_replace(conn, LOCATIONS, rows, ["code"])
    return len(rows)


def _location_dict(r: Any) -> dict[str, Any]:
    return {
        "code": r.code,
        "name": r.name,
        "kind": r.kind,
        "address": r.address,
        "latitude": r.latitude,
        "longitude": r.longitude,
        "opening_hours": r.opening_hours,
        "ships": bool(r.ships),
        "pickup": bool(r.pickup),
        "pickup_sourcing": r.pickup_sourcing,
        "channels": r.channels,
        "active": bool(r.active),
    }


def list_locations(*, conn: Connection) -> list[dict[str, Any]]:
    return [_location_dict(r) for r in conn.execute(sa.select(LOCATIONS).order_by(LOCATIONS.c.code))]


def get_location(*, conn: Connection, code: str) -> dict[str, Any] | None:
    row = conn.execute(sa.select(LOCATIONS).where(LOCATIONS.c.code == code)).first()
    return _location_dict(row) if row else None


# ============================================================================ stock


def _ensure_stock_rows(conn: Connection, pairs: Iterable[tuple[str, str]], now: datetime) -> None:
    rows = [
        {"sku": s, "location": loc, "on_hand": 0, "reserved": 0, "allocated": 0, "damaged": 0, "updated_at": now}
        for s, loc in sorted(set(pairs))
    ]
    if rows:
        conn.execute(dialect.insert_ignoring_conflicts(conn, STOCK, ["sku", "location"]), rows)


def _stock_dict(r: Any) -> dict[str, Any]:
    return {
        "sku": r.sku,
        "location": r.location,
        "on_hand": r.on_hand,
        "reserved": r.reserved,
        "allocated": r.allocated,
        "available": r.on_hand - r.reserved - r.allocated,
        "damaged": r.damaged,
        "updated_at": r.updated_at,
    }


def stock_row(*, conn: Connection, sku: str, location: str) -> dict[str, Any] | None:
    row = conn.execute(sa.select(STOCK).where(STOCK.c.sku == sku, STOCK.c.location == location)).first()
    return _stock_dict(row) if row else None


def update_stock(
    *,
    conn: Connection,
    external_id: str,
    sku: str,
    location: str,
    mode: str,
    quantity: int,
    now: datetime,
    event_id: int | None = None,
    record_rejection: bool = False,
) -> dict[str, Any]:
    """Apply an absolute count or a delta from POS/ERP, once per external id.

    A repeated external id answers with the first result and changes nothing. An update that would
    make on hand negative or below what is reserved and allocated is refused (CommerceError), or,
    with `record_rejection` (the event path, which must not fail), recorded as rejected.
    """
    if mode not in ("absolute", "delta"):
        raise CommerceError(422, "invalid_mode", "mode is 'absolute' or 'delta'")
    previous = conn.execute(sa.select(STOCK_UPDATES).where(STOCK_UPDATES.c.external_id == external_id)).first()
    if previous is not None:
        return _update_result(previous, duplicate=True)
    if not known_skus(conn=conn, skus=[sku]):
        raise CommerceError(422, "unknown_sku", f"unknown SKU {sku!r}")
    if get_location(conn=conn, code=location) is None:
        raise CommerceError(422, "unknown_location", f"unknown location {location!r}")
    ins = dialect.insert_ignoring_conflicts(conn, STOCK_UPDATES, ["external_id"]).returning(STOCK_UPDATES.c.id)
    fresh = _inserted(
        conn,
        ins,
        {
            "external_id": external_id,
            "sku": sku,
            "location": location,
            "mode": mode,
            "quantity": quantity,
            "status": "applied",
            "on_hand_after": None,
            "detail": None,
            "event_id": event_id,
            "applied_at": now,
        },
    )
    if not fresh:  # a concurrent request with the same id committed first
        previous = conn.execute(sa.select(STOCK_UPDATES).where(STOCK_UPDATES.c.external_id == external_id)).one()
        return _update_result(previous, duplicate=True)
    _ensure_stock_rows(conn, [(sku, location)], now)
    key = (STOCK.c.sku == sku) & (STOCK.c.location == location)
    if mode == "absolute":
        guard = sa.literal(quantity) - STOCK.c.reserved - STOCK.c.allocated >= 0
        values = {"on_hand": quantity}
    else:
        guard = (STOCK.c.on_hand + quantity - STOCK.c.reserved - STOCK.c.allocated >= 0) & (
            STOCK.c.on_hand + quantity <= MAX_STOCK
        )
        values = {"on_hand": STOCK.c.on_hand + quantity}
    done = conn.execute(sa.update(STOCK).where(key, guard).values(**values, updated_at=now)).rowcount == 1
    after = stock_row(conn=conn, sku=sku, location=location)
    assert after is not None
    if not done:
        detail = (
            f"would leave {sku} at {location} below what is reserved and allocated "
            f"(on hand {after['on_hand']}, reserved {after['reserved']}, allocated {after['allocated']})"
        )
        if not record_rejection:
            raise CommerceError(409, "insufficient_stock", detail)
        conn.execute(
            sa.update(STOCK_UPDATES)
            .where(STOCK_UPDATES.c.external_id == external_id)
            .values(status="rejected", detail=detail[:300], on_hand_after=after["on_hand"])
        )
    else:
        conn.execute(
            sa.update(STOCK_UPDATES)
            .where(STOCK_UPDATES.c.external_id == external_id)
            .values(on_hand_after=after["on_hand"])
        )
    row = conn.execute(sa.select(STOCK_UPDATES).where(STOCK_UPDATES.c.external_id == external_id)).one()
    return {**_update_result(row, duplicate=False), "stock": after}


def _update_result(row: Any, *, duplicate: bool) -> dict[str, Any]:
    return {
        "external_id": row.external_id,
        "sku": row.sku,
        "location": row.location,
        "mode": row.mode,
        "quantity": row.quantity,
        "status": row.status,
        "on_hand_after": row.on_hand_after,
        "detail": row.detail,
        "duplicate": duplicate,
    }


# ============================================================================ availability


def availability(*, conn: Connection, sku: str) -> dict[str, Any]:
    rows = conn.execute(
        sa.select(STOCK, LOCATIONS.c.kind, LOCATIONS.c.name, LOCATIONS.c.ships, LOCATIONS.c.pickup)
        .join(LOCATIONS, LOCATIONS.c.code == STOCK.c.location)
        .where(STOCK.c.sku == sku, LOCATIONS.c.active)
        .order_by(STOCK.c.location)
    ).all()
    locations = [
        {**_stock_dict(r), "kind": r.kind, "name": r.name, "ships": bool(r.ships), "pickup": bool(r.pickup)}
        for r in rows
    ]
    return {
        "sku": sku,
        "available": sum(max(0, loc["available"]) for loc in locations),
        "available_to_ship": sum(max(0, loc["available"]) for loc in locations if loc["ships"]),
        "locations": locations,
    }


def location_stock(
    *, conn: Connection, location: str, skus: Sequence[str] | None = None, after: str | None = None, limit: int = 500
) -> list[dict[str, Any]]:
    stmt = sa.select(STOCK).where(STOCK.c.location == location).order_by(STOCK.c.sku).limit(limit)
    if skus:
        stmt = stmt.where(STOCK.c.sku.in_(list(skus)))
    if after:
        stmt = stmt.where(STOCK.c.sku > after)
    return [_stock_dict(r) for r in conn.execute(stmt)]


def haversine_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 6371.0088 * 2 * math.asin(min(1.0, math.sqrt(a)))


def nearest_with_stock(
    *,
    conn: Connection,
    sku: str,
    latitude: float,
    longitude: float,
    quantity: int = 1,
    limit: int = 5,
    pickup_only: bool = False,
    max_km: float | None = None,
) -> list[dict[str, Any]]:
    """Locations holding at least `quantity` available units of `sku`, nearest first (great-circle km)."""
    stmt = (
        sa.select(STOCK, LOCATIONS)
        .join(LOCATIONS, LOCATIONS.c.code == STOCK.c.location)
        .where(
            STOCK.c.sku == sku,
            STOCK.c.on_hand - STOCK.c.reserved - STOCK.c.allocated >= quantity,
            LOCATIONS.c.active,
            LOCATIONS.c.latitude.is_not(None),
            LOCATIONS.c.longitude.is_not(None),
        )
    )
    if pickup_only:
        stmt = stmt.where(LOCATIONS.c.pickup)
    out = []
    for r in conn.execute(stmt):
        km = haversine_km(latitude, longitude, r.latitude, r.longitude)
        if max_km is not None and km > max_km:
            continue
        out.append({**_location_dict(r), "stock": _stock_dict(r), "distance_km": round(km, 3)})
    out.sort(key=lambda x: (x["distance_km"], x["code"]))
    return out[:limit]


# ============================================================================ reservations


def _reserve(conn: Connection, sku: str, location: str, quantity: int, now: datetime) -> bool:
    """The guarded atomic UPDATE: succeeds only if that many units are available right now."""
    res = conn.execute(
        sa.update(STOCK)
        .where(
            STOCK.c.sku == sku,
            STOCK.c.location == location,
            STOCK.c.on_hand - STOCK.c.reserved - STOCK.c.allocated >= quantity,
        )
        .values(reserved=STOCK.c.reserved + quantity, updated_at=now)
    )
    return res.rowcount == 1


def _release(conn: Connection, rows: Sequence[Any], now: datetime, status: str) -> int:
    """Give reserved units back, in (sku, location) order, and mark the reservations."""
    released = 0
    for r in sorted(rows, key=lambda r: (r.sku, r.location, r.id)):
        res = conn.execute(
            sa.update(STOCK)
            .where(STOCK.c.sku == r.sku, STOCK.c.location == r.location, STOCK.c.reserved >= r.quantity)
            .values(reserved=STOCK.c.reserved - r.quantity, updated_at=now)
        )
        if res.rowcount != 1:
            raise RuntimeError(f"reservation {r.id}: stock {r.sku}@{r.location} holds fewer reserved units")
        released += r.quantity
    ids = [r.id for r in rows]
    if ids:
        conn.execute(sa.update(RESERVATIONS).where(RESERVATIONS.c.id.in_(ids)).values(status=status))
    return released


def hold(
    *,
    conn: Connection,
    sku: str,
    location: str,
    quantity: int,
    reference: str | None,
    ttl_seconds: int,
    now: datetime,
) -> dict[str, Any]:
    """An in-store hold: reserve units at a location until they expire (or are released)."""
    _require_skus(conn, [sku])
    if get_location(conn=conn, code=location) is None:
        raise CommerceError(422, "unknown_location", f"unknown location {location!r}")
    if not _reserve(conn, sku, location, quantity, now):
        raise CommerceError(409, "insufficient_stock", f"fewer than {quantity} units of {sku} available at {location}")
    rid = conn.execute(
        sa.insert(RESERVATIONS)
        .values(
            checkout_id=None,
            reference=reference,
            sku=sku,
            location=location,
            quantity=quantity,
            status="active",
            created_at=now,
            expires_at=now + timedelta(seconds=ttl_seconds),
        )
        .returning(RESERVATIONS.c.id)
    ).scalar_one()
    return reservation(conn=conn, reservation_id=rid) or {}


def reservation(*, conn: Connection, reservation_id: int) -> dict[str, Any] | None:
    r = conn.execute(sa.select(RESERVATIONS).where(RESERVATIONS.c.id == reservation_id)).first()
    return dict(r._mapping) if r else None


def release_hold(*, conn: Connection, reservation_id: int, now: datetime) -> dict[str, Any]:
    stmt = sa.select(RESERVATIONS).where(RESERVATIONS.c.id == reservation_id, RESERVATIONS.c.checkout_id.is_(None))
    r = conn.execute(dialect.for_update(stmt, conn)).first()
    if r is None:
        raise _not_found(f"no hold {reservation_id}")
    if r.status == "active":
        _release(conn, [r], now, "released")
    return reservation(conn=conn, reservation_id=reservation_id) or {}


def sweep_expired_reservations(*, conn: Connection, now: datetime, limit: int = 1000) -> int:
    """Release reservations past their expiry; returns how many reservations were released.

    Expired open checkouts are locked with SKIP LOCKED (one being completed right now is left for
    the next sweep), then their reservations and expired holds, then stock rows in (sku, location)
    order: the sweeper never waits for a lock that an order completion could be holding.
    """
    checkouts = [
        r[0]
        for r in conn.execute(
            dialect.for_update_skip_locked(
                sa.select(CHECKOUTS.c.id)
                .where(CHECKOUTS.c.status == "open", CHECKOUTS.c.expires_at <= now)
                .order_by(CHECKOUTS.c.id)
                .limit(limit),
                conn,
            )
        )
    ]
    if checkouts:
        conn.execute(sa.update(CHECKOUTS).where(CHECKOUTS.c.id.in_(checkouts)).values(status="expired"))
    owner = RESERVATIONS.c.checkout_id.is_(None)
    if checkouts:
        owner = owner | RESERVATIONS.c.checkout_id.in_(checkouts)
    rows = conn.execute(
        dialect.for_update_skip_locked(
            sa.select(RESERVATIONS)
            .where(RESERVATIONS.c.status == "active", RESERVATIONS.c.expires_at <= now, owner)
            .order_by(RESERVATIONS.c.id)
            .limit(limit),
            conn,
        )
    ).all()
    # reservations of checkouts that are expired in time but were locked by someone else stay for later
    rows = [r for r in rows if r.checkout_id is None or r.checkout_id in set(checkouts)]
    _release(conn, rows, now, "expired")
    return len(rows)


# ============================================================================ carts


def _device(payload: dict[str, Any]) -> str | None:
    ctx = payload.get("context") if isinstance(payload.get("context"), dict) else {}
    device = ctx.get("device")
    if isinstance(device, dict):
        for key in ("type", "model", "manufacturer"):
            if isinstance(device.get(key), str) and device[key]:
                return device[key][:128]
    ua = ctx.get("userAgent")
    if isinstance(ua, str) and ua:
        return "mobile" if "Mobile" in ua or "Android" in ua else "desktop"
    return None


_INSERT_CHANGE = sa.insert(CART_CHANGES).returning(CART_CHANGES.c.id)


def _record_cart_change(
    conn: Connection,
    cart_id: int,
    action: str,
    now: datetime,
    *,
    sku: str | None = None,
    quantity: int | None = None,
    channel: str | None = None,
    device: str | None = None,
    actor: str | None = None,
    event_id: int | None = None,
    detail: dict[str, Any] | None = None,
) -> int | None:
    """Record a cart change and return its id; with an event id, None if that event was applied already."""
    row = {
        "cart_id": cart_id,
        "action": action,
        "sku": sku,
        "quantity": quantity,
        "channel": channel,
        "device": device,
        "actor": actor[:100] if actor else None,
        "event_id": event_id,
        "detail": detail or {},
        "at": now,
    }
    if event_id is None:
        return int(conn.execute(_INSERT_CHANGE, row).scalar_one())
    found = conn.execute(
        dialect.insert_ignoring_conflicts(conn, CART_CHANGES, ["event_id"]).returning(CART_CHANGES.c.id), row
    ).first()
    return int(found[0]) if found is not None else None


_CART_VALUE = (
    sa.select(sa.func.coalesce(sa.func.sum(PRICES.c.amount_minor * CART_LINES.c.quantity), 0))
    .select_from(
        CART_LINES.join(PRICES, sa.and_(PRICES.c.sku == CART_LINES.c.sku, PRICES.c.currency == CARTS.c.currency))
    )
    .where(CART_LINES.c.cart_id == CARTS.c.id)
    .scalar_subquery()
)
_TOUCH_CART = (
    sa.update(CARTS)
    .where(CARTS.c.id == sa.bindparam("cart"))
    .values(updated_at=sa.bindparam("now", type_=CARTS.c.updated_at.type), value_minor=_CART_VALUE)
    .returning(CARTS.c.value_minor)
)


def _touch_cart(conn: Connection, cart_id: int, now: datetime) -> int:
    """Keep the abandoned-cart signal current: last change time and value in the cart's currency
    (lines without a price count 0), computed by the database in the UPDATE itself; returns the value."""
    return int(conn.execute(_TOUCH_CART, {"cart": cart_id, "now": now}).scalar_one())


def _amount(minor: int, currency: str) -> float:
    """Minor units as the Segment spec's number (events carry floats; the tables keep integers)."""
    return minor / 10 ** CURRENCY_EXPONENTS.get(currency, 2)


def _emit_cart_change(
    conn: Connection,
    cart: Row[Any],
    change_id: int,
    sku: str,
    delta: int,
    channel: str | None,
    device: str | None,
    now: datetime,
    known: tuple[str | None, int | None, int] | None = None,
) -> None:
    """`Product Added` / `Product Removed` (with the cart's id and value) for a change made through the API.

    `known`: (product name, unit price, cart value) when the caller has them already (no re-read)."""
    if delta == 0:
        return
    if known is not None:
        name, price, value = known
    else:
        price = _prices(conn, [sku], cart.currency).get(sku)
        head = conn.execute(
            sa.select(CARTS.c.value_minor, PRODUCTS.c.name)
            .select_from(CARTS.join(PRODUCTS, PRODUCTS.c.sku == sku))
            .where(CARTS.c.id == cart.id)
        ).one()
        name, value = head.name, head.value_minor
    props: dict[str, Any] = {
        "cart_id": str(cart.id),
        "product_id": sku,
        "sku": sku,
        "name": name,
        "quantity": abs(delta),
        "currency": cart.currency,
        "value": _amount(value, cart.currency),
    }
    if price is not None:
        props["price"] = _amount(price, cart.currency)
    if device:
        props["device"] = device
    events.emit(
        conn,
        message_id=f"oj:cart-change:{change_id}",
        event="Product Added" if delta > 0 else "Product Removed",
        channel=channel,
        profile_id=cart.profile_id,
        anonymous_id=cart.anonymous_id,
        properties=props,
        now=now,
    )


def _order_products(
    conn: Connection, order_id: int, currency: str, lines: Sequence[Any] | None = None
) -> list[dict[str, Any]]:
    if lines is None:
        lines = conn.execute(
            sa.select(ORDER_LINES).where(ORDER_LINES.c.order_id == order_id).order_by(ORDER_LINES.c.line_no)
        ).all()
    return [
        {
            "product_id": r.sku,
            "sku": r.sku,
            "name": r.name,
            "quantity": r.quantity,
            "price": _amount(r.unit_price_minor, currency),
            **({"location": r.location} if r.location else {}),
        }
        for r in lines
    ]


def _emit_order(
    conn: Connection,
    order_id: int,
    status: str,
    now: datetime,
    *,
    channel: str | None = None,
    location: str | None = None,
    extra: dict[str, Any] | None = None,
) -> None:
    """Append the event of an order's status change (`events.STATUS_EVENTS`), once per order and status."""
    events.append(conn, [_order_event(conn, order_id, status, now, channel=channel, location=location, extra=extra)])


def _order_event(
    conn: Connection,
    order_id: int,
    status: str,
    now: datetime,
    *,
    channel: str | None = None,
    location: str | None = None,
    extra: dict[str, Any] | None = None,
    order: Any = None,
    lines: Sequence[Any] | None = None,
) -> dict[str, Any] | None:
    """The prepared event row of an order's status change (see `events.prepare`); `order` and its
    `lines` (in line order) when the caller has just written them, else they are read."""
    o = order if order is not None else conn.execute(sa.select(ORDERS).where(ORDERS.c.id == order_id)).one()
    props: dict[str, Any] = {
        "order_id": o.order_ref,
        "status": status,
        "origin": o.origin,
        "fulfilment": fulfilment_of(o.fulfilment, o.pickup_location),
        "currency": o.currency,
        "total": _amount(o.total_minor, o.currency),
    }
    if status == "placed":
        props["revenue"] = _amount(o.total_minor, o.currency)
        props["products"] = _order_products(conn, order_id, o.currency, lines)
        if o.cart_id is not None:
            props["cart_id"] = str(o.cart_id)
        if o.checkout_id is not None:
            props["checkout_id"] = str(o.checkout_id)
    if o.pickup_location:
        props["pickup_location"] = o.pickup_location
    if location:
        props["location_id"] = location
    props.update(extra or {})
    return events.prepare(
        conn,
        message_id=f"oj:order:{order_id}:{status}",
        event=events.STATUS_EVENTS[status],
        channel=channel or o.channel,
        profile_id=o.profile_id,
        anonymous_id=o.anonymous_id,
        properties=props,
        now=now,
    )


#: an active product and its price in a currency (None when it has none)
_PRODUCT_IN = (
    sa.select(PRODUCTS.c.name, PRICES.c.amount_minor)
    .select_from(
        PRODUCTS.outerjoin(
            PRICES, sa.and_(PRICES.c.sku == PRODUCTS.c.sku, PRICES.c.currency == sa.bindparam("currency"))
        )
    )
    .where(PRODUCTS.c.sku == sa.bindparam("sku"), PRODUCTS.c.active)
)
#: add units to a cart line (created if new); no row back when the line would pass `:max` units. The
#: same SQL on SQLite and PostgreSQL (INSERT .. ON CONFLICT .. DO UPDATE .. WHERE .. RETURNING)
_ADD_LINE = (
    sa.text(
        "INSERT INTO commerce_cart_lines (cart_id, sku, quantity, channel, device, added_at, updated_at) "
        "VALUES (:cart, :sku, :q, :channel, :device, :now, :now) "
        "ON CONFLICT (cart_id, sku) DO UPDATE SET quantity = commerce_cart_lines.quantity + excluded.quantity, "
        "updated_at = excluded.updated_at WHERE commerce_cart_lines.quantity + excluded.quantity <= :max "
        "RETURNING quantity"
    )
    .bindparams(
        sa.bindparam("cart", type_=sa.BigInteger),
        sa.bindparam("q", type_=sa.Integer),
        sa.bindparam("max", type_=sa.Integer),
        sa.bindparam("now", type_=CART_LINES.c.added_at.type),
    )
    .columns(quantity=sa.Integer)
)


_LOCKING: dict[tuple[int, bool], Any] = {}


def _locking(conn: Connection, stmt: Any) -> Any:
    """`dialect.for_update(stmt, conn)` of a module-level statement, built once per dialect (building
    and caching-key a statement costs more CPU than the database takes to run these)."""
    key = (id(stmt), dialect.is_sqlite(conn))
    found = _LOCKING.get(key)
    if found is None:
        found = _LOCKING[key] = dialect.for_update(stmt, conn)
    return found


_CART_BY_ID = sa.select(CARTS).where(CARTS.c.id == sa.bindparam("id"))


def _lock_cart(conn: Connection, cart_id: int, *, follow: bool = True, active: bool = True) -> Row[Any]:
    """Lock a cart row; a merged cart is followed to the cart it was merged into."""
    for _ in range(20):
        row = conn.execute(_locking(conn, _CART_BY_ID), {"id": cart_id}).first()
        if row is None:
            raise _not_found(f"no cart {cart_id}")
        if follow and row.status == "merged" and row.merged_into is not None:
            cart_id = row.merged_into
            continue
        if active and row.status != "active":
            raise CommerceError(409, "cart_closed", f"cart {row.id} is {row.status}")
        return row
    raise CommerceError(409, "cart_closed", "merged-cart chain too long")


def _create_cart(
    conn: Connection, *, profile_id: int | None, anonymous_id: str | None, currency: str, now: datetime
) -> int | None:
    res = _savepoint_insert(
        conn,
        sa.insert(CARTS)
        .values(
            profile_id=profile_id,
            anonymous_id=anonymous_id,
            status="active",
            currency=currency,
            created_at=now,
            updated_at=now,
            value_minor=0,
        )
        .returning(CARTS.c.id),
    )
    return res


def _anonymous_ids(conn: Connection, member_ids: list[int]) -> list[str]:
    return [
        r[0]
        for r in conn.execute(
            sa.select(LINKS.c.value).where(LINKS.c.id_type == "anonymous_id", LINKS.c.profile_id.in_(member_ids))
        )
    ]


def _merge_lines(conn: Connection, target: int, sources: list[int], now: datetime, actor: str | None) -> None:
    """Merge rule: lines united by SKU; a SKU in both keeps the larger quantity (never the sum) and the
    channel, device and time of whichever line added it first."""
    lines = {r.sku: r for r in conn.execute(sa.select(CART_LINES).where(CART_LINES.c.cart_id == target))}
    for src in sources:
        moved = []
        for r in conn.execute(sa.select(CART_LINES).where(CART_LINES.c.cart_id == src).order_by(CART_LINES.c.sku)):
            have = lines.get(r.sku)
            if have is None:
                conn.execute(
                    sa.insert(CART_LINES).values(
                        cart_id=target,
                        sku=r.sku,
                        quantity=r.quantity,
                        channel=r.channel,
                        device=r.device,
                        added_at=r.added_at,
                        updated_at=r.updated_at,
                    )
                )
                lines[r.sku] = r
            else:
                first = r if r.added_at < have.added_at else have
                conn.execute(
                    sa.update(CART_LINES)
                    .where(CART_LINES.c.cart_id == target, CART_LINES.c.sku == r.sku)
                    .values(
                        quantity=max(r.quantity, have.quantity),
                        channel=first.channel,
                        device=first.device,
                        added_at=first.added_at,
                        updated_at=max(r.updated_at, have.updated_at),
                    )
                )
                lines[r.sku] = conn.execute(
                    sa.select(CART_LINES).where(CART_LINES.c.cart_id == target, CART_LINES.c.sku == r.sku)
                ).one()
            moved.append({"sku": r.sku, "quantity": r.quantity})
        conn.execute(
            sa.update(CARTS).where(CARTS.c.id == src).values(status="merged", merged_into=target, updated_at=now)
        )
        _record_cart_change(conn, target, "merge", now, actor=actor, detail={"from_cart": src, "lines": moved})


_DEVICE_CART = sa.select(CARTS.c.id).where(
    CARTS.c.anonymous_id == sa.bindparam("anon"), CARTS.c.profile_id.is_(None), CARTS.c.status == "active"
)
#: a device's new active cart; no row back when one was created concurrently (the partial UNIQUE
#: index of active anonymous carts; the same SQL on SQLite and PostgreSQL, no savepoint needed)
_NEW_DEVICE_CART = (
    sa.text(
        "INSERT INTO commerce_carts (profile_id, anonymous_id, status, currency, created_at, updated_at, value_minor) "
        "VALUES (NULL, :anon, 'active', :currency, :now, :now, 0) "
        "ON CONFLICT (anonymous_id) WHERE status = 'active' AND profile_id IS NULL DO NOTHING RETURNING id"
    )
    .bindparams(sa.bindparam("now", type_=CARTS.c.created_at.type))
    .columns(id=sa.BigInteger)
)


def resolve_cart(
    *,
    conn: Connection,
    rules: IdentityRules | None,
    profile_id: int | None = None,
    anonymous_id: str | None = None,
    currency: str,
    now: datetime,
    actor: str | None = None,
    create: bool = True,
) -> int | None:
    """The one active cart of a profile (or of an anonymous device), merging carts that now belong together.

    A profile's cart covers every member of its cluster and every anonymous id linked to it, so when a
    device's anonymous id is linked to a profile (login, e-mail capture) its cart merges into the
    profile's cart here. Carts are locked in id order before merging.
    """
    root: int | None = None
    if profile_id is not None:
        root = identity.canonical_id(conn=conn, profile_id=profile_id)
        if root is None:
            raise _not_found(f"no profile {profile_id}")
    elif anonymous_id and rules is not None:
        root = identity.lookup(conn=conn, rules=rules, id_type="anonymous_id", value=anonymous_id)
    if root is None:
        if not anonymous_id:
            raise CommerceError(422, "no_owner", "a cart needs a profile_id or an anonymous_id")
        params = {"anon": anonymous_id}
        found = conn.execute(_locking(conn, _DEVICE_CART), params).scalar_one_or_none()
        if found is not None or not create:
            return found
        new = conn.execute(_NEW_DEVICE_CART, {**params, "currency": currency, "now": now}).scalar_one_or_none()
        return new if new is not None else conn.execute(_DEVICE_CART, params).scalar_one()

    members = identity.members(conn=conn, root=root)
    anon = sorted(set(_anonymous_ids(conn, members)) | ({anonymous_id} if anonymous_id else set()))
    owned = CARTS.c.profile_id.in_(members)
    if anon:
        owned = owned | (CARTS.c.profile_id.is_(None) & CARTS.c.anonymous_id.in_(anon))
    stmt = sa.select(CARTS).where(CARTS.c.status == "active", owned).order_by(CARTS.c.id)
    carts = conn.execute(dialect.for_update(stmt, conn)).all()
    if not carts:
        if not create:
            return None
        new = _create_cart(conn, profile_id=root, anonymous_id=anonymous_id, currency=currency, now=now)
        if new is not None:
            return new
        carts = conn.execute(dialect.for_update(stmt, conn)).all()
    target = next(
        (c for c in carts if c.profile_id == root),
        next((c for c in carts if c.profile_id is not None), carts[0]),
    )
    others = [c.id for c in carts if c.id != target.id]
    if others:
        _merge_lines(conn, target.id, others, now, actor)
    if target.profile_id != root:
        conn.execute(sa.update(CARTS).where(CARTS.c.id == target.id).values(profile_id=root))
    if others:
        _touch_cart(conn, target.id, now)
    return int(target.id)


def cart_view(*, conn: Connection, cart_id: int) -> dict[str, Any] | None:
    cart = conn.execute(sa.select(CARTS).where(CARTS.c.id == cart_id)).first()
    if cart is None:
        return None
    lines = conn.execute(
        sa.select(CART_LINES, PRODUCTS.c.name)
        .join(PRODUCTS, PRODUCTS.c.sku == CART_LINES.c.sku)
        .where(CART_LINES.c.cart_id == cart_id)
        .order_by(CART_LINES.c.added_at, CART_LINES.c.sku)
    ).all()
    prices = _prices(conn, [line.sku for line in lines], cart.currency)
    out_lines = []
    for line in lines:
        price = prices.get(line.sku)
        out_lines.append(
            {
                "sku": line.sku,
                "name": line.name,
                "quantity": line.quantity,
                "unit_price": to_major(price, cart.currency) if price is not None else None,
                "line_total": to_major(price * line.quantity, cart.currency) if price is not None else None,
                "channel": line.channel,
                "device": line.device,
                "added_at": line.added_at,
                "updated_at": line.updated_at,
            }
        )
    return {
        "id": cart.id,
        "profile_id": cart.profile_id,
        "anonymous_id": cart.anonymous_id,
        "external_id": cart.external_id,
        "status": cart.status,
        "merged_into": cart.merged_into,
        "currency": cart.currency,
        "lines": out_lines,
        "item_count": sum(line.quantity for line in lines),
        "value": to_major(cart.value_minor, cart.currency),
        "value_minor": cart.value_minor,
        "created_at": cart.created_at,
        "updated_at": cart.updated_at,
    }


def add_to_cart(
    *,
    conn: Connection,
    cart_id: int,
    sku: str,
    quantity: int,
    channel: str,
    device: str | None,
    actor: str | None,
    now: datetime,
    event_id: int | None = None,
) -> int:
    """Add units of a SKU; returns the cart id written (a merged cart's survivor).

    Five statements: lock the cart, the product with its price, the change, the line (one upsert that
    refuses to pass the line limit), the cart's value; the event is built from what they returned."""
    cart = _lock_cart(conn, cart_id)
    product = conn.execute(_PRODUCT_IN, {"sku": sku, "currency": cart.currency}).first()
    if product is None:
        raise CommerceError(422, "unknown_sku", f"unknown or inactive SKU: {sku}")
    if quantity < 1 or quantity > MAX_LINE_QUANTITY:
        raise CommerceError(422, "invalid_quantity", f"quantity must be 1..{MAX_LINE_QUANTITY}")
    change_id = _record_cart_change(
        conn,
        cart.id,
        "add",
        now,
        sku=sku,
        quantity=quantity,
        channel=channel,
        device=device,
        actor=actor,
        event_id=event_id,
    )
    if change_id is None:
        return int(cart.id)
    row = {"cart": cart.id, "sku": sku, "q": quantity, "channel": channel, "device": device, "now": now}
    if conn.execute(_ADD_LINE, {**row, "max": MAX_LINE_QUANTITY}).first() is None:
        raise CommerceError(422, "invalid_quantity", f"a cart line holds at most {MAX_LINE_QUANTITY} units")
    value = _touch_cart(conn, cart.id, now)
    if event_id is None:  # changes from events are on the timeline already, as those events
        known = (product.name, product.amount_minor, value)
        _emit_cart_change(conn, cart, change_id, sku, quantity, channel, device, now, known=known)
    return int(cart.id)


def set_cart_quantity(
    *,
    conn: Connection,
    cart_id: int,
    sku: str,
    quantity: int,
    channel: str,
    device: str | None,
    actor: str | None,
    now: datetime,
    event_id: int | None = None,
    relative: bool = False,
) -> int:
    """Set a line's quantity (0 removes it); with `relative`, remove that many units."""
    cart = _lock_cart(conn, cart_id)
    if quantity < 0 or quantity > MAX_LINE_QUANTITY:
        raise CommerceError(422, "invalid_quantity", f"quantity must be 0..{MAX_LINE_QUANTITY}")
    have = conn.execute(
        sa.select(CART_LINES.c.quantity).where(CART_LINES.c.cart_id == cart.id, CART_LINES.c.sku == sku)
    ).scalar_one_or_none()
    if relative:
        quantity = max(0, (have or 0) - quantity)
    elif quantity > 0:
        _require_skus(conn, [sku])
    action = "remove" if quantity == 0 else "set"
    change_id = _record_cart_change(
        conn,
        cart.id,
        action,
        now,
        sku=sku,
        quantity=quantity,
        channel=channel,
        device=device,
        actor=actor,
        event_id=event_id,
    )
    if change_id is None:
        return int(cart.id)
    if quantity == 0:
        conn.execute(sa.delete(CART_LINES).where(CART_LINES.c.cart_id == cart.id, CART_LINES.c.sku == sku))
    elif have is None:
        conn.execute(
            sa.insert(CART_LINES).values(
                cart_id=cart.id,
                sku=sku,
                quantity=quantity,
                channel=channel,
                device=device,
                added_at=now,
                updated_at=now,
            )
        )
    else:
        conn.execute(
            sa.update(CART_LINES)
            .where(CART_LINES.c.cart_id == cart.id, CART_LINES.c.sku == sku)
            .values(quantity=quantity, updated_at=now)
        )
    _touch_cart(conn, cart.id, now)
    if event_id is None:
        _emit_cart_change(conn, cart, change_id, sku, quantity - (have or 0), channel, device, now)
    return int(cart.id)


def sync_cart_snapshot(
    *,
    conn: Connection,
    cart_id: int,
    lines: Sequence[tuple[str, int]],
    channel: str,
    device: str | None,
    actor: str | None,
    now: datetime,
    event_id: int,
) -> int:
    """A shop's view of its cart (`Cart Viewed` with products) merged into ours by the merge rule:
    lines united, a SKU in both keeps the larger quantity (never the sum), lines only we have stay
    (another device or channel added them). Unknown or inactive SKUs are skipped. Once per event."""
    cart = _lock_cart(conn, cart_id)
    wanted: dict[str, int] = {}
    for sku, quantity in lines:
        if 1 <= quantity <= MAX_LINE_QUANTITY:
            wanted[sku] = max(wanted.get(sku, 0), quantity)
    active = known_skus(conn=conn, skus=wanted, active_only=True)
    have = dict(
        conn.execute(sa.select(CART_LINES.c.sku, CART_LINES.c.quantity).where(CART_LINES.c.cart_id == cart.id)).all()
    )
    raised = {sku: q for sku, q in sorted(wanted.items()) if sku in active and q > have.get(sku, 0)}
    change = _record_cart_change(
        conn,
        cart.id,
        "sync",
        now,
        channel=channel,
        device=device,
        actor=actor,
        event_id=event_id,
        detail={"lines": [{"sku": k, "quantity": v} for k, v in raised.items()]},
    )
    if change is None or not raised:
        return int(cart.id)
    for sku, quantity in raised.items():
        if sku in have:
            conn.execute(
                sa.update(CART_LINES)
                .where(CART_LINES.c.cart_id == cart.id, CART_LINES.c.sku == sku)
                .values(quantity=quantity, updated_at=now)
            )
        else:
            conn.execute(
                sa.insert(CART_LINES).values(
                    cart_id=cart.id,
                    sku=sku,
                    quantity=quantity,
                    channel=channel,
                    device=device,
                    added_at=now,
                    updated_at=now,
                )
            )
    _touch_cart(conn, cart.id, now)
    return int(cart.id)


def cart_changes(*, conn: Connection, cart_id: int, limit: int = 200) -> list[dict[str, Any]]:
    ids = [cart_id] + [r[0] for r in conn.execute(sa.select(CARTS.c.id).where(CARTS.c.merged_into == cart_id))]
    rows = conn.execute(
        sa.select(CART_CHANGES).where(CART_CHANGES.c.cart_id.in_(ids)).order_by(CART_CHANGES.c.id.desc()).limit(limit)
    )
    return [dict(r._mapping) for r in rows]


# ============================================================================ carts, set-based (the processing stage)


class BatchConflict(Exception):
    """The set-based path cannot vouch for the per-call result (a cart changed under it between its
    read and its lock, or a new cart collided): the caller undoes the batch and goes call by call."""


@dataclass(eq=False)
class BatchCart:
    """One cart of a `CartBatch`; `lines` maps a SKU to [quantity, channel, device, added_at, updated_at]."""

    id: int | None  # None until a cart created in this batch is written
    seq: int  # creation order within the batch (new carts sort after every stored one, by seq)
    profile_id: int | None
    anonymous_id: str | None
    external_id: str | None
    status: str
    currency: str
    merged_into: BatchCart | int | None
    created_at: datetime
    updated_at: datetime
    value_minor: int
    lines: dict[str, list[Any]] = field(default_factory=dict)
    stored: tuple[Any, ...] | None = None  # the row as loaded (None: new in this batch)
    stored_lines: dict[str, tuple[Any, ...]] = field(default_factory=dict)
    touched: bool = False

    @property
    def order(self) -> tuple[int, int]:
        return (0, self.id or 0) if self.stored is not None else (1, self.seq)

    def quantity(self, sku: str) -> int | None:
        line = self.lines.get(sku)
        return line[0] if line is not None else None


@dataclass
class CartPlan:
    """What `resolve_cart` would do for one owner, computed without changing anything."""

    root: int | None  # the surviving profile (None: an anonymous device's cart)
    anonymous_id: str | None
    target: BatchCart | None  # None: a cart is created
    others: list[BatchCart]  # carts merged into the target, in id order

    def quantity(self, sku: str) -> int | None:
        """The quantity of `sku` on the resolved cart once merged (the larger one wins, never the sum)."""
        found = [q for c in ([self.target] if self.target else []) + self.others if (q := c.quantity(sku)) is not None]
        return max(found) if found else None


def _chunked(values: Iterable[Any]) -> Iterable[list[Any]]:
    items = sorted(set(values))
    for start in range(0, len(items), CHUNK):
        yield items[start : start + CHUNK]


class CartBatch:
    """The carts one processing batch works on, held in memory from one `load` to one `flush`.

    The same rules as `resolve_cart` (without identity rules), `add_to_cart` and relative
    `set_cart_quantity`, applied call by call in the caller's order (the event log's), then written
    back in a few bulk statements: carts, lines, and the change records in the order they happened.
    Checks that may refuse a call (`follow`, `plan`) come before anything changes, so a refused call
    changes nothing, as a rolled-back savepoint would.

    `load` reads the carts the batch may touch (by external id, the merged carts they lead to, and
    the active carts of every owner that may need resolving), then locks them in id order with
    their lines; on PostgreSQL a cart whose owner, status or merge changed between the read and the
    lock raises `BatchConflict`, and so does a new cart colliding with one created meanwhile
    (IntegrityError, on flush): the caller rolls back and applies the calls one by one.
    """

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self._by_id: dict[int, BatchCart] = {}
        self._by_external: dict[str, BatchCart] = {}
        self._by_profile: dict[int, list[BatchCart]] = {}
        self._by_anonymous: dict[str, list[BatchCart]] = {}
        self._new: list[BatchCart] = []
        self._changes: list[dict[str, Any]] = []
        self._canonical: dict[int, int | None] = {}
        self._members: dict[int, list[int]] = {}
        self._linked: dict[int, list[str]] = {}  # member profile -> its anonymous ids
        self._anonymous: set[str] = set()

    # ------------------------------------------------------------------ load

    def _select(self, where: Any) -> list[Row[Any]]:
        return self.conn.execute(sa.select(CARTS).where(where)).all()

    def load(self, wanted: Iterable[tuple[str, int | None, str | None]]) -> None:
        """Read and lock the carts needed for (external cart id, root profile, anonymous id) requests;
        owners are loaded for external ids no cart has yet (those are resolved like `resolve_cart`)."""
        conn = self.conn
        wanted = list(wanted)
        rows: dict[int, Row[Any]] = {}
        for chunk in _chunked(ext for ext, _, _ in wanted):
            rows.update((r.id, r) for r in self._select(CARTS.c.external_id.in_(chunk)))
        known = {r.external_id for r in rows.values()}
        # the carts merged ones lead to (`_lock_cart` follows at most 20 rows)
        for _ in range(20):
            pending = {r.merged_into for r in rows.values() if r.status == "merged" and r.merged_into is not None}
            pending -= rows.keys()
            if not pending:
                break
            for chunk in _chunked(pending):
                rows.update((r.id, r) for r in self._select(CARTS.c.id.in_(chunk)))
        # owners of external ids not known yet: the identity graph is fixed while the batch runs
        roots = {root for ext, root, _ in wanted if ext not in known and root is not None}
        self._anonymous = {anon for ext, root, anon in wanted if ext not in known and root is None and anon}
        for chunk in _chunked(roots):
            self._canonical.update(
                conn.execute(sa.select(PROFILES.c.id, PROFILES.c.canonical_id).where(PROFILES.c.id.in_(chunk))).all()
            )
        for root in roots:
            self._canonical.setdefault(root, None)
        for chunk in _chunked(c for c in self._canonical.values() if c is not None):
            for pid, canonical in conn.execute(
                sa.select(PROFILES.c.id, PROFILES.c.canonical_id).where(PROFILES.c.canonical_id.in_(chunk))
            ):
                self._members.setdefault(canonical, []).append(pid)
        members = [m for ms in self._members.values() for m in ms]
        for chunk in _chunked(members):
            for value, pid in conn.execute(
                sa.select(LINKS.c.value, LINKS.c.profile_id).where(
                    LINKS.c.id_type == "anonymous_id", LINKS.c.profile_id.in_(chunk)
                )
            ):
                self._linked.setdefault(pid, []).append(value)
        active = CARTS.c.status == "active"
        for chunk in _chunked(members):
            rows.update((r.id, r) for r in self._select(active & CARTS.c.profile_id.in_(chunk)))
        owned_anonymous = self._anonymous | {a for values in self._linked.values() for a in values}
        for chunk in _chunked(owned_anonymous):
            rows.update(
                (r.id, r) for r in self._select(active & CARTS.c.profile_id.is_(None) & CARTS.c.anonymous_id.in_(chunk))
            )
        if not rows:
            return
        if not dialect.is_sqlite(conn):  # lock in id order (SQLite's write transaction already excludes writers)
            locked: dict[int, Row[Any]] = {}
            for chunk in _chunked(rows):
                stmt = sa.select(CARTS).where(CARTS.c.id.in_(chunk)).order_by(CARTS.c.id)
                locked.update((r.id, r) for r in conn.execute(dialect.for_update(stmt, conn)))
            shape = ("profile_id", "anonymous_id", "external_id", "status", "merged_into")
            for cid, r in rows.items():
                now = locked.get(cid)
                if now is None or any(getattr(now, k) != getattr(r, k) for k in shape):
                    raise BatchConflict(f"cart {cid} changed while the batch was reading it")
            rows = locked
        for r in rows.values():
            c = BatchCart(
                id=r.id,
                seq=0,
                profile_id=r.profile_id,
                anonymous_id=r.anonymous_id,
                external_id=r.external_id,
                status=r.status,
                currency=r.currency,
                merged_into=r.merged_into,
                created_at=r.created_at,
                updated_at=r.updated_at,
                value_minor=r.value_minor,
            )
            c.stored = self._row_state(c)
            self._register(c)
        for chunk in _chunked(rows):
            for line in conn.execute(sa.select(CART_LINES).where(CART_LINES.c.cart_id.in_(chunk))):
                c = self._by_id[line.cart_id]
                values = (line.quantity, line.channel, line.device, line.added_at, line.updated_at)
                c.lines[line.sku] = list(values)
                c.stored_lines[line.sku] = values

    def _register(self, c: BatchCart) -> None:
        if c.id is not None:
            self._by_id[c.id] = c
        if c.external_id is not None:
            self._by_external[c.external_id] = c
        if c.profile_id is not None:
            self._by_profile.setdefault(c.profile_id, []).append(c)
        if c.anonymous_id is not None:
            self._by_anonymous.setdefault(c.anonymous_id, []).append(c)

    @staticmethod
    def _row_state(c: BatchCart) -> tuple[Any, ...]:
        merged = c.merged_into.id if isinstance(c.merged_into, BatchCart) else c.merged_into
        return (c.profile_id, c.external_id, c.status, merged, c.updated_at, c.value_minor)

    def applied_events(self, event_ids: Iterable[int]) -> set[int]:
        """Event ids that already changed a cart (an event is applied once). Events are applied in
        id order, so only ids up to the highest one recorded (a replay) need looking up."""
        top = self.conn.execute(sa.select(sa.func.max(CART_CHANGES.c.event_id))).scalar()
        out: set[int] = set()
        for chunk in _chunked(i for i in event_ids if top is not None and i <= top):
            out.update(
                r[0]
                for r in self.conn.execute(sa.select(CART_CHANGES.c.event_id).where(CART_CHANGES.c.event_id.in_(chunk)))
            )
        return out

    # ------------------------------------------------------------------ reads and checks (change nothing)

    def by_external(self, external_id: str) -> BatchCart | None:
        return self._by_external.get(external_id)

    def _cart(self, ref: BatchCart | int | None) -> BatchCart | None:
        return ref if isinstance(ref, BatchCart) or ref is None else self._by_id.get(ref)

    def follow(self, cart: BatchCart) -> BatchCart:
        """`_lock_cart`: a merged cart leads to the cart it was merged into, which must be active."""
        c: BatchCart | None = cart
        for _ in range(20):
            if c is None:
                raise _not_found("no cart")
            if c.status == "merged" and c.merged_into is not None:
                c = self._cart(c.merged_into)
                continue
            if c.status != "active":
                raise CommerceError(409, "cart_closed", f"cart {c.id} is {c.status}")
            return c
        raise CommerceError(409, "cart_closed", "merged-cart chain too long")

    def plan(self, *, root: int | None, anonymous_id: str | None) -> CartPlan:
        """`resolve_cart(rules=None, profile_id=root, anonymous_id=...)` without changing anything."""
        if root is not None:
            if root not in self._canonical:
                raise BatchConflict(f"profile {root} was not loaded")  # a caller's mistake: go call by call
            survivor = self._canonical[root]
            if survivor is None:
                raise _not_found(f"no profile {root}")
            members = set(self._members.get(survivor, ()))
            linked = {a for m in members for a in self._linked.get(m, ())}
            found: dict[int, BatchCart] = {}
            for m in members:
                found.update((id(c), c) for c in self._by_profile.get(m, ()))
            for a in linked:
                found.update((id(c), c) for c in self._by_anonymous.get(a, ()) if c.profile_id is None)
            carts = sorted(
                (
                    c
                    for c in found.values()
                    if c.status == "active"
                    and (c.profile_id in members or (c.profile_id is None and c.anonymous_id in linked))
                ),
                key=lambda c: c.order,
            )
            if not carts:
                return CartPlan(survivor, None, None, [])
            target = next(
                (c for c in carts if c.profile_id == survivor),
                next((c for c in carts if c.profile_id is not None), carts[0]),
            )
            return CartPlan(survivor, None, target, [c for c in carts if c is not target])
        if not anonymous_id:
            raise CommerceError(422, "no_owner", "a cart needs a profile_id or an anonymous_id")
        if anonymous_id not in self._anonymous:
            raise BatchConflict(f"anonymous id {anonymous_id!r} was not loaded")
        mine = sorted(
            (c for c in self._by_anonymous.get(anonymous_id, ()) if c.status == "active" and c.profile_id is None),
            key=lambda c: c.order,
        )
        return CartPlan(None, anonymous_id, mine[0] if mine else None, [])

    # ------------------------------------------------------------------ changes

    def _change(self, cart: BatchCart, action: str, now: datetime, **values: Any) -> None:
        actor = values.get("actor")
        self._changes.append(
            {
                "cart": cart,
                "action": action,
                "sku": values.get("sku"),
                "quantity": values.get("quantity"),
                "channel": values.get("channel"),
                "device": values.get("device"),
                "actor": actor[:100] if actor else None,
                "event_id": values.get("event_id"),
                "detail": values.get("detail") or {},
                "at": now,
            }
        )

    def _touch(self, cart: BatchCart, now: datetime) -> None:
        cart.updated_at = now
        cart.touched = True

    def _sku_order(self, skus: Iterable[str]) -> list[str]:
        """SKUs in the order `ORDER BY sku` gives them (the database's collation), as `_merge_lines` reads them."""
        skus = list(skus)
        if len(skus) < 2:
            return skus
        if len(skus) > CHUNK:
            return sorted(skus)
        stmt = sa.select(PRODUCTS.c.sku).where(PRODUCTS.c.sku.in_(skus)).order_by(PRODUCTS.c.sku)
        out = [r[0] for r in self.conn.execute(stmt)]
        return out + sorted(set(skus) - set(out))

    def resolve(self, plan: CartPlan, *, currency: str, now: datetime) -> BatchCart:
        """Carry out a plan as `resolve_cart` does: create the cart, or merge into the target."""
        if plan.target is None:
            cart = BatchCart(
                id=None,
                seq=len(self._new),
                profile_id=plan.root,
                anonymous_id=plan.anonymous_id,
                external_id=None,
                status="active",
                currency=currency,
                merged_into=None,
                created_at=now,
                updated_at=now,
                value_minor=0,
            )
            self._new.append(cart)
            self._register(cart)
            return cart
        target = plan.target
        for src in plan.others:  # `_merge_lines`
            moved = []
            for sku in self._sku_order(src.lines):
                r = src.lines[sku]
                have = target.lines.get(sku)
                if have is None:
                    target.lines[sku] = list(r)
                else:
                    first = r if r[3] < have[3] else have
                    target.lines[sku] = [max(r[0], have[0]), first[1], first[2], first[3], max(r[4], have[4])]
                moved.append({"sku": sku, "quantity": r[0]})
            src.status, src.merged_into, src.updated_at = "merged", target, now
            self._change(target, "merge", now, detail={"from_cart": src, "lines": moved})
        if plan.root is not None and target.profile_id != plan.root:
            target.profile_id = plan.root
            self._by_profile.setdefault(plan.root, []).append(target)
        if plan.others:
            self._touch(target, now)
        return target

    def set_external(self, cart: BatchCart, external_id: str) -> None:
        if cart.external_id is None:
            cart.external_id = external_id
            self._by_external[external_id] = cart

    def add(
        self,
        cart: BatchCart,
        *,
        sku: str,
        quantity: int,
        channel: str,
        device: str | None,
        actor: str | None,
        now: datetime,
        event_id: int | None,
    ) -> None:
        """`add_to_cart` on an active cart, for a known active SKU, once checked not to overflow the line."""
        line = cart.lines.get(sku)
        if line is not None and line[0] + quantity > MAX_LINE_QUANTITY:
            raise CommerceError(422, "invalid_quantity", f"a cart line holds at most {MAX_LINE_QUANTITY} units")
        self._change(
            cart, "add", now, sku=sku, quantity=quantity, channel=channel, device=device, actor=actor, event_id=event_id
        )
        if line is None:
            cart.lines[sku] = [quantity, channel, device, now, now]
        else:
            line[0] += quantity
            line[4] = now
        self._touch(cart, now)

    def remove(
        self,
        cart: BatchCart,
        *,
        sku: str,
        quantity: int,
        channel: str,
        device: str | None,
        actor: str | None,
        now: datetime,
        event_id: int | None,
    ) -> None:
        """`set_cart_quantity(relative=True)`: take `quantity` units off the line (all of it: remove it)."""
        line = cart.lines.get(sku)
        left = max(0, (line[0] if line is not None else 0) - quantity)
        self._change(
            cart,
            "remove" if left == 0 else "set",
            now,
            sku=sku,
            quantity=left,
            channel=channel,
            device=device,
            actor=actor,
            event_id=event_id,
        )
        if left == 0:
            cart.lines.pop(sku, None)
        elif line is not None:
            line[0] = left
            line[4] = now
        self._touch(cart, now)

    # ------------------------------------------------------------------ write back

    def flush(self) -> None:
        """Write carts, lines and change records back (carts, then new carts, lines, change records)."""
        conn = self.conn
        carts = [*self._by_id.values(), *self._new]
        touched = [c for c in carts if c.touched]
        if touched:  # `_touch_cart`: the value of the lines the cart holds now, in its currency
            prices: dict[tuple[str, str], int] = {}
            for chunk in _chunked(sku for c in touched for sku in c.lines):
                prices.update(
                    ((r.sku, r.currency), r.amount_minor)
                    for r in conn.execute(
                        sa.select(PRICES.c.sku, PRICES.c.currency, PRICES.c.amount_minor).where(PRICES.c.sku.in_(chunk))
                    )
                )
            for c in touched:
                c.value_minor = sum(prices.get((sku, c.currency), 0) * line[0] for sku, line in c.lines.items())

        def merged_id(c: BatchCart) -> int | None:
            target = c.merged_into
            return target.id if isinstance(target, BatchCart) else target

        changed = [c for c in self._by_id.values() if self._row_state(c) != c.stored]
        if changed:
            # a merge into a cart new in this batch is written once that cart has its id
            rows = [
                {
                    "b_id": c.id,
                    "b_profile_id": c.profile_id,
                    "b_external_id": c.external_id,
                    "b_status": c.status,
                    "b_merged_into": merged_id(c) if merged_id(c) is not None else c.stored[3],  # type: ignore[index]
                    "b_updated_at": c.updated_at,
                    "b_value_minor": c.value_minor,
                }
                for c in sorted(changed, key=lambda c: c.order)
            ]
            conn.execute(
                sa.update(CARTS)
                .where(CARTS.c.id == sa.bindparam("b_id"))
                .values(
                    profile_id=sa.bindparam("b_profile_id"),
                    external_id=sa.bindparam("b_external_id"),
                    status=sa.bindparam("b_status"),
                    merged_into=sa.bindparam("b_merged_into"),
                    updated_at=sa.bindparam("b_updated_at", type_=CARTS.c.updated_at.type),
                    value_minor=sa.bindparam("b_value_minor"),
                ),
                rows,
            )
        if self._new:
            rows = [
                {
                    "profile_id": c.profile_id,
                    "anonymous_id": c.anonymous_id,
                    "external_id": c.external_id,
                    "status": c.status,
                    "currency": c.currency,
                    "merged_into": None,
                    "created_at": c.created_at,
                    "updated_at": c.updated_at,
                    "value_minor": c.value_minor,
                }
                for c in self._new
            ]
            external = [c.external_id for c in self._new]
            if None not in external and len(set(external)) == len(external):
                # only the stage sets external ids: read the new ids back by them (cheaper than RETURNING)
                conn.execute(sa.insert(CARTS), rows)
                ids: dict[str, int] = {}
                for chunk in _chunked(external):
                    stmt = sa.select(CARTS.c.external_id, CARTS.c.id).where(CARTS.c.external_id.in_(chunk))
                    ids.update((r.external_id, r.id) for r in conn.execute(stmt))
                for c in self._new:
                    c.id = int(ids[c.external_id])  # type: ignore[index]
            else:
                inserted = conn.execute(sa.insert(CARTS).returning(CARTS.c.id, sort_by_parameter_order=True), rows)
                for c, r in zip(self._new, inserted.all(), strict=True):
                    c.id = int(r[0])
            late = [
                {"b_id": c.id, "b_merged_into": merged_id(c)}
                for c in carts
                if isinstance(c.merged_into, BatchCart) and (c.stored is None or c.merged_into.stored is None)
            ]
            if late:
                conn.execute(
                    sa.update(CARTS)
                    .where(CARTS.c.id == sa.bindparam("b_id"))
                    .values(merged_into=sa.bindparam("b_merged_into")),
                    late,
                )
        upserts: list[dict[str, Any]] = []
        deletes: list[dict[str, Any]] = []
        for c in sorted(carts, key=lambda c: c.order):
            for sku, line in c.lines.items():
                if c.stored_lines.get(sku) != tuple(line):
                    upserts.append(
                        {
                            "cart_id": c.id,
                            "sku": sku,
                            "quantity": line[0],
                            "channel": line[1],
                            "device": line[2],
                            "added_at": line[3],
                            "updated_at": line[4],
                        }
                    )
            deletes.extend({"b_cart_id": c.id, "b_sku": sku} for sku in c.stored_lines if sku not in c.lines)
        if deletes:
            conn.execute(
                sa.delete(CART_LINES).where(
                    CART_LINES.c.cart_id == sa.bindparam("b_cart_id"), CART_LINES.c.sku == sa.bindparam("b_sku")
                ),
                deletes,
            )
        if upserts:
            dialect.upsert_replace(conn, CART_LINES, upserts, ["cart_id", "sku"])
        if self._changes:
            rows = []
            for ch in self._changes:
                row = {k: v for k, v in ch.items() if k != "cart"}
                row["cart_id"] = ch["cart"].id
                detail = row["detail"]
                if isinstance(detail.get("from_cart"), BatchCart):
                    row["detail"] = {**detail, "from_cart": detail["from_cart"].id}
                rows.append(row)
            conn.execute(dialect.insert_ignoring_conflicts(conn, CART_CHANGES, ["event_id"]), rows)


# ============================================================================ checkout


def _checkout_dict(conn: Connection, co: Any, now: datetime | None = None) -> dict[str, Any]:
    res = conn.execute(
        sa.select(RESERVATIONS).where(RESERVATIONS.c.checkout_id == co.id).order_by(RESERVATIONS.c.sku)
    ).all()
    status = co.status
    if status == "open" and now is not None and co.expires_at <= now:
        status = "expired"
    return {
        "id": co.id,
        "cart_id": co.cart_id,
        "status": status,
        "fulfilment": fulfilment_of(co.fulfilment, co.pickup_location),
        "pickup_location": co.pickup_location,
        "ship_address": co.ship_address,
        "currency": co.currency,
        "total": to_major(co.total_minor, co.currency),
        "total_minor": co.total_minor,
        "channel": co.channel,
        "created_at": co.created_at,
        "expires_at": co.expires_at,
        "order_id": co.order_id,
        "reservations": [
            {"sku": r.sku, "location": r.location, "quantity": r.quantity, "status": r.status} for r in res
        ],
    }


def get_checkout(*, conn: Connection, checkout_id: int, now: datetime) -> dict[str, Any] | None:
    co = conn.execute(sa.select(CHECKOUTS).where(CHECKOUTS.c.id == checkout_id)).first()
    return _checkout_dict(conn, co, now) if co else None


def _candidates(conn: Connection, sku: str, *, ships: bool | None, first: str | None) -> list[str]:
    """Locations to source a SKU from: `first` (if any), then by available units, most first."""
    stmt = (
        sa.select(STOCK.c.location)
        .join(LOCATIONS, LOCATIONS.c.code == STOCK.c.location)
        .where(STOCK.c.sku == sku, LOCATIONS.c.active, STOCK.c.on_hand - STOCK.c.reserved - STOCK.c.allocated > 0)
        .order_by((STOCK.c.on_hand - STOCK.c.reserved - STOCK.c.allocated).desc(), STOCK.c.location)
    )
    if ships:
        stmt = stmt.where(LOCATIONS.c.ships)
    out = [r[0] for r in conn.execute(stmt)]
    if first is not None:
        out = [first] + [c for c in out if c != first]
    return out


#: a cart's lines in SKU order with whether the product is active and its price in the cart's currency
_CHECKOUT_LINES = (
    sa.select(CART_LINES.c.sku, CART_LINES.c.quantity, PRODUCTS.c.active, PRICES.c.amount_minor)
    .select_from(
        CART_LINES.outerjoin(PRODUCTS, PRODUCTS.c.sku == CART_LINES.c.sku).outerjoin(
            PRICES, sa.and_(PRICES.c.sku == CART_LINES.c.sku, PRICES.c.currency == sa.bindparam("currency"))
        )
    )
    .where(CART_LINES.c.cart_id == sa.bindparam("cart"))
    .order_by(CART_LINES.c.sku)
)


def _pick_and_reserve(ships: bool, first: bool) -> Any:
    """The guarded reserve at the location `_candidates` would try first (`:first` if it has the units,
    else the one with most available), chosen and reserved in one UPDATE; RETURNING the location, no
    row when none has `:q` units (or a concurrent change took them: the caller then walks the candidates)."""
    pick = STOCK.alias("pick")
    available = pick.c.on_hand - pick.c.reserved - pick.c.allocated
    order = [available.desc(), pick.c.location]
    if first:
        order.insert(0, sa.case((pick.c.location == sa.bindparam("first"), 0), else_=1))
    chosen = (
        sa.select(pick.c.location)
        .join(LOCATIONS, LOCATIONS.c.code == pick.c.location)
        .where(pick.c.sku == sa.bindparam("b_sku"), LOCATIONS.c.active, available >= sa.bindparam("q"))
        .order_by(*order)
        .limit(1)
    )
    if ships:
        chosen = chosen.where(LOCATIONS.c.ships)
    return (
        sa.update(STOCK)
        .where(
            STOCK.c.sku == sa.bindparam("b_sku"),
            STOCK.c.location == chosen.scalar_subquery(),
            STOCK.c.on_hand - STOCK.c.reserved - STOCK.c.allocated >= sa.bindparam("q"),
        )
        .values(reserved=STOCK.c.reserved + sa.bindparam("q"), updated_at=sa.bindparam("b_now"))
        .returning(STOCK.c.location)
    )


_PICK_AND_RESERVE = {(s, f): _pick_and_reserve(s, f) for s in (False, True) for f in (False, True)}


def start_checkout(
    *,
    conn: Connection,
    cart_id: int,
    fulfilment: str,
    pickup_location: str | None,
    ship_address: dict[str, Any] | None,
    channel: str,
    now: datetime,
    ttl_seconds: int,
) -> dict[str, Any]:
    """Reserve every line of the cart (all or nothing) and open a checkout that holds them until expiry.

    Click & collect sources from the pickup store's stock only, unless the store's `pickup_sourcing`
    is `network` (then any location, with a transfer, the store first). Shipping sources from
    locations that ship. Each SKU comes from one location; lines are reserved in SKU order.
    """
    cart = _lock_cart(conn, cart_id)
    open_co = conn.execute(
        dialect.for_update(
            sa.select(CHECKOUTS).where(CHECKOUTS.c.cart_id == cart.id, CHECKOUTS.c.status == "open"), conn
        )
    ).first()
    if open_co is not None:
        same = (
            fulfilment_of(open_co.fulfilment, open_co.pickup_location) == fulfilment
            and open_co.pickup_location == pickup_location
        )
        if same and open_co.expires_at > now:
            return _checkout_dict(conn, open_co, now)
        _end_checkout(conn, open_co.id, "expired" if open_co.expires_at <= now else "cancelled", now)
    lines = conn.execute(_CHECKOUT_LINES, {"cart": cart.id, "currency": cart.currency}).all()
    if not lines:
        raise CommerceError(409, "empty_cart", f"cart {cart.id} is empty")
    unknown = [line.sku for line in lines if not line.active]
    if unknown:
        raise CommerceError(422, "unknown_sku", f"unknown or inactive SKU: {', '.join(unknown[:20])}")
    prices = {line.sku: line.amount_minor for line in lines if line.amount_minor is not None}
    unpriced = [line.sku for line in lines if line.sku not in prices]
    if unpriced:
        raise CommerceError(422, "unpriced", f"no {cart.currency} price for {', '.join(unpriced)}")
    first: str | None = None
    ships: bool | None = True
    network = True
    if fulfilment == "click_and_collect":
        if not pickup_location:
            raise CommerceError(422, "pickup_location_required", "click & collect needs pickup_location")
        loc = get_location(conn=conn, code=pickup_location)
        if loc is None or not loc["active"]:
            raise CommerceError(422, "unknown_location", f"unknown location {pickup_location!r}")
        if not loc["pickup"]:
            raise CommerceError(422, "pickup_not_offered", f"{pickup_location} does not offer pickup")
        first, ships, network = pickup_location, None, loc["pickup_sourcing"] == "network"
    elif fulfilment == "parcel_locker":  # shipped from any location that ships, to the locker
        if not pickup_location:
            raise CommerceError(422, "pickup_location_required", "parcel-locker delivery needs pickup_location")
        loc = get_location(conn=conn, code=pickup_location)
        if loc is None or not loc["active"]:
            raise CommerceError(422, "unknown_location", f"unknown location {pickup_location!r}")
        if loc["kind"] != "locker":
            raise CommerceError(422, "not_a_locker", f"{pickup_location} is a {loc['kind']}, not a parcel locker")
        if not loc["pickup"]:
            raise CommerceError(422, "pickup_not_offered", f"{pickup_location} does not offer pickup")
    elif fulfilment == "ship":
        if not ship_address:
            raise CommerceError(422, "ship_address_required", "shipping needs ship_address")
    else:
        raise CommerceError(422, "invalid_fulfilment", "fulfilment is 'ship', 'click_and_collect' or 'parcel_locker'")
    total = sum(prices[line.sku] * line.quantity for line in lines)
    co_id = conn.execute(
        sa.insert(CHECKOUTS)
        .values(
            cart_id=cart.id,
            status="open",
            fulfilment="ship" if fulfilment == "parcel_locker" else fulfilment,
            pickup_location=pickup_location if fulfilment != "ship" else None,
            ship_address=ship_address if fulfilment != "click_and_collect" else None,
            currency=cart.currency,
            total_minor=total,
            channel=channel,
            created_at=now,
            expires_at=now + timedelta(seconds=ttl_seconds),
        )
        .returning(CHECKOUTS.c.id)
    ).scalar_one()
    _record_cart_change(conn, cart.id, "checkout", now, channel=channel, detail={"checkout_id": co_id})
    # everything but the reservations first: the hot stock rows stay locked only for what follows them
    event = events.prepare(
        conn,
        message_id=f"oj:checkout:{co_id}:started",
        event="Checkout Started",
        channel=channel,
        profile_id=cart.profile_id,
        anonymous_id=cart.anonymous_id,
        properties={
            "checkout_id": str(co_id),
            "cart_id": str(cart.id),
            "fulfilment": fulfilment,
            **({"pickup_location": pickup_location} if fulfilment != "ship" else {}),
            "currency": cart.currency,
            "value": _amount(total, cart.currency),
            "products": [{"product_id": x.sku, "sku": x.sku, "quantity": x.quantity} for x in lines],
        },
        now=now,
    )
    reservations = []
    pick = _PICK_AND_RESERVE[(bool(ships), first is not None)]
    for line in lines:  # SKU order: each transaction locks stock rows in one global order
        chosen = None
        if first is not None and not network:
            options = [first]
        else:  # the usual case in one statement; the candidate loop only if it lost a race
            params = {"b_sku": line.sku, "q": line.quantity, "first": first, "b_now": now}
            chosen = conn.execute(pick, params).scalar_one_or_none()
            options = [] if chosen is not None else _candidates(conn, line.sku, ships=ships, first=first)
        chosen = chosen or next((loc for loc in options if _reserve(conn, line.sku, loc, line.quantity, now)), None)
        if chosen is None:
            where = f" at {first}" if first and not network else ""
            raise CommerceError(
                409, "insufficient_stock", f"fewer than {line.quantity} units of {line.sku} available{where}"
            )
        reservations.append(
            {
                "checkout_id": co_id,
                "reference": f"checkout:{co_id}",
                "sku": line.sku,
                "location": chosen,
                "quantity": line.quantity,
                "status": "active",
                "created_at": now,
                "expires_at": now + timedelta(seconds=ttl_seconds),
            }
        )
    conn.execute(sa.insert(RESERVATIONS), reservations)
    events.append(conn, [event])
    stored = "ship" if fulfilment == "parcel_locker" else fulfilment
    location = pickup_location if fulfilment != "ship" else None
    return {
        "id": co_id,
        "cart_id": cart.id,
        "status": "open",
        "fulfilment": fulfilment_of(stored, location),
        "pickup_location": location,
        "ship_address": ship_address if fulfilment != "click_and_collect" else None,
        "currency": cart.currency,
        "total": to_major(total, cart.currency),
        "total_minor": total,
        "channel": channel,
        "created_at": now,
        "expires_at": now + timedelta(seconds=ttl_seconds),
        "order_id": None,
        "reservations": [
            {"sku": r["sku"], "location": r["location"], "quantity": r["quantity"], "status": "active"}
            for r in reservations
        ],
    }


def _end_checkout(conn: Connection, checkout_id: int, status: str, now: datetime) -> None:
    rows = conn.execute(
        dialect.for_update(
            sa.select(RESERVATIONS)
            .where(RESERVATIONS.c.checkout_id == checkout_id, RESERVATIONS.c.status == "active")
            .order_by(RESERVATIONS.c.id),
            conn,
        )
    ).all()
    _release(conn, rows, now, "released" if status == "cancelled" else "expired")
    conn.execute(sa.update(CHECKOUTS).where(CHECKOUTS.c.id == checkout_id).values(status=status))


def cancel_checkout(*, conn: Connection, checkout_id: int, now: datetime) -> dict[str, Any]:
    co = conn.execute(sa.select(CHECKOUTS.c.cart_id).where(CHECKOUTS.c.id == checkout_id)).first()
    if co is None:
        raise _not_found(f"no checkout {checkout_id}")
    _lock_cart(conn, co.cart_id, follow=False, active=False)
    row = conn.execute(dialect.for_update(sa.select(CHECKOUTS).where(CHECKOUTS.c.id == checkout_id), conn)).one()
    if row.status == "completed":
        raise CommerceError(409, "checkout_completed", f"checkout {checkout_id} became order {row.order_id}")
    if row.status == "open":
        _end_checkout(conn, checkout_id, "cancelled", now)
    return get_checkout(conn=conn, checkout_id=checkout_id, now=now) or {}


def _order_by(conn: Connection, column: Any, value: Any) -> Row[Any] | None:
    return conn.execute(sa.select(ORDERS).where(column == value)).first()


#: the cart of a checkout, locked (the lock order: cart, then checkout)
_CART_OF_CHECKOUT = sa.select(CARTS).where(
    CARTS.c.id == sa.select(CHECKOUTS.c.cart_id).where(CHECKOUTS.c.id == sa.bindparam("co")).scalar_subquery()
)
_CHECKOUT_BY_ID = sa.select(CHECKOUTS).where(CHECKOUTS.c.id == sa.bindparam("id"))
#: the order a completion must answer with instead of creating one: by idempotency key first, else of
#: the checkout or the cart (each UNIQUE)
_EXISTING_ORDER = (
    sa.select(ORDERS.c.id)
    .where(
        (ORDERS.c.checkout_id == sa.bindparam("co"))
        | (ORDERS.c.cart_id == sa.bindparam("cart"))
        | (ORDERS.c.idempotency_key == sa.bindparam("key", type_=sa.String))
    )
    .order_by(sa.case((ORDERS.c.idempotency_key == sa.bindparam("key", type_=sa.String), 0), else_=1))
    .limit(1)
)
_RESERVATIONS_OF = (
    sa.select(RESERVATIONS).where(RESERVATIONS.c.checkout_id == sa.bindparam("co")).order_by(RESERVATIONS.c.id)
)
#: an order's lines from its checkout's reservations (one per SKU, numbered in SKU order) with the
#: product's name and price, written and returned in one statement
_ORDER_LINES_FROM = (
    sa.insert(ORDER_LINES)
    .from_select(
        ["order_id", "line_no", "sku", "name", "quantity", "unit_price_minor", "location", "returned_quantity"],
        sa.select(
            sa.cast(sa.bindparam("order"), sa.BigInteger),
            sa.func.row_number().over(order_by=RESERVATIONS.c.sku),
            RESERVATIONS.c.sku,
            PRODUCTS.c.name,
            RESERVATIONS.c.quantity,
            sa.func.coalesce(PRICES.c.amount_minor, 0),
            RESERVATIONS.c.location,
            sa.literal_column("0"),
        )
        .select_from(
            RESERVATIONS.outerjoin(PRODUCTS, PRODUCTS.c.sku == RESERVATIONS.c.sku).outerjoin(
                PRICES, sa.and_(PRICES.c.sku == RESERVATIONS.c.sku, PRICES.c.currency == sa.bindparam("currency"))
            )
        )
        .where(RESERVATIONS.c.checkout_id == sa.bindparam("co")),
    )
    .returning(*ORDER_LINES.c)
)
_ALLOCATE_RESERVATIONS = (
    sa.update(RESERVATIONS).where(RESERVATIONS.c.checkout_id == sa.bindparam("co")).values(status="allocated")
)
_COMPLETE_CHECKOUT = (
    sa.update(CHECKOUTS)
    .where(CHECKOUTS.c.id == sa.bindparam("co"))
    .values(status="completed", order_id=sa.bindparam("order"))
)
_CHECK_OUT_CART = (
    sa.update(CARTS)
    .where(CARTS.c.id == sa.bindparam("cart"))
    .values(status="checked_out", updated_at=sa.bindparam("now"))
)
#: reserved units of a checkout become allocated (guarded: the reservation must still hold them)
_ALLOCATE_STOCK = (
    sa.update(STOCK)
    .where(
        STOCK.c.sku == sa.bindparam("b_sku"),
        STOCK.c.location == sa.bindparam("b_location"),
        STOCK.c.reserved >= sa.bindparam("q"),
    )
    .values(
        reserved=STOCK.c.reserved - sa.bindparam("q"),
        allocated=STOCK.c.allocated + sa.bindparam("q"),
        updated_at=sa.bindparam("b_now"),
    )
)


_INSERT_ORDER = sa.insert(ORDERS).returning(*ORDERS.c)
_INSERT_HISTORY = sa.insert(ORDER_HISTORY).returning(*ORDER_HISTORY.c)
_KEYED_ORDER_INSERT: dict[bool, Any] = {}


def _keyed_order_insert(conn: Connection) -> Any:
    """INSERT .. ON CONFLICT (idempotency_key) DO NOTHING RETURNING the order, built once per dialect."""
    key = dialect.is_sqlite(conn)
    if key not in _KEYED_ORDER_INSERT:
        stmt = dialect.insert_ignoring_conflicts(conn, ORDERS, ["idempotency_key"]).returning(*ORDERS.c)
        _KEYED_ORDER_INSERT[key] = stmt
    return _KEYED_ORDER_INSERT[key]


def complete_checkout(
    *,
    conn: Connection,
    checkout_id: int,
    idempotency_key: str | None,
    redeem_points: int,
    rules: IdentityRules | None,
    config: CommerceConfig,
    channel: str | None,
    actor: str | None,
    now: datetime,
) -> tuple[dict[str, Any], bool]:
    """Turn an open checkout into an order: reserved units become allocated, points are redeemed
    and earned. Returns (order, created). The same idempotency key, checkout or cart always answers
    with the one order (created=False), never a second one."""
    cart = conn.execute(_locking(conn, _CART_OF_CHECKOUT), {"co": checkout_id}).first()
    if cart is None:
        existing = _order_by(conn, ORDERS.c.idempotency_key, idempotency_key) if idempotency_key else None
        if existing is not None:
            return order_view(conn=conn, order_id=existing.id), False
        raise _not_found(f"no checkout {checkout_id}")
    co = conn.execute(_locking(conn, _CHECKOUT_BY_ID), {"id": checkout_id}).one()
    existing = conn.execute(_EXISTING_ORDER, {"co": co.id, "cart": cart.id, "key": idempotency_key}).first()
    if existing is not None:
        return order_view(conn=conn, order_id=existing.id), False
    if co.status != "open" or co.expires_at <= now:
        raise CommerceError(
            409, "reservation_expired", f"checkout {checkout_id} is {'expired' if co.status == 'open' else co.status}"
        )
    res = conn.execute(_locking(conn, _RESERVATIONS_OF), {"co": co.id}).all()
    if not res or any(r.status != "active" for r in res):
        raise CommerceError(409, "reservation_expired", f"the reservations of checkout {checkout_id} were released")
    profile_id = identity.canonical_id(conn=conn, profile_id=cart.profile_id) if cart.profile_id else None
    if profile_id is None and cart.anonymous_id and rules is not None:
        profile_id = identity.lookup(conn=conn, rules=rules, id_type="anonymous_id", value=cart.anonymous_id)
    if redeem_points and profile_id is None:
        raise CommerceError(409, "no_loyalty_account", "points can only be redeemed by a known customer")
    # redeemed points are a discount on the order: never more than its total, whole points only
    points, discount = config.loyalty.discount_for(redeem_points, co.total_minor, co.currency)
    if redeem_points and not config.loyalty.point_value_minor.get(co.currency):
        raise CommerceError(422, "points_not_redeemable", f"points cannot be redeemed in {co.currency}")
    paid = co.total_minor - discount
    values = {
        "order_ref": f"OJ-{uuid.uuid4().hex[:12].upper()}",
        "profile_id": profile_id,
        "anonymous_id": cart.anonymous_id,
        "cart_id": cart.id,
        "checkout_id": co.id,
        "idempotency_key": idempotency_key,
        "origin": "omnijourney",
        "source_id": None,
        "channel": channel or co.channel,
        "store_id": co.pickup_location,
        "fulfilment": co.fulfilment,
        "pickup_location": co.pickup_location,
        "ship_address": co.ship_address,
        "status": "placed",
        "currency": co.currency,
        "total_minor": paid,
        "refunded_minor": 0,
        "points_redeemed": points,
        "event_id": None,
        "placed_at": now,
        "updated_at": now,
    }
    # the cart and checkout are locked and have no order: only the same idempotency key on another
    # cart can race this insert (ON CONFLICT waits for that transaction, then answers with no row)
    insert = _INSERT_ORDER if not idempotency_key else _keyed_order_insert(conn)
    order = conn.execute(insert, values).first()
    if order is None:  # the same idempotency key won a race on another cart
        existing = _order_by(conn, ORDERS.c.idempotency_key, idempotency_key)
        if existing is None:
            raise CommerceError(409, "conflict", "the order could not be created; retry")
        return order_view(conn=conn, order_id=existing.id), False
    order_id = order.id
    lines = sorted(
        conn.execute(_ORDER_LINES_FROM, {"order": order_id, "co": co.id, "currency": co.currency}),
        key=lambda r: r.line_no,
    )
    conn.execute(_ALLOCATE_RESERVATIONS, {"co": co.id})
    conn.execute(_COMPLETE_CHECKOUT, {"co": co.id, "order": order_id})
    conn.execute(_CHECK_OUT_CART, {"cart": cart.id, "now": now})
    _record_cart_change(conn, cart.id, "order", now, actor=actor, detail={"order_id": order_id})
    history = conn.execute(
        _INSERT_HISTORY,
        {
            "order_id": order_id,
            "status": "placed",
            "location": co.pickup_location,
            "actor": actor[:100] if actor else None,
            "detail": {"subtotal": co.total_minor, "discount": discount, "points_redeemed": points} if points else {},
            "at": now,
        },
    ).one()
    # the answer and the event are built from the rows just written (no re-read) before the hot stock
    # rows are locked (a new order earns exactly `points_for` what is paid), so only the allocation, the
    # loyalty writes and the append hold them
    earned = config.loyalty.points_for(paid, co.currency) if profile_id is not None else 0
    view = _order_dict(order, lines, [history], [])
    event = _order_event(
        conn,
        order_id,
        "placed",
        now,
        channel=channel or co.channel,
        extra={"points_earned": earned, "points_redeemed": points}
        | ({"discount": _amount(discount, co.currency)} if discount else {}),
        order=order,
        lines=lines,
    )
    # the global lock order: stock rows in (sku, location) order, then loyalty; one executemany (one
    # round trip on PostgreSQL: psycopg pipelines it), every row must move
    moves = [
        {"b_sku": r.sku, "b_location": r.location, "q": r.quantity, "b_now": now}
        for r in sorted(res, key=lambda r: (r.sku, r.location))
    ]
    moved = conn.execute(_ALLOCATE_STOCK, moves).rowcount
    if moved != len(moves):
        raise RuntimeError(f"checkout {co.id}: stock lost reserved units ({moved} of {len(moves)} rows moved)")
    if profile_id is not None:
        if points:
            redeem_loyalty(
                conn=conn,
                profile_id=profile_id,
                points=points,
                dedupe_key=f"redeem:order:{order_id}",
                order_id=order_id,
                channel=channel or co.channel,
                actor=actor,
                now=now,
                config=config,
            )
        _earn_for_order(conn, profile_id, order_id, paid, co.currency, config.loyalty, channel, now)
    events.append(conn, [event])
    return view, True


# ============================================================================ orders


def _history(
    conn: Connection,
    order_id: int,
    status: str,
    now: datetime,
    *,
    actor: str | None = None,
    location: str | None = None,
    detail: dict[str, Any] | None = None,
) -> None:
    conn.execute(
        sa.insert(ORDER_HISTORY).values(
            order_id=order_id,
            status=status,
            location=location,
            actor=actor[:100] if actor else None,
            detail=detail or {},
            at=now,
        )
    )


def find_order(*, conn: Connection, ref: str) -> int | None:
    """An order by its id or its reference (the shop's / POS's order number)."""
    row = _order_by(conn, ORDERS.c.order_ref, ref)
    if row is None and ref.isdigit():
        row = _order_by(conn, ORDERS.c.id, int(ref))
    return int(row.id) if row else None


# The console's search and 360 page read orders on every request: statements built once.
_OWNER_COLUMNS = (ORDERS.c.order_ref, PROFILES.c.canonical_id)
_ORDER_OWNER_BY_REF = (
    sa.select(*_OWNER_COLUMNS)
    .select_from(ORDERS.outerjoin(PROFILES, PROFILES.c.id == ORDERS.c.profile_id))
    .where(ORDERS.c.order_ref == sa.bindparam("ref"))
)
_ORDER_OWNER_BY_ID = (
    sa.select(*_OWNER_COLUMNS)
    .select_from(ORDERS.outerjoin(PROFILES, PROFILES.c.id == ORDERS.c.profile_id))
    .where(ORDERS.c.id == sa.bindparam("id"))
)
_IDS = sa.bindparam("ids", expanding=True)
_ORDERS_BY_ID = sa.select(ORDERS).where(ORDERS.c.id.in_(_IDS))
_LINES_OF = (
    sa.select(ORDER_LINES)
    .where(ORDER_LINES.c.order_id.in_(_IDS))
    .order_by(ORDER_LINES.c.order_id, ORDER_LINES.c.line_no)
)
_HISTORY_OF = sa.select(ORDER_HISTORY).where(ORDER_HISTORY.c.order_id.in_(_IDS)).order_by(ORDER_HISTORY.c.id)
_RETURNS_OF = sa.select(RETURNS).where(RETURNS.c.order_id.in_(_IDS)).order_by(RETURNS.c.id)
_ORDERS_OF_MEMBERS = (
    sa.select(ORDERS.c.id)
    .where(ORDERS.c.profile_id.in_(sa.bindparam("members", expanding=True)))
    .order_by(ORDERS.c.placed_at.desc(), ORDERS.c.id.desc())
    .limit(sa.bindparam("n"))
)


def order_owner(*, conn: Connection, ref: str) -> tuple[str, int | None] | None:
    """An order's reference and its buyer's surviving profile (None if anonymous), by reference or id."""
    row = conn.execute(_ORDER_OWNER_BY_REF, {"ref": ref}).first()
    if row is None and ref.isdigit() and len(ref) < 19:
        row = conn.execute(_ORDER_OWNER_BY_ID, {"id": int(ref)}).first()
    return (row.order_ref, row.canonical_id) if row is not None else None


def _discount_of(history: Sequence[Any]) -> int:
    """The loyalty discount of an order (minor units), recorded on its `placed` history entry."""
    placed = next((h for h in history if h.status == "placed"), None)
    return int((placed.detail or {}).get("discount", 0)) if placed is not None else 0


def _order_dict(o: Any, lines: list[Any], history: list[Any], returns: list[Any]) -> dict[str, Any]:
    discount = _discount_of(history)
    return {
        "id": o.id,
        "order_ref": o.order_ref,
        "profile_id": o.profile_id,
        "origin": o.origin,
        "source_id": o.source_id,
        "channel": o.channel,
        "store_id": o.store_id,
        "fulfilment": fulfilment_of(o.fulfilment, o.pickup_location),
        "pickup_location": o.pickup_location,
        "status": o.status,
        "currency": o.currency,
        "total": to_major(o.total_minor, o.currency),
        "total_minor": o.total_minor,
        "discount": to_major(discount, o.currency),
        "discount_minor": discount,
        "refunded": to_major(o.refunded_minor, o.currency),
        "points_redeemed": o.points_redeemed,
        "placed_at": o.placed_at,
        "updated_at": o.updated_at,
        "lines": [
            {
                "sku": r.sku,
                "name": r.name,
                "quantity": r.quantity,
                "unit_price": to_major(r.unit_price_minor, o.currency),
                "location": r.location,
                "returned_quantity": r.returned_quantity,
            }
            for r in lines
        ],
        "history": [
            {"status": h.status, "at": h.at, "location": h.location, "actor": h.actor, "detail": h.detail}
            for h in history
        ],
        "returns": [
            {"id": r.id, "location": r.location, "refund": to_major(r.refund_minor, r.currency)} for r in returns
        ],
    }


def order_view(*, conn: Connection, order_id: int) -> dict[str, Any]:
    found = order_views(conn=conn, order_ids=[order_id])
    if not found:
        raise _not_found(f"no order {order_id}")
    return found[0]


def order_views(*, conn: Connection, order_ids: list[int]) -> list[dict[str, Any]]:
    """Several orders as `order_view` shows them, in the given order, in four statements."""
    if not order_ids:
        return []
    params = {"ids": list(dict.fromkeys(order_ids))}
    orders = {o.id: o for o in conn.execute(_ORDERS_BY_ID, params)}
    lines: dict[int, list[Any]] = defaultdict(list)
    history: dict[int, list[Any]] = defaultdict(list)
    returns: dict[int, list[Any]] = defaultdict(list)
    for stmt, into in ((_LINES_OF, lines), (_HISTORY_OF, history), (_RETURNS_OF, returns)):
        for r in conn.execute(stmt, params):
            into[r.order_id].append(r)
    return [_order_dict(orders[i], lines[i], history[i], returns[i]) for i in order_ids if i in orders]


def orders_of_profile(
    *, conn: Connection, profile_id: int, limit: int = 100, members: list[int] | None = None
) -> list[dict[str, Any]]:
    """The cluster's orders, newest first (pass `members` when the caller has the cluster already)."""
    if members is None:
        root = identity.canonical_id(conn=conn, profile_id=profile_id)
        if root is None:
            raise _not_found(f"no profile {profile_id}")
        members = identity.members(conn=conn, root=root)
    ids = [r[0] for r in conn.execute(_ORDERS_OF_MEMBERS, {"members": members, "n": limit})]
    return order_views(conn=conn, order_ids=ids)


def transition_order(
    *,
    conn: Connection,
    order_id: int,
    status: str,
    actor: str | None,
    location: str | None,
    now: datetime,
    config: CommerceConfig,
    channel: str | None = None,
) -> dict[str, Any]:
    """Move an order along its lifecycle; repeating the current status is a no-op (safe retries).

    Shipping or picking up consumes the allocated units (on hand and allocated both go down);
    cancelling gives them back to available, reverses earned points and refunds redeemed ones.
    """
    o = conn.execute(dialect.for_update(sa.select(ORDERS).where(ORDERS.c.id == order_id), conn)).first()
    if o is None:
        raise _not_found(f"no order {order_id}")
    if o.status == status:
        return order_view(conn=conn, order_id=order_id)
    locker = _is_locker_order(o)
    if status not in (LOCKER_TRANSITIONS if locker else TRANSITIONS).get(o.status, set()):
        raise CommerceError(409, "invalid_transition", f"order {o.order_ref} is {o.status}; it cannot become {status}")
    if status in PICKUP_ONLY and o.fulfilment != "click_and_collect" and not locker:
        raise CommerceError(409, "invalid_transition", f"order {o.order_ref} is not click & collect")
    if status in SHIP_ONLY and o.fulfilment != "ship":
        raise CommerceError(409, "invalid_transition", f"order {o.order_ref} is not shipped")
    if status in PICKUP_ONLY:  # only the pickup store (or the locker) acts on a pickup, and must say so
        if location is None:
            raise CommerceError(
                422, "location_required", f"marking {status} needs the acting location ({o.pickup_location})"
            )
        if location != o.pickup_location:
            raise CommerceError(409, "wrong_store", f"order {o.order_ref} is collected at {o.pickup_location}")
    lines = conn.execute(sa.select(ORDER_LINES).where(ORDER_LINES.c.order_id == order_id)).all()
    allocated = [r for r in lines if r.location is not None]
    # shipping or handing over consumes the allocation, once (a locker parcel was consumed when shipped)
    if status in ("picked_up", "shipped") and o.status in ALLOCATED and not (locker and status == "picked_up"):
        for r in sorted(allocated, key=lambda r: (r.sku, r.location)):
            done = conn.execute(
                sa.update(STOCK)
                .where(
                    STOCK.c.sku == r.sku,
                    STOCK.c.location == r.location,
                    STOCK.c.allocated >= r.quantity,
                    STOCK.c.on_hand >= r.quantity,
                )
                .values(on_hand=STOCK.c.on_hand - r.quantity, allocated=STOCK.c.allocated - r.quantity, updated_at=now)
            ).rowcount
            if done != 1:
                raise RuntimeError(f"order {order_id}: {r.sku}@{r.location} lost its allocated units")
    elif status == "cancelled":
        for r in sorted(allocated, key=lambda r: (r.sku, r.location)):
            done = conn.execute(
                sa.update(STOCK)
                .where(STOCK.c.sku == r.sku, STOCK.c.location == r.location, STOCK.c.allocated >= r.quantity)
                .values(allocated=STOCK.c.allocated - r.quantity, updated_at=now)
            ).rowcount
            if done != 1:
                raise RuntimeError(f"order {order_id}: {r.sku}@{r.location} lost its allocated units")
        if o.profile_id is not None:
            _reverse_points(conn, o, o.total_minor, f"cancel:{order_id}", config, now)
    conn.execute(sa.update(ORDERS).where(ORDERS.c.id == order_id).values(status=status, updated_at=now))
    _history(conn, order_id, status, now, actor=actor, location=location)
    _emit_order(conn, order_id, status, now, channel=channel or ("store" if location else None), location=location)
    return order_view(conn=conn, order_id=order_id)


def record_external_order(
    *,
    conn: Connection,
    order_ref: str,
    profile_id: int | None,
    anonymous_id: str | None,
    source_id: int,
    channel: str,
    store_id: str | None,
    currency: str,
    total_minor: int,
    lines: Sequence[dict[str, Any]],
    event_id: int,
    placed_at: datetime,
    config: CommerceConfig,
) -> int | None:
    """Record an order placed elsewhere (shop, POS) once per order reference; None if known already."""
    inserted = conn.execute(
        dialect.insert_ignoring_conflicts(conn, ORDERS, ["order_ref"]).returning(ORDERS.c.id),
        {
            "order_ref": order_ref,
            "profile_id": profile_id,
            "anonymous_id": anonymous_id,
            "cart_id": None,
            "checkout_id": None,
            "idempotency_key": None,
            "origin": "event",
            "source_id": source_id,
            "channel": channel,
            "store_id": store_id,
            "fulfilment": "external",
            "pickup_location": None,
            "ship_address": None,
            "status": "completed",
            "currency": currency,
            "total_minor": total_minor,
            "refunded_minor": 0,
            "points_redeemed": 0,
            "event_id": event_id,
            "placed_at": placed_at,
            "updated_at": placed_at,
        },
    ).first()
    if inserted is None:
        return None
    order_id = int(inserted[0])
    if lines:
        conn.execute(
            sa.insert(ORDER_LINES),
            [
                {"order_id": order_id, "line_no": n, "location": None, "returned_quantity": 0, **line}
                for n, line in enumerate(lines, start=1)
            ],
        )
    _history(conn, order_id, "completed", placed_at, location=store_id, detail={"event_id": event_id})
    if profile_id is not None:
        _earn_for_order(conn, profile_id, order_id, total_minor, currency, config.loyalty, channel, placed_at)
    return order_id


def record_external_orders(
    *, conn: Connection, orders: Sequence[dict[str, Any]], config: CommerceConfig
) -> list[int | None]:
    """`record_external_order` for many orders at once, in the order given; None for each order whose
    reference is known already (or came earlier in `orders`).

    Known references are read in one query; the new orders, their lines, history and loyalty
    credits are written in bulk, the same rows the per-order call writes, in the same order
    (loyalty accounts in profile-id order, each credited once with the batch's sum).
    """
    refs = [o["order_ref"] for o in orders]
    seen: set[str] = set()
    for chunk in _chunked(refs):
        seen.update(r[0] for r in conn.execute(sa.select(ORDERS.c.order_ref).where(ORDERS.c.order_ref.in_(chunk))))
    fresh = []
    for o in orders:
        if o["order_ref"] not in seen:
            seen.add(o["order_ref"])
            fresh.append(o)
    ids: dict[str, tuple[int, int | None]] = {}
    if fresh:
        rows = [
            {
                "order_ref": o["order_ref"],
                "profile_id": o["profile_id"],
                "anonymous_id": o["anonymous_id"],
                "cart_id": None,
                "checkout_id": None,
                "idempotency_key": None,
                "origin": "event",
                "source_id": o["source_id"],
                "channel": o["channel"],
                "store_id": o["store_id"],
                "fulfilment": "external",
                "pickup_location": None,
                "ship_address": None,
                "status": "completed",
                "currency": o["currency"],
                "total_minor": o["total_minor"],
                "refunded_minor": 0,
                "points_redeemed": 0,
                "event_id": o["event_id"],
                "placed_at": o["placed_at"],
                "updated_at": o["placed_at"],
            }
            for o in fresh
        ]
        stmt = dialect.insert_ignoring_conflicts(conn, ORDERS, ["order_ref"])
        if all(o["event_id"] is not None for o in fresh):
            # ids read back by reference and event (cheaper than RETURNING): a row someone else wrote
            # under the same reference meanwhile does not match, and that order is skipped, as on conflict
            conn.execute(stmt, rows)
            for chunk in _chunked(o["order_ref"] for o in fresh):
                for r in conn.execute(
                    sa.select(ORDERS.c.id, ORDERS.c.order_ref, ORDERS.c.event_id).where(ORDERS.c.order_ref.in_(chunk))
                ):
                    ids[r.order_ref] = (int(r.id), r.event_id)
        else:
            returning = stmt.returning(ORDERS.c.id, ORDERS.c.order_ref, ORDERS.c.event_id)
            ids = {r.order_ref: (int(r.id), r.event_id) for r in conn.execute(returning, rows)}
    placed = [(o, ids[o["order_ref"]][0]) for o in fresh if ids.get(o["order_ref"], (0, -1))[1] == o["event_id"]]
    line_rows = [
        {"order_id": oid, "line_no": n, "location": None, "returned_quantity": 0, **line}
        for o, oid in placed
        for n, line in enumerate(o["lines"], start=1)
    ]
    if line_rows:
        conn.execute(sa.insert(ORDER_LINES), line_rows)
    if placed:
        conn.execute(
            sa.insert(ORDER_HISTORY),
            [
                {
                    "order_id": oid,
                    "status": "completed",
                    "location": o["store_id"],
                    "actor": None,
                    "detail": {"event_id": o["event_id"]},
                    "at": o["placed_at"],
                }
                for o, oid in placed
            ],
        )
    # `_earn_for_order` / `_credit`: once per order (the ledger's dedupe key), then the accounts
    credits = []
    for o, oid in placed:
        points = config.loyalty.points_for(o["total_minor"], o["currency"]) if o["profile_id"] is not None else 0
        if points > 0:
            credits.append(
                {
                    "profile_id": o["profile_id"],
                    "kind": "earn",
                    "points": points,
                    "order_id": oid,
                    "dedupe_key": f"earn:order:{oid}",
                    "channel": o["channel"],
                    "actor": None,
                    "at": o["placed_at"],
                }
            )
    if credits:
        done: set[str] = set()
        for chunk in _chunked(c["dedupe_key"] for c in credits):
            done.update(
                r[0] for r in conn.execute(sa.select(LEDGER.c.dedupe_key).where(LEDGER.c.dedupe_key.in_(chunk)))
            )
        credits = [c for c in credits if c["dedupe_key"] not in done]
    if credits:
        conn.execute(dialect.insert_ignoring_conflicts(conn, LEDGER, ["dedupe_key"]), credits)
        earned: dict[int, list[Any]] = {}
        for c in credits:
            acc = earned.setdefault(c["profile_id"], [0, c["at"]])
            acc[0] += c["points"]
            acc[1] = c["at"]
        profiles = sorted(earned)
        conn.execute(
            dialect.insert_ignoring_conflicts(conn, ACCOUNTS, ["profile_id"]),
            [{"profile_id": p, "balance": 0, "lifetime_earned": 0, "updated_at": earned[p][1]} for p in profiles],
        )
        conn.execute(
            sa.update(ACCOUNTS)
            .where(ACCOUNTS.c.profile_id == sa.bindparam("b_profile_id"))
            .values(
                balance=ACCOUNTS.c.balance + sa.bindparam("b_points", type_=ACCOUNTS.c.balance.type),
                lifetime_earned=ACCOUNTS.c.lifetime_earned + sa.bindparam("b_points", type_=ACCOUNTS.c.balance.type),
                updated_at=sa.bindparam("b_at", type_=ACCOUNTS.c.updated_at.type),
            ),
            [{"b_profile_id": p, "b_points": earned[p][0], "b_at": earned[p][1]} for p in profiles],
        )
    placed_ids = {id(o): oid for o, oid in placed}
    return [placed_ids.get(id(o)) for o in orders]


# ============================================================================ returns


_RETURN_BY_KEY = sa.select(RETURNS.c.id, RETURNS.c.order_id).where(RETURNS.c.idempotency_key == sa.bindparam("key"))
_PLACED_DETAIL = sa.select(ORDER_HISTORY.c.detail).where(
    ORDER_HISTORY.c.order_id == sa.bindparam("order"), ORDER_HISTORY.c.status == "placed"
)


def _same_return(conn: Connection, key: str, order_id: int) -> dict[str, Any] | None:
    """The return made earlier with this idempotency key (None if none); a key used for another order is a 409."""
    prev = conn.execute(_RETURN_BY_KEY, {"key": key}).first()
    if prev is None:
        return None
    if prev.order_id != order_id:
        raise CommerceError(409, "idempotency_key_reused", f"idempotency key {key!r} was used for another order")
    return return_view(conn=conn, return_id=prev.id)


def create_return(
    *,
    conn: Connection,
    order_id: int,
    location: str | None,
    items: Sequence[dict[str, Any]],
    reason: str,
    refund_minor: int | None,
    idempotency_key: str | None,
    channel: str,
    actor: str | None,
    now: datetime,
    config: CommerceConfig,
    mode: str = "store",
) -> tuple[dict[str, Any], bool]:
    """Take items back at any location: sellable units are restocked there, damaged ones recorded
    apart; the refund is recorded and the order becomes partially returned or returned.

    `mode="mail"`: a parcel received at `location`, or at the configured `returns_location`.
    The refund defaults to the returned share of what was paid: with a loyalty discount, the lines'
    value * paid / subtotal (rounded down; the last return refunds what is left), and the points
    redeemed on the order come back in the same share. The same idempotency key answers the same
    return, also when two requests race (the order's row lock serialises them; the key is read again
    under it)."""
    if idempotency_key:
        prev = _same_return(conn, idempotency_key, order_id)
        if prev is not None:
            return prev, False
    o = conn.execute(dialect.for_update(sa.select(ORDERS).where(ORDERS.c.id == order_id), conn)).first()
    if o is None:
        raise _not_found(f"no order {order_id}")
    if idempotency_key:  # a concurrent return with this key may have committed while we waited for the lock
        prev = _same_return(conn, idempotency_key, order_id)
        if prev is not None:
            return prev, False
    if o.status not in RETURNABLE:
        raise CommerceError(409, "not_returnable", f"order {o.order_ref} is {o.status}; nothing to return yet")
    if mode not in ("store", "mail"):
        raise CommerceError(422, "invalid_mode", "a return's mode is 'store' or 'mail'")
    location = location or (config.returns_location if mode == "mail" else None)
    if not location:
        raise CommerceError(422, "location_required", "a return needs the location that receives it")
    loc = get_location(conn=conn, code=location)
    if loc is None or not loc["active"]:
        raise CommerceError(422, "unknown_location", f"unknown location {location!r}")
    if not items:
        raise CommerceError(422, "no_items", "a return needs items")
    _require_skus(conn, {i["sku"] for i in items})
    lines = conn.execute(
        sa.select(ORDER_LINES).where(ORDER_LINES.c.order_id == order_id).order_by(ORDER_LINES.c.line_no)
    ).all()
    left = {r.line_no: r.quantity - r.returned_quantity for r in lines}
    taken: dict[int, int] = {}
    value = 0
    for item in items:
        need = item["quantity"]
        for r in lines:
            if r.sku != item["sku"] or need == 0:
                continue
            take = min(need, left[r.line_no])
            if take:
                left[r.line_no] -= take
                taken[r.line_no] = taken.get(r.line_no, 0) + take
                value += take * r.unit_price_minor
                need -= take
        if need:
            raise CommerceError(
                422, "not_in_order", f"order {o.order_ref} has fewer returnable units of {item['sku']} than requested"
            )
    everything = all(v == 0 for v in left.values())
    remaining = o.total_minor - o.refunded_minor
    subtotal = sum(r.quantity * r.unit_price_minor for r in lines)
    placed = conn.execute(_PLACED_DETAIL, {"order": order_id}).first()
    discount = int(((placed.detail if placed else None) or {}).get("discount", 0))
    if refund_minor is not None:
        refund = refund_minor
    elif discount and subtotal:  # the returned share of what was paid
        refund = remaining if everything else min(remaining, value * o.total_minor // subtotal)
    else:
        refund = value
    if refund > remaining:
        raise CommerceError(422, "refund_too_large", "the refund exceeds what is left to refund on the order")
    rid = conn.execute(
        dialect.insert_ignoring_conflicts(conn, RETURNS, ["idempotency_key"]).returning(RETURNS.c.id),
        {
            "order_id": order_id,
            "location": location,
            "channel": channel,
            "reason": reason,
            "refund_minor": refund,
            "currency": o.currency,
            "idempotency_key": idempotency_key,
            "actor": actor[:100] if actor else None,
            "created_at": now,
        },
    ).scalar_one_or_none()
    if rid is None:  # the key was taken meanwhile by a return of another order (this one is locked)
        prev = _same_return(conn, str(idempotency_key), order_id)
        if prev is None:
            raise CommerceError(409, "conflict", "the return could not be recorded; retry")
        return prev, False
    for line_no, q in taken.items():
        conn.execute(
            sa.update(ORDER_LINES)
            .where(ORDER_LINES.c.order_id == order_id, ORDER_LINES.c.line_no == line_no)
            .values(returned_quantity=ORDER_LINES.c.returned_quantity + q)
        )
    restock: dict[str, list[int]] = {}
    for item in items:
        acc = restock.setdefault(item["sku"], [0, 0])
        acc[0 if item["condition"] == "sellable" else 1] += item["quantity"]
    _ensure_stock_rows(conn, [(sku, location) for sku in restock], now)
    for sku in sorted(restock):
        sellable, damaged = restock[sku]
        conn.execute(
            sa.update(STOCK)
            .where(STOCK.c.sku == sku, STOCK.c.location == location)
            .values(on_hand=STOCK.c.on_hand + sellable, damaged=STOCK.c.damaged + damaged, updated_at=now)
        )
    conn.execute(
        sa.insert(RETURN_LINES),
        [
            {"return_id": rid, "line_no": n, "sku": i["sku"], "quantity": i["quantity"], "condition": i["condition"]}
            for n, i in enumerate(items, start=1)
        ],
    )
    status = "returned" if everything else "partially_returned"
    conn.execute(
        sa.update(ORDERS)
        .where(ORDERS.c.id == order_id)
        .values(status=status, refunded_minor=ORDERS.c.refunded_minor + refund, updated_at=now)
    )
    detail: dict[str, Any] = {"return_id": rid, "refund": refund, **({"mode": mode} if mode != "store" else {})}
    _history(conn, order_id, status, now, actor=actor, location=location, detail=detail)
    restored = 0
    if o.profile_id is not None:
        if refund:
            _reverse_points(conn, o, refund, f"return:{rid}", config, now)
        if o.points_redeemed:
            returned = sum((r.returned_quantity + taken.get(r.line_no, 0)) * r.unit_price_minor for r in lines)
            restored = _restore_redeemed(conn, o, rid, returned, subtotal, everything, now)
    events.emit(
        conn,
        message_id=f"oj:return:{rid}",
        event="Order Refunded",
        channel=channel,
        profile_id=o.profile_id,
        anonymous_id=o.anonymous_id,
        properties={
            "order_id": o.order_ref,
            "return_id": str(rid),
            "status": status,
            "mode": mode,
            "location_id": location,
            "reason": reason,
            "currency": o.currency,
            "total": _amount(refund, o.currency),
            **({"points_restored": restored} if restored else {}),
            "products": [
                {"product_id": i["sku"], "sku": i["sku"], "quantity": i["quantity"], "condition": i["condition"]}
                for i in items
            ],
        },
        now=now,
    )
    return return_view(conn=conn, return_id=rid), True


def _restore_redeemed(
    conn: Connection, o: Any, rid: int, returned: int, subtotal: int, everything: bool, now: datetime
) -> int:
    """Give back the points redeemed on an order in the share of its value returned so far (rounded
    down; a full return gives back all of them), minus what earlier returns gave back. Returns the points."""
    target = o.points_redeemed if everything or not subtotal else o.points_redeemed * returned // subtotal
    given = conn.execute(
        sa.select(sa.func.coalesce(sa.func.sum(LEDGER.c.points), 0)).where(
            LEDGER.c.order_id == o.id, LEDGER.c.kind == "adjust", LEDGER.c.dedupe_key.like("refund_points:return:%")
        )
    ).scalar_one()
    points = max(0, target - int(given))
    root = identity.canonical_id(conn=conn, profile_id=o.profile_id) or o.profile_id
    done = _credit(
        conn,
        profile_id=root,
        points=points,
        kind="adjust",
        order_id=o.id,
        dedupe_key=f"refund_points:return:{rid}",
        channel=None,
        actor=None,
        now=now,
    )
    return points if done else 0


def return_view(*, conn: Connection, return_id: int) -> dict[str, Any]:
    r = conn.execute(sa.select(RETURNS).where(RETURNS.c.id == return_id)).one()
    lines = conn.execute(
        sa.select(RETURN_LINES).where(RETURN_LINES.c.return_id == return_id).order_by(RETURN_LINES.c.line_no)
    )
    order = conn.execute(sa.select(ORDERS.c.order_ref, ORDERS.c.status).where(ORDERS.c.id == r.order_id)).one()
    return {
        "id": r.id,
        "order_id": r.order_id,
        "order_ref": order.order_ref,
        "order_status": order.status,
        "location": r.location,
        "channel": r.channel,
        "reason": r.reason,
        "refund": to_major(r.refund_minor, r.currency),
        "refund_minor": r.refund_minor,
        "currency": r.currency,
        "created_at": r.created_at,
        "items": [{"sku": x.sku, "quantity": x.quantity, "condition": x.condition} for x in lines],
    }


# ============================================================================ loyalty


def _ledger(
    conn: Connection,
    *,
    profile_id: int,
    kind: str,
    points: int,
    order_id: int | None,
    dedupe_key: str | None,
    channel: str | None,
    actor: str | None,
    now: datetime,
) -> int | None:
    """Write a ledger entry and return its id; None when its dedupe key was written before."""
    row = {
        "profile_id": profile_id,
        "kind": kind,
        "points": points,
        "order_id": order_id,
        "dedupe_key": dedupe_key,
        "channel": channel,
        "actor": actor[:100] if actor else None,
        "at": now,
    }
    if dedupe_key is None:
        return int(conn.execute(sa.insert(LEDGER).returning(LEDGER.c.id), row).scalar_one())
    found = conn.execute(
        dialect.insert_ignoring_conflicts(conn, LEDGER, ["dedupe_key"]).returning(LEDGER.c.id), row
    ).first()
    return int(found[0]) if found is not None else None


def _credit(
    conn: Connection,
    *,
    profile_id: int,
    points: int,
    kind: str,
    order_id: int | None,
    dedupe_key: str,
    channel: str | None,
    actor: str | None,
    now: datetime,
) -> bool:
    """Add points once per dedupe key (the ledger's UNIQUE key decides, not a read)."""
    if points <= 0:
        return False
    if not _ledger(
        conn,
        profile_id=profile_id,
        kind=kind,
        points=points,
        order_id=order_id,
        dedupe_key=dedupe_key,
        channel=channel,
        actor=actor,
        now=now,
    ):
        return False
    conn.execute(
        dialect.insert_ignoring_conflicts(conn, ACCOUNTS, ["profile_id"]),
        [{"profile_id": profile_id, "balance": 0, "lifetime_earned": 0, "updated_at": now}],
    )
    earned = points if kind == "earn" else 0
    conn.execute(
        sa.update(ACCOUNTS)
        .where(ACCOUNTS.c.profile_id == profile_id)
        .values(
            balance=ACCOUNTS.c.balance + points, lifetime_earned=ACCOUNTS.c.lifetime_earned + earned, updated_at=now
        )
    )
    return True


def _earn_for_order(
    conn: Connection,
    profile_id: int,
    order_id: int,
    total_minor: int,
    currency: str,
    rules: LoyaltyRules,
    channel: str | None,
    now: datetime,
) -> None:
    _credit(
        conn,
        profile_id=profile_id,
        points=rules.points_for(total_minor, currency),
        kind="earn",
        order_id=order_id,
        dedupe_key=f"earn:order:{order_id}",
        channel=channel,
        actor=None,
        now=now,
    )


def _debit(conn: Connection, root: int, points: int, now: datetime, *, partial: bool) -> int:
    """Take points from the cluster's member accounts (locked in profile-id order); returns points taken."""
    members = identity.members(conn=conn, root=root) or [root]
    accounts = conn.execute(
        dialect.for_update(
            sa.select(ACCOUNTS.c.profile_id, ACCOUNTS.c.balance)
            .where(ACCOUNTS.c.profile_id.in_(members))
            .order_by(ACCOUNTS.c.profile_id),
            conn,
        )
    ).all()
    have = sum(a.balance for a in accounts)
    if have < points and not partial:
        raise CommerceError(409, "insufficient_points", f"balance {have} is less than {points} points")
    want = min(points, have)
    left = want
    for a in accounts:
        take = min(left, a.balance)
        if take <= 0:
            continue
        done = conn.execute(
            sa.update(ACCOUNTS)
            .where(ACCOUNTS.c.profile_id == a.profile_id, ACCOUNTS.c.balance >= take)
            .values(balance=ACCOUNTS.c.balance - take, updated_at=now)
        ).rowcount
        if done != 1:
            raise CommerceError(409, "insufficient_points", "the balance changed; retry")
        left -= take
    return want


def redeem_loyalty(
    *,
    conn: Connection,
    profile_id: int,
    points: int,
    dedupe_key: str | None,
    order_id: int | None,
    channel: str | None,
    actor: str | None,
    now: datetime,
    config: CommerceConfig,
) -> dict[str, Any]:
    """Spend points in any channel; never below zero; once per dedupe key."""
    root = identity.canonical_id(conn=conn, profile_id=profile_id)
    if root is None:
        raise _not_found(f"no profile {profile_id}")
    if points <= 0:
        raise CommerceError(422, "invalid_points", "points must be positive")
    if dedupe_key:
        prev = conn.execute(sa.select(LEDGER).where(LEDGER.c.dedupe_key == dedupe_key)).first()
        if prev is not None:
            return {**loyalty_view(conn=conn, profile_id=root, config=config, history=0), "duplicate": True}
    _debit(conn, root, points, now, partial=False)
    entry = _ledger(
        conn,
        profile_id=root,
        kind="redeem",
        points=-points,
        order_id=order_id,
        dedupe_key=dedupe_key,
        channel=channel,
        actor=actor,
        now=now,
    )
    if entry is None:
        # a concurrent request with the same key committed first: undo ours by failing the transaction
        raise CommerceError(409, "duplicate_redemption", f"redemption {dedupe_key!r} was already made")
    out = {**loyalty_view(conn=conn, profile_id=root, config=config, history=0), "duplicate": False}
    if order_id is None:  # redeemed at checkout: told by the order's own event
        events.emit(
            conn,
            message_id=f"oj:loyalty:{entry}",
            event="Loyalty Points Redeemed",
            channel=channel,
            profile_id=root,
            anonymous_id=None,
            properties={"points": points, "balance": out["balance"], "tier": out["tier"]},
            now=now,
        )
    return out


def _reverse_points(
    conn: Connection, o: Any, refund_minor: int, key: str, config: CommerceConfig, now: datetime
) -> None:
    """Take back points earned on the refunded share of an order (never below zero), and give back
    points redeemed on a cancelled order. `o` is the order as it was before this refund. Cumulative:
    the points earned x everything refunded so far / total, minus what earlier refunds took back,
    so a full refund in several returns takes back every earned point (no rounding left over)."""
    root = identity.canonical_id(conn=conn, profile_id=o.profile_id) or o.profile_id
    sums = conn.execute(
        sa.select(LEDGER.c.kind, sa.func.coalesce(sa.func.sum(LEDGER.c.points), 0))
        .where(LEDGER.c.order_id == o.id, LEDGER.c.kind.in_(("earn", "reverse")))
        .group_by(LEDGER.c.kind)
    ).all()
    earned = int(next((p for k, p in sums if k == "earn"), 0))
    taken = -int(next((p for k, p in sums if k == "reverse"), 0))
    refunded = min(o.total_minor, o.refunded_minor + refund_minor)
    share = earned * refunded // o.total_minor - taken if o.total_minor else 0
    if share > 0 and _ledger(
        conn,
        profile_id=root,
        kind="reverse",
        points=0,
        order_id=o.id,
        dedupe_key=f"reverse:{key}",
        channel=None,
        actor=None,
        now=now,
    ):
        taken = _debit(conn, root, share, now, partial=True)
        conn.execute(sa.update(LEDGER).where(LEDGER.c.dedupe_key == f"reverse:{key}").values(points=-taken))
    if key.startswith("cancel:") and o.points_redeemed:
        _credit(
            conn,
            profile_id=root,
            points=o.points_redeemed,
            kind="adjust",
            order_id=o.id,
            dedupe_key=f"refund_points:{key}",
            channel=None,
            actor=None,
            now=now,
        )


def loyalty_view(*, conn: Connection, profile_id: int, config: CommerceConfig, history: int = 50) -> dict[str, Any]:
    root = identity.canonical_id(conn=conn, profile_id=profile_id)
    if root is None:
        raise _not_found(f"no profile {profile_id}")
    members = identity.members(conn=conn, root=root)
    row = conn.execute(
        sa.select(
            sa.func.coalesce(sa.func.sum(ACCOUNTS.c.balance), 0),
            sa.func.coalesce(sa.func.sum(ACCOUNTS.c.lifetime_earned), 0),
        ).where(ACCOUNTS.c.profile_id.in_(members))
    ).one()
    out: dict[str, Any] = {
        "profile_id": root,
        "balance": int(row[0]),
        "lifetime_earned": int(row[1]),
        "tier": config.loyalty.tier_for(int(row[1])),
    }
    if history:
        out["history"] = [
            {
                "kind": r.kind,
                "points": r.points,
                "order_id": r.order_id,
                "channel": r.channel,
                "actor": r.actor,
                "at": r.at,
            }
            for r in conn.execute(
                sa.select(LEDGER).where(LEDGER.c.profile_id.in_(members)).order_by(LEDGER.c.id.desc()).limit(history)
            )
        ]
    return out


def valid_currency(code: str) -> bool:
    return is_currency(code)


# ------------------------------------------------------------------ reads for the staff console


#: click & collect orders still waiting to be made ready or collected
OPEN_PICKUP = ("placed", "paid", "ready_for_pickup")


def pickups_at(*, conn: Connection, location: str, limit: int = 200) -> list[dict[str, Any]]:
    """Click & collect orders to prepare or hand over at a store, oldest first (what is due now)."""
    ids = [
        r[0]
        for r in conn.execute(
            sa.select(ORDERS.c.id)
            .where(
                ORDERS.c.fulfilment == "click_and_collect",
                ORDERS.c.pickup_location == location,
                ORDERS.c.status.in_(OPEN_PICKUP),
            )
            .order_by(ORDERS.c.placed_at, ORDERS.c.id)
            .limit(limit)
        )
    ]
    return order_views(conn=conn, order_ids=ids)


def related_products(
    *, conn: Connection, skus: Iterable[str], kinds: Sequence[str] = ("accessory",)
) -> list[dict[str, Any]]:
    """Active products related to any of `skus` (accessories by default), with the SKU they go with."""
    skus = sorted(set(skus))
    out: list[dict[str, Any]] = []
    for start in range(0, len(skus), CHUNK):
        rows = conn.execute(
            sa.select(RELATED.c.sku, RELATED.c.related_sku, RELATED.c.kind, PRODUCTS.c.name, PRODUCTS.c.category)
            .join(PRODUCTS, PRODUCTS.c.sku == RELATED.c.related_sku)
            .where(RELATED.c.sku.in_(skus[start : start + CHUNK]), RELATED.c.kind.in_(kinds), PRODUCTS.c.active)
            .order_by(RELATED.c.sku, RELATED.c.related_sku)
        )
        out.extend(
            {"sku": r.related_sku, "name": r.name, "category": r.category, "kind": r.kind, "for_sku": r.sku}
            for r in rows
        )
    return out


def current_cart(
    *, conn: Connection, profile_id: int, members: list[int] | None = None, carts: list[Any] | None = None
) -> dict[str, Any] | None:
    """The profile's active cart as `resolve_cart` would pick it, without merging (a read-only view).

    Pass the cluster's `members` (in id order, `profile_id` its survivor) when the caller has them,
    and its `active_carts` when it read them already."""
    if members is None:
        root = identity.canonical_id(conn=conn, profile_id=profile_id)
        if root is None:
            return None
        members = identity.members(conn=conn, root=root)
    else:
        root = profile_id
    if carts is None:
        carts = conn.execute(_ACTIVE_CARTS_OF, {"members": members}).all()
    else:  # the same carts, in the order the choice below relies on
        carts = sorted(carts, key=lambda c: c.id)
    if not carts:
        return None
    target = next(
        (c for c in carts if c.profile_id == root),
        next((c for c in carts if c.profile_id is not None), carts[0]),
    )
    return cart_view(conn=conn, cart_id=int(target.id))


# ============================================================================ abandoned-cart signal


def _cart_signal(r: Any, now: datetime) -> dict[str, Any]:
    return {
        "cart_id": r.id,
        "profile_id": r.profile_id,
        "anonymous_id": r.anonymous_id,
        "currency": r.currency,
        "value": to_major(r.value_minor, r.currency),
        "value_minor": r.value_minor,
        "item_count": int(r.item_count or 0),
        "last_change_at": r.updated_at,
        "idle_minutes": max(0, int((now - r.updated_at).total_seconds() // 60)),
    }


def _item_count() -> Any:
    return (
        sa.select(sa.func.coalesce(sa.func.sum(CART_LINES.c.quantity), 0))
        .where(CART_LINES.c.cart_id == CARTS.c.id)
        .scalar_subquery()
        .label("item_count")
    )


def _owned_by_members() -> Any:
    """Carts bound to a member of the cluster, or still held by an anonymous id linked to one.

    The anonymous ids stay in the database (a subquery): a customer's POS receipts and calls each
    link one, so a list of them can run into the hundreds."""
    members = sa.bindparam("members", expanding=True)
    devices = sa.select(LINKS.c.value).where(LINKS.c.id_type == "anonymous_id", LINKS.c.profile_id.in_(members))
    return CARTS.c.profile_id.in_(members) | (CARTS.c.profile_id.is_(None) & CARTS.c.anonymous_id.in_(devices))


# built once: the customer 360 reads them on every page view
_ACTIVE_CARTS_OF = (
    sa.select(CARTS.c.id, CARTS.c.profile_id)
    .where(CARTS.c.status == "active", _owned_by_members())
    .order_by(CARTS.c.id)
)
_ACTIVE_CART_SIGNAL = (
    sa.select(CARTS, _item_count())
    .where(CARTS.c.status == "active", _owned_by_members())
    .order_by(CARTS.c.updated_at.desc(), CARTS.c.id.desc())
)


def active_carts(*, conn: Connection, member_ids: list[int]) -> list[Any]:
    """The cluster's active carts (bound to a member or held by a linked anonymous id) with their
    item counts, most recently changed first: what `active_cart_signal` and `current_cart` choose
    from, read once when a page needs both."""
    return conn.execute(_ACTIVE_CART_SIGNAL, {"members": member_ids}).all() if member_ids else []


def active_cart_signal(
    *, conn: Connection, member_ids: list[int], now: datetime, carts: list[Any] | None = None
) -> dict[str, Any] | None:
    """The abandoned-cart signal of a profile: its active cart's last change time, value and items.

    The cart is the one bound to a member of the cluster, or else one still held by an anonymous id
    linked to it (merged into the profile's cart the next time the cart is resolved); the most
    recently changed one with items wins. `carts`: the cluster's `active_carts`, when already read.
    """
    if not member_ids:
        return None
    row = carts if carts is not None else active_carts(conn=conn, member_ids=member_ids)
    with_items = [r for r in row if r.item_count]
    return _cart_signal(with_items[0], now) if with_items else None


def abandoned_carts(
    *,
    conn: Connection,
    idle_minutes: int,
    now: datetime,
    min_value_minor: int = 0,
    currency: str | None = None,
    max_idle_minutes: int | None = None,
    limit: int = 500,
    after_id: int | None = None,
) -> list[dict[str, Any]]:
    """Active carts with items, unchanged for at least `idle_minutes` (and at most `max_idle_minutes`),
    with their owner's surviving profile (also for a device cart whose anonymous id was linked since).
    Newest carts first, keyset paged by cart id (`after_id`: the last id of the previous page)."""
    cutoff = now - timedelta(minutes=idle_minutes)
    stmt = (
        sa.select(CARTS, _item_count())
        .where(
            CARTS.c.status == "active",
            CARTS.c.updated_at <= cutoff,
            CARTS.c.value_minor >= min_value_minor,
            sa.exists().where(CART_LINES.c.cart_id == CARTS.c.id),
        )
        .order_by(CARTS.c.id.desc())
        .limit(limit)
    )
    if max_idle_minutes is not None:
        stmt = stmt.where(CARTS.c.updated_at >= now - timedelta(minutes=max_idle_minutes))
    if currency:
        stmt = stmt.where(CARTS.c.currency == currency)
    if after_id is not None:
        stmt = stmt.where(CARTS.c.id < after_id)
    rows = conn.execute(stmt).all()
    # a device's cart whose anonymous id has since been linked to a profile belongs to that profile
    devices = dict(
        conn.execute(
            sa.select(LINKS.c.value, LINKS.c.profile_id).where(
                LINKS.c.id_type == "anonymous_id",
                LINKS.c.value.in_(sorted({r.anonymous_id for r in rows if r.profile_id is None and r.anonymous_id})),
            )
        ).all()
    )
    owners = {r.id: r.profile_id if r.profile_id is not None else devices.get(r.anonymous_id) for r in rows}
    survivors = dict(
        conn.execute(
            sa.select(PROFILES.c.id, PROFILES.c.canonical_id).where(
                PROFILES.c.id.in_(sorted({p for p in owners.values() if p is not None}))
            )
        ).all()
    )
    out = []
    for r in rows:
        item = _cart_signal(r, now)
        owner = owners[r.id]
        item["profile_id"] = survivors.get(owner, owner) if owner is not None else None
        out.append(item)
    return out


@lru_cache(maxsize=1)
def _default_config() -> CommerceConfig:
    return load_commerce_config()


_LOYALTY_SUMMARY = sa.select(
    sa.func.count(),
    sa.func.coalesce(sa.func.sum(ACCOUNTS.c.balance), 0),
    sa.func.coalesce(sa.func.sum(ACCOUNTS.c.lifetime_earned), 0),
).where(ACCOUNTS.c.profile_id.in_(sa.bindparam("members", expanding=True)))


def loyalty_summary(
    *, conn: Connection, member_ids: list[int], config: CommerceConfig | None = None
) -> dict[str, Any] | None:
    """Balance, lifetime points and tier of a cluster (None without a loyalty account)."""
    if not member_ids:
        return None
    row = conn.execute(_LOYALTY_SUMMARY, {"members": member_ids}).one()
    if not row[0]:
        return None
    rules = (config or _default_config()).loyalty
    return {"balance": int(row[1]), "lifetime_earned": int(row[2]), "tier": rules.tier_for(int(row[2]))}
