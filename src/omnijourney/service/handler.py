"""The service handler of the processing stage: service events -> conversations and their measures.

It runs after identity (and profiles, commerce) in the same step and uses the member each
event was resolved to. Events this package appended itself for API changes carry a marker
(only trusted from the internal service source); while their outbox entry exists they were
applied by the API already and are skipped, and after a reset they are applied like any
other event, so a rebuild recreates what the API made.

A malformed event is skipped (and logged), never stops the stage: a batch is applied in one
savepoint, and only if an event in it fails, again event by event, each in its own savepoint.

`Profile Unmerged` (appended by the unmerge command, source `omnijourney:identity` only) re-derives
the repeat-contact links of both sides: links between conversations that now belong to different
customers are stale (`service.relink_after_unmerge`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Row

from omnijourney.identity import service as identity
from omnijourney.service import outbox
from omnijourney.service import service as svc
from omnijourney.service.config import ServiceConfig, load_service_config
from omnijourney.store.base import utcnow

log = logging.getLogger(__name__)

UNMERGED = identity.UNMERGED_EVENT
#: what a malformed event raises (database outages and deadlocks are not among them)
_SKIPPED = (ValueError, TypeError, KeyError, AttributeError, sa.exc.IntegrityError, sa.exc.DataError)


class ServiceHandler:
    name = "service"

    def __init__(self, config: ServiceConfig | None = None) -> None:
        self.config = config or load_service_config()

    def apply(self, conn: Connection, events: Sequence[Row[Any]], ctx: dict[str, Any]) -> None:
        wanted = [e for e in events if e.type == "track" and (e.event in svc.HANDLED_EVENTS or e.event == UNMERGED)]
        if not wanted:
            return
        unmerge_source = None
        if any(e.event == UNMERGED for e in wanted):
            unmerge_source = conn.execute(
                sa.select(outbox.SOURCES.c.id).where(outbox.SOURCES.c.name == identity.UNMERGE_SOURCE)
            ).scalar_one_or_none()
        members: dict[int, int] = ctx.get("event_member", {})
        internal = conn.execute(
            sa.select(outbox.SOURCES.c.id).where(outbox.SOURCES.c.name == outbox.SERVICE_SOURCE)
        ).scalar_one_or_none()
        applied: set[int] = set()
        if internal is not None:
            ours = [e.id for e in wanted if e.source_id == internal]
            if ours:
                applied = {
                    r[0] for r in conn.execute(sa.select(svc.OUTBOX.c.event_id).where(svc.OUTBOX.c.event_id.in_(ours)))
                }
        todo = [e for e in wanted if e.id not in applied]
        if not todo:
            return
        # Optimistically the whole batch in one savepoint; only when an event fails is the batch
        # applied again event by event, each in its own savepoint (the failing ones skipped). Both
        # passes read the conversations afresh, so the result is the same as event by event.
        try:
            with conn.begin_nested():
                for e in todo:
                    self._apply_one(conn, e, members, internal, unmerge_source)
            return
        except _SKIPPED:
            pass
        for e in todo:
            if e.event == UNMERGED:  # outside a savepoint, as always (it isolates its own failures)
                self._apply_one(conn, e, members, internal, unmerge_source)
                continue
            try:
                with conn.begin_nested():
                    self._apply_one(conn, e, members, internal, unmerge_source)
            except _SKIPPED:
                # a malformed event must not stop the stage (database outages and deadlocks still do)
                log.warning("service event %s (%s) skipped", e.id, e.event, exc_info=True)

    def _apply_one(
        self,
        conn: Connection,
        e: Row[Any],
        members: dict[int, int],
        internal: int | None,
        unmerge_source: int | None,
    ) -> None:
        payload = e.payload if isinstance(e.payload, dict) else {}
        props = payload.get("properties")
        props = props if isinstance(props, dict) else {}
        if e.event == UNMERGED:
            if unmerge_source is not None and e.source_id == unmerge_source:
                self._unmerged(conn, props)
            return
        marker = None
        if internal is not None and e.source_id == internal:
            context = payload.get("context") if isinstance(payload.get("context"), dict) else {}
            marker = context.get("omnijourney") if isinstance(context.get("omnijourney"), dict) else None
        ev = svc.ServiceEvent(
            event_id=e.id,
            source_id=e.source_id,
            name=e.event,
            channel=e.channel,
            timestamp=e.timestamp,
            props=props,
            member_id=marker.get("profile_id") if marker else members.get(e.id),
            message_id=payload.get("messageId") if isinstance(payload.get("messageId"), str) else None,
            conversation_id=marker.get("conversation_id") if marker else None,
        )
        conv = svc.apply_event(conn, ev)
        if conv is not None:
            svc.refresh(conn, conversation=conv, config=self.config)
            if marker is not None:
                conn.execute(
                    sa.insert(svc.OUTBOX).values(
                        event_id=e.id,
                        conversation_id=conv["id"],
                        kind=str(marker.get("kind") or "replayed")[:32],
                        created_at=utcnow(),
                    )
                )

    def _unmerged(self, conn: Connection, props: dict[str, Any]) -> None:
        sides = [p for p in (props.get("survivor_id"), props.get("restored_id")) if isinstance(p, int)]
        if not sides:
            return
        try:
            with conn.begin_nested():
                svc.relink_after_unmerge(conn, profile_ids=sides, config=self.config)
        except (ValueError, TypeError, KeyError, sa.exc.IntegrityError, sa.exc.DataError):
            log.warning("service: re-linking after the unmerge of %s failed", sides, exc_info=True)

    def reset(self, conn: Connection) -> None:
        svc.reset(conn)
