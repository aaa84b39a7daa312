"""Under overload ingestion sheds load with 429/503 and Retry-After, and loses nothing it accepted."""

from __future__ import annotations

import base64
import dataclasses
import threading

import httpx
import sqlalchemy as sa

from omnijourney.app import create_app
from omnijourney.config import IngestLimits
from omnijourney.store import db, dialect
from tests.conftest import World, count, start_server, wait_for


def basic(key: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{key}:".encode()).decode()}


def batch(prefix: str, n: int) -> dict:
    return {"batch": [{"type": "track", "event": "E", "userId": "u", "messageId": f"{prefix}{i}"} for i in range(n)]}


def test_processing_lag_beyond_bound_answers_503_with_retry_after(settings, engine, world: World) -> None:
    settings = dataclasses.replace(
        settings, run_pipeline=False, limits=dataclasses.replace(IngestLimits(), max_processing_lag=10)
    )
    app = create_app(settings, engine=engine, migrate_db=False)
    srv = start_server(app, engine)
    try:
        with httpx.Client(base_url=srv.url) as c:
            assert c.post("/v1/batch", json=batch("a", 11), headers=basic(world.web_key)).status_code == 200
            app.state.lag_monitor.refresh()
            r = c.post("/v1/batch", json=batch("b", 1), headers=basic(world.web_key))
            assert r.status_code == 503 and r.headers["retry-after"] == "5"
            assert r.json()["code"] == "processing_lag"
            assert c.get("/ready").status_code == 503
    finally:
        srv.stop()
    assert count(engine, "events") == 11


def hold_write_lock(engine: sa.Engine, release: threading.Event, held: threading.Event) -> None:
    """Block every event append, as a long-running writer or a slow disk would."""
    if engine.dialect.name == "sqlite":
        with db.write(engine):  # BEGIN IMMEDIATE: the single writer lock
            held.set()
            release.wait(30)
        return
    with engine.connect() as conn:
        conn.exec_driver_sql(f"SELECT pg_advisory_lock({dialect.INGEST_LOCK_KEY})")
        held.set()
        release.wait(30)
        conn.exec_driver_sql(f"SELECT pg_advisory_unlock({dialect.INGEST_LOCK_KEY})")
        conn.commit()


def test_full_write_queue_answers_429_and_accepted_requests_still_commit(settings, engine, world: World) -> None:
    settings = dataclasses.replace(settings, limits=dataclasses.replace(IngestLimits(), max_pending_events=150))
    srv = start_server(create_app(settings, engine=engine, migrate_db=False), engine)
    release, held = threading.Event(), threading.Event()
    locker = threading.Thread(target=hold_write_lock, args=(engine, release, held))
    locker.start()
    held.wait(10)
    results: dict[str, int] = {}

    def post(name: str) -> None:
        with httpx.Client(base_url=srv.url, timeout=60) as c:
            results[name] = c.post("/v1/batch", json=batch(name, 100), headers=basic(world.web_key)).status_code

    try:
        first = threading.Thread(target=post, args=("first",))
        first.start()
        assert wait_for(lambda: srv.app.state.writer.pending >= 100)
        with httpx.Client(base_url=srv.url) as c:
            r = c.post("/v1/batch", json=batch("second", 100), headers=basic(world.web_key))
        assert r.status_code == 429 and r.headers["retry-after"] == "1"
        assert "first" not in results  # still waiting: not acknowledged before it is committed
    finally:
        release.set()
        locker.join()
    first.join(30)
    srv.stop()
    assert results["first"] == 200
    assert count(engine, "events") == 100
