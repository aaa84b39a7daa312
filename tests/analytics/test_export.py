"""The lake export: incremental, exactly once across crashes, identity resolved, merges honoured at query time."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from omnijourney.access import service as access
from omnijourney.analytics import lake
from omnijourney.analytics.engine import open_lake, read_events
from omnijourney.cli import app
from omnijourney.ingest import service as ingest
from omnijourney.pipeline import service as pipeline
from omnijourney.pipeline.worker import run_until_idle
from omnijourney.store import db
from omnijourney.store.base import Encoded

BASE = datetime(2026, 11, 1, 9, 0, tzinfo=UTC)


def _source(engine: sa.Engine) -> int:
    with db.write(engine) as conn:
        src = access.source_by_name(conn=conn, name="pos") or access.create_source(
            conn=conn, name="pos", channel="store", trusted=True
        )
    return src.id


def seed(engine: sa.Engine, specs: list[dict], *, start: int = 0) -> None:
    """Append events: each spec has user/anon/event and an hour offset; context carries device and UTM."""
    src = _source(engine)
    rows = []
    for i, s in enumerate(specs, start=start):
        context = {"device": {"type": s.get("device", "mobile")}, "campaign": {"source": "instagram", "name": "spring"}}
        props = {"store_id": "PRG-1"} if s.get("store") else {}
        payload = {"type": "track", "event": s["event"], "properties": props, "context": context}
        if s.get("user"):
            payload["userId"] = s["user"]
        if s.get("anon"):
            payload["anonymousId"] = s["anon"]
        rows.append(
            {
                "source_id": src,
                "message_id": f"m{i}",
                "type": "track",
                "event": s["event"],
                "user_id": s.get("user"),
                "anonymous_id": s.get("anon"),
                "channel": s.get("channel", "store"),
                "timestamp": BASE + timedelta(hours=s.get("hour", i)),
                "received_at": BASE,
                "sent_at": None,
                "original_timestamp": None,
                "order_id": None,
                "cart_id": None,
                "revenue": s.get("revenue"),
                "currency": "CZK" if s.get("revenue") else None,
                "context": context,
                "payload": Encoded(orjson.dumps(payload).decode()),
            }
        )
    with db.write(engine) as conn:
        ingest.append_events(conn=conn, rows=rows)


def many(n: int, *, start: int = 0) -> list[dict]:
    return [
        {"event": "Store Visited", "user": f"u{i % 7}", "hour": i % 60, "store": True} for i in range(start, start + n)
    ]


def lake_ids(data_dir: Path) -> list[int]:
    return read_events(data_dir).column("event_id").to_pylist()


def test_export_is_incremental_and_carries_the_resolved_profile(engine: sa.Engine, tmp_path: Path) -> None:
    seed(engine, many(30))
    handlers = pipeline.default_handlers()
    run_until_idle(engine, handlers)
    # events the processing stage has not resolved yet are not exported
    seed(engine, many(5, start=30), start=30)

    r1 = lake.export(engine=engine, data_dir=tmp_path, batch=8)
    assert r1.rows == 30 and r1.position > 0
    ids = lake_ids(tmp_path)
    assert len(ids) == 30 == len(set(ids))
    table = read_events(tmp_path)
    row = table.slice(0, 1).to_pylist()[0]
    assert row["device_type"] == "mobile" and row["utm_campaign"] == "spring" and row["store_id"] == "PRG-1"
    assert row["channel"] == "store" and row["event"] == "Store Visited"
    assert row["ts_ms"] == int(row["ts"].timestamp() * 1000)
    with db.read(engine) as conn:
        expected = dict(conn.execute(sa.text("SELECT event_id, profile_id FROM profile_events")).all())
    assert {r["event_id"]: r["profile_id"] for r in table.to_pylist()} == {i: expected[i] for i in ids}

    # partitioned by the event's UTC date, named by the log-position range
    days = sorted(p.name for p in (lake.lake_dir(tmp_path) / "events").iterdir())
    assert days == ["date=2026-11-01", "date=2026-11-02"]  # hours 0..29 after 09:00 UTC
    for f in lake.event_files(lake.lake_dir(tmp_path)):
        first, last = map(int, lake.PART_RE.match(f.name).groups())
        got = pq.read_table(f).column("event_id").to_pylist()
        assert first <= min(got) and max(got) <= last

    # nothing new: nothing written
    assert lake.export(engine=engine, data_dir=tmp_path).rows == 0
    run_until_idle(engine, handlers)
    r2 = lake.export(engine=engine, data_dir=tmp_path)
    assert r2.rows == 5
    ids = lake_ids(tmp_path)
    assert len(ids) == 35 == len(set(ids))
    assert r2.dimensions["identity_map"] >= 7
    status = lake.status(engine=engine, data_dir=tmp_path)
    assert status["position"] == r2.position and status["exported_rows"] == 35 and status["pending"] == 0
    marker = json.loads((lake.lake_dir(tmp_path) / "_export.json").read_text())
    assert marker["position"] == r2.position


def test_merges_after_export_are_honoured_at_query_time(engine: sa.Engine, tmp_path: Path) -> None:
    seed(
        engine,
        [{"event": "Product Viewed", "anon": "a1", "hour": 1}, {"event": "Store Visited", "user": "u1", "hour": 2}],
    )
    handlers = pipeline.default_handlers()
    run_until_idle(engine, handlers)
    lake.export(engine=engine, data_dir=tmp_path)
    before = read_events(tmp_path).to_pylist()
    assert before[0]["profile_id"] != before[1]["profile_id"]

    # the same person signs in on the device: the two profiles merge (the older survives)
    seed(engine, [{"event": "Signed In", "user": "u1", "anon": "a1", "hour": 3}], start=2)
    run_until_idle(engine, handlers)
    lake.export(engine=engine, data_dir=tmp_path)
    rows = read_events(tmp_path).to_pylist()
    # history is not rewritten: the first rows keep the member they were resolved to
    assert [r["profile_id"] for r in rows[:2]] == [before[0]["profile_id"], before[1]["profile_id"]]
    lt = open_lake(tmp_path, "duckdb")
    units = lt.execute(lt.events.order_by("event_id").select("event_id", "unit")).column("unit").to_pylist()
    assert len(set(units)) == 1 and units[0] == min(before[0]["profile_id"], before[1]["profile_id"])


def test_an_export_that_fails_mid_way_neither_loses_nor_duplicates(engine: sa.Engine, tmp_path: Path) -> None:
    seed(engine, many(40))
    run_until_idle(engine, pipeline.default_handlers())
    calls = []

    def fail_on_third_batch(files: list[Path]) -> None:
        calls.append(files)
        if len(calls) == 3:
            raise RuntimeError("simulated crash after the files were renamed, before the checkpoint commit")

    lake._after_files = fail_on_third_batch
    try:
        with pytest.raises(RuntimeError):
            lake.export(engine=engine, data_dir=tmp_path, batch=10)
    finally:
        lake._after_files = None
    root = lake.lake_dir(tmp_path)
    with db.read(engine) as conn:
        checkpoint = lake.export_checkpoint(conn=conn)
    # the third batch's files are on disk, but beyond the checkpoint: readers do not see them
    on_disk = list((root / "events").glob("date=*/part-*.parquet"))
    assert len(on_disk) > len(lake.event_files(root))
    assert len(lake_ids(tmp_path)) == 20
    # a temporary file of a write that never finished is cleaned up too
    (root / "events" / "date=2026-11-01" / ".part-x.parquet.tmp").write_bytes(b"half")

    result = lake.export(engine=engine, data_dir=tmp_path, batch=10)
    assert result.removed >= 2 and result.rows == 20
    ids = lake_ids(tmp_path)
    assert sorted(ids) == list(range(min(ids), min(ids) + 40)) and len(ids) == 40
    assert not list(root.rglob(".*.tmp"))
    assert checkpoint < result.position


CRASHER = """
import os, sys
from pathlib import Path
from omnijourney.analytics import lake
from omnijourney.store import db
calls = []
def die(files):
    calls.append(files)
    if len(calls) == int(sys.argv[3]):
        os._exit(9)  # killed: no cleanup, no exception handling, no commit
lake._after_files = die
engine = db.create_engine(sys.argv[1])
lake.export(engine=engine, data_dir=Path(sys.argv[2]), batch=7)
"""


def test_an_exporter_killed_mid_export_neither_loses_nor_duplicates(database_url: str, tmp_path: Path) -> None:
    engine = db.create_engine(database_url)
    try:
        seed(engine, many(50))
        run_until_idle(engine, pipeline.default_handlers())
        for die_at in (2, 4):
            proc = subprocess.run(
                [sys.executable, "-c", CRASHER, database_url, str(tmp_path), str(die_at)],
                capture_output=True,
                timeout=120,
                env={**os.environ},
            )
            assert proc.returncode == 9, proc.stderr.decode()[-2000:]
        result = lake.export(engine=engine, data_dir=tmp_path, batch=7)
        ids = lake_ids(tmp_path)
        assert len(ids) == 50 == len(set(ids))
        assert result.removed >= 1
    finally:
        engine.dispose()


def test_only_one_exporter_per_lake(engine: sa.Engine, tmp_path: Path) -> None:
    import fcntl

    root = lake.lake_dir(tmp_path)
    root.mkdir(parents=True)
    with open(root / ".export.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        with pytest.raises(lake.ExportBusy):
            lake.export(engine=engine, data_dir=tmp_path)


def test_cli_export(database_url: str, tmp_path: Path) -> None:
    engine = db.create_engine(database_url)
    try:
        seed(engine, many(12))
        run_until_idle(engine, pipeline.default_handlers())
    finally:
        engine.dispose()
    r = CliRunner().invoke(app, ["analytics", "export", "--database-url", database_url, "--data-dir", str(tmp_path)])
    assert r.exit_code == 0, r.output
    assert "exported 12 events" in r.output
    assert len(lake_ids(tmp_path)) == 12
    assert (lake.lake_dir(tmp_path) / "dimensions" / "identity_map.parquet").exists()


def test_results_are_cached_per_lake_version_and_a_new_export_invalidates_them(
    engine: sa.Engine, tmp_path: Path
) -> None:
    from omnijourney.analytics import cache, service
    from omnijourney.analytics import filters as flt
    from omnijourney.analytics.funnels import FunnelSpec, Step

    seed(engine, many(10))
    run_until_idle(engine, pipeline.default_handlers())
    lake.export(engine=engine, data_dir=tmp_path)
    spec = FunnelSpec(steps=(Step("visit", ("Store Visited",)), Step("order", ("Order Completed",))))
    as_of = flt.to_ms(BASE + timedelta(days=30))

    def funnel() -> dict:
        return service.run(data_dir=tmp_path, analysis="funnel", filters=flt.Filters(), funnel=spec, as_of_ms=as_of)

    cache.clear()
    first = funnel()
    assert first["entered"] == 7 and first["converted"] == 0
    first["converted"] = 99  # a caller changing its copy does not change the cached answer
    again = funnel()
    assert again["converted"] == 0 and cache.stats()["hits"] == 1 and cache.stats()["misses"] == 1

    # an order for u1, processed and exported: the lake's version changes, so does the answer
    seed(engine, [{"event": "Order Completed", "user": "u1", "hour": 20, "revenue": 100.0}], start=10)
    run_until_idle(engine, pipeline.default_handlers())
    assert funnel()["converted"] == 0  # not exported yet: still the cached answer of the same lake
    assert lake.export(engine=engine, data_dir=tmp_path).rows == 1
    after = funnel()
    assert after["converted"] == 1 and after["entered"] == 7
    assert cache.stats()["misses"] == 2
