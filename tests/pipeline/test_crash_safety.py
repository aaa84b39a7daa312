"""The processing stage never loses an event and never applies one twice, even when killed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from omnijourney.access import service as access
from omnijourney.ingest import service as ingest
from omnijourney.pipeline import service as pipeline
from omnijourney.pipeline.worker import run_until_idle
from omnijourney.store import db
from omnijourney.store.base import Encoded


def seed_events(engine: sa.Engine, n: int, *, source_name: str = "pos") -> int:
    with db.write(engine) as conn:
        src = access.source_by_name(conn=conn, name=source_name) or access.create_source(
            conn=conn, name=source_name, channel="store", trusted=True
        )
    base = datetime(2026, 11, 1, tzinfo=UTC)
    rows = [
        {
            "source_id": src.id,
            "message_id": f"m{i}",
            "type": "track",
            "event": "Store Visited",
            "user_id": f"u{i % 97}",
            "anonymous_id": None,
            "channel": "store",
            "timestamp": base + timedelta(hours=i % 72),
            "received_at": base,
            "sent_at": None,
            "original_timestamp": None,
            "order_id": None,
            "cart_id": None,
            "revenue": None,
            "currency": None,
            "context": {},
            "payload": Encoded('{"type":"track"}'),
        }
        for i in range(n)
    ]
    for start in range(0, n, 5000):
        with db.write(engine) as conn:
            ingest.append_events(conn=conn, rows=rows[start : start + 5000])
    return src.id


def processed_total(engine: sa.Engine) -> int:
    with db.read(engine) as conn:
        return int(conn.execute(sa.text("SELECT coalesce(sum(count), 0) FROM daily_event_counts")).scalar_one())


def position(engine: sa.Engine) -> int:
    with db.read(engine) as conn:
        return pipeline.checkpoint(conn=conn)


class CrashAfter:
    """A handler that dies part-way through a step, after other handlers already wrote."""

    name = "crash"

    def __init__(self, after: int) -> None:
        self.after = after
        self.seen = 0

    def apply(self, conn, events, ctx) -> None:  # type: ignore[no-untyped-def]
        self.seen += len(events)
        if self.seen >= self.after:
            raise RuntimeError("simulated crash mid-step")


def test_a_step_that_crashes_rolls_back_its_effects_and_checkpoint(engine: sa.Engine) -> None:
    seed_events(engine, 5000)
    handlers = [*pipeline.default_handlers(), CrashAfter(after=2500)]
    with pytest.raises(RuntimeError):
        run_until_idle(engine, handlers, batch=1000)
    # two steps committed (2000 events), the third crashed and left no trace
    assert position(engine) == 2000
    assert processed_total(engine) == 2000
    assert run_until_idle(engine, pipeline.default_handlers(), batch=1000) == 3000
    assert processed_total(engine) == 5000
    assert run_until_idle(engine, pipeline.default_handlers()) == 0
    assert processed_total(engine) == 5000


def test_worker_process_killed_mid_way_resumes_without_loss_or_double_application(
    engine: sa.Engine, database_url: str, tmp_path
) -> None:
    n = 60_000
    seed_events(engine, n)
    env = {**os.environ, "OMNIJOURNEY_DATA_DIR": str(tmp_path), "OMNIJOURNEY_DATABASE_URL": database_url}
    cmd = [sys.executable, "-m", "omnijourney.cli", "worker"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while position(engine) == 0 and time.monotonic() < deadline:
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)  # no chance to clean up
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    mid = position(engine)
    assert 0 < mid < n, f"the kill should land mid-way (checkpoint {mid} of {n})"
    assert processed_total(engine) == mid  # effects and checkpoint moved together
    done = subprocess.run([*cmd, "--until-idle"], env=env, capture_output=True, timeout=300)
    assert done.returncode == 0, done.stderr.decode()
    with db.read(engine) as conn:
        last = conn.execute(sa.text("SELECT max(id) FROM events")).scalar_one()
    assert position(engine) == last
    assert processed_total(engine) == n
