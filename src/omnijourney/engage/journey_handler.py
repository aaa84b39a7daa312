"""The journeys handler of the processing stage: event and segment triggers, exits, conversions.

Runs after the engage (segments) handler, in the step's transaction, so an entry exists exactly
when the events that caused it are processed. For each event (its cluster resolved by identity):

1. conversions: the cluster's entries (control ones too) waiting for this event within their
   window are marked converted — that is what hold-out uplift is measured on;
2. exits: active entries whose journey exits on this event end, and their scheduled steps are
   cancelled (a purchase ends the abandoned-cart journey);
3. triggers: journeys triggered by this event (or by `Segment Entered` of their segment) enter the
   cluster, subject to re-entry rules, once per event (`dedupe_key = event:<id>`, so a replay or a
   rebuild never enters twice).

Events of the journeys' own source (messages sent, opens, clicks) never trigger anything, so no
journey can trigger itself. A rebuild (`reset`) keeps journey state: what was sent was sent.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Row

from omnijourney.engage import schedule
from omnijourney.engage.journeys import EventTrigger, JourneyDef, default_journeys
from omnijourney.store.base import utcnow

ENTRIES = schedule.ENTRIES
SEGMENT_ENTERED = "Segment Entered"


def _props(e: Row[Any]) -> dict[str, Any]:
    payload = e.payload if isinstance(e.payload, dict) else {}
    props = payload.get("properties")
    return props if isinstance(props, dict) else {}


def _where(t: EventTrigger, props: dict[str, Any]) -> bool:
    for w in t.where:
        v = props.get(w.property)
        ok = {
            "eq": v == w.value,
            "ne": v != w.value,
            "in": isinstance(w.value, list) and v in w.value,
            "exists": v is not None,
        }.get(w.op)
        if ok is None:  # gte / lte on numbers
            try:
                ok = float(v) >= float(w.value) if w.op == "gte" else float(v) <= float(w.value)
            except (TypeError, ValueError):
                ok = False
        if not ok:
            return False
    return True


class JourneyHandler:
    name = "journeys"

    def __init__(self, journeys: Sequence[JourneyDef] | None = None) -> None:
        self.journeys = list(journeys if journeys is not None else default_journeys())
        self._synced = False
        self._any_enabled = any(j.enabled for j in self.journeys)

    def apply(self, conn: Connection, events: Sequence[Row[Any]], ctx: dict[str, Any]) -> None:
        if not self._synced:
            schedule.sync_journeys(conn=conn, journeys=self.journeys, now=utcnow())
            self._synced = True
        own = schedule.journey_source_id(conn)
        members: dict[int, int] = ctx.get("event_member", {})
        mine = [(e, m) for e in events if e.source_id != own and e.type == "track" and (m := members.get(e.id))]
        if not mine:
            return
        now = utcnow()
        live = schedule.active_journeys(conn) if self._any_enabled else []
        triggers = [(j, v) for j, v in live if j.trigger.event is not None or j.trigger.segment is not None]
        roots = schedule._roots(conn, [m for _, m in mine])
        # running entries of the touched clusters, for conversions and exits (any version's definition)
        open_entries: dict[int, list[Any]] = defaultdict(list)
        touched = sorted(set(roots.values()))
        for i in range(0, len(touched), 500):
            for r in conn.execute(
                sa.select(ENTRIES).where(
                    ENTRIES.c.profile_id.in_(touched[i : i + 500]),
                    sa.or_(ENTRIES.c.status.in_(["active", "control"]), ENTRIES.c.converted_at.is_(None)),
                    ENTRIES.c.entered_at >= now - timedelta(days=90),
                )
            ):
                open_entries[r.profile_id].append(r)
        for e, member in mine:
            root = roots.get(member, member)
            for entry in open_entries.get(root, ()):
                j = schedule.definition(conn, entry.journey_key, entry.journey_version)
                if (
                    j.conversion is not None
                    and entry.converted_at is None
                    and e.event == j.conversion.event
                    and now - entry.entered_at <= timedelta(days=j.conversion.within_days)
                ):
                    conn.execute(
                        sa.update(ENTRIES)
                        .where(ENTRIES.c.id == entry.id, ENTRIES.c.converted_at.is_(None))
                        .values(converted_at=now)
                    )
                if e.event in j.exit_on and entry.status in ("active", "control"):
                    status = "exited" if entry.status == "active" else "control"
                    if status == "exited":
                        schedule.end_entry(conn, entry_id=entry.id, status="exited", reason=f"exit: {e.event}", now=now)
            if not triggers:
                continue
            props: dict[str, Any] | None = None
            for j, version in triggers:
                if j.trigger.event is not None:
                    t = j.trigger.event
                    if e.event != t.name or now - e.timestamp > timedelta(hours=t.max_age_hours):
                        continue
                    props = props if props is not None else _props(e)
                    if not _where(t, props):
                        continue
                else:
                    assert j.trigger.segment is not None
                    if e.event != SEGMENT_ENTERED:
                        continue
                    props = props if props is not None else _props(e)
                    if props.get("segment") != j.trigger.segment.key:
                        continue
                keep = ("order_id", "cart_id", "location", "store", "pickup_location", "conversation_id", "segment")
                context = {k: props[k] for k in keep if k in props} | {"event": e.event, "event_id": e.id}
                schedule.enter(
                    conn,
                    journey=j,
                    version=version,
                    profile_id=root,
                    dedupe_key=f"event:{e.id}",
                    context=context,
                    now=now,
                )

    def reset(self, conn: Connection) -> None:
        """Journey state is not derived data: a rebuild must not send anything again, so it is kept."""
