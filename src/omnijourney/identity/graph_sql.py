"""Driver-level reads of the identity graph for the resolver's hot path.

Each batch reads the links and clusters its identifiers touch with "column IN <list>"
queries. Built with SQLAlchemy, an expanding IN list is re-rendered into SQL text on every
execution and every value goes through the column type's result processor; for the
processing stage that cost more CPU than the queries themselves. Here each query is one
fixed SQL text whose whole list is a single parameter (`dialect.driver_any`), so the
driver's statement cache serves it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.engine import Connection

from omnijourney.store import dialect
from omnijourney.store.registry import metadata


class GraphReader:
    """The resolver's read queries for one connection's dialect (built once per dialect)."""

    def __init__(self, conn: Connection) -> None:
        p = dialect.driver_param(conn)
        self._texts = dialect.driver_any(conn, "text")
        self._ints = dialect.driver_any(conn, "bigint")
        self.links_by_value = (
            "SELECT l.value, l.profile_id, l.linked_at, p.canonical_id FROM identity_links l "
            f"JOIN profiles p ON p.id = l.profile_id WHERE l.id_type = {p} AND l.value {self._texts}"
        )
        self.members_of_roots = f"SELECT id, merged_into, canonical_id FROM profiles WHERE canonical_id {self._ints}"
        self.links_of_members = (
            f"SELECT id_type, value, profile_id, linked_at FROM identity_links WHERE profile_id {self._ints}"
        )
        self.blocks_of_members = (
            f"SELECT profile_a, profile_b FROM identity_blocks WHERE profile_a {self._ints} OR profile_b {self._ints}"
        )

    def rows(self, conn: Connection, sql: str, *params: Any) -> list[Any]:
        bound = tuple(dialect.in_values_param(conn, list(p)) if isinstance(p, list | tuple | set | frozenset) else p
                      for p in params)  # fmt: skip
        return conn.exec_driver_sql(sql, bound).all()

    def links_by_values(self, conn: Connection, id_type: str, values: Iterable[str]) -> list[Any]:
        """(value, profile_id, linked_at, canonical_id) of stored links of one type among `values`."""
        return self.rows(conn, self.links_by_value, id_type, list(values))

    def members(self, conn: Connection, roots: Iterable[int]) -> list[Any]:
        return self.rows(conn, self.members_of_roots, list(roots))

    def links_of(self, conn: Connection, members: Iterable[int]) -> list[Any]:
        return self.rows(conn, self.links_of_members, list(members))

    def blocks_of(self, conn: Connection, members: Iterable[int]) -> list[Any]:
        ids = list(members)
        return self.rows(conn, self.blocks_of_members, ids, ids)


_READERS: dict[bool, GraphReader] = {}


def reader(conn: Connection) -> GraphReader:
    sqlite = dialect.is_sqlite(conn)
    found = _READERS.get(sqlite)
    if found is None:
        found = _READERS[sqlite] = GraphReader(conn)
    return found


def _as_utc(value: Any) -> datetime:
    # what `store.base.UTCDateTime` returns: text on SQLite, a naive UTC datetime on PostgreSQL
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value.replace(tzinfo=UTC)


def utc_reader() -> Callable[[Any], datetime]:
    """Driver value of a UTCDateTime column -> the aware UTC datetime SQLAlchemy would give."""
    return _as_utc


def insert_rows(conn: Connection, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """A plain INSERT of driver-ready rows (`dialect.datetime_binder` for timestamps); a duplicate
    key fails the statement as usual (multi-row statements on SQLite, COPY on PostgreSQL)."""
    if rows:
        flat = [v for r in rows for v in r]
        dialect.insert_values_ignoring_conflicts(conn, metadata.tables[table], columns, flat, ())
