"""The identity handler of the processing stage."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy.engine import Connection, Row

from omnijourney.identity.resolver import resolve_batch
from omnijourney.identity.rules import IdentityRules


class IdentityHandler:
    name = "identity"

    def __init__(self, rules: IdentityRules) -> None:
        self.rules = rules

    def apply(self, conn: Connection, events: Sequence[Row[Any]], ctx: dict[str, Any]) -> None:
        state = resolve_batch(conn, events, self.rules)
        ctx["event_member"] = state.event_member
        ctx["touched_roots"] = state.touched_roots

    def reset(self, conn: Connection) -> None:
        import sqlalchemy as sa

        from omnijourney.identity.service import GRAPH_TABLES
        from omnijourney.store.registry import metadata

        for table in GRAPH_TABLES:
            conn.execute(sa.delete(metadata.tables[table]))
