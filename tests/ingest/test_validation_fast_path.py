"""The validation fast path accepts only what Pydantic accepts, and gives exactly its values.

`validate_plain` either returns the `ValidMessage` that `validate_checked` (Pydantic) would,
or None (then `validate_checked` decides, and words any error); `fast_commerce` likewise for
`CommerceProperties`. These tests throw plain and awkward messages at both and compare.
"""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime
from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from omnijourney.config import IngestLimits
from omnijourney.ingest.schemas import (
    CommerceProperties,
    ValidMessage,
    fast_commerce,
    validate_checked,
    validate_message,
    validate_plain,
)

COMMERCE_FIELDS = ("order_id", "cart_id", "currency", "revenue", "total")

times = st.one_of(
    st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31)).map(
        lambda d: d.isoformat(timespec="milliseconds")
    ),
    st.datetimes(timezones=st.just(UTC)).map(lambda d: d.isoformat().replace("+00:00", "Z")),
    st.from_regex(r"\A\d{4}-\d\d-\d\d[T ]\d\d:\d\d(:\d\d(\.\d{1,8})?)?(Z|z|[+-]\d\d(:?\d\d)?)?\Z", fullmatch=True),
    st.sampled_from(
        [
            "2024-02-30T00:00:00Z",
            "2024-01-01T24:00:00Z",
            "2024-01-01T23:59:60Z",
            "2024-01-01T00:00:00+00:60",
            "2024-01-01T00:00:00+24:00",
            "2024-01-01T00:00:00+23:59",
            "2024-01-01",
            "1700000000",
            "",
            "yesterday",
        ]
    ),
    st.integers(),
    st.floats(allow_nan=False),
    st.none(),
)
ids = st.one_of(
    st.none(),
    st.text(max_size=5),
    st.integers(),
    st.booleans(),
    st.floats(allow_nan=False),
    st.lists(st.integers(), max_size=1),
)
texts = st.one_of(st.none(), st.text(max_size=210), st.integers(), st.booleans())
objects = st.one_of(
    st.none(),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=3),
    st.lists(st.integers(), max_size=2),
    st.text(max_size=3),
)
numbers = st.one_of(
    st.none(),
    st.floats(allow_nan=False),
    st.integers(),
    st.integers(min_value=2**52, max_value=2**70),
    st.booleans(),
    st.text(max_size=5),
)


def _maybe(fields: dict[str, st.SearchStrategy[Any]]) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries({}, optional=fields)


products = st.one_of(
    _maybe(
        {
            "product_id": ids,
            "sku": ids,
            "name": texts,
            "category": texts,
            "brand": texts,
            "variant": texts,
            "coupon": texts,
            "price": numbers,
            "quantity": numbers,
            "position": numbers,
            "other": objects,
        }
    ),
    st.integers(),
)
commerce = _maybe(
    {
        "order_id": ids,
        "checkout_id": ids,
        "cart_id": ids,
        "product_id": ids,
        "sku": ids,
        "price": numbers,
        "quantity": numbers,
        "revenue": numbers,
        "total": numbers,
        "subtotal": numbers,
        "value": numbers,
        "shipping": numbers,
        "tax": numbers,
        "discount": numbers,
        "currency": st.one_of(st.none(), st.text(max_size=4), st.sampled_from(["gbp", "ßab", "EUR"]), st.integers()),
        "products": st.one_of(st.none(), st.lists(products, max_size=3), st.text(max_size=2)),
    }
)


def _same(a: Any, b: Any) -> bool:
    return type(a) is type(b) and a == b if not isinstance(a, datetime) else (a == b and a.utcoffset() == b.utcoffset())


@settings(max_examples=600, deadline=None)
@given(props=commerce)
def test_fast_commerce_agrees_with_pydantic(props: dict[str, Any]) -> None:
    fast = fast_commerce(props)
    try:
        slow = CommerceProperties.model_validate(props)
    except ValidationError:
        assert fast is None, f"fast path accepted what Pydantic rejects: {props!r}"
        return
    if fast is None:
        return
    for field in COMMERCE_FIELDS:
        assert _same(getattr(fast, field), getattr(slow, field)), (field, props)


plain_ids = st.one_of(st.text(min_size=1, max_size=6), st.integers(min_value=-(2**63), max_value=2**63 - 1))
plain_times = st.one_of(
    st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31)).map(
        lambda d: d.isoformat(timespec="milliseconds")
    ),
    st.datetimes(timezones=st.just(UTC)).map(lambda d: d.isoformat().replace("+00:00", "Z")),
)
plain_commerce = _maybe(
    {
        "order_id": plain_ids,
        "cart_id": plain_ids,
        "product_id": plain_ids,
        "revenue": st.one_of(st.floats(allow_nan=False, allow_infinity=False), st.integers(-(2**60), 2**60)),
        "total": st.floats(allow_nan=False, allow_infinity=False),
        "quantity": st.integers(min_value=0, max_value=9),
        "currency": st.sampled_from(["gbp", "EUR", "ßab", "czk"]),
        "products": st.lists(
            _maybe({"sku": plain_ids, "price": st.floats(allow_nan=False), "quantity": st.integers(0, 5)}), max_size=3
        ),
    }
)
#: messages that are valid more often than not, with 0-2 fields then replaced by awkward values
messages = st.builds(
    lambda base, extra, awkward: {**base, **extra, **dict(awkward)},
    st.fixed_dictionaries(
        {
            "type": st.sampled_from(["identify", "track", "page", "screen", "group", "alias"]),
            "event": st.sampled_from(
                [
                    "Order Completed",
                    "Product Added",
                    "Cart Viewed",
                    "Survey Responded",
                    "Call Completed",
                    " E ",
                    "Custom",
                ]
            ),
        }
    ),
    _maybe(
        {
            "userId": plain_ids,
            "anonymousId": plain_ids,
            "messageId": plain_ids,
            "name": st.text(max_size=5),
            "groupId": plain_ids,
            "previousId": plain_ids,
            "timestamp": plain_times,
            "originalTimestamp": plain_times,
            "sentAt": plain_times,
            "context": st.fixed_dictionaries(
                {},
                optional={
                    "ip": st.text(max_size=3),
                    "channel": st.sampled_from(["kiosk", "server", "web"]),
                    "campaign": st.dictionaries(st.text(max_size=2), st.text(max_size=2), max_size=2),
                },
            ),
            "properties": st.one_of(
                plain_commerce,
                _maybe(
                    {
                        "survey_type": st.sampled_from(["csat", "nps", "other"]),
                        "score": st.one_of(st.integers(min_value=-1, max_value=11), st.text(max_size=2)),
                        "order_id": plain_ids,
                        "author": st.sampled_from(["customer", "robot"]),
                    }
                ),
                st.fixed_dictionaries(
                    {"x": st.recursive(st.integers(), lambda c: st.lists(c, max_size=2), max_leaves=6)}
                ),
            ),
            "traits": st.dictionaries(st.text(max_size=3), st.text(max_size=3), max_size=2),
            "integrations": st.just({}),
        }
    ),
    st.lists(
        st.tuples(
            st.sampled_from(
                [
                    "type",
                    "userId",
                    "anonymousId",
                    "messageId",
                    "event",
                    "name",
                    "groupId",
                    "previousId",
                    "timestamp",
                    "originalTimestamp",
                    "sentAt",
                    "context",
                    "properties",
                    "traits",
                    "integrations",
                ]
            ),
            st.one_of(ids, texts, times, objects, numbers, st.just(" "), st.just("x" * 300)),
        ),
        max_size=2,
    ),
)
SETTINGS = [
    dict(source_channel="web", received_at=datetime(2026, 1, 1, tzinfo=UTC), batch_sent_at=None, client_ip=None),
    dict(
        source_channel="store",
        received_at=datetime(2026, 1, 1, 12, tzinfo=UTC),
        batch_sent_at=datetime(2026, 1, 1, 11, 59, tzinfo=UTC),
        client_ip="10.1.2.3",
    ),
]


@settings(max_examples=1000, deadline=None)
@given(raw=messages, which=st.sampled_from([0, 1]), depth=st.sampled_from([3, 32]))
def test_plain_path_gives_exactly_what_the_checked_path_gives(raw: dict[str, Any], which: int, depth: int) -> None:
    try:
        encoded = orjson.dumps(raw)
    except TypeError:  # not JSON (an integer beyond 64 bits): the API never sees it
        return
    raw = orjson.loads(encoded)  # what the API hands over: parsed JSON
    kw = {**SETTINGS[which], "limits": IngestLimits(max_nesting_depth=depth)}
    try:
        checked = validate_checked(raw, encoded, **kw)
    except OverflowError:  # skew correction out of datetime's range: the plain path fails alike, or declines
        with contextlib.suppress(OverflowError):
            assert validate_plain(raw, encoded, **kw) is None
        return
    plain = validate_plain(raw, encoded, **kw)
    if plain is None:
        return  # the checked path decides: always allowed
    assert isinstance(checked, ValidMessage), f"plain path accepted what the checked path rejects: {raw!r} {checked}"
    for field in ValidMessage.__slots__:
        assert _same(getattr(plain, field), getattr(checked, field)), (field, raw)


def test_plain_path_takes_the_common_messages() -> None:
    kw = {**SETTINGS[1], "limits": IngestLimits()}
    for raw in (
        {"type": "track", "event": "Order Completed", "userId": "u", "properties": {"order_id": 7, "total": 3}},
        {"type": "page", "anonymousId": "a", "name": "Home", "timestamp": "2026-01-01T11:00:00.123Z"},
        {"type": "identify", "userId": 42, "traits": {"email": "x@example.com"}, "context": {"channel": "kiosk"}},
        {"type": "track", "event": "Survey Responded", "userId": "u", "properties": {"survey_type": "nps", "score": 9}},
    ):
        assert isinstance(validate_plain(raw, orjson.dumps(raw), **kw), ValidMessage), raw


def _validate(raw: dict[str, Any], limits: IngestLimits) -> Any:
    return validate_message(
        orjson.loads(orjson.dumps(raw)),
        default_type=None,
        source_channel="web",
        received_at=datetime(2026, 1, 1, tzinfo=UTC),
        batch_sent_at=None,
        client_ip=None,
        limits=limits,
    )


def _nested(levels: int, container: str) -> Any:
    node: Any = 1
    for _ in range(levels):
        node = {"n": node} if container == "dict" else [node]
    return node


def test_nesting_limit_is_exact_whatever_the_bracket_count() -> None:
    limits = IngestLimits(max_nesting_depth=5)
    for container in ("dict", "list"):
        # properties itself is level 1: four more levels are allowed, five are not
        ok = _validate(
            {"type": "track", "event": "E", "userId": "u", "properties": {"x": _nested(4, container)}}, limits
        )
        assert isinstance(ok, ValidMessage)
        deep = {"type": "track", "event": "E", "userId": "u", "properties": {"x": _nested(5, container)}}
        assert [(e.field, e.message) for e in _validate(deep, limits)] == [
            ("properties", "nested deeper than 5 levels")
        ]
    # many brackets, but shallow (or inside strings): the exact walk runs and accepts it
    wide = {"type": "track", "event": "E", "userId": "u", "properties": {f"k{i}": [{}] for i in range(20)}}
    wide["context"] = {"note": "{[{[{[{[{[{["}
    assert isinstance(_validate(wide, limits), ValidMessage)
    # deep context and traits are named too
    both = {"type": "identify", "userId": "u", "context": _nested(6, "dict"), "traits": {"t": _nested(6, "list")}}
    assert [e.field for e in _validate(both, limits)] == ["context", "traits"]
