"""The consent view's replay (profiles/consent.py) on hand-made ledgers and merges: nested merges,
ties between a merge and a record, merges no longer in force."""

from __future__ import annotations

from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

from omnijourney.profiles.consent import current_records

KEY = ("marketing", "email")
_ids = iter(range(1, 10_000))


def t(hour: int) -> datetime:
    return datetime(2026, 11, 1, hour, tzinfo=UTC)


def rec(pid: int, status: str, hour: int, event_id: int | None) -> SimpleNamespace:
    return SimpleNamespace(
        id=next(_ids),
        profile_id=pid,
        purpose=KEY[0],
        channel=KEY[1],
        status=status,
        recorded_at=t(hour),
        event_id=event_id,
    )


def merge(survivor: int, merged: int, hour: int, event_id: int, unmerged: bool = False) -> dict[str, Any]:
    return {
        "id": next(_ids),
        "survivor_id": survivor,
        "merged_id": merged,
        "merged_at": t(hour),
        "event_id": event_id,
        "unmerged_at": t(23) if unmerged else None,
    }


def status(records: list[Any], merges: list[dict[str, Any]], members: list[int]) -> str | None:
    found = current_records(records, merges, members).get(KEY)
    return found.status if found else None


def test_nested_merges_take_the_most_restrictive_then_later_records_win() -> None:
    a, b, c = 10, 20, 30
    records = [rec(a, "denied", 1, 11), rec(b, "granted", 2, 21), rec(c, "granted", 4, 31)]
    merges = [merge(a, b, 3, 40), merge(a, c, 5, 50)]
    assert status(records, merges, [a, b, c]) == "denied"  # the denial survives both merges
    assert status([*records, rec(b, "granted", 6, 60)], merges, [a, b, c]) == "granted"
    # a record dated between the two merges on C (still apart from A and B) is folded in at the second merge
    assert status([*records, rec(c, "withdrawn", 4, 70)], merges, [a, b, c]) == "withdrawn"
    # on B, after the first merge: supersedes A's denial for A+B, then C's grant is less restrictive
    assert status([*records, rec(b, "granted", 4, 70)], merges, [a, b, c]) == "granted"


def test_ties_a_record_of_the_bridging_event_or_the_api_comes_after_the_merge() -> None:
    a, b = 10, 20
    base = [rec(a, "denied", 1, 11), rec(b, "granted", 2, 21)]
    merges = [merge(a, b, 3, 30)]
    assert status([*base, rec(b, "granted", 3, 30)], merges, [a, b]) == "granted"  # same event as the merge
    assert status([*base, rec(b, "granted", 3, 29)], merges, [a, b]) == "denied"  # an earlier event, same time
    assert status([*base, rec(a, "granted", 3, None)], merges, [a, b]) == "granted"  # the API, same instant


def test_only_merges_in_force_between_the_members_count() -> None:
    a, b = 10, 20
    records = [rec(a, "denied", 1, 11), rec(b, "granted", 2, 21), rec(b, "granted", 5, 51)]
    undone = [merge(a, b, 3, 30, unmerged=True)]
    assert status(records, undone, [a]) == "denied"
    assert status(records, undone, [b]) == "granted"
    assert status([], [], [a, b]) is None
