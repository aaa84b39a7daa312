"""Commerce routes under /api/commerce: catalog, locations, stock and availability, holds, carts,
checkout, orders, returns, loyalty. Every write is one transaction; a refused request changes nothing."""

from __future__ import annotations

import csv
import io
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal
from typing import Any

from fastapi import APIRouter, Depends, Header, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from pydantic import ValidationError
from sqlalchemy.exc import IntegrityError

from omnijourney.access.deps import require_role
from omnijourney.access.service import Principal
from omnijourney.commerce import service
from omnijourney.commerce.config import CommerceConfig, load_commerce_config, to_minor
from omnijourney.commerce.schemas import (
    CartItemIn,
    CartOwnerIn,
    CartQuantityIn,
    CatalogImport,
    CheckoutIn,
    CompleteIn,
    HoldIn,
    LocationsIn,
    OrderStatusIn,
    ProductIn,
    RedeemIn,
    ReturnIn,
    StockUpdatesIn,
)
from omnijourney.commerce.service import CommerceError
from omnijourney.errors import ApiError
from omnijourney.identity.service import IdentityError
from omnijourney.ingest.spec import CHANNELS
from omnijourney.store import db
from omnijourney.store.base import utcnow

router = APIRouter(prefix="/api/commerce", tags=["commerce"])
readers = require_role("marketer", "agent", "store_staff")
staff = require_role("agent", "store_staff")
admins = require_role()

#: expired reservations are swept at most this often per process, before a checkout starts
SWEEP_INTERVAL_SECONDS = 5.0
_sweep_lock = threading.Lock()
_last_sweep = [0.0]
_config: list[CommerceConfig] = []


def _cfg() -> CommerceConfig:
    if not _config:
        _config.append(load_commerce_config())
    return _config[0]


def _actor(p: Principal) -> str:
    return f"token:{p.token_id}:{p.name}"


@contextmanager
def _errors() -> Iterator[None]:
    try:
        yield
    except CommerceError as exc:
        raise ApiError(exc.status, exc.code, exc.message) from exc
    except IdentityError as exc:
        raise ApiError(422, "invalid_identifier", str(exc)) from exc
    except IntegrityError as exc:  # a database invariant refused the change (CHECK / UNIQUE)
        raise ApiError(409, "conflict", "the change would break an inventory or idempotency invariant") from exc


def _engine(request: Request) -> Any:
    return request.app.state.engine


# ------------------------------------------------------------------ catalog


@router.post("/products")
def import_products(body: CatalogImport, request: Request, _: Principal = Depends(admins)) -> dict[str, Any]:
    with _errors(), db.write(_engine(request)) as conn:
        n = service.upsert_products(conn=conn, items=[p.row() for p in body.products], now=utcnow())
    return {"imported": n}


def parse_catalog_csv(text: str) -> list[ProductIn]:
    """CSV columns: sku, name, product_id, category, brand, price_<CUR> (major units), attr_<name>,
    accessories / alternatives / bundle_parts (SKUs separated by ';')."""
    reader = csv.DictReader(io.StringIO(text))
    out: list[ProductIn] = []
    errors: list[dict[str, Any]] = []
    kinds = {"accessories": "accessory", "alternatives": "alternative", "bundle_parts": "bundle_part"}
    for n, row in enumerate(reader, start=2):
        row = {k.strip(): (v or "").strip() for k, v in row.items() if k}
        item: dict[str, Any] = {
            "sku": row.get("sku", ""),
            "name": row.get("name", ""),
            "product_id": row.get("product_id") or None,
            "category": row.get("category") or None,
            "brand": row.get("brand") or None,
            "prices": {k[6:].upper(): Decimal(v) for k, v in row.items() if k.startswith("price_") and v} or None,
            "attributes": {k[5:]: v for k, v in row.items() if k.startswith("attr_") and v},
        }
        related = [
            {"sku": s.strip(), "kind": kind}
            for col, kind in kinds.items()
            for s in row.get(col, "").split(";")
            if s.strip()
        ]
        if any(col in row for col in kinds):
            item["related"] = related
        try:
            out.append(ProductIn.model_validate(item))
        except (ValidationError, ArithmeticError) as exc:
            errors.append({"field": f"line {n}", "message": str(exc)[:500]})
    if errors:
        raise ApiError(422, "invalid_request", "the CSV did not validate", errors=errors[:100])
    if not out:
        raise ApiError(422, "invalid_request", "the CSV has no products")
    return out


@router.post("/products/import.csv")
async def import_products_csv(request: Request, _: Principal = Depends(admins)) -> dict[str, Any]:
    raw = await request.body()
    if len(raw) > 20 * 1024 * 1024:
        raise ApiError(413, "too_large", "CSV imports are limited to 20 MiB; split the file")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ApiError(422, "invalid_request", "the CSV must be UTF-8") from exc
    products = parse_catalog_csv(text)
    engine = _engine(request)

    def write() -> int:
        with _errors(), db.write(engine) as conn:
            return service.upsert_products(conn=conn, items=[p.row() for p in products], now=utcnow())

    return {"imported": await run_in_threadpool(write)}


@router.get("/products/{sku}")
def get_product(sku: str, request: Request, _: Principal = Depends(readers)) -> dict[str, Any]:
    with db.read(_engine(request)) as conn:
        product = service.get_product(conn=conn, sku=sku)
    if product is None:
        raise ApiError(404, "not_found", f"no product {sku!r}")
    return product


# ------------------------------------------------------------------ locations


@router.put("/locations")
def put_locations(body: LocationsIn, request: Request, _: Principal = Depends(admins)) -> dict[str, Any]:
    with _errors(), db.write(_engine(request)) as conn:
        n = service.upsert_locations(conn=conn, items=[loc.model_dump() for loc in body.locations], now=utcnow())
    return {"saved": n}


@router.get("/locations")
def list_locations(request: Request, _: Principal = Depends(readers)) -> dict[str, Any]:
    with db.read(_engine(request)) as conn:
        return {"locations": service.list_locations(conn=conn)}


@router.get("/locations/{code}")
def get_location(code: str, request: Request, _: Principal = Depends(readers)) -> dict[str, Any]:
    with db.read(_engine(request)) as conn:
        loc = service.get_location(conn=conn, code=code)
    if loc is None:
        raise ApiError(404, "not_found", f"no location {code!r}")
    return loc


@router.get("/locations/{code}/stock")
def location_stock(
    code: str,
    request: Request,
    sku: list[str] | None = Query(None, max_length=500),
    after: str | None = None,
    limit: int = Query(500, ge=1, le=5000),
    _: Principal = Depends(readers),
) -> dict[str, Any]:
    with db.read(_engine(request)) as conn:
        if service.get_location(conn=conn, code=code) is None:
            raise ApiError(404, "not_found", f"no location {code!r}")
        rows = service.location_stock(conn=conn, location=code, skus=sku, after=after, limit=limit)
    return {"location": code, "stock": rows, "next_after": rows[-1]["sku"] if len(rows) == limit else None}


# ------------------------------------------------------------------ stock and availability


@router.post("/stock")
def update_stock(body: StockUpdatesIn, request: Request, _: Principal = Depends(staff)) -> dict[str, Any]:
    """Absolute counts and deltas from POS / ERP; each is applied once per external_id (all or nothing)."""
    now = utcnow()
    with _errors(), db.write(_engine(request)) as conn:
        results = []
        for u in sorted(body.updates, key=lambda u: (u.sku, u.location)):
            results.append(
                service.update_stock(
                    conn=conn,
                    external_id=u.external_id,
                    sku=u.sku,
                    location=u.location,
                    mode="absolute" if u.on_hand is not None else "delta",
                    quantity=u.on_hand if u.on_hand is not None else int(u.delta or 0),
                    now=now,
                )
            )
    return {"results": results}


@router.get("/availability/{sku}")
def availability(sku: str, request: Request, _: Principal = Depends(readers)) -> dict[str, Any]:
    with db.read(_engine(request)) as conn:
        if not service.known_skus(conn=conn, skus=[sku]):
            raise ApiError(404, "not_found", f"no product {sku!r}")
        return service.availability(conn=conn, sku=sku)


@router.get("/availability/{sku}/nearest")
def nearest(
    sku: str,
    request: Request,
    lat: float = Query(..., ge=-90, le=90),
    lon: float = Query(..., ge=-180, le=180),
    quantity: int = Query(1, ge=1, le=999),
    limit: int = Query(5, ge=1, le=50),
    pickup: bool = False,
    max_km: float | None = Query(None, gt=0, le=20_000),
    _: Principal = Depends(readers),
) -> dict[str, Any]:
    with db.read(_engine(request)) as conn:
        if not service.known_skus(conn=conn, skus=[sku]):
            raise ApiError(404, "not_found", f"no product {sku!r}")
        found = service.nearest_with_stock(
            conn=conn,
            sku=sku,
            latitude=lat,
            longitude=lon,
            quantity=quantity,
            limit=limit,
            pickup_only=pickup,
            max_km=max_km,
        )
    return {"sku": sku, "locations": found}


@router.post("/holds", status_code=201)
def create_hold(body: HoldIn, request: Request, _: Principal = Depends(staff)) -> dict[str, Any]:
    ttl = min(body.ttl_seconds, _cfg().max_hold_seconds)
    with _errors(), db.write(_engine(request)) as conn:
        return service.hold(
            conn=conn,
            sku=body.sku,
            location=body.location,
            quantity=body.quantity,
            reference=body.reference,
            ttl_seconds=ttl,
            now=utcnow(),
        )


@router.delete("/holds/{reservation_id:int}")
def release_hold(reservation_id: int, request: Request, _: Principal = Depends(staff)) -> dict[str, Any]:
    with _errors(), db.write(_engine(request)) as conn:
        return service.release_hold(conn=conn, reservation_id=reservation_id, now=utcnow())


@router.post("/reservations/sweep")
def sweep(request: Request, _: Principal = Depends(admins)) -> dict[str, Any]:
    with db.write(_engine(request)) as conn:
        return {"released": service.sweep_expired_reservations(conn=conn, now=utcnow())}


def _maybe_sweep(engine: Any) -> None:
    """Release expired reservations now and then, in a transaction of its own (never inside a checkout's)."""
    now = time.monotonic()
    if now - _last_sweep[0] < SWEEP_INTERVAL_SECONDS or not _sweep_lock.acquire(blocking=False):
        return
    try:
        _last_sweep[0] = now
        with db.write(engine) as conn:
            service.sweep_expired_reservations(conn=conn, now=utcnow(), limit=500)
    finally:
        _sweep_lock.release()


# ------------------------------------------------------------------ carts


def _cart(conn: Any, cart_id: int) -> dict[str, Any]:
    view = service.cart_view(conn=conn, cart_id=cart_id)
    if view is None:
        raise ApiError(404, "not_found", f"no cart {cart_id}")
    return view


@router.post("/carts")
def resolve_cart(body: CartOwnerIn, request: Request, principal: Principal = Depends(staff)) -> dict[str, Any]:
    """The active cart of a profile or an anonymous device (created if none), merged across devices."""
    with _errors(), db.write(_engine(request)) as conn:
        cart_id = service.resolve_cart(
            conn=conn,
            rules=request.app.state.identity_rules,
            profile_id=body.profile_id,
            anonymous_id=body.anonymous_id,
            currency=body.currency or _cfg().default_currency,
            now=utcnow(),
            actor=_actor(principal),
        )
        assert cart_id is not None
        return _cart(conn, cart_id)


@router.get("/carts/abandoned")
def abandoned_carts(
    request: Request,
    idle_minutes: int = Query(60, ge=1, le=525_600),
    max_idle_minutes: int | None = Query(None, ge=1, le=5_256_000),
    min_value: Decimal = Query(Decimal(0), ge=0, le=Decimal("1000000000")),
    currency: str | None = Query(None, min_length=3, max_length=3),
    limit: int = Query(500, ge=1, le=5000),
    after: int | None = Query(None, ge=1),
    _: Principal = Depends(readers),
) -> dict[str, Any]:
    """The abandoned-cart signal for segments and automations: active carts with items unchanged for
    `idle_minutes` or more (value at least `min_value` in `currency`, which `min_value` needs)."""
    code = currency.upper() if currency else None
    if code is not None and not service.valid_currency(code):
        raise ApiError(422, "invalid_currency", f"{currency!r} is not an ISO 4217 currency code")
    if min_value and code is None:
        raise ApiError(422, "invalid_request", "min_value needs a currency")
    if max_idle_minutes is not None and max_idle_minutes < idle_minutes:
        raise ApiError(422, "invalid_request", "max_idle_minutes must not be below idle_minutes")
    try:
        floor = to_minor(min_value, code) if code else 0
    except ValueError as exc:
        raise ApiError(422, "invalid_request", str(exc)) from exc
    with db.read(_engine(request)) as conn:
        carts = service.abandoned_carts(
            conn=conn,
            idle_minutes=idle_minutes,
            max_idle_minutes=max_idle_minutes,
            now=utcnow(),
            min_value_minor=floor,
            currency=code,
            limit=limit,
            after_id=after,
        )
    return {"carts": carts, "next_after": carts[-1]["cart_id"] if len(carts) == limit else None}


@router.get("/carts/{cart_id:int}")
def get_cart(cart_id: int, request: Request, _: Principal = Depends(readers)) -> dict[str, Any]:
    with db.read(_engine(request)) as conn:
        return _cart(conn, cart_id)


@router.get("/carts/{cart_id:int}/changes")
def get_cart_changes(
    cart_id: int, request: Request, limit: int = Query(200, ge=1, le=1000), _: Principal = Depends(readers)
) -> dict[str, Any]:
    with db.read(_engine(request)) as conn:
        _cart(conn, cart_id)
        return {"cart_id": cart_id, "changes": service.cart_changes(conn=conn, cart_id=cart_id, limit=limit)}


@router.post("/carts/{cart_id:int}/items")
def add_item(cart_id: int, body: CartItemIn, request: Request, principal: Principal = Depends(staff)) -> dict[str, Any]:
    with _errors(), db.write(_engine(request)) as conn:
        target = service.add_to_cart(
            conn=conn,
            cart_id=cart_id,
            sku=body.sku,
            quantity=body.quantity,
            channel=body.channel,
            device=body.device,
            actor=_actor(principal),
            now=utcnow(),
        )
        return _cart(conn, target)


@router.put("/carts/{cart_id:int}/items/{sku}")
def set_item(
    cart_id: int, sku: str, body: CartQuantityIn, request: Request, principal: Principal = Depends(staff)
) -> dict[str, Any]:
    with _errors(), db.write(_engine(request)) as conn:
        target = service.set_cart_quantity(
            conn=conn,
            cart_id=cart_id,
            sku=sku,
            quantity=body.quantity,
            channel=body.channel,
            device=body.device,
            actor=_actor(principal),
            now=utcnow(),
        )
        return _cart(conn, target)


@router.delete("/carts/{cart_id:int}/items/{sku}")
def remove_item(
    cart_id: int,
    sku: str,
    request: Request,
    channel: str = Query("web", min_length=1, max_length=32),
    device: str | None = Query(None, max_length=128),
    principal: Principal = Depends(staff),
) -> dict[str, Any]:
    """Remove a line; `?channel=&device=` name who removed it (a store or call-centre agent), as the
    add route's body does, so the timeline shows it."""
    if channel not in CHANNELS:
        raise ApiError(422, "invalid_request", f"unknown channel {channel!r}; one of {sorted(CHANNELS)}")
    with _errors(), db.write(_engine(request)) as conn:
        target = service.set_cart_quantity(
            conn=conn,
            cart_id=cart_id,
            sku=sku,
            quantity=0,
            channel=channel,
            device=device,
            actor=_actor(principal),
            now=utcnow(),
        )
        return _cart(conn, target)


@router.get("/profiles/{profile_id:int}/cart")
def profile_cart(profile_id: int, request: Request, principal: Principal = Depends(staff)) -> dict[str, Any]:
    """What a store or call-centre agent sees: the customer's one cart, merged across devices."""
    with _errors(), db.write(_engine(request)) as conn:
        cart_id = service.resolve_cart(
            conn=conn,
            rules=request.app.state.identity_rules,
            profile_id=profile_id,
            currency=_cfg().default_currency,
            now=utcnow(),
            actor=_actor(principal),
            create=False,
        )
        if cart_id is None:
            raise ApiError(404, "not_found", f"profile {profile_id} has no active cart")
        return _cart(conn, cart_id)


# ------------------------------------------------------------------ checkout


@router.post("/checkouts", status_code=201)
def start_checkout(body: CheckoutIn, request: Request, _: Principal = Depends(staff)) -> dict[str, Any]:
    engine = _engine(request)
    _maybe_sweep(engine)
    with _errors(), db.write(engine) as conn:
        return service.start_checkout(
            conn=conn,
            cart_id=body.cart_id,
            fulfilment=body.fulfilment,
            pickup_location=body.pickup_location,
            ship_address=body.ship_address,
            channel=body.channel,
            now=utcnow(),
            ttl_seconds=_cfg().checkout_ttl_seconds,
        )


@router.get("/checkouts/{checkout_id:int}")
def get_checkout(checkout_id: int, request: Request, _: Principal = Depends(readers)) -> dict[str, Any]:
    with db.read(_engine(request)) as conn:
        co = service.get_checkout(conn=conn, checkout_id=checkout_id, now=utcnow())
    if co is None:
        raise ApiError(404, "not_found", f"no checkout {checkout_id}")
    return co


@router.post("/checkouts/{checkout_id:int}/complete")
def complete_checkout(
    checkout_id: int,
    request: Request,
    response: Response,
    body: CompleteIn | None = None,
    idempotency_key: str | None = Header(None, max_length=128),
    principal: Principal = Depends(staff),
) -> dict[str, Any]:
    """Place the order. The same Idempotency-Key (header or body), checkout or cart never makes two orders:
    the first call answers 201, repeats answer 200 with the same order."""
    body = body or CompleteIn()
    with _errors(), db.write(_engine(request)) as conn:
        order, created = service.complete_checkout(
            conn=conn,
            checkout_id=checkout_id,
            idempotency_key=body.idempotency_key or idempotency_key,
            redeem_points=body.redeem_points,
            rules=request.app.state.identity_rules,
            config=_cfg(),
            channel=body.channel,
            actor=_actor(principal),
            now=utcnow(),
        )
    response.status_code = 201 if created else 200
    return order


@router.post("/checkouts/{checkout_id:int}/cancel")
def cancel_checkout(checkout_id: int, request: Request, _: Principal = Depends(staff)) -> dict[str, Any]:
    with _errors(), db.write(_engine(request)) as conn:
        return service.cancel_checkout(conn=conn, checkout_id=checkout_id, now=utcnow())


# ------------------------------------------------------------------ orders and returns


def _order_id(conn: Any, ref: str) -> int:
    oid = service.find_order(conn=conn, ref=ref)
    if oid is None:
        raise ApiError(404, "not_found", f"no order {ref!r}")
    return oid


@router.get("/orders/{ref}")
def get_order(ref: str, request: Request, _: Principal = Depends(readers)) -> dict[str, Any]:
    with db.read(_engine(request)) as conn:
        return service.order_view(conn=conn, order_id=_order_id(conn, ref))


@router.get("/profiles/{profile_id:int}/orders")
def profile_orders(
    profile_id: int, request: Request, limit: int = Query(100, ge=1, le=500), _: Principal = Depends(readers)
) -> dict[str, Any]:
    with _errors(), db.read(_engine(request)) as conn:
        return {"orders": service.orders_of_profile(conn=conn, profile_id=profile_id, limit=limit)}


@router.post("/orders/{ref}/status")
def set_order_status(
    ref: str, body: OrderStatusIn, request: Request, principal: Principal = Depends(staff)
) -> dict[str, Any]:
    with _errors(), db.write(_engine(request)) as conn:
        return service.transition_order(
            conn=conn,
            order_id=_order_id(conn, ref),
            status=body.status,
            actor=_actor(principal),
            location=body.location,
            now=utcnow(),
            config=_cfg(),
            channel=body.channel,
        )


@router.post("/orders/{ref}/returns")
def create_return(
    ref: str,
    body: ReturnIn,
    request: Request,
    response: Response,
    idempotency_key: str | None = Header(None, max_length=128),
    principal: Principal = Depends(staff),
) -> dict[str, Any]:
    """Record a return (201; a repeat with the same idempotency key answers 200 with the same return).
    The key is required: a retried return must never restock or refund twice."""
    key = body.idempotency_key or (idempotency_key.strip() if idempotency_key else None)
    if not key:
        raise ApiError(
            400, "idempotency_key_required", "a return needs an idempotency_key (body) or Idempotency-Key header"
        )
    with _errors(), db.write(_engine(request)) as conn:
        order_id = _order_id(conn, ref)
        currency = service.order_view(conn=conn, order_id=order_id)["currency"]
        try:
            refund = None if body.refund is None else to_minor(body.refund, currency)
        except ValueError as exc:
            raise ApiError(422, "invalid_refund", str(exc)) from exc
        result, created = service.create_return(
            conn=conn,
            order_id=order_id,
            location=body.location,
            items=[i.model_dump() for i in body.items],
            reason=body.reason,
            refund_minor=refund,
            idempotency_key=key,
            channel=body.channel or ("other" if body.mode == "mail" else "store"),
            actor=_actor(principal),
            now=utcnow(),
            config=_cfg(),
            mode=body.mode,
        )
    response.status_code = 201 if created else 200
    return result


# ------------------------------------------------------------------ loyalty


@router.get("/profiles/{profile_id:int}/loyalty")
def loyalty(
    profile_id: int, request: Request, history: int = Query(50, ge=0, le=500), _: Principal = Depends(readers)
) -> dict[str, Any]:
    with _errors(), db.read(_engine(request)) as conn:
        return service.loyalty_view(conn=conn, profile_id=profile_id, config=_cfg(), history=history)


@router.post("/profiles/{profile_id:int}/loyalty/redeem")
def redeem(profile_id: int, body: RedeemIn, request: Request, principal: Principal = Depends(staff)) -> dict[str, Any]:
    with _errors(), db.write(_engine(request)) as conn:
        return service.redeem_loyalty(
            conn=conn,
            profile_id=profile_id,
            points=body.points,
            dedupe_key=f"redeem:key:{body.idempotency_key}" if body.idempotency_key else None,
            order_id=None,
            channel=body.channel,
            actor=_actor(principal),
            now=utcnow(),
            config=_cfg(),
        )
