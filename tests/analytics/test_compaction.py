"""Lake compaction: each day's small export files merged into few large ones, the same rows read, no row twice."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from omnijourney.analytics import lake
from omnijourney.analytics.engine import open_lake, read_events
from omnijourney.cli import app
from omnijourney.pipeline import service as pipeline
from omnijourney.pipeline.worker import run_until_idle
from tests.analytics.test_export import many, seed


@pytest.fixture
def database_url(sqlite_template: Path, tmp_path: Path) -> Iterator[str]:
    """Compaction only touches lake files; the export on PostgreSQL is covered by test_export.py."""
    path = tmp_path / "omnijourney.db"
    shutil.copy(sqlite_template, path)
    yield f"sqlite:///{path}"


def _rows(data_dir: Path) -> list[dict]:
    return sorted(read_events(data_dir).to_pylist(), key=lambda r: r["event_id"])


def _on_disk(data_dir: Path) -> list[Path]:
    return sorted((lake.lake_dir(data_dir) / "events").glob("date=*/part-*.parquet"))


def _live_per_day(data_dir: Path) -> dict[str, int]:
    out: dict[str, int] = {}
    for f in lake.event_files(lake.lake_dir(data_dir)):
        out[f.parent.name] = out.get(f.parent.name, 0) + 1
    return out


def _small_lake(engine: sa.Engine, data_dir: Path, n: int = 60, *, start: int = 0) -> None:
    seed(engine, many(n, start=start), start=start)
    run_until_idle(engine, pipeline.default_handlers())
    lake.export(engine=engine, data_dir=data_dir, batch=3, compact=False)


def test_compaction_merges_each_day_into_one_file_and_readers_see_the_same_rows(
    engine: sa.Engine, tmp_path: Path
) -> None:
    _small_lake(engine, tmp_path)
    before = _rows(tmp_path)
    files_before = _on_disk(tmp_path)
    assert len(before) == 60 and max(_live_per_day(tmp_path).values()) > 4

    result = lake.compact(data_dir=tmp_path)
    assert result.written == len(_live_per_day(tmp_path)) and result.merged == len(files_before)
    assert set(_live_per_day(tmp_path).values()) == {1}
    # the replaced files stay for queries that listed them, but no reader sees their rows twice
    assert set(files_before) <= set(_on_disk(tmp_path)) and result.pruned == 0
    status = lake.status(engine=engine, data_dir=tmp_path)
    assert status["files"] == result.written and status["superseded_files"] == len(files_before)
    assert _rows(tmp_path) == before
    lt = open_lake(tmp_path, "duckdb")
    assert sorted(lt.execute(lt.events.select("event_id")).column("event_id").to_pylist()) == [
        r["event_id"] for r in before
    ]
    for f in lake.event_files(lake.lake_dir(tmp_path)):  # rows in log order, inside the file's named range
        ids = pq.read_table(f).column("event_id").to_pylist()
        first, last = map(int, lake.PART_RE.match(f.name).groups())
        assert ids == sorted(ids) and first <= ids[0] and ids[-1] <= last

    # once the grace period has passed they are deleted; the rows are unchanged
    again = lake.compact(data_dir=tmp_path, grace_seconds=0)
    assert again.pruned == len(files_before) and again.written == 0
    assert _on_disk(tmp_path) == lake.event_files(lake.lake_dir(tmp_path))
    assert _rows(tmp_path) == before


def test_exports_after_compaction_stay_exactly_once_and_compact_again(engine: sa.Engine, tmp_path: Path) -> None:
    _small_lake(engine, tmp_path, 30)
    lake.compact(data_dir=tmp_path)
    _small_lake(engine, tmp_path, 30, start=30)  # new small files beside the compacted ones
    rows = _rows(tmp_path)
    assert len(rows) == 60 == len({r["event_id"] for r in rows})

    # a compacted file is merged again with the new ones: the older compacted file is superseded too
    result = lake.compact(data_dir=tmp_path)
    assert result.written >= 1 and set(_live_per_day(tmp_path).values()) == {1}
    assert _rows(tmp_path) == rows
    lake.compact(data_dir=tmp_path, grace_seconds=0)
    assert _on_disk(tmp_path) == lake.event_files(lake.lake_dir(tmp_path))
    assert _rows(tmp_path) == rows


def test_an_interrupted_compaction_leaves_the_lake_readable_and_the_next_export_cleans_up(
    engine: sa.Engine, tmp_path: Path
) -> None:
    _small_lake(engine, tmp_path)
    before = _rows(tmp_path)
    day = lake.event_files(lake.lake_dir(tmp_path))[0].parent
    (day / ".part-00000000000000000001-00000000000000000060.parquet.tmp").write_bytes(b"half a file")
    assert _rows(tmp_path) == before  # a half-written compacted file is invisible

    seed(engine, many(3, start=60), start=60)
    run_until_idle(engine, pipeline.default_handlers())
    result = lake.export(engine=engine, data_dir=tmp_path)
    assert result.removed >= 1 and not list(lake.lake_dir(tmp_path).rglob(".*.tmp"))
    rows = _rows(tmp_path)
    assert len(rows) == 63 == len({r["event_id"] for r in rows})


def test_max_rows_bounds_a_compacted_file(engine: sa.Engine, tmp_path: Path) -> None:
    _small_lake(engine, tmp_path)
    before = _rows(tmp_path)
    lake.compact(data_dir=tmp_path, max_rows=7)
    for f in lake.event_files(lake.lake_dir(tmp_path)):
        assert pq.read_metadata(f).num_rows <= 7
    assert max(_live_per_day(tmp_path).values()) > 1
    assert _rows(tmp_path) == before


def test_an_export_compacts_days_that_collected_several_files(engine: sa.Engine, tmp_path: Path) -> None:
    seed(engine, many(60))
    run_until_idle(engine, pipeline.default_handlers())
    result = lake.export(engine=engine, data_dir=tmp_path, batch=3)
    assert result.rows == 60 and result.files > 8
    assert result.compacted is not None and result.compacted.written >= 1
    assert max(_live_per_day(tmp_path).values()) == 1
    assert len({r["event_id"] for r in _rows(tmp_path)}) == 60


def test_cli_compact(engine: sa.Engine, tmp_path: Path) -> None:
    _small_lake(engine, tmp_path)
    before = _rows(tmp_path)
    r = CliRunner().invoke(app, ["analytics", "compact", "--data-dir", str(tmp_path), "--grace", "0"])
    assert r.exit_code == 0, r.output
    assert "compacted" in r.output
    r = CliRunner().invoke(app, ["analytics", "compact", "--data-dir", str(tmp_path), "--grace", "0"])
    assert r.exit_code == 0 and "deleted" in r.output
    assert _on_disk(tmp_path) == lake.event_files(lake.lake_dir(tmp_path))
    assert _rows(tmp_path) == before
