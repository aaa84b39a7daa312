"""Commerce configuration (YAML, validated at start-up) and ISO 4217 currencies with their minor units."""

from __future__ import annotations

import os
from datetime import timedelta
from decimal import ROUND_FLOOR, Decimal, InvalidOperation
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

DEFAULT_CONFIG = Path(__file__).with_name("commerce.yaml")

#: ISO 4217 active codes and their minor-unit exponent (2 unless listed otherwise)
_EXPONENT_0 = "BIF CLP DJF GNF ISK JPY KMF KRW PYG RWF UGX UYI VND VUV XAF XOF XPF"
_EXPONENT_3 = "BHD IQD JOD KWD LYD OMR TND"
_EXPONENT_2 = (
    "AED AFN ALL AMD ANG AOA ARS AUD AWG AZN BAM BBD BDT BGN BMD BND BOB BRL BSD BTN BWP BYN BZD CAD CDF CHF "
    "CNY COP CRC CUP CVE CZK DKK DOP DZD EGP ERN ETB EUR FJD FKP GBP GEL GHS GIP GMD GTQ GYD HKD HNL HTG HUF "
    "IDR ILS INR IRR JMD KES KGS KHR KPW KYD KZT LAK LBP LKR LRD LSL MAD MDL MGA MKD MMK MNT MOP MRU MUR MVR "
    "MWK MXN MYR MZN NAD NGN NIO NOK NPR NZD PAB PEN PGK PHP PKR PLN QAR RON RSD RUB SAR SBD SCR SDG SEK SGD "
    "SHP SLE SOS SRD SSP STN SVC SYP SZL THB TJS TMT TOP TRY TTD TWD TZS UAH USD UYU UZS VES WST XCD YER ZAR "
    "ZMW ZWL"
)
CURRENCY_EXPONENTS: dict[str, int] = {
    **{c: 2 for c in _EXPONENT_2.split()},
    **{c: 0 for c in _EXPONENT_0.split()},
    **{c: 3 for c in _EXPONENT_3.split()},
}


def is_currency(code: str) -> bool:
    return code in CURRENCY_EXPONENTS


def to_minor(amount: Decimal | int | float | str, currency: str) -> int:
    """Major units (Decimal-safe) -> integer minor units; more decimals than the currency has is an error."""
    exp = CURRENCY_EXPONENTS[currency]
    try:
        value = Decimal(str(amount))
    except InvalidOperation as exc:
        raise ValueError(f"{amount!r} is not an amount") from exc
    if not value.is_finite():
        raise ValueError(f"{amount!r} is not an amount")
    scaled = value.scaleb(exp)
    if scaled != scaled.to_integral_value():
        raise ValueError(f"{currency} has {exp} decimal places; {amount} has more")
    return int(scaled)


def to_minor_rounded(amount: float | Decimal, currency: str) -> int:
    """For amounts from events (floats): rounded half-even to the currency's minor unit."""
    exp = CURRENCY_EXPONENTS[currency]
    return int(Decimal(str(amount)).scaleb(exp).to_integral_value())


def to_major(minor: int, currency: str) -> str:
    exp = CURRENCY_EXPONENTS.get(currency, 2)
    return str(Decimal(minor).scaleb(-exp).quantize(Decimal(1).scaleb(-exp)))


class Tier(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=32)
    min_points: int = Field(ge=0)


class LoyaltyRules(BaseModel):
    model_config = ConfigDict(extra="forbid")

    earn_per_unit: dict[str, Decimal] = Field(default_factory=dict)
    point_value_minor: dict[str, int] = Field(default_factory=dict)
    tiers: list[Tier] = Field(default_factory=lambda: [Tier(name="basic", min_points=0)], min_length=1)

    @field_validator("earn_per_unit", "point_value_minor")
    @classmethod
    def _currencies(cls, v: dict[str, object]) -> dict[str, object]:
        for code, rate in v.items():
            if not is_currency(code):
                raise ValueError(f"{code!r} is not an ISO 4217 currency code")
            if Decimal(str(rate)) < 0:
                raise ValueError(f"{code}: rates must not be negative")
        return v

    @model_validator(mode="after")
    def _tiers(self) -> LoyaltyRules:
        mins = [t.min_points for t in self.tiers]
        if mins != sorted(mins) or mins[0] != 0 or len(set(mins)) != len(mins):
            raise ValueError("tiers must start at 0 points and increase strictly")
        return self

    def points_for(self, total_minor: int, currency: str) -> int:
        rate = self.earn_per_unit.get(currency)
        if not rate or total_minor <= 0:
            return 0
        major = Decimal(total_minor).scaleb(-CURRENCY_EXPONENTS[currency])
        return int((major * rate).to_integral_value(rounding=ROUND_FLOOR))

    def discount_for(self, points: int, total_minor: int, currency: str) -> tuple[int, int]:
        """(points used, discount in minor units) when `points` are redeemed on an order of `total_minor`:
        capped so the discount never exceeds the total (whole points: a remainder below one point's
        value stays to pay); (0, 0) in a currency without a point value."""
        value = self.point_value_minor.get(currency, 0)
        if points <= 0 or value <= 0:
            return 0, 0
        used = min(points, total_minor // value)
        return used, used * value

    def tier_for(self, lifetime_points: int) -> str:
        name = self.tiers[0].name
        for t in self.tiers:
            if lifetime_points >= t.min_points:
                name = t.name
        return name


class PickupRules(BaseModel):
    """When a click & collect order is promised: orders carry no pickup date, so the promise is the time
    it was placed plus the store's preparation time (what the store page's "due today" is based on)."""

    model_config = ConfigDict(extra="forbid")

    #: hours between placing an order and its promised pickup, and per store where it differs
    preparation_hours: float = Field(default=2, ge=0, le=24 * 30)
    by_store: dict[str, float] = Field(default_factory=dict)
    #: the IANA time zone whose calendar day "today" is
    timezone: str = "UTC"

    @field_validator("by_store")
    @classmethod
    def _hours(cls, v: dict[str, float]) -> dict[str, float]:
        for store, hours in v.items():
            if not 0 <= hours <= 24 * 30:
                raise ValueError(f"{store}: preparation hours must be between 0 and 720")
        return v

    @field_validator("timezone")
    @classmethod
    def _zone(cls, v: str) -> str:
        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"{v!r} is not an IANA time zone") from exc
        return v

    def preparation(self, store: str | None) -> timedelta:
        return timedelta(hours=self.by_store.get(store or "", self.preparation_hours))


class CommerceConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    default_currency: str = "CZK"
    checkout_ttl_seconds: int = Field(default=900, ge=10, le=86_400)
    max_hold_seconds: int = Field(default=7 * 86_400, ge=60)
    loyalty: LoyaltyRules = Field(default_factory=LoyaltyRules)
    #: where returns by mail are received when the request names no location (a warehouse's code)
    returns_location: str | None = Field(default=None, min_length=1, max_length=64)
    pickup: PickupRules = Field(default_factory=PickupRules)

    @field_validator("default_currency")
    @classmethod
    def _currency(cls, v: str) -> str:
        if not is_currency(v):
            raise ValueError(f"{v!r} is not an ISO 4217 currency code")
        return v


def load_commerce_config(path: str | Path | None = None) -> CommerceConfig:
    path = Path(path or os.environ.get("OMNIJOURNEY_COMMERCE_CONFIG") or DEFAULT_CONFIG)
    with path.open() as fh:
        return CommerceConfig.model_validate(yaml.safe_load(fh))
