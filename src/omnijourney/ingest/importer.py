"""Bulk import of CSV, JSONL and Parquet files through the API's validation and storage path.

Rows become Segment messages: JSONL lines are messages already; CSV and Parquet columns
map to message fields, with dotted column names (`properties.revenue`,
`traits.email`, `context.campaign.source`) building the nested objects. Rows are
validated exactly as `/v1/batch` validates them and written in chunks, each chunk one
transaction; a rerun of the same file stores nothing twice (messageId, or a content hash
when the file has none).

A file that cannot be read as a whole (an unsupported type, a CSV that is not UTF-8 or not
CSV, a file that is not Parquet) raises `ImportFileError` before anything is written: the
check is the pass that counts the rows for the progress bar anyway.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import sqlalchemy as sa
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from omnijourney.access.service import SourceInfo
from omnijourney.config import IngestLimits
from omnijourney.ingest import service
from omnijourney.ingest.schemas import FieldError, ValidMessage, validate_message
from omnijourney.store import db
from omnijourney.store.base import utcnow

CHUNK = 5000
SUPPORTED = "use .csv, .jsonl/.ndjson or .parquet"


class ImportFileError(Exception):
    """The file cannot be imported at all; the message says why and where. Nothing was written."""


@dataclass
class ImportSummary:
    accepted: int = 0
    rejected: int = 0
    sample_errors: list[str] = field(default_factory=list)


def _coerce(value: str) -> Any:
    """CSV cells are text; numbers and booleans written as such become typed values."""
    if value == "":
        return None
    low = value.lower()
    if low in ("true", "false"):
        return low == "true"
    try:
        return int(value) if value.lstrip("-").isdigit() and len(value) < 19 else float(value)
    except ValueError:
        pass
    if value[:1] in "[{":
        try:
            return orjson.loads(value)
        except orjson.JSONDecodeError:
            return value
    return value


_ID_FIELDS = {"userId", "anonymousId", "messageId", "groupId", "previousId", "timestamp", "event", "name", "type"}


def row_to_message(row: dict[str, Any]) -> dict[str, Any]:
    """Flat row with dotted keys -> nested Segment message."""
    msg: dict[str, Any] = {}
    for key, value in row.items():
        if value is None or key is None:
            continue
        if isinstance(value, str) and key not in _ID_FIELDS:
            value = _coerce(value)
            if value is None:
                continue
        elif isinstance(value, str) and value == "":
            continue
        parts = key.split(".")
        node = msg
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                break
        else:
            node[parts[-1]] = value
    return msg


def _jsonl(path: Path) -> Iterator[Any]:
    with path.open("rb") as fh:
        for line in fh:
            if line.strip():
                try:
                    yield orjson.loads(line)
                except orjson.JSONDecodeError as exc:
                    yield _Unparseable(line[:2000].decode("utf-8", "replace"), str(exc))


def _csv(path: Path) -> Iterator[Any]:
    with path.open("r", encoding="utf-8-sig", newline="") as fh:  # a BOM (spreadsheet exports) is not a column
        for row in csv.DictReader(fh):
            yield row_to_message(row)


def _decoded_lines(path: Path) -> Iterator[str]:
    with path.open("rb") as fh:
        for number, line in enumerate(fh, start=1):
            try:
                yield line.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise ImportFileError(
                    f"{path.name}: line {number} is not valid UTF-8 (byte {exc.start + 1} of the line, "
                    f"{line[exc.start : exc.start + 1]!r}); save the file as UTF-8 and import it again"
                ) from exc


def count_csv_rows(path: Path) -> int:
    """The number of CSV records (not lines: a quoted cell may span lines), after checking the whole file.

    Every line is decoded as UTF-8 and every record parsed before the import writes a row.
    """
    reader = csv.reader(_decoded_lines(path))
    records = 0
    try:
        for _ in reader:
            records += 1
    except csv.Error as exc:
        raise ImportFileError(f"{path.name}: line {reader.line_num} is not valid CSV: {exc}") from exc
    return max(records - 1, 0)  # the header


def _parquet(path: Path) -> Iterator[Any]:
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(path)
    for batch in pf.iter_batches(batch_size=CHUNK):
        for row in batch.to_pylist():
            yield row_to_message(row)


def count_rows(path: Path) -> int | None:
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            return pq.ParquetFile(path).metadata.num_rows
        except (pa.ArrowException, OSError) as exc:
            raise ImportFileError(f"{path.name}: not a readable Parquet file: {exc}") from exc
    if suffix == ".csv":
        return count_csv_rows(path)
    with path.open("rb") as fh:
        return sum(1 for line in fh if line.strip())


@dataclass
class _Unparseable:
    text: str
    reason: str


def read_messages(path: Path) -> Iterator[Any]:
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson", ".json"):
        return _jsonl(path)
    if suffix == ".csv":
        return _csv(path)
    if suffix == ".parquet":
        return _parquet(path)
    raise ImportFileError(f"{path.name}: unsupported file type {suffix or '(none)'!r}; {SUPPORTED}")


def import_messages(
    *,
    engine: sa.Engine,
    messages: Iterator[Any],
    source: SourceInfo,
    limits: IngestLimits,
    progress: Any = None,
    task: Any = None,
) -> ImportSummary:
    summary = ImportSummary()
    valid: list[dict[str, Any]] = []
    dead: list[dict[str, Any]] = []

    def flush() -> None:
        with db.write(engine) as conn:
            service.append_events(conn=conn, rows=valid)
            service.append_dead_letters(conn=conn, rows=dead)
        if progress is not None:
            progress.advance(task, len(valid) + len(dead))
        valid.clear()
        dead.clear()

    for lineno, raw in enumerate(messages, start=1):
        received_at = utcnow()
        if isinstance(raw, _Unparseable):
            result: ValidMessage | list[FieldError] = [FieldError("line", f"not valid JSON: {raw.reason}")]
            raw = raw.text
        else:
            result = validate_message(
                raw,
                default_type=None,
                source_channel=source.channel,
                received_at=received_at,
                batch_sent_at=None,
                client_ip=None,
                limits=limits,
            )
        if isinstance(result, ValidMessage):
            valid.append(result.row(source.id))
            summary.accepted += 1
        else:
            dead.append(service.dead_letter_row(source_id=source.id, received_at=received_at, raw=raw, errors=result))
            summary.rejected += 1
            if len(summary.sample_errors) < 10:
                summary.sample_errors.append(f"{lineno}: " + "; ".join(f"{e.field}: {e.message}" for e in result))
        if len(valid) + len(dead) >= CHUNK:
            flush()
    if valid or dead:
        flush()
    return summary


def import_path(
    *, engine: sa.Engine, path: Path, source: SourceInfo, limits: IngestLimits, console: Console | None = None
) -> ImportSummary:
    messages = read_messages(path)  # an unsupported type fails here
    total = count_rows(path)  # and a file that cannot be read as a whole here, before any write
    with Progress(
        TextColumn("[bold]importing[/bold] {task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=console or Console(stderr=True),
        transient=False,
    ) as progress:
        task = progress.add_task(path.name, total=total)
        return import_messages(
            engine=engine, messages=messages, source=source, limits=limits, progress=progress, task=task
        )
