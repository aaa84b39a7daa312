"""Identity reads and manual changes. Plain functions; the caller owns the transaction."""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from typing import Any, NamedTuple

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from omnijourney.identity.models import (
    IdentityAction,
    IdentityBlock,
    IdentityConflict,
    IdentityLink,
    IdentityMerge,
    Profile,
    ProfileEvent,
)
from omnijourney.identity.normalise import normalise_value
from omnijourney.identity.rules import IdentityRules
from omnijourney.store import dialect
from omnijourney.store.base import utcnow

PROFILES = Profile.__table__
LINKS = IdentityLink.__table__
MERGES = IdentityMerge.__table__
CONFLICTS = IdentityConflict.__table__
ACTIONS = IdentityAction.__table__
BLOCKS = IdentityBlock.__table__
PROFILE_EVENTS = ProfileEvent.__table__


#: the internal source of identity's own events, disabled for public ingestion, and the event an
#: unmerge puts on both timelines (handlers re-derive what they computed for the merged cluster)
UNMERGE_SOURCE = "omnijourney:identity"
UNMERGED_EVENT = "Profile Unmerged"


class IdentityError(ValueError):
    """A request about identity that cannot be carried out (unknown type, nothing to unmerge, ...)."""


def _ids() -> sa.BindParameter[Any]:
    return sa.bindparam("ids", expanding=True)


# Hot read statements are built once: constructing a Core statement costs more CPU than
# SQLite takes to run it, and these run several times per Customer 360 request.
_CANONICAL = sa.select(PROFILES.c.canonical_id).where(PROFILES.c.id == sa.bindparam("pid"))
_CLUSTER = (
    sa.select(PROFILES.c.id, PROFILES.c.canonical_id)
    .where(PROFILES.c.canonical_id == _CANONICAL.scalar_subquery())
    .order_by(PROFILES.c.id)
)
_OWNER = sa.select(LINKS.c.profile_id).where(LINKS.c.id_type == sa.bindparam("t"), LINKS.c.value == sa.bindparam("v"))
_CLUSTER_OF_IDENTIFIER = (
    sa.select(PROFILES.c.id, PROFILES.c.canonical_id)
    .where(
        PROFILES.c.canonical_id
        == sa.select(PROFILES.c.canonical_id).where(PROFILES.c.id == _OWNER.scalar_subquery()).scalar_subquery()
    )
    .order_by(PROFILES.c.id)
)
_IDENTIFIERS = sa.select(LINKS).where(LINKS.c.profile_id.in_(_ids())).order_by(LINKS.c.linked_at, LINKS.c.id)
_MEMBER_IDS = _ids()
_MERGES = (
    sa.select(MERGES)
    .where(sa.or_(MERGES.c.survivor_id.in_(_MEMBER_IDS), MERGES.c.merged_id.in_(_MEMBER_IDS)))
    .order_by(MERGES.c.id)
)


class Cluster(NamedTuple):
    """A surviving profile and every member of its cluster (itself included), in id order."""

    root: int
    members: list[int]


def _as_cluster(rows: list[Any]) -> Cluster | None:
    return Cluster(rows[0][1], [r[0] for r in rows]) if rows else None


def canonical_id(*, conn: Connection, profile_id: int) -> int | None:
    """The surviving profile for any profile id (an alias answers with its survivor)."""
    return conn.execute(_CANONICAL, {"pid": profile_id}).scalar_one_or_none()


def members(*, conn: Connection, root: int) -> list[int]:
    return [
        r[0]
        for r in conn.execute(sa.select(PROFILES.c.id).where(PROFILES.c.canonical_id == root).order_by(PROFILES.c.id))
    ]


def cluster(*, conn: Connection, profile_id: int) -> Cluster | None:
    """The survivor and all members of the cluster `profile_id` belongs to, in one query."""
    return _as_cluster(conn.execute(_CLUSTER, {"pid": profile_id}).all())


def _normalised(rules: IdentityRules, id_type: str, value: str) -> str | None:
    spec = rules.identifier_types.get(id_type)
    if spec is None:
        raise IdentityError(f"unknown identifier type {id_type!r}; known: {', '.join(rules.identifier_types)}")
    return normalise_value(value, spec, rules)


def lookup_cluster(*, conn: Connection, rules: IdentityRules, id_type: str, value: str) -> Cluster | None:
    """The cluster holding an identifier (normalised as ingestion does), in one query."""
    normal = _normalised(rules, id_type, value)
    if normal is None:
        return None
    return _as_cluster(conn.execute(_CLUSTER_OF_IDENTIFIER, {"t": id_type, "v": normal}).all())


def lookup(*, conn: Connection, rules: IdentityRules, id_type: str, value: str) -> int | None:
    """Find the surviving profile holding an identifier, normalising the value as ingestion does."""
    found = lookup_cluster(conn=conn, rules=rules, id_type=id_type, value=value)
    return found.root if found else None


@lru_cache(maxsize=8)
def _clusters_of_identifiers(n: int) -> sa.CompoundSelect:
    """`_CLUSTER_OF_IDENTIFIER` for n identifiers at once: (i, member id, root) rows, one UNION ALL
    branch per identifier (each an index lookup), built once per n."""
    branches = []
    for i in range(n):
        owner = sa.select(LINKS.c.profile_id).where(
            LINKS.c.id_type == sa.bindparam(f"t{i}"), LINKS.c.value == sa.bindparam(f"v{i}")
        )
        root = sa.select(PROFILES.c.canonical_id).where(PROFILES.c.id == owner.scalar_subquery())
        branches.append(
            sa.select(sa.literal(i, sa.Integer).label("i"), PROFILES.c.id, PROFILES.c.canonical_id).where(
                PROFILES.c.canonical_id == root.scalar_subquery()
            )
        )
    return sa.union_all(*branches).order_by(sa.column("i"), sa.column("id"))


def lookup_clusters(
    *, conn: Connection, rules: IdentityRules, identifiers: Sequence[tuple[str, str]]
) -> list[Cluster | None]:
    """The cluster holding each (type, value) identifier, normalised as ingestion does, in one
    statement (what `lookup_cluster` answers for each; None where a value does not normalise or
    nobody holds it). An unknown type raises IdentityError, as `lookup_cluster` does."""
    normal = [_normalised(rules, id_type, value) for id_type, value in identifiers]
    asked = [(i, identifiers[i][0], v) for i, v in enumerate(normal) if v is not None]
    out: list[Cluster | None] = [None] * len(identifiers)
    if not asked:
        return out
    params: dict[str, Any] = {}
    for n, (_, id_type, value) in enumerate(asked):
        params[f"t{n}"], params[f"v{n}"] = id_type, value
    rows: dict[int, list[Any]] = {}
    for r in conn.execute(_clusters_of_identifiers(len(asked)), params):
        rows.setdefault(r.i, []).append((r.id, r.canonical_id))
    for n, (i, _, _) in enumerate(asked):
        out[i] = _as_cluster(rows.get(n, []))
    return out


def identifiers(*, conn: Connection, member_ids: list[int]) -> list[dict[str, Any]]:
    return [
        {
            "type": r.id_type,
            "value": r.value,
            "profile_id": r.profile_id,
            "linked_at": r.linked_at,
            "event_id": r.event_id,
            "source_id": r.source_id,
        }
        for r in conn.execute(_IDENTIFIERS, {"ids": member_ids})
    ]


def merges(*, conn: Connection, member_ids: list[int]) -> list[dict[str, Any]]:
    return [dict(r._mapping) for r in conn.execute(_MERGES, {"ids": member_ids})]


def list_conflicts(
    *,
    conn: Connection,
    kind: str | None = None,
    profile_id: int | None = None,
    limit: int = 100,
    before: int | None = None,
) -> list[dict[str, Any]]:
    stmt = sa.select(CONFLICTS).order_by(CONFLICTS.c.id.desc()).limit(limit)
    if kind:
        stmt = stmt.where(CONFLICTS.c.kind == kind)
    if profile_id is not None:
        stmt = stmt.where(sa.or_(CONFLICTS.c.profile_id == profile_id, CONFLICTS.c.other_profile_id == profile_id))
    if before is not None:
        stmt = stmt.where(CONFLICTS.c.id < before)
    return [dict(r._mapping) for r in conn.execute(stmt)]


def _subtree(conn: Connection, root: int, top: int) -> list[int]:
    """`top` and every profile merged (directly or transitively) into it, within `root`'s cluster."""
    parents = dict(
        conn.execute(sa.select(PROFILES.c.id, PROFILES.c.merged_into).where(PROFILES.c.canonical_id == root)).all()
    )
    out, frontier = [top], [top]
    while frontier:
        frontier = [pid for pid, parent in parents.items() if parent in frontier]
        out.extend(frontier)
    return out


def apply_unmerge(*, conn: Connection, survivor_id: int, merged_id: int) -> list[int]:
    """Detach `merged_id` (and what was merged into it) from `survivor_id`; returns the split-off members."""
    row = conn.execute(
        sa.select(PROFILES.c.merged_into, PROFILES.c.canonical_id).where(PROFILES.c.id == merged_id)
    ).one_or_none()
    if row is None or row.merged_into != survivor_id:
        raise IdentityError(f"profile {merged_id} is not merged into {survivor_id}")
    split = _subtree(conn, row.canonical_id, merged_id)
    conn.execute(sa.update(PROFILES).where(PROFILES.c.id == merged_id).values(merged_into=None))
    conn.execute(sa.update(PROFILES).where(PROFILES.c.id.in_(split)).values(canonical_id=merged_id))
    conn.execute(
        sa.update(MERGES)
        .where(MERGES.c.survivor_id == survivor_id, MERGES.c.merged_id == merged_id, MERGES.c.unmerged_at.is_(None))
        .values(unmerged_at=utcnow())
    )
    stmt = dialect.insert_ignoring_conflicts(conn, BLOCKS, ["profile_a", "profile_b"])
    conn.execute(stmt, [{"profile_a": survivor_id, "profile_b": merged_id}])
    return split


def unmerge(*, conn: Connection, profile_id: int, merged_id: int | None, actor: str, position: int) -> dict[str, Any]:
    """Reverse a merge of `profile_id`'s cluster: the given merged profile, else the latest merge.

    Recorded as an action at the processing position, so a rebuild replays it at the same point.
    The two profiles are blocked from merging again automatically.
    """
    root = canonical_id(conn=conn, profile_id=profile_id)
    if root is None:
        raise IdentityError(f"no profile {profile_id}")
    cluster = members(conn=conn, root=root)
    stmt = (
        sa.select(MERGES)
        .where(MERGES.c.merged_id.in_(cluster), MERGES.c.unmerged_at.is_(None))
        .order_by(MERGES.c.id.desc())
    )
    if merged_id is not None:
        stmt = stmt.where(MERGES.c.merged_id == merged_id)
    merge = conn.execute(stmt.limit(1)).first()
    if merge is None:
        raise IdentityError(
            f"profile {profile_id} has no merge to reverse" + (f" with {merged_id}" if merged_id else "")
        )
    split = apply_unmerge(conn=conn, survivor_id=merge.survivor_id, merged_id=merge.merged_id)
    conn.execute(sa.update(MERGES).where(MERGES.c.id == merge.id).values(unmerged_by=actor[:100]))
    action_id = conn.execute(
        sa.insert(ACTIONS)
        .values(
            kind="unmerge",
            survivor_id=merge.survivor_id,
            merged_id=merge.merged_id,
            position=position,
            actor=actor[:100],
            created_at=utcnow(),
        )
        .returning(ACTIONS.c.id)
    ).scalar_one()
    return {
        "action_id": action_id,
        "survivor_id": merge.survivor_id,
        "restored_id": merge.merged_id,
        "restored_members": split,
    }


def pending_actions(*, conn: Connection, after_position: int) -> list[Any]:
    return conn.execute(
        sa.select(ACTIONS).where(ACTIONS.c.position >= after_position).order_by(ACTIONS.c.position, ACTIONS.c.id)
    ).all()


GRAPH_TABLES = (
    "profile_events",
    "identity_blocks",
    "identity_conflicts",
    "identity_merges",
    "identity_links",
    "profiles",
)
