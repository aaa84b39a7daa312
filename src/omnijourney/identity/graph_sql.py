"""Driver-level reads of the identity graph for the resolver's hot path.

Each batch reads the links and clusters its identifiers touch with "column IN <list>"
queries. Built with SQLAlchemy, an expanding IN list is re-rendered into SQL text on every
execution and every value goes through the column type's result processor; for the
processing stage that cost more CPU than the queries themselves. Here each query is one
fixed SQL text whose whole list is a single parameter, so the driver's statement cache
serves it: on SQLite a JSON array read with `json_each` (built into SQLite), on PostgreSQL
an array compared with `= ANY`. Both are served by the same indexes as `IN (...)`.

This is a dialect difference kept beside its only user; `store/dialect.py` may absorb it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

import orjson
from sqlalchemy.engine import Connection

from omnijourney.store import dialect


class GraphReader:
    """The resolver's read queries for one connection's dialect (built once per dialect)."""

    def __init__(self, sqlite: bool) -> None:
        self.sqlite = sqlite
        if sqlite:
            self._param = "?"
            self._texts = "IN (SELECT value FROM json_each(?))"
            self._ints = self._texts
        else:
            self._param = "%s"
            self._texts = "= ANY(%s::text[])"
            self._ints = "= ANY(%s::bigint[])"
        p = self._param
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

    def _list(self, values: Sequence[Any]) -> Any:
        return orjson.dumps(list(values)).decode() if self.sqlite else list(values)

    def rows(self, conn: Connection, sql: str, *params: Any) -> list[Any]:
        bound = tuple(self._list(p) if isinstance(p, list | tuple | set | frozenset) else p for p in params)
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
        found = _READERS[sqlite] = GraphReader(sqlite)
    return found


def _as_utc(value: Any) -> datetime:
    # what `store.base.UTCDateTime` returns: text on SQLite, a naive UTC datetime on PostgreSQL
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value.replace(tzinfo=UTC)


def utc_reader() -> Callable[[Any], datetime]:
    """Driver value of a UTCDateTime column -> the aware UTC datetime SQLAlchemy would give."""
    return _as_utc


#: most rows per multi-row INSERT on SQLite; a group is split into full chunks plus power-of-two
#: remainders, so only a handful of distinct statements are ever prepared (and cached)
INSERT_CHUNK = 256


def _chunk_sizes(n: int) -> list[int]:
    sizes = [INSERT_CHUNK] * (n // INSERT_CHUNK)
    rest, bit = n % INSERT_CHUNK, INSERT_CHUNK
    while rest:
        bit //= 2
        if rest >= bit:
            sizes.append(bit)
            rest -= bit
    return sizes


def insert_rows(conn: Connection, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """A plain INSERT of driver-ready rows (`dialect.datetime_binder` for timestamps); a duplicate
    key fails the statement as usual. SQLite: one multi-row statement per chunk; PostgreSQL: COPY."""
    if not rows:
        return
    quote = conn.dialect.identifier_preparer.quote
    cols = ", ".join(quote(c) for c in columns)
    if not dialect.is_sqlite(conn):
        cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
        try:
            with cursor.copy(f"COPY {quote(table)} ({cols}) FROM STDIN") as copy:
                for row in rows:
                    copy.write_row(row)
        finally:
            cursor.close()
        return
    row_sql = "(" + ", ".join("?" for _ in columns) + ")"
    head = f"INSERT INTO {quote(table)} ({cols}) VALUES "
    start = 0
    for size in _chunk_sizes(len(rows)):
        part = rows[start : start + size]
        conn.exec_driver_sql(head + ", ".join([row_sql] * size), tuple(v for r in part for v in r))
        start += size
