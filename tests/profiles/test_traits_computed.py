"""Trait merge strategies and types, and the computed traits of the 360 view, through the processing stage.

One database per module (tests/moddb.py) processed with handlers built from a test profile
configuration; each test works on its own identifiers."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from pydantic import ValidationError

from omnijourney.app import create_app
from omnijourney.config import IngestLimits, Settings
from omnijourney.pipeline import service as pipeline
from omnijourney.pipeline.worker import run_until_idle
from omnijourney.profiles import service as profiles
from omnijourney.profiles.config import ProfileConfig, load_profile_config
from omnijourney.store import db
from tests.identity.helpers import append, profile_of, source

DEFAULT = load_profile_config()
CONFIG = ProfileConfig.model_validate(
    {
        "trait_strategies": {"nick": "first", "best_score": "max", "points": "sum", "tags": "union", "sizes": "union"},
        "trait_types": {
            "points": "integer",
            "best_score": "number",
            "tags": "string",
            "sizes": "list",
            "vip": "boolean",
            "born": "datetime",
        },
        "lifecycle": DEFAULT.lifecycle,
    }
)
HANDLERS = pipeline.default_handlers(profile_config=CONFIG)


def at(day: int, hour: int = 12) -> datetime:
    return datetime(2026, 11, day, hour, tzinfo=UTC)


def ts(day: int, hour: int = 12) -> str:
    return at(day, hour).isoformat().replace("+00:00", "Z")


def view(engine: sa.Engine, pid: int) -> dict[str, Any]:
    with db.read(engine) as conn:
        out = profiles.profile_360(conn=conn, profile_id=pid, config=CONFIG)
    assert out is not None
    return out


def process(engine: sa.Engine) -> None:
    run_until_idle(engine, HANDLERS, batch=500)


def identify(anon: str, day: int, hour: int = 12, **traits: Any) -> dict[str, Any]:
    return {"type": "identify", "anonymousId": anon, "traits": traits, "timestamp": ts(day, hour)}


def test_trait_strategies_within_and_across_members_and_mistyped_values_refused(mod_engine: sa.Engine) -> None:
    engine = mod_engine
    pos = source(engine, "pos", "store", trusted=True)
    append(
        engine,
        pos,
        "store",
        [
            identify("tr-1", 3, email="tr1@example.com", nick="Al", best_score=10, points=5, tags=["a", "b"], vip=True),
            identify("tr-1", 5, nick="Alfred", best_score=7.5, points=3, tags="c", city="Praha", born="1990-04-01"),
            identify("tr-1", 6, points="lots", tags=["b", "d"], vip="yes", sizes=["M"]),
            identify("tr-1", 4, city="Ostrava", nick="Ally"),  # arrives late, dated earlier
            identify("tr-1", 7, vip=1, born="next week", sizes="L"),  # refusals replace earlier refusals
        ],
    )
    process(engine)
    pid = profile_of(engine, "email", "tr1@example.com")
    assert pid is not None
    v = view(engine, pid)
    t = v["traits"]
    assert t["nick"] == "Al"  # first by event time: the late "Ally" (day 4) is not earlier than day 3
    assert t["city"] == "Praha"  # last by event time: the late Ostrava (day 4) is older than Praha (day 5)
    assert t["best_score"] == 10  # max
    assert t["points"] == 8  # sum; "lots" refused
    assert t["tags"] == ["a", "b", "c", "d"]  # union, in first-seen order, no duplicates
    assert t["vip"] is True and t["born"] == "1990-04-01" and t["sizes"] == ["M"]
    assert not any(k.startswith("$") for k in t)
    rejected = v["trait_rejections"]
    assert set(rejected) == {"points", "vip", "born", "sizes"}
    assert {k: (r["value"], r["expected"]) for k, r in rejected.items()} == {
        "points": ("lots", "integer"),
        "vip": (1, "boolean"),  # no coercion: 1 is not a boolean
        "born": ("next week", "datetime"),
        "sizes": ("L", "list"),
    }
    assert rejected["vip"]["at"] == at(7) and rejected["points"]["at"] == at(6)
    with db.read(engine) as conn:
        kinds = dict(conn.execute(sa.text("SELECT id, type FROM events")).all())
    assert all(kinds[r["event_id"]] == "identify" for r in rejected.values())

    # a second member, then a merge: strategies combine across members as they do within one
    append(
        engine,
        pos,
        "store",
        [
            identify("tr-2", 2, loyalty_card="LC7700112233", nick="Zed", best_score=12, points=4, tags=["z", "a"]),
            identify("tr-3", 8, email="tr1@example.com", loyalty_card="LC7700112233"),
        ],
    )
    process(engine)
    assert profile_of(engine, "loyalty_card", "LC7700112233") == pid
    t = view(engine, pid)["traits"]
    assert (t["nick"], t["best_score"], t["points"]) == ("Zed", 12, 12)
    assert sorted(t["tags"]) == ["a", "b", "c", "d", "z"]
    assert set(view(engine, pid)["trait_rejections"]) == {"points", "vip", "born", "sizes"}


def test_computed_traits_and_lifecycle_in_the_360_view(mod_engine: sa.Engine) -> None:
    engine = mod_engine
    web = source(engine, "web", "web", trusted=False)
    pos = source(engine, "pos", "store", trusted=True)
    u = "ct-user"

    def track(event: str, day: int, hour: int = 12, **props: Any) -> dict[str, Any]:
        return {"type": "track", "userId": u, "event": event, "properties": props, "timestamp": ts(day, hour)}

    append(
        engine,
        web,
        "web",
        [
            {"type": "page", "anonymousId": "ct-anon", "name": "Home", "timestamp": ts(2, 9)},
            {"type": "identify", "anonymousId": "ct-anon", "userId": u, "timestamp": ts(2, 10)},
            track("Product Viewed", 2, 11),
        ],
    )
    append(
        engine,
        pos,
        "store",
        [
            track("Order Completed", 3, order_id="CT-1", revenue=100.0, currency="CZK", store_id="st-1"),
            track("Survey Responded", 3, 14, survey_type="nps", score=7),
            track("Order Completed", 5, order_id="CT-2", revenue=300.0, currency="CZK", store_id="st-1"),
            track("Survey Responded", 5, 14, survey_type="csat", score=4),
        ],
    )
    process(engine)
    pid = profile_of(engine, "user_id", u)
    assert pid is not None
    c = view(engine, pid)["computed"]
    assert (c["first_seen"], c["last_seen"]) == (at(2, 9), at(5, 14))
    assert c["preferred_channel"] == "store" and c["channels"] == ["store", "web"]  # 4 store events, 3 web
    assert (c["order_count"], c["lifetime_revenue"], c["average_order_value"]) == (2, 400.0, 200.0)
    assert c["last_order"] == {"order_id": "CT-2", "at": at(5)}
    assert c["nps_last"] == {"score": 7, "at": at(3, 14)} and c["csat_last"] == {"score": 4, "at": at(5, 14)}
    assert c["lifecycle_stage"] == "retention"  # a second order; an NPS of 7 is no advocacy

    # NPS 10 makes an advocate; a late, older survey does not replace the latest score
    append(
        engine,
        web,
        "web",
        [
            track("Survey Responded", 6, survey_type="nps", score=10),
            track("Survey Responded", 4, survey_type="nps", score=2),
            track("Survey Responded", 4, survey_type="csat", score=5),
            track("Product Viewed", 6, 13),
            track("Product Viewed", 6, 14),
        ],
    )
    process(engine)
    c = view(engine, pid)["computed"]
    assert c["nps_last"] == {"score": 10, "at": at(6)} and c["csat_last"] == {"score": 4, "at": at(5, 14)}
    assert c["lifecycle_stage"] == "advocacy"
    assert c["last_seen"] == at(6, 14) and c["first_seen"] == at(2, 9)
    assert c["preferred_channel"] == "web"  # now 8 web events against 4 in the store
    assert c["last_order"] == {"order_id": "CT-2", "at": at(5)} and c["average_order_value"] == 200.0


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"trait_types": {"points": "float"}}, "points"),
        ({"trait_strategies": {"points": "sum"}, "trait_types": {"points": "string"}}, "cannot use strategy sum"),
        ({"trait_strategies": {"tags": "union"}, "trait_types": {"tags": "boolean"}}, None),
        ({"trait_strategies": {"seen": "max"}, "trait_types": {"seen": "list"}}, "cannot use strategy max"),
        ({"trait_types": {"$rejected:x": "string"}}, "reserved"),
        ({"trait_typez": {}}, "trait_typez"),
    ],
)
def test_profile_config_types_are_checked(config: dict[str, Any], message: str | None) -> None:
    data = {"lifecycle": {"awareness": ["*"]}, **config}
    if message is None:
        ProfileConfig.model_validate(data)
        return
    with pytest.raises(ValidationError, match=re.escape(message)):
        ProfileConfig.model_validate(data)


def test_a_broken_profile_config_stops_start_up(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bad = tmp_path / "profile.yaml"
    bad.write_text("lifecycle: {awareness: ['*']}\ntrait_types: {points: integr}\n")
    monkeypatch.setenv("OMNIJOURNEY_PROFILE_CONFIG", str(bad))
    settings = Settings(data_dir=tmp_path, database_url=f"sqlite:///{tmp_path / 'x.db'}", limits=IngestLimits())
    with pytest.raises(ValidationError, match=re.escape("trait_types.points")):
        create_app(settings, migrate_db=False)
