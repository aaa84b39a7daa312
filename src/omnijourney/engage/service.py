"""Segments: definitions (configuration + API, versioned), evaluation and membership.

Evaluation is set-based per call: the facts the active segments need (stats, counters, traits,
consents, the cart signal, event aggregates) are loaded for all the given clusters in a handful
of queries, every rule is evaluated in memory, and only the differences are written: membership
rows, history rows and one `Segment Entered` / `Segment Exited` event per change, appended to the
log through the commerce outbox path under the internal source `omnijourney:engage` (message ids
`oj:segment:<key>:<profile>:<entered|left>:<n>`, so a replay never appends twice).

Membership is kept per surviving profile. A membership still held by a member that has since
been merged into another profile moves to the survivor (no event: the person did not change).
"""

from __future__ import annotations

import csv
import io
import logging
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from omnijourney.commerce import events as outbox
from omnijourney.commerce import service as commerce
from omnijourney.engage import rules_sql
from omnijourney.engage.models import Segment, SegmentHistory, SegmentMember, SegmentVersion
from omnijourney.engage.schemas import EngageConfig, SegmentIn, SegmentUpdate
from omnijourney.identity import service as identity
from omnijourney.identity.models import Profile, ProfileEvent
from omnijourney.ingest.models import Event
from omnijourney.profiles import service as profiles
from omnijourney.profiles.config import ProfileConfig
from omnijourney.profiles.models import ConsentRecord, ProfileCounter, ProfileStats, ProfileTrait
from omnijourney.profiles.traits import merge_member_traits
from omnijourney.store import dialect

log = logging.getLogger(__name__)

SEGMENTS = Segment.__table__
VERSIONS = SegmentVersion.__table__
MEMBERS = SegmentMember.__table__
HISTORY = SegmentHistory.__table__
PROFILES = Profile.__table__
PROFILE_EVENTS = ProfileEvent.__table__
EVENTS = Event.__table__
STATS = ProfileStats.__table__
COUNTERS = ProfileCounter.__table__
TRAITS = ProfileTrait.__table__
CONSENTS = ConsentRecord.__table__

SOURCE_NAME = "omnijourney:engage"
ORIGIN = "engage"
ENTERED, LEFT = "Segment Entered", "Segment Exited"
CHUNK = 500


class SegmentError(ValueError):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


# ============================================================================ definitions


def _row_dict(r: Any) -> dict[str, Any]:
    return {
        "key": r.key,
        "name": r.name,
        "description": r.description,
        "rule": r.rule,
        "origin": r.origin,
        "version": r.version,
        "active": bool(r.active),
        "updated_at": r.updated_at,
        "updated_by": r.updated_by,
    }


def _record_version(
    conn: Connection, key: str, version: int, name: str, rule: Any, active: bool, now: datetime, actor: str
) -> None:
    conn.execute(
        sa.insert(VERSIONS).values(
            segment_key=key,
            version=version,
            name=name,
            rule=rule,
            active=active,
            changed_at=now,
            changed_by=actor[:100],
        )
    )


def sync_config(*, conn: Connection, config: EngageConfig, now: datetime) -> list[str]:
    """Make the stored configuration segments match engage.yaml (a changed one gets a new version,
    one removed from the file is deactivated). Returns the keys that changed."""
    stored = {r.key: r for r in conn.execute(sa.select(SEGMENTS))}
    changed = []
    for seg in config.segments:
        have = stored.get(seg.key)
        if have is not None and have.origin != "config":
            log.warning("engage: config segment %s ignored: an API segment has that key", seg.key)
            continue
        if have is None:
            conn.execute(
                dialect.insert_ignoring_conflicts(conn, SEGMENTS, ["key"]),
                [
                    {
                        "key": seg.key,
                        "name": seg.name,
                        "description": seg.description,
                        "rule": seg.rule,
                        "origin": "config",
                        "version": 1,
                        "active": True,
                        "updated_at": now,
                        "updated_by": "config",
                    }
                ],
            )
            _record_version(conn, seg.key, 1, seg.name, seg.rule, True, now, "config")
            changed.append(seg.key)
        elif have.rule != seg.rule or have.name != seg.name or have.description != seg.description or not have.active:
            version = have.version + 1
            conn.execute(
                sa.update(SEGMENTS)
                .where(SEGMENTS.c.key == seg.key)
                .values(
                    name=seg.name,
                    description=seg.description,
                    rule=seg.rule,
                    version=version,
                    active=True,
                    updated_at=now,
                    updated_by="config",
                )
            )
            _record_version(conn, seg.key, version, seg.name, seg.rule, True, now, "config")
            changed.append(seg.key)
    wanted = {s.key for s in config.segments}
    for key, have in stored.items():
        if have.origin == "config" and have.active and key not in wanted:
            _deactivate(conn, have, now, "config")
            changed.append(key)
    return changed


def list_segments(*, conn: Connection, include_inactive: bool = False) -> list[dict[str, Any]]:
    stmt = sa.select(SEGMENTS).order_by(SEGMENTS.c.key)
    if not include_inactive:
        stmt = stmt.where(SEGMENTS.c.active)
    rows = conn.execute(stmt).all()
    counts = dict(conn.execute(sa.select(MEMBERS.c.segment_key, sa.func.count()).group_by(MEMBERS.c.segment_key)).all())
    return [{**_row_dict(r), "count": int(counts.get(r.key, 0))} for r in rows]


def get_segment(*, conn: Connection, key: str, active_only: bool = True) -> dict[str, Any]:
    stmt = sa.select(SEGMENTS).where(SEGMENTS.c.key == key)
    row = conn.execute(stmt).first()
    if row is None or (active_only and not row.active):
        raise SegmentError(404, "not_found", f"no segment {key!r}")
    return _row_dict(row)


def segment_versions(*, conn: Connection, key: str) -> list[dict[str, Any]]:
    rows = conn.execute(sa.select(VERSIONS).where(VERSIONS.c.segment_key == key).order_by(VERSIONS.c.version)).all()
    if not rows:
        raise SegmentError(404, "not_found", f"no segment {key!r}")
    return [dict(r._mapping) for r in rows]


def create_segment(*, conn: Connection, segment: SegmentIn, actor: str, now: datetime) -> dict[str, Any]:
    row = conn.execute(dialect.for_update(sa.select(SEGMENTS).where(SEGMENTS.c.key == segment.key), conn)).first()
    if row is not None and row.active:
        raise SegmentError(409, "exists", f"segment {segment.key!r} exists; update it with PUT")
    if row is not None and row.origin == "config":
        raise SegmentError(409, "config_segment", f"{segment.key!r} is a configuration segment (engage.yaml)")
    values = {
        "name": segment.name,
        "description": segment.description,
        "rule": segment.rule,
        "active": True,
        "updated_at": now,
        "updated_by": actor[:100],
    }
    if row is None:
        version = 1
        inserted = conn.execute(
            dialect.insert_ignoring_conflicts(conn, SEGMENTS, ["key"]),
            [{"key": segment.key, "origin": "api", "version": version, **values}],
        ).rowcount
        if inserted == 0:
            raise SegmentError(409, "exists", f"segment {segment.key!r} exists")
    else:  # re-created after a delete: the history continues
        version = row.version + 1
        conn.execute(sa.update(SEGMENTS).where(SEGMENTS.c.key == segment.key).values(version=version, **values))
    _record_version(conn, segment.key, version, segment.name, segment.rule, True, now, actor)
    return get_segment(conn=conn, key=segment.key)


def update_segment(*, conn: Connection, key: str, update: SegmentUpdate, actor: str, now: datetime) -> dict[str, Any]:
    row = conn.execute(dialect.for_update(sa.select(SEGMENTS).where(SEGMENTS.c.key == key), conn)).first()
    if row is None or not row.active:
        raise SegmentError(404, "not_found", f"no segment {key!r}")
    if row.origin == "config":
        raise SegmentError(409, "config_segment", f"{key!r} is defined in engage.yaml; change it there")
    name = update.name if update.name is not None else row.name
    rule = update.rule if update.rule is not None else row.rule
    description = update.description if update.description is not None else row.description
    if (name, rule, description) == (row.name, row.rule, row.description):
        return _row_dict(row)
    version = row.version + 1
    conn.execute(
        sa.update(SEGMENTS)
        .where(SEGMENTS.c.key == key)
        .values(name=name, rule=rule, description=description, version=version, updated_at=now, updated_by=actor[:100])
    )
    _record_version(conn, key, version, name, rule, True, now, actor)
    return get_segment(conn=conn, key=key)


def _deactivate(conn: Connection, row: Any, now: datetime, actor: str) -> None:
    version = row.version + 1
    conn.execute(
        sa.update(SEGMENTS)
        .where(SEGMENTS.c.key == row.key)
        .values(active=False, version=version, updated_at=now, updated_by=actor[:100])
    )
    _record_version(conn, row.key, version, row.name, row.rule, False, now, actor)
    conn.execute(sa.delete(MEMBERS).where(MEMBERS.c.segment_key == row.key))


def delete_segment(*, conn: Connection, key: str, actor: str, now: datetime) -> None:
    """Deactivate (the versions and the membership history stay); members are dropped without events."""
    row = conn.execute(dialect.for_update(sa.select(SEGMENTS).where(SEGMENTS.c.key == key), conn)).first()
    if row is None or not row.active:
        raise SegmentError(404, "not_found", f"no segment {key!r}")
    if row.origin == "config":
        raise SegmentError(409, "config_segment", f"{key!r} is defined in engage.yaml; remove it there")
    _deactivate(conn, row, now, actor)


def active_segments(*, conn: Connection, keys: Iterable[str] | None = None) -> list[dict[str, Any]]:
    stmt = sa.select(SEGMENTS).where(SEGMENTS.c.active).order_by(SEGMENTS.c.key)
    if keys is not None:
        stmt = stmt.where(SEGMENTS.c.key.in_(list(keys)))
    return [_row_dict(r) for r in conn.execute(stmt)]


# ============================================================================ facts


def _walk(rule: dict[str, Any]) -> Iterable[tuple[str, dict[str, Any]]]:
    for kind, value in rule.items():
        if kind in ("all", "any"):
            for r in value:
                yield from _walk(r)
        elif kind == "not":
            yield from _walk(value)
        else:
            yield kind, value


def _event_key(c: dict[str, Any]) -> tuple[Any, ...]:
    s = c.get("sum")
    return (c["name"], c.get("within_days"), c.get("channel"), s["property"] if s else None)


@dataclass
class Facts:
    """What the rules read about one cluster."""

    root: int
    members: list[int]
    stats: dict[str, Any] | None = None
    computed: dict[str, Any] = field(default_factory=dict)
    traits: dict[str, Any] = field(default_factory=dict)
    consents: dict[tuple[str, str], str] = field(default_factory=dict)
    cart: dict[str, Any] | None = None
    #: _event_key -> (count, sum)
    events: dict[tuple[Any, ...], tuple[int, float]] = field(default_factory=dict)


def _chunks(values: Sequence[Any], n: int = CHUNK) -> Iterable[Sequence[Any]]:
    for i in range(0, len(values), n):
        yield values[i : i + n]


def load_facts(
    *,
    conn: Connection,
    roots: Sequence[int],
    segments: Sequence[dict[str, Any]],
    now: datetime,
    profile_config: ProfileConfig,
) -> dict[int, Facts]:
    conditions = [c for s in segments for c in _walk(s["rule"])]
    kinds = {k for k, _ in conditions}
    cluster: dict[int, list[int]] = defaultdict(list)
    for chunk in _chunks(sorted(set(roots))):
        for pid, root in conn.execute(
            sa.select(PROFILES.c.id, PROFILES.c.canonical_id)
            .where(PROFILES.c.canonical_id.in_(chunk))
            .order_by(PROFILES.c.id)
        ):
            cluster[root].append(pid)
    facts = {root: Facts(root=root, members=m) for root, m in cluster.items()}
    owner = {pid: root for root, ms in cluster.items() for pid in ms}
    all_members = sorted(owner)
    if "computed" in kinds:
        stats_rows: dict[int, list[Any]] = defaultdict(list)
        counters: dict[int, dict[tuple[str, str], list[Any]]] = defaultdict(dict)
        for chunk in _chunks(all_members):
            for r in conn.execute(sa.select(STATS).where(STATS.c.profile_id.in_(chunk))):
                stats_rows[owner[r.profile_id]].append(r)
            for r in conn.execute(
                sa.select(COUNTERS).where(COUNTERS.c.profile_id.in_(chunk), COUNTERS.c.kind.in_(["channel", "store"]))
            ):
                cur = counters[owner[r.profile_id]].setdefault((r.kind, r.key), [0, r.last_at])
                cur[0] += r.count
                cur[1] = max(cur[1], r.last_at)
        for root, f in facts.items():
            f.computed = _computed(stats_rows.get(root, []), counters.get(root, {}), now, profile_config)
    if "trait" in kinds:
        by: dict[int, dict[str, list[dict[str, Any]]]] = defaultdict(lambda: defaultdict(list))
        wanted = sorted({c["key"] for k, c in conditions if k == "trait"})
        for chunk in _chunks(all_members):
            for r in conn.execute(sa.select(TRAITS).where(TRAITS.c.profile_id.in_(chunk), TRAITS.c.key.in_(wanted))):
                by[owner[r.profile_id]][r.key].append(
                    {"value": r.value, "observed_at": r.observed_at, "first_observed_at": r.first_observed_at}
                )
        for root, keys in by.items():
            facts[root].traits = {
                k: merge_member_traits(profile_config.strategy(k), states)["value"] for k, states in keys.items()
            }
    if "consent" in kinds:
        latest: dict[tuple[int, str, str], str] = {}
        for chunk in _chunks(all_members):
            for r in conn.execute(
                sa.select(CONSENTS.c.profile_id, CONSENTS.c.purpose, CONSENTS.c.channel, CONSENTS.c.status)
                .where(CONSENTS.c.profile_id.in_(chunk))
                .order_by(CONSENTS.c.recorded_at, CONSENTS.c.id)
            ):
                latest[(r.profile_id, r.purpose, r.channel)] = r.status
        rank = profiles.CONSENT_RESTRICTIVENESS
        for (pid, purpose, channel), status in latest.items():
            f = facts[owner[pid]]
            have = f.consents.get((purpose, channel))
            if have is None or rank[status] > rank[have]:
                f.consents[(purpose, channel)] = status
    if "cart" in kinds:
        for f in facts.values():
            f.cart = commerce.active_cart_signal(conn=conn, member_ids=f.members, now=now)
    event_conditions = {_event_key(c): c for k, c in conditions if k == "event"}
    for key in event_conditions:
        name, days, channel, prop = key
        pe = PROFILE_EVENTS
        where = [pe.c.event == name]
        if days is not None:
            where.append(pe.c.timestamp >= now - timedelta(days=days))
        if channel:
            where.append(pe.c.channel == channel)
        for chunk in _chunks(all_members):
            if prop is None:
                rows = conn.execute(
                    sa.select(pe.c.profile_id, sa.func.count())
                    .where(pe.c.profile_id.in_(chunk), *where)
                    .group_by(pe.c.profile_id)
                ).all()
                for pid, n in rows:
                    f = facts[owner[pid]]
                    cnt, total = f.events.get(key, (0, 0.0))
                    f.events[key] = (cnt + int(n), total)
            else:
                rows = conn.execute(
                    sa.select(pe.c.profile_id, EVENTS.c.revenue, EVENTS.c.payload)
                    .join(EVENTS, EVENTS.c.id == pe.c.event_id)
                    .where(pe.c.profile_id.in_(chunk), *where)
                ).all()
                for pid, revenue, payload in rows:
                    f = facts[owner[pid]]
                    cnt, total = f.events.get(key, (0, 0.0))
                    f.events[key] = (cnt + 1, total + _property_number(prop, revenue, payload))
    return facts


def _property_number(prop: str, revenue: float | None, payload: Any) -> float:
    if prop == "revenue" and revenue is not None:
        return float(revenue)
    props = payload.get("properties") if isinstance(payload, dict) else None
    value = props.get(prop) if isinstance(props, dict) else None
    if isinstance(value, bool) or not isinstance(value, int | float):
        return 0.0
    return float(value)


def _computed(
    rows: list[Any], counters: dict[tuple[str, str], list[Any]], now: datetime, config: ProfileConfig
) -> dict[str, Any]:
    channel = sorted(((-v[0], k[1]) for k, v in counters.items() if k[0] == "channel"))
    store = sorted(((-v[0], k[1]) for k, v in counters.items() if k[0] == "store"))
    out: dict[str, Any] = {
        "channels": [k for _, k in channel],
        "preferred_channel": channel[0][1] if channel else None,
        "preferred_store": store[0][1] if store else None,
    }
    if not rows:
        out.update(event_count=0, order_count=0, lifetime_revenue=0.0)
        return out
    order_count = sum(r.order_count for r in rows)
    revenue = round(sum(r.revenue for r in rows), 2)
    last_order = max((r.last_order_at for r in rows if r.last_order_at is not None), default=None)
    nps = max(((r.nps_at, r.nps) for r in rows if r.nps_at is not None), default=None, key=lambda x: x[0])
    stats = {
        "order_count": order_count,
        "stage_rank": max(r.stage_rank for r in rows),
        "nps_last": {"score": nps[1], "at": nps[0]} if nps else None,
    }
    first_seen, last_seen = min(r.first_seen for r in rows), max(r.last_seen for r in rows)
    out.update(
        event_count=sum(r.event_count for r in rows),
        order_count=order_count,
        lifetime_revenue=revenue,
        average_order_value=round(revenue / order_count, 2) if order_count else None,
        days_since_first_seen=(now - first_seen).total_seconds() / 86400,
        days_since_last_seen=(now - last_seen).total_seconds() / 86400,
        days_since_last_order=(now - last_order).total_seconds() / 86400 if last_order else None,
        lifecycle_stage=profiles.lifecycle_stage(stats, config),
    )
    return out


# ============================================================================ evaluation


def _compare(actual: Any, op: str, value: Any) -> bool:
    if op == "exists":
        return actual is not None
    if op == "not_exists":
        return actual is None
    if op == "contains":
        if isinstance(actual, list):
            return value in actual
        return isinstance(actual, str) and isinstance(value, str) and value.lower() in actual.lower()
    if op == "in":
        return actual in value
    if op == "not_in":
        return actual not in value
    if op == "eq":
        return bool(actual == value)
    if op == "ne":
        return bool(actual != value)
    if actual is None or isinstance(actual, bool):
        return False
    try:
        if isinstance(value, str) or isinstance(actual, str):
            a, b = str(actual), str(value)
        else:
            a, b = float(actual), float(value)
    except (TypeError, ValueError):
        return False
    return {"gt": a > b, "gte": a >= b, "lt": a < b, "lte": a <= b}[op]  # type: ignore[operator]


def matches(rule: dict[str, Any], f: Facts) -> bool:
    kind, c = next(iter(rule.items()))
    if kind == "all":
        return all(matches(r, f) for r in c)
    if kind == "any":
        return any(matches(r, f) for r in c)
    if kind == "not":
        return not matches(c, f)
    if kind == "trait":
        return _compare(f.traits.get(c["key"]), c["op"], c.get("value"))
    if kind == "computed":
        return _compare(f.computed.get(c["field"]), c["op"], c.get("value"))
    if kind == "consent":
        return f.consents.get((c["purpose"], c["channel"])) == c["status"]
    if kind == "cart":
        cart = f.cart
        if cart is None or cart["idle_minutes"] < c.get("idle_minutes_gte", 0):
            return False
        value = float(cart["value"])  # major units, as a decimal string
        if c.get("value_gte") is not None and value < c["value_gte"]:
            return False
        return not (c.get("value_lte") is not None and value > c["value_lte"])
    if kind == "event":
        count, total = f.events.get(_event_key(c), (0, 0.0))
        if not c.get("did", True):
            return count == 0
        if c.get("count") is None and c.get("sum") is None:
            return count > 0
        ok = True
        if c.get("count") is not None:
            ok = ok and _compare(count, c["count"]["op"], c["count"]["value"])
        if c.get("sum") is not None:
            ok = ok and _compare(total, c["sum"]["op"], c["sum"]["value"])
        return ok
    raise ValueError(f"unknown rule node {kind!r}")


def _move_merged_memberships(conn: Connection, root_filter: rules_sql.RootFilter) -> None:
    """Memberships held by members that are no longer roots move to their survivor (no event)."""
    rows = conn.execute(
        sa.select(MEMBERS, PROFILES.c.canonical_id)
        .join(PROFILES, PROFILES.c.id == MEMBERS.c.profile_id)
        .where(PROFILES.c.id != PROFILES.c.canonical_id, root_filter(PROFILES.c.canonical_id))
    ).all()
    for r in sorted(rows, key=lambda r: (r.segment_key, r.entered_at, r.profile_id)):
        conn.execute(
            sa.delete(MEMBERS).where(MEMBERS.c.segment_key == r.segment_key, MEMBERS.c.profile_id == r.profile_id)
        )
        conn.execute(
            dialect.insert_ignoring_conflicts(conn, MEMBERS, ["segment_key", "profile_id"]),
            [
                {
                    "segment_key": r.segment_key,
                    "profile_id": r.canonical_id,
                    "entered_at": r.entered_at,
                    "version": r.version,
                }
            ],
        )


def _in_list(ids: Sequence[int]) -> rules_sql.RootFilter:
    return lambda col: col.in_(list(ids))


def _in_range(after: int, last: int) -> rules_sql.RootFilter:
    return lambda col: sa.and_(col > after, col <= last)


def _sql_changes(
    conn: Connection, seg: dict[str, Any], now: datetime, root_filter: rules_sql.RootFilter
) -> tuple[list[int], list[int]] | None:
    """(entering, leaving) roots of a compilable segment among the filtered clusters, in one
    SELECT that returns only the changes; None if the rule needs the Python path."""
    inside = rules_sql.compile_rule(seg["rule"], now=now, root_filter=root_filter)
    if inside is None:
        return None
    p = PROFILES
    was = sa.exists().where(MEMBERS.c.segment_key == seg["key"], MEMBERS.c.profile_id == p.c.id)
    now_in = sa.case((inside, 1), else_=0)
    rows = conn.execute(
        sa.select(p.c.id, now_in.label("inside"))
        .where(p.c.id == p.c.canonical_id, root_filter(p.c.id), now_in != sa.case((was, 1), else_=0))
        .order_by(p.c.id)
    ).all()
    return [r.id for r in rows if r.inside], [r.id for r in rows if not r.inside]


def evaluate(
    *,
    conn: Connection,
    roots: Sequence[int],
    segments: Sequence[dict[str, Any]],
    now: datetime,
    profile_config: ProfileConfig,
    reason: str = "event",
    emit_events: bool = True,
    compile_rules: bool = True,
    root_range: tuple[int, int] | None = None,
) -> dict[str, int]:
    """Re-evaluate `segments` for the clusters of `roots` (surviving ids); apply entries and exits.

    A segment whose rule compiles to SQL (`rules_sql`) is diffed by the database; the others are
    evaluated in Python over facts loaded for the clusters. `compile_rules=False` forces the
    Python path for every segment (the reference the SQL path is tested against).
    `root_range=(after, last)` says `roots` are all surviving ids in that range (a refresh
    chunk), so the SQL path filters by range instead of by list."""
    if not roots or not segments:
        return {"entered": 0, "left": 0}
    root_ids = sorted(set(roots))
    filters = [_in_range(*root_range)] if root_range is not None else [_in_list(c) for c in _chunks(root_ids)]
    for rf in filters:
        _move_merged_memberships(conn, rf)
    entered: list[tuple[dict[str, Any], int]] = []
    left: list[tuple[dict[str, Any], int]] = []
    python_segments = []
    for seg in segments:
        changes = [_sql_changes(conn, seg, now, rf) for rf in filters] if compile_rules else [None]
        if any(c is None for c in changes):
            python_segments.append(seg)
            continue
        for ins, outs in changes:  # type: ignore[misc]
            entered.extend((seg, p) for p in ins)
            left.extend((seg, p) for p in outs)
    if python_segments:
        e, lft = _python_changes(conn, root_ids, python_segments, now, profile_config)
        entered += e
        left += lft
    if entered:
        conn.execute(
            sa.insert(MEMBERS),
            [
                {"segment_key": s["key"], "profile_id": p, "entered_at": now, "version": s["version"]}
                for s, p in entered
            ],
        )
    by_segment: dict[str, list[int]] = defaultdict(list)
    for s, p in left:
        by_segment[s["key"]].append(p)
    for key, pids in by_segment.items():
        for chunk in _chunks(pids):
            conn.execute(sa.delete(MEMBERS).where(MEMBERS.c.segment_key == key, MEMBERS.c.profile_id.in_(chunk)))
    changes = [(s, p, "entered") for s, p in entered] + [(s, p, "left") for s, p in left]
    if changes:
        _record_history(conn, changes, now, reason, emit_events)
    return {"entered": len(entered), "left": len(left)}


def _python_changes(
    conn: Connection,
    root_ids: Sequence[int],
    segments: Sequence[dict[str, Any]],
    now: datetime,
    profile_config: ProfileConfig,
) -> tuple[list[tuple[dict[str, Any], int]], list[tuple[dict[str, Any], int]]]:
    """Facts loaded set-based, rules evaluated per cluster in Python."""
    facts = load_facts(conn=conn, roots=root_ids, segments=segments, now=now, profile_config=profile_config)
    keys = [s["key"] for s in segments]
    current: set[tuple[str, int]] = set()
    roots = sorted(facts)
    for chunk in _chunks(roots):
        current.update(
            (k, p)
            for k, p in conn.execute(
                sa.select(MEMBERS.c.segment_key, MEMBERS.c.profile_id).where(
                    MEMBERS.c.profile_id.in_(chunk), MEMBERS.c.segment_key.in_(keys)
                )
            )
        )
    entered: list[tuple[dict[str, Any], int]] = []
    left: list[tuple[dict[str, Any], int]] = []
    for seg in segments:
        for root in roots:
            try:
                inside = matches(seg["rule"], facts[root])
            except (TypeError, ValueError, KeyError) as exc:  # never stop the stage: keep the current state
                log.warning("engage: segment %s on profile %s not evaluated: %s", seg["key"], root, exc)
                continue
            was = (seg["key"], root) in current
            if inside and not was:
                entered.append((seg, root))
            elif was and not inside:
                left.append((seg, root))
    return entered, left


def _record_history(
    conn: Connection, changes: list[tuple[dict[str, Any], int, str]], now: datetime, reason: str, emit_events: bool
) -> None:
    pids = sorted({p for _, p, _ in changes})
    seqs: dict[tuple[str, int, str], int] = {}
    for chunk in _chunks(pids):
        for k, p, a, n in conn.execute(
            sa.select(HISTORY.c.segment_key, HISTORY.c.profile_id, HISTORY.c.action, sa.func.max(HISTORY.c.seq))
            .where(HISTORY.c.profile_id.in_(chunk))
            .group_by(HISTORY.c.segment_key, HISTORY.c.profile_id, HISTORY.c.action)
        ):
            seqs[(k, p, a)] = int(n)
    rows = []
    for seg, pid, action in sorted(changes, key=lambda c: (c[1], c[0]["key"], c[2])):
        seq = seqs.get((seg["key"], pid, action), 0) + 1
        seqs[(seg["key"], pid, action)] = seq
        rows.append(
            {
                "segment_key": seg["key"],
                "profile_id": pid,
                "action": action,
                "seq": seq,
                "version": seg["version"],
                "at": now,
                "reason": reason[:32],
                "_name": seg["name"],
            }
        )
    conn.execute(sa.insert(HISTORY), [{k: v for k, v in r.items() if k != "_name"} for r in rows])
    if not emit_events:
        return
    # appended last, in one statement: on PostgreSQL the event-log lock is then held as briefly as possible
    owners = outbox.owners_of(conn, profile_ids=pids)
    source_id = outbox.internal_source_id(conn, name=SOURCE_NAME)
    prepared = []
    for r in rows:
        message_id = f"oj:segment:{r['segment_key']}:{r['profile_id']}:{r['action']}:{r['seq']}"
        owner = owners.get(r["profile_id"])
        if owner is None:
            log.info("%s: %s has no owner to put on a timeline", ORIGIN, message_id)
            continue
        prepared.append(
            outbox.prepare(
                conn,
                message_id=message_id,
                event=ENTERED if r["action"] == "entered" else LEFT,
                channel="other",
                profile_id=r["profile_id"],
                anonymous_id=None,
                properties={
                    "segment": r["segment_key"],
                    "segment_name": r["_name"],
                    "segment_version": r["version"],
                    "reason": r["reason"],
                },
                now=now,
                source_name=SOURCE_NAME,
                origin=ORIGIN,
                fallback_anonymous_id=f"oj-profile-{r['profile_id']}",
                owner=owner,
                source_id=source_id,
            )
        )
    outbox.append(conn, prepared)


def engage_source_id(conn: Connection) -> int | None:
    return outbox.internal_source_id(conn, create=False, name=SOURCE_NAME)


def roots_of(*, conn: Connection, member_ids: Iterable[int]) -> list[int]:
    out: set[int] = set()
    ids = sorted(set(member_ids))
    for chunk in _chunks(ids):
        out.update(r[0] for r in conn.execute(sa.select(PROFILES.c.canonical_id).where(PROFILES.c.id.in_(chunk))))
    return sorted(out)


def refresh_chunk(
    *,
    conn: Connection,
    after: int,
    limit: int,
    now: datetime,
    profile_config: ProfileConfig,
    keys: Sequence[str] | None = None,
    compile_rules: bool = True,
) -> tuple[int | None, dict[str, int]]:
    """Re-evaluate the next `limit` surviving profiles after id `after` (the time-based sweep:
    'within a period' conditions change with the clock). Returns (next cursor or None, counts)."""
    roots = [
        r[0]
        for r in conn.execute(
            sa.select(PROFILES.c.id)
            .where(PROFILES.c.id > after, PROFILES.c.id == PROFILES.c.canonical_id)
            .order_by(PROFILES.c.id)
            .limit(limit)
        )
    ]
    segs = active_segments(conn=conn, keys=keys)
    counts = evaluate(
        conn=conn,
        roots=roots,
        segments=segs,
        now=now,
        profile_config=profile_config,
        reason="refresh",
        compile_rules=compile_rules,
        root_range=(after, roots[-1]) if roots else None,
    )
    return (roots[-1] if len(roots) == limit else None), counts


# ============================================================================ reads


def count(*, conn: Connection, key: str) -> int:
    get_segment(conn=conn, key=key)
    return int(conn.execute(sa.select(sa.func.count()).where(MEMBERS.c.segment_key == key)).scalar_one())


def members(*, conn: Connection, key: str, after: int | None = None, limit: int = 100) -> list[dict[str, Any]]:
    get_segment(conn=conn, key=key)
    stmt = sa.select(MEMBERS).where(MEMBERS.c.segment_key == key).order_by(MEMBERS.c.profile_id).limit(limit)
    if after is not None:
        stmt = stmt.where(MEMBERS.c.profile_id > after)
    return [{"profile_id": r.profile_id, "entered_at": r.entered_at, "version": r.version} for r in conn.execute(stmt)]


def export_csv(*, conn: Connection, key: str, config: ProfileConfig) -> Iterable[str]:
    """The members with their e-mail, phone, name (CSV lines, header first), 500 at a time."""
    get_segment(conn=conn, key=key)
    out = io.StringIO()
    w = csv.writer(out)
    w.writerow(["profile_id", "entered_at", "name", "email", "phone", "loyalty_card", "lifecycle_stage"])
    yield out.getvalue()
    after: int | None = None
    while True:
        page = members(conn=conn, key=key, after=after, limit=CHUNK)
        if not page:
            return
        cards = {
            c["id"]: c for c in profiles.summaries(conn=conn, root_ids=[m["profile_id"] for m in page], config=config)
        }
        out = io.StringIO()
        w = csv.writer(out)
        for m in page:
            c = cards.get(m["profile_id"], {})
            w.writerow(
                [
                    m["profile_id"],
                    m["entered_at"].isoformat(),
                    c.get("name") or "",
                    c.get("email") or "",
                    c.get("phone") or "",
                    c.get("loyalty_card") or "",
                    c.get("lifecycle_stage") or "",
                ]
            )
        yield out.getvalue()
        after = page[-1]["profile_id"]


def profile_segments(*, conn: Connection, profile_id: int, history: int = 50) -> dict[str, Any]:
    root = identity.canonical_id(conn=conn, profile_id=profile_id)
    if root is None:
        raise SegmentError(404, "not_found", f"no profile {profile_id}")
    rows = conn.execute(
        sa.select(MEMBERS, SEGMENTS.c.name)
        .join(SEGMENTS, SEGMENTS.c.key == MEMBERS.c.segment_key)
        .where(MEMBERS.c.profile_id == root)
        .order_by(MEMBERS.c.segment_key)
    ).all()
    member_ids = identity.members(conn=conn, root=root)
    hist = conn.execute(
        sa.select(HISTORY).where(HISTORY.c.profile_id.in_(member_ids)).order_by(HISTORY.c.id.desc()).limit(history)
    ).all()
    return {
        "profile_id": root,
        "segments": [
            {"key": r.segment_key, "name": r.name, "entered_at": r.entered_at, "version": r.version} for r in rows
        ],
        "history": [
            {"segment": h.segment_key, "action": h.action, "at": h.at, "version": h.version, "reason": h.reason}
            for h in hist
        ],
    }


def reset(*, conn: Connection) -> None:
    conn.execute(sa.delete(MEMBERS))
    conn.execute(sa.delete(HISTORY))


def refresh_all(
    *,
    engine: Any,
    config: EngageConfig,
    profile_config: ProfileConfig | None = None,
    keys: Sequence[str] | None = None,
    attempts: int = 5,
    compile_rules: bool = True,
) -> dict[str, int]:
    """The time-based sweep over every surviving profile (or only the segments `keys`), one short
    transaction per chunk of `config.refresh_chunk` profiles.

    Each chunk holds the processing checkpoint lock (PostgreSQL; SQLite has one writer anyway),
    so a sweep and the pipeline handler never evaluate the same profile concurrently. A chunk that
    cannot get the write lock in time (a long processing step) is retried, not abandoned."""
    import time

    from sqlalchemy.exc import OperationalError

    from omnijourney.pipeline.models import Checkpoint
    from omnijourney.profiles.config import load_profile_config
    from omnijourney.store import db
    from omnijourney.store.base import utcnow

    checkpoints = Checkpoint.__table__
    pcfg = profile_config or load_profile_config()
    total = {"entered": 0, "left": 0}
    after = 0
    with db.write(engine) as conn:
        sync_config(conn=conn, config=config, now=utcnow())
    while True:
        for attempt in range(attempts):
            try:
                with db.write(engine) as conn:
                    conn.execute(
                        dialect.for_update(sa.select(checkpoints.c.name).where(checkpoints.c.name == "main"), conn)
                    )
                    nxt, counts = refresh_chunk(
                        conn=conn,
                        after=after,
                        limit=config.refresh_chunk,
                        now=utcnow(),
                        profile_config=pcfg,
                        keys=keys,
                        compile_rules=compile_rules,
                    )
                break
            except OperationalError:  # SQLite: the write lock was busy past its timeout
                if attempt == attempts - 1:
                    raise
                log.info("engage: refresh chunk after %s waiting for the write lock", after)
                time.sleep(1.0)
        total = {k: total[k] + counts[k] for k in total}
        if nxt is None:
            return total
        after = nxt
