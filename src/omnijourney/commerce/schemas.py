"""Request bodies of the commerce API: strict, bounded, no unknown fields."""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

from omnijourney.commerce.config import is_currency, to_minor
from omnijourney.ingest.spec import CHANNELS

Sku = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:/-]*$")]
Code = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]*$")]
Quantity = Annotated[int, Field(strict=True, ge=1, le=999)]
Key = Annotated[str, Field(min_length=1, max_length=128)]
MAX_PRICE = Decimal("1000000000")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


def _currency(v: str) -> str:
    v = v.upper()
    if not is_currency(v):
        raise ValueError(f"{v!r} is not an ISO 4217 currency code")
    return v


def _channel(v: str) -> str:
    if v not in CHANNELS:
        raise ValueError(f"unknown channel {v!r}; one of {sorted(CHANNELS)}")
    return v


Currency = Annotated[str, Field(min_length=3, max_length=3), AfterValidator(_currency)]
Channel = Annotated[str, Field(min_length=1, max_length=32), AfterValidator(_channel)]


class RelatedIn(Strict):
    sku: Sku
    kind: Literal["accessory", "alternative", "bundle_part"]
    quantity: int = Field(default=1, ge=1, le=999)


class ProductIn(Strict):
    sku: Sku
    product_id: Sku | None = None
    name: str = Field(min_length=1, max_length=300)
    category: str | None = Field(default=None, max_length=200)
    brand: str | None = Field(default=None, max_length=200)
    #: major units per currency, e.g. {"CZK": "2490.00", "EUR": 99.9}
    prices: dict[str, Decimal] | None = None
    attributes: dict[str, Any] = Field(default_factory=dict)
    related: list[RelatedIn] | None = Field(default=None, max_length=200)
    active: bool = True

    @field_validator("prices")
    @classmethod
    def _prices(cls, v: dict[str, Decimal] | None) -> dict[str, Decimal] | None:
        if v is None:
            return v
        out = {}
        for code, amount in v.items():
            code = _currency(code)
            if amount < 0 or amount > MAX_PRICE:
                raise ValueError(f"{code} price must be 0..{MAX_PRICE}")
            to_minor(amount, code)  # raises on too many decimals
            out[code] = amount
        return out

    def row(self) -> dict[str, Any]:
        data = self.model_dump()
        data["prices"] = None if self.prices is None else {c: to_minor(a, c) for c, a in self.prices.items()}
        data["related"] = None if self.related is None else [r.model_dump() for r in self.related]
        return data


class CatalogImport(Strict):
    products: list[ProductIn] = Field(min_length=1, max_length=10_000)


class LocationIn(Strict):
    code: Code
    name: str = Field(min_length=1, max_length=200)
    kind: Literal["warehouse", "store", "locker"]
    address: dict[str, Any] = Field(default_factory=dict)
    latitude: float | None = Field(default=None, ge=-90, le=90)
    longitude: float | None = Field(default=None, ge=-180, le=180)
    opening_hours: dict[str, list[tuple[str, str]]] = Field(default_factory=dict)
    ships: bool = False
    pickup: bool = False
    pickup_sourcing: Literal["store_only", "network"] = "store_only"
    channels: list[str] = Field(default_factory=list, max_length=20)
    active: bool = True

    @field_validator("opening_hours")
    @classmethod
    def _hours(cls, v: dict[str, list[tuple[str, str]]]) -> dict[str, list[tuple[str, str]]]:
        import re

        days = {"mon", "tue", "wed", "thu", "fri", "sat", "sun"}
        for day, spans in v.items():
            if day not in days:
                raise ValueError(f"opening_hours day must be one of {sorted(days)}")
            for start, end in spans:
                for t in (start, end):
                    if not re.fullmatch(r"([01]\d|2[0-3]):[0-5]\d|24:00", t):
                        raise ValueError(f"{t!r} is not HH:MM")
                if start >= end:
                    raise ValueError(f"{day}: {start} is not before {end}")
        return v

    @field_validator("channels")
    @classmethod
    def _channels(cls, v: list[str]) -> list[str]:
        unknown = sorted(set(v) - set(CHANNELS))
        if unknown:
            raise ValueError(f"unknown channels {unknown}; one of {sorted(CHANNELS)}")
        return v

    @model_validator(mode="after")
    def _coordinates(self) -> LocationIn:
        if (self.latitude is None) != (self.longitude is None):
            raise ValueError("give both latitude and longitude, or neither")
        return self


class LocationsIn(Strict):
    locations: list[LocationIn] = Field(min_length=1, max_length=5_000)


class StockUpdateIn(Strict):
    external_id: Key
    sku: Sku
    location: Code
    #: absolute count (on_hand) or a delta, exactly one
    on_hand: int | None = Field(default=None, strict=True, ge=0, le=10_000_000)
    delta: int | None = Field(default=None, strict=True, ge=-10_000_000, le=10_000_000)

    @model_validator(mode="after")
    def _one(self) -> StockUpdateIn:
        if (self.on_hand is None) == (self.delta is None):
            raise ValueError("give exactly one of on_hand (absolute) or delta")
        if self.delta == 0:
            raise ValueError("delta must not be 0")
        return self


class StockUpdatesIn(Strict):
    updates: list[StockUpdateIn] = Field(min_length=1, max_length=5_000)


class HoldIn(Strict):
    sku: Sku
    location: Code
    quantity: Quantity
    reference: str | None = Field(default=None, max_length=128)
    ttl_seconds: int = Field(default=3600, strict=True, ge=60, le=30 * 86_400)


class CartOwnerIn(Strict):
    profile_id: int | None = Field(default=None, strict=True, ge=1)
    anonymous_id: str | None = Field(default=None, min_length=1, max_length=255)
    currency: Currency | None = None

    @model_validator(mode="after")
    def _owner(self) -> CartOwnerIn:
        if self.profile_id is None and self.anonymous_id is None:
            raise ValueError("give profile_id or anonymous_id")
        return self


class CartItemIn(Strict):
    sku: Sku
    quantity: Quantity = 1
    channel: Channel = "web"
    device: str | None = Field(default=None, max_length=128)


class CartQuantityIn(Strict):
    quantity: int = Field(strict=True, ge=0, le=999)
    channel: Channel = "web"
    device: str | None = Field(default=None, max_length=128)


class CheckoutIn(Strict):
    cart_id: int = Field(strict=True, ge=1)
    fulfilment: Literal["ship", "click_and_collect", "parcel_locker"]
    pickup_location: Code | None = None
    ship_address: dict[str, Any] | None = None
    channel: Channel = "web"


class CompleteIn(Strict):
    idempotency_key: Key | None = None
    redeem_points: int = Field(default=0, strict=True, ge=0, le=10_000_000)
    channel: Channel | None = None


class OrderStatusIn(Strict):
    status: Literal["paid", "ready_for_pickup", "picked_up", "shipped", "delivered", "cancelled"]
    location: Code | None = None
    #: the channel that acted (on the timeline event); "store" when a location is given, else the order's
    channel: Channel | None = None


class ReturnItemIn(Strict):
    sku: Sku
    quantity: Quantity
    condition: Literal["sellable", "damaged"]


class ReturnIn(Strict):
    #: "store": handed in at `location`; "mail": a parcel received at `location` (default: the
    #: configured `returns_location`)
    mode: Literal["store", "mail"] = "store"
    location: Code | None = None
    items: list[ReturnItemIn] = Field(min_length=1, max_length=200)
    reason: str = Field(min_length=1, max_length=300)
    #: major units; the returned share of what was paid when omitted
    refund: Decimal | None = Field(default=None, ge=0, le=MAX_PRICE)
    #: required (here or as the Idempotency-Key header): a retried return must never restock twice
    idempotency_key: Key | None = None
    #: the channel that took the return; "store" in a store, "other" by mail
    channel: Channel | None = None


class RedeemIn(Strict):
    points: int = Field(strict=True, ge=1, le=10_000_000)
    idempotency_key: Key | None = None
    channel: Channel = "store"
