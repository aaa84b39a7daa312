"""The identity handler of the processing stage."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Row

from omnijourney.identity.resolver import GraphState, resolve_batch
from omnijourney.identity.rules import IdentityRules

#: a rebuild drops its in-memory graph beyond this many links and reads from the database
#: again: up to about 800 bytes per link with its profile and cluster bookkeeping (tracemalloc,
#: one profile per 1.3 links), so at most about 0.8 GB
KEEP_MAX_LINKS = 1_000_000


class IdentityHandler:
    """Resolves each batch's events to profiles.

    Normally every step loads the part of the graph its batch touches (other writers — an
    unmerge from the API, another worker — may have changed the rest). During a rebuild
    (`ctx["rebuild"]`, see `pipeline.service.process_step`) this process replays the log
    alone, so the graph stays in memory from one step to the next and, when the rebuild
    starts from an empty graph, is never read back at all. The kept graph is used only
    when the step starts exactly where the last one ended (same checkpoint position and
    action sequence) and no identity action (unmerge) was applied in between; otherwise
    it is dropped and the step reads from the database, so a rolled-back step, a
    concurrent worker or an unmerge can never leave it stale.
    """

    name = "identity"

    def __init__(self, rules: IdentityRules, *, keep_max_links: int = KEEP_MAX_LINKS) -> None:
        self.rules = rules
        self.keep_max_links = keep_max_links
        self._kept: GraphState | None = None
        #: (checkpoint position, action sequence) the kept graph is valid at
        self._kept_at: tuple[int, int] | None = None

    def apply(self, conn: Connection, events: Sequence[Row[Any]], ctx: dict[str, Any]) -> None:
        rebuild = bool(ctx.get("rebuild"))
        kept = self._take_kept(conn, ctx) if rebuild else None
        self._kept = self._kept_at = None
        state = resolve_batch(conn, events, self.rules, state=kept)
        ctx["event_member"] = state.event_member
        ctx["touched_roots"] = state.touched_roots
        if rebuild and len(state.links) <= self.keep_max_links:
            self._kept, self._kept_at = state, (events[-1].id, ctx["action_seq"])

    def _take_kept(self, conn: Connection, ctx: dict[str, Any]) -> GraphState | None:
        start = ctx.get("checkpoint")
        if ctx.get("actions_applied") or start is None:
            return None
        if self._kept is not None and self._kept_at == start:
            return self._kept
        if start[0] == 0 and _graph_empty(conn):
            return GraphState(rules=self.rules, trusted_sources=frozenset(), complete=True)
        return None

    def reset(self, conn: Connection) -> None:
        from omnijourney.identity.service import GRAPH_TABLES
        from omnijourney.store.registry import metadata

        self._kept = self._kept_at = None
        for table in GRAPH_TABLES:
            conn.execute(sa.delete(metadata.tables[table]))


def _graph_empty(conn: Connection) -> bool:
    for table in ("profiles", "identity_links", "identity_blocks"):
        if conn.exec_driver_sql(f"SELECT 1 FROM {table} LIMIT 1").first() is not None:
            return False
    return True
