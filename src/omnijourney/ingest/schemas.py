"""Validation of tracking messages.

`validate_message` turns one raw Segment message into a `ValidMessage` (the typed row the
event log stores) or a list of `FieldError`s saying precisely what is wrong. It is the
single gate for the HTTP API and the bulk importer.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import msgspec
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


# --------------------------------------------------------------------------- fast path
#
# Pydantic is the authority on what is valid and on every error message. Most messages,
# though, are plainly well typed: ids are strings, times are RFC 3339 strings, objects are
# objects. For those, msgspec's strict conversion (C, no coercion: an int is not a string,
# a bool is not an int) checks the types at a fraction of Pydantic's cost, and the code
# below gives exactly the values Pydantic would (compared field by field in
# tests/ingest/test_validation_fast_path.py). Anything unusual (a number where a string is
# expected, a bool, a date in another format, a value out of range) returns None and goes
# through Pydantic as before.

_MESSAGE_TYPES = frozenset({"identify", "track", "page", "screen", "group", "alias"})
#: what fromisoformat and Pydantic both accept, and parse identically
_RFC3339 = re.compile(
    r"\d{4}-\d\d-\d\dT(?:[01]\d|2[0-3]):[0-5]\d:[0-5]\d(?:\.\d{1,6})?(?:Z|[+-](?:[01]\d|2[0-3]):[0-5]\d)?"
)
#: beyond this an int converted to float may round differently from Pydantic: ask Pydantic
_FLOAT_SAFE_INT = 2**53
_MISSING = object()

_PlainId = str | int | None
_PlainFloat = float | int | None
_Quantity = Annotated[int, msgspec.Meta(ge=0)] | None


class _PlainEnvelope(msgspec.Struct, frozen=True):
    """The scalar `Envelope` fields, strictly typed; the rest (kept in the payload) is not copied.

    The object fields (context, properties, traits, integrations) are checked on the parsed
    message itself: converting them would copy every nested value.
    """

    type: str
    userId: _PlainId = None
    anonymousId: _PlainId = None
    messageId: _PlainId = None
    previousId: _PlainId = None
    groupId: _PlainId = None
    event: str | None = None
    name: str | None = None
    timestamp: str | None = None
    originalTimestamp: str | None = None
    sentAt: str | None = None


class _PlainProduct(msgspec.Struct, frozen=True):
    product_id: _PlainId = None
    sku: _PlainId = None
    name: str | None = None
    category: str | None = None
    brand: str | None = None
    variant: str | None = None
    coupon: str | None = None
    price: _PlainFloat = None
    quantity: _Quantity = None
    position: int | None = None


class _PlainCommerce(msgspec.Struct, frozen=True):
    """`CommerceProperties`, strictly typed. Floats are read as float | int so a big int can be declined."""

    order_id: _PlainId = None
    checkout_id: _PlainId = None
    cart_id: _PlainId = None
    product_id: _PlainId = None
    sku: _PlainId = None
    price: _PlainFloat = None
    quantity: _Quantity = None
    revenue: _PlainFloat = None
    total: _PlainFloat = None
    subtotal: _PlainFloat = None
    value: _PlainFloat = None
    shipping: _PlainFloat = None
    tax: _PlainFloat = None
    discount: _PlainFloat = None
    currency: Annotated[str, msgspec.Meta(min_length=3, max_length=3)] | None = None
    products: list[_PlainProduct] | None = None


def _plain_time(value: str | None) -> datetime | object | None:
    """A datetime parsed exactly as Pydantic would, None for None, `_MISSING` to ask Pydantic."""
    if value is None:
        return None
    if _RFC3339.fullmatch(value) is None:
        return _MISSING
    try:
        return datetime.fromisoformat(value)
    except ValueError:  # e.g. February 30th: let Pydantic word the error
        return _MISSING


def _plain_dict(value: Any) -> bool:
    return value is None or type(value) is dict


def _plain_float(value: float | int | None) -> float | object | None:
    if value is None or type(value) is float:
        return value
    if -_FLOAT_SAFE_INT <= value <= _FLOAT_SAFE_INT:
        return float(value)
    return _MISSING


class _Commerce:
    """The `CommerceProperties` attributes `validate_message` reads."""

    __slots__ = ("cart_id", "currency", "order_id", "revenue", "total")


def _unsafe_float(value: float | int | None) -> bool:
    return type(value) is int and not -_FLOAT_SAFE_INT <= value <= _FLOAT_SAFE_INT


def fast_commerce(props: dict[str, Any]) -> _Commerce | None:
    """`CommerceProperties.model_validate(props)` for plainly well-typed properties; None: use Pydantic."""
    try:
        typed = msgspec.convert(props, _PlainCommerce)
    except msgspec.ValidationError:
        return None
    if (
        _unsafe_float(typed.price)
        or _unsafe_float(typed.revenue)
        or _unsafe_float(typed.total)
        or _unsafe_float(typed.subtotal)
        or _unsafe_float(typed.value)
        or _unsafe_float(typed.shipping)
        or _unsafe_float(typed.tax)
        or _unsafe_float(typed.discount)
    ):
        return None
    if typed.products and any(_unsafe_float(p.price) for p in typed.products):
        return None
    out = _Commerce()
    out.order_id, out.cart_id = typed.order_id, typed.cart_id
    out.revenue, out.total = _plain_float(typed.revenue), _plain_float(typed.total)  # type: ignore[assignment]
    currency = typed.currency
    out.currency = currency.upper() if currency else currency
    return out


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


def _correct_or_none(received_at: datetime, sent_at: datetime | None, original: datetime | None) -> datetime | None:
    """The corrected time, or None when an absurd sentAt/timestamp pushes it outside the datetime range."""
    try:
        return corrected_timestamp(received_at=received_at, sent_at=sent_at, original=original)
    except OverflowError:
        return None


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


#: how orjson writes a NUL character: the only way one can appear in a JSON text
NUL_ESCAPE = b"\\u0000"
_NUL_MESSAGE = "contains a NUL character (\\u0000), which cannot be stored"
_MAX_NUL_ERRORS = 10


def has_nul_escape(data: bytes) -> bool:
    """Whether JSON text may hold a NUL character (False means it holds none).

    A body rarely holds a backslash at all, and looking for one byte is a memchr: about 3 µs
    for a 75 KB SDK batch where the six-byte search alone takes about 50 µs (benchmarks/README.md).
    """
    return b"\\" in data and NUL_ESCAPE in data


def _printable(path: str) -> str:
    return path.replace("\x00", "\\u0000")


def nul_errors(raw: dict[str, Any]) -> list[FieldError]:
    """One error per field path whose name or text holds a NUL character.

    PostgreSQL text and jsonb cannot hold U+0000 (SQLite can): a message carrying one would
    fail its whole transaction, so it is rejected here on its own, on both backends alike.
    Iterative, so a deeply nested message cannot exhaust the stack before the depth check.
    """
    errors: list[FieldError] = []
    stack: list[tuple[str, Any]] = [("", raw)]
    while stack and len(errors) < _MAX_NUL_ERRORS:
        path, node = stack.pop()
        if type(node) is str:
            if "\x00" in node:
                errors.append(FieldError(_printable(path) or "message", _NUL_MESSAGE))
        elif isinstance(node, dict):
            for key, value in node.items():
                child = f"{path}.{key}" if path else str(key)
                if "\x00" in str(key):
                    errors.append(FieldError(_printable(child), "the field name " + _NUL_MESSAGE))
                stack.append((child, value))
        elif isinstance(node, list):
            stack.extend((f"{path}.{i}", value) for i, value in enumerate(node))
    errors.sort(key=lambda e: e.field)
    return errors[:_MAX_NUL_ERRORS]


def _pydantic_errors(exc: ValidationError, prefix: str = "") -> list[FieldError]:
    out = []
    for err in exc.errors(include_url=False, include_input=False):
        loc = ".".join(str(p) for p in err["loc"]) or "message"
        out.append(FieldError(prefix + loc, err["msg"]))
    return out


def _plain_text_id(value: Any) -> Any:
    """`_as_id` of a plainly typed id; `_MISSING` for anything Pydantic has to look at."""
    if value is None:
        return None
    if type(value) is str:
        return value.strip() or None
    if type(value) is int:
        return str(value)
    return _MISSING


def validate_plain(
    raw: dict[str, Any],
    encoded: bytes,
    *,
    source_channel: str,
    received_at: datetime,
    batch_sent_at: datetime | None,
    client_ip: str | None,
    limits: IngestLimits,
) -> ValidMessage | None:
    """`validate_checked` for a valid, plainly typed message; None for anything else.

    It never reports an error: whatever it does not accept outright (a wrong or unusual
    type, a missing field, deep nesting, invalid properties) goes to `validate_checked`,
    which decides and words the errors. tests/ingest/test_validation_fast_path.py checks
    that both give the same `ValidMessage` wherever this one gives one.
    """
    try:
        env = msgspec.convert(raw, _PlainEnvelope)
    except msgspec.ValidationError:
        return None
    kind = env.type
    if kind not in _MESSAGE_TYPES:
        return None
    user_id = _plain_text_id(env.userId)
    anonymous_id = _plain_text_id(env.anonymousId)
    message_id = _plain_text_id(env.messageId)
    if (
        (user_id is None and anonymous_id is None)
        or (user_id is not None and len(user_id) > 255)
        or (anonymous_id is not None and len(anonymous_id) > 255)
        or (message_id is not None and len(message_id) > 128)
        or (kind == "alias" and _plain_text_id(env.previousId) is None)
        or (kind == "group" and _plain_text_id(env.groupId) is None)
    ):
        return None
    event = env.event
    if event is not None:
        if len(event) > 200:
            return None
        event = event.strip() if event else None
    if kind == "track" and not event:
        return None
    name = env.name
    timestamp = _plain_time(env.timestamp)
    original_timestamp = _plain_time(env.originalTimestamp)
    sent_at = _plain_time(env.sentAt)
    if timestamp is _MISSING or original_timestamp is _MISSING or sent_at is _MISSING:
        return None
    get = raw.get
    context = get("context")
    properties = get("properties")
    if not (
        _plain_dict(context)
        and _plain_dict(properties)
        and _plain_dict(get("traits"))
        and _plain_dict(get("integrations"))
    ):
        return None
    # Every object or array is one '{' or '[' in the encoded message (brackets inside strings
    # only add to the count), so with no more of them than the limit nothing can be nested
    # deeper; above that, validate_checked walks the message exactly.
    if encoded.count(b"{") + encoded.count(b"[") > limits.max_nesting_depth:
        return None

    order_id = cart_id = currency = None
    revenue: float | None = None
    if kind == "track" and event in ECOMMERCE_EVENTS:
        commerce = fast_commerce(properties or {})
        if commerce is None:
            return None
        order_id = _as_id(commerce.order_id)
        cart_id = _as_id(commerce.cart_id)
        currency = commerce.currency
        revenue = commerce.revenue if commerce.revenue is not None else commerce.total
        if event in ORDER_EVENTS and order_id is None:
            return None
    elif kind == "track" and event in SERVICE_EVENTS:
        try:
            service = ServiceProperties.model_validate(properties or {})
        except ValidationError:
            return None
        order_id = _as_id(service.order_id)
        if event == "Survey Responded":
            if service.survey_type is None or service.score is None:
                return None
            low, high = (1, 5) if service.survey_type == "csat" else (0, 10)
            if not low <= service.score <= high:
                return None

    context = dict(context) if context else {}
    if client_ip and "ip" not in context:
        context["ip"] = client_ip
    channel = context.get("channel")
    if not (isinstance(channel, str) and channel in CHANNELS):
        channel = source_channel

    sent = _aware(sent_at) or batch_sent_at  # type: ignore[arg-type]
    original = _aware(original_timestamp) or _aware(timestamp)  # type: ignore[arg-type]
    corrected = _correct_or_none(received_at, sent, original)
    if corrected is None:
        return None  # the checked path says why
    return ValidMessage(
        message_id=message_id or assigned_message_id(raw),
        type=kind,
        event=event if kind == "track" else (name if kind in ("page", "screen") else None),
        user_id=user_id,
        anonymous_id=anonymous_id,
        channel=channel,
        timestamp=corrected,
        received_at=received_at,
        sent_at=sent,
        original_timestamp=original,
        order_id=order_id,
        cart_id=cart_id,
        revenue=revenue,
        currency=currency,
        context=context,
        payload=Encoded(encoded, "utf-8"),
    )


def validate_message(
    raw: Any,
    *,
    default_type: str | None,
    source_channel: str,
    received_at: datetime,
    batch_sent_at: datetime | None,
    client_ip: str | None,
    limits: IngestLimits,
    may_contain_nul: bool = True,
) -> ValidMessage | list[FieldError]:
    """The one gate: a `ValidMessage` to store, or the reasons the message is rejected.

    `may_contain_nul=False` skips the NUL search when the caller has already searched the
    whole request for `NUL_ESCAPE` once (the HTTP API) and found none.
    """
    if not isinstance(raw, dict):
        return [FieldError("message", "each message must be a JSON object")]
    if default_type is not None:
        raw["type"] = default_type
    encoded = orjson.dumps(raw)
    if len(encoded) > limits.max_message_bytes:
        return [FieldError("message", f"message is {len(encoded)} bytes; the limit is {limits.max_message_bytes}")]
    if may_contain_nul and has_nul_escape(encoded):
        # a "\\u0000" typed as text (an escaped backslash) matches too; the walk tells them apart
        found = nul_errors(raw)
        if found:
            return found
    plain = validate_plain(
        raw,
        encoded,
        source_channel=source_channel,
        received_at=received_at,
        batch_sent_at=batch_sent_at,
        client_ip=client_ip,
        limits=limits,
    )
    if plain is not None:
        return plain
    return validate_checked(
        raw,
        encoded,
        source_channel=source_channel,
        received_at=received_at,
        batch_sent_at=batch_sent_at,
        client_ip=client_ip,
        limits=limits,
    )


def validate_checked(
    raw: dict[str, Any],
    encoded: bytes,
    *,
    source_channel: str,
    received_at: datetime,
    batch_sent_at: datetime | None,
    client_ip: str | None,
    limits: IngestLimits,
) -> ValidMessage | list[FieldError]:
    """Validate with Pydantic: every message, valid or not, with precise errors."""
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
    # Every object or array is one '{' or '[' in the encoded message (and brackets inside
    # strings only add to the count), so a message with no more of them than the limit
    # cannot be nested deeper: the exact walk is only needed above that.
    if encoded.count(b"{") + encoded.count(b"[") > limits.max_nesting_depth:
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
    corrected = _correct_or_none(received_at, sent_at, original)
    if corrected is None:
        return [FieldError("sentAt", "sentAt and the event time are too far apart to correct the clock skew")]
    return ValidMessage(
        message_id=message_id,
        type=env.type,
        event=event if env.type == "track" else (env.name if env.type in ("page", "screen") else None),
        user_id=user_id,
        anonymous_id=anonymous_id,
        channel=channel,
        timestamp=corrected,
        received_at=received_at,
        sent_at=sent_at,
        original_timestamp=original,
        order_id=order_id,
        cart_id=cart_id,
        revenue=revenue,
        currency=currency,
        context=context,
        payload=Encoded(encoded, "utf-8"),
    )


def parse_time(value: Any) -> datetime | None:
    """Parse a batch-level time field leniently (an unparseable sentAt is ignored, as Segment does)."""
    if not isinstance(value, str):
        return None
    try:
        return _aware(datetime.fromisoformat(value.replace("Z", "+00:00")))
    except ValueError:
        return None
