"""Commerce continuity: catalog, locations, stock, reservations, carts, checkouts, orders, returns, loyalty.

Invariants live in the database, not only in code: stock can never go negative or be
over-committed (CHECK constraints), one open checkout per cart and one active cart per
owner (partial unique indexes), idempotency keys are UNIQUE (stock updates by external id,
orders by idempotency key, by cart and by order reference, loyalty credits per order).

Money is stored as integer minor units (haléře, cents) with its ISO 4217 currency;
quantities are integers. Profiles are referenced by the surviving id at write time and
read across every member of the cluster, as the profile tables do.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from omnijourney.store.base import Base, BigIntId, JSONType, UTCDateTime

RELATION_KINDS = ("accessory", "alternative", "bundle_part")
LOCATION_KINDS = ("warehouse", "store", "locker")
PICKUP_SOURCING = ("store_only", "network")
CART_STATUSES = ("active", "merged", "checked_out")
CHECKOUT_STATUSES = ("open", "completed", "cancelled", "expired")
RESERVATION_STATUSES = ("active", "allocated", "released", "expired")
FULFILMENTS = ("ship", "click_and_collect", "external")
ORDER_STATUSES = (
    "placed",
    "paid",
    "ready_for_pickup",
    "picked_up",
    "shipped",
    "delivered",
    "cancelled",
    "completed",
    "partially_returned",
    "returned",
)
LOYALTY_KINDS = ("earn", "redeem", "reverse", "adjust")


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


class Product(Base):
    """A sellable variant (the SKU); `product_id` groups the variants of one product."""

    __tablename__ = "commerce_products"

    sku: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    product_id: Mapped[str] = mapped_column(sa.String(64), index=True)
    name: Mapped[str] = mapped_column(sa.String(300))
    category: Mapped[str | None] = mapped_column(sa.String(200), nullable=True, index=True)
    brand: Mapped[str | None] = mapped_column(sa.String(200), nullable=True)
    attributes: Mapped[dict[str, Any]] = mapped_column(JSONType)
    active: Mapped[bool] = mapped_column(sa.Boolean, default=True)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)


class Price(Base):
    __tablename__ = "commerce_prices"

    sku: Mapped[str] = mapped_column(sa.ForeignKey("commerce_products.sku", ondelete="CASCADE"), primary_key=True)
    currency: Mapped[str] = mapped_column(sa.String(3), primary_key=True)
    amount_minor: Mapped[int] = mapped_column(sa.BigInteger)

    __table_args__ = (sa.CheckConstraint("amount_minor >= 0", name="amount_non_negative"),)


class RelatedProduct(Base):
    __tablename__ = "commerce_related_products"

    sku: Mapped[str] = mapped_column(sa.ForeignKey("commerce_products.sku", ondelete="CASCADE"), primary_key=True)
    related_sku: Mapped[str] = mapped_column(
        sa.ForeignKey("commerce_products.sku", ondelete="CASCADE"), primary_key=True
    )
    kind: Mapped[str] = mapped_column(sa.String(16), primary_key=True)
    quantity: Mapped[int] = mapped_column(sa.Integer, default=1)

    __table_args__ = (
        sa.CheckConstraint(_in("kind", RELATION_KINDS), name="kind_known"),
        sa.CheckConstraint("sku <> related_sku", name="not_self"),
        sa.CheckConstraint("quantity >= 1", name="quantity_positive"),
    )


class Location(Base):
    """A warehouse, store or parcel locker; `code` is what POS events name as store_id."""

    __tablename__ = "commerce_locations"

    code: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(200))
    kind: Mapped[str] = mapped_column(sa.String(16))
    address: Mapped[dict[str, Any]] = mapped_column(JSONType)
    latitude: Mapped[float | None] = mapped_column(sa.Float, nullable=True)
    longitude: Mapped[float | None] = mapped_column(sa.Float, nullable=True)
    #: {"mon": [["09:00", "20:00"]], ...}
    opening_hours: Mapped[dict[str, Any]] = mapped_column(JSONType)
    ships: Mapped[bool] = mapped_column(sa.Boolean, default=False)
    pickup: Mapped[bool] = mapped_column(sa.Boolean, default=False)
    #: click & collect sourcing: only this location's stock, or any location (with a transfer)
    pickup_sourcing: Mapped[str] = mapped_column(sa.String(16), default="store_only")
    channels: Mapped[list[str]] = mapped_column(JSONType)
    active: Mapped[bool] = mapped_column(sa.Boolean, default=True)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)

    __table_args__ = (
        sa.CheckConstraint(_in("kind", LOCATION_KINDS), name="kind_known"),
        sa.CheckConstraint(_in("pickup_sourcing", PICKUP_SOURCING), name="sourcing_known"),
        sa.CheckConstraint("latitude IS NULL OR (latitude >= -90 AND latitude <= 90)", name="latitude_range"),
        sa.CheckConstraint("longitude IS NULL OR (longitude >= -180 AND longitude <= 180)", name="longitude_range"),
    )


class Stock(Base):
    """Units of a SKU at a location. available = on_hand - reserved - allocated, never negative."""

    __tablename__ = "commerce_stock"

    sku: Mapped[str] = mapped_column(sa.ForeignKey("commerce_products.sku"), primary_key=True)
    location: Mapped[str] = mapped_column(sa.ForeignKey("commerce_locations.code"), primary_key=True)
    on_hand: Mapped[int] = mapped_column(sa.Integer, default=0)
    #: held for open checkouts and in-store holds
    reserved: Mapped[int] = mapped_column(sa.Integer, default=0)
    #: promised to placed orders, not yet shipped or picked up
    allocated: Mapped[int] = mapped_column(sa.Integer, default=0)
    #: returned damaged: recorded apart, never sellable
    damaged: Mapped[int] = mapped_column(sa.Integer, default=0)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)

    __table_args__ = (
        sa.CheckConstraint("on_hand >= 0", name="on_hand_non_negative"),
        sa.CheckConstraint("reserved >= 0", name="reserved_non_negative"),
        sa.CheckConstraint("allocated >= 0", name="allocated_non_negative"),
        sa.CheckConstraint("damaged >= 0", name="damaged_non_negative"),
        sa.CheckConstraint("on_hand - reserved - allocated >= 0", name="available_non_negative"),
        sa.Index("ix_commerce_stock_location_sku", "location", "sku"),
    )


class StockUpdate(Base):
    """An applied (or refused) stock update from POS/ERP, unique by its external id."""

    __tablename__ = "commerce_stock_updates"

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True, autoincrement=True)
    external_id: Mapped[str] = mapped_column(sa.String(128), unique=True)
    sku: Mapped[str] = mapped_column(sa.String(64))
    location: Mapped[str] = mapped_column(sa.String(64))
    mode: Mapped[str] = mapped_column(sa.String(8))
    quantity: Mapped[int] = mapped_column(sa.Integer)
    status: Mapped[str] = mapped_column(sa.String(16))
    on_hand_after: Mapped[int | None] = mapped_column(sa.Integer, nullable=True)
    detail: Mapped[str | None] = mapped_column(sa.String(300), nullable=True)
    event_id: Mapped[int | None] = mapped_column(sa.BigInteger, nullable=True)
    applied_at: Mapped[datetime] = mapped_column(UTCDateTime)

    __table_args__ = (
        sa.CheckConstraint("mode IN ('absolute', 'delta')", name="mode_known"),
        sa.CheckConstraint("status IN ('applied', 'rejected')", name="status_known"),
    )


class Cart(Base):
    __tablename__ = "commerce_carts"

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True, autoincrement=True)
    #: the surviving profile when the cart was bound to it; reads cover every member of the cluster
    profile_id: Mapped[int | None] = mapped_column(sa.BigInteger, nullable=True, index=True)
    #: the device's anonymous id that started the cart
    anonymous_id: Mapped[str | None] = mapped_column(sa.String(255), nullable=True, index=True)
    #: the shop's own cart id (Segment `cart_id`)
    external_id: Mapped[str | None] = mapped_column(sa.String(128), nullable=True, unique=True)
    status: Mapped[str] = mapped_column(sa.String(16), default="active")
    currency: Mapped[str] = mapped_column(sa.String(3))
    merged_into: Mapped[int | None] = mapped_column(sa.BigInteger, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    #: last change (abandoned-cart signal) and value then, in minor units of `currency`
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    value_minor: Mapped[int] = mapped_column(sa.BigInteger, default=0)

    __table_args__ = (
        sa.CheckConstraint(_in("status", CART_STATUSES), name="status_known"),
        sa.CheckConstraint("profile_id IS NOT NULL OR anonymous_id IS NOT NULL", name="has_owner"),
        sa.Index(
            "uq_commerce_carts_active_profile",
            "profile_id",
            unique=True,
            sqlite_where=sa.text("status = 'active' AND profile_id IS NOT NULL"),
            postgresql_where=sa.text("status = 'active' AND profile_id IS NOT NULL"),
        ),
        sa.Index(
            "uq_commerce_carts_active_anonymous",
            "anonymous_id",
            unique=True,
            sqlite_where=sa.text("status = 'active' AND profile_id IS NULL"),
            postgresql_where=sa.text("status = 'active' AND profile_id IS NULL"),
        ),
    )


class CartLine(Base):
    __tablename__ = "commerce_cart_lines"

    cart_id: Mapped[int] = mapped_column(sa.ForeignKey("commerce_carts.id", ondelete="CASCADE"), primary_key=True)
    sku: Mapped[str] = mapped_column(sa.ForeignKey("commerce_products.sku"), primary_key=True)
    quantity: Mapped[int] = mapped_column(sa.Integer)
    #: who added the line first: channel and device survive merges
    channel: Mapped[str] = mapped_column(sa.String(32))
    device: Mapped[str | None] = mapped_column(sa.String(128), nullable=True)
    added_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)

    __table_args__ = (sa.CheckConstraint("quantity >= 1 AND quantity <= 999", name="quantity_range"),)


class CartChange(Base):
    """Every change to a cart, by whom and through which channel; events applied are unique by event id."""

    __tablename__ = "commerce_cart_changes"

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True, autoincrement=True)
    cart_id: Mapped[int] = mapped_column(sa.BigInteger, index=True)
    action: Mapped[str] = mapped_column(sa.String(16))
    sku: Mapped[str | None] = mapped_column(sa.String(64), nullable=True)
    quantity: Mapped[int | None] = mapped_column(sa.Integer, nullable=True)
    channel: Mapped[str | None] = mapped_column(sa.String(32), nullable=True)
    device: Mapped[str | None] = mapped_column(sa.String(128), nullable=True)
    actor: Mapped[str | None] = mapped_column(sa.String(100), nullable=True)
    event_id: Mapped[int | None] = mapped_column(sa.BigInteger, nullable=True, unique=True)
    detail: Mapped[dict[str, Any]] = mapped_column(JSONType)
    at: Mapped[datetime] = mapped_column(UTCDateTime)


class Checkout(Base):
    __tablename__ = "commerce_checkouts"

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True, autoincrement=True)
    cart_id: Mapped[int] = mapped_column(sa.ForeignKey("commerce_carts.id"), index=True)
    status: Mapped[str] = mapped_column(sa.String(16))
    fulfilment: Mapped[str] = mapped_column(sa.String(24))
    pickup_location: Mapped[str | None] = mapped_column(sa.String(64), nullable=True)
    ship_address: Mapped[dict[str, Any] | None] = mapped_column(JSONType, nullable=True)
    currency: Mapped[str] = mapped_column(sa.String(3))
    total_minor: Mapped[int] = mapped_column(sa.BigInteger)
    channel: Mapped[str] = mapped_column(sa.String(32))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    order_id: Mapped[int | None] = mapped_column(sa.BigInteger, nullable=True)

    __table_args__ = (
        sa.CheckConstraint(_in("status", CHECKOUT_STATUSES), name="status_known"),
        sa.CheckConstraint("fulfilment IN ('ship', 'click_and_collect')", name="fulfilment_known"),
        sa.Index(
            "uq_commerce_checkouts_open_cart",
            "cart_id",
            unique=True,
            sqlite_where=sa.text("status = 'open'"),
            postgresql_where=sa.text("status = 'open'"),
        ),
    )


class Reservation(Base):
    """Units held at a location for a checkout (or an in-store hold) until `expires_at`."""

    __tablename__ = "commerce_reservations"

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True, autoincrement=True)
    checkout_id: Mapped[int | None] = mapped_column(sa.BigInteger, nullable=True, index=True)
    reference: Mapped[str | None] = mapped_column(sa.String(128), nullable=True)
    sku: Mapped[str] = mapped_column(sa.String(64))
    location: Mapped[str] = mapped_column(sa.String(64))
    quantity: Mapped[int] = mapped_column(sa.Integer)
    status: Mapped[str] = mapped_column(sa.String(16))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)

    __table_args__ = (
        sa.CheckConstraint(_in("status", RESERVATION_STATUSES), name="status_known"),
        sa.CheckConstraint("quantity >= 1", name="quantity_positive"),
        sa.Index("ix_commerce_reservations_active_expiry", "status", "expires_at"),
    )


class Order(Base):
    __tablename__ = "commerce_orders"

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True, autoincrement=True)
    #: the order number customers and staff see; the shop's/POS's order_id for orders placed elsewhere
    order_ref: Mapped[str] = mapped_column(sa.String(128), unique=True)
    profile_id: Mapped[int | None] = mapped_column(sa.BigInteger, nullable=True, index=True)
    anonymous_id: Mapped[str | None] = mapped_column(sa.String(255), nullable=True)
    cart_id: Mapped[int | None] = mapped_column(sa.BigInteger, nullable=True, unique=True)
    checkout_id: Mapped[int | None] = mapped_column(sa.BigInteger, nullable=True, unique=True)
    idempotency_key: Mapped[str | None] = mapped_column(sa.String(128), nullable=True, unique=True)
    #: "omnijourney" for checkouts here; "event" for orders recorded from an Order Completed event
    origin: Mapped[str] = mapped_column(sa.String(16))
    source_id: Mapped[int | None] = mapped_column(sa.Integer, nullable=True)
    channel: Mapped[str] = mapped_column(sa.String(32))
    store_id: Mapped[str | None] = mapped_column(sa.String(64), nullable=True)
    fulfilment: Mapped[str] = mapped_column(sa.String(24))
    pickup_location: Mapped[str | None] = mapped_column(sa.String(64), nullable=True)
    ship_address: Mapped[dict[str, Any] | None] = mapped_column(JSONType, nullable=True)
    status: Mapped[str] = mapped_column(sa.String(24))
    currency: Mapped[str] = mapped_column(sa.String(3))
    total_minor: Mapped[int] = mapped_column(sa.BigInteger)
    refunded_minor: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    points_redeemed: Mapped[int] = mapped_column(sa.Integer, default=0)
    event_id: Mapped[int | None] = mapped_column(sa.BigInteger, nullable=True)
    placed_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)

    __table_args__ = (
        sa.CheckConstraint(_in("status", ORDER_STATUSES), name="status_known"),
        sa.CheckConstraint(_in("fulfilment", FULFILMENTS), name="fulfilment_known"),
        sa.CheckConstraint("origin IN ('omnijourney', 'event')", name="origin_known"),
        sa.CheckConstraint("total_minor >= 0", name="total_non_negative"),
        sa.CheckConstraint("refunded_minor >= 0 AND refunded_minor <= total_minor", name="refund_bounded"),
    )


class OrderLine(Base):
    __tablename__ = "commerce_order_lines"

    order_id: Mapped[int] = mapped_column(sa.ForeignKey("commerce_orders.id", ondelete="CASCADE"), primary_key=True)
    line_no: Mapped[int] = mapped_column(sa.Integer, primary_key=True)
    sku: Mapped[str] = mapped_column(sa.String(64))
    name: Mapped[str | None] = mapped_column(sa.String(300), nullable=True)
    quantity: Mapped[int] = mapped_column(sa.Integer)
    unit_price_minor: Mapped[int] = mapped_column(sa.BigInteger)
    #: where the units were allocated (NULL for orders placed elsewhere)
    location: Mapped[str | None] = mapped_column(sa.String(64), nullable=True)
    returned_quantity: Mapped[int] = mapped_column(sa.Integer, default=0)

    __table_args__ = (
        sa.CheckConstraint("quantity >= 1", name="quantity_positive"),
        sa.CheckConstraint("unit_price_minor >= 0", name="price_non_negative"),
        sa.CheckConstraint("returned_quantity >= 0 AND returned_quantity <= quantity", name="returned_bounded"),
    )


class OrderHistory(Base):
    """Each status change of an order: who, where, when."""

    __tablename__ = "commerce_order_history"

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True, autoincrement=True)
    order_id: Mapped[int] = mapped_column(sa.BigInteger, index=True)
    status: Mapped[str] = mapped_column(sa.String(24))
    location: Mapped[str | None] = mapped_column(sa.String(64), nullable=True)
    actor: Mapped[str | None] = mapped_column(sa.String(100), nullable=True)
    detail: Mapped[dict[str, Any]] = mapped_column(JSONType)
    at: Mapped[datetime] = mapped_column(UTCDateTime)


class Return(Base):
    __tablename__ = "commerce_returns"

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True, autoincrement=True)
    order_id: Mapped[int] = mapped_column(sa.ForeignKey("commerce_orders.id"), index=True)
    location: Mapped[str] = mapped_column(sa.ForeignKey("commerce_locations.code"))
    channel: Mapped[str] = mapped_column(sa.String(32))
    reason: Mapped[str] = mapped_column(sa.String(300))
    refund_minor: Mapped[int] = mapped_column(sa.BigInteger)
    currency: Mapped[str] = mapped_column(sa.String(3))
    idempotency_key: Mapped[str | None] = mapped_column(sa.String(128), nullable=True, unique=True)
    actor: Mapped[str | None] = mapped_column(sa.String(100), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)

    __table_args__ = (sa.CheckConstraint("refund_minor >= 0", name="refund_non_negative"),)


class ReturnLine(Base):
    __tablename__ = "commerce_return_lines"

    return_id: Mapped[int] = mapped_column(sa.ForeignKey("commerce_returns.id", ondelete="CASCADE"), primary_key=True)
    line_no: Mapped[int] = mapped_column(sa.Integer, primary_key=True)
    sku: Mapped[str] = mapped_column(sa.String(64))
    quantity: Mapped[int] = mapped_column(sa.Integer)
    condition: Mapped[str] = mapped_column(sa.String(16))

    __table_args__ = (
        sa.CheckConstraint("quantity >= 1", name="quantity_positive"),
        sa.CheckConstraint("condition IN ('sellable', 'damaged')", name="condition_known"),
    )


class LoyaltyAccount(Base):
    """Points of one profile member; a cluster's balance is the sum over its members."""

    __tablename__ = "commerce_loyalty_accounts"

    profile_id: Mapped[int] = mapped_column(sa.BigInteger, primary_key=True, autoincrement=False)
    balance: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    lifetime_earned: Mapped[int] = mapped_column(sa.BigInteger, default=0)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)

    __table_args__ = (
        sa.CheckConstraint("balance >= 0", name="balance_non_negative"),
        sa.CheckConstraint("lifetime_earned >= 0", name="lifetime_non_negative"),
    )


class LoyaltyEntry(Base):
    """The points ledger. `dedupe_key` makes every credit per order (and every keyed redemption) happen once."""

    __tablename__ = "commerce_loyalty_ledger"

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True, autoincrement=True)
    profile_id: Mapped[int] = mapped_column(sa.BigInteger, index=True)
    kind: Mapped[str] = mapped_column(sa.String(16))
    points: Mapped[int] = mapped_column(sa.BigInteger)
    order_id: Mapped[int | None] = mapped_column(sa.BigInteger, nullable=True)
    dedupe_key: Mapped[str | None] = mapped_column(sa.String(160), nullable=True, unique=True)
    channel: Mapped[str | None] = mapped_column(sa.String(32), nullable=True)
    actor: Mapped[str | None] = mapped_column(sa.String(100), nullable=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime)

    __table_args__ = (sa.CheckConstraint(_in("kind", LOYALTY_KINDS), name="kind_known"),)
