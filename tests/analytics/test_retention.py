"""Retention cohorts and lifecycle: one test per rule on DuckDB with hand-computed matrices, and one test
that Spark gives identical results over a shared lake (the Ibis definition is the same)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from omnijourney.analytics import filters as flt
from omnijourney.analytics import service
from omnijourney.analytics.engine import open_lake
from omnijourney.analytics.funnels import Step
from omnijourney.analytics.retention import (
    LifecycleSpec,
    RetentionSpec,
    period_of,
    period_start,
    run_lifecycle,
    run_retention,
)
from tests.analytics.lakefix import at, ev, write_lake

W = 7  # days per week; T0 (lakefix) is Monday 2026-11-02 10:00 UTC
BUY = "Order Completed"


def ms(value: datetime) -> int:
    return int(value.timestamp() * 1000)


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)  # type: ignore[misc]


def retention(tmp: Path, events: list[dict[str, Any]], spec: RetentionSpec, **kw: Any) -> dict[str, Any]:
    write_lake(tmp, events, identity=kw.pop("identity", None))
    as_of = kw.pop("as_of", ms(at(days=365)))
    return run_retention(open_lake(tmp), spec, kw.pop("f", flt.Filters()), as_of)


def matrix(result: dict[str, Any]) -> dict[str, list[int | None]]:
    return {c["cohort"]: c["retained"] for c in result["cohorts"]}


def orders_in_weeks() -> list[dict[str, Any]]:
    """Customer 1 buys in weeks 0, 1 and 3; customer 2 in weeks 1 and 2; customer 3 in week 0 only."""
    rows = [(1, 0), (1, 1), (1, 3), (2, 1), (2, 2), (3, 0)]
    return [ev(i, p, BUY, at(days=W * w + 1)) for i, (p, w) in enumerate(rows, start=1)]


def test_first_time_cohorts_on(tmp_path: Path) -> None:
    r = retention(tmp_path, orders_in_weeks(), RetentionSpec(periods=4), as_of=ms(at(days=W * 4 + 1)))
    # week 0: customers 1 and 3 (1 back in weeks 1 and 3); week 1: customer 2 (back in week 2)
    assert matrix(r) == {"2026-11-02": [2, 1, 0, 1, 0], "2026-11-09": [1, 1, 0, 0, None]}
    assert r["cohorts"][0]["rates"] == [1.0, 0.5, 0.0, 0.5, 0.0]
    assert r["customers"] == 3 and r["periods"] == [0, 1, 2, 3, 4]
    assert r["rows"][1] == {"cohort": "2026-11-02", "size": 2, "period": 1, "customers": 1, "rate": 0.5}


def test_recurring_cohorts_put_a_customer_in_every_active_period(tmp_path: Path) -> None:
    spec = RetentionSpec(cohort_type="recurring", periods=2)
    r = retention(tmp_path, orders_in_weeks(), spec, as_of=ms(at(days=W * 4 + 1)))
    assert matrix(r) == {
        "2026-11-02": [2, 1, 0],  # 1 and 3
        "2026-11-09": [2, 1, 1],  # 1 and 2: 2 back in week 2, 1 in week 3
        "2026-11-16": [1, 0, 0],  # 2
        "2026-11-23": [1, 0, None],  # 1; week 5 has not started
    }


def test_on_or_after_counts_a_customer_until_their_last_return(tmp_path: Path) -> None:
    r = retention(tmp_path, orders_in_weeks(), RetentionSpec(mode="on_or_after", periods=3), as_of=ms(at(days=60)))
    # customer 1's last return is week 3: retained in weeks 1, 2 and 3 (bought nothing in week 2)
    assert matrix(r) == {"2026-11-02": [2, 1, 1, 1], "2026-11-09": [1, 1, 0, 0]}


def test_a_return_in_the_cohort_period_does_not_count(tmp_path: Path) -> None:
    events = [ev(1, 1, BUY, at(0)), ev(2, 1, BUY, at(days=6)), ev(3, 2, BUY, at(0)), ev(4, 2, BUY, at(days=7))]
    r = retention(tmp_path, events, RetentionSpec(periods=1))
    assert matrix(r) == {"2026-11-02": [2, 1]}  # Monday 10:00 + 6 d is still week 0


@pytest.mark.parametrize(
    ("granularity", "first", "second", "expected"),
    [
        # the last millisecond of Sunday is week 0, Monday 00:00 is week 1
        ("week", utc(2026, 11, 2, 10), utc(2026, 11, 8, 23, 59, 59, 999000), [1, 0]),
        ("week", utc(2026, 11, 2, 10), utc(2026, 11, 9), [1, 1]),
        # days are UTC calendar days: 23:59 then 00:00 is the next day
        ("day", utc(2026, 11, 2, 23, 59), utc(2026, 11, 3, 0, 0), [1, 1]),
        # months are calendar months, across a year end; Jan 31 -> Mar 1 is two months
        ("month", utc(2026, 12, 31, 23, 59), utc(2027, 1, 1), [1, 1]),
        ("month", utc(2027, 1, 31, 12), utc(2027, 3, 1), [1, 0, 1]),
    ],
)
def test_period_boundaries(
    tmp_path: Path, granularity: str, first: datetime, second: datetime, expected: list[int]
) -> None:
    events = [ev(1, 1, BUY, first), ev(2, 1, BUY, second)]
    spec = RetentionSpec(granularity=granularity, periods=len(expected) - 1)  # type: ignore[arg-type]
    r = retention(tmp_path, events, spec, as_of=ms(utc(2028, 1, 1)))
    assert r["cohorts"][0]["retained"] == expected
    assert r["cohorts"][0]["cohort"] == period_start(period_of(ms(first), granularity), granularity).isoformat()


def test_period_index_helpers_agree_with_the_calendar() -> None:
    assert period_start(period_of(ms(utc(2026, 11, 8, 12)), "week"), "week").isoformat() == "2026-11-02"
    assert period_start(period_of(ms(utc(2024, 2, 29, 12)), "month"), "month").isoformat() == "2024-02-01"
    assert period_start(period_of(ms(utc(1970, 1, 1)), "week"), "week").isoformat() == "1969-12-29"


def test_periods_not_started_yet_are_null_and_the_current_one_counts(tmp_path: Path) -> None:
    events = [ev(1, 1, BUY, at(0)), ev(2, 1, BUY, at(days=8))]
    r = retention(tmp_path, events, RetentionSpec(periods=3), as_of=ms(at(days=9)))
    assert matrix(r) == {"2026-11-02": [1, 1, None, None]}  # week 1 is under way


def test_period_filter_first_time_vs_recurring(tmp_path: Path) -> None:
    # customer 1 first bought before the period; customer 2 within it; a return after the end is not seen
    events = [
        ev(1, 1, BUY, at(days=-10)),
        ev(2, 1, BUY, at(days=1)),
        ev(3, 1, BUY, at(days=8)),
        ev(4, 2, BUY, at(days=2)),
        ev(5, 2, BUY, at(days=15)),
    ]
    f = flt.Filters(start_ms=ms(at(days=-1)), end_ms=ms(at(days=13)))  # ends in week 1 (the 15th)
    first = retention(tmp_path, events, RetentionSpec(periods=2), f=f)
    assert matrix(first) == {"2026-11-02": [1, 0, None]}  # only customer 2; week 2 starts after the end
    recurring = run_retention(
        open_lake(tmp_path), RetentionSpec(cohort_type="recurring", periods=2), f, ms(at(days=99))
    )
    assert matrix(recurring) == {"2026-11-02": [2, 1, None], "2026-11-09": [1, None, None]}


def test_merged_profiles_are_one_customer(tmp_path: Path) -> None:
    events = [ev(1, 10, BUY, at(0)), ev(2, 11, BUY, at(days=7))]
    r = retention(tmp_path, events, RetentionSpec(periods=1), identity={10: 11})
    assert matrix(r) == {"2026-11-02": [1, 1]}


def test_cohort_and_return_events_differ_and_filters_apply_to_both(tmp_path: Path) -> None:
    events = [
        ev(1, 1, "Store Visited", at(0), channel="store"),
        ev(2, 1, BUY, at(days=7), channel="web"),
        ev(3, 2, "Store Visited", at(0), channel="store"),
        ev(4, 2, BUY, at(days=7), channel="store"),
        ev(5, 3, BUY, at(0), channel="store"),  # bought, never visited: in no cohort
    ]
    spec = RetentionSpec(cohort=Step("Store Visited", ("Store Visited",)), periods=1)
    assert matrix(retention(tmp_path, events, spec)) == {"2026-11-02": [2, 2]}
    stores = run_retention(open_lake(tmp_path), spec, flt.Filters(channels=("store",)), ms(at(days=99)))
    assert matrix(stores) == {"2026-11-02": [2, 1]}
    anything = RetentionSpec(cohort=Step("any event"), returning=Step("any event"), periods=1)
    assert matrix(run_retention(open_lake(tmp_path), anything, flt.Filters(), ms(at(days=99)))) == {
        "2026-11-02": [3, 2]
    }


def test_spec_validation() -> None:
    for bad in ({"cohort_type": "sometimes"}, {"mode": "before"}, {"granularity": "year"}, {"periods": 0}):
        with pytest.raises(ValueError):
            RetentionSpec(**bad)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- lifecycle


def lifecycle(result: dict[str, Any]) -> list[tuple[str, int, int, int, int]]:
    return [(p["period"], p["new"], p["returning"], p["resurrecting"], p["dormant"]) for p in result["periods"]]


def lifecycle_events() -> list[dict[str, Any]]:
    """A is active in weeks 0, 1 and 3, B in week 1 (page views and orders: any event counts)."""
    return [
        ev(1, 1, None, at(days=1), type="page"),
        ev(2, 1, BUY, at(days=W + 1)),
        ev(3, 1, None, at(days=3 * W + 1), type="page"),
        ev(4, 2, BUY, at(days=W + 2)),
    ]


def test_lifecycle_new_returning_resurrecting_dormant(tmp_path: Path) -> None:
    write_lake(tmp_path, lifecycle_events())
    r = run_lifecycle(open_lake(tmp_path), LifecycleSpec(), flt.Filters(), ms(at(days=4 * W + 1)))
    assert lifecycle(r) == [
        ("2026-11-02", 1, 0, 0, 0),
        ("2026-11-09", 1, 1, 0, 0),
        ("2026-11-16", 0, 0, 0, 2),
        ("2026-11-23", 0, 0, 1, 0),
        ("2026-11-30", 0, 0, 0, 1),
    ]
    assert r["periods"][1]["active"] == 2 and r["rows"][3]["resurrecting"] == 1
    # the activity can be an event: orders only -> A is new in week 1 with B
    buys = run_lifecycle(open_lake(tmp_path), LifecycleSpec(activity=Step(BUY, (BUY,))), flt.Filters(), ms(at(days=15)))
    assert lifecycle(buys) == [("2026-11-09", 2, 0, 0, 0), ("2026-11-16", 0, 0, 0, 2)]


def test_lifecycle_history_before_the_period_decides_the_status(tmp_path: Path) -> None:
    write_lake(tmp_path, lifecycle_events())
    f = flt.Filters(start_ms=ms(at(days=W)), end_ms=ms(at(days=3 * W + 2)))
    r = run_lifecycle(open_lake(tmp_path), LifecycleSpec(), f, ms(at(days=99)))
    # week 1: A returning (active in week 0, before the period); the period ends in week 3
    assert lifecycle(r) == [("2026-11-09", 1, 1, 0, 0), ("2026-11-16", 0, 0, 0, 2), ("2026-11-23", 0, 0, 1, 0)]


def test_lifecycle_by_month(tmp_path: Path) -> None:
    events = [ev(1, 1, BUY, utc(2026, 11, 30, 23)), ev(2, 1, BUY, utc(2027, 1, 1)), ev(3, 2, BUY, utc(2026, 12, 1))]
    write_lake(tmp_path, events)
    r = run_lifecycle(open_lake(tmp_path), LifecycleSpec(granularity="month"), flt.Filters(), ms(utc(2027, 1, 5)))
    assert lifecycle(r) == [("2026-11-01", 1, 0, 0, 0), ("2026-12-01", 1, 0, 0, 1), ("2027-01-01", 0, 0, 1, 1)]


# --------------------------------------------------------------------------- both engines

SPECS = {
    "first-week-on": RetentionSpec(periods=4),
    "recurring-month-after": RetentionSpec(cohort_type="recurring", mode="on_or_after", granularity="month"),
}


@pytest.fixture(scope="module")
def shared_lake(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("retention-lake")
    events = orders_in_weeks() + [
        ev(20, 10, BUY, at(days=40)),
        ev(21, 11, BUY, at(days=70)),
        ev(22, 4, None, at(days=3), type="page"),
        ev(23, 4, BUY, at(days=33), channel="store"),
    ]
    write_lake(d, events, identity={10: 11})
    return d


def run_all(lake: Path, engine: str, spark: Any = None) -> dict[str, Any]:
    as_of = ms(at(days=90))
    out = {
        name: service.run(
            data_dir=lake,
            analysis="retention",
            filters=flt.Filters(),
            engine=engine,
            as_of_ms=as_of,
            spark=spark,
            options=spec,
        )
        for name, spec in SPECS.items()
    }
    out["lifecycle"] = service.run(
        data_dir=lake,
        analysis="lifecycle",
        filters=flt.Filters(),
        engine=engine,
        as_of_ms=as_of,
        spark=spark,
        options=LifecycleSpec(granularity="month"),
    )
    return out


def test_shared_lake_on_duckdb(shared_lake: Path) -> None:
    r = run_all(shared_lake, "duckdb")
    rows = {k: v[:3] for k, v in matrix(r["recurring-month-after"]).items()}
    # November: 1, 2, 3 (4 only viewed a page); December: 4 and the merged 10/11, who buys again in January
    assert rows == {"2026-11-01": [3, 0, 0], "2026-12-01": [2, 1, None], "2027-01-01": [1, None, None]}
    assert lifecycle(r["lifecycle"]) == [
        ("2026-11-01", 4, 0, 0, 0),
        ("2026-12-01", 1, 1, 0, 3),
        ("2027-01-01", 0, 1, 0, 1),
    ]


@pytest.mark.spark
def test_spark_gives_identical_results(shared_lake: Path, spark: Any) -> None:
    duck = run_all(shared_lake, "duckdb")
    on_spark = run_all(shared_lake, "spark", spark)
    for name in duck:
        assert {k: v for k, v in duck[name].items() if k != "engine"} == {
            k: v for k, v in on_spark[name].items() if k != "engine"
        }, name
