"""The merge-in-the-upsert writes of the profile handler (`dialect.upsert_rows`) and `dialect.in_values`.

40 rows take PostgreSQL's COPY path, 1 row its multi-row statement; SQLite always the latter.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from omnijourney.profiles.handler import COUNTER_COLUMNS, COUNTER_MERGE, COUNTERS, STATS, STATS_COLUMNS, STATS_MERGE
from omnijourney.store import db, dialect

T = datetime(2026, 3, 1, 12, tzinfo=UTC)


def _stats(conn: sa.Connection, pid: int, at: datetime, **kw: object) -> tuple[object, ...]:
    when = dialect.datetime_binder(conn)
    row = {
        "profile_id": pid,
        "first_seen": when(at),
        "last_seen": when(at),
        "event_count": 1,
        "order_count": 0,
        "revenue": 0.0,
        "last_order_at": None,
        "last_order_id": None,
        "nps": None,
        "nps_at": None,
        "csat": None,
        "csat_at": None,
        "stage_rank": 0,
    }
    for key, value in kw.items():
        row[key] = when(value) if isinstance(value, datetime) else value
    return tuple(row[c] for c in STATS_COLUMNS)


@pytest.mark.parametrize("n", [1, 40])
def test_stats_and_counters_merge_with_the_stored_rows(engine: sa.Engine, n: int) -> None:
    ids = list(range(1, n + 1))
    with db.write(engine) as conn:
        first = [_stats(conn, 1, T, order_count=1, revenue=10.0, last_order_at=T, last_order_id="o1", nps=5, nps_at=T)]
        first += [_stats(conn, p, T) for p in ids[1:]]
        dialect.upsert_rows(conn, STATS, STATS_COLUMNS, first, ["profile_id"], merge=STATS_MERGE)
        when = dialect.datetime_binder(conn)
        counters = [(p, "channel", "web", 2, when(T)) for p in ids]
        dialect.upsert_rows(
            conn, COUNTERS, COUNTER_COLUMNS, counters, ["profile_id", "kind", "key"], merge=COUNTER_MERGE
        )
    with db.write(engine) as conn:
        # profile 1: an earlier event, a tied-time order (the newer batch wins ties), no survey
        second = [
            _stats(
                conn,
                1,
                T - timedelta(days=1),
                event_count=3,
                order_count=1,
                revenue=25.5,
                last_order_at=T,
                last_order_id="o2",
                stage_rank=2,
            )
        ]
        second += [_stats(conn, p, T + timedelta(hours=1)) for p in ids[1:]]
        dialect.upsert_rows(conn, STATS, STATS_COLUMNS, second, ["profile_id"], merge=STATS_MERGE)
        earlier = [(p, "channel", "web", 1, when(T - timedelta(days=2))) for p in ids]
        dialect.upsert_rows(
            conn, COUNTERS, COUNTER_COLUMNS, earlier, ["profile_id", "kind", "key"], merge=COUNTER_MERGE
        )
    with db.read(engine) as conn:
        rows = {r.profile_id: r for r in conn.execute(sa.select(STATS))}
        counted = {r.profile_id: r for r in conn.execute(sa.select(COUNTERS))}
    one = rows[1]
    assert (one.first_seen, one.last_seen, one.event_count) == (T - timedelta(days=1), T, 4)
    assert (one.order_count, one.revenue, one.last_order_at, one.last_order_id) == (2, 25.5, T, "o2")
    assert (one.nps, one.nps_at, one.stage_rank) == (5, T, 2)  # a batch without a survey keeps the stored one
    for p in ids[1:]:
        r = rows[p]
        assert (r.first_seen, r.last_seen, r.event_count, r.order_count, r.revenue) == (
            T,
            T + timedelta(hours=1),
            2,
            0,
            0.0,
        )
    assert len(rows) == n and len(counted) == n
    assert all((c.count, c.last_at) == (3, T) for c in counted.values())


def test_in_values_selects_the_given_keys(engine: sa.Engine) -> None:
    with db.write(engine) as conn:
        rows = [_stats(conn, p, T) for p in range(1, 31)]
        dialect.upsert_rows(conn, STATS, STATS_COLUMNS, rows, ["profile_id"])
    stmt = sa.select(STATS.c.profile_id).where(dialect.in_values(STATS.c.profile_id, "ids"))
    with db.read(engine) as conn:
        for wanted in ([3], [1, 7, 30, 99], list(range(5, 25))):
            got = conn.execute(stmt, {"ids": dialect.in_values_param(conn, wanted)}).scalars().all()
            assert sorted(got) == [p for p in wanted if p <= 30]
