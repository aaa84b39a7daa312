"""The profile handler of the processing stage: traits, computed traits, consents, search terms.

It runs after identity in the same step and uses the member each event was resolved to.
Computed traits (`profile_stats`) and counters are folded per member over the batch and merged
with the stored rows inside one upsert each (`dialect.upsert_rows` merge expressions), so they
need no read. Traits are read-modify-write (their strategies combine JSON values in Python):
one SELECT for the members whose events carry traits, one bulk upsert. The pipeline's
checkpoint lock makes the stage the only writer, so this is race-free.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime
from operator import itemgetter
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Row

from omnijourney.profiles.config import REJECTED_PREFIX, ProfileConfig
from omnijourney.profiles.models import (
    ConsentRecord,
    ProfileChange,
    ProfileCounter,
    ProfileSearchTerm,
    ProfileStats,
    ProfileTrait,
)
from omnijourney.profiles.traits import accepts, combine_trait, search_terms
from omnijourney.store import dialect
from omnijourney.store.base import utcnow

TRAITS = ProfileTrait.__table__
STATS = ProfileStats.__table__
COUNTERS = ProfileCounter.__table__
CONSENTS = ConsentRecord.__table__
SEARCH = ProfileSearchTerm.__table__
CHANGES = ProfileChange.__table__
CHUNK = 500
CONSENT_STATUSES = {"granted", "denied", "withdrawn"}


def _device(payload: dict[str, Any]) -> str | None:
    ctx = payload.get("context") or {}
    device = ctx.get("device") if isinstance(ctx, dict) else None
    if isinstance(device, dict):
        for key in ("type", "model", "manufacturer"):
            if isinstance(device.get(key), str) and device[key]:
                return device[key][:128]
    ua = ctx.get("userAgent") if isinstance(ctx, dict) else None
    if isinstance(ua, str) and ua:
        return "mobile" if "Mobile" in ua or "Android" in ua else "desktop"
    return None


#: profile_stats as the handler writes it: one row per member touched by a batch, merged with the
#: stored row in the upsert itself (no read): times by min / max / latest, counts added
STATS_COLUMNS = (
    "profile_id",
    "first_seen",
    "last_seen",
    "event_count",
    "order_count",
    "revenue",
    "last_order_at",
    "last_order_id",
    "nps",
    "nps_at",
    "csat",
    "csat_at",
    "stage_rank",
)
STATS_MERGE = {
    "first_seen": dialect.MERGE_MIN,
    "last_seen": dialect.MERGE_MAX,
    "event_count": dialect.MERGE_ADD,
    "order_count": dialect.MERGE_ADD,
    # the running total is computed here from the stored one, in event order (so the float
    # sum is the same whatever the batch boundaries); only rows with orders carry it
    "revenue": dialect.merge_if_positive("order_count"),
    "last_order_at": dialect.merge_latest("last_order_at"),
    "last_order_id": dialect.merge_latest("last_order_at"),
    "nps": dialect.merge_latest("nps_at"),
    "nps_at": dialect.merge_latest("nps_at"),
    "csat": dialect.merge_latest("csat_at"),
    "csat_at": dialect.merge_latest("csat_at"),
    "stage_rank": dialect.MERGE_MAX,
}
COUNTER_COLUMNS = ("profile_id", "kind", "key", "count", "last_at")
COUNTER_MERGE = {"count": dialect.MERGE_ADD, "last_at": dialect.MERGE_MAX}
TRAIT_COLUMNS = ("profile_id", "key", "value", "observed_at", "first_observed_at")
#: the event columns the handler reads, unpacked by position (found by name in the rows' fields)
_EVENT_FIELDS = ("id", "source_id", "type", "event", "channel", "timestamp", "order_id", "revenue", "payload")
# stats list slots (the batch's own figures for one member)
_FIRST, _LAST, _N, _ORDERS, _REVENUE, _ORDER_AT, _ORDER_ID, _NPS, _NPS_AT, _CSAT, _CSAT_AT, _RANK = range(12)


def _select_in(conn: Connection, table: sa.Table, ids: list[int], *columns: str) -> list[Row[Any]]:
    """Rows of `table` (or some of its columns) for the given members, in one cached statement."""
    stmt = _SELECTS.get((table.name, columns))
    if stmt is None:
        cols = [table.c[c] for c in columns] if columns else [table]
        stmt = _SELECTS[(table.name, columns)] = sa.select(*cols).where(dialect.in_values(table.c.profile_id, "ids"))
    out: list[Row[Any]] = []
    for i in range(0, len(ids), CHUNK):
        out.extend(conn.execute(stmt, {"ids": dialect.in_values_param(conn, ids[i : i + CHUNK])}).all())
    return out


_SELECTS: dict[tuple[str, tuple[str, ...]], Any] = {}


class ProfileHandler:
    name = "profiles"

    def __init__(self, config: ProfileConfig) -> None:
        self.config = config
        self._ranks: dict[str | None, int] = {}

    def _rank(self, name: str | None) -> int:
        rank = self._ranks.get(name)
        if rank is None:
            rank = self._ranks[name] = self.config.stage_rank(name)
        return rank

    def apply(self, conn: Connection, events: Sequence[Row[Any]], ctx: dict[str, Any]) -> None:
        members: dict[int, int] = ctx.get("event_member", {})
        if not members:
            return
        # Times are compared and stored in the driver's form (order-preserving: text on SQLite,
        # naive UTC on PostgreSQL), converted once per event rather than once per written value.
        db_time = dialect.datetime_binder(conn)
        rank_of = self._rank
        stats: dict[int, list[Any]] = {}
        counter_deltas: dict[tuple[int, str, str], list[Any]] = {}
        trait_events: list[tuple[int, int, datetime, dict[str, Any]]] = []
        consents: list[dict[str, Any]] = []
        terms: set[tuple[str, int]] = set()
        orders: dict[int, list[float]] = defaultdict(list)
        source_keys: dict[int, str] = {}

        fields = events[0]._fields
        columns = itemgetter(*(fields.index(c) for c in _EVENT_FIELDS))
        for eid, source_id, etype, event, channel, timestamp, order_id, revenue, payload in map(columns, events):
            pid = members.get(eid)
            if pid is None:
                continue
            at = db_time(timestamp)
            if not isinstance(payload, dict):
                payload = {}
            track = etype == "track"
            s = stats.get(pid)
            if s is None:
                s = stats[pid] = [at, at, 0, 0, None, None, None, None, None, None, None, 0]
            elif at < s[_FIRST]:
                s[_FIRST] = at
            elif at > s[_LAST]:
                s[_LAST] = at
            s[_N] += 1
            rank = rank_of(event if track else None)
            if rank > s[_RANK]:
                s[_RANK] = rank
            name = event if track else None
            props = payload.get("properties")
            if not isinstance(props, dict):
                props = {}
            if name == "Order Completed":
                s[_ORDERS] += 1
                orders[pid].append(float(revenue or 0.0))
                if s[_ORDER_AT] is None or at >= s[_ORDER_AT]:
                    s[_ORDER_AT], s[_ORDER_ID] = at, order_id
            elif name == "Survey Responded":
                kind, score = props.get("survey_type"), props.get("score")
                if kind in ("nps", "csat") and isinstance(score, int):
                    slot = _NPS if kind == "nps" else _CSAT
                    if s[slot + 1] is None or at >= s[slot + 1]:
                        s[slot], s[slot + 1] = score, at
            elif name == "Consent Updated":
                status = props.get("status")
                if status in CONSENT_STATUSES and props.get("purpose"):
                    consents.append(
                        {
                            "profile_id": pid,
                            "purpose": str(props["purpose"])[:64],
                            "channel": str(props.get("channel") or "all")[:32],
                            "status": status,
                            "recorded_at": timestamp,
                            "source_id": source_id,
                            "event_id": eid,
                            "actor": None,
                            "evidence": {"event_id": eid, **(props.get("evidence") or {})}
                            if isinstance(props.get("evidence") or {}, dict)
                            else {"event_id": eid},
                        }
                    )
            store = props.get("store_id")
            device = _device(payload)
            for ck in (
                (pid, "channel", channel[:128]) if channel else None,
                (pid, "source", source_keys.get(source_id) or source_keys.setdefault(source_id, str(source_id))),
                (pid, "device", device) if device else None,
                (pid, "store", store[:128]) if isinstance(store, str) and store else None,
            ):
                if ck is None:
                    continue
                d = counter_deltas.get(ck)
                if d is None:
                    counter_deltas[ck] = [1, at]
                else:
                    d[0] += 1
                    if at > d[1]:
                        d[1] = at
            traits = payload.get("traits") if etype == "identify" else (payload.get("context") or {}).get("traits")
            if isinstance(traits, dict) and traits:
                trait_events.append((pid, eid, timestamp, traits))

        trait_changes = self._traits(conn, trait_events, terms)
        stats_rows = self._stats_rows(conn, stats, orders)
        dialect.upsert_rows(conn, STATS, STATS_COLUMNS, stats_rows, ["profile_id"], merge=STATS_MERGE)
        dialect.upsert_rows(
            conn,
            COUNTERS,
            COUNTER_COLUMNS,
            [(p, k, key, n, last) for (p, k, key), (n, last) in counter_deltas.items()],
            ["profile_id", "kind", "key"],
            merge=COUNTER_MERGE,
        )
        if trait_changes:
            as_json = dialect.json_binder(conn)
            dialect.upsert_rows(
                conn,
                TRAITS,
                TRAIT_COLUMNS,
                [
                    (p, k, as_json(t["value"]), db_time(t["observed_at"]), db_time(t["first_observed_at"]))
                    for (p, k), t in trait_changes.items()
                ],
                ["profile_id", "key"],
                json_columns=["value"],
            )
        if consents:
            conn.execute(sa.insert(CONSENTS), consents)
        if terms:
            dialect.insert_rows_ignoring_conflicts(
                conn, SEARCH, ["term", "profile_id"], sorted(terms), ["term", "profile_id"]
            )
        now = db_time(utcnow())
        dialect.insert_rows_ignoring_conflicts(
            conn, CHANGES, ["profile_id", "changed_at"], [(p, now) for p in sorted(stats)], []
        )

    def _stats_rows(
        self, conn: Connection, stats: dict[int, list[Any]], orders: dict[int, list[float]]
    ) -> list[tuple[Any, ...]]:
        """profile_stats rows of the batch; members with orders carry their new revenue total."""
        revenue: dict[int, float] = {}
        if orders:
            ids = sorted(orders)
            stored = {r.profile_id: r.revenue for r in _select_in(conn, STATS, ids, "profile_id", "revenue")}
            for pid in ids:
                total = stored.get(pid) or 0.0
                for amount in orders[pid]:
                    total += amount
                revenue[pid] = total
        return [(pid, s[0], s[1], s[2], s[3], revenue.get(pid, 0.0), *s[5:]) for pid, s in sorted(stats.items())]

    def _traits(
        self,
        conn: Connection,
        trait_events: list[tuple[int, int, datetime, dict[str, Any]]],
        terms: set[tuple[str, int]],
    ) -> dict[tuple[int, str], dict[str, Any]]:
        """Combine the batch's observed traits with the stored ones (read only for members that have any).

        A value that does not fit its trait's configured type is not applied (the stored value
        stays); the latest refusal is kept as trait `$rejected:<key>` of the member, which the 360
        view shows as `trait_rejections`."""
        if not trait_events:
            return {}
        pids = sorted({pid for pid, _, _, _ in trait_events})
        traits_now = {(r.profile_id, r.key): dict(r._mapping) for r in _select_in(conn, TRAITS, pids)}
        trait_changes: dict[tuple[int, str], dict[str, Any]] = {}
        strategy = self.config.strategy
        types = self.config.trait_types
        for pid, eid, at, traits in trait_events:
            for key, value in traits.items():
                if not isinstance(key, str) or len(key) > 100 or value is None:
                    continue
                if key.startswith(REJECTED_PREFIX):
                    continue  # reserved for refusals
                kind = types.get(key)
                if kind is not None and not accepts(kind, strategy(key), value):
                    rkey = REJECTED_PREFIX + key
                    refused = {"value": value, "expected": kind, "event_id": eid}
                    current = trait_changes.get((pid, rkey)) or traits_now.get((pid, rkey))
                    merged = combine_trait("last", current, refused, at)
                    if merged is not current:
                        trait_changes[(pid, rkey)] = {"profile_id": pid, "key": rkey, **merged}
                    continue
                current = trait_changes.get((pid, key)) or traits_now.get((pid, key))
                merged = combine_trait(strategy(key), current, value, at)
                if merged is not current:
                    trait_changes[(pid, key)] = {"profile_id": pid, "key": key, **merged}
                if key in ("name", "first_name", "last_name") and isinstance(value, str):
                    terms.update((t, pid) for t in search_terms(value))
        return trait_changes

    def reset(self, conn: Connection) -> None:
        for table in (TRAITS, STATS, COUNTERS, SEARCH, CHANGES):
            conn.execute(sa.delete(table))
        # consents given through the API are primary data; only those derived from events are recomputed
        conn.execute(sa.delete(CONSENTS).where(CONSENTS.c.event_id.is_not(None)))
