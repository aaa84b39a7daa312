"""The driver-level event append stores exactly what SQLAlchemy's column types would have stored."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
import sqlalchemy as sa

from omnijourney.access import service as access
from omnijourney.ingest import service as ingest
from omnijourney.ingest.models import Event
from omnijourney.store import db, dialect
from omnijourney.store.base import Encoded

EVENTS = Event.__table__


def _rows(source_id: int, prefix: str) -> list[dict]:
    plus_5_30 = timezone(timedelta(hours=5, minutes=30))
    base = datetime(2026, 3, 29, 1, 59, 59, 999_999, tzinfo=UTC)
    return [
        {
            "source_id": source_id,
            "message_id": f"{prefix}-0",
            "type": "track",
            "event": "Order Completed",
            "user_id": "u1",
            "anonymous_id": None,
            "channel": "web",
            "timestamp": base,
            "received_at": base + timedelta(seconds=1),
            "sent_at": datetime(2026, 3, 29, 7, 30, tzinfo=plus_5_30),  # not UTC: converted
            "original_timestamp": datetime(999, 1, 2, 3, 4, 5, tzinfo=UTC),  # a 3-digit year
            "order_id": "o-1",
            "cart_id": None,
            "revenue": 19.9,
            "currency": "CZK",
            "context": {"ip": "10.0.0.1", "nested": {"ü": ["ok", 1, 2.5, None, True]}},
            "payload": Encoded('{"type":"track","event":"Order Completed","x":"\\u00fc"}'),
        },
        {
            "source_id": source_id,
            "message_id": f"{prefix}-1",
            "type": "identify",
            "event": None,
            "user_id": None,
            "anonymous_id": "a1",
            "channel": "store",
            "timestamp": datetime(2026, 1, 1, tzinfo=UTC),  # zero microseconds
            "received_at": datetime(2026, 1, 1, 0, 0, 1, tzinfo=UTC),
            "sent_at": None,
            "original_timestamp": None,
            "order_id": None,
            "cart_id": None,
            "revenue": None,
            "currency": None,
            "context": {},
            "payload": {"type": "identify", "traits": {"a": 1}},  # not pre-encoded
        },
    ]


def _read(engine: sa.Engine, source_id: int) -> list[dict]:
    with db.read(engine) as conn:
        typed = [
            dict(r._mapping)
            for r in conn.execute(sa.select(EVENTS).where(EVENTS.c.source_id == source_id).order_by(EVENTS.c.id))
        ]
        raw = [
            dict(r._mapping)
            for r in conn.execute(sa.text("SELECT * FROM events WHERE source_id = :s ORDER BY id"), {"s": source_id})
        ]
    for row in typed + raw:
        row.pop("id")
        row.pop("source_id")
        row["message_id"] = row["message_id"].split("-", 1)[1]
    return typed + raw


def test_fast_append_reads_back_identically_to_sqlalchemy_binding(engine: sa.Engine) -> None:
    with db.write(engine) as conn:
        old = access.create_source(conn=conn, name="old", channel="web")
        new = access.create_source(conn=conn, name="new", channel="web")
    with db.write(engine) as conn:  # what append_events did before: SQLAlchemy binds every value
        stmt = dialect.insert_ignoring_conflicts(conn, EVENTS, ["source_id", "message_id"])
        conn.execute(stmt, _rows(old.id, "old"))
    with db.write(engine) as conn:
        ingest.append_events(conn=conn, rows=_rows(new.id, "new"))
    got, want = _read(engine, new.id), _read(engine, old.id)
    assert got == want
    typed = got[0]
    assert typed["timestamp"] == datetime(2026, 3, 29, 1, 59, 59, 999_999, tzinfo=UTC)
    assert typed["sent_at"] == datetime(2026, 3, 29, 2, 0, tzinfo=UTC)
    assert typed["context"] == {"ip": "10.0.0.1", "nested": {"ü": ["ok", 1, 2.5, None, True]}}
    assert typed["payload"] == {"type": "track", "event": "Order Completed", "x": "ü"}


def test_fast_append_skips_duplicates_in_the_log_and_within_one_call(engine: sa.Engine) -> None:
    with db.write(engine) as conn:
        src = access.create_source(conn=conn, name="dup", channel="web")
    rows = _rows(src.id, "m")
    with db.write(engine) as conn:
        ingest.append_events(conn=conn, rows=[rows[0]])
    with db.write(engine) as conn:
        ingest.append_events(conn=conn, rows=[rows[0], rows[1], rows[1]])
    with db.read(engine) as conn:
        ids = conn.execute(sa.select(EVENTS.c.message_id).order_by(EVENTS.c.id)).scalars().all()
    assert ids == ["m-0", "m-1"]


@pytest.mark.parametrize("n", [1, 511, 512, 513, 1300])
def test_fast_append_keeps_order_across_chunks(engine: sa.Engine, n: int) -> None:
    with db.write(engine) as conn:
        src = access.create_source(conn=conn, name="order", channel="web")
    template = _rows(src.id, "x")[1]
    rows = [{**template, "message_id": f"n{i:05d}"} for i in range(n)]
    with db.write(engine) as conn:
        ingest.append_events(conn=conn, rows=rows)
    with db.read(engine) as conn:
        ids = conn.execute(sa.select(EVENTS.c.message_id).order_by(EVENTS.c.id)).scalars().all()
    assert ids == [r["message_id"] for r in rows]


def test_naive_datetimes_are_still_refused(engine: sa.Engine) -> None:
    with db.write(engine) as conn:
        src = access.create_source(conn=conn, name="naive", channel="web")
    row = {**_rows(src.id, "n")[1], "timestamp": datetime(2026, 1, 1)}
    with pytest.raises(ValueError, match="naive datetime"), db.write(engine) as conn:
        ingest.append_events(conn=conn, rows=[row])


def test_chunk_sizes_cover_every_row_with_few_distinct_statements() -> None:
    for n in range(1, 3000):
        sizes = dialect._chunks(n)
        assert sum(sizes) == n
        assert set(sizes) <= {dialect.INSERT_CHUNK >> k for k in range(10)}


def test_row_tuples_and_flat_values_insert_the_same(engine: sa.Engine) -> None:
    with db.write(engine) as conn:
        src = access.create_source(conn=conn, name="tuples", channel="web")
    rows = _rows(src.id, "t")
    encoded = ingest.EventEncoder(engine).encode(rows)
    width = len(ingest.EVENT_COLUMNS)
    with db.write(engine) as conn:
        dialect.insert_rows_ignoring_conflicts(
            conn,
            EVENTS,
            ingest.EVENT_COLUMNS,
            [encoded[:width], encoded[width:]],
            ["source_id", "message_id"],
            json_columns=["context", "payload"],
        )
    with db.write(engine) as conn:
        ingest.append_events(conn=conn, rows=rows)  # all duplicates now
    with db.write(engine) as conn:
        ref = access.create_source(conn=conn, name="reference", channel="web")
    with db.write(engine) as conn:
        ingest.append_events(conn=conn, rows=_rows(ref.id, "t"))
    assert _read(engine, src.id) == _read(engine, ref.id)
    with pytest.raises(ValueError, match="rows of 17 columns"), db.write(engine) as conn:
        dialect.insert_values_ignoring_conflicts(conn, EVENTS, ingest.EVENT_COLUMNS, encoded[:-1], ["id"])


def test_encoding_messages_equals_encoding_their_rows(engine: sa.Engine) -> None:
    from omnijourney.config import IngestLimits
    from omnijourney.ingest.schemas import ValidMessage, validate_message

    received = datetime(2026, 5, 1, 12, tzinfo=UTC)
    raws = [
        {"type": "track", "event": "Order Completed", "userId": "u", "properties": {"order_id": 1, "revenue": 2}},
        {"type": "page", "anonymousId": "a", "name": "Home", "timestamp": "2026-05-01T11:59:00+02:00"},
        {"type": "identify", "userId": "u", "traits": {"x": 1}, "sentAt": "2026-05-01T12:00:01Z"},
    ]
    messages = [
        validate_message(
            raw,
            default_type=None,
            source_channel="web",
            received_at=received,
            batch_sent_at=datetime(2026, 5, 1, 11, 59, 59, tzinfo=UTC),
            client_ip="10.0.0.9",
            limits=IngestLimits(),
        )
        for raw in raws
    ]
    assert all(isinstance(m, ValidMessage) for m in messages)
    encoder = ingest.EventEncoder(engine)
    assert encoder.encode_messages(7, messages) == encoder.encode([m.row(7) for m in messages])


def test_fast_append_keeps_order_over_consecutive_transactions(engine: sa.Engine) -> None:
    """A session appends many times (the staging table on PostgreSQL is reused): ids follow the given
    order in every transaction, whatever the rows' sizes."""
    with db.write(engine) as conn:
        src = access.create_source(conn=conn, name="order", channel="web")
    template = _rows(src.id, "x")[1]
    sent: list[str] = []
    for t in range(4):
        rows = [
            {
                **template,
                "message_id": f"t{t}-{(i * 7919) % 4000:05d}",  # not sorted: order must come from the input
                "payload": Encoded('{"pad":"' + "x" * ((i * 37) % 1500) + '"}'),
            }
            for i in range(4000)
        ]
        with db.write(engine) as conn:
            ingest.append_events(conn=conn, rows=rows)
        sent += [r["message_id"] for r in rows]
    with db.read(engine) as conn:
        ids = conn.execute(sa.select(EVENTS.c.message_id).order_by(EVENTS.c.id)).scalars().all()
    assert ids == sent
