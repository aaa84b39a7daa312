"""The engage handler of the processing stage: keeps segment membership current as events arrive.

Runs last in the step's transaction. The clusters touched by the step's events (the members
identity resolved them to, and the clusters identity changed) are re-evaluated against every
active segment in one set-based pass (`service.evaluate`). Entries and exits are appended to
the log as events of the internal source `omnijourney:engage`; those events are skipped here,
so a segment event never re-triggers an evaluation.

Reset (rebuild) forgets memberships and their history; replaying the log re-derives them, and
the entry / exit events it appends again carry the same message ids, so the log keeps one each.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy.engine import Connection, Row

from omnijourney.engage import service
from omnijourney.engage.config import default_config
from omnijourney.engage.schemas import EngageConfig
from omnijourney.profiles.config import ProfileConfig, load_profile_config
from omnijourney.store.base import utcnow


class EngageHandler:
    name = "engage"

    def __init__(self, config: EngageConfig | None = None, profile_config: ProfileConfig | None = None) -> None:
        self.config = config or default_config()
        self.profile_config = profile_config or load_profile_config()
        self._synced = False

    def apply(self, conn: Connection, events: Sequence[Row[Any]], ctx: dict[str, Any]) -> None:
        members: dict[int, int] = ctx.get("event_member", {})
        own = service.engage_source_id(conn)
        touched = {m for e in events if e.source_id != own and (m := members.get(e.id)) is not None}
        touched |= set(ctx.get("touched_roots", ()))
        if not touched:
            return
        now = utcnow()
        if not self._synced:
            service.sync_config(conn=conn, config=self.config, now=now)
            self._synced = True
        segments = service.active_segments(conn=conn)
        if not segments:
            return
        roots = service.roots_of(conn=conn, member_ids=touched)
        service.evaluate(
            conn=conn, roots=roots, segments=segments, now=now, profile_config=self.profile_config, reason="event"
        )

    def reset(self, conn: Connection) -> None:
        service.reset(conn=conn)
