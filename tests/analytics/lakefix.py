"""Hand-built lakes: rows written in the public lake format, without a database."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa

from omnijourney.analytics import lake
from omnijourney.analytics.engine import _dimension_schema

T0 = datetime(2026, 11, 2, 10, 0, tzinfo=UTC)


def at(minutes: float = 0, days: float = 0) -> datetime:
    return T0 + timedelta(minutes=minutes, days=days)


def ev(event_id: int, profile: int | None, event: str, ts: datetime, **kw: Any) -> dict[str, Any]:
    row = {name: None for name in lake.EVENT_SCHEMA.names}
    row.update(
        event_id=event_id,
        ts=ts,
        ts_ms=int(ts.timestamp() * 1000),
        type=kw.pop("type", "track"),
        event=event,
        channel=kw.pop("channel", "web"),
        source_id=kw.pop("source_id", 1),
        profile_id=profile,
        properties="{}",
        context="{}",
    )
    row.update(kw)
    return row


def write_lake(
    data_dir: Path,
    events: list[dict[str, Any]],
    *,
    identity: dict[int, int] | None = None,
    orders: list[dict[str, Any]] | None = None,
    locations: list[dict[str, Any]] | None = None,
    segment_members: list[dict[str, Any]] | None = None,
    conversations: list[dict[str, Any]] | None = None,
) -> None:
    """Events split into two batches (two files per day at most), the identity map, orders, locations."""
    root = lake.lake_dir(data_dir)
    events = sorted(events, key=lambda r: r["event_id"])
    half = len(events) // 2
    for chunk in (events[:half], events[half:]):
        if not chunk:
            continue
        first, last = chunk[0]["event_id"], chunk[-1]["event_id"]
        by_day: dict[str, list[dict[str, Any]]] = {}
        for r in chunk:
            by_day.setdefault(r["ts"].date().isoformat(), []).append(r)
        for day, rows in by_day.items():
            lake.write_atomic(
                pa.Table.from_pylist(rows, schema=lake.EVENT_SCHEMA),
                root / "events" / f"date={day}" / lake.part_name(first, last),
            )
    profiles = sorted({r["profile_id"] for r in events if r["profile_id"] is not None} | set(identity or {}))
    ident = identity or {}
    lake.write_atomic(
        pa.Table.from_pylist(
            [
                {"profile_id": p, "canonical_id": ident.get(p, p), "merged_into": ident.get(p), "created_at": T0}
                for p in profiles
            ],
            schema=_dimension_schema("identity_map"),
        ),
        root / "dimensions" / "identity_map.parquet",
    )
    lake.write_atomic(
        pa.Table.from_pylist(orders or [], schema=_dimension_schema("orders")), root / "dimensions" / "orders.parquet"
    )
    lake.write_atomic(
        pa.Table.from_pylist(locations or [], schema=_dimension_schema("locations")),
        root / "dimensions" / "locations.parquet",
    )
    for name, rows in (("segment_members", segment_members), ("conversations", conversations)):
        lake.write_atomic(
            pa.Table.from_pylist(rows or [], schema=_dimension_schema(name)), root / "dimensions" / f"{name}.parquet"
        )
    lake._write_marker(root, events[-1]["event_id"] if events else 0)
