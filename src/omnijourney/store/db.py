"""Engine creation and transaction scopes.

Services never commit; callers open a scope here and own the transaction:

    with db.write() as conn:
        ingest_service.store(conn=conn, ...)
        pipeline_service.advance(conn=conn, ...)

On SQLite a write scope starts with BEGIN IMMEDIATE, taking the single writer lock up
front, so a read-then-write transaction can never fail half-way with SQLITE_BUSY; read
scopes use a deferred BEGIN and never block writers (WAL). The write scopes of one process
first queue on a process-wide lock of their engine: SQLite's busy handler polls with sleeps
that grow to 100 ms and is not fair, so with dozens of writer threads the writer lock sat
idle between sleeps and unlucky writers waited past the busy timeout; queued in-process,
only one thread per process polls.
"""

from __future__ import annotations

import sqlite3
import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Connection

from omnijourney.store.base import json_deserializer, json_serializer

_WRITE = "omnijourney_write"
#: seconds a SQLite writer waits in all (the in-process queue, then the busy timeout)
SQLITE_BUSY_SECONDS = 30
_writer_locks: weakref.WeakKeyDictionary[sa.Engine, threading.RLock] = weakref.WeakKeyDictionary()
_writer_locks_guard = threading.Lock()


def create_engine(url: str, *, sqlite_synchronous: str = "FULL", pool_size: int = 10) -> sa.Engine:
    if url.startswith("sqlite"):
        return _sqlite_engine(url, sqlite_synchronous)
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        url = "postgresql+psycopg://" + url.split("://", 1)[1]
    return sa.create_engine(
        url,
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_pre_ping=True,
        json_serializer=json_serializer,
        json_deserializer=json_deserializer,
    )


def _sqlite_engine(url: str, synchronous: str) -> sa.Engine:
    path = sa.engine.make_url(url).database
    if path and path != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    engine = sa.create_engine(
        url,
        json_serializer=json_serializer,
        json_deserializer=json_deserializer,
        connect_args={"check_same_thread": False, "timeout": SQLITE_BUSY_SECONDS},
        pool_size=20,
        max_overflow=20,
    )

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # we emit BEGIN ourselves
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute(f"PRAGMA synchronous={synchronous}")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_SECONDS * 1000}")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        immediate = conn.get_execution_options().get(_WRITE, False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    with _writer_locks_guard:
        _writer_locks[engine] = threading.RLock()  # re-entrant: a nested scope fails as before
    return engine


@contextmanager
def _sqlite_writer(engine: sa.Engine) -> Iterator[None]:
    lock = _writer_locks.get(engine)
    if lock is None:  # an engine not made by `create_engine`
        yield
        return
    if not lock.acquire(timeout=SQLITE_BUSY_SECONDS):
        raise sa.exc.OperationalError("BEGIN IMMEDIATE", None, sqlite3.OperationalError("database is locked"))
    try:
        yield
    finally:
        lock.release()


@contextmanager
def write(engine: sa.Engine) -> Iterator[Connection]:
    """A read-write transaction, committed when the block exits cleanly."""
    queue = _sqlite_writer(engine) if engine.dialect.name == "sqlite" else nullcontext()
    with queue, engine.connect() as conn:
        conn = conn.execution_options(**{_WRITE: True})
        with conn.begin():
            yield conn


@contextmanager
def read(engine: sa.Engine) -> Iterator[Connection]:
    """A read-only transaction (on SQLite one consistent snapshot; PostgreSQL's READ COMMITTED
    takes a new snapshot for each statement)."""
    with engine.connect() as conn, conn.begin():
        yield conn


@contextmanager
def read_statements(engine: sa.Engine) -> Iterator[Connection]:
    """Read-only statements that see what `read` would let them see, at fewer round trips.

    PostgreSQL (READ COMMITTED) gives each statement its own snapshot inside a transaction too,
    so these run in autocommit: no BEGIN and COMMIT round trips (two of a console page's ~10-20).
    SQLite keeps its deferred read transaction (one WAL snapshot; nothing to save). Only for
    blocks that never write."""
    if engine.dialect.name == "sqlite":
        with read(engine) as conn:
            yield conn
        return
    with engine.connect() as conn:
        yield conn.execution_options(isolation_level="AUTOCOMMIT")
