"""Incremental identity resolution for one batch of events, in log order.

The batch's identifiers are loaded in a few set-based queries, resolution runs in memory
event by event (so later events in the batch see earlier links and merges), and every
change is written back in bulk. The rules, in order, for one event:

1. Its identifiers, normalised and junk-free, are taken highest priority first.
2. Unknown identifiers before the first known one wait; the first known identifier's
   cluster becomes the target if the waiting ones may join it (veto, limit), else the
   waiting ones start a new profile which becomes the target (the shared tablet: a second
   user id on a device gets its own profile).
3. Each further identifier either joins the target (if veto and limits allow), is already
   in it, or belongs to another cluster, which merges into the target when blocks, trust,
   veto and limits allow. The oldest profile survives. A refused link or merge is recorded
   as a conflict; a refused `follows_latest` identifier (anonymous or device id) moves to
   the target instead, so the device's later events follow the person now using it.
4. The event belongs to the member that owns its highest-priority identifier.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from omnijourney.identity import graph_sql
from omnijourney.identity.models import (
    IdentityBlock,
    IdentityConflict,
    IdentityLink,
    IdentityMerge,
    Profile,
    ProfileEvent,
)
from omnijourney.identity.normalise import extract_identifiers
from omnijourney.identity.rules import IdentityRules
from omnijourney.store import dialect
from omnijourney.store.base import utcnow

PROFILES = Profile.__table__
LINKS = IdentityLink.__table__
MERGES = IdentityMerge.__table__
CONFLICTS = IdentityConflict.__table__
BLOCKS = IdentityBlock.__table__
PROFILE_EVENTS = ProfileEvent.__table__

Key = tuple[str, str]

_MOVE_LINK = (
    sa.update(LINKS)
    .where(LINKS.c.id_type == sa.bindparam("t"), LINKS.c.value == sa.bindparam("v"))
    .values(profile_id=sa.bindparam("owner"))
)


@dataclass(slots=True)
class _Link:
    owner: int
    linked_at: datetime
    new: bool = False
    moved: bool = False
    event_id: int = 0
    source_id: int = 0


@dataclass
class GraphState:
    """The part of the identity graph one batch touches, plus the changes it made."""

    rules: IdentityRules
    trusted_sources: frozenset[int]
    links: dict[Key, _Link] = field(default_factory=dict)
    parent: dict[int, int | None] = field(default_factory=dict)
    root: dict[int, int] = field(default_factory=dict)
    members: dict[int, set[int]] = field(default_factory=dict)
    owned: dict[int, set[Key]] = field(default_factory=lambda: defaultdict(set))
    blocks: set[tuple[int, int]] = field(default_factory=set)
    new_profiles: list[dict[str, Any]] = field(default_factory=list)
    new_merges: list[dict[str, Any]] = field(default_factory=list)
    conflicts: list[dict[str, Any]] = field(default_factory=list)
    profile_events: list[dict[str, Any]] = field(default_factory=list)
    #: event id -> member profile id it belongs to
    event_member: dict[int, int] = field(default_factory=dict)
    #: members whose root changed in this batch
    reparented: set[int] = field(default_factory=set)
    touched_roots: set[int] = field(default_factory=set)
    #: links created (in creation order) and existing links moved to another member in this batch
    new_keys: list[Key] = field(default_factory=list)
    moved_keys: list[Key] = field(default_factory=list)
    #: the state holds the whole graph (built from empty by a rebuild): nothing to load
    complete: bool = False

    # ---- loading -------------------------------------------------------------------------
    def load(self, conn: Connection, keys: Iterable[Key]) -> None:
        """Load the stored links among `keys` and the whole clusters they belong to.

        Invariant (what makes a state reusable across batches): for every cluster in memory,
        all its members, their links and their blocks are in memory too. A `complete` state
        holds the whole graph, so there is nothing to load.
        """
        if self.complete:
            return
        sql = graph_sql.reader(conn)
        when = graph_sql.utc_reader()
        links, root = self.links, self.root
        by_type: dict[str, set[str]] = defaultdict(set)
        for key in keys:
            if key not in links:
                by_type[key[0]].add(key[1])
        roots: set[int] = set()
        loaded: list[Key] = []
        for t, values in by_type.items():
            for value, pid, at, canonical in sql.links_by_values(conn, t, values):
                key = (t, value)
                links[key] = _Link(pid, when(at))
                loaded.append(key)
                if pid not in root:
                    roots.add(canonical)
        self._load_clusters(conn, [r for r in roots if r not in self.members])
        # links loaded by value whose cluster was already in memory (not the case while the
        # invariant holds, kept for safety)
        for key in loaded:
            owner = links[key].owner
            if owner in root:
                self.owned[owner].add(key)

    def _load_clusters(self, conn: Connection, roots: list[int]) -> None:
        if not roots:
            return
        sql = graph_sql.reader(conn)
        when = graph_sql.utc_reader()
        new_members: list[int] = []
        for pid, parent, canonical in sql.members(conn, roots):
            self.parent[pid] = parent
            self.root[pid] = canonical
            self.members.setdefault(canonical, set()).add(pid)
            new_members.append(pid)
        if not new_members:
            return
        links, owned = self.links, self.owned
        for t, value, pid, at in sql.links_of(conn, new_members):
            key = (t, value)
            if key not in links:
                links[key] = _Link(pid, when(at))
            owned[pid].add(key)
        for a, b in sql.blocks_of(conn, new_members):
            self.blocks.add((a, b))
            self.blocks.add((b, a))

    def next_batch(self, trusted_sources: frozenset[int]) -> None:
        """Forget the previous batch's changes (already written) before resolving another one."""
        self.trusted_sources = trusted_sources
        self.new_profiles = []
        self.new_merges = []
        self.conflicts = []
        self.profile_events = []
        self.event_member = {}
        self.reparented = set()
        self.touched_roots = set()
        self.new_keys = []
        self.moved_keys = []

    # ---- queries on the in-memory graph ----------------------------------------------------
    def cluster_keys(self, root: int) -> list[Key]:
        return [k for m in self.members[root] for k in self.owned.get(m, ())]

    def count_type(self, root: int, id_type: str, at: datetime, extra: Iterable[Key] = ()) -> int:
        spec = self.rules.identifier_types.get(id_type)
        window = timedelta(days=spec.window_days) if spec and spec.window_days else None
        n = 0
        for t, v in [*self.cluster_keys(root), *extra]:
            if t != id_type:
                continue
            if window is not None:
                link = self.links.get((t, v))
                if link is not None and link.linked_at < at - window:
                    continue
            n += 1
        return n

    def identified(self, root: int) -> bool:
        types = self.rules.identifier_types
        return any(types[t].identifying for t, _ in self.cluster_keys(root) if t in types)

    def attach_refusal(self, root: int, key: Key, at: datetime) -> str | None:
        id_type, value = key
        spec = self.rules.identifier_types[id_type]
        if spec.veto and any(t == id_type and v != value for t, v in self.cluster_keys(root)):
            return "veto"
        if self.count_type(root, id_type, at) + 1 > spec.limit:
            return "limit"
        return None

    def merge_refusal(self, a: int, b: int, at: datetime, trusted: bool) -> str | None:
        ma, mb = self.members[a], self.members[b]
        if any((x, y) in self.blocks for x in ma for y in mb):
            return "unmerged"
        keys_a, keys_b = self.cluster_keys(a), self.cluster_keys(b)
        for id_type, spec in self.rules.identifier_types.items():
            if spec.veto and len({v for t, v in keys_a + keys_b if t == id_type}) > 1:
                return "veto"
        for id_type, spec in self.rules.identifier_types.items():
            if self.count_type(a, id_type, at, extra=keys_b) > spec.limit:
                return "limit"
        if not trusted and self.rules.merge_trust == "trusted_only" and self.identified(a) and self.identified(b):
            return "untrusted"
        return None

    # ---- changes ---------------------------------------------------------------------------
    def new_profile(self, pid: int, at: datetime) -> int:
        self.parent[pid] = None
        self.root[pid] = pid
        self.members[pid] = {pid}
        self.new_profiles.append({"id": pid, "created_at": at, "merged_into": None, "canonical_id": pid})
        return pid

    def attach(self, key: Key, member: int, at: datetime, event: Any) -> None:
        self.links[key] = _Link(member, at, new=True, event_id=event.id, source_id=event.source_id)
        self.owned[member].add(key)
        self.new_keys.append(key)

    def move(self, key: Key, member: int, event: Any, reason_other: int) -> None:
        link = self.links[key]
        old = link.owner
        self.owned[old].discard(key)
        link.owner = member
        if not link.new and not link.moved:
            self.moved_keys.append(key)
        link.moved = True
        self.owned[member].add(key)
        self.conflict(
            "moved",
            key,
            self.root[member],
            reason_other,
            event,
            f"{key[0]} follows the latest identified person on the device (from profile {old})",
        )

    def merge(self, a: int, b: int, key: Key, event: Any) -> int:
        survivor, loser = (a, b) if a < b else (b, a)  # ids are log positions: smaller is older
        self.parent[loser] = survivor
        for m in self.members.pop(loser):
            self.root[m] = survivor
            self.members[survivor].add(m)
            self.reparented.add(m)
        self.reparented.add(loser)
        self.new_merges.append(
            {
                "survivor_id": survivor,
                "merged_id": loser,
                "id_type": key[0],
                "value": key[1],
                "event_id": event.id,
                "source_id": event.source_id,
                "merged_at": event.timestamp,
            }
        )
        return survivor

    def conflict(self, kind: str, key: Key, profile: int, other: int | None, event: Any, detail: str) -> None:
        self.conflicts.append(
            {
                "kind": kind,
                "id_type": key[0],
                "value": key[1],
                "profile_id": profile,
                "other_profile_id": other,
                "event_id": event.id,
                "source_id": event.source_id,
                "detail": detail[:500],
                "created_at": utcnow(),
            }
        )

    # ---- one event -----------------------------------------------------------------------
    def resolve(self, event: Any, keys: list[Key]) -> int | None:
        """The member the event belongs to; None when it carries no usable identifier (all junk)."""
        if not keys:
            return None
        at: datetime = event.timestamp
        trusted = event.source_id in self.trusted_sources
        target: int | None = None
        waiting: list[Key] = []
        for key in keys:
            link = self.links.get(key)
            owner_root = self.root[link.owner] if link is not None else None
            if target is None:
                if owner_root is None:
                    waiting.append(key)
                    continue
                refusals = [(k, self.attach_refusal(owner_root, k, at)) for k in waiting]
                if all(r is None for _, r in refusals):
                    target = owner_root
                    anchor = link.owner
                    for k in waiting:
                        self.attach(k, anchor, at, event)
                    waiting = []
                    continue
                target = self.new_profile(event.id, at)
                for k in waiting:
                    self.attach(k, target, at, event)
                waiting = []
                # fall through: the known identifier's cluster is a merge candidate
            if owner_root is None:
                refusal = self.attach_refusal(target, key, at)
                if refusal is None:
                    self.attach(key, self._anchor(target, keys), at, event)
                else:
                    self.conflict(refusal, key, target, None, event, f"{key[0]} not linked: {refusal}")
            elif owner_root != target:
                refusal = self.merge_refusal(target, owner_root, at, trusted)
                if refusal is None:
                    target = self.merge(target, owner_root, key, event)
                elif self.rules.identifier_types[key[0]].follows_latest and refusal in ("veto", "limit"):
                    self.conflict(refusal, key, target, owner_root, event, f"merge refused: {refusal}")
                    self.move(key, self._anchor(target, keys), event, owner_root)
                else:
                    self.conflict(refusal, key, target, owner_root, event, f"merge refused: {refusal}")
        if target is None:
            target = self.new_profile(event.id, at)
            for k in waiting:
                self.attach(k, target, at, event)
        member = self._anchor(target, keys)
        self.event_member[event.id] = member
        self.touched_roots.add(self.root[member])
        return member

    def _anchor(self, root: int, keys: Sequence[Key]) -> int:
        """The member of `root` owning the event's highest-priority identifier (or the root)."""
        for key in keys:
            link = self.links.get(key)
            if link is not None and self.root.get(link.owner) == root:
                return link.owner
        return root

    # ---- writing back ----------------------------------------------------------------------
    def flush(self, conn: Connection, events_by_id: dict[int, Any]) -> None:
        if self.new_profiles:
            when = dialect.datetime_binder(conn)
            parent, root = self.parent, self.root
            graph_sql.insert_rows(
                conn,
                "profiles",
                ["id", "created_at", "merged_into", "canonical_id"],
                [(p["id"], when(p["created_at"]), parent[p["id"]], root[p["id"]]) for p in self.new_profiles],
            )
        created = {p["id"] for p in self.new_profiles}
        updates = [
            {"pid": m, "parent": self.parent[m], "canonical": self.root[m]} for m in self.reparented if m not in created
        ]
        if updates:
            conn.execute(
                sa.update(PROFILES)
                .where(PROFILES.c.id == sa.bindparam("pid"))
                .values(merged_into=sa.bindparam("parent"), canonical_id=sa.bindparam("canonical")),
                updates,
            )
        links = self.links
        if self.new_keys:
            when = dialect.datetime_binder(conn)
            cols = ["id_type", "value", "profile_id", "linked_at", "event_id", "source_id"]
            rows = []
            for key in self.new_keys:
                link = links[key]
                rows.append((key[0], key[1], link.owner, when(link.linked_at), link.event_id, link.source_id))
            dialect.insert_rows_ignoring_conflicts(conn, LINKS, cols, rows, ["id_type", "value"])
        moved = [{"t": t, "v": v, "owner": links[(t, v)].owner} for t, v in self.moved_keys]
        if moved:
            conn.execute(_MOVE_LINK, moved)
        for key in self.new_keys:
            links[key].new = links[key].moved = False
        for key in self.moved_keys:
            links[key].moved = False
        if self.new_merges:
            conn.execute(sa.insert(MERGES), self.new_merges)
        if self.conflicts:
            conn.execute(sa.insert(CONFLICTS), self.conflicts)
        if self.event_member:
            when = dialect.datetime_binder(conn)
            rows = [
                (eid, member, when(events_by_id[eid].timestamp), events_by_id[eid].channel, events_by_id[eid].event)
                for eid, member in self.event_member.items()
            ]
            cols = ["event_id", "profile_id", "timestamp", "channel", "event"]
            dialect.insert_rows_ignoring_conflicts(conn, PROFILE_EVENTS, cols, rows, ["event_id"])


def load_trusted_sources(conn: Connection) -> frozenset[int]:
    from omnijourney.access.models import Source

    src = Source.__table__
    return frozenset(r[0] for r in conn.execute(sa.select(src.c.id).where(src.c.trusted)))


def resolve_batch(
    conn: Connection, events: Sequence[Any], rules: IdentityRules, state: GraphState | None = None
) -> GraphState:
    """Resolve a batch in log order; returns the state (event -> member) after writing it back.

    `state` is a graph kept from the previous batch (a rebuild keeps it in memory across its
    steps); the caller vouches that nothing else has written the graph since.
    """
    trusted = load_trusted_sources(conn)
    if state is None:
        state = GraphState(rules=rules, trusted_sources=trusted)
    else:
        state.next_batch(trusted)
    extracted: list[list[Key]] = []
    for e in events:
        payload = e.payload if isinstance(e.payload, dict) else {}
        extracted.append(extract_identifiers(payload, rules))
    state.load(conn, (k for keys in extracted for k in keys))
    for e, keys in zip(events, extracted, strict=True):
        state.resolve(e, keys)
    state.flush(conn, {e.id: e for e in events})
    return state
