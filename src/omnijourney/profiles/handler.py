"""The profile handler of the processing stage: traits, computed traits, consents, search terms.

It runs after identity in the same step and uses the member each event was resolved to.
Each table is updated read-modify-write per batch: one SELECT for the members touched, the
combination in Python, one bulk upsert. The pipeline's checkpoint lock makes the stage the
only writer, so this is race-free.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Row

from omnijourney.profiles.config import ProfileConfig
from omnijourney.profiles.models import (
    ConsentRecord,
    ProfileChange,
    ProfileCounter,
    ProfileSearchTerm,
    ProfileStats,
    ProfileTrait,
)
from omnijourney.profiles.traits import combine_trait, search_terms
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


def _new_stats(pid: int, at: datetime) -> dict[str, Any]:
    return {
        "profile_id": pid,
        "first_seen": at,
        "last_seen": at,
        "event_count": 0,
        "order_count": 0,
        "revenue": 0.0,
        "last_order_at": None,
        "last_order_id": None,
        "nps": None,
        "nps_at": None,
        "csat": None,
        "csat_at": None,
        "stage_rank": 0,
    }


def _select_in(conn: Connection, table: sa.Table, ids: list[int]) -> list[Row[Any]]:
    out: list[Row[Any]] = []
    for i in range(0, len(ids), CHUNK):
        out.extend(conn.execute(sa.select(table).where(table.c.profile_id.in_(ids[i : i + CHUNK]))).all())
    return out


class ProfileHandler:
    name = "profiles"

    def __init__(self, config: ProfileConfig) -> None:
        self.config = config

    def apply(self, conn: Connection, events: Sequence[Row[Any]], ctx: dict[str, Any]) -> None:
        members: dict[int, int] = ctx.get("event_member", {})
        touched = sorted({m for m in members.values()})
        if not touched:
            return
        stats = {r.profile_id: dict(r._mapping) for r in _select_in(conn, STATS, touched)}
        counters: dict[tuple[int, str, str], dict[str, Any]] = {}
        traits_now = {(r.profile_id, r.key): dict(r._mapping) for r in _select_in(conn, TRAITS, touched)}
        trait_changes: dict[tuple[int, str], dict[str, Any]] = {}
        consents: list[dict[str, Any]] = []
        terms: set[tuple[str, int]] = set()
        counter_deltas: dict[tuple[int, str, str], list[Any]] = defaultdict(lambda: [0, None])

        for e in events:
            pid = members.get(e.id)
            if pid is None:
                continue
            at: datetime = e.timestamp
            payload = e.payload if isinstance(e.payload, dict) else {}
            props = payload.get("properties") if isinstance(payload.get("properties"), dict) else {}
            s = stats.get(pid) or stats.setdefault(pid, _new_stats(pid, at))
            s["first_seen"] = min(s["first_seen"], at)
            s["last_seen"] = max(s["last_seen"], at)
            s["event_count"] += 1
            s["stage_rank"] = max(s["stage_rank"], self.config.stage_rank(e.event if e.type == "track" else None))
            if e.type == "track" and e.event == "Order Completed":
                s["order_count"] += 1
                s["revenue"] += float(e.revenue or 0.0)
                if s["last_order_at"] is None or at >= s["last_order_at"]:
                    s["last_order_at"], s["last_order_id"] = at, e.order_id
            elif e.type == "track" and e.event == "Survey Responded":
                kind, score = props.get("survey_type"), props.get("score")
                if (
                    kind in ("nps", "csat")
                    and isinstance(score, int)
                    and (s[f"{kind}_at"] is None or at >= s[f"{kind}_at"])
                ):
                    s[kind], s[f"{kind}_at"] = score, at
            elif e.type == "track" and e.event == "Consent Updated":
                status = props.get("status")
                if status in CONSENT_STATUSES and props.get("purpose"):
                    consents.append(
                        {
                            "profile_id": pid,
                            "purpose": str(props["purpose"])[:64],
                            "channel": str(props.get("channel") or "all")[:32],
                            "status": status,
                            "recorded_at": at,
                            "source_id": e.source_id,
                            "event_id": e.id,
                            "actor": None,
                            "evidence": {"event_id": e.id, **(props.get("evidence") or {})}
                            if isinstance(props.get("evidence") or {}, dict)
                            else {"event_id": e.id},
                        }
                    )
            for kind, key in (
                ("channel", e.channel),
                ("source", str(e.source_id)),
                ("device", _device(payload)),
                ("store", props.get("store_id") if isinstance(props.get("store_id"), str) else None),
            ):
                if key:
                    d = counter_deltas[(pid, kind, key[:128])]
                    d[0] += 1
                    d[1] = at if d[1] is None or at > d[1] else d[1]
            traits = payload.get("traits") if e.type == "identify" else (payload.get("context") or {}).get("traits")
            if isinstance(traits, dict):
                for key, value in traits.items():
                    if not isinstance(key, str) or len(key) > 100 or value is None:
                        continue
                    current = trait_changes.get((pid, key)) or traits_now.get((pid, key))
                    merged = combine_trait(self.config.strategy(key), current, value, at)
                    if merged is not current:
                        trait_changes[(pid, key)] = {"profile_id": pid, "key": key, **merged}
                    if key in ("name", "first_name", "last_name") and isinstance(value, str):
                        terms.update((t, pid) for t in search_terms(value))

        if counter_deltas:
            keys = list(counter_deltas)
            existing = {
                (r.profile_id, r.kind, r.key): r for r in _select_in(conn, COUNTERS, sorted({k[0] for k in keys}))
            }
            for k, (n, last) in counter_deltas.items():
                old = existing.get(k)
                counters[k] = {
                    "profile_id": k[0],
                    "kind": k[1],
                    "key": k[2],
                    "count": n + (old.count if old else 0),
                    "last_at": max(last, old.last_at) if old else last,
                }
        dialect.upsert_replace(conn, STATS, [stats[p] for p in touched if p in stats], ["profile_id"])
        dialect.upsert_replace(conn, COUNTERS, list(counters.values()), ["profile_id", "kind", "key"])
        dialect.upsert_replace(conn, TRAITS, list(trait_changes.values()), ["profile_id", "key"])
        if consents:
            conn.execute(sa.insert(CONSENTS), consents)
        if terms:
            stmt = dialect.insert_ignoring_conflicts(conn, SEARCH, ["term", "profile_id"])
            conn.execute(stmt, [{"term": t, "profile_id": p} for t, p in sorted(terms)])
        now = utcnow()
        conn.execute(sa.insert(CHANGES), [{"profile_id": p, "changed_at": now} for p in touched])

    def reset(self, conn: Connection) -> None:
        for table in (TRAITS, STATS, COUNTERS, SEARCH, CHANGES):
            conn.execute(sa.delete(table))
        # consents given through the API are primary data; only those derived from events are recomputed
        conn.execute(sa.delete(CONSENTS).where(CONSENTS.c.event_id.is_not(None)))
