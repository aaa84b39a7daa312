"""The commerce handler of the processing stage: events from shops and POS -> orders, carts, stock.

- `Order Completed` from any source is recorded once per `order_id` as an order with its origin
  (source, channel, store), and earns loyalty points once per order.
- `Product Added` / `Product Removed` with a `cart_id` update the cart, once per event, so a shop
  that only sends events still gets cart continuity.
- `Inventory Updated` (`sku`, `location_id` or `store_id`, `on_hand` or `delta`, `update_id`) applies
  a stock update, once per update id; one that would oversell is recorded as rejected.

It runs after identity in the same transaction and uses the member each event was resolved to
(the survivors of all members are read in one query).

Carts and orders are set-based per batch, with the rules of the per-call service functions:
the batch's carts are read and locked in id order with their lines (`service.CartBatch`), the
cart events are applied to them in memory in log order (`resolve_cart`, `add_to_cart`, relative
`set_cart_quantity`), and the result is written back in bulk; orders whose reference is known are
skipped after one query and the new ones written in bulk (`service.record_external_orders`).
A bad event never stops the stage: a refused cart event changes nothing and is skipped (logged),
and each stock update, the one path that can fail in the database, runs in its own savepoint.
Should the set-based path meet a concurrent change it did not see (PostgreSQL; `BatchConflict` or
a constraint), its work is rolled back and the batch's events are applied one by one, each in a
savepoint, as before.
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

from omnijourney.commerce import events as outbox
from omnijourney.commerce import service
from omnijourney.commerce.config import CommerceConfig, is_currency, load_commerce_config, to_minor_rounded
from omnijourney.commerce.service import CommerceError
from omnijourney.identity import service as identity

log = logging.getLogger(__name__)

CART_EVENTS = {"Product Added", "Product Removed"}
#: the shop's view of its cart (products[]): merged into ours by the merge rule
SNAPSHOT_EVENT = "Cart Viewed"
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


def _roots(conn: Connection, members: dict[int, int], events: Sequence[Row[Any]]) -> dict[int, int | None]:
    """Event id -> the surviving profile of the member it was resolved to (one query per 500 members)."""
    wanted = sorted({m for e in events if (m := members.get(e.id)) is not None})
    survivor: dict[int, int] = {}
    profiles = identity.PROFILES
    for start in range(0, len(wanted), service.CHUNK):
        chunk = wanted[start : start + service.CHUNK]
        survivor.update(
            conn.execute(sa.select(profiles.c.id, profiles.c.canonical_id).where(profiles.c.id.in_(chunk))).all()
        )
    return {e.id: survivor.get(members[e.id]) if e.id in members else None for e in events}


class CommerceHandler:
    name = "commerce"

    def __init__(self, config: CommerceConfig | None = None) -> None:
        self.config = config or load_commerce_config()

    def apply(self, conn: Connection, events: Sequence[Row[Any]], ctx: dict[str, Any]) -> None:
        members: dict[int, int] = ctx.get("event_member", {})
        carts: list[Row[Any]] = []
        stock: list[Row[Any]] = []
        orders: list[Row[Any]] = []
        # our own changes, appended by the commerce API (events.py): applied already, never twice
        internal = outbox.internal_source_id(conn, create=False)
        for e in events:
            if e.type != "track" or e.source_id == internal:
                continue
            name = e.event
            if name in CART_EVENTS or name == SNAPSHOT_EVENT:
                if e.cart_id:
                    carts.append(e)
            elif name == STOCK_EVENT:
                stock.append(e)
            elif name == "Order Completed" and e.order_id:
                orders.append(e)
        if not (carts or stock or orders):
            return
        roots = _roots(conn, members, [*carts, *orders])
        run: list[Row[Any]] = []  # cart events between two snapshots, set-based; snapshots in log order
        for e in carts:
            if e.event != SNAPSHOT_EVENT:
                run.append(e)
                continue
            if run:
                self._apply_carts(conn, run, roots)
                run = []
            self._guarded(conn, e, self._snapshot_event, roots.get(e.id))
        if run:
            self._apply_carts(conn, run, roots)
        for e in sorted(stock, key=lambda e: (str(_props(e).get("sku")), str(self._location(e)), e.id)):
            self._guarded(conn, e, self._stock_event, None)
        if orders:
            self._apply_orders(conn, orders, roots)

    def _guarded(self, conn: Connection, e: Row[Any], fn: Any, root: int | None) -> None:
        try:
            with conn.begin_nested():
                fn(conn, e, root)
        except (CommerceError, IntegrityError, ValueError) as exc:
            log.info("commerce: event %s (%s) not applied: %s", e.id, e.event, exc)

    # ------------------------------------------------------------------ carts, set-based

    def _apply_carts(self, conn: Connection, events: list[Row[Any]], roots: dict[int, int | None]) -> None:
        items: list[tuple[Row[Any], str, int]] = []
        for e in events:
            props = _props(e)
            sku = _sku(props)
            if sku is None:
                continue
            quantity = _int(props.get("quantity"))
            if e.event == "Product Added":
                quantity = quantity if quantity and quantity > 0 else 1
            else:
                quantity = quantity if quantity and quantity > 0 else service.MAX_LINE_QUANTITY
            if quantity > service.MAX_LINE_QUANTITY:  # refused by add_to_cart / set_cart_quantity, whatever the cart
                log.info("commerce: event %s (%s) not applied: quantity out of range", e.id, e.event)
                continue
            items.append((e, sku, quantity))
        # adding needs an active SKU (add_to_cart refuses others before changing anything)
        active = service.known_skus(
            conn=conn, skus={sku for e, sku, _ in items if e.event == "Product Added"}, active_only=True
        )
        for e, sku, _ in items:
            if e.event == "Product Added" and sku not in active:
                log.info("commerce: event %s (%s) not applied: unknown or inactive SKU %s", e.id, e.event, sku)
        items = [i for i in items if i[0].event != "Product Added" or i[1] in active]
        if not items:
            return
        try:
            with conn.begin_nested():
                batch = service.CartBatch(conn)
                batch.load(
                    (e.cart_id, roots.get(e.id), None if roots.get(e.id) is not None else e.anonymous_id)
                    for e, _, _ in items
                )
                applied = batch.applied_events(e.id for e, _, _ in items)
                for e, sku, quantity in items:
                    try:
                        self._batch_cart_event(batch, e, sku, quantity, roots.get(e.id), e.id in applied)
                    except CommerceError as exc:
                        log.info("commerce: event %s (%s) not applied: %s", e.id, e.event, exc)
                batch.flush()
        except (service.BatchConflict, IntegrityError) as exc:
            log.info("commerce: %d cart events applied one by one: %s", len(events), exc)
            for e in events:
                self._guarded(conn, e, self._cart_event, roots.get(e.id))

    def _batch_cart_event(
        self, batch: service.CartBatch, e: Row[Any], sku: str, quantity: int, root: int | None, applied: bool
    ) -> None:
        """`_cart_event` on the batch's carts; raises (changing nothing) where that would be refused."""
        cart = batch.by_external(e.cart_id)
        plan = None
        if cart is None:
            plan = batch.plan(root=root, anonymous_id=None if root is not None else e.anonymous_id)
        elif cart.status == "checked_out":
            return
        else:
            cart = batch.follow(cart)
        added = e.event == "Product Added"
        if added and not applied:  # a line that would overflow refuses the event, resolution included
            have = plan.quantity(sku) if plan is not None else cart.quantity(sku)  # type: ignore[union-attr]
            if have is not None and have + quantity > service.MAX_LINE_QUANTITY:
                raise CommerceError(
                    422, "invalid_quantity", f"a cart line holds at most {service.MAX_LINE_QUANTITY} units"
                )
        at: datetime = e.timestamp
        if plan is not None:
            cart = batch.resolve(plan, currency=self._currency(e), now=at)
            batch.set_external(cart, e.cart_id)
        assert cart is not None
        if applied:
            return
        payload = e.payload if isinstance(e.payload, dict) else {}
        change = {
            "sku": sku,
            "quantity": quantity,
            "channel": e.channel,
            "device": service._device(payload),
            "actor": f"source:{e.source_id}",
            "now": at,
            "event_id": e.id,
        }
        if added:
            batch.add(cart, **change)
        else:
            batch.remove(cart, **change)

    # ------------------------------------------------------------------ orders, set-based

    def _apply_orders(self, conn: Connection, events: list[Row[Any]], roots: dict[int, int | None]) -> None:
        orders = []
        for e in events:
            try:
                orders.append(self._order_fields(e, roots.get(e.id)))
            except (CommerceError, IntegrityError, ValueError) as exc:
                log.info("commerce: event %s (%s) not applied: %s", e.id, e.event, exc)
        if not orders:
            return
        try:
            with conn.begin_nested():
                service.record_external_orders(conn=conn, orders=orders, config=self.config)
        except IntegrityError as exc:
            log.info("commerce: %d orders recorded one by one: %s", len(events), exc)
            for e in events:
                self._guarded(conn, e, self._order_event, roots.get(e.id))

    @staticmethod
    def _location(e: Row[Any]) -> str | None:
        props = _props(e)
        value = props.get("location_id") or props.get("store_id")
        return str(value)[:64] if isinstance(value, str | int) and not isinstance(value, bool) else None

    # ------------------------------------------------------------------ one event at a time (the fallback)

    def _snapshot_event(self, conn: Connection, e: Row[Any], root: int | None) -> None:
        """`Cart Viewed` with products: the shop's cart merged into ours (`service.sync_cart_snapshot`)."""
        lines = []
        for p in _props(e).get("products") or []:
            if isinstance(p, dict) and (sku := _sku(p)) is not None:
                quantity = _int(p.get("quantity"))
                lines.append((sku, quantity if quantity and quantity > 0 else 1))
        if not lines:
            return
        cart_id = self._event_cart(conn, e, root)
        if cart_id is None:
            return
        payload = e.payload if isinstance(e.payload, dict) else {}
        service.sync_cart_snapshot(
            conn=conn,
            cart_id=cart_id,
            lines=lines,
            channel=e.channel,
            device=service._device(payload),
            actor=f"source:{e.source_id}",
            now=e.timestamp,
            event_id=e.id,
        )

    def _event_cart(self, conn: Connection, e: Row[Any], root: int | None) -> int | None:
        """The cart an event's `cart_id` names (or the owner's active cart, which takes that id);
        None when there is no owner or the cart was checked out."""
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
                return None
            conn.execute(
                sa.update(service.CARTS)
                .where(service.CARTS.c.id == cart_id, service.CARTS.c.external_id.is_(None))
                .values(external_id=e.cart_id)
            )
        status = conn.execute(sa.select(service.CARTS.c.status).where(service.CARTS.c.id == cart_id)).scalar_one()
        return None if status == "checked_out" else int(cart_id)

    def _cart_event(self, conn: Connection, e: Row[Any], root: int | None) -> None:
        """One cart event through the API-grade functions (the fallback of `_apply_carts`)."""
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
        """One order event through `record_external_order` (the fallback of `_apply_orders`)."""
        service.record_external_order(conn=conn, **self._order_fields(e, root), config=self.config)

    def _order_fields(self, e: Row[Any], root: int | None) -> dict[str, Any]:
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
        return {
            "order_ref": str(e.order_id)[:128],
            "profile_id": root,
            "anonymous_id": e.anonymous_id,
            "source_id": e.source_id,
            "channel": e.channel,
            "store_id": str(store)[:64] if isinstance(store, str | int) and not isinstance(store, bool) else None,
            "currency": currency,
            "total_minor": total,
            "lines": lines,
            "event_id": e.id,
            "placed_at": e.timestamp,
        }

    def reset(self, conn: Connection) -> None:
        """Nothing is deleted, on purpose (docs/COMMERCE.md, "Rebuilds").

        Orders recorded from events become primary data as soon as staff act on them (returns,
        refunds, loyalty), and carts are live operational state shared with the API. Every event
        application is idempotent instead: orders by order reference, cart changes and stock
        updates by event / update id, loyalty credits by order, so replaying the log after a
        reset re-derives nothing twice.
        """
