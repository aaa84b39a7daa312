"""Bulk import of CSV, JSONL and Parquet through the API's validation path, via the real CLI."""

from __future__ import annotations

import csv
from pathlib import Path

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import sqlalchemy as sa
from typer.testing import CliRunner

from omnijourney.access import service as access
from omnijourney.cli import app
from omnijourney.ingest.importer import CHUNK, row_to_message
from omnijourney.store import db
from tests.conftest import count

runner = CliRunner()


def flat(output: str) -> str:
    """The CLI's output with Rich's line wrapping undone."""
    return " ".join(output.split())


def make_source(engine: sa.Engine) -> None:
    with db.write(engine) as conn:
        access.create_source(conn=conn, name="erp", channel="store", trusted=True)


def run_import(path: Path, database_url: str, tmp_path: Path):  # type: ignore[no-untyped-def]
    return runner.invoke(
        app, ["import", str(path), "--source", "erp", "--database-url", database_url, "--data-dir", str(tmp_path)]
    )


def test_row_to_message_builds_nested_typed_fields() -> None:
    msg = row_to_message(
        {
            "type": "track",
            "event": "Order Completed",
            "userId": "007",
            "properties.order_id": "A-1",
            "properties.revenue": "12.50",
            "properties.quantity": "3",
            "properties.gift": "true",
            "properties.products": '[{"sku": "S1", "quantity": 1}]',
            "context.campaign.source": "instagram",
            "properties.note": "",
        }
    )
    assert msg == {
        "type": "track",
        "event": "Order Completed",
        "userId": "007",
        "properties": {
            "order_id": "A-1",
            "revenue": 12.5,
            "quantity": 3,
            "gift": True,
            "products": [{"sku": "S1", "quantity": 1}],
        },
        "context": {"campaign": {"source": "instagram"}},
    }


def test_csv_import_accepts_valid_rows_dead_letters_the_rest_and_is_idempotent(engine, database_url, tmp_path) -> None:
    make_source(engine)
    path = tmp_path / "orders.csv"
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["type", "event", "userId", "messageId", "timestamp", "properties.order_id", "properties.revenue"])
        for i in range(120):
            w.writerow(["track", "Order Completed", f"u{i}", f"csv-{i}", "2026-10-01T12:00:00Z", f"O{i}", "99.9"])
        w.writerow(["track", "Order Completed", "u-bad", "csv-bad", "2026-10-01T12:00:00Z", "", "99.9"])  # no order_id
        w.writerow(["track", "", "u-bad2", "csv-bad2", "", "", ""])  # no event name
    result = run_import(path, database_url, tmp_path)
    assert result.exit_code == 0, result.output
    assert "120 accepted" in result.output and "2 rejected" in result.output
    assert count(engine, "events") == 120
    assert count(engine, "dead_letters") == 2
    again = run_import(path, database_url, tmp_path)
    assert again.exit_code == 0
    assert count(engine, "events") == 120
    with db.read(engine) as conn:
        row = conn.execute(sa.text("SELECT channel, revenue, timestamp FROM events WHERE message_id='csv-7'")).one()
    assert row[0] == "store" and row[1] == 99.9 and str(row[2]).startswith("2026-10-01 12:00:00")


def test_jsonl_import_with_unparseable_lines(engine, database_url, tmp_path) -> None:
    make_source(engine)
    path = tmp_path / "events.jsonl"
    lines = [
        orjson.dumps({"type": "identify", "userId": f"u{i}", "traits": {"email": f"u{i}@example.com"}})
        for i in range(30)
    ]
    lines.insert(10, b'{"type": "identify", "userId": ')
    path.write_bytes(b"\n".join(lines) + b"\n")
    result = run_import(path, database_url, tmp_path)
    assert result.exit_code == 0, result.output
    assert "30 accepted" in result.output and "1 rejected" in result.output
    assert count(engine, "events") == 30
    # no messageId in the file: a content hash makes a re-import idempotent too
    run_import(path, database_url, tmp_path)
    assert count(engine, "events") == 30


def test_parquet_import(engine, database_url, tmp_path) -> None:
    make_source(engine)
    n = 12_000
    table = pa.table(
        {
            "type": ["track"] * n,
            "event": ["Store Visited"] * n,
            "userId": [f"u{i % 500}" for i in range(n)],
            "messageId": [f"pq-{i}" for i in range(n)],
            "timestamp": ["2026-09-01T08:00:00+02:00"] * n,
            "properties.store_id": ["store-brno-1"] * n,
        }
    )
    path = tmp_path / "visits.parquet"
    pq.write_table(table, path)
    result = run_import(path, database_url, tmp_path)
    assert result.exit_code == 0, result.output
    assert f"{n} accepted" in result.output
    assert count(engine, "events") == n


def test_import_unknown_source_and_unsupported_file(engine, database_url, tmp_path) -> None:
    path = tmp_path / "x.jsonl"
    path.write_text('{"type":"page","anonymousId":"a"}\n')
    result = run_import(path, database_url, tmp_path)
    assert result.exit_code == 2 and "no source named" in result.output
    make_source(engine)
    sheet = tmp_path / "x.xlsx"
    sheet.write_text("type,event,userId\ntrack,E,u\n")
    result = run_import(sheet, database_url, tmp_path)
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit)  # a clear message, no traceback
    assert "x.xlsx: unsupported file type '.xlsx'; use .csv, .jsonl/.ndjson or .parquet" in flat(result.output)
    assert count(engine, "events") == 0 and count(engine, "dead_letters") == 0


def test_csv_that_is_not_utf8_is_refused_before_anything_is_written(engine, database_url, tmp_path) -> None:
    make_source(engine)
    path = tmp_path / "latin1.csv"
    rows = [f"track,Store Visited,u{i},lat-{i}" for i in range(CHUNK + 10)]  # more than one write chunk
    rows[CHUNK + 5] = "track,Store Visited,Jos\u00e9,lat-x"
    text = "type,event,userId,messageId\n" + "\n".join(rows) + "\n"
    path.write_bytes(text.encode("latin-1"))
    result = run_import(path, database_url, tmp_path)
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit)
    assert f"latin1.csv: line {CHUNK + 7} is not valid UTF-8" in flat(result.output)
    assert "nothing was imported" in flat(result.output)
    assert count(engine, "events") == 0 and count(engine, "dead_letters") == 0


def test_imported_rows_with_a_nul_are_dead_lettered_on_their_own(engine, database_url, tmp_path) -> None:
    make_source(engine)
    path = tmp_path / "events.jsonl"
    path.write_bytes(
        b'{"type":"track","event":"E","userId":"u1"}\n'
        b'{"type":"track","event":"E","userId":"u2","properties":{"note":"a\\u0000b"}}\n'
        b'{"type":"track","event":"E\x00","userId":"u3"}\n'  # a raw NUL byte: not even JSON
        b'{"type":"track","event":"E","userId":"u4"}\n'
    )
    result = run_import(path, database_url, tmp_path)
    assert result.exit_code == 0, result.output
    out = flat(result.output)
    assert "2 accepted" in out and "2 rejected" in out
    assert "row 2: properties.note: contains a NUL character (\\u0000), which cannot be stored" in out
    with db.read(engine) as conn:
        users = conn.execute(sa.text("SELECT user_id FROM events ORDER BY user_id")).scalars().all()
    assert users == ["u1", "u4"]
    assert count(engine, "dead_letters") == 2
