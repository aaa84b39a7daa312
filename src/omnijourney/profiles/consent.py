"""The current consent view of a cluster, replayed from its members' ledgers and its merges.

The ledger is append-only and per member (never copied on merge, so an unmerge is exact). The
current view is what the ledger says *as of now*, with merges taken into account at the moment
they happened: when two groups of members merge, each purpose x channel takes the most
restrictive of the two groups' current values (a denial on one side is never lost to a merge);
any record made after that merge, on any member, supersedes it (the customer's latest word wins,
so a later grant becomes current). Only merges still in force between members of the cluster
count: after an unmerge each side replays its own records and its own merges.

Order is event time, then log position: a merge happens at its bridging event (`merged_at`,
`event_id`); a record from an event at its event time and position (after a merge made by the
same event); a record made through the API (no event) at its recording time, after any event of
that same instant.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

#: most restrictive first: a denial or withdrawal on either side of a merge beats a grant
CONSENT_RESTRICTIVENESS = {"withdrawn": 2, "denied": 1, "granted": 0}
_AFTER_EVENTS = 2**63


def _more_restrictive(a: Any, b: Any) -> Any:
    """The more restrictive of two records (on a tie, the later one: its time and evidence show)."""
    ra, rb = CONSENT_RESTRICTIVENESS[a.status], CONSENT_RESTRICTIVENESS[b.status]
    if ra != rb:
        return a if ra > rb else b
    return a if (a.recorded_at, a.id) >= (b.recorded_at, b.id) else b


def current_records(
    records: Iterable[Any], merges: Iterable[Mapping[str, Any]], member_ids: Iterable[int]
) -> dict[tuple[str, str], Any]:
    """(purpose, channel) -> the record that is current for the cluster of `member_ids`.

    `records` are consent_records rows (attributes id, profile_id, purpose, channel, status,
    recorded_at, event_id); `merges` identity_merges rows as mappings (any may be listed: only those
    in force between two of `member_ids` are used)."""
    members = set(member_ids)
    steps: list[tuple[datetime, int, int, int, Any]] = []
    for m in merges:
        if m["unmerged_at"] is None and m["survivor_id"] in members and m["merged_id"] in members:
            steps.append((m["merged_at"], m["event_id"], 0, m["id"], m))
    for r in records:
        if r.profile_id in members:
            steps.append((r.recorded_at, _AFTER_EVENTS if r.event_id is None else r.event_id, 1, r.id, r))
    steps.sort(key=lambda s: s[:4])

    parent: dict[int, int] = {m: m for m in members}
    state: dict[int, dict[tuple[str, str], Any]] = {m: {} for m in members}

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    def join(a: int, b: int) -> None:
        ra, rb = find(a), find(b)
        if ra == rb:
            return
        into, other = state[ra], state.pop(rb)
        for key, rec in other.items():
            have = into.get(key)
            into[key] = rec if have is None else _more_restrictive(have, rec)
        parent[rb] = ra

    for _, _, kind, _, item in steps:
        if kind == 0:
            join(item["survivor_id"], item["merged_id"])
        else:
            state[find(item.profile_id)][(item.purpose, item.channel)] = item
    # members joined by no recorded merge (not expected) still combine, most restrictive first
    first = min(members, default=None)
    for m in members:
        join(first, m)  # type: ignore[arg-type]
    return state[find(first)] if first is not None else {}
