"""Validation of tracking messages.

`validate_message` turns one raw Segment message into a `ValidMessage` (the typed row the
event log stores) or a list of `FieldError`s saying precisely what is wrong. It is the
single gate for the HTTP API and the bulk importer.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from omnijourney.config import IngestLimits
from omnijourney.ingest.spec import CHANNELS, ECOMMERCE_EVENTS, ORDER_EVENTS, SERVICE_EVENTS
from omnijourney.store.base import Encoded

Id = str | int


@dataclass(frozen=True, slots=True)
class FieldError:
    field: str
    message: str

    def as_dict(self) -> dict[str, str]:
        return {"field": self.field, "message": self.message}


@dataclass(slots=True)
class ValidMessage:
    """A message that passed validation, in the shape of an `events` row."""

    message_id: str
    type: str
    event: str | None
    user_id: str | None
    anonymous_id: str | None
    channel: str
    timestamp: datetime
    received_at: datetime
    sent_at: datetime | None
    original_timestamp: datetime | None
    order_id: str | None
    cart_id: str | None
    revenue: float | None
    currency: str | None
    context: dict[str, Any]
    payload: Encoded

    def row(self, source_id: int) -> dict[str, Any]:
        return {
            "source_id": source_id,
            "message_id": self.message_id,
            "type": self.type,
            "event": self.event,
            "user_id": self.user_id,
            "anonymous_id": self.anonymous_id,
            "channel": self.channel,
            "timestamp": self.timestamp,
            "received_at": self.received_at,
            "sent_at": self.sent_at,
            "original_timestamp": self.original_timestamp,
            "order_id": self.order_id,
            "cart_id": self.cart_id,
            "revenue": self.revenue,
            "currency": self.currency,
            "context": self.context,
            "payload": self.payload,
        }


class Envelope(BaseModel):
    """The fields of the Segment spec common to every call; anything else is kept, not checked."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    type: Literal["identify", "track", "page", "screen", "group", "alias"]
    userId: Id | None = None
    anonymousId: Id | None = None
    messageId: Id | None = None
    event: str | None = Field(default=None, max_length=200)
    name: str | None = None
    groupId: Id | None = None
    previousId: Id | None = None
    timestamp: datetime | None = None
    originalTimestamp: datetime | None = None
    sentAt: datetime | None = None
    context: dict[str, Any] | None = None
    properties: dict[str, Any] | None = None
    traits: dict[str, Any] | None = None
    integrations: dict[str, Any] | None = None


class Product(BaseModel):
    model_config = ConfigDict(extra="allow")

    product_id: Id | None = None
    sku: Id | None = None
    name: str | None = None
    category: str | None = None
    brand: str | None = None
    variant: str | None = None
    price: float | None = None
    quantity: int | None = Field(default=None, ge=0)
    coupon: str | None = None
    position: int | None = None


class CommerceProperties(BaseModel):
    """E-commerce Spec v2 properties, typed; unknown properties pass through."""

    model_config = ConfigDict(extra="allow")

    order_id: Id | None = None
    checkout_id: Id | None = None
    cart_id: Id | None = None
    product_id: Id | None = None
    sku: Id | None = None
    price: float | None = None
    quantity: int | None = Field(default=None, ge=0)
    revenue: float | None = None
    total: float | None = None
    subtotal: float | None = None
    value: float | None = None
    shipping: float | None = None
    tax: float | None = None
    discount: float | None = None
    currency: str | None = Field(default=None, min_length=3, max_length=3)
    products: list[Product] | None = None

    @field_validator("currency")
    @classmethod
    def _upper(cls, v: str | None) -> str | None:
        return v.upper() if v else v


class ServiceProperties(BaseModel):
    """omnijourney service events (docs/EVENTS.md), typed; unknown properties pass through."""

    model_config = ConfigDict(extra="allow")

    conversation_id: Id | None = None
    message_id: Id | None = None
    call_id: Id | None = None
    author: Literal["customer", "agent", "bot"] | None = None
    text: str | None = None
    duration_seconds: float | None = Field(default=None, ge=0)
    survey_type: Literal["csat", "nps"] | None = None
    score: int | None = None
    order_id: Id | None = None


_SENT_AT_KEYS = ("sentAt", "writeKey", "receivedAt", "_metadata")


def _as_id(value: Id | None) -> str | None:
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def _aware(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def corrected_timestamp(*, received_at: datetime, sent_at: datetime | None, original: datetime | None) -> datetime:
    """Segment's clock-skew correction: receivedAt - (sentAt - originalTimestamp).

    A device whose clock is off by d stamps both sentAt and originalTimestamp off by d,
    so the difference is the true age of the event and the result is in server time.
    Without sentAt the client's time is taken as is; without any time, receivedAt.
    """
    if original is None:
        return received_at
    if sent_at is None:
        return original
    return received_at - (sent_at - original)


def _depth_exceeds(value: Any, limit: int) -> bool:
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > limit:
            return True
        if isinstance(node, dict):
            stack.extend((child, depth + 1) for child in node.values() if isinstance(child, dict | list))
        elif isinstance(node, list):
            stack.extend((child, depth + 1) for child in node if isinstance(child, dict | list))
    return False


def assigned_message_id(raw: dict[str, Any]) -> str:
    """A content hash for messages sent without messageId, so their retries still deduplicate."""
    stable = {k: v for k, v in raw.items() if k not in _SENT_AT_KEYS}
    digest = hashlib.sha256(orjson.dumps(stable, option=orjson.OPT_SORT_KEYS)).hexdigest()
    return "oj-" + digest[:40]


def _pydantic_errors(exc: ValidationError, prefix: str = "") -> list[FieldError]:
    out = []
    for err in exc.errors(include_url=False, include_input=False):
        loc = ".".join(str(p) for p in err["loc"]) or "message"
        out.append(FieldError(prefix + loc, err["msg"]))
    return out


def validate_message(
    raw: Any,
    *,
    default_type: str | None,
    source_channel: str,
    received_at: datetime,
    batch_sent_at: datetime | None,
    client_ip: str | None,
    limits: IngestLimits,
) -> ValidMessage | list[FieldError]:
    if not isinstance(raw, dict):
        return [FieldError("message", "each message must be a JSON object")]
    if default_type is not None:
        raw["type"] = default_type
    encoded = orjson.dumps(raw)
    if len(encoded) > limits.max_message_bytes:
        return [FieldError("message", f"message is {len(encoded)} bytes; the limit is {limits.max_message_bytes}")]
    try:
        env = Envelope.model_validate(raw)
    except ValidationError as exc:
        return _pydantic_errors(exc)

    errors: list[FieldError] = []
    user_id = _as_id(env.userId)
    anonymous_id = _as_id(env.anonymousId)
    if user_id is None and anonymous_id is None:
        errors.append(FieldError("userId", "userId or anonymousId is required"))
    for name in ("userId", "anonymousId", "messageId"):
        value = _as_id(getattr(env, name))
        if value is not None and len(value) > (128 if name == "messageId" else 255):
            errors.append(FieldError(name, "too long"))
    if env.type == "track" and not (env.event and env.event.strip()):
        errors.append(FieldError("event", "a track call needs an event name"))
    if env.type == "alias" and _as_id(env.previousId) is None:
        errors.append(FieldError("previousId", "an alias call needs previousId"))
    if env.type == "group" and _as_id(env.groupId) is None:
        errors.append(FieldError("groupId", "a group call needs groupId"))
    for name in ("context", "properties", "traits"):
        value = getattr(env, name)
        if value and _depth_exceeds(value, limits.max_nesting_depth):
            errors.append(FieldError(name, f"nested deeper than {limits.max_nesting_depth} levels"))
    if errors:
        return errors

    event = env.event.strip() if env.event else None
    props = env.properties or {}
    order_id = cart_id = currency = None
    revenue: float | None = None
    if env.type == "track" and event in ECOMMERCE_EVENTS:
        try:
            commerce = CommerceProperties.model_validate(props)
        except ValidationError as exc:
            return _pydantic_errors(exc, "properties.")
        order_id = _as_id(commerce.order_id)
        cart_id = _as_id(commerce.cart_id)
        currency = commerce.currency
        revenue = commerce.revenue if commerce.revenue is not None else commerce.total
        if event in ORDER_EVENTS and order_id is None:
            return [FieldError("properties.order_id", f"'{event}' needs properties.order_id")]
    elif env.type == "track" and event in SERVICE_EVENTS:
        try:
            service = ServiceProperties.model_validate(props)
        except ValidationError as exc:
            return _pydantic_errors(exc, "properties.")
        order_id = _as_id(service.order_id)
        if event == "Survey Responded":
            if service.survey_type is None or service.score is None:
                return [FieldError("properties", "'Survey Responded' needs survey_type and score")]
            low, high = (1, 5) if service.survey_type == "csat" else (0, 10)
            if not low <= service.score <= high:
                return [FieldError("properties.score", f"{service.survey_type} score must be {low}..{high}")]

    context = dict(env.context or {})
    if client_ip and "ip" not in context:
        context["ip"] = client_ip
    channel = context.get("channel")
    if not (isinstance(channel, str) and channel in CHANNELS):
        channel = source_channel

    sent_at = _aware(env.sentAt) or batch_sent_at
    original = _aware(env.originalTimestamp) or _aware(env.timestamp)
    message_id = _as_id(env.messageId) or assigned_message_id(raw)
    return ValidMessage(
        message_id=message_id,
        type=env.type,
        event=event if env.type == "track" else (env.name if env.type in ("page", "screen") else None),
        user_id=user_id,
        anonymous_id=anonymous_id,
        channel=channel,
        timestamp=corrected_timestamp(received_at=received_at, sent_at=sent_at, original=original),
        received_at=received_at,
        sent_at=sent_at,
        original_timestamp=original,
        order_id=order_id,
        cart_id=cart_id,
        revenue=revenue,
        currency=currency,
        context=context,
        payload=Encoded(encoded.decode()),
    )


def parse_time(value: Any) -> datetime | None:
    """Parse a batch-level time field leniently (an unparseable sentAt is ignored, as Segment does)."""
    if not isinstance(value, str):
        return None
    try:
        return _aware(datetime.fromisoformat(value.replace("Z", "+00:00")))
    except ValueError:
        return None
