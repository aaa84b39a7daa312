"""Reads of the unified profile: the 360 view, timeline, search, changes; consent writes.

Profile data is stored per cluster member and combined here at read time: sums add,
firsts take the minimum, lasts the maximum, traits follow their merge strategy, and consent
is replayed from the members' ledgers and merges (`profiles.consent`).
"""

from __future__ import annotations

import base64
import re
from collections import defaultdict
from datetime import datetime
from functools import lru_cache
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from omnijourney.commerce import service as commerce
from omnijourney.identity import service as identity
from omnijourney.identity.models import IdentityLink, Profile, ProfileEvent
from omnijourney.ingest.models import Event
from omnijourney.profiles.config import REJECTED_PREFIX, STAGES, ProfileConfig
from omnijourney.profiles.consent import CONSENT_RESTRICTIVENESS, current_records
from omnijourney.profiles.models import (
    ConsentRecord,
    ProfileChange,
    ProfileCounter,
    ProfileSearchTerm,
    ProfileStats,
    ProfileTrait,
)
from omnijourney.profiles.traits import fold, merge_member_traits
from omnijourney.store import dialect
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
    return _combine_stats(conn.execute(_STATS, {"ids": ids}).all())


def _combine_stats(rows: list[Any]) -> dict[str, Any] | None:
    """One cluster's computed traits from its members' profile_stats rows."""
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


def _trait_states(conn: Connection, member_ids: list[int]) -> dict[str, list[dict[str, Any]]]:
    by_key: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in conn.execute(_TRAITS, {"ids": member_ids}):
        by_key[r.key].append({"value": r.value, "observed_at": r.observed_at, "first_observed_at": r.first_observed_at})
    return by_key


def _combine_traits(by_key: dict[str, list[dict[str, Any]]], config: ProfileConfig) -> dict[str, Any]:
    return {
        key: merge_member_traits(config.strategy(key), states)["value"]
        for key, states in sorted(by_key.items())
        if not key.startswith(REJECTED_PREFIX)
    }


def _rejections(by_key: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """The latest refused value of each typed trait (what was sent, the type expected, the event, when)."""
    out = {}
    for key, states in sorted(by_key.items()):
        if key.startswith(REJECTED_PREFIX):
            latest = merge_member_traits("last", states)
            out[key.removeprefix(REJECTED_PREFIX)] = {**latest["value"], "at": latest["observed_at"]}
    return out


def traits(*, conn: Connection, member_ids: list[int], config: ProfileConfig) -> dict[str, Any]:
    return _combine_traits(_trait_states(conn, member_ids), config)


def consents(
    *, conn: Connection, member_ids: list[int], merges: list[dict[str, Any]] | None = None
) -> list[dict[str, Any]]:
    """Current consent per purpose x channel (`profiles.consent`): each member's latest record, the
    most restrictive at each merge, and any later record superseding it. Pass the cluster's
    `identity.merges` when already read."""
    records = conn.execute(_CONSENTS, {"ids": member_ids}).all()
    if not records:
        return []
    if merges is None:
        # merges only matter when two members have records: one member's latest record is current anyway
        several = len({r.profile_id for r in records}) > 1
        merges = identity.merges(conn=conn, member_ids=member_ids) if several else []
    current = current_records(records, merges, member_ids)
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
    # polling integrations (`GET /api/profiles/changes`) see API consents as they see processed ones
    conn.execute(sa.insert(CHANGES).values(profile_id=profile_id, changed_at=utcnow()))


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
    *,
    conn: Connection,
    profile_id: int,
    config: ProfileConfig,
    cluster: identity.Cluster | None = None,
    active_carts: list[Any] | None = None,
) -> dict[str, Any] | None:
    """The combined view of `profile_id`'s cluster (pass `cluster` when the caller has resolved it
    already, and the cluster's `commerce.active_carts` when it read them)."""
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
    computed["active_cart"] = commerce.active_cart_signal(
        conn=conn, member_ids=member_ids, now=utcnow(), carts=active_carts
    )
    computed["loyalty"] = commerce.loyalty_summary(conn=conn, member_ids=member_ids)
    merges = identity.merges(conn=conn, member_ids=member_ids)
    trait_states = _trait_states(conn, member_ids)
    return {
        "id": root,
        "requested_id": profile_id,
        "merged_ids": [m for m in member_ids if m != root],
        "identifiers": identity.identifiers(conn=conn, member_ids=member_ids),
        "merges": merges,
        "traits": _combine_traits(trait_states, config),
        "trait_rejections": _rejections(trait_states),
        "computed": computed,
        "consents": consents(conn=conn, member_ids=member_ids, merges=merges),
    }


def _encode_cursor(ts: datetime, event_id: int) -> str:
    return base64.urlsafe_b64encode(orjson.dumps([ts.isoformat(), event_id])).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[datetime, int]:
    try:
        ts, eid = orjson.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        return datetime.fromisoformat(ts), int(eid)
    except (ValueError, TypeError, orjson.JSONDecodeError) as exc:
        raise ProfileError("invalid cursor") from exc


_TIMELINE_COLUMNS = (
    PROFILE_EVENTS.c.event_id,
    PROFILE_EVENTS.c.profile_id,
    PROFILE_EVENTS.c.timestamp,
    PROFILE_EVENTS.c.channel,
    EVENTS.c.type,
    EVENTS.c.event,
    EVENTS.c.source_id,
    EVENTS.c.order_id,
    EVENTS.c.cart_id,
    EVENTS.c.revenue,
    EVENTS.c.currency,
    EVENTS.c.payload,
)


@lru_cache(maxsize=64)
def _timeline_stmt(cursor: bool, channels: bool, events: bool, since: bool, until: bool, after: bool) -> sa.Select[Any]:
    """The timeline statement for one combination of filters, built once (values are bind parameters)."""
    pe = PROFILE_EVENTS
    stmt = (
        sa.select(*_TIMELINE_COLUMNS)
        .join(EVENTS, EVENTS.c.id == pe.c.event_id)
        .where(pe.c.profile_id.in_(sa.bindparam("ids", expanding=True)))
        .order_by(pe.c.timestamp.desc(), pe.c.event_id.desc())
        .limit(sa.bindparam("n"))
    )
    if cursor:
        ts, eid = sa.bindparam("cursor_ts"), sa.bindparam("cursor_id")
        stmt = stmt.where(sa.or_(pe.c.timestamp < ts, sa.and_(pe.c.timestamp == ts, pe.c.event_id < eid)))
    if channels:
        stmt = stmt.where(pe.c.channel.in_(sa.bindparam("channels", expanding=True)))
    if events:
        stmt = stmt.where(pe.c.event.in_(sa.bindparam("events", expanding=True)))
    if since:
        stmt = stmt.where(pe.c.timestamp >= sa.bindparam("since"))
    if until:
        stmt = stmt.where(pe.c.timestamp < sa.bindparam("until"))
    if after:
        stmt = stmt.where(pe.c.event_id > sa.bindparam("after"))
    return stmt


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
    params: dict[str, Any] = {"ids": member_ids, "n": limit + 1}
    if cursor:
        params["cursor_ts"], params["cursor_id"] = _decode_cursor(cursor)
    if channels:
        params["channels"] = channels
    if events:
        params["events"] = events
    if since:
        params["since"] = since
    if until:
        params["until"] = until
    if after_event_id is not None:
        params["after"] = after_event_id
    stmt = _timeline_stmt(
        bool(cursor), bool(channels), bool(events), since is not None, until is not None, after_event_id is not None
    )
    rows = conn.execute(stmt, params).all()
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


_RECENT_PAYLOADS = (
    sa.select(EVENTS.c.payload)
    .select_from(PROFILE_EVENTS.join(EVENTS, EVENTS.c.id == PROFILE_EVENTS.c.event_id))
    .where(
        PROFILE_EVENTS.c.profile_id.in_(sa.bindparam("ids", expanding=True)),
        PROFILE_EVENTS.c.event.in_(sa.bindparam("events", expanding=True)),
    )
    .order_by(PROFILE_EVENTS.c.timestamp.desc(), PROFILE_EVENTS.c.event_id.desc())
    .limit(sa.bindparam("n"))
)


def recent_properties(
    *, conn: Connection, member_ids: list[int], events: list[str], limit: int
) -> list[dict[str, Any]]:
    """The properties of the cluster's `limit` newest events named `events`, newest first: the
    `properties` of `timeline(events=...)`'s entries, without reading and building the rest."""
    out = []
    for (payload,) in conn.execute(_RECENT_PAYLOADS, {"ids": member_ids, "events": events, "n": limit}):
        out.append((payload.get("properties") if isinstance(payload, dict) else None) or {})
    return out


# ------------------------------------------------------------------ search
#
# Every branch is an index range on a normalised column (identity_links (id_type, value), the
# name tokens of profile_search_terms), never a scan: dialect.prefix_match is the "starts with"
# that both databases serve from an index. Each statement answers surviving profile ids.

#: identifier types searched by prefix (values as normalised by the identity rules)
PREFIX_TYPES = ("email", "user_id", "loyalty_card", "phone")
#: name tokens of a query that take part in a search (the longest ones)
MAX_NAME_TOKENS = 4
_PHONE_LIKE = re.compile(r"^\+?[\d\s().\-/]+$")


@lru_cache(maxsize=8)
def _link_prefixes_stmt(branches: int) -> sa.CompoundSelect:
    """Surviving profiles with an identifier of type t{i} starting with a prefix, for several (type,
    prefix) pairs in one statement: (branch, root) rows, each branch its own index range on
    identity_links (id_type, value) with its own limit (a subquery), built once per branch count."""
    selects = []
    for i in range(branches):
        sub = (
            sa.select(PROFILES.c.canonical_id)
            .join(LINKS, LINKS.c.profile_id == PROFILES.c.id)
            .where(
                LINKS.c.id_type == sa.bindparam(f"t{i}"),
                dialect.prefix_match(LINKS.c.value, sa.bindparam(f"lo{i}"), sa.bindparam(f"hi{i}")),
            )
            .limit(sa.bindparam("n"))
            .subquery(f"b{i}")
        )
        selects.append(sa.select(sa.literal(i, sa.Integer).label("branch"), sub.c.canonical_id))
    return sa.union_all(*selects)


@lru_cache(maxsize=MAX_NAME_TOKENS)
def _name_stmt(tokens: int) -> sa.Select[Any]:
    """Surviving profiles with a name token starting with each of `tokens` prefixes, on any member
    (the first name can come from one device, the last name from another). The first (longest)
    token drives an index range; the others are probed per candidate cluster (indexes on
    profiles.canonical_id and profile_search_terms (profile_id, term))."""
    first = SEARCH.alias("t0")
    stmt = (
        sa.select(PROFILES.c.canonical_id)
        .select_from(first)
        .join(PROFILES, PROFILES.c.id == first.c.profile_id)
        .where(dialect.prefix_match(first.c.term, sa.bindparam("lo0"), sa.bindparam("hi0")))
    )
    for i in range(1, tokens):
        other, member = SEARCH.alias(f"t{i}"), PROFILES.alias(f"m{i}")
        stmt = stmt.where(
            sa.exists()
            .select_from(member.join(other, other.c.profile_id == member.c.id))
            .where(
                member.c.canonical_id == PROFILES.c.canonical_id,
                dialect.prefix_match(other.c.term, sa.bindparam(f"lo{i}"), sa.bindparam(f"hi{i}")),
            )
        )
    return stmt.limit(sa.bindparam("n"))


def phone_prefixes(query: str, country_code: int | None) -> list[str]:
    """E.164 prefixes a phone-like query can be the start of: as typed with '+', else with the
    default country's code (a national number) and as an international number without '+'."""
    if not _PHONE_LIKE.match(query):
        return []
    digits = "".join(ch for ch in query if ch.isdigit())
    if len(digits) < 3:
        return []
    if query.lstrip().startswith("+"):
        return ["+" + digits]
    out = []
    if country_code is not None:
        out.append(f"+{country_code}{digits.lstrip('0') or digits}")
    out.append("+" + digits)
    return out


def search(*, conn: Connection, query: str, limit: int = 20, phone_country_code: int | None = 420) -> list[int]:
    """Surviving profile ids whose e-mail, phone, loyalty card, user id or name starts with `query`."""
    q = query.strip()
    if len(q) < 2:
        raise ProfileError("search needs at least 2 characters")
    prefixes: list[tuple[str, str]] = [("email", q.lower()), ("user_id", q)]
    if "@" not in q:
        prefixes.append(("loyalty_card", q.upper().replace(" ", "").replace("-", "")))
        prefixes += [("phone", p) for p in phone_prefixes(q, phone_country_code)]
    out: list[int] = []

    def add(rows: Any) -> None:
        for (root,) in rows:
            if root not in out:
                out.append(root)

    prefixes = [(id_type, prefix) for id_type, prefix in prefixes if prefix]
    params: dict[str, Any] = {"n": limit}
    for i, (id_type, prefix) in enumerate(prefixes):
        params[f"t{i}"] = id_type
        params[f"lo{i}"], params[f"hi{i}"] = dialect.prefix_bounds(prefix)
    by_branch: dict[int, list[Any]] = defaultdict(list)
    if prefixes:
        for branch, root in conn.execute(_link_prefixes_stmt(len(prefixes)), params):
            by_branch[branch].append((root,))
    for i in range(len(prefixes)):  # in the order of `prefixes`, as one statement each would
        add(by_branch[i])
    tokens = sorted({t for t in re.split(r"[\s,.;]+", fold(q)) if t}, key=lambda t: (-len(t), t))
    if tokens and "@" not in q and any(ch.isalpha() for ch in q) and len(out) < limit:  # names have letters
        tokens = tokens[:MAX_NAME_TOKENS]
        names: dict[str, Any] = {"n": limit * 5}
        for i, t in enumerate(tokens):
            names[f"lo{i}"], names[f"hi{i}"] = dialect.prefix_bounds(t[:100])
        add(conn.execute(_name_stmt(len(tokens)), names))
    return out[:limit]


#: identifier types a search result card shows
SUMMARY_TYPES = ("email", "phone", "loyalty_card", "user_id")
_MEMBERS_OF = sa.select(PROFILES.c.id, PROFILES.c.canonical_id).where(
    PROFILES.c.canonical_id.in_(sa.bindparam("roots", expanding=True))
)
_SUMMARY_LINKS = (
    sa.select(LINKS.c.profile_id, LINKS.c.id_type, LINKS.c.value)
    .where(LINKS.c.profile_id.in_(sa.bindparam("ids", expanding=True)))
    .order_by(LINKS.c.linked_at, LINKS.c.id)
)
_MEMBER_TRAITS = sa.select(
    TRAITS.c.profile_id, TRAITS.c.key, TRAITS.c.value, TRAITS.c.observed_at, TRAITS.c.first_observed_at
).where(TRAITS.c.profile_id.in_(sa.bindparam("ids", expanding=True)))


def summaries(
    *,
    conn: Connection,
    root_ids: list[int],
    config: ProfileConfig,
    clusters: dict[int, list[int]] | None = None,
) -> list[dict[str, Any]]:
    """Short cards for search results: name, e-mail, phone, loyalty card, stage.

    Four statements whatever the number of results (members, traits, identifiers, stats of
    every card's cluster at once), not four per card; three when the caller passes the members
    of every card's cluster (`clusters`: root -> members, resolved in the same transaction)."""
    if not root_ids:
        return []
    roots = list(dict.fromkeys(root_ids))
    if clusters is not None and all(r in clusters for r in roots):
        root_of = {m: r for r in roots for m in clusters[r]}
    else:
        root_of = dict(conn.execute(_MEMBERS_OF, {"roots": roots}).all())
    ids = sorted(root_of)
    by_root: dict[int, dict[str, list[dict[str, Any]]]] = defaultdict(lambda: defaultdict(list))
    links: dict[int, dict[str, str]] = defaultdict(dict)
    stats: dict[int, list[Any]] = defaultdict(list)
    if ids:
        for r in conn.execute(_MEMBER_TRAITS, {"ids": ids}):
            by_root[root_of[r.profile_id]][r.key].append(
                {"value": r.value, "observed_at": r.observed_at, "first_observed_at": r.first_observed_at}
            )
        for r in conn.execute(_SUMMARY_LINKS, {"ids": ids}):  # by profile_id (its index), types picked here
            if r.id_type in SUMMARY_TYPES:
                links[root_of[r.profile_id]].setdefault(r.id_type, r.value)
        for r in conn.execute(_STATS, {"ids": ids}):
            stats[root_of[r.profile_id]].append(r)
    out = []
    for root in root_ids:
        t = _combine_traits(by_root[root], config)
        combined = _combine_stats(stats[root])
        ids_of = links[root]
        out.append(
            {
                "id": root,
                "name": t.get("name") or " ".join(x for x in (t.get("first_name"), t.get("last_name")) if x) or None,
                "email": ids_of.get("email"),
                "phone": ids_of.get("phone"),
                "loyalty_card": ids_of.get("loyalty_card"),
                "user_id": ids_of.get("user_id"),
                "lifecycle_stage": lifecycle_stage(combined, config),
                "last_seen": combined["last_seen"] if combined else None,
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
