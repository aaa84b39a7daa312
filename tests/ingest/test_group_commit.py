"""Group commit: requests coalesced into one transaction are each answered only after their rows commit,
and one request the database refuses does not cost the others their events."""

from __future__ import annotations

import fcntl
import os
from concurrent.futures import Future
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa

from omnijourney.access import service as access
from omnijourney.config import IngestLimits
from omnijourney.ingest import service as ingest
from omnijourney.ingest.schemas import ValidMessage, validate_message
from omnijourney.ingest.writer import EventWriter
from omnijourney.store import db
from omnijourney.store.dialect import _FileLock

NOW = datetime(2026, 11, 26, 12, tzinfo=UTC)


def _messages(prefix: str, n: int) -> list[ValidMessage]:
    out = []
    for i in range(n):
        msg = validate_message(
            {"type": "track", "event": "Product Viewed", "userId": f"u{i}", "messageId": f"{prefix}-{i}"},
            default_type=None,
            source_channel="web",
            received_at=NOW,
            batch_sent_at=None,
            client_ip=None,
            limits=IngestLimits(),
        )
        assert isinstance(msg, ValidMessage)
        out.append(msg)
    return out


def _count(engine: sa.Engine) -> int:
    with db.read(engine) as conn:
        return ingest.count_events(conn=conn)


@pytest.fixture
def source_id(engine: sa.Engine) -> int:
    with db.write(engine) as conn:
        return access.create_source(conn=conn, name="shop", channel="web").id


def test_a_coalesced_group_answers_each_request_after_its_rows_are_visible(engine: sa.Engine, source_id: int) -> None:
    writer = EventWriter(engine, max_pending_events=10_000)
    seen: dict[int, int] = {}
    futures: list[Future[None]] = []
    # queued before the writer starts, so it drains all three into one transaction
    for k in range(3):
        fut = writer.submit_messages(source_id, _messages(f"r{k}", 5), [])
        fut.add_done_callback(lambda f, k=k: seen.__setitem__(k, _count(engine)))
        futures.append(fut)
    assert _count(engine) == 0
    writer.start()
    try:
        for fut in futures:
            fut.result(timeout=30)
    finally:
        writer.stop()
    assert seen == {0: 15, 1: 15, 2: 15}  # every answer saw every row of the group committed
    assert writer.pending == 0


def test_a_request_the_database_refuses_does_not_cost_the_others_their_events(
    engine: sa.Engine, source_id: int
) -> None:
    writer = EventWriter(engine, max_pending_events=10_000)
    good_before = writer.submit_messages(source_id, _messages("a", 4), [])
    bad = writer.submit_messages(source_id + 999, _messages("b", 4), [])  # no such source: a foreign-key error
    good_after = writer.submit_messages(source_id, _messages("c", 4), [])
    writer.start()
    try:
        good_before.result(timeout=30)
        good_after.result(timeout=30)
        with pytest.raises(sa.exc.IntegrityError):
            bad.result(timeout=30)
        # a retry of a stored request stores nothing twice
        writer.submit_messages(source_id, _messages("a", 4), []).result(timeout=30)
    finally:
        writer.stop()
    with db.read(engine) as conn:
        ids = [r["message_id"] for r in ingest.list_events(conn=conn)]
    assert ids == [f"a-{i}" for i in range(4)] + [f"c-{i}" for i in range(4)]
    assert writer.pending == 0


def test_an_unavailable_database_fails_the_group_at_once(
    engine: sa.Engine, source_id: int, caplog: pytest.LogCaptureFixture
) -> None:
    # no events table: what a lost or locked database looks like to the writer (not the rows' fault)
    with db.write(engine) as conn:
        conn.exec_driver_sql("ALTER TABLE events RENAME TO events_away")
    writer = EventWriter(engine, max_pending_events=10_000)
    futures = [writer.submit_messages(source_id, _messages(f"x{k}", 3), []) for k in range(3)]
    writer.start()
    try:
        for fut in futures:
            with pytest.raises(sa.exc.DBAPIError):
                fut.result(timeout=30)
    finally:
        writer.stop()
    assert "one by one" not in caplog.text  # no pointless retry of each request
    assert writer.pending == 0


def test_writers_of_several_processes_append_in_turn_and_store_everything_once(
    engine: sa.Engine, database_url: str, source_id: int
) -> None:
    # one writer per API process (serve --workers N): two engines, two writers, one database
    other_engine = db.create_engine(database_url, sqlite_synchronous="NORMAL")
    writers = [EventWriter(engine, max_pending_events=10_000), EventWriter(other_engine, max_pending_events=10_000)]
    try:
        futures = [
            w.submit_messages(source_id, _messages(f"w{i}-{k}", 20), [])
            for k in range(4)
            for i, w in enumerate(writers)
        ]
        futures.append(writers[1].submit_messages(source_id, _messages("w0-0", 20), []))  # a retry via the other node
        for w in writers:
            w.start()
        for fut in futures:
            fut.result(timeout=60)
    finally:
        for w in writers:
            w.stop()
        other_engine.dispose()
    assert _count(engine) == 2 * 4 * 20


def test_the_sqlite_append_queue_excludes_another_holder(tmp_path) -> None:
    first, second = _FileLock(str(tmp_path / "db-append.lock")), _FileLock(str(tmp_path / "db-append.lock"))
    probe = os.open(tmp_path / "db-append.lock", os.O_RDWR | os.O_CREAT)
    try:
        with first, pytest.raises(BlockingIOError):
            fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
        # released by the first: free for the next holder
        with second, pytest.raises(BlockingIOError):
            fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fcntl.flock(probe, fcntl.LOCK_UN)
    finally:
        os.close(probe)
        first.close()
        second.close()
