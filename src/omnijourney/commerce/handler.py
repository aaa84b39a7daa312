"""The commerce handler of the processing stage: events from shops and POS -> orders, carts, stock.

- `Order Completed` from any source is recorded once per `order_id` as an order with its origin
  (source, channel, store), and earns loyalty points once per order.
- `Product Added` / `Product Removed` with a `cart_id` update the cart, once per event, so a shop
  that only sends events still gets cart continuity.
- `Inventory Updated` (`sku`, `location_id` or `store_id`, `on_hand` or `delta`, `update_id`) applies
  a stock update, once per update id; one that would oversell is recorded as rejected.

It runs after identity in the same transaction and uses the member each event was resolved to.
A bad event never stops the stage: each is applied in a savepoint and skipped (logged) when refused.
Work is done in lock order (carts, then stock in (sku, location) order, then orders and loyalty),
the same order the API takes, so the stage does not deadlock with checkouts.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Row
from sqlalchemy.exc import IntegrityError

from omnijourney.commerce import service
from omnijourney.commerce.config import CommerceConfig, is_currency, load_commerce_config, to_minor_rounded
from omnijourney.commerce.service import CommerceError
from omnijourney.identity import service as identity

log = logging.getLogger(__name__)

CART_EVENTS = {"Product Added", "Product Removed"}
STOCK_EVENT = "Inventory Updated"


def _props(e: Row[Any]) -> dict[str, Any]:
    payload = e.payload if isinstance(e.payload, dict) else {}
    props = payload.get("properties")
    return props if isinstance(props, dict) else {}


def _int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def _sku(props: dict[str, Any]) -> str | None:
    for key in ("sku", "product_id"):
        value = props.get(key)
        if isinstance(value, str | int) and not isinstance(value, bool) and str(value).strip():
            return str(value).strip()[:64]
    return None


class CommerceHandler:
    name = "commerce"

    def __init__(self, config: CommerceConfig | None = None) -> None:
        self.config = config or load_commerce_config()

    def apply(self, conn: Connection, events: Sequence[Row[Any]], ctx: dict[str, Any]) -> None:
        members: dict[int, int] = ctx.get("event_member", {})
        carts = [e for e in events if e.type == "track" and e.event in CART_EVENTS and e.cart_id]
        stock = [e for e in events if e.type == "track" and e.event == STOCK_EVENT]
        orders = [e for e in events if e.type == "track" and e.event == "Order Completed" and e.order_id]
        if not (carts or stock or orders):
            return
        roots: dict[int, int | None] = {}

        def root_of(e: Row[Any]) -> int | None:
            member = members.get(e.id)
            if member is None:
                return None
            if member not in roots:
                roots[member] = identity.canonical_id(conn=conn, profile_id=member)
            return roots[member]

        for e in carts:
            self._guarded(conn, e, self._cart_event, root_of(e))
        for e in sorted(stock, key=lambda e: (str(_props(e).get("sku")), str(self._location(e)), e.id)):
            self._guarded(conn, e, self._stock_event, None)
        for e in orders:
            self._guarded(conn, e, self._order_event, root_of(e))

    def _guarded(self, conn: Connection, e: Row[Any], fn: Any, root: int | None) -> None:
        try:
            with conn.begin_nested():
                fn(conn, e, root)
        except (CommerceError, IntegrityError, ValueError) as exc:
            log.info("commerce: event %s (%s) not applied: %s", e.id, e.event, exc)

    @staticmethod
    def _location(e: Row[Any]) -> str | None:
        props = _props(e)
        value = props.get("location_id") or props.get("store_id")
        return str(value)[:64] if isinstance(value, str | int) and not isinstance(value, bool) else None

    def _cart_event(self, conn: Connection, e: Row[Any], root: int | None) -> None:
        props = _props(e)
        sku = _sku(props)
        if sku is None:
            return
        at: datetime = e.timestamp
        cart_id = conn.execute(
            sa.select(service.CARTS.c.id).where(service.CARTS.c.external_id == e.cart_id)
        ).scalar_one_or_none()
        if cart_id is None:
            cart_id = service.resolve_cart(
                conn=conn,
                rules=None,
                profile_id=root,
                anonymous_id=None if root is not None else e.anonymous_id,
                currency=self._currency(e),
                now=at,
            )
            if cart_id is None:
                return
            conn.execute(
                sa.update(service.CARTS)
                .where(service.CARTS.c.id == cart_id, service.CARTS.c.external_id.is_(None))
                .values(external_id=e.cart_id)
            )
        status = conn.execute(sa.select(service.CARTS.c.status).where(service.CARTS.c.id == cart_id)).scalar_one()
        if status == "checked_out":
            return
        payload = e.payload if isinstance(e.payload, dict) else {}
        device = service._device(payload)
        quantity = _int(props.get("quantity"))
        actor = f"source:{e.source_id}"
        if e.event == "Product Added":
            service.add_to_cart(
                conn=conn,
                cart_id=cart_id,
                sku=sku,
                quantity=quantity if quantity and quantity > 0 else 1,
                channel=e.channel,
                device=device,
                actor=actor,
                now=at,
                event_id=e.id,
            )
        else:
            service.set_cart_quantity(
                conn=conn,
                cart_id=cart_id,
                sku=sku,
                quantity=quantity if quantity and quantity > 0 else service.MAX_LINE_QUANTITY,
                channel=e.channel,
                device=device,
                actor=actor,
                now=at,
                event_id=e.id,
                relative=True,
            )

    def _currency(self, e: Row[Any]) -> str:
        return e.currency if e.currency and is_currency(e.currency) else self.config.default_currency

    def _stock_event(self, conn: Connection, e: Row[Any], _root: int | None) -> None:
        props = _props(e)
        sku, location = _sku(props), self._location(e)
        on_hand, delta = _int(props.get("on_hand")), _int(props.get("delta"))
        if sku is None or location is None or (on_hand is None) == (delta is None):
            raise CommerceError(422, "invalid_event", "needs sku, location_id and exactly one of on_hand / delta")
        if on_hand is not None and not 0 <= on_hand <= service.MAX_STOCK:
            raise CommerceError(422, "invalid_event", "on_hand out of range")
        if delta is not None and abs(delta) > service.MAX_STOCK:
            raise CommerceError(422, "invalid_event", "delta out of range")
        external = props.get("update_id")
        service.update_stock(
            conn=conn,
            external_id=str(external)[:128] if external not in (None, "") else f"event:{e.id}",
            sku=sku,
            location=location,
            mode="absolute" if on_hand is not None else "delta",
            quantity=on_hand if on_hand is not None else int(delta or 0),
            now=e.timestamp,
            event_id=e.id,
            record_rejection=True,
        )

    def _order_event(self, conn: Connection, e: Row[Any], root: int | None) -> None:
        props = _props(e)
        currency = self._currency(e)
        lines = []
        for p in props.get("products") or []:
            if not isinstance(p, dict):
                continue
            sku = _sku(p)
            if sku is None:
                continue
            qty = _int(p.get("quantity"))
            price = p.get("price")
            price_minor = (
                to_minor_rounded(price, currency)
                if isinstance(price, int | float) and not isinstance(price, bool) and price >= 0
                else 0
            )
            name = p.get("name") if isinstance(p.get("name"), str) else None
            lines.append(
                {
                    "sku": sku,
                    "name": name[:300] if name else None,
                    "quantity": qty if qty and qty > 0 else 1,
                    "unit_price_minor": price_minor,
                }
            )
        if e.revenue is not None and e.revenue >= 0:
            total = to_minor_rounded(e.revenue, currency)
        else:
            total = sum(line["quantity"] * line["unit_price_minor"] for line in lines)
        store = props.get("store_id")
        service.record_external_order(
            conn=conn,
            order_ref=str(e.order_id)[:128],
            profile_id=root,
            anonymous_id=e.anonymous_id,
            source_id=e.source_id,
            channel=e.channel,
            store_id=str(store)[:64] if isinstance(store, str | int) and not isinstance(store, bool) else None,
            currency=currency,
            total_minor=total,
            lines=lines,
            event_id=e.id,
            placed_at=e.timestamp,
            config=self.config,
        )

    def reset(self, conn: Connection) -> None:
        """Nothing is deleted, on purpose (docs/COMMERCE.md, "Rebuilds").

        Orders recorded from events become primary data as soon as staff act on them (returns,
        refunds, loyalty), and carts are live operational state shared with the API. Every event
        application is idempotent instead: orders by order reference, cart changes and stock
        updates by event / update id, loyalty credits by order, so replaying the log after a
        reset re-derives nothing twice.
        """
