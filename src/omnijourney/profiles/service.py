"""Reads of the unified profile: the 360 view, timeline, search, changes; consent writes.

Profile data is stored per cluster member and combined here at read time: sums add,
firsts take the minimum, lasts the maximum, traits follow their merge strategy, and for
consent the most restrictive state per purpose and channel wins.
"""

from __future__ import annotations

import base64
from collections import defaultdict
from datetime import datetime
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from omnijourney.commerce import service as commerce
from omnijourney.identity import service as identity
from omnijourney.identity.models import IdentityLink, Profile, ProfileEvent
from omnijourney.ingest.models import Event
from omnijourney.profiles.config import STAGES, ProfileConfig
from omnijourney.profiles.models import (
    ConsentRecord,
    ProfileChange,
    ProfileCounter,
    ProfileSearchTerm,
    ProfileStats,
    ProfileTrait,
)
from omnijourney.profiles.traits import fold, merge_member_traits
from omnijourney.store.base import utcnow

PROFILES = Profile.__table__
LINKS = IdentityLink.__table__
PROFILE_EVENTS = ProfileEvent.__table__
EVENTS = Event.__table__
TRAITS = ProfileTrait.__table__
STATS = ProfileStats.__table__
COUNTERS = ProfileCounter.__table__
CONSENTS = ConsentRecord.__table__
SEARCH = ProfileSearchTerm.__table__
CHANGES = ProfileChange.__table__

#: most restrictive first: any member's denial or withdrawal beats another member's grant
CONSENT_RESTRICTIVENESS = {"withdrawn": 2, "denied": 1, "granted": 0}


class ProfileError(ValueError):
    pass


# Built once (see identity.service): Core statement construction is the dominant CPU cost of a read.
_STATS = sa.select(STATS).where(STATS.c.profile_id.in_(sa.bindparam("ids", expanding=True)))
_COUNTERS = sa.select(COUNTERS).where(COUNTERS.c.profile_id.in_(sa.bindparam("ids", expanding=True)))
_TRAITS = sa.select(TRAITS.c.key, TRAITS.c.value, TRAITS.c.observed_at, TRAITS.c.first_observed_at).where(
    TRAITS.c.profile_id.in_(sa.bindparam("ids", expanding=True))
)
_CONSENTS = (
    sa.select(CONSENTS)
    .where(CONSENTS.c.profile_id.in_(sa.bindparam("ids", expanding=True)))
    .order_by(CONSENTS.c.recorded_at, CONSENTS.c.id)
)


def _stats(conn: Connection, ids: list[int]) -> dict[str, Any] | None:
    rows = conn.execute(_STATS, {"ids": ids}).all()
    if not rows:
        return None

    def latest(col: str) -> tuple[Any, Any]:
        dated = [(getattr(r, f"{col}_at"), getattr(r, col)) for r in rows if getattr(r, f"{col}_at") is not None]
        return max(dated, key=lambda x: x[0]) if dated else (None, None)

    order_at, order_id = max(
        ((r.last_order_at, r.last_order_id) for r in rows if r.last_order_at is not None),
        default=(None, None),
        key=lambda x: x[0],
    )
    nps_at, nps = latest("nps")
    csat_at, csat = latest("csat")
    order_count = sum(r.order_count for r in rows)
    revenue = round(sum(r.revenue for r in rows), 2)
    return {
        "first_seen": min(r.first_seen for r in rows),
        "last_seen": max(r.last_seen for r in rows),
        "event_count": sum(r.event_count for r in rows),
        "order_count": order_count,
        "lifetime_revenue": revenue,
        "average_order_value": round(revenue / order_count, 2) if order_count else None,
        "last_order": {"order_id": order_id, "at": order_at} if order_at else None,
        "nps_last": {"score": nps, "at": nps_at} if nps_at else None,
        "csat_last": {"score": csat, "at": csat_at} if csat_at else None,
        "stage_rank": max(r.stage_rank for r in rows),
    }


def _counters(conn: Connection, ids: list[int]) -> dict[str, list[dict[str, Any]]]:
    acc: dict[tuple[str, str], list[Any]] = {}
    for r in conn.execute(_COUNTERS, {"ids": ids}):
        cur = acc.setdefault((r.kind, r.key), [0, r.last_at])
        cur[0] += r.count
        cur[1] = max(cur[1], r.last_at)
    out: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for (kind, key), (count, last) in acc.items():
        out[kind].append({"key": key, "count": count, "last_at": last})
    for items in out.values():
        items.sort(key=lambda x: (-x["count"], x["key"]))
    return out


def traits(*, conn: Connection, member_ids: list[int], config: ProfileConfig) -> dict[str, Any]:
    by_key: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in conn.execute(_TRAITS, {"ids": member_ids}):
        by_key[r.key].append({"value": r.value, "observed_at": r.observed_at, "first_observed_at": r.first_observed_at})
    return {key: merge_member_traits(config.strategy(key), states)["value"] for key, states in sorted(by_key.items())}


def consents(*, conn: Connection, member_ids: list[int]) -> list[dict[str, Any]]:
    """Current consent per purpose x channel: each member's latest record, then the most restrictive."""
    latest: dict[tuple[int, str, str], Any] = {}
    for r in conn.execute(_CONSENTS, {"ids": member_ids}):
        latest[(r.profile_id, r.purpose, r.channel)] = r
    current: dict[tuple[str, str], Any] = {}
    for (_, purpose, channel), r in latest.items():
        have = current.get((purpose, channel))
        if have is None or CONSENT_RESTRICTIVENESS[r.status] > CONSENT_RESTRICTIVENESS[have.status]:
            current[(purpose, channel)] = r
    return [
        {
            "purpose": p,
            "channel": c,
            "status": r.status,
            "recorded_at": r.recorded_at,
            "source_id": r.source_id,
            "evidence": r.evidence,
        }
        for (p, c), r in sorted(current.items())
    ]


def consent_history(*, conn: Connection, member_ids: list[int]) -> list[dict[str, Any]]:
    return [dict(r._mapping) for r in conn.execute(_CONSENTS, {"ids": member_ids})]


def record_consent(
    *,
    conn: Connection,
    profile_id: int,
    purpose: str,
    channel: str,
    status: str,
    recorded_at: datetime,
    actor: str,
    evidence: dict[str, Any],
) -> None:
    if status not in CONSENT_RESTRICTIVENESS:
        raise ProfileError(f"status must be one of {sorted(CONSENT_RESTRICTIVENESS)}")
    conn.execute(
        sa.insert(CONSENTS).values(
            profile_id=profile_id,
            purpose=purpose,
            channel=channel,
            status=status,
            recorded_at=recorded_at,
            source_id=None,
            event_id=None,
            actor=actor,
            evidence=evidence,
        )
    )


def lifecycle_stage(stats: dict[str, Any] | None, config: ProfileConfig) -> str | None:
    if stats is None:
        return None
    rank = stats["stage_rank"]
    if stats["order_count"] >= config.retention_min_orders:
        rank = max(rank, STAGES.index("retention"))
    nps = stats["nps_last"]
    if nps and nps["score"] >= config.advocacy_min_nps:
        rank = max(rank, STAGES.index("advocacy"))
    return STAGES[rank]


def profile_360(
    *, conn: Connection, profile_id: int, config: ProfileConfig, cluster: identity.Cluster | None = None
) -> dict[str, Any] | None:
    """The combined view of `profile_id`'s cluster (pass `cluster` when the caller has resolved it already)."""
    cluster = cluster or identity.cluster(conn=conn, profile_id=profile_id)
    if cluster is None:
        return None
    root, member_ids = cluster
    stats = _stats(conn, member_ids)
    counters = _counters(conn, member_ids)
    computed: dict[str, Any] = {}
    if stats is not None:
        computed = {k: v for k, v in stats.items() if k != "stage_rank"}
        computed["lifecycle_stage"] = lifecycle_stage(stats, config)
    computed["channels"] = [c["key"] for c in counters.get("channel", [])]
    computed["preferred_channel"] = counters["channel"][0]["key"] if counters.get("channel") else None
    computed["devices"] = [c["key"] for c in counters.get("device", [])]
    computed["preferred_store"] = counters["store"][0]["key"] if counters.get("store") else None
    computed["channel_usage"] = counters.get("channel", [])
    # commerce: the abandoned-cart signal (active cart's last change, value, items) and loyalty
    computed["active_cart"] = commerce.active_cart_signal(conn=conn, member_ids=member_ids, now=utcnow())
    computed["loyalty"] = commerce.loyalty_summary(conn=conn, member_ids=member_ids)
    return {
        "id": root,
        "requested_id": profile_id,
        "merged_ids": [m for m in member_ids if m != root],
        "identifiers": identity.identifiers(conn=conn, member_ids=member_ids),
        "merges": identity.merges(conn=conn, member_ids=member_ids),
        "traits": traits(conn=conn, member_ids=member_ids, config=config),
        "computed": computed,
        "consents": consents(conn=conn, member_ids=member_ids),
    }


def _encode_cursor(ts: datetime, event_id: int) -> str:
    return base64.urlsafe_b64encode(orjson.dumps([ts.isoformat(), event_id])).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[datetime, int]:
    try:
        ts, eid = orjson.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        return datetime.fromisoformat(ts), int(eid)
    except (ValueError, TypeError, orjson.JSONDecodeError) as exc:
        raise ProfileError("invalid cursor") from exc


def timeline(
    *,
    conn: Connection,
    member_ids: list[int],
    limit: int = 50,
    cursor: str | None = None,
    channels: list[str] | None = None,
    events: list[str] | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    after_event_id: int | None = None,
) -> tuple[list[dict[str, Any]], str | None]:
    """Every event of every member, newest first, keyset-paginated on (timestamp, event id)."""
    pe = PROFILE_EVENTS
    stmt = (
        sa.select(
            pe.c.event_id,
            pe.c.profile_id,
            pe.c.timestamp,
            pe.c.channel,
            EVENTS.c.type,
            EVENTS.c.event,
            EVENTS.c.source_id,
            EVENTS.c.order_id,
            EVENTS.c.cart_id,
            EVENTS.c.revenue,
            EVENTS.c.currency,
            EVENTS.c.payload,
        )
        .join(EVENTS, EVENTS.c.id == pe.c.event_id)
        .where(pe.c.profile_id.in_(member_ids))
        .order_by(pe.c.timestamp.desc(), pe.c.event_id.desc())
        .limit(limit + 1)
    )
    if cursor:
        ts, eid = _decode_cursor(cursor)
        stmt = stmt.where(sa.or_(pe.c.timestamp < ts, sa.and_(pe.c.timestamp == ts, pe.c.event_id < eid)))
    if channels:
        stmt = stmt.where(pe.c.channel.in_(channels))
    if events:
        stmt = stmt.where(pe.c.event.in_(events))
    if since:
        stmt = stmt.where(pe.c.timestamp >= since)
    if until:
        stmt = stmt.where(pe.c.timestamp < until)
    if after_event_id is not None:
        stmt = stmt.where(pe.c.event_id > after_event_id)
    rows = conn.execute(stmt).all()
    more = len(rows) > limit
    rows = rows[:limit]
    items = []
    for r in rows:
        payload = r.payload if isinstance(r.payload, dict) else {}
        items.append(
            {
                "event_id": r.event_id,
                "profile_id": r.profile_id,
                "timestamp": r.timestamp,
                "channel": r.channel,
                "source_id": r.source_id,
                "type": r.type,
                "event": r.event,
                "order_id": r.order_id,
                "cart_id": r.cart_id,
                "revenue": r.revenue,
                "currency": r.currency,
                "properties": payload.get("properties") or {},
                "traits": payload.get("traits") or {},
            }
        )
    next_cursor = _encode_cursor(rows[-1].timestamp, rows[-1].event_id) if more and rows else None
    return items, next_cursor


def search(*, conn: Connection, query: str, limit: int = 20) -> list[int]:
    """Surviving profile ids whose e-mail, phone, loyalty card, user id or name starts with `query`."""
    q = query.strip()
    if len(q) < 2:
        raise ProfileError("search needs at least 2 characters")
    found: list[int] = []
    low = q.lower()
    digits = "".join(ch for ch in q if ch.isdigit() or ch == "+")
    prefixes: list[tuple[str, str]] = [("email", low), ("user_id", q), ("loyalty_card", q.upper().replace(" ", ""))]
    if digits and len(digits) >= 3:
        phone = digits if digits.startswith("+") else None
        if phone:
            prefixes.append(("phone", phone))
        else:
            prefixes.append(("phone_suffix", digits))
    for id_type, prefix in prefixes:
        if id_type == "phone_suffix":
            stmt = sa.select(LINKS.c.profile_id).where(LINKS.c.id_type == "phone", LINKS.c.value.like(f"%{prefix}%"))
        else:
            stmt = sa.select(LINKS.c.profile_id).where(
                LINKS.c.id_type == id_type, LINKS.c.value >= prefix, LINKS.c.value < prefix + "\uffff"
            )
        found.extend(r[0] for r in conn.execute(stmt.limit(limit)))
    tokens = [t for t in fold(q).split() if t]
    if tokens:
        first = tokens[0]
        stmt = sa.select(SEARCH.c.profile_id).where(SEARCH.c.term >= first, SEARCH.c.term < first + "\uffff")
        ids = {r[0] for r in conn.execute(stmt.limit(limit * 5))}
        for t in tokens[1:]:
            ids &= {
                r[0]
                for r in conn.execute(
                    sa.select(SEARCH.c.profile_id)
                    .where(SEARCH.c.term >= t, SEARCH.c.term < t + "\uffff")
                    .limit(limit * 5)
                )
            }
        found.extend(sorted(ids))
    if not found:
        return []
    roots = dict(
        conn.execute(sa.select(PROFILES.c.id, PROFILES.c.canonical_id).where(PROFILES.c.id.in_(set(found)))).all()
    )
    out: list[int] = []
    for pid in found:
        root = roots.get(pid)
        if root is not None and root not in out:
            out.append(root)
    return out[:limit]


def summaries(*, conn: Connection, root_ids: list[int], config: ProfileConfig) -> list[dict[str, Any]]:
    """Short cards for search results: name, e-mail, phone, loyalty card, stage."""
    out = []
    for root in root_ids:
        member_ids = identity.members(conn=conn, root=root)
        t = traits(conn=conn, member_ids=member_ids, config=config)
        ids: dict[str, list[str]] = defaultdict(list)
        for link in identity.identifiers(conn=conn, member_ids=member_ids):
            ids[link["type"]].append(link["value"])
        stats = _stats(conn, member_ids)
        out.append(
            {
                "id": root,
                "name": t.get("name") or " ".join(x for x in (t.get("first_name"), t.get("last_name")) if x) or None,
                "email": ids.get("email", [None])[0],
                "phone": ids.get("phone", [None])[0],
                "loyalty_card": ids.get("loyalty_card", [None])[0],
                "user_id": ids.get("user_id", [None])[0],
                "lifecycle_stage": lifecycle_stage(stats, config),
                "last_seen": stats["last_seen"] if stats else None,
            }
        )
    return out


def changes(*, conn: Connection, since: int, limit: int = 500) -> tuple[list[int], int]:
    """Surviving profiles changed after cursor `since`; returns (ids, next cursor)."""
    rows = conn.execute(
        sa.select(CHANGES.c.id, PROFILES.c.canonical_id)
        .join(PROFILES, PROFILES.c.id == CHANGES.c.profile_id)
        .where(CHANGES.c.id > since)
        .order_by(CHANGES.c.id)
        .limit(limit)
    ).all()
    ids: list[int] = []
    for _, root in rows:
        if root not in ids:
            ids.append(root)
    return ids, (rows[-1][0] if rows else since)
