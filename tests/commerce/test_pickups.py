"""The store's pickup board (commerce/pickups.py): due today, overdue and later, with an injected clock."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydantic import ValidationError

from omnijourney.commerce.config import CommerceConfig, PickupRules, load_commerce_config
from omnijourney.commerce.pickups import end_of_day, pickup_board

NOW = datetime(2026, 3, 10, 15, 0, tzinfo=UTC)


def order(ref: str, placed: datetime, status: str = "placed", store: str = "store-praha-1") -> dict[str, Any]:
    return {"order_ref": ref, "placed_at": placed, "status": status, "pickup_location": store}


def test_due_today_overdue_first_then_later() -> None:
    rules = PickupRules(preparation_hours=2)
    orders = [
        order("late-tonight", NOW.replace(hour=22, minute=30)),  # promised 00:30 tomorrow: later
        order("this-evening", NOW.replace(hour=14)),  # promised 16:00 today: due, not yet overdue
        order("yesterday", NOW - timedelta(days=1)),  # promised yesterday 17:00: overdue
        order("ready", NOW - timedelta(days=3), status="ready_for_pickup"),  # waits for the customer
        order("just-overdue", NOW.replace(hour=12, minute=59)),  # promised 14:59: overdue
        order("at-midnight", NOW.replace(hour=22)),  # promised 00:00 tomorrow exactly: later
    ]
    board = pickup_board(orders, now=NOW, rules=rules)
    assert [o["order_ref"] for o in board.due] == ["yesterday", "just-overdue", "ready", "this-evening"]
    assert [o["order_ref"] for o in board.due if o["overdue"]] == ["yesterday", "just-overdue"]
    assert board.overdue == 2
    assert [o["order_ref"] for o in board.later] == ["at-midnight", "late-tonight"]
    assert not any(o["overdue"] for o in board.later)
    assert board.due[-1]["promised_at"] == NOW.replace(hour=16)
    assert "promised_at" not in orders[0]  # the caller's rows are not changed


def test_the_store_preparation_time_and_the_time_zone_decide() -> None:
    rules = PickupRules(preparation_hours=2, by_store={"store-ostrava": 30}, timezone="Europe/Prague")
    placed = NOW - timedelta(hours=1)
    board = pickup_board(
        [order("praha", placed), order("ostrava", placed, store="store-ostrava")], now=NOW, rules=rules
    )
    assert [o["order_ref"] for o in board.due] == ["praha"] and [o["order_ref"] for o in board.later] == ["ostrava"]
    # 23:30 UTC on the 10th is already the 11th in Prague: an order promised at 23:45 UTC is due "today" there
    late = datetime(2026, 3, 10, 23, 30, tzinfo=UTC)
    assert end_of_day(late, "Europe/Prague") == datetime(2026, 3, 11, 23, 0, tzinfo=UTC)
    assert end_of_day(late, "UTC") == datetime(2026, 3, 11, 0, 0, tzinfo=UTC)
    soon = order("soon", late - timedelta(hours=1, minutes=45))
    assert pickup_board([soon], now=late, rules=rules).due
    assert pickup_board([soon], now=late, rules=PickupRules(preparation_hours=2.5)).later


def test_pickup_rules_are_validated_and_shipped_in_the_default_config() -> None:
    with pytest.raises(ValidationError, match="IANA"):
        PickupRules(timezone="Mars/Olympus")
    with pytest.raises(ValidationError, match="between 0 and 720"):
        PickupRules(by_store={"store-x": -1})
    with pytest.raises(ValidationError):
        CommerceConfig.model_validate({"pickup": {"prep": 2}})
    shipped = load_commerce_config().pickup
    assert shipped.preparation(None) == timedelta(hours=2) and shipped.timezone == "UTC"
