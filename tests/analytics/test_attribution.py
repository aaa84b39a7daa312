"""Multi-touch attribution: hand-computed numbers on a small lake (both engines equal), and the public PathData
sample (10,000 paths, shipped by the `mta` test dependency) cross-checked against the published heuristic
definitions, mta's own implementation and an independent exact Markov computation."""

from __future__ import annotations

import csv
import gzip
import itertools
from collections import defaultdict
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from omnijourney.analytics import filters as flt
from omnijourney.analytics import lake, service
from omnijourney.analytics.attribution import AttributionSpec, attribution
from omnijourney.analytics.engine import open_lake
from tests.analytics.lakefix import T0, at, ev, write_lake

D = 24 * 60  # minutes per day


def build(data_dir: Path) -> None:
    events = [
        # 1: e-mail, then the web twice, buys on the web on day 7 (an e-mail after the purchase is not a touch)
        ev(1, 1, "Email Opened", at(0), channel="email"),
        ev(2, 1, None, at(6 * D), type="page", channel="web"),
        ev(3, 1, "Product Viewed", at(7 * D), channel="web"),  # stored before the order: counts
        ev(4, 1, "Order Completed", at(7 * D), channel="web", revenue=100.0, order_id="O1"),
        ev(5, 1, "Email Opened", at(8 * D), channel="email"),
        # 2: social, then buys in the store at the same instant (the touch was stored first: it counts)
        ev(6, 2, "Ad Clicked", at(30), channel="social"),
        ev(7, 2, "Order Completed", at(30), channel="store", revenue=50.0, order_id="O2"),
        # 3: e-mail, social, never buys
        ev(8, 3, "Email Opened", at(10), channel="email"),
        ev(9, 3, "Ad Clicked", at(20), channel="social"),
        ev(10, 3, None, at(21), type="identify", channel="web"),
        # 4: buys with no touch before (a direct conversion); 5: only an identify call
        ev(11, 4, "Order Completed", at(40), channel="store", revenue=30.0, order_id="O3"),
        ev(12, 5, None, at(50), type="identify", channel="web"),
    ]
    segment = [{"segment_key": "vip", "segment_name": "VIP", "profile_id": 1, "entered_at": T0}]
    write_lake(data_dir, events, segment_members=segment)


@pytest.fixture(scope="module")
def small_lake(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("attribution-lake")
    build(d)
    return d


def run(data_dir: Path, engine: str = "duckdb", spark: Any = None, **kw: Any) -> dict[str, Any]:
    f = kw.pop("filters", flt.Filters())
    return service.run(
        data_dir=data_dir,
        analysis="attribution",
        filters=f,
        engine=engine,
        attribution=AttributionSpec(**kw),
        spark=spark,
    )


def credits(r: dict[str, Any], model: str, key: str = "conversions") -> dict[str, float]:
    return {x["touchpoint"]: x[key] for x in r["results"][model]}


def nonzero(d: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in d.items() if v}


@pytest.fixture(scope="module")
def duck(small_lake: Path) -> dict[str, Any]:
    return run(small_lake)


def test_journeys_and_rule_based_models(duck: dict[str, Any]) -> None:
    r = duck
    assert (r["journeys"], r["converting_journeys"], r["non_converting_journeys"]) == (3, 2, 1)
    assert (r["conversions"], r["direct_conversions"], r["attributed_value"]) == (3, 1, 150.0)
    assert r["touchpoints"] == ["email", "social", "web"]
    assert credits(r, "first_touch") == {"email": 1.0, "social": 1.0, "web": 0.0}
    assert credits(r, "last_touch") == {"email": 0.0, "social": 1.0, "web": 1.0}
    # the two web events are one touch (collapsed)
    assert credits(r, "linear") == {"email": 0.5, "social": 1.0, "web": 0.5}
    assert credits(r, "position_based") == {"email": 0.5, "social": 1.0, "web": 0.5}
    # half-life 7 days: the e-mail 7 days before the purchase weighs 1/2, the web touch at it 1
    assert credits(r, "time_decay") == {"email": round(1 / 3, 6), "social": 1.0, "web": round(2 / 3, 6)}
    assert credits(r, "time_decay", "value") == {"email": round(100 / 3, 6), "social": 50.0, "web": round(200 / 3, 6)}


def test_markov_removal_effects_first_order(duck: dict[str, Any]) -> None:
    m = duck["markov"]
    # P(conv) = 2/3 * P(email) + 1/3 * P(social) with P(social) = 1/2 and P(email) = 1/2 + 1/4
    assert m["conversion_probability"] == round(2 / 3, 6)
    assert m["removal_effects"] == {"email": 0.75, "social": 0.5, "web": 0.5}
    assert credits(duck, "markov") == {"email": round(6 / 7, 6), "social": round(4 / 7, 6), "web": round(4 / 7, 6)}
    assert credits(duck, "markov", "value")["email"] == round(150 * 3 / 7, 6)
    assert {"from": "(start)", "to": "email", "count": 2} in m["transitions"]


def test_shapley_on_conversion_rates(duck: dict[str, Any]) -> None:
    # v(S) = conversion rate of journeys whose touchpoints are within S; worked by hand in 36ths
    assert duck["shapley"]["values"] == {
        "email": round(-1 / 36, 6),
        "social": round(17 / 36, 6),
        "web": round(8 / 36, 6),
    }
    assert duck["shapley"]["conversion_rate"] == round(2 / 3, 6)
    assert credits(duck, "shapley") == {"email": round(-1 / 12, 6), "social": round(17 / 12, 6), "web": round(2 / 3, 6)}


def test_second_order_markov_and_options(small_lake: Path) -> None:
    r = run(small_lake, markov_order=2, first_weight=0.3, last_weight=0.7, models=("markov", "position_based"))
    assert r["markov"]["removal_effects"] == {"email": 0.5, "social": 0.5, "web": 0.5}
    assert list(r["results"]) == ["markov", "position_based"]
    assert credits(r, "position_based") == {"email": 0.3, "social": 1.0, "web": 0.7}
    loose = run(small_lake, collapse=False, models=("linear",))
    assert credits(loose, "linear") == {"email": round(1 / 3, 6), "social": 1.0, "web": round(2 / 3, 6)}


def test_filters_apply(small_lake: Path) -> None:
    vip = run(small_lake, filters=flt.Filters(segments=("vip",)))
    assert (vip["journeys"], vip["conversions"]) == (1, 1)
    assert credits(vip, "first_touch") == {"email": 1.0, "web": 0.0}
    early = run(small_lake, filters=flt.Filters(end_ms=int(at(D).timestamp() * 1000)), models=("first_touch",))
    assert (early["journeys"], early["converting_journeys"], early["conversions"]) == (3, 1, 2)


def test_bad_settings_are_refused() -> None:
    for kw in ({"touch": "email"}, {"half_life_days": 0}, {"markov_order": 9}, {"models": ("magic",)}):
        with pytest.raises(ValueError):
            AttributionSpec(**kw)  # type: ignore[arg-type]


@pytest.mark.spark
def test_spark_gives_identical_results(small_lake: Path, duck: dict[str, Any], spark: Any) -> None:
    on_spark = run(small_lake, "spark", spark)
    assert {k: v for k, v in on_spark.items() if k != "engine"} == {k: v for k, v in duck.items() if k != "engine"}


# --------------------------------------------------------------------------- the public PathData sample

PathRow = tuple[tuple[str, ...], int, int, float]


def path_data() -> list[PathRow]:
    """ChannelAttribution's PathData as the `mta` package ships it: path, conversions, value, non-conversions."""
    with resources.files("mta").joinpath("data/data.csv.gz").open("rb") as fh, gzip.open(fh, "rt") as text:
        return [
            (
                tuple(c.strip() for c in r["path"].split(">")),
                int(r["total_conversions"]),
                int(r["total_null"]),
                float(r["total_conversion_value"]),
            )
            for r in csv.DictReader(text)
        ]


def path_lake(data_dir: Path, rows: list[PathRow]) -> None:
    """One customer per journey: a touch an hour in the path's order, then an order (with the path's mean value)."""
    lengths, units, _value = [], [], []
    for path, conv, null, val in rows:
        for j in range(conv + null):
            lengths.append(len(path) + (1 if j < conv else 0))
            units.append((path, j < conv, val / conv if conv else 0.0))
    n = int(sum(lengths))
    unit = np.repeat(np.arange(1, len(lengths) + 1), lengths)
    pos = np.concatenate([np.arange(k) for k in lengths])
    channel, event, revenue = [], [], []
    for path, converted, val in units:
        channel.extend(path)
        event.extend(["Ad Clicked"] * len(path))
        revenue.extend([None] * len(path))
        if converted:
            channel.append("web")
            event.append("Order Completed")
            revenue.append(val)
    ts_ms = int(T0.timestamp() * 1000) + pos.astype(np.int64) * 3_600_000
    cols = {name: pa.nulls(n, lake.EVENT_SCHEMA.field(name).type) for name in lake.EVENT_SCHEMA.names}
    cols.update(
        event_id=pa.array(np.arange(1, n + 1), pa.int64()),
        ts_ms=pa.array(ts_ms, pa.int64()),
        ts=pa.array(ts_ms * 1000, pa.int64()).cast(lake.TS),
        type=pa.array(["track"] * n, pa.string()),
        event=pa.array(event, pa.string()),
        channel=pa.array(channel, pa.string()),
        profile_id=pa.array(unit, pa.int64()),
        revenue=pa.array(revenue, pa.float64()),
    )
    root = lake.lake_dir(data_dir)
    table = pa.table([cols[c] for c in lake.EVENT_SCHEMA.names], schema=lake.EVENT_SCHEMA)
    lake.write_atomic(table, root / "events" / f"date={T0.date()}" / lake.part_name(1, n))
    lake._write_marker(root, n)


@pytest.fixture(scope="module")
def pathdata(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[PathRow], dict[str, Any]]:
    rows = path_data()
    d = tmp_path_factory.mktemp("pathdata")
    path_lake(d, rows)
    spec = AttributionSpec(collapse=False, models=("first_touch", "last_touch", "linear", "markov"))
    lt = open_lake(d)
    try:
        result = attribution(lt, flt.Filters(), spec)
    finally:
        lt.close()
    return rows, result


def test_pathdata_heuristics_match_the_published_definitions(pathdata: tuple[list[PathRow], dict[str, Any]]) -> None:
    rows, r = pathdata
    assert len(rows) == 10_000
    assert r["journeys"] == sum(c + n for _, c, n, _ in rows) and r["conversions"] == 19_785
    first: dict[str, float] = defaultdict(float)
    last: dict[str, float] = defaultdict(float)
    linear: dict[str, float] = defaultdict(float)
    for path, conv, _, _ in rows:
        first[path[0]] += conv
        last[path[-1]] += conv
        for c in path:
            linear[c] += conv / len(path)
    assert nonzero(credits(r, "first_touch")) == nonzero(first)
    assert nonzero(credits(r, "last_touch")) == nonzero(last)
    assert nonzero(credits(r, "linear")) == {k: round(v, 6) for k, v in linear.items() if v}
    assert sum(credits(r, "linear").values()) == pytest.approx(19_785, abs=1e-4)

    # mta's own implementations agree (loops kept, linear credit proportional to touches)
    import pandas as pd
    from mta import MTA

    frame = pd.DataFrame([{"path": " > ".join(p), "total_conversions": c, "total_null": n} for p, c, n, _ in rows if p])
    ref = MTA(data=frame, allow_loops=True, add_timepoints=False)
    ref.first_touch(normalize=False).last_touch(normalize=False).linear(share="proportional", normalize=False)
    assert nonzero(ref.attribution["first_touch"]) == nonzero(credits(r, "first_touch"))
    assert nonzero(ref.attribution["last_touch"]) == nonzero(credits(r, "last_touch"))
    assert {k: round(v, 6) for k, v in ref.attribution["linear"].items() if v} == nonzero(credits(r, "linear"))


def test_pathdata_markov_equals_an_independent_exact_computation(
    pathdata: tuple[list[PathRow], dict[str, Any]],
) -> None:
    rows, r = pathdata
    # transition counts straight from the path strings
    counts: dict[tuple[str, str], int] = defaultdict(int)
    for path, conv, null, _ in rows:
        walk = ("(start)", *path)
        for a, b in itertools.pairwise(walk):
            counts[(a, b)] += conv + null
        counts[(path[-1], "(conversion)")] += conv
        counts[(path[-1], "(null)")] += null
    engine_counts = {(t["from"], t["to"]): t["count"] for t in r["markov"]["transitions"]}
    assert engine_counts == {k: v for k, v in counts.items() if v}

    # absorption probabilities by fixed-point iteration (not a linear solve): x = r + Q x
    def p_conv(removed: str | None) -> float:
        out: dict[str, int] = defaultdict(int)
        for (a, _), k in counts.items():
            out[a] += k
        x: dict[str, float] = defaultdict(float)
        for _ in range(10_000):
            new: dict[str, float] = defaultdict(float)
            for (a, b), k in counts.items():
                if a == removed or b == removed:
                    continue
                new[a] += k / out[a] * (1.0 if b == "(conversion)" else x[b])
            delta = max(abs(new[s] - x[s]) for s in new)
            x = new
            if delta < 1e-15:
                break
        return x["(start)"]

    base = p_conv(None)
    assert r["markov"]["conversion_probability"] == pytest.approx(base, abs=1e-6)
    effects = {c: 1 - p_conv(c) / base for c in r["touchpoints"]}
    assert r["markov"]["removal_effects"] == pytest.approx(effects, abs=1e-6)
    total = sum(effects.values())
    expected = {c: 19_785 * e / total for c, e in effects.items()}
    assert credits(r, "markov") == pytest.approx(expected, abs=1e-5)
