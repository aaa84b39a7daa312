"""commerce: catalog, locations, stock, carts, checkouts, orders, returns, loyalty

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26 09:53:14.781277
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

import omnijourney.store.base

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "commerce_cart_changes",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("cart_id", sa.BigInteger(), nullable=False),
        sa.Column("action", sa.String(length=16), nullable=False),
        sa.Column("sku", sa.String(length=64), nullable=True),
        sa.Column("quantity", sa.Integer(), nullable=True),
        sa.Column("channel", sa.String(length=32), nullable=True),
        sa.Column("device", sa.String(length=128), nullable=True),
        sa.Column("actor", sa.String(length=100), nullable=True),
        sa.Column("event_id", sa.BigInteger(), nullable=True),
        sa.Column(
            "detail", sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"), nullable=False
        ),
        sa.Column("at", omnijourney.store.base.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_commerce_cart_changes")),
        sa.UniqueConstraint("event_id", name=op.f("uq_commerce_cart_changes_event_id")),
    )
    with op.batch_alter_table("commerce_cart_changes", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_commerce_cart_changes_cart_id"), ["cart_id"], unique=False)

    op.create_table(
        "commerce_carts",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("profile_id", sa.BigInteger(), nullable=True),
        sa.Column("anonymous_id", sa.String(length=255), nullable=True),
        sa.Column("external_id", sa.String(length=128), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("merged_into", sa.BigInteger(), nullable=True),
        sa.Column("created_at", omnijourney.store.base.UTCDateTime(), nullable=False),
        sa.Column("updated_at", omnijourney.store.base.UTCDateTime(), nullable=False),
        sa.Column("value_minor", sa.BigInteger(), nullable=False),
        sa.CheckConstraint(
            "status IN ('active', 'merged', 'checked_out')", name=op.f("ck_commerce_carts_status_known")
        ),
        sa.CheckConstraint(
            "profile_id IS NOT NULL OR anonymous_id IS NOT NULL", name=op.f("ck_commerce_carts_has_owner")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_commerce_carts")),
        sa.UniqueConstraint("external_id", name=op.f("uq_commerce_carts_external_id")),
    )
    with op.batch_alter_table("commerce_carts", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_commerce_carts_anonymous_id"), ["anonymous_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_commerce_carts_profile_id"), ["profile_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_commerce_carts_updated_at"), ["updated_at"], unique=False)
        batch_op.create_index(
            "uq_commerce_carts_active_anonymous",
            ["anonymous_id"],
            unique=True,
            sqlite_where=sa.text("status = 'active' AND profile_id IS NULL"),
            postgresql_where=sa.text("status = 'active' AND profile_id IS NULL"),
        )
        batch_op.create_index(
            "uq_commerce_carts_active_profile",
            ["profile_id"],
            unique=True,
            sqlite_where=sa.text("status = 'active' AND profile_id IS NOT NULL"),
            postgresql_where=sa.text("status = 'active' AND profile_id IS NOT NULL"),
        )

    op.create_table(
        "commerce_locations",
        sa.Column("code", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column(
            "address", sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"), nullable=False
        ),
        sa.Column("latitude", sa.Float(), nullable=True),
        sa.Column("longitude", sa.Float(), nullable=True),
        sa.Column(
            "opening_hours",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column("ships", sa.Boolean(), nullable=False),
        sa.Column("pickup", sa.Boolean(), nullable=False),
        sa.Column("pickup_sourcing", sa.String(length=16), nullable=False),
        sa.Column(
            "channels", sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"), nullable=False
        ),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("updated_at", omnijourney.store.base.UTCDateTime(), nullable=False),
        sa.CheckConstraint("kind IN ('warehouse', 'store', 'locker')", name=op.f("ck_commerce_locations_kind_known")),
        sa.CheckConstraint(
            "pickup_sourcing IN ('store_only', 'network')", name=op.f("ck_commerce_locations_sourcing_known")
        ),
        sa.CheckConstraint(
            "latitude IS NULL OR (latitude >= -90 AND latitude <= 90)",
            name=op.f("ck_commerce_locations_latitude_range"),
        ),
        sa.CheckConstraint(
            "longitude IS NULL OR (longitude >= -180 AND longitude <= 180)",
            name=op.f("ck_commerce_locations_longitude_range"),
        ),
        sa.PrimaryKeyConstraint("code", name=op.f("pk_commerce_locations")),
    )
    op.create_table(
        "commerce_loyalty_accounts",
        sa.Column("profile_id", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("balance", sa.BigInteger(), nullable=False),
        sa.Column("lifetime_earned", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", omnijourney.store.base.UTCDateTime(), nullable=False),
        sa.CheckConstraint("balance >= 0", name=op.f("ck_commerce_loyalty_accounts_balance_non_negative")),
        sa.CheckConstraint("lifetime_earned >= 0", name=op.f("ck_commerce_loyalty_accounts_lifetime_non_negative")),
        sa.PrimaryKeyConstraint("profile_id", name=op.f("pk_commerce_loyalty_accounts")),
    )
    op.create_table(
        "commerce_loyalty_ledger",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("profile_id", sa.BigInteger(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("points", sa.BigInteger(), nullable=False),
        sa.Column("order_id", sa.BigInteger(), nullable=True),
        sa.Column("dedupe_key", sa.String(length=160), nullable=True),
        sa.Column("channel", sa.String(length=32), nullable=True),
        sa.Column("actor", sa.String(length=100), nullable=True),
        sa.Column("at", omnijourney.store.base.UTCDateTime(), nullable=False),
        sa.CheckConstraint(
            "kind IN ('earn', 'redeem', 'reverse', 'adjust')", name=op.f("ck_commerce_loyalty_ledger_kind_known")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_commerce_loyalty_ledger")),
        sa.UniqueConstraint("dedupe_key", name=op.f("uq_commerce_loyalty_ledger_dedupe_key")),
    )
    with op.batch_alter_table("commerce_loyalty_ledger", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_commerce_loyalty_ledger_profile_id"), ["profile_id"], unique=False)

    op.create_table(
        "commerce_order_history",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("order_id", sa.BigInteger(), nullable=False),
        sa.Column("status", sa.String(length=24), nullable=False),
        sa.Column("location", sa.String(length=64), nullable=True),
        sa.Column("actor", sa.String(length=100), nullable=True),
        sa.Column(
            "detail", sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"), nullable=False
        ),
        sa.Column("at", omnijourney.store.base.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_commerce_order_history")),
    )
    with op.batch_alter_table("commerce_order_history", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_commerce_order_history_order_id"), ["order_id"], unique=False)

    op.create_table(
        "commerce_orders",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("order_ref", sa.String(length=128), nullable=False),
        sa.Column("profile_id", sa.BigInteger(), nullable=True),
        sa.Column("anonymous_id", sa.String(length=255), nullable=True),
        sa.Column("cart_id", sa.BigInteger(), nullable=True),
        sa.Column("checkout_id", sa.BigInteger(), nullable=True),
        sa.Column("idempotency_key", sa.String(length=128), nullable=True),
        sa.Column("origin", sa.String(length=16), nullable=False),
        sa.Column("source_id", sa.Integer(), nullable=True),
        sa.Column("channel", sa.String(length=32), nullable=False),
        sa.Column("store_id", sa.String(length=64), nullable=True),
        sa.Column("fulfilment", sa.String(length=24), nullable=False),
        sa.Column("pickup_location", sa.String(length=64), nullable=True),
        sa.Column(
            "ship_address", sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"), nullable=True
        ),
        sa.Column("status", sa.String(length=24), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("total_minor", sa.BigInteger(), nullable=False),
        sa.Column("refunded_minor", sa.BigInteger(), nullable=False),
        sa.Column("points_redeemed", sa.Integer(), nullable=False),
        sa.Column("event_id", sa.BigInteger(), nullable=True),
        sa.Column("placed_at", omnijourney.store.base.UTCDateTime(), nullable=False),
        sa.Column("updated_at", omnijourney.store.base.UTCDateTime(), nullable=False),
        sa.CheckConstraint(
            "fulfilment IN ('ship', 'click_and_collect', 'external')", name=op.f("ck_commerce_orders_fulfilment_known")
        ),
        sa.CheckConstraint("origin IN ('omnijourney', 'event')", name=op.f("ck_commerce_orders_origin_known")),
        sa.CheckConstraint(
            "status IN ('placed', 'paid', 'ready_for_pickup', 'picked_up', 'shipped', 'delivered', 'cancelled', 'completed', 'partially_returned', 'returned')",
            name=op.f("ck_commerce_orders_status_known"),
        ),
        sa.CheckConstraint(
            "refunded_minor >= 0 AND refunded_minor <= total_minor", name=op.f("ck_commerce_orders_refund_bounded")
        ),
        sa.CheckConstraint("total_minor >= 0", name=op.f("ck_commerce_orders_total_non_negative")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_commerce_orders")),
        sa.UniqueConstraint("cart_id", name=op.f("uq_commerce_orders_cart_id")),
        sa.UniqueConstraint("checkout_id", name=op.f("uq_commerce_orders_checkout_id")),
        sa.UniqueConstraint("idempotency_key", name=op.f("uq_commerce_orders_idempotency_key")),
        sa.UniqueConstraint("order_ref", name=op.f("uq_commerce_orders_order_ref")),
    )
    with op.batch_alter_table("commerce_orders", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_commerce_orders_profile_id"), ["profile_id"], unique=False)

    op.create_table(
        "commerce_products",
        sa.Column("sku", sa.String(length=64), nullable=False),
        sa.Column("product_id", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=300), nullable=False),
        sa.Column("category", sa.String(length=200), nullable=True),
        sa.Column("brand", sa.String(length=200), nullable=True),
        sa.Column(
            "attributes", sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"), nullable=False
        ),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("updated_at", omnijourney.store.base.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("sku", name=op.f("pk_commerce_products")),
    )
    with op.batch_alter_table("commerce_products", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_commerce_products_category"), ["category"], unique=False)
        batch_op.create_index(batch_op.f("ix_commerce_products_product_id"), ["product_id"], unique=False)

    op.create_table(
        "commerce_reservations",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("checkout_id", sa.BigInteger(), nullable=True),
        sa.Column("reference", sa.String(length=128), nullable=True),
        sa.Column("sku", sa.String(length=64), nullable=False),
        sa.Column("location", sa.String(length=64), nullable=False),
        sa.Column("quantity", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("created_at", omnijourney.store.base.UTCDateTime(), nullable=False),
        sa.Column("expires_at", omnijourney.store.base.UTCDateTime(), nullable=False),
        sa.CheckConstraint(
            "status IN ('active', 'allocated', 'released', 'expired')",
            name=op.f("ck_commerce_reservations_status_known"),
        ),
        sa.CheckConstraint("quantity >= 1", name=op.f("ck_commerce_reservations_quantity_positive")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_commerce_reservations")),
    )
    with op.batch_alter_table("commerce_reservations", schema=None) as batch_op:
        batch_op.create_index("ix_commerce_reservations_active_expiry", ["status", "expires_at"], unique=False)
        batch_op.create_index(batch_op.f("ix_commerce_reservations_checkout_id"), ["checkout_id"], unique=False)

    op.create_table(
        "commerce_stock_updates",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("external_id", sa.String(length=128), nullable=False),
        sa.Column("sku", sa.String(length=64), nullable=False),
        sa.Column("location", sa.String(length=64), nullable=False),
        sa.Column("mode", sa.String(length=8), nullable=False),
        sa.Column("quantity", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("on_hand_after", sa.Integer(), nullable=True),
        sa.Column("detail", sa.String(length=300), nullable=True),
        sa.Column("event_id", sa.BigInteger(), nullable=True),
        sa.Column("applied_at", omnijourney.store.base.UTCDateTime(), nullable=False),
        sa.CheckConstraint("mode IN ('absolute', 'delta')", name=op.f("ck_commerce_stock_updates_mode_known")),
        sa.CheckConstraint("status IN ('applied', 'rejected')", name=op.f("ck_commerce_stock_updates_status_known")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_commerce_stock_updates")),
        sa.UniqueConstraint("external_id", name=op.f("uq_commerce_stock_updates_external_id")),
    )
    op.create_table(
        "commerce_cart_lines",
        sa.Column("cart_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("sku", sa.String(length=64), nullable=False),
        sa.Column("quantity", sa.Integer(), nullable=False),
        sa.Column("channel", sa.String(length=32), nullable=False),
        sa.Column("device", sa.String(length=128), nullable=True),
        sa.Column("added_at", omnijourney.store.base.UTCDateTime(), nullable=False),
        sa.Column("updated_at", omnijourney.store.base.UTCDateTime(), nullable=False),
        sa.CheckConstraint("quantity >= 1 AND quantity <= 999", name=op.f("ck_commerce_cart_lines_quantity_range")),
        sa.ForeignKeyConstraint(
            ["cart_id"],
            ["commerce_carts.id"],
            name=op.f("fk_commerce_cart_lines_cart_id_commerce_carts"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["sku"], ["commerce_products.sku"], name=op.f("fk_commerce_cart_lines_sku_commerce_products")
        ),
        sa.PrimaryKeyConstraint("cart_id", "sku", name=op.f("pk_commerce_cart_lines")),
    )
    op.create_table(
        "commerce_checkouts",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("cart_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("fulfilment", sa.String(length=24), nullable=False),
        sa.Column("pickup_location", sa.String(length=64), nullable=True),
        sa.Column(
            "ship_address", sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"), nullable=True
        ),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("total_minor", sa.BigInteger(), nullable=False),
        sa.Column("channel", sa.String(length=32), nullable=False),
        sa.Column("created_at", omnijourney.store.base.UTCDateTime(), nullable=False),
        sa.Column("expires_at", omnijourney.store.base.UTCDateTime(), nullable=False),
        sa.Column("order_id", sa.BigInteger(), nullable=True),
        sa.CheckConstraint(
            "fulfilment IN ('ship', 'click_and_collect')", name=op.f("ck_commerce_checkouts_fulfilment_known")
        ),
        sa.CheckConstraint(
            "status IN ('open', 'completed', 'cancelled', 'expired')", name=op.f("ck_commerce_checkouts_status_known")
        ),
        sa.ForeignKeyConstraint(
            ["cart_id"], ["commerce_carts.id"], name=op.f("fk_commerce_checkouts_cart_id_commerce_carts")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_commerce_checkouts")),
    )
    with op.batch_alter_table("commerce_checkouts", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_commerce_checkouts_cart_id"), ["cart_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_commerce_checkouts_expires_at"), ["expires_at"], unique=False)
        batch_op.create_index(
            "uq_commerce_checkouts_open_cart",
            ["cart_id"],
            unique=True,
            sqlite_where=sa.text("status = 'open'"),
            postgresql_where=sa.text("status = 'open'"),
        )

    op.create_table(
        "commerce_order_lines",
        sa.Column("order_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("line_no", sa.Integer(), nullable=False),
        sa.Column("sku", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=300), nullable=True),
        sa.Column("quantity", sa.Integer(), nullable=False),
        sa.Column("unit_price_minor", sa.BigInteger(), nullable=False),
        sa.Column("location", sa.String(length=64), nullable=True),
        sa.Column("returned_quantity", sa.Integer(), nullable=False),
        sa.CheckConstraint("quantity >= 1", name=op.f("ck_commerce_order_lines_quantity_positive")),
        sa.CheckConstraint(
            "returned_quantity >= 0 AND returned_quantity <= quantity",
            name=op.f("ck_commerce_order_lines_returned_bounded"),
        ),
        sa.CheckConstraint("unit_price_minor >= 0", name=op.f("ck_commerce_order_lines_price_non_negative")),
        sa.ForeignKeyConstraint(
            ["order_id"],
            ["commerce_orders.id"],
            name=op.f("fk_commerce_order_lines_order_id_commerce_orders"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("order_id", "line_no", name=op.f("pk_commerce_order_lines")),
    )
    op.create_table(
        "commerce_prices",
        sa.Column("sku", sa.String(length=64), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("amount_minor", sa.BigInteger(), nullable=False),
        sa.CheckConstraint("amount_minor >= 0", name=op.f("ck_commerce_prices_amount_non_negative")),
        sa.ForeignKeyConstraint(
            ["sku"],
            ["commerce_products.sku"],
            name=op.f("fk_commerce_prices_sku_commerce_products"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("sku", "currency", name=op.f("pk_commerce_prices")),
    )
    op.create_table(
        "commerce_related_products",
        sa.Column("sku", sa.String(length=64), nullable=False),
        sa.Column("related_sku", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("quantity", sa.Integer(), nullable=False),
        sa.CheckConstraint(
            "kind IN ('accessory', 'alternative', 'bundle_part')", name=op.f("ck_commerce_related_products_kind_known")
        ),
        sa.CheckConstraint("quantity >= 1", name=op.f("ck_commerce_related_products_quantity_positive")),
        sa.CheckConstraint("sku <> related_sku", name=op.f("ck_commerce_related_products_not_self")),
        sa.ForeignKeyConstraint(
            ["related_sku"],
            ["commerce_products.sku"],
            name=op.f("fk_commerce_related_products_related_sku_commerce_products"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["sku"],
            ["commerce_products.sku"],
            name=op.f("fk_commerce_related_products_sku_commerce_products"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("sku", "related_sku", "kind", name=op.f("pk_commerce_related_products")),
    )
    op.create_table(
        "commerce_returns",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("order_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("location", sa.String(length=64), nullable=False),
        sa.Column("channel", sa.String(length=32), nullable=False),
        sa.Column("reason", sa.String(length=300), nullable=False),
        sa.Column("refund_minor", sa.BigInteger(), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("idempotency_key", sa.String(length=128), nullable=True),
        sa.Column("actor", sa.String(length=100), nullable=True),
        sa.Column("created_at", omnijourney.store.base.UTCDateTime(), nullable=False),
        sa.CheckConstraint("refund_minor >= 0", name=op.f("ck_commerce_returns_refund_non_negative")),
        sa.ForeignKeyConstraint(
            ["location"], ["commerce_locations.code"], name=op.f("fk_commerce_returns_location_commerce_locations")
        ),
        sa.ForeignKeyConstraint(
            ["order_id"], ["commerce_orders.id"], name=op.f("fk_commerce_returns_order_id_commerce_orders")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_commerce_returns")),
        sa.UniqueConstraint("idempotency_key", name=op.f("uq_commerce_returns_idempotency_key")),
    )
    with op.batch_alter_table("commerce_returns", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_commerce_returns_order_id"), ["order_id"], unique=False)

    op.create_table(
        "commerce_stock",
        sa.Column("sku", sa.String(length=64), nullable=False),
        sa.Column("location", sa.String(length=64), nullable=False),
        sa.Column("on_hand", sa.Integer(), nullable=False),
        sa.Column("reserved", sa.Integer(), nullable=False),
        sa.Column("allocated", sa.Integer(), nullable=False),
        sa.Column("damaged", sa.Integer(), nullable=False),
        sa.Column("updated_at", omnijourney.store.base.UTCDateTime(), nullable=False),
        sa.CheckConstraint("allocated >= 0", name=op.f("ck_commerce_stock_allocated_non_negative")),
        sa.CheckConstraint("damaged >= 0", name=op.f("ck_commerce_stock_damaged_non_negative")),
        sa.CheckConstraint(
            "on_hand - reserved - allocated >= 0", name=op.f("ck_commerce_stock_available_non_negative")
        ),
        sa.CheckConstraint("on_hand >= 0", name=op.f("ck_commerce_stock_on_hand_non_negative")),
        sa.CheckConstraint("reserved >= 0", name=op.f("ck_commerce_stock_reserved_non_negative")),
        sa.ForeignKeyConstraint(
            ["location"], ["commerce_locations.code"], name=op.f("fk_commerce_stock_location_commerce_locations")
        ),
        sa.ForeignKeyConstraint(
            ["sku"], ["commerce_products.sku"], name=op.f("fk_commerce_stock_sku_commerce_products")
        ),
        sa.PrimaryKeyConstraint("sku", "location", name=op.f("pk_commerce_stock")),
    )
    with op.batch_alter_table("commerce_stock", schema=None) as batch_op:
        batch_op.create_index("ix_commerce_stock_location_sku", ["location", "sku"], unique=False)

    op.create_table(
        "commerce_return_lines",
        sa.Column("return_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("line_no", sa.Integer(), nullable=False),
        sa.Column("sku", sa.String(length=64), nullable=False),
        sa.Column("quantity", sa.Integer(), nullable=False),
        sa.Column("condition", sa.String(length=16), nullable=False),
        sa.CheckConstraint(
            "condition IN ('sellable', 'damaged')", name=op.f("ck_commerce_return_lines_condition_known")
        ),
        sa.CheckConstraint("quantity >= 1", name=op.f("ck_commerce_return_lines_quantity_positive")),
        sa.ForeignKeyConstraint(
            ["return_id"],
            ["commerce_returns.id"],
            name=op.f("fk_commerce_return_lines_return_id_commerce_returns"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("return_id", "line_no", name=op.f("pk_commerce_return_lines")),
    )


def downgrade() -> None:
    op.drop_table("commerce_return_lines")
    with op.batch_alter_table("commerce_stock", schema=None) as batch_op:
        batch_op.drop_index("ix_commerce_stock_location_sku")

    op.drop_table("commerce_stock")
    with op.batch_alter_table("commerce_returns", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_commerce_returns_order_id"))

    op.drop_table("commerce_returns")
    op.drop_table("commerce_related_products")
    op.drop_table("commerce_prices")
    op.drop_table("commerce_order_lines")
    with op.batch_alter_table("commerce_checkouts", schema=None) as batch_op:
        batch_op.drop_index(
            "uq_commerce_checkouts_open_cart",
            sqlite_where=sa.text("status = 'open'"),
            postgresql_where=sa.text("status = 'open'"),
        )
        batch_op.drop_index(batch_op.f("ix_commerce_checkouts_expires_at"))
        batch_op.drop_index(batch_op.f("ix_commerce_checkouts_cart_id"))

    op.drop_table("commerce_checkouts")
    op.drop_table("commerce_cart_lines")
    op.drop_table("commerce_stock_updates")
    with op.batch_alter_table("commerce_reservations", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_commerce_reservations_checkout_id"))
        batch_op.drop_index("ix_commerce_reservations_active_expiry")

    op.drop_table("commerce_reservations")
    with op.batch_alter_table("commerce_products", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_commerce_products_product_id"))
        batch_op.drop_index(batch_op.f("ix_commerce_products_category"))

    op.drop_table("commerce_products")
    with op.batch_alter_table("commerce_orders", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_commerce_orders_profile_id"))

    op.drop_table("commerce_orders")
    with op.batch_alter_table("commerce_order_history", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_commerce_order_history_order_id"))

    op.drop_table("commerce_order_history")
    with op.batch_alter_table("commerce_loyalty_ledger", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_commerce_loyalty_ledger_profile_id"))

    op.drop_table("commerce_loyalty_ledger")
    op.drop_table("commerce_loyalty_accounts")
    op.drop_table("commerce_locations")
    with op.batch_alter_table("commerce_carts", schema=None) as batch_op:
        batch_op.drop_index(
            "uq_commerce_carts_active_profile",
            sqlite_where=sa.text("status = 'active' AND profile_id IS NOT NULL"),
            postgresql_where=sa.text("status = 'active' AND profile_id IS NOT NULL"),
        )
        batch_op.drop_index(
            "uq_commerce_carts_active_anonymous",
            sqlite_where=sa.text("status = 'active' AND profile_id IS NULL"),
            postgresql_where=sa.text("status = 'active' AND profile_id IS NULL"),
        )
        batch_op.drop_index(batch_op.f("ix_commerce_carts_updated_at"))
        batch_op.drop_index(batch_op.f("ix_commerce_carts_profile_id"))
        batch_op.drop_index(batch_op.f("ix_commerce_carts_anonymous_id"))

    op.drop_table("commerce_carts")
    with op.batch_alter_table("commerce_cart_changes", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_commerce_cart_changes_cart_id"))

    op.drop_table("commerce_cart_changes")
