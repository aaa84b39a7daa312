"""Every difference between SQLite and PostgreSQL lives here and nowhere else."""

from __future__ import annotations

import fcntl
import hashlib
import os
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from itertools import chain
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.sql.visitors import InternalTraversal

from omnijourney.store.base import json_serializer

#: advisory lock key serialising event appends on PostgreSQL (arbitrary, stable)
INGEST_LOCK_KEY = 7_140_001


def is_sqlite(conn_or_engine: Connection | sa.Engine) -> bool:
    return conn_or_engine.dialect.name == "sqlite"


def single_writer(conn_or_engine: Connection | sa.Engine) -> bool:
    """Whether every write transaction takes one database-wide lock (SQLite), so writers queue."""
    return is_sqlite(conn_or_engine)


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


def lock_key(conn: Connection, namespace: str, key: str) -> None:
    """Serialise the write transactions about one key (e.g. one customer and channel) until commit.

    PostgreSQL: a transaction-level advisory lock on a 64-bit hash of the key (no row needs to exist;
    READ COMMITTED statements after it see what the previous holder committed). SQLite: nothing to
    do, a write transaction (BEGIN IMMEDIATE) already excludes every other writer."""
    if not is_sqlite(conn):
        digest = hashlib.blake2b(f"{namespace}:{key}".encode(), digest_size=8).digest()
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": int.from_bytes(digest, "big", signed=True)})


class _FileLock:
    """An exclusive `flock` on a file beside a SQLite database, taken and released around a transaction.

    SQLite's own lock is taken by polling: a writer that finds it held sleeps 1, 2, 5 ... 25 ms
    and tries again, so two API processes appending in turn leave the lock idle between
    them. Appenders that queue here first block in the kernel and wake the moment the
    holder releases. Each instance has its own descriptor (flock locks belong to an open
    file, so two instances exclude each other even within one process); it is opened on
    first use, in the thread and process that use it.
    """

    def __init__(self, path: str) -> None:
        self._path = path
        self._fd: int | None = None

    def __enter__(self) -> None:
        if self._fd is None:
            self._fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(self._fd, fcntl.LOCK_EX)

    def __exit__(self, *exc: object) -> None:
        assert self._fd is not None
        fcntl.flock(self._fd, fcntl.LOCK_UN)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def refused_rows(exc: BaseException) -> bool:
    """Whether a write failed on its rows (a constraint, a value the database refuses).

    Not on the database being unavailable or locked (`OperationalError`): retrying such a
    write in smaller parts would only wait for the same timeout again. The driver's own
    exception classes count too, for writes made at driver level (PostgreSQL COPY).
    """
    if isinstance(exc, sa.exc.IntegrityError | sa.exc.DataError):
        return True
    try:
        import psycopg
    except ImportError:  # pragma: no cover - psycopg is a dependency
        return False
    return isinstance(exc, psycopg.IntegrityError | psycopg.DataError)


class _NoQueue:
    """`append_queue` where there is nothing to queue on."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None

    def close(self) -> None:
        return None


def append_queue(engine: sa.Engine) -> _FileLock | _NoQueue:
    """A lock that event appenders of every process take around their transaction.

    SQLite (a database file): a `_FileLock` beside it, so API processes
    (`serve --workers N`) append in turn without polling for SQLite's write lock. Other
    writers (the processing stage) do not take it; they meet SQLite's lock as before.
    PostgreSQL: nothing, appends already queue on `lock_event_log`'s advisory lock.
    """
    if is_sqlite(engine):
        path = engine.url.database
        if path and path != ":memory:" and not path.startswith("file:") and hasattr(fcntl, "flock"):
            return _FileLock(path + "-append.lock")
    return _NoQueue()


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
    """INSERT rows; where the key exists, overwrite every other column with the row's value.

    Rows must all have the keys of the first. Runs at driver level (`upsert_rows`) when every
    column's type has a known driver form, which is the processing stage's hot path; later
    rows win over earlier rows with the same key.
    """
    if not rows:
        return
    columns = list(rows[0])
    binders = _driver_binders(conn, table, columns)
    if binders is None:
        ins = sqlite.insert(table) if is_sqlite(conn) else postgresql.insert(table)
        cols = [c for c in columns if c not in keys]
        stmt = ins.on_conflict_do_update(index_elements=keys, set_={c: getattr(ins.excluded, c) for c in cols})
        conn.execute(stmt, rows)
        return
    # one conversion per column over all rows (not a generator per value), then one row per key
    bound = list(
        zip(
            *(
                [row[c] for row in rows] if bind is None else [bind(row[c]) for row in rows]
                for c, bind in zip(columns, binders, strict=True)
            ),
            strict=True,
        )
    )
    if len(keys) == 1:
        k = columns.index(keys[0])
        unique = {r[k]: r for r in bound}
    else:
        idx = [columns.index(c) for c in keys]
        unique = {tuple(r[i] for i in idx): r for r in bound}
    json_columns = [c for c in columns if isinstance(table.c[c].type, sa.JSON)]
    upsert_rows(conn, table, columns, list(unique.values()), keys, json_columns=json_columns)


#: `upsert_rows` merge expressions: `{old}` is the stored value of the column, `{new}` the row's;
#: `{old[col]}` / `{new[col]}` another column's. Plain SQL, the same on both dialects (NULLs ignored).
MERGE_ADD = "{old} + {new}"
MERGE_MIN = "CASE WHEN {old} IS NULL OR {new} < {old} THEN {new} ELSE {old} END"
MERGE_MAX = "CASE WHEN {old} IS NULL OR {new} > {old} THEN {new} ELSE {old} END"


def merge_latest(by: str) -> str:
    """The row's value where its `by` column is set and not older than the stored one (ties: the row)."""
    return (
        f"CASE WHEN {{new[{by}]}} IS NOT NULL AND ({{old[{by}]}} IS NULL OR {{new[{by}]}} >= {{old[{by}]}}) "
        "THEN {new} ELSE {old} END"
    )


def merge_if_positive(flag: str) -> str:
    """The row's value where its `flag` column is > 0, else the stored one."""
    return f"CASE WHEN {{new[{flag}]}} > 0 THEN {{new}} ELSE {{old}} END"


class _Ref:
    """A column reference for merge templates: formats as its own column, indexes to another."""

    def __init__(self, prefix: str, column: str, quote: Callable[[str], str]) -> None:
        self._prefix, self._column, self._quote = prefix, column, quote

    def __format__(self, spec: str) -> str:
        return f"{self._prefix}.{self._quote(self._column)}"

    def __getitem__(self, column: str) -> str:
        return f"{self._prefix}.{self._quote(column)}"


#: (dialect, table, columns, keys, merge) -> (statement head, row placeholder, conflict clause)
_UPSERT_SQL: dict[tuple[Any, ...], tuple[str, str, str]] = {}


def _upsert_sql(
    conn: Connection,
    table: sa.Table,
    columns: Sequence[str],
    keys: Sequence[str],
    merge: Mapping[str, str],
    json_columns: Sequence[str],
) -> tuple[str, str, str]:
    cache_key = (conn.dialect.name, table.name, tuple(columns), tuple(keys), tuple(sorted(merge.items())))
    found = _UPSERT_SQL.get(cache_key)
    if found is not None:
        return found
    quote = conn.dialect.identifier_preparer.quote
    target = quote(table.name)
    head = f"INSERT INTO {target} ({', '.join(quote(c) for c in columns)}) VALUES "
    sets = []
    for c in columns:
        if c in keys:
            continue
        template = merge.get(c)
        if template is None:
            sets.append(f"{quote(c)} = excluded.{quote(c)}")
        else:
            expr = template.format(old=_Ref(target, c, quote), new=_Ref("excluded", c, quote))
            sets.append(f"{quote(c)} = {expr}")
    conflict = f" ON CONFLICT ({', '.join(quote(k) for k in keys)}) DO " + (
        f"UPDATE SET {', '.join(sets)}" if sets else "NOTHING"
    )
    if is_sqlite(conn):
        row_sql = "(" + ", ".join("?" for _ in columns) + ")"
    else:
        row_sql = "(" + ", ".join("%s::jsonb" if c in json_columns else "%s" for c in columns) + ")"
    found = _UPSERT_SQL[cache_key] = (head, row_sql, conflict)
    return found


def upsert_rows(
    conn: Connection,
    table: sa.Table,
    columns: Sequence[str],
    rows: Sequence[Sequence[Any]],
    keys: Sequence[str],
    *,
    merge: Mapping[str, str] | None = None,
    json_columns: Sequence[str] = (),
) -> None:
    """INSERT driver-ready rows (tuples in `columns` order); where the key exists, update the stored row.

    Each non-key column is overwritten with the row's value, or combined with the stored one by
    its `merge` template (`MERGE_ADD`, `MERGE_MIN`, `MERGE_MAX`, `merge_latest`, ...), so a
    counter or a first/last time needs no read before the write. Values must be what the driver
    binds (`datetime_binder`, `json_binder`); at most one row per key. The statement text is
    built once per shape and chunks come in a few fixed sizes, so the driver's statement
    cache serves every execution; PostgreSQL takes larger sets through COPY.
    """
    if not rows:
        return
    width = len(columns)
    head, row_sql, conflict = _upsert_sql(conn, table, columns, keys, merge or {}, json_columns)
    if not is_sqlite(conn) and len(rows) >= PG_COPY_MIN_ROWS:
        _pg_copy_insert(conn, table, columns, list(chain.from_iterable(rows)), conflict)
        return
    per_chunk = max(1, min(INSERT_CHUNK, 30_000 // width))
    start = 0
    for size in _chunks(len(rows), per_chunk):
        part = rows[start : start + size]
        start += size
        conn.exec_driver_sql(head + ", ".join([row_sql] * size) + conflict, tuple(chain.from_iterable(part)))


def _driver_binders(conn: Connection, table: sa.Table, columns: Sequence[str]) -> list[Any] | None:
    """Per column: None (the value binds as is), a converter, or None overall when a type is unknown."""
    from omnijourney.store.base import UTCDateTime

    as_datetime = datetime_binder(conn)
    out: list[Any] = []
    for name in columns:
        col_type = table.c[name].type
        if isinstance(col_type, UTCDateTime):
            out.append(as_datetime)
        elif isinstance(col_type, sa.JSON):
            # like SQLAlchemy's JSON type: Python None is stored as JSON null unless none_as_null
            out.append(_json_text if col_type.none_as_null else json_serializer)
        elif isinstance(col_type, sa.TypeDecorator | sa.Enum):
            return None  # its own bind processing: leave it to SQLAlchemy
        elif isinstance(col_type, sa.Float) or (
            isinstance(col_type, sa.Integer | sa.String | sa.Boolean) and not isinstance(col_type, sa.Numeric)
        ):
            out.append(None)
        else:
            return None
    return out


# --------------------------------------------------------------------------- bulk appends at driver level
#
# The ingestion hot path writes thousands of rows per transaction. Binding them through
# SQLAlchemy costs more than the insert itself (a TypeDecorator and the dialect's datetime
# processor per value, parameter construction per row), and on PostgreSQL executemany runs
# one INSERT per row. These helpers take rows whose values are already what the driver
# needs (`datetime_binder`, `json_binder`) and insert them with one driver-level statement
# per chunk. The stored values are exactly what SQLAlchemy's own types would have stored,
# so reading them back through the ORM types (UTCDateTime, JSONType) gives the same objects.

#: most rows per multi-row INSERT statement (17 columns x 512 rows = 8,704 parameters, far below
#: SQLite's 32,766 and PostgreSQL's 65,535). A group is split into full chunks plus power-of-two
#: remainders, so only ten distinct statements are ever compiled (and then cached by the driver).
INSERT_CHUNK = 512


def _naive_utc(value: datetime) -> datetime:
    if value.tzinfo is None:
        raise ValueError("naive datetime given; omnijourney stores aware UTC timestamps only")
    if value.tzinfo is not UTC:
        value = value.astimezone(UTC)
    return value.replace(tzinfo=None)


def _sqlite_datetime(value: datetime | None) -> str | None:
    # SQLAlchemy's SQLite DATETIME storage format: "YYYY-MM-DD HH:MM:SS.ffffff", naive UTC
    if value is None:
        return None
    if value.tzinfo is UTC:  # the common case, in one call: drop the "+00:00"
        return value.isoformat(" ", "microseconds")[:-6]
    return _naive_utc(value).isoformat(" ", "microseconds")


def _pg_datetime(value: datetime | None) -> datetime | None:
    return None if value is None else _naive_utc(value)


def datetime_binder(bind: Connection | sa.Engine) -> Callable[[datetime | None], Any]:
    """Aware datetime -> the driver value `store.base.UTCDateTime` binds (naive UTC; text on SQLite)."""
    return _sqlite_datetime if is_sqlite(bind) else _pg_datetime


def _json_text(value: Any) -> str | None:
    return None if value is None else json_serializer(value)


def json_binder(bind: Connection | sa.Engine) -> Callable[[Any], Any]:
    """Python value (or `Encoded` text) -> the JSON text the JSON/JSONB column stores."""
    return _json_text


def _chunks(n: int, chunk: int = INSERT_CHUNK) -> list[int]:
    """`n` split into full chunks plus power-of-two remainders (few distinct statement texts)."""
    sizes = [chunk] * (n // chunk)
    rest = n % chunk
    bit = 1 << (chunk.bit_length() - 1) if chunk & (chunk - 1) else chunk
    if rest >= bit:
        sizes.append(bit)
        rest -= bit
    while rest:
        bit //= 2
        if rest >= bit:
            sizes.append(bit)
            rest -= bit
    return sizes


#: from this many rows on, PostgreSQL appends through COPY into a staging table: psycopg
#: re-parses (in Python) every multi-row statement longer than 4 KB, which cost more than
#: the insert; COPY streams the rows and the INSERT .. SELECT is one short statement
PG_COPY_MIN_ROWS = 32


def _pg_copy_insert(
    conn: Connection, table: sa.Table, columns: Sequence[str], values: Sequence[Any], conflict: str
) -> None:
    quote = conn.dialect.identifier_preparer.quote
    cols = ", ".join(quote(c) for c in columns)
    # one staging table per target and column list (callers may write different columns)
    shape = hashlib.blake2b(",".join(columns).encode(), digest_size=4).hexdigest()
    stage = quote(f"oj_stage_{table.name}_{shape}")
    # a temporary table of the target's column types plus the rows' ordinal, private to this
    # session and emptied at every commit (and after each append); IF NOT EXISTS because the
    # transaction that created it may have been rolled back
    conn.exec_driver_sql(
        f"CREATE TEMPORARY TABLE IF NOT EXISTS {stage} ON COMMIT DELETE ROWS AS "
        f"SELECT {cols}, 0::bigint AS oj_ord FROM {quote(table.name)} WITH NO DATA"
    )
    width = len(columns)
    cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
    try:
        with cursor.copy(f"COPY {stage} ({cols}, oj_ord) FROM STDIN") as copy:
            write = copy.write_row
            for n, start in enumerate(range(0, len(values), width)):
                write((*values[start : start + width], n))
    finally:
        cursor.close()
    # The ordinal, not ctid: once the staging heap has been emptied, COPY may fill it in any
    # page order, and the log's ids must follow the order the rows were given in.
    conn.exec_driver_sql(
        f"INSERT INTO {quote(table.name)} ({cols}) SELECT {cols} FROM {stage} ORDER BY oj_ord{conflict}"
    )
    conn.exec_driver_sql(f"DELETE FROM {stage}")


def insert_values_ignoring_conflicts(
    conn: Connection,
    table: sa.Table,
    columns: Sequence[str],
    values: Sequence[Any],
    index_elements: Sequence[str],
    *,
    json_columns: Sequence[str] = (),
) -> None:
    """INSERT rows with ON CONFLICT (keys) DO NOTHING; `values` holds them flat, row after row.

    Without `index_elements` a plain INSERT (rows of a table keyed by a generated id).

    The values must be what the driver binds (`datetime_binder`, `json_binder`). Rows are
    inserted in the order given, so on both dialects ids follow that order. A row whose key
    is already stored, or repeated earlier in `values`, is skipped.

    Each chunk is one multi-row INSERT. On SQLite that also keeps the calling thread from
    fighting the others for the GIL: the driver releases it around every statement step,
    so `executemany` would give it up and wait to win it back once per row; one statement
    per chunk does so once per chunk. On PostgreSQL larger appends go through COPY
    (`PG_COPY_MIN_ROWS`).
    """
    width = len(columns)
    if len(values) % width:
        raise ValueError(f"{len(values)} values do not make rows of {width} columns")
    if not values:
        return
    quote = conn.dialect.identifier_preparer.quote
    head = f"INSERT INTO {quote(table.name)} ({', '.join(quote(c) for c in columns)}) VALUES "
    conflict = f" ON CONFLICT ({', '.join(quote(c) for c in index_elements)}) DO NOTHING" if index_elements else ""
    if is_sqlite(conn):
        row_sql = "(" + ", ".join("?" for _ in columns) + ")"
    elif len(values) // width >= PG_COPY_MIN_ROWS:
        _pg_copy_insert(conn, table, columns, values, conflict)
        return
    else:
        row_sql = "(" + ", ".join("%s::jsonb" if c in json_columns else "%s" for c in columns) + ")"
    start = 0
    for size in _chunks(len(values) // width):
        end = start + size * width
        conn.exec_driver_sql(head + ", ".join([row_sql] * size) + conflict, tuple(values[start:end]))
        start = end


def insert_rows_ignoring_conflicts(
    conn: Connection,
    table: sa.Table,
    columns: Sequence[str],
    rows: Sequence[Sequence[Any]],
    index_elements: Sequence[str],
    *,
    json_columns: Sequence[str] = (),
) -> None:
    """`insert_values_ignoring_conflicts` for rows given as driver-ready tuples."""
    insert_values_ignoring_conflicts(
        conn,
        table,
        columns,
        list(chain.from_iterable(rows)),
        index_elements,
        json_columns=json_columns,
    )


class _InValues(ColumnElement[bool]):
    """`column IN (the values of one bind parameter)`: one statement text whatever the count.

    SQLAlchemy's `in_()` renders one placeholder per value at every execution (its
    "expanding" parameters), which costs more than the lookup itself for a few thousand
    keys. SQLite takes the values as one JSON array (`json_each`), PostgreSQL as an array
    (`= ANY`); pass the value from `in_values_param`.
    """

    inherit_cache = True
    type = sa.Boolean()
    _is_implicitly_boolean = True
    _traverse_internals = [
        ("column", InternalTraversal.dp_clauseelement),
        ("values", InternalTraversal.dp_clauseelement),
    ]

    def __init__(self, column: Any, values: Any) -> None:
        self.column = column
        self.values = values


@compiles(_InValues)
def _in_values_default(element: _InValues, compiler: Any, **kw: Any) -> str:
    col = compiler.process(element.column, **kw)
    return f"{col} IN (SELECT value FROM json_each({compiler.process(element.values, **kw)}))"


@compiles(_InValues, "postgresql")
def _in_values_pg(element: _InValues, compiler: Any, **kw: Any) -> str:
    return f"{compiler.process(element.column, **kw)} = ANY({compiler.process(element.values, **kw)})"


def in_values(column: Any, name: str) -> ColumnElement[bool]:
    """`column` is one of the values bound to parameter `name` (give it `in_values_param(conn, values)`)."""
    return _InValues(column, sa.bindparam(name))


def in_values_param(conn: Connection, values: Sequence[int] | Sequence[str]) -> Any:
    """The bind value of an `in_values` parameter: JSON text on SQLite, a list on PostgreSQL."""
    if is_sqlite(conn):
        return json_serializer(list(values))
    return list(values)


def driver_any(conn: Connection, array_type: str) -> str:
    """For hand-written driver-level SQL: `<column> ` + this tests membership in one list parameter
    (bind `in_values_param(conn, values)`), with one statement text whatever the list's length.

    SQLite reads the JSON text with `json_each`; PostgreSQL compares with `= ANY` of an array of
    `array_type` (`text`, `bigint`). Both are served by the same indexes as `IN (...)`."""
    if is_sqlite(conn):
        return "IN (SELECT value FROM json_each(?))"
    return f"= ANY(%s::{array_type}[])"


def driver_param(conn: Connection) -> str:
    """The driver's placeholder for one positional parameter (`exec_driver_sql`)."""
    return "?" if is_sqlite(conn) else "%s"


def for_update_skip_locked(stmt: sa.Select[Any], conn: Connection) -> sa.Select[Any]:
    """Lock rows nobody else holds and skip the rest (PostgreSQL); SQLite's write transaction is exclusive."""
    return stmt if is_sqlite(conn) else stmt.with_for_update(skip_locked=True)


# ------------------------------------------------------------------ prefix search


class _PrefixRange(ColumnElement[bool]):
    """`column` starts with a prefix, as a half-open range [lo, hi) in byte (code point) order.

    An index-friendly form of ``LIKE 'prefix%'`` that also works in statements built once with
    bind parameters (a generic plan cannot use an index for ``LIKE $1``). SQLite compares TEXT
    with memcmp (BINARY collation), which is code point order for UTF-8, so its ordinary index
    serves ``>=`` / ``<``. PostgreSQL compares with the database collation, whose order is not
    code point order outside the C locale; the pattern operators ``~>=~`` / ``~<~`` compare
    byte-wise and are served by an index with the ``varchar_pattern_ops`` operator class
    (migration 0012), whatever the database's locale.
    """

    inherit_cache = True
    type = sa.Boolean()
    #: a comparison, not a boolean value: SQLite must not get "(...) = 1", which no index serves
    _is_implicitly_boolean = True
    _traverse_internals = [
        ("column", InternalTraversal.dp_clauseelement),
        ("lo", InternalTraversal.dp_clauseelement),
        ("hi", InternalTraversal.dp_clauseelement),
    ]

    def __init__(self, column: Any, lo: Any, hi: Any) -> None:
        self.column = column
        self.lo = lo
        self.hi = hi


@compiles(_PrefixRange)
def _prefix_range_default(element: _PrefixRange, compiler: Any, **kw: Any) -> str:
    col = compiler.process(element.column, **kw)
    return f"({col} >= {compiler.process(element.lo, **kw)} AND {col} < {compiler.process(element.hi, **kw)})"


@compiles(_PrefixRange, "postgresql")
def _prefix_range_pg(element: _PrefixRange, compiler: Any, **kw: Any) -> str:
    col = compiler.process(element.column, **kw)
    return f"({col} ~>=~ {compiler.process(element.lo, **kw)} AND {col} ~<~ {compiler.process(element.hi, **kw)})"


def prefix_match(column: Any, lo: Any, hi: Any) -> ColumnElement[bool]:
    """`column` starts with a prefix: pass bind parameters `lo` and `hi` and give them `prefix_bounds(p)`."""
    return _PrefixRange(column, lo, hi)


def prefix_bounds(prefix: str) -> tuple[str, str]:
    """The [lo, hi) range of strings starting with `prefix` (non-empty): hi is the next string in code point order."""
    last = ord(prefix[-1])
    nxt = last + 1 if last + 1 < 0xD800 or last + 1 > 0xDFFF else 0xE000  # skip the surrogate block
    return prefix, prefix[:-1] + chr(min(nxt, 0x10FFFF))
