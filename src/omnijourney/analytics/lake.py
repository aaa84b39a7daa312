"""The event lake: processed events exported incrementally and exactly once to Parquet.

Layout under `<data_dir>/lake/` (a public format, docs/ANALYTICS.md):

    events/date=YYYY-MM-DD/part-<first id>-<last id>.parquet   one file per export batch and day
    dimensions/<name>.parquet                                    current snapshots, replaced atomically
    _export.json                                                 {"position": N} after each committed batch

Exactly once. A batch is the next events after the export checkpoint (never past the processing
stage's checkpoint, so every row carries the profile identity resolved it to). Its files are
written under a hidden temporary name, fsynced, renamed into place and the directory fsynced;
only then is the checkpoint advanced in the database. A crash before the rename leaves only a
hidden temporary file; a crash after the rename but before the commit leaves files whose first
id is beyond the checkpoint. Both are removed when the next export starts, and the batch is
written again: no row is lost and none appears twice. One exporter runs per lake at a time
(an exclusive file lock).

Merges made after export are honoured at query time: rows keep the member profile they were
resolved to, and readers map members to their cluster through `dimensions/identity_map.parquet`.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import duckdb
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from omnijourney.analytics.models import ExportCheckpoint
from omnijourney.commerce.models import Location, Order, Product
from omnijourney.engage.models import Segment, SegmentMember
from omnijourney.identity.models import Profile, ProfileEvent
from omnijourney.ingest.models import Event
from omnijourney.pipeline.models import Checkpoint
from omnijourney.service.models import Conversation
from omnijourney.store import db
from omnijourney.store.base import utcnow

EVENTS = Event.__table__
PROFILE_EVENTS = ProfileEvent.__table__
EXPORTS = ExportCheckpoint.__table__
PIPELINE = Checkpoint.__table__
EXPORT_NAME = "lake"
PART_RE = re.compile(r"^part-(\d{20})-(\d{20})\.parquet$")

TS = pa.timestamp("us", tz="UTC")

#: the schema of every events file (docs/ANALYTICS.md documents each column)
EVENT_SCHEMA = pa.schema(
    [
        ("event_id", pa.int64()),
        ("ts", TS),
        ("ts_ms", pa.int64()),
        ("type", pa.string()),
        ("event", pa.string()),
        ("channel", pa.string()),
        ("source_id", pa.int64()),
        ("profile_id", pa.int64()),
        ("user_id", pa.string()),
        ("anonymous_id", pa.string()),
        ("order_id", pa.string()),
        ("cart_id", pa.string()),
        ("revenue", pa.float64()),
        ("currency", pa.string()),
        ("device_type", pa.string()),
        ("os", pa.string()),
        ("utm_source", pa.string()),
        ("utm_medium", pa.string()),
        ("utm_campaign", pa.string()),
        ("store_id", pa.string()),
        ("page_path", pa.string()),
        ("conversation_id", pa.string()),
        ("author", pa.string()),
        ("survey_type", pa.string()),
        ("score", pa.int64()),
        ("resolved", pa.bool_()),
        ("wait_seconds", pa.float64()),
        ("duration_seconds", pa.float64()),
        ("properties", pa.string()),
        ("context", pa.string()),
    ]
)


def lake_dir(data_dir: Path) -> Path:
    return Path(data_dir) / "lake"


# --------------------------------------------------------------------------- rows


def _str(value: Any) -> str | None:
    if value is None or isinstance(value, dict | list):
        return None
    return str(value)


def _num(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


#: DuckDB macros reproducing Python's reading of a JSON value: `jtruthy` is Python truthiness (for
#: `a or b`), `jstr` is `_str` (scalars as text, True / False as Python spells them, objects and arrays null)
_MACROS = """
CREATE OR REPLACE MACRO jtruthy(j) AS CASE json_type(j)
    WHEN 'VARCHAR' THEN json_extract_string(j, '$') <> ''
    WHEN 'BIGINT' THEN TRY_CAST(json_extract_string(j, '$') AS DOUBLE) <> 0
    WHEN 'UBIGINT' THEN TRY_CAST(json_extract_string(j, '$') AS DOUBLE) <> 0
    WHEN 'DOUBLE' THEN TRY_CAST(json_extract_string(j, '$') AS DOUBLE) <> 0
    WHEN 'BOOLEAN' THEN json_extract_string(j, '$') = 'true'
    WHEN 'OBJECT' THEN len(json_keys(j)) > 0
    WHEN 'ARRAY' THEN json_array_length(j) > 0
    ELSE false END;
CREATE OR REPLACE MACRO jor(a, b) AS CASE WHEN jtruthy(a) THEN a ELSE b END;
CREATE OR REPLACE MACRO jstr(j) AS CASE json_type(j)
    WHEN 'VARCHAR' THEN json_extract_string(j, '$')
    WHEN 'BIGINT' THEN json_extract_string(j, '$')
    WHEN 'UBIGINT' THEN json_extract_string(j, '$')
    WHEN 'DOUBLE' THEN CAST(TRY_CAST(json_extract_string(j, '$') AS DOUBLE) AS VARCHAR)
    WHEN 'BOOLEAN' THEN CASE WHEN json_extract_string(j, '$') = 'true' THEN 'True' ELSE 'False' END
    ELSE NULL END;
CREATE OR REPLACE MACRO jnum(j) AS CASE WHEN json_type(j) IN ('BIGINT', 'UBIGINT', 'DOUBLE')
    THEN TRY_CAST(json_extract_string(j, '$') AS DOUBLE) END;
"""

#: every payload / context field the lake needs, extracted in bulk (vectorised in DuckDB, not per row in Python)
_EXTRACT = """
WITH b AS (
  SELECT *,
    CASE WHEN json_type(payload, '$.properties') = 'OBJECT' THEN json_extract(payload, '$.properties')
         ELSE '{}'::JSON END AS props,
    CAST(context_raw AS JSON) AS ctx
  FROM batch)
SELECT
  -- returns and service events name their order in properties only (not an E-commerce order event)
  CASE WHEN order_id IS NOT NULL AND order_id <> '' THEN order_id
       ELSE jstr(json_extract(props, '$.order_id')) END AS order_id,
  jstr(json_extract(ctx, '$.device.type')) AS device_type,
  jstr(json_extract(ctx, '$.os.name')) AS os,
  jstr(json_extract(ctx, '$.campaign.source')) AS utm_source,
  jstr(json_extract(ctx, '$.campaign.medium')) AS utm_medium,
  jstr(json_extract(ctx, '$.campaign.name')) AS utm_campaign,
  jstr(jor(json_extract(props, '$.store_id'), json_extract(ctx, '$.pos.store_id'))) AS store_id,
  jstr(jor(json_extract(ctx, '$.page.path'), json_extract(props, '$.path'))) AS page_path,
  jstr(jor(json_extract(props, '$.conversation_id'), json_extract(props, '$.call_id'))) AS conversation_id,
  jstr(json_extract(props, '$.author')) AS author,
  jstr(json_extract(props, '$.survey_type')) AS survey_type,
  CASE WHEN json_type(props, '$.score') IN ('BIGINT', 'UBIGINT') THEN TRY_CAST(json_extract_string(props, '$.score') AS BIGINT)
       END AS score,
  CASE WHEN event = 'Conversation Resolved' THEN true
       WHEN json_type(props, '$.resolved') = 'BOOLEAN' THEN json_extract_string(props, '$.resolved') = 'true'
       END AS resolved,
  jnum(json_extract(props, '$.wait_seconds')) AS wait_seconds,
  jnum(json_extract(props, '$.duration_seconds')) AS duration_seconds,
  CAST(props AS VARCHAR) AS properties
FROM b ORDER BY event_id
"""

_EXTRACTED = (
    "order_id",
    "device_type",
    "os",
    "utm_source",
    "utm_medium",
    "utm_campaign",
    "store_id",
    "page_path",
    "conversation_id",
    "author",
    "survey_type",
    "score",
    "resolved",
    "wait_seconds",
    "duration_seconds",
    "properties",
)


def _json_text(value: Any) -> str:
    if type(value) is str:
        return value
    return orjson.dumps(value if value is not None else {}).decode()


def _text_column(values: tuple[Any, ...]) -> pa.Array:
    """JSON texts as an Arrow string column (the batch query casts them to text; dicts are serialised)."""
    try:
        return pa.array(values, pa.string())
    except (pa.ArrowTypeError, pa.ArrowInvalid):
        return pa.array([_json_text(v) for v in values], pa.string())


def extractor() -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection with the JSON macros (one per export run)."""
    con = duckdb.connect()
    con.execute("SET threads = 1")  # batches are small; the export shares the machine with the server
    con.execute(_MACROS)
    return con


def event_columns(rows: list[Any], con: duckdb.DuckDBPyConnection | None = None) -> pa.Table:
    """Lake rows (EVENT_SCHEMA) from events joined to the member profile each was resolved to.

    Column-wise: the batch is transposed once into Arrow arrays and every payload / context field is
    extracted in bulk by DuckDB's JSON functions (no per-row JSON parse and dict walk in Python, which
    made the export CPU-bound at ~2,000 rows/s).
    """
    if not rows:
        return pa.Table.from_pylist([], schema=EVENT_SCHEMA)
    (ids, stamps, types, names, channels, sources, users, anons, orders, carts, revenues, currencies,
     contexts, payloads, profiles) = zip(*rows, strict=True)  # fmt: skip
    # naive values are UTC (how the store keeps them); aware ones (a caller's own rows) Arrow converts to UTC
    aware = stamps[0].tzinfo is not None
    ts = pa.array(stamps, TS) if aware else pa.array(stamps, pa.timestamp("us")).cast(TS)
    context_text = _text_column(contexts)
    batch = pa.table(
        {
            "event_id": pa.array(ids, pa.int64()),
            "event": pa.array(names, pa.string()),
            "order_id": pa.array(orders, pa.string()),
            "payload": _text_column(payloads),
            "context_raw": context_text,
        }
    )
    own = con is None
    con = con or extractor()
    try:
        con.register("batch", batch)
        extracted = con.execute(_EXTRACT).fetch_arrow_table()
        con.unregister("batch")
    finally:
        if own:
            con.close()
    data = {
        "event_id": batch.column("event_id"),
        "ts": ts,
        "ts_ms": pc.divide(ts.cast(pa.int64()), 1000),  # exact: integer microseconds floor-divided
        "type": pa.array(types, pa.string()),
        "event": batch.column("event"),
        "channel": pa.array(channels, pa.string()),
        "source_id": pa.array(sources, pa.int64()),
        "profile_id": pa.array(profiles, pa.int64()),
        "user_id": pa.array(users, pa.string()),
        "anonymous_id": pa.array(anons, pa.string()),
        "cart_id": pa.array(carts, pa.string()),
        "revenue": pa.array(revenues, pa.float64()),
        "currency": pa.array(currencies, pa.string()),
        "context": context_text,
    }
    for name in _EXTRACTED:
        data[name] = extracted.column(name).cast(EVENT_SCHEMA.field(name).type)
    return pa.table([data[name] for name in EVENT_SCHEMA.names], schema=EVENT_SCHEMA)


# --------------------------------------------------------------------------- files


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _tmp_name(final: Path) -> Path:
    final.parent.mkdir(parents=True, exist_ok=True)
    return final.parent / f".{final.name}.tmp"


def write_atomic(table: pa.Table, final: Path) -> None:
    """Write to a hidden temporary name, fsync, rename into place, fsync the directory."""
    tmp = _tmp_name(final)
    pq.write_table(table, tmp, compression="zstd")
    _publish(tmp, final)


def _publish(tmp: Path, final: Path) -> None:
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, final)
    _fsync_dir(final.parent)


def part_name(first: int, last: int) -> str:
    return f"part-{first:020d}-{last:020d}.parquet"


def _part_range(f: Path) -> tuple[int, int] | None:
    m = PART_RE.match(f.name)
    return (int(m.group(1)), int(m.group(2))) if m else None


def _live_and_superseded(files: list[Path]) -> tuple[list[Path], list[tuple[Path, Path]]]:
    """Split one partition's files into those to read and (file, compacted file covering it) pairs.

    Batches cover disjoint position ranges and a compacted file covers exactly the files it
    merged, so two ranges either nest or are disjoint: sorted by (first, -last), a file whose
    range starts at or before the end of the last file kept lies inside that wider one.
    """
    ranged = sorted(((r, f) for f in files if (r := _part_range(f)) is not None), key=lambda x: (x[0][0], -x[0][1]))
    live: list[Path] = []
    superseded: list[tuple[Path, Path]] = []
    reach = -1
    for (first, last), f in ranged:
        if first <= reach:
            superseded.append((f, live[-1]))
        else:
            live.append(f)
            reach = last
    return live, superseded


def _partitions(lake: Path) -> list[Path]:
    events = lake / "events"
    return sorted(d for d in events.glob("date=*") if d.is_dir()) if events.exists() else []


def _committed(part: Path, position: int) -> list[Path]:
    """A partition's files wholly at or below `position`, the export checkpoint."""
    return [f for f in part.glob("part-*.parquet") if (r := _part_range(f)) and r[1] <= position]


def event_files(lake: Path, position: int | None = None) -> list[Path]:
    """The files to read: committed (wholly at or below `position`, the export checkpoint) and not
    superseded by a compacted file covering their range."""
    if position is None:
        position = committed_position(lake)
    out = []
    for part in _partitions(lake):
        out.extend(_live_and_superseded(_committed(part, position))[0])
    return sorted(out)


def committed_position(lake: Path) -> int:
    marker = lake / "_export.json"
    if not marker.exists():
        return 0
    return int(json.loads(marker.read_text())["position"])


def _write_marker(lake: Path, position: int) -> None:
    lake.mkdir(parents=True, exist_ok=True)
    tmp = lake / "._export.json.tmp"
    tmp.write_text(json.dumps({"position": position, "format": 1}))
    with open(tmp, "rb+") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, lake / "_export.json")
    _fsync_dir(lake)


def recover(lake: Path, position: int) -> int:
    """Remove what a crashed export left: temporary files, and parts beyond the checkpoint."""
    removed = 0
    for tmp in lake.rglob(".*.tmp"):
        tmp.unlink()
        removed += 1
    for f in (lake / "events").glob("date=*/part-*.parquet") if (lake / "events").exists() else []:
        m = PART_RE.match(f.name)
        if m and int(m.group(1)) > position:
            f.unlink()
            removed += 1
    return removed


@contextlib.contextmanager
def _exclusive(lake: Path) -> Iterator[None]:
    lake.mkdir(parents=True, exist_ok=True)
    with open(lake / ".export.lock", "w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            raise ExportBusy(f"another export is running on {lake}") from exc
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


class ExportBusy(RuntimeError):
    pass


# --------------------------------------------------------------------------- checkpoint


def export_checkpoint(*, conn: Connection, lock: bool = False) -> int:
    stmt = sa.select(EXPORTS.c.position).where(EXPORTS.c.name == EXPORT_NAME)
    row = conn.execute(stmt).first()
    if row is None:
        conn.execute(sa.insert(EXPORTS).values(name=EXPORT_NAME, position=0, exported_rows=0, updated_at=utcnow()))
        return 0
    return int(row.position)


def exportable_position(*, conn: Connection) -> int:
    """Events are exported only once the processing stage has resolved their profile."""
    pos = conn.execute(sa.select(PIPELINE.c.position).where(PIPELINE.c.name == "main")).scalar_one_or_none()
    return int(pos or 0)


def pending(*, conn: Connection) -> int:
    done = conn.execute(sa.select(EXPORTS.c.position).where(EXPORTS.c.name == EXPORT_NAME)).scalar_one_or_none()
    upto = exportable_position(conn=conn)
    return int(
        conn.execute(
            sa.select(sa.func.count()).select_from(EVENTS).where(EVENTS.c.id > int(done or 0), EVENTS.c.id <= upto)
        ).scalar_one()
    )


def _read_batch(conn: Connection, after: int, upto: int, limit: int) -> list[Any]:
    stmt = (
        sa.select(
            EVENTS.c.id,
            # the column's storage type (naive UTC): the driver's own conversion, no per-row Python
            # post-processing; event_columns marks the whole column UTC at once
            sa.type_coerce(EVENTS.c.timestamp, sa.DateTime).label("timestamp"),
            EVENTS.c.type,
            EVENTS.c.event,
            EVENTS.c.channel,
            EVENTS.c.source_id,
            EVENTS.c.user_id,
            EVENTS.c.anonymous_id,
            EVENTS.c.order_id,
            EVENTS.c.cart_id,
            EVENTS.c.revenue,
            EVENTS.c.currency,
            # raw JSON text: parsed once here, and the context is stored as received
            sa.cast(EVENTS.c.context, sa.Text).label("context"),
            sa.cast(EVENTS.c.payload, sa.Text).label("payload"),
            PROFILE_EVENTS.c.profile_id,
        )
        .select_from(EVENTS.outerjoin(PROFILE_EVENTS, PROFILE_EVENTS.c.event_id == EVENTS.c.id))
        .where(EVENTS.c.id > after, EVENTS.c.id <= upto)
        .order_by(EVENTS.c.id)
        .limit(limit)
    )
    return conn.execute(stmt).all()


# --------------------------------------------------------------------------- dimensions

DimensionQuery = Callable[[Connection], pa.Table]


def _identity_map(conn: Connection) -> pa.Table:
    t = Profile.__table__
    rows = conn.execute(sa.select(t.c.id, t.c.canonical_id, t.c.merged_into, t.c.created_at).order_by(t.c.id)).all()
    return pa.table(
        {
            "profile_id": pa.array([r.id for r in rows], pa.int64()),
            "canonical_id": pa.array([r.canonical_id for r in rows], pa.int64()),
            "merged_into": pa.array([r.merged_into for r in rows], pa.int64()),
            "created_at": pa.array([r.created_at for r in rows], TS),
        }
    )


def _orders(conn: Connection) -> pa.Table:
    t = Order.__table__
    rows = conn.execute(
        sa.select(
            t.c.id,
            t.c.order_ref,
            t.c.profile_id,
            t.c.channel,
            t.c.store_id,
            t.c.fulfilment,
            t.c.pickup_location,
            t.c.status,
            t.c.currency,
            t.c.total_minor,
            t.c.refunded_minor,
            t.c.placed_at,
        ).order_by(t.c.id)
    ).all()
    cols = ["order_ref", "channel", "store_id", "fulfilment", "pickup_location", "status", "currency"]
    data: dict[str, pa.Array] = {"id": pa.array([r.id for r in rows], pa.int64())}
    for c in cols:
        data[c] = pa.array([getattr(r, c) for r in rows], pa.string())
    data["profile_id"] = pa.array([r.profile_id for r in rows], pa.int64())
    data["total_minor"] = pa.array([r.total_minor for r in rows], pa.int64())
    data["refunded_minor"] = pa.array([r.refunded_minor for r in rows], pa.int64())
    data["placed_at"] = pa.array([r.placed_at for r in rows], TS)
    data["placed_ms"] = pa.array([int(r.placed_at.timestamp() * 1000) for r in rows], pa.int64())
    return pa.table(data)


def _locations(conn: Connection) -> pa.Table:
    t = Location.__table__
    rows = conn.execute(sa.select(t).order_by(t.c.code)).all()
    addr = [r.address if isinstance(r.address, dict) else {} for r in rows]
    return pa.table(
        {
            "code": pa.array([r.code for r in rows], pa.string()),
            "name": pa.array([r.name for r in rows], pa.string()),
            "kind": pa.array([r.kind for r in rows], pa.string()),
            "city": pa.array([_str(a.get("city")) for a in addr], pa.string()),
            "country": pa.array([_str(a.get("country")) for a in addr], pa.string()),
            "latitude": pa.array([r.latitude for r in rows], pa.float64()),
            "longitude": pa.array([r.longitude for r in rows], pa.float64()),
            "pickup": pa.array([bool(r.pickup) for r in rows], pa.bool_()),
        }
    )


def _products(conn: Connection) -> pa.Table:
    t = Product.__table__
    rows = conn.execute(
        sa.select(t.c.sku, t.c.product_id, t.c.name, t.c.category, t.c.brand, t.c.active).order_by(t.c.sku)
    ).all()
    return pa.table(
        {
            "sku": pa.array([r.sku for r in rows], pa.string()),
            "product_id": pa.array([r.product_id for r in rows], pa.string()),
            "name": pa.array([r.name for r in rows], pa.string()),
            "category": pa.array([r.category for r in rows], pa.string()),
            "brand": pa.array([r.brand for r in rows], pa.string()),
            "active": pa.array([bool(r.active) for r in rows], pa.bool_()),
        }
    )


def _ms(value: datetime | None) -> int | None:
    return None if value is None else int(value.timestamp() * 1000)


def _segment_members(conn: Connection) -> pa.Table:
    """Current memberships of active segments (keyed by the profile the segment was evaluated on)."""
    m, s = SegmentMember.__table__, Segment.__table__
    rows = conn.execute(
        sa.select(m.c.segment_key, s.c.name, m.c.profile_id, m.c.entered_at)
        .select_from(m.join(s, s.c.key == m.c.segment_key))
        .where(s.c.active.is_(True))
        .order_by(m.c.segment_key, m.c.profile_id)
    ).all()
    return pa.table(
        {
            "segment_key": pa.array([r.segment_key for r in rows], pa.string()),
            "segment_name": pa.array([r.name for r in rows], pa.string()),
            "profile_id": pa.array([r.profile_id for r in rows], pa.int64()),
            "entered_at": pa.array([r.entered_at for r in rows], TS),
        }
    )


def _conversations(conn: Connection) -> pa.Table:
    """Service conversations with their measures and the lost-context signal (service package)."""
    t = Conversation.__table__
    rows = conn.execute(
        sa.select(
            t.c.id,
            t.c.channel,
            t.c.profile_id,
            t.c.status,
            t.c.topic,
            t.c.started_at,
            t.c.first_response_at,
            t.c.resolved_at,
            t.c.contact_number,
            t.c.previous_conversation_id,
            t.c.lost_context,
            t.c.csat,
            t.c.nps,
        ).order_by(t.c.id)
    ).all()
    return pa.table(
        {
            "id": pa.array([r.id for r in rows], pa.int64()),
            "channel": pa.array([r.channel for r in rows], pa.string()),
            "profile_id": pa.array([r.profile_id for r in rows], pa.int64()),
            "status": pa.array([r.status for r in rows], pa.string()),
            "topic": pa.array([r.topic for r in rows], pa.string()),
            "started_at": pa.array([r.started_at for r in rows], TS),
            "started_ms": pa.array([_ms(r.started_at) for r in rows], pa.int64()),
            "first_response_ms": pa.array([_ms(r.first_response_at) for r in rows], pa.int64()),
            "resolved_ms": pa.array([_ms(r.resolved_at) for r in rows], pa.int64()),
            "contact_number": pa.array([r.contact_number for r in rows], pa.int64()),
            "previous_conversation_id": pa.array([r.previous_conversation_id for r in rows], pa.int64()),
            "lost_context": pa.array([bool(r.lost_context) for r in rows], pa.bool_()),
            "csat": pa.array([r.csat for r in rows], pa.int64()),
            "nps": pa.array([r.nps for r in rows], pa.int64()),
        }
    )


#: dimension snapshots written after every export (register_dimension adds more)
DIMENSIONS: dict[str, DimensionQuery] = {
    "identity_map": _identity_map,
    "orders": _orders,
    "locations": _locations,
    "products": _products,
    "segment_members": _segment_members,
    "conversations": _conversations,
}


def register_dimension(name: str, query: DimensionQuery) -> None:
    if not re.fullmatch(r"[a-z_]+", name):
        raise ValueError(f"bad dimension name {name!r}")
    DIMENSIONS[name] = query


def snapshot_dimensions(engine: sa.Engine, lake: Path) -> dict[str, int]:
    """Write every dimension from one consistent read transaction; each file is replaced atomically."""
    out = {}
    with db.read(engine) as conn:
        tables = {name: q(conn) for name, q in DIMENSIONS.items()}
    for name, table in tables.items():
        write_atomic(table, lake / "dimensions" / f"{name}.parquet")
        out[name] = table.num_rows
    return out


# --------------------------------------------------------------------------- export


@dataclass
class ExportResult:
    rows: int
    files: int
    position: int
    dimensions: dict[str, int]
    removed: int
    compacted: CompactResult | None = None


#: fault-injection point for the crash tests: called after a batch's files are in place,
#: before the checkpoint commit
_after_files: Callable[[list[Path]], None] | None = None


def export(
    *,
    engine: sa.Engine,
    data_dir: Path,
    batch: int = 50_000,
    progress: Callable[[int, int], None] | None = None,
    dimensions: bool = True,
    compact: bool = True,
) -> ExportResult:
    """Export every processed event not yet in the lake, compact the day partitions that now hold
    several files, then refresh the dimension snapshots."""
    lake = lake_dir(data_dir)
    with _exclusive(lake):
        with db.write(engine) as conn:
            position = export_checkpoint(conn=conn)
            total = pending(conn=conn)
        removed = recover(lake, position)
        _write_marker(lake, position)
        rows = files = 0
        if progress:
            progress(0, total)
        con = extractor()
        try:
            rows, files, position = _export_batches(engine, lake, con, position, batch, total, progress)
        finally:
            con.close()
        compacted = (
            _compact(
                lake,
                max_rows=COMPACT_MAX_ROWS,
                min_files=EXPORT_COMPACT_MIN_FILES,
                grace_seconds=SUPERSEDED_GRACE_SECONDS,
            )
            if compact
            else None
        )
        dims = snapshot_dimensions(engine, lake) if dimensions else {}
    return ExportResult(
        rows=rows, files=files, position=position, dimensions=dims, removed=removed, compacted=compacted
    )


def _export_batches(
    engine: sa.Engine,
    lake: Path,
    con: duckdb.DuckDBPyConnection,
    position: int,
    batch: int,
    total: int,
    progress: Callable[[int, int], None] | None,
) -> tuple[int, int, int]:
    """Write batch after batch, each committed (files, then checkpoint, then marker) before the next."""
    rows = files = 0
    while True:
        with db.read(engine) as conn:
            upto = exportable_position(conn=conn)
            events = _read_batch(conn, position, upto, batch)
        if not events:
            break
        first, last = int(events[0].id), int(events[-1].id)
        table = event_columns(events, con)
        days = pc.strftime(table.column("ts"), format="%Y-%m-%d")
        written = []
        for day in sorted(pc.unique(days).to_pylist()):
            path = lake / "events" / f"date={day}" / part_name(first, last)
            write_atomic(table.filter(pc.equal(days, day)), path)
            written.append(path)
        if _after_files is not None:
            _after_files(written)
        with db.write(engine) as conn:
            # guarded: only the exporter that read `position` may move it (a second lake writer fails here)
            moved = conn.execute(
                sa.update(EXPORTS)
                .where(EXPORTS.c.name == EXPORT_NAME, EXPORTS.c.position == position)
                .values(position=last, exported_rows=EXPORTS.c.exported_rows + len(events), updated_at=utcnow())
            ).rowcount
            if moved != 1:
                raise ExportBusy("the export checkpoint moved under this export; run it again")
        position = last
        _write_marker(lake, position)
        rows += len(events)
        files += len(written)
        if progress:
            progress(rows, total)
    return rows, files, position


# --------------------------------------------------------------------------- compaction

#: a compacted file holds at most this many rows (one day's partition may get several)
COMPACT_MAX_ROWS = 1_000_000
#: rows per Parquet row group in a compacted file (DuckDB and Spark split scans by row group)
COMPACT_ROW_GROUP = 128 * 1024
#: an export compacts a run of a day's files once it has this many (bounds how often a busy day
#: is rewritten; `omnijourney analytics compact` merges any two)
EXPORT_COMPACT_MIN_FILES = 4
#: superseded files stay this long after the file that replaced them appeared, so a query that
#: listed the lake before the compaction can still read every file on its list
SUPERSEDED_GRACE_SECONDS = 600.0


@dataclass
class CompactResult:
    merged: int  # small files now superseded
    written: int  # compacted files written
    pruned: int  # superseded files deleted (older than the grace period)


def compact(
    *,
    data_dir: Path,
    max_rows: int = COMPACT_MAX_ROWS,
    min_files: int = 2,
    grace_seconds: float = SUPERSEDED_GRACE_SECONDS,
) -> CompactResult:
    """Merge each day's small export files into few large ones (`omnijourney analytics compact`).

    Every export batch writes one file per day it touches, so a lake fed often holds thousands
    of small files and every query pays for opening each. A compacted file is named after the
    position range it covers, which contains the ranges of the files it merged: readers
    (`event_files`) skip covered files from the moment it is renamed into place, so a crash at any
    point leaves the lake readable with no row twice. Covered files are deleted after
    `grace_seconds`, by a later compaction or export.
    """
    lake = lake_dir(data_dir)
    with _exclusive(lake):
        return _compact(lake, max_rows=max_rows, min_files=min_files, grace_seconds=grace_seconds)


def _compact(lake: Path, *, max_rows: int, min_files: int, grace_seconds: float) -> CompactResult:
    position = committed_position(lake)
    pruned = _prune_superseded(lake, position, grace_seconds)
    merged = written = 0
    for part in _partitions(lake):
        live = _live_and_superseded(_committed(part, position))[0]
        if len(live) < max(2, min_files):  # nothing to merge: no file metadata read
            continue
        for run in _runs(live, max_rows):
            if len(run) >= max(2, min_files):
                _merge(run)
                merged += len(run)
                written += 1
    return CompactResult(merged=merged, written=written, pruned=pruned)


def _runs(files: list[Path], max_rows: int) -> list[list[Path]]:
    """Consecutive files (in position order) grouped greedily up to `max_rows` rows per group."""
    runs: list[list[Path]] = []
    rows = 0
    for f in files:
        n = pq.read_metadata(f).num_rows
        if runs and rows + n <= max_rows:
            runs[-1].append(f)
            rows += n
        else:
            runs.append([f])
            rows = n
    return runs


def _merge(run: list[Path]) -> Path:
    """Write `run`'s rows, in position order, to one file covering their whole range."""
    first, last = _part_range(run[0])[0], _part_range(run[-1])[1]  # type: ignore[index]
    final = run[0].parent / part_name(first, last)
    tmp = _tmp_name(final)
    pending_tables: list[pa.Table] = []
    buffered = 0
    with pq.ParquetWriter(tmp, EVENT_SCHEMA, compression="zstd") as writer:
        for f in run:  # one input file in memory at a time, plus at most one row group
            table = pq.read_table(f, schema=EVENT_SCHEMA)
            pending_tables.append(table)
            buffered += table.num_rows
            if buffered >= COMPACT_ROW_GROUP:
                writer.write_table(pa.concat_tables(pending_tables), row_group_size=COMPACT_ROW_GROUP)
                pending_tables, buffered = [], 0
        if pending_tables:
            writer.write_table(pa.concat_tables(pending_tables), row_group_size=COMPACT_ROW_GROUP)
    _publish(tmp, final)
    return final


def _prune_superseded(lake: Path, position: int, grace_seconds: float) -> int:
    now = time.time()
    pruned = 0
    for part in _partitions(lake):
        for f, cover in _live_and_superseded(_committed(part, position))[1]:
            if now - cover.stat().st_mtime >= grace_seconds:
                f.unlink()
                pruned += 1
    return pruned


def status(*, engine: sa.Engine, data_dir: Path) -> dict[str, Any]:
    lake = lake_dir(data_dir)
    with db.read(engine) as conn:
        row = conn.execute(sa.select(EXPORTS).where(EXPORTS.c.name == EXPORT_NAME)).first()
        waiting = pending(conn=conn)
    return {
        "lake": str(lake),
        "position": int(row.position) if row else 0,
        "exported_rows": int(row.exported_rows) if row else 0,
        "updated_at": row.updated_at.isoformat() if row else None,
        "pending": waiting,
        "files": len(event_files(lake)),
        "superseded_files": sum(
            len(_live_and_superseded(list(p.glob("part-*.parquet")))[1]) for p in _partitions(lake)
        ),
    }
