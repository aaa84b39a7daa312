"""Segment rules compiled to one SQL boolean per segment (the set-based evaluation path).

`service.evaluate` loads facts per cluster and evaluates rules in Python; at a million profiles
that per-profile work dominates a refresh. Most conditions are plain aggregates over the
cluster's member rows, so they compile to `profiles.id IN (SELECT root ... GROUP BY root HAVING
...)`: each sub-select is uncorrelated (the database computes it once per statement) and every one
is limited to the clusters being evaluated by `root_filter` (an id range for a refresh chunk, an
id list for the touched clusters of a processing step). The whole diff of a segment is then one
SELECT returning only the profiles whose membership changes.

Exactly the semantics of `service.matches` over `service.load_facts`; a node whose semantics SQL
cannot reproduce exactly returns None and the segment stays on the Python path: `trait` (merge
strategies), `sum` of a property (JSON payloads), `average_order_value`, `lifecycle_stage`,
`preferred_*`, `channels`, string values and `in` / `contains` comparisons.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.sql.elements import ColumnElement

from omnijourney.commerce.config import CURRENCY_EXPONENTS
from omnijourney.commerce.models import Cart, CartLine
from omnijourney.identity.models import IdentityLink, Profile, ProfileEvent
from omnijourney.profiles.models import ConsentRecord, ProfileStats
from omnijourney.profiles.service import CONSENT_RESTRICTIVENESS

PROFILES = Profile.__table__
PROFILE_EVENTS = ProfileEvent.__table__
STATS = ProfileStats.__table__
CONSENTS = ConsentRecord.__table__
CARTS = Cart.__table__
CART_LINES = CartLine.__table__
LINKS = IdentityLink.__table__

#: restricts a root-id column to the clusters being evaluated
RootFilter = Callable[[Any], ColumnElement[bool]]

NUM_OPS = ("eq", "ne", "gt", "gte", "lt", "lte")
#: computed fields that are sums over the members' stats rows (0 when the cluster has none)
SUM_FIELDS = {"event_count": "event_count", "order_count": "order_count", "lifetime_revenue": "revenue"}
#: days_since_* -> (stats column, aggregate)
DAY_FIELDS = {
    "days_since_first_seen": ("first_seen", sa.func.min),
    "days_since_last_seen": ("last_seen", sa.func.max),
    "days_since_last_order": ("last_order_at", sa.func.max),
}


def _number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _cmp(x: Any, op: str, v: Any) -> ColumnElement[bool]:
    return {
        "eq": lambda: x == v,
        "ne": lambda: x != v,
        "gt": lambda: x > v,
        "gte": lambda: x >= v,
        "lt": lambda: x < v,
        "lte": lambda: x <= v,
    }[op]()


def _py_cmp(x: float, op: str, v: float) -> bool:
    return {"eq": x == v, "ne": x != v, "gt": x > v, "gte": x >= v, "lt": x < v, "lte": x <= v}[op]


def _root_in(select: sa.Select[Any]) -> ColumnElement[bool]:
    return PROFILES.c.id.in_(select)


def compile_rule(rule: dict[str, Any], *, now: datetime, root_filter: RootFilter) -> ColumnElement[bool] | None:
    """A boolean over `profiles.id` (the surviving profile) equal to `service.matches`, or None."""
    kind, c = next(iter(rule.items()))
    if kind in ("all", "any"):
        parts = [compile_rule(r, now=now, root_filter=root_filter) for r in c]
        if any(p is None for p in parts):
            return None
        return sa.and_(*parts) if kind == "all" else sa.or_(*parts)  # type: ignore[arg-type]
    if kind == "not":
        inner = compile_rule(c, now=now, root_filter=root_filter)
        return None if inner is None else sa.not_(inner)
    compiler = _ATOMS.get(kind)
    return None if compiler is None else compiler(c, now, root_filter)


def compilable(rule: dict[str, Any]) -> bool:
    return compile_rule(rule, now=datetime.now().astimezone(), root_filter=lambda col: sa.true()) is not None


# ---------------------------------------------------------------------------- atoms
# Every atom is `profiles.id IN (uncorrelated select of roots)` (or its negation); the selects
# never yield NULL, so NOT keeps two-valued logic, as `matches` does.


def _computed(c: dict[str, Any], now: datetime, rf: RootFilter) -> ColumnElement[bool] | None:
    field, op, value = c["field"], c["op"], c.get("value")
    m = PROFILES.alias()
    joined = STATS.join(m, m.c.id == STATS.c.profile_id)
    roots = sa.select(m.c.canonical_id).select_from(joined).where(rf(m.c.canonical_id)).group_by(m.c.canonical_id)
    if field in SUM_FIELDS:
        if op == "exists":
            return sa.true()  # 0 when the cluster has no stats: never None
        if op == "not_exists":
            return sa.false()
        if op not in NUM_OPS or not _number(value):
            return None
        total = sa.func.sum(STATS.c[SUM_FIELDS[field]])
        if field == "lifetime_revenue":  # round(sum, 2) as in service._computed
            total = sa.func.round(sa.cast(total, sa.Numeric(24, 6)), 2)
        hit = _root_in(roots.having(_cmp(total, op, value)))
        if _py_cmp(0, op, float(value)):  # a cluster without stats rows counts 0
            return sa.or_(hit, sa.not_(_root_in(roots)))
        return hit
    if field in DAY_FIELDS:
        column, agg = DAY_FIELDS[field]
        at = agg(STATS.c[column])
        if op == "exists":
            return _root_in(roots.having(at.is_not(None)))
        if op == "not_exists":
            return sa.not_(_root_in(roots.having(at.is_not(None))))
        if op not in ("gt", "gte", "lt", "lte") or not _number(value):
            return None
        # days since t >= v  <=>  t <= now - v days (older), and so on
        cutoff = now - timedelta(days=float(value))
        flipped = {"gt": "lt", "gte": "lte", "lt": "gt", "lte": "gte"}[op]
        return _root_in(roots.having(sa.and_(at.is_not(None), _cmp(at, flipped, cutoff))))
    return None


def _consent(c: dict[str, Any], now: datetime, rf: RootFilter) -> ColumnElement[bool] | None:
    status = c.get("status", "granted")
    if status not in CONSENT_RESTRICTIVENESS:
        return sa.false()
    m = PROFILES.alias()
    latest = (
        sa.select(
            m.c.canonical_id.label("root"),
            CONSENTS.c.status,
            sa.func.row_number()
            .over(partition_by=CONSENTS.c.profile_id, order_by=(CONSENTS.c.recorded_at.desc(), CONSENTS.c.id.desc()))
            .label("rn"),
        )
        .select_from(CONSENTS.join(m, m.c.id == CONSENTS.c.profile_id))
        .where(CONSENTS.c.purpose == c["purpose"], CONSENTS.c.channel == c["channel"], rf(m.c.canonical_id))
        .subquery()
    )
    rank = sa.case(CONSENT_RESTRICTIVENESS, value=latest.c.status, else_=-1)
    # the cluster's state is its most restrictive member's latest record
    return _root_in(
        sa.select(latest.c.root)
        .where(latest.c.rn == 1)
        .group_by(latest.c.root)
        .having(sa.func.max(rank) == CONSENT_RESTRICTIVENESS[status])
    )


def _event(c: dict[str, Any], now: datetime, rf: RootFilter) -> ColumnElement[bool] | None:
    if c.get("sum") is not None:
        return None
    pe, m = PROFILE_EVENTS, PROFILES.alias()
    where = [pe.c.event == c["name"], rf(m.c.canonical_id)]
    if c.get("within_days") is not None:
        where.append(pe.c.timestamp >= now - timedelta(days=c["within_days"]))
    if c.get("channel"):
        where.append(pe.c.channel == c["channel"])
    roots = (
        sa.select(m.c.canonical_id)
        .select_from(pe.join(m, m.c.id == pe.c.profile_id))
        .where(*where)
        .group_by(m.c.canonical_id)
    )
    if not c.get("did", True):
        return sa.not_(_root_in(roots))
    test = c.get("count")
    if test is None:
        return _root_in(roots)
    op, value = test["op"], test["value"]
    if op not in NUM_OPS or not _number(value):
        return None
    hit = _root_in(roots.having(_cmp(sa.func.count(), op, value)))
    if _py_cmp(0, op, float(value)):
        return sa.or_(hit, sa.not_(_root_in(roots)))
    return hit


def _cart(c: dict[str, Any], now: datetime, rf: RootFilter) -> ColumnElement[bool] | None:
    """The cluster's most recently changed active cart with items (bound to a member, or held by
    an anonymous id linked to one), as `commerce.active_cart_signal` picks it, then its tests."""
    items = (
        sa.select(sa.func.coalesce(sa.func.sum(CART_LINES.c.quantity), 0))
        .where(CART_LINES.c.cart_id == CARTS.c.id)
        .scalar_subquery()
    )
    m1, m2 = PROFILES.alias(), PROFILES.alias()
    cols = (CARTS.c.id.label("cart_id"), CARTS.c.updated_at, CARTS.c.value_minor, CARTS.c.currency)
    bound = (
        sa.select(m1.c.canonical_id.label("root"), *cols)
        .select_from(CARTS.join(m1, m1.c.id == CARTS.c.profile_id))
        .where(CARTS.c.status == "active", items > 0, rf(m1.c.canonical_id))
    )
    held = (
        sa.select(m2.c.canonical_id.label("root"), *cols)
        .select_from(
            CARTS.join(LINKS, sa.and_(LINKS.c.id_type == "anonymous_id", LINKS.c.value == CARTS.c.anonymous_id)).join(
                m2, m2.c.id == LINKS.c.profile_id
            )
        )
        .where(CARTS.c.profile_id.is_(None), CARTS.c.status == "active", items > 0, rf(m2.c.canonical_id))
    )
    owned = sa.union_all(bound, held).subquery()
    ranked = sa.select(
        owned,
        sa.func.row_number()
        .over(partition_by=owned.c.root, order_by=(owned.c.updated_at.desc(), owned.c.cart_id.desc()))
        .label("rn"),
    ).subquery()
    tests: list[ColumnElement[bool]] = [ranked.c.rn == 1]
    if c.get("idle_minutes_gte"):  # floor(idle minutes) >= n  <=>  unchanged since now - n minutes
        tests.append(ranked.c.updated_at <= now - timedelta(minutes=c["idle_minutes_gte"]))
    if c.get("value_gte") is not None or c.get("value_lte") is not None:
        # float(to_major(minor)) == minor / 10**exp exactly: both are the correctly rounded quotient
        minor = sa.cast(ranked.c.value_minor, sa.Float)
        by_exp = [
            (ranked.c.currency.in_(sorted(k for k, e in CURRENCY_EXPONENTS.items() if e == x)), x) for x in (0, 3)
        ]
        value = sa.case(*[(cond, minor / float(10**x)) for cond, x in by_exp], else_=minor / 100.0)
        if c.get("value_gte") is not None:
            tests.append(value >= float(c["value_gte"]))
        if c.get("value_lte") is not None:
            tests.append(value <= float(c["value_lte"]))
    return _root_in(sa.select(ranked.c.root).where(*tests))


_ATOMS: dict[str, Callable[[dict[str, Any], datetime, RootFilter], ColumnElement[bool] | None]] = {
    "computed": _computed,
    "consent": _consent,
    "event": _event,
    "cart": _cart,
}
