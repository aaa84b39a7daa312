"""The store's pickup board: which open click & collect orders are due today, which are overdue, which later.

Orders carry no pickup date, so an order is promised for `placed_at` plus the store's preparation time
(`CommerceConfig.pickup`). Due today: every order ready for pickup (it waits for the customer now) and every
order promised before the end of today in the configured time zone. Overdue: promised before now and still
not ready. A pure function over `commerce.pickups_at` rows, so the clock is the caller's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from omnijourney.commerce.config import PickupRules


@dataclass
class PickupBoard:
    #: overdue first, then by promised time
    due: list[dict[str, Any]] = field(default_factory=list)
    #: by promised time
    later: list[dict[str, Any]] = field(default_factory=list)

    @property
    def overdue(self) -> int:
        return sum(1 for o in self.due if o["overdue"])


def end_of_day(now: datetime, timezone: str) -> datetime:
    """The end of `now`'s calendar day in `timezone` (the next local midnight, DST-aware)."""
    tz = ZoneInfo(timezone)
    tomorrow = now.astimezone(tz).date() + timedelta(days=1)
    return datetime.combine(tomorrow, time(), tzinfo=tz)


def pickup_board(orders: list[dict[str, Any]], *, now: datetime, rules: PickupRules) -> PickupBoard:
    """Split open pickups into due today and later; each order gains `promised_at` and `overdue`."""
    deadline = end_of_day(now, rules.timezone)
    board = PickupBoard()
    for order in orders:
        promised = order["placed_at"] + rules.preparation(order.get("pickup_location"))
        ready = order["status"] == "ready_for_pickup"
        row = {**order, "promised_at": promised, "overdue": not ready and promised < now}
        (board.due if ready or promised < deadline else board.later).append(row)
    board.due.sort(key=lambda o: (not o["overdue"], o["promised_at"], o["order_ref"]))
    board.later.sort(key=lambda o: (o["promised_at"], o["order_ref"]))
    return board
