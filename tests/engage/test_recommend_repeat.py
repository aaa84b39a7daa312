"""Buy again: a consumable the customer restocks comes back (every channel, store stock permitting),
a bought non-consumable does not, and the weight 0 turns the signal off."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from omnijourney.engage import recommend
from omnijourney.store import db
from tests.commerce.helpers import set_stock
from tests.engage.test_recommend import CONFIG, buy, reco, seed
from tests.identity.helpers import append, process, profile_of, source

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def _p(sku: str, order: int, days: float) -> recommend.Purchase:
    return recommend.Purchase(profile=1, sku=sku, order=order, at=T0 + timedelta(days=days))


def test_repeat_shares_weigh_orders_by_recency_relative_to_the_latest() -> None:
    history = [_p("A", 1, 0), _p("B", 1, 0), _p("A", 2, 60), _p("A", 3, 120), _p("C", 3, 120), _p("C", 3, 120)]
    shares = recommend.repeat_shares(history, half_life_days=60)
    # order weights 0.25, 0.5, 1 (latest): A in all, B only in the oldest, C once (two lines, one order)
    assert shares == pytest.approx({"A": 1.0, "B": 0.25 / 1.75, "C": 1.0 / 1.75})
    shifted = [recommend.Purchase(p.profile, p.sku, p.order, p.at + timedelta(days=400)) for p in history]
    assert recommend.repeat_shares(shifted, half_life_days=60) == pytest.approx(shares)  # no dependence on now
    assert recommend.repeat_shares([], half_life_days=60) == {}


def test_restocked_consumable_is_recommended_again_non_consumable_is_not(engine: sa.Engine) -> None:
    seed(engine)  # SOCK-1 consumable; SHOE-42 (with accessories SPRAY-1 and SOCK-1) is not
    web = source(engine, "web", "web", False)
    append(
        engine,
        web,
        "web",
        [
            buy("u-r", "r-1", ["SHOE-42", "SOCK-1"], days_ago=60),
            buy("u-r", "r-2", ["SOCK-1"], days_ago=30),
            buy("u-r", "r-3", ["SOCK-1", "CAP-1"], days_ago=5),
        ],
    )
    process(engine)
    pid = profile_of(engine, "user_id", "u-r")
    assert pid is not None
    for context in ("email", "web"):
        items = reco(engine, pid, context=context)["items"]
        skus = [i["sku"] for i in items]
        assert skus[0] == "SOCK-1", context
        assert items[0]["score"] == pytest.approx(CONFIG.buy_again * 1.0 + CONFIG.accessory_of_bought)
        assert items[0]["reason"] == {"kind": "buy_again", "because_sku": "SOCK-1", "text": "buy Merino socks again"}
        # bought and not consumable: neither the shoe (any variant) nor the cap comes back
        assert not {"SHOE-42", "SHOE-43", "CAP-1"} & set(skus)

    # the weight 0 turns buy again off: the sock is only SHOE-42's accessory again, tied with the spray
    off = CONFIG.model_copy(update={"buy_again": 0.0})
    with db.read(engine) as conn:
        items = recommend.recommend(conn=conn, profile_id=pid, context="email", store=None, limit=10, config=off)[
            "items"
        ]
    assert all(i["reason"]["kind"] != "buy_again" for i in items)
    scores = {i["sku"]: i["score"] for i in items}
    assert scores["SOCK-1"] == scores["SPRAY-1"] == CONFIG.accessory_of_bought

    # in the store, buy again still only offers what that store can sell now
    set_stock(engine, "SOCK-1", "store-praha-1", 0)
    set_stock(engine, "SPRAY-1", "store-praha-1", 2)
    in_store = [i["sku"] for i in reco(engine, pid, context="store", store="store-praha-1")["items"]]
    assert "SOCK-1" not in in_store and "SPRAY-1" in in_store
    set_stock(engine, "SOCK-1", "store-praha-1", 3)
    assert reco(engine, pid, context="store", store="store-praha-1")["items"][0]["sku"] == "SOCK-1"


def test_one_order_shortcut_matches_the_vectorised_shares() -> None:
    # most profiles have a single order: every SKU of it is in all of the profile's orders
    one = [_p("B", 7, 3), _p("A", 7, 3), _p("B", 7, 3)]
    assert recommend.repeat_shares(one, half_life_days=60) == {"A": 1.0, "B": 1.0}
    assert list(recommend.repeat_shares(one, half_life_days=60)) == ["A", "B"]  # SKU order, as NumPy's unique
    # the same basket twice, as two orders: the vectorised path gives the same shares
    two = [*one, _p("A", 8, 3), _p("B", 8, 3)]
    assert recommend.repeat_shares(two, half_life_days=60) == {"A": 1.0, "B": 1.0}
