"""Funnel rules, one test per edge case, each on DuckDB and on Spark with hand-computed numbers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omnijourney.analytics import filters as flt
from omnijourney.analytics.engine import open_lake
from omnijourney.analytics.funnels import Exclusion, FunnelSpec, Step, run_funnel
from tests.analytics.lakefix import at, ev, write_lake

FAR = int(at(days=365).timestamp() * 1000)
A, B, C, X = (Step(n, (n,)) for n in ("A", "B", "C", "X"))


def run(
    tmp: Path,
    events: list[dict[str, Any]],
    spec: FunnelSpec,
    engine: str,
    spark: Any,
    *,
    as_of: int = FAR,
    identity: dict[int, int] | None = None,
    f: flt.Filters | None = None,
) -> dict[str, Any]:
    write_lake(tmp, events, identity=identity)
    return run_funnel(open_lake(tmp, engine, spark=spark), spec, f or flt.Filters(), as_of)


def counts(result: dict[str, Any]) -> list[int]:
    return [s["count"] for s in result["steps"]]


def test_ordered_steps_and_conversion(tmp_path, engine_name, spark_or_none) -> None:
    events = [
        ev(1, 1, "A", at(0)),
        ev(2, 1, "B", at(5)),
        ev(3, 1, "C", at(10)),
        ev(4, 2, "A", at(0)),
        ev(5, 2, "B", at(1)),
        ev(6, 3, "B", at(0)),
        ev(7, 3, "A", at(1)),  # B before A does not count
    ]
    r = run(tmp_path, events, FunnelSpec(steps=(A, B, C), window_seconds=3600), engine_name, spark_or_none)
    assert counts(r) == [3, 2, 1]
    assert r["conversion_rate"] == round(1 / 3, 6)
    assert [s["conversion_from_previous"] for s in r["steps"]] == [1.0, round(2 / 3, 6), 0.5]
    assert [s["dropped"] for s in r["steps"]] == [1, 1, 0]
    assert r["steps"][1]["median_seconds_from_previous"] == 180.0  # 5 min and 1 min
    assert r["median_seconds_to_convert"] == 600.0
    assert {d["bucket"]: d["units"] for d in r["time_to_convert_distribution"]}["10-60 min"] == 1


def test_window_is_inclusive_from_the_first_step(tmp_path, engine_name, spark_or_none) -> None:
    events = [ev(1, 1, "A", at(0)), ev(2, 1, "B", at(60)), ev(3, 2, "A", at(0)), ev(4, 2, "B", at(60.001))]
    r = run(tmp_path, events, FunnelSpec(steps=(A, B), window_seconds=3600), engine_name, spark_or_none)
    assert counts(r) == [2, 1]


def test_re_entry_counts_a_unit_once_with_its_best_attempt(tmp_path, engine_name, spark_or_none) -> None:
    events = [
        # the first attempt times out, the second converts in 5 minutes
        ev(1, 1, "A", at(0)),
        ev(2, 1, "A", at(100)),
        ev(3, 1, "B", at(105)),
        # two converting attempts: the earliest start is kept (10 minutes)
        ev(4, 2, "A", at(0)),
        ev(5, 2, "B", at(10)),
        ev(6, 2, "A", at(20)),
        ev(7, 2, "B", at(30)),
    ]
    r = run(tmp_path, events, FunnelSpec(steps=(A, B), window_seconds=3600), engine_name, spark_or_none)
    assert counts(r) == [2, 2]
    dist = {d["bucket"]: d["units"] for d in r["time_to_convert_distribution"] if d["units"]}
    assert dist == {"1-10 min": 1, "10-60 min": 1}
    assert r["median_seconds_to_convert"] == 450.0  # (300 + 600) / 2


def test_same_timestamp_counts_in_log_order_and_one_event_fills_one_step(tmp_path, engine_name, spark_or_none) -> None:
    events = [
        ev(1, 1, "A", at(0)),
        ev(2, 1, "B", at(0)),  # same instant, A stored first: converts
        ev(3, 2, "B", at(0)),
        ev(4, 2, "A", at(0)),  # same instant, B stored first: does not
    ]
    r = run(tmp_path, events, FunnelSpec(steps=(A, B), window_seconds=60), engine_name, spark_or_none)
    assert counts(r) == [2, 1]
    assert r["median_seconds_to_convert"] == 0.0


def test_a_repeated_step_needs_two_events(tmp_path, engine_name, spark_or_none) -> None:
    events = [ev(1, 1, "A", at(0)), ev(2, 2, "A", at(0)), ev(3, 2, "A", at(0))]
    r = run(tmp_path, events, FunnelSpec(steps=(A, A), window_seconds=60), engine_name, spark_or_none)
    assert counts(r) == [2, 1]


def test_strict_order_breaks_on_any_event_in_between(tmp_path, engine_name, spark_or_none) -> None:
    events = [
        ev(1, 1, "A", at(0)),
        ev(2, 1, "Other", at(1)),
        ev(3, 1, "B", at(2)),
        ev(4, 2, "A", at(0)),
        ev(5, 2, "B", at(1)),
    ]
    strict = run(tmp_path, events, FunnelSpec(steps=(A, B), order="strict"), engine_name, spark_or_none)
    assert counts(strict) == [2, 1]
    ordered = run(tmp_path, events, FunnelSpec(steps=(A, B), order="ordered"), engine_name, spark_or_none)
    assert counts(ordered) == [2, 2]


def test_any_order(tmp_path, engine_name, spark_or_none) -> None:
    events = [
        ev(1, 1, "C", at(0)),
        ev(2, 1, "A", at(1)),
        ev(3, 1, "B", at(2)),  # all three, reversed
        ev(4, 2, "B", at(0)),
        ev(5, 2, "A", at(5)),  # two of three
        ev(6, 3, "B", at(0)),
        ev(7, 3, "C", at(120)),  # C outside the window from B
    ]
    r = run(tmp_path, events, FunnelSpec(steps=(A, B, C), order="any", window_seconds=3600), engine_name, spark_or_none)
    assert counts(r) == [3, 2, 1]
    assert r["median_seconds_to_convert"] == 120.0
    # steps in the order they were done: unit 1 C->A in 1 min, unit 2 B->A in 5 min
    assert r["steps"][1]["median_seconds_from_previous"] == 180.0


def test_exclusion_steps(tmp_path, engine_name, spark_or_none) -> None:
    events = [
        ev(1, 1, "A", at(0)),
        ev(2, 1, "X", at(1)),
        ev(3, 1, "B", at(2)),
        ev(4, 1, "C", at(3)),  # excluded
        ev(5, 2, "A", at(0)),
        ev(6, 2, "B", at(1)),
        ev(7, 2, "X", at(2)),
        ev(8, 2, "C", at(3)),  # X after B: fine
        # first attempt excluded, the second is clean
        ev(9, 3, "A", at(0)),
        ev(10, 3, "X", at(1)),
        ev(11, 3, "B", at(2)),
        ev(12, 3, "A", at(10)),
        ev(13, 3, "B", at(11)),
        ev(14, 3, "C", at(12)),
        ev(15, 4, "A", at(0)),
        ev(16, 4, "X", at(1)),  # never reached B; X inside the window: excluded
    ]
    spec = FunnelSpec(steps=(A, B, C), window_seconds=3600, exclusions=(Exclusion(X, 0, 1),))
    r = run(tmp_path, events, spec, engine_name, spark_or_none)
    assert counts(r) == [2, 2, 2]
    assert r["median_seconds_to_convert"] == 150.0  # 3 min and 2 min


def test_open_windows_are_in_progress_not_dropped(tmp_path, engine_name, spark_or_none) -> None:
    events = [
        ev(1, 1, "A", at(0)),
        ev(2, 1, "B", at(5)),  # window open at as_of
        ev(3, 2, "A", at(-120)),  # window closed
        ev(4, 3, "A", at(-30)),  # window open
    ]
    as_of = int(at(30).timestamp() * 1000)
    r = run(tmp_path, events, FunnelSpec(steps=(A, B, C), window_seconds=3600), engine_name, spark_or_none, as_of=as_of)
    assert counts(r) == [3, 1, 0]
    assert [(s["in_progress"], s["dropped"]) for s in r["steps"]] == [(1, 1), (1, 0), (0, 0)]
    assert r["in_progress"] == 2


def test_breakdown_attribution(tmp_path, engine_name, spark_or_none) -> None:
    events = [
        ev(1, 1, "A", at(0), channel="web"),
        ev(2, 1, "B", at(5), channel="app"),
        ev(3, 1, "C", at(10), channel="store"),
        ev(4, 2, "A", at(0), channel="web"),
        ev(5, 2, "B", at(5), channel="web"),
    ]

    def by(attribution: str, step: int = 0) -> dict[str, list[int]]:
        spec = FunnelSpec(steps=(A, B, C), breakdown="channel", attribution=attribution, attribution_step=step)
        r = run(tmp_path, events, spec, engine_name, spark_or_none)
        return {b["value"]: counts(b) for b in r["breakdown_values"]}

    assert by("first_touch") == {"web": [2, 2, 1]}
    assert by("last_touch") == {"store": [1, 1, 1], "web": [1, 1, 0]}
    assert by("step", 2) == {"(none)": [1, 1, 0], "store": [1, 1, 1]}


def test_merged_profiles_are_one_unit_and_filters_apply(tmp_path, engine_name, spark_or_none) -> None:
    events = [
        ev(1, 10, "A", at(0), device_type="mobile"),
        ev(2, 11, "B", at(5), device_type="desktop"),
        ev(3, 12, "A", at(0), device_type="mobile"),
        ev(4, 12, "B", at(5), device_type="mobile"),
    ]
    spec = FunnelSpec(steps=(A, B))
    r = run(tmp_path, events, spec, engine_name, spark_or_none, identity={11: 10})
    assert counts(r) == [2, 2]
    mobile = run(
        tmp_path, events, spec, engine_name, spark_or_none, identity={11: 10}, f=flt.Filters(device_types=("mobile",))
    )
    assert counts(mobile) == [2, 1]
    period = run(
        tmp_path,
        events,
        spec,
        engine_name,
        spark_or_none,
        identity={11: 10},
        f=flt.Filters(start_ms=int(at(1).timestamp() * 1000)),
    )
    assert counts(period) == [0, 0]
