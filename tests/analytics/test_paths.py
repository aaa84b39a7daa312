"""Channel paths: collapsing, anchors, Sankey links, transitions and top paths to purchase (DuckDB, hand-computed),
and one test that Spark gives identical results over a shared lake."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from omnijourney.analytics import filters as flt
from omnijourney.analytics import service
from omnijourney.analytics.engine import open_lake
from omnijourney.analytics.paths import PathSpec, run_paths
from tests.analytics.lakefix import at, ev, write_lake

BUY = "Order Completed"


def journeys() -> list[dict[str, Any]]:
    return [
        # 1: ads -> web (page, view) -> store -> web (order) -> store (second order)
        ev(1, 1, "Ad Clicked", at(0), channel="ads"),
        ev(2, 1, None, at(1), type="page"),
        ev(3, 1, "Product Viewed", at(2)),
        ev(4, 1, "Store Visited", at(3), channel="store"),
        ev(5, 1, BUY, at(4)),
        ev(6, 1, BUY, at(5), channel="store"),
        # 2: web page -> web order
        ev(7, 2, None, at(0), type="page"),
        ev(8, 2, BUY, at(1)),
        # 3: store visit only; the two members 30 and 31 are one customer: email -> web -> web order
        ev(9, 3, "Store Visited", at(0), channel="store"),
        ev(10, 30, "Email Opened", at(0), channel="email"),
        ev(11, 31, "Product Viewed", at(1)),
        ev(12, 30, BUY, at(2)),
    ]


@pytest.fixture(scope="module")
def lake(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("paths-lake")
    write_lake(d, journeys(), identity={30: 31})
    return d


def paths(lake: Path, spec: PathSpec, f: flt.Filters | None = None) -> dict[str, Any]:
    return run_paths(open_lake(lake), spec, f or flt.Filters())


def links(result: dict[str, Any]) -> set[tuple[int, str, str, int]]:
    return {(x["step"], x["source_label"], x["target_label"], x["customers"]) for x in result["sankey"]["links"]}


def test_channels_collapse_and_the_sankey_starts_at_the_first_event(lake: Path) -> None:
    r = paths(lake, PathSpec(steps=5))
    assert r["customers"] == 4
    nodes = {(n["step"], n["label"], n["customers"]) for n in r["sankey"]["nodes"]}
    assert nodes == {
        (1, "ads", 1),
        (1, "web", 1),
        (1, "store", 1),
        (1, "email", 1),
        (2, "web", 2),
        (3, "store", 1),
        (4, "web", 1),
        (5, "store", 1),
    }
    assert links(r) == {
        (1, "ads", "web", 1),
        (1, "email", "web", 1),
        (2, "web", "store", 1),
        (3, "store", "web", 1),
        (4, "web", "store", 1),
    }
    # the Plotly arrays index the node list
    labels = r["sankey"]["node"]["label"]
    got = {
        (labels[s], labels[t], v)
        for s, t, v in zip(*(r["sankey"]["link"][k] for k in ("source", "target", "value")), strict=True)
    }
    assert ("1. ads", "2. web", 1) in got and len(got) == 5
    top = r["transitions"][0]
    assert (top["source"], top["target"], top["transitions"], top["customers"]) == ("web", "store", 2, 1)
    assert r["rows"][0] == {"step": 1, "source": "ads", "target": "web", "customers": 1}


def test_top_paths_to_purchase_stop_at_the_first_purchase(lake: Path) -> None:
    r = paths(lake, PathSpec(steps=5))
    assert r["purchasers"] == 3
    assert [(p["path"], p["customers"]) for p in r["top_paths_to_purchase"]] == [
        ("ads → web → store → web", 1),
        ("email → web", 1),
        ("web", 1),
    ]
    short = paths(lake, PathSpec(steps=2, top=1))
    # ties: by path; a path longer than the steps keeps its last nodes
    assert [(p["path"], p["share"]) for p in short["top_paths_to_purchase"]] == [("email → web", round(1 / 3, 6))]
    assert "… → store → web" in {p["path"] for p in paths(lake, PathSpec(steps=2))["top_paths_to_purchase"]}
    assert {p["path"] for p in paths(lake, PathSpec(steps=3))["top_paths_to_purchase"]} == {
        "… → web → store → web",
        "email → web",
        "web",
    }


def test_channel_action_level(lake: Path) -> None:
    r = paths(lake, PathSpec(level="channel_action", steps=3))
    nodes = {(n["step"], n["label"]) for n in r["sankey"]["nodes"] if n["step"] == 2}
    assert nodes == {(2, "web · page"), (2, "web · Order Completed"), (2, "web · Product Viewed")}
    top = {p["path"] for p in r["top_paths_to_purchase"]}
    assert "web · page → web · Order Completed" in top


def test_start_anchor(lake: Path) -> None:
    r = paths(lake, PathSpec(start="store", steps=3))
    # customers 1 (store -> web -> store) and 3 (store); the others never were in a store
    assert r["customers"] == 2
    assert links(r) == {(1, "store", "web", 1), (2, "web", "store", 1)}
    assert {(n["step"], n["label"], n["customers"]) for n in r["sankey"]["nodes"]} == {
        (1, "store", 2),
        (2, "web", 1),
        (3, "store", 1),
    }


def test_end_anchor_aligns_the_last_column(lake: Path) -> None:
    r = paths(lake, PathSpec(end="store", steps=3))
    # the path ends at the first store node: 1 = ads -> web -> store, 3 = store
    assert r["customers"] == 2
    assert {(n["step"], n["label"], n["customers"]) for n in r["sankey"]["nodes"]} == {
        (1, "ads", 1),
        (2, "web", 1),
        (3, "store", 2),
    }
    both = paths(lake, PathSpec(start="web", end="store", steps=2))
    assert links(both) == {(1, "web", "store", 1)} and both["customers"] == 1


def test_filters_apply_before_collapsing(lake: Path) -> None:
    r = paths(lake, PathSpec(steps=3), flt.Filters(channels=("web",)))
    # without the other channels, 1's web runs merge into one node
    assert {(n["step"], n["label"], n["customers"]) for n in r["sankey"]["nodes"]} == {(1, "web", 3)}
    assert r["transitions"] == [] and r["purchasers"] == 3


def test_spec_validation() -> None:
    for bad in ({"level": "device"}, {"steps": 1}, {"steps": 11}, {"top": 0}):
        with pytest.raises(ValueError):
            PathSpec(**bad)  # type: ignore[arg-type]


@pytest.mark.spark
def test_spark_gives_identical_results(lake: Path, spark: Any) -> None:
    # one spec with the most machinery (channel x action, end anchor); the rest is the same definition
    for spec in [PathSpec(level="channel_action", end="web · Order Completed", steps=3)]:
        duck = service.run(data_dir=lake, analysis="paths", filters=flt.Filters(), as_of_ms=0, options=spec)
        on_spark = service.run(
            data_dir=lake,
            analysis="paths",
            filters=flt.Filters(),
            engine="spark",
            as_of_ms=0,
            options=spec,
            spark=spark,
        )
        assert {k: v for k, v in duck.items() if k != "engine"} == {k: v for k, v in on_spark.items() if k != "engine"}
