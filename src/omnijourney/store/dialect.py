"""Every difference between SQLite and PostgreSQL lives here and nowhere else."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection

#: advisory lock key serialising event appends on PostgreSQL (arbitrary, stable)
INGEST_LOCK_KEY = 7_140_001


def is_sqlite(conn_or_engine: Connection | sa.Engine) -> bool:
    return conn_or_engine.dialect.name == "sqlite"


def insert_ignoring_conflicts(conn: Connection, table: sa.Table, index_elements: list[str]) -> Any:
    """INSERT ... ON CONFLICT (keys) DO NOTHING for the connection's dialect."""
    if is_sqlite(conn):
        return sqlite.insert(table).on_conflict_do_nothing(index_elements=index_elements)
    return postgresql.insert(table).on_conflict_do_nothing(index_elements=index_elements)


def lock_event_log(conn: Connection) -> None:
    """Serialise appends to the event log for the rest of this transaction.

    The processing stage reads events in id order from a checkpoint. On PostgreSQL two
    concurrent appenders could commit ids out of order, and a reader would skip the
    lower id forever; holding this lock while ids are drawn and committed makes ids
    commit in order. SQLite already has a single writer (BEGIN IMMEDIATE).
    """
    if not is_sqlite(conn):
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": INGEST_LOCK_KEY})


def for_update(stmt: sa.Select[Any], conn: Connection) -> sa.Select[Any]:
    """Row lock on PostgreSQL; on SQLite the write transaction already excludes writers."""
    return stmt if is_sqlite(conn) else stmt.with_for_update()


def upsert_add(conn: Connection, table: sa.Table, rows: list[dict[str, Any]], keys: list[str], add: str) -> None:
    """INSERT rows; where the key exists, add the row's `add` column to the stored one."""
    if not rows:
        return
    ins = sqlite.insert(table) if is_sqlite(conn) else postgresql.insert(table)
    stmt = ins.on_conflict_do_update(
        index_elements=keys, set_={add: getattr(table.c, add) + getattr(ins.excluded, add)}
    )
    conn.execute(stmt, rows)


def upsert_replace(conn: Connection, table: sa.Table, rows: list[dict[str, Any]], keys: list[str]) -> None:
    """INSERT rows; where the key exists, overwrite every other column with the row's value."""
    if not rows:
        return
    ins = sqlite.insert(table) if is_sqlite(conn) else postgresql.insert(table)
    cols = [c for c in rows[0] if c not in keys]
    stmt = ins.on_conflict_do_update(index_elements=keys, set_={c: getattr(ins.excluded, c) for c in cols})
    conn.execute(stmt, rows)
