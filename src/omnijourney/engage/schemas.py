"""Segment definitions (the rule language shared by engage.yaml and the API) and API bodies.

A rule is a tree: `{all: [...]}`, `{any: [...]}`, `{not: rule}`, or one condition:

- `trait`: `{trait: {key, op, value}}` on the merged profile traits
- `computed`: `{computed: {field, op, value}}` on the computed traits (COMPUTED_FIELDS)
- `consent`: `{consent: {purpose, channel, status}}` (the cluster's current, most restrictive state)
- `cart`: `{cart: {idle_minutes_gte, value_gte, value_lte}}` the abandoned-cart signal (active cart with items)
- `event`: `{event: {name, did, within_days, channel, count: {op, value}, sum: {property, op, value}}}`
  did / did not do X within a period, how often, the sum of a property (`revenue` reads the typed column)
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

KEY_PATTERN = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
Op = Literal["eq", "ne", "gt", "gte", "lt", "lte", "in", "not_in", "contains", "exists", "not_exists"]
NumOp = Literal["eq", "ne", "gt", "gte", "lt", "lte"]
COMPUTED_FIELDS = (
    "event_count",
    "order_count",
    "lifetime_revenue",
    "average_order_value",
    "days_since_first_seen",
    "days_since_last_seen",
    "days_since_last_order",
    "lifecycle_stage",
    "preferred_channel",
    "preferred_store",
    "channels",
)
MAX_DEPTH = 6
MAX_CONDITIONS = 50


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Comparison(_Strict):
    op: Op
    value: Any = None

    @model_validator(mode="after")
    def _value(self) -> Comparison:
        if self.op in ("exists", "not_exists"):
            if self.value is not None:
                raise ValueError(f"op {self.op!r} takes no value")
        elif self.value is None:
            raise ValueError(f"op {self.op!r} needs a value")
        if self.op in ("in", "not_in") and not isinstance(self.value, list):
            raise ValueError(f"op {self.op!r} needs a list value")
        if self.op in ("gt", "gte", "lt", "lte") and (
            isinstance(self.value, bool) or not isinstance(self.value, int | float | str)
        ):
            raise ValueError(f"op {self.op!r} needs a number (or an ISO date string)")
        return self


class TraitCondition(Comparison):
    key: str = Field(min_length=1, max_length=100)


class ComputedCondition(Comparison):
    field: str

    @field_validator("field")
    @classmethod
    def _known(cls, v: str) -> str:
        if v not in COMPUTED_FIELDS:
            raise ValueError(f"unknown computed field {v!r}; known: {', '.join(COMPUTED_FIELDS)}")
        return v


class ConsentCondition(_Strict):
    purpose: str = Field(min_length=1, max_length=64)
    channel: str = Field(min_length=1, max_length=32)
    status: Literal["granted", "denied", "withdrawn"] = "granted"


class CartCondition(_Strict):
    idle_minutes_gte: int = Field(default=0, ge=0, le=525600)
    value_gte: float | None = Field(default=None, ge=0)
    value_lte: float | None = Field(default=None, ge=0)


class NumberTest(_Strict):
    op: NumOp
    value: float


class SumTest(NumberTest):
    property: str = Field(min_length=1, max_length=100)


class EventCondition(_Strict):
    name: str = Field(min_length=1, max_length=200)
    did: bool = True
    within_days: int | None = Field(default=None, ge=1, le=3650)
    channel: str | None = Field(default=None, max_length=32)
    count: NumberTest | None = None
    sum: SumTest | None = None

    @model_validator(mode="after")
    def _shape(self) -> EventCondition:
        if not self.did and (self.count is not None or self.sum is not None):
            raise ValueError("'did: false' takes no count or sum (it means: no such event in the period)")
        return self


def _node_kind(node: dict[str, Any]) -> str:
    kinds = [k for k in ("all", "any", "not", "trait", "computed", "consent", "cart", "event") if k in node]
    extra = set(node) - {"all", "any", "not", "trait", "computed", "consent", "cart", "event"}
    if extra:
        raise ValueError(f"unknown rule key(s) {sorted(extra)}")
    if len(kinds) != 1:
        raise ValueError("each rule node has exactly one of all, any, not, trait, computed, consent, cart, event")
    return kinds[0]


_CONDITIONS: dict[str, type[BaseModel]] = {
    "trait": TraitCondition,
    "computed": ComputedCondition,
    "consent": ConsentCondition,
    "cart": CartCondition,
    "event": EventCondition,
}


def normalise_rule(rule: Any, path: str = "rule", depth: int = 0, counter: list[int] | None = None) -> dict[str, Any]:
    """Validate a rule tree; returns it normalised (defaults filled). Raises ValueError with the path."""
    counter = counter if counter is not None else [0]
    if depth > MAX_DEPTH:
        raise ValueError(f"{path}: rules nest at most {MAX_DEPTH} levels")
    if not isinstance(rule, dict):
        raise ValueError(f"{path}: a rule node is an object")
    try:
        kind = _node_kind(rule)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None
    value = rule[kind]
    if kind in ("all", "any"):
        if not isinstance(value, list) or not value:
            raise ValueError(f"{path}.{kind}: a non-empty list of rules")
        return {kind: [normalise_rule(r, f"{path}.{kind}[{i}]", depth + 1, counter) for i, r in enumerate(value)]}
    if kind == "not":
        return {"not": normalise_rule(value, f"{path}.not", depth + 1, counter)}
    counter[0] += 1
    if counter[0] > MAX_CONDITIONS:
        raise ValueError(f"{path}: a segment has at most {MAX_CONDITIONS} conditions")
    if not isinstance(value, dict):
        raise ValueError(f"{path}.{kind}: an object")
    try:
        parsed = _CONDITIONS[kind].model_validate(value)
    except ValueError as exc:
        raise ValueError(f"{path}.{kind}: {_pydantic_message(exc)}") from None
    return {kind: parsed.model_dump(exclude_none=kind != "trait" and kind != "computed")}


def _pydantic_message(exc: Exception) -> str:
    errors = getattr(exc, "errors", None)
    if callable(errors):
        parts = []
        for e in errors():
            loc = ".".join(str(x) for x in e.get("loc", ()))
            parts.append(f"{loc}: {e.get('msg')}" if loc else str(e.get("msg")))
        return "; ".join(parts)
    return str(exc)


class SegmentIn(_Strict):
    """A segment definition (a config entry or an API body)."""

    key: str
    name: str = Field(min_length=1, max_length=200)
    description: str = Field(default="", max_length=2000)
    rule: dict[str, Any]

    @field_validator("key")
    @classmethod
    def _key(cls, v: str) -> str:
        if not KEY_PATTERN.match(v):
            raise ValueError("a segment key is lower-case letters, digits and '_', starting with a letter (≤ 64)")
        return v

    @field_validator("rule")
    @classmethod
    def _rule(cls, v: dict[str, Any]) -> dict[str, Any]:
        return normalise_rule(v)


class SegmentUpdate(_Strict):
    name: str | None = Field(default=None, min_length=1, max_length=200)
    description: str | None = Field(default=None, max_length=2000)
    rule: dict[str, Any] | None = None

    @field_validator("rule")
    @classmethod
    def _rule(cls, v: dict[str, Any] | None) -> dict[str, Any] | None:
        return normalise_rule(v) if v is not None else None


class RecoConfig(_Strict):
    """Weights of the recommendation signals (see docs/ENGAGE.md)."""

    neighbours: int = Field(default=20, ge=1, le=200)
    accessory_of_bought: float = Field(default=3.0, ge=0)
    accessory_of_viewed: float = Field(default=1.5, ge=0)
    co_purchase: float = Field(default=1.0, ge=0)
    co_view: float = Field(default=0.5, ge=0)
    popularity: float = Field(default=0.05, ge=0)
    #: how many of the profile's latest viewed products seed the ranking
    recent_views: int = Field(default=30, ge=1, le=500)
    #: a catalog attribute that, when true, lets a bought product be recommended again
    consumable_attribute: str = "consumable"
    #: weight of "buy again": the recency-weighted share of the profile's own orders that contained a
    #: bought consumable (0 turns the signal off; non-consumables already bought stay excluded)
    buy_again: float = Field(default=20.0, ge=0)
    #: an order this many days older than the profile's latest counts half as much in that share
    buy_again_half_life_days: float = Field(default=60.0, gt=0, le=3650)


class EngageConfig(_Strict):
    segments: list[SegmentIn] = Field(default_factory=list)
    recommendations: RecoConfig = Field(default_factory=RecoConfig)
    #: membership is re-evaluated for every profile by `omnijourney segments refresh` in chunks of this size
    refresh_chunk: int = Field(default=2000, ge=10, le=10000)

    @model_validator(mode="after")
    def _unique(self) -> EngageConfig:
        keys = [s.key for s in self.segments]
        dup = sorted({k for k in keys if keys.count(k) > 1})
        if dup:
            raise ValueError(f"duplicate segment keys {dup}")
        return self


class OfferIn(_Strict):
    key: str
    name: str = Field(min_length=1, max_length=200)
    description: str = Field(default="", max_length=2000)
    segment: str | None = None
    channels: list[str] = Field(default_factory=list, max_length=20)
    skus: list[str] = Field(default_factory=list, max_length=1000)
    starts_at: datetime | None = None
    ends_at: datetime | None = None
    priority: int = Field(default=0, ge=-1000, le=1000)
    max_redemptions: int | None = Field(default=None, ge=1)
    per_profile_limit: int = Field(default=1, ge=1, le=1000)
    benefit: dict[str, Any] = Field(default_factory=dict)

    @field_validator("key")
    @classmethod
    def _key(cls, v: str) -> str:
        if not KEY_PATTERN.match(v):
            raise ValueError("an offer key is lower-case letters, digits and '_', starting with a letter (≤ 64)")
        return v

    @field_validator("channels")
    @classmethod
    def _channels(cls, v: list[str]) -> list[str]:
        from omnijourney.ingest.spec import CHANNELS

        unknown = sorted(set(v) - CHANNELS)
        if unknown:
            raise ValueError(f"unknown channels {unknown}; known: {', '.join(sorted(CHANNELS))}")
        return sorted(set(v))

    @model_validator(mode="after")
    def _period(self) -> OfferIn:
        for name in ("starts_at", "ends_at"):
            value = getattr(self, name)
            if value is not None and value.tzinfo is None:
                raise ValueError(f"{name} needs a time zone (e.g. 2026-12-01T00:00:00Z)")
        if self.starts_at and self.ends_at and self.ends_at <= self.starts_at:
            raise ValueError("ends_at must be after starts_at")
        return self


class RedeemIn(_Strict):
    profile_id: int
    channel: str = Field(min_length=1, max_length=32)
    idempotency_key: str = Field(min_length=1, max_length=128)
    order_ref: str | None = Field(default=None, max_length=128)
