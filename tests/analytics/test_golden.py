"""Golden paths: followers, order and window, deviations (where and what instead), conversion of followers vs
others, the configuration file (DuckDB, hand-computed), and one test that Spark gives identical results."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from omnijourney.analytics import filters as flt
from omnijourney.analytics import service
from omnijourney.analytics.engine import open_lake
from omnijourney.analytics.funnels import Step
from omnijourney.analytics.golden import NOTHING, GoldenConfig, GoldenPath, load_golden_config, run_golden
from tests.analytics.lakefix import at, ev, write_lake

BUY = "Order Completed"
D = 24 * 60
SOCIAL = Step("discover on social", ("Ad Clicked",), where=(("utm_medium", "=", "paid_social"),))
STORE = Step("test in store", ("Store Visited",), where=(("channel", "=", "store"),))
ONLINE = Step("order online", (BUY,), where=(("channel", "=", "web"),))
PICKUP = Step("pick up", ("Order Picked Up",))
PATH = GoldenPath("social → store → online → pick-up", (SOCIAL, STORE, ONLINE, PICKUP))
CFG = GoldenConfig(paths=(PATH,), conversion=Step("purchase", (BUY,)), window_days=30)
AS_OF = int(at(days=365).timestamp() * 1000)


def social(i: int, p: int, minutes: float) -> dict[str, Any]:
    return ev(i, p, "Ad Clicked", at(minutes), channel="ads", utm_medium="paid_social")


def journeys() -> list[dict[str, Any]]:
    return [
        # 1 follows, with other events in between
        social(1, 1, 0),
        ev(2, 1, None, at(1), type="page"),
        ev(3, 1, "Store Visited", at(D), channel="store"),
        ev(4, 1, BUY, at(2 * D)),
        ev(5, 1, "Order Picked Up", at(3 * D), channel="store"),
        # 2 leaves after the ad: buys online right away (then nothing else)
        social(6, 2, 0),
        ev(7, 2, BUY, at(5)),
        # 3 leaves after the store visit: buys in the store instead
        social(8, 3, 0),
        ev(9, 3, "Store Visited", at(10), channel="store"),
        ev(10, 3, BUY, at(20), channel="store"),
        # 4: store before the ad does not count, and nothing follows the ad
        ev(11, 4, "Store Visited", at(0), channel="store"),
        social(12, 4, 10),
        # 5 does every step, but the pick-up is 31 days after the ad: outside the window
        social(13, 5, 0),
        ev(14, 5, "Store Visited", at(10), channel="store"),
        ev(15, 5, BUY, at(20)),
        ev(16, 5, "Order Picked Up", at(31 * D), channel="store"),
        # 6 never saw an ad, bought in the app
        ev(17, 6, BUY, at(0), channel="app"),
    ]


@pytest.fixture(scope="module")
def lake(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("golden-lake")
    write_lake(d, journeys())
    return d


@pytest.fixture(scope="module")
def result(lake: Path) -> dict[str, Any]:
    return run_golden(open_lake(lake), CFG, flt.Filters(), AS_OF)["paths"][0]


def test_followers_and_shares(result: dict[str, Any]) -> None:
    assert (result["customers"], result["entered"], result["followers"]) == (6, 5, 1)
    assert result["share_of_customers"] == round(1 / 6, 6) and result["share_of_entered"] == 0.2
    assert [s["reached"] for s in result["steps"]] == [5, 3, 2, 1]
    assert result["in_progress"] == 0


def test_where_others_leave_the_path_and_what_they_did_instead(result: dict[str, Any]) -> None:
    steps = {s["step"]: s for s in result["steps"]}
    assert steps[1]["left_here"] == 1 and steps[1]["instead"] == []  # 6 never started
    # after the ad: 2 bought online (skipping the store), 4 did nothing more
    assert steps[2]["left_here"] == 2
    assert steps[2]["instead"] == [
        {"event": NOTHING, "customers": 1},
        {"event": "web · Order Completed", "customers": 1},
    ]
    assert steps[3]["instead"] == [{"event": "store · Order Completed", "customers": 1}]
    # 5's pick-up came too late: what followed the online order was that late pick-up
    assert steps[4]["instead"] == [{"event": "store · Order Picked Up", "customers": 1}]
    assert result["biggest_deviation"] == {"step": 2, "name": "test in store", "customers": 2}


def test_conversion_of_followers_vs_others(result: dict[str, Any]) -> None:
    conv = result["conversion"]
    assert conv["followers"] == {"customers": 1, "converted": 1, "conversion_rate": 1.0}
    assert conv["others"] == {"customers": 5, "converted": 4, "conversion_rate": 0.8}  # all but 4
    assert conv["lift"] == 1.25


def test_open_windows_are_in_progress_and_filters_apply(lake: Path) -> None:
    soon = int(at(days=10).timestamp() * 1000)
    r = run_golden(open_lake(lake), CFG, flt.Filters(), soon)["paths"][0]
    assert r["in_progress"] == 4 and r["steps"][1]["in_progress"] == 2
    ads_only = run_golden(open_lake(lake), CFG, flt.Filters(channels=("ads",)), AS_OF)["paths"][0]
    assert (ads_only["customers"], ads_only["entered"], ads_only["followers"]) == (5, 5, 0)
    assert ads_only["conversion"]["others"]["converted"] == 0


def test_the_default_configuration_and_its_validation(tmp_path: Path) -> None:
    cfg = load_golden_config()
    assert len(cfg.paths) >= 2 and cfg.conversion.events == (BUY,)
    assert [s.name for s in cfg.paths[0].steps] == [
        "discover on social",
        "test in store",
        "order online",
        "pick up in store",
    ]
    bad = {
        "paths: []": "non-empty",
        "paths: [{name: x, steps: [{events: [A]}]}]": "2 to 10 steps",
        "paths: [{name: x, steps: [{events: [A]}, {name: any}]}]": "matches every event",
        "paths: [{name: x, steps: [{events: [A]}, {events: [B], where: [[payload, '=', 1]]}]}]": "unknown column",
        "paths: [{name: x, colour: red, steps: [{events: [A]}, {events: [B]}]}]": "unknown keys",
    }
    for text, message in bad.items():
        f = tmp_path / "golden.yaml"
        f.write_text(text)
        with pytest.raises(ValueError, match=message):
            load_golden_config(f)


@pytest.mark.spark
def test_spark_gives_identical_results(lake: Path, spark: Any) -> None:
    def run(engine: str) -> dict[str, Any]:
        out = service.run(
            data_dir=lake,
            analysis="golden-paths",
            filters=flt.Filters(),
            engine=engine,
            as_of_ms=AS_OF,
            options=CFG,
            spark=spark if engine == "spark" else None,
        )
        out.pop("engine")
        return out

    assert run("duckdb") == run("spark")
