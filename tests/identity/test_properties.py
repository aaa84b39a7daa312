"""Property-based tests (hypothesis) of identity resolution.

- incremental resolution, in any batch sizes, equals a full rebuild from the log (the rebuild's
  fast path, which keeps the graph in memory across steps, in any batch sizes too), also
  with unmerges made between the steps;
- without conflicts the result does not depend on arrival order: clusters are exactly the
  connected components of identifiers seen together;
- a veto is never broken, whatever the stream;
- unmerge restores the state before the merge.
"""

from __future__ import annotations

import random
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from omnijourney.pipeline import service as pipeline
from omnijourney.store import db
from tests.identity.helpers import append, graph_rows, identity_handler, process, rebuild, snapshot, source

PEOPLE = 4
HANDLERS = pipeline.default_handlers()
SETTINGS = settings(
    max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)


def person_ids(p: int) -> dict[str, list[str]]:
    return {
        "userId": [f"user-{p}"],
        "anonymousId": [f"anon-{p}-{k}" for k in range(3)],
        "email": [f"person{p}@example.org"],
        "phone": [f"+42077{p}123456"],
        "loyalty_card": [f"LC{p:04d}000000"],
    }


@st.composite
def event_streams(draw: st.DrawFn, *, mixed: bool) -> list[dict[str, Any]]:
    """Events of hidden people; with `mixed`, events may also combine identifiers of different people."""
    n = draw(st.integers(min_value=1, max_value=25))
    out = []
    for i in range(n):
        p = draw(st.integers(0, PEOPLE - 1))
        ids = person_ids(p)
        other = person_ids(draw(st.integers(0, PEOPLE - 1))) if mixed else ids
        msg: dict[str, Any] = {"type": "identify", "messageId": f"m{i}", "timestamp": f"2026-11-01T00:{i:02d}:00Z"}
        if draw(st.booleans()):
            msg["userId"] = ids["userId"][0]
        msg["anonymousId"] = draw(st.sampled_from(other["anonymousId"] if draw(st.booleans()) else ids["anonymousId"]))
        traits = {}
        for key in ("email", "phone", "loyalty_card"):
            if draw(st.booleans()):
                pool = other[key] if draw(st.booleans()) else ids[key]
                traits[key] = pool[0]
        if traits:
            msg["traits"] = traits
        msg["_trusted"] = draw(st.booleans()) if mixed else True
        out.append(msg)
    return out


def load(engine: sa.Engine, events: list[dict[str, Any]]) -> None:
    pos = source(engine, "pos", "store", trusted=True)
    web = source(engine, "web", "web", trusted=False)
    run: list[dict[str, Any]] = []
    for i, e in enumerate(events):
        run.append({k: v for k, v in e.items() if k != "_trusted"})
        if i + 1 == len(events) or events[i + 1]["_trusted"] != e["_trusted"]:
            append(engine, *((pos, "store") if e["_trusted"] else (web, "web")), run)
            run = []


def wipe(engine: sa.Engine) -> None:
    with db.write(engine) as conn:
        pipeline.reset(conn=conn, handlers=HANDLERS)
        conn.execute(sa.text("DELETE FROM identity_actions"))
        conn.execute(sa.text("DELETE FROM consent_records"))
        conn.execute(sa.text("DELETE FROM events"))


def conflict_count(engine: sa.Engine) -> int:
    with db.read(engine) as conn:
        return int(conn.execute(sa.text("SELECT count(*) FROM identity_conflicts")).scalar_one())


def partition(state: dict[str, Any]) -> set[frozenset]:
    return set(state["clusters"])


def components(events: list[dict[str, Any]]) -> set[frozenset]:
    """Connected components of identifiers that appear in the same event (the expected clusters)."""
    parent: dict[tuple[str, str], tuple[str, str]] = {}

    def find(x: tuple[str, str]) -> tuple[str, str]:
        while parent.setdefault(x, x) != x:
            x = parent[x]
        return x

    for e in events:
        keys = []
        if "userId" in e:
            keys.append(("user_id", e["userId"]))
        keys.append(("anonymous_id", e["anonymousId"]))
        for k, v in (e.get("traits") or {}).items():
            keys.append((k, v.lower() if k == "email" else v))
        for k in keys:
            find(k)
        for k in keys[1:]:
            parent[find(k)] = find(keys[0])
    groups: dict[tuple[str, str], set] = {}
    for k in parent:
        groups.setdefault(find(k), set()).add(k)
    return {frozenset(g) for g in groups.values()}


@SETTINGS
@given(events=event_streams(mixed=True), batch=st.integers(1, 7), rebuild_batch=st.sampled_from([1, 3, 1000]))
def test_incremental_equals_rebuild(engine: sa.Engine, events, batch, rebuild_batch) -> None:
    wipe(engine)
    load(engine, events[: len(events) // 2])
    process(engine, batch=batch)
    load(engine, events[len(events) // 2 :])
    process(engine, batch=batch)
    incremental, rows = snapshot(engine), graph_rows(engine)
    rebuild(engine, batch=rebuild_batch)
    assert graph_rows(engine) == rows
    assert snapshot(engine) == incremental
    # honest: the rebuild kept its graph, which it built from empty and never read back
    kept = identity_handler()._kept
    assert kept is not None and kept.complete


@settings(
    max_examples=5, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)
@given(
    events=event_streams(mixed=True),
    cuts=st.lists(st.integers(0, 25), min_size=1, max_size=3),
    batch=st.integers(1, 5),
    rebuild_batch=st.sampled_from([1, 2, 1000]),
)
def test_rebuild_with_unmerges_between_steps_equals_incremental(
    engine: sa.Engine, events, cuts, batch, rebuild_batch
) -> None:
    """Unmerges recorded between incremental steps replay at their positions; the rebuild drops
    its in-memory graph when one is applied and reads the graph back from the database."""
    wipe(engine)
    start = 0
    unmerged = 0
    for cut in [*sorted(set(cuts)), len(events)]:
        load(engine, events[start:cut])
        start = max(start, cut)
        process(engine, batch=batch)
        with db.read(engine) as conn:
            merged = conn.execute(
                sa.text("SELECT merged_id FROM identity_merges WHERE unmerged_at IS NULL ORDER BY id DESC")
            ).first()
        if merged is not None:
            with db.write(engine) as conn:
                pipeline.unmerge(conn=conn, profile_id=merged[0], merged_id=None, actor="test")
            unmerged += 1
    process(engine, batch=batch)  # the unmerge events
    incremental, rows = snapshot(engine), graph_rows(engine)
    rebuild(engine, batch=rebuild_batch)
    assert graph_rows(engine) == rows
    assert snapshot(engine) == incremental
    kept = identity_handler()._kept
    assert kept is not None and kept.complete == (unmerged == 0)


@SETTINGS
@given(events=event_streams(mixed=True))
def test_veto_is_never_broken(engine: sa.Engine, events) -> None:
    wipe(engine)
    load(engine, events)
    process(engine, batch=3)
    with db.read(engine) as conn:
        worst = conn.execute(
            sa.text(
                "SELECT max(n) FROM (SELECT count(DISTINCT l.value) AS n FROM identity_links l "
                "JOIN profiles p ON p.id = l.profile_id WHERE l.id_type = 'user_id' GROUP BY p.canonical_id) t"
            )
        ).scalar_one()
    assert worst in (None, 1)


@SETTINGS
@given(events=event_streams(mixed=False), seed=st.integers(0, 10_000))
def test_without_conflicts_order_does_not_matter(engine: sa.Engine, events, seed) -> None:
    wipe(engine)
    load(engine, events)
    process(engine)
    assume(conflict_count(engine) == 0)
    first = partition(snapshot(engine))
    assert first == components(events)
    shuffled = list(events)
    random.Random(seed).shuffle(shuffled)
    wipe(engine)
    load(engine, [{**e, "messageId": e["messageId"] + "-s"} for e in shuffled])
    process(engine)
    if conflict_count(engine) == 0:
        assert partition(snapshot(engine)) == first


@SETTINGS
@given(events=event_streams(mixed=False), pair=st.permutations(range(PEOPLE)))
def test_unmerge_restores_the_state_before_the_merge(engine: sa.Engine, events, pair) -> None:
    a, b = pair[0], pair[1]
    wipe(engine)
    pa, pb = person_ids(a), person_ids(b)
    # a and b are known (without user ids, so a trusted event may merge them), then anything happens
    seedling = [
        {"type": "identify", "anonymousId": pa["anonymousId"][0], "traits": {"email": pa["email"][0]}},
        {"type": "identify", "anonymousId": pb["anonymousId"][0], "traits": {"loyalty_card": pb["loyalty_card"][0]}},
    ]
    stream = [{**m, "messageId": f"s{k}", "_trusted": True} for k, m in enumerate(seedling)]
    stream += [{k: v for k, v in e.items() if k != "userId"} for e in events]
    load(engine, stream)
    process(engine)
    before = snapshot(engine)
    root, known = before["members"], before["links"]
    assume(root[known[("email", pa["email"][0])]] != root[known[("loyalty_card", pb["loyalty_card"][0])]])
    bridge = {
        "type": "identify",
        "anonymousId": pa["anonymousId"][0],
        "messageId": "bridge",
        "traits": {"email": pa["email"][0], "loyalty_card": pb["loyalty_card"][0]},
        "_trusted": True,
    }
    load(engine, [bridge])
    process(engine)
    merged = snapshot(engine)
    if merged["members"] == before["members"]:
        return  # refused (a limit): nothing to undo
    assert merged["links"] == before["links"]  # the bridge carried only known identifiers
    with db.write(engine) as conn:
        pipeline.unmerge(conn=conn, profile_id=known[("email", pa["email"][0])], merged_id=None, actor="test")
    after = snapshot(engine)
    assert after["members"] == before["members"]
    assert after["links"] == before["links"]
    # every event but the bridge is on the same cluster as before
    clusters_before = {ids: evs for ids, (evs, _) in before["clusters"].items()}
    clusters_after = {ids: evs - {"bridge"} for ids, (evs, _) in after["clusters"].items()}
    assert clusters_after == clusters_before


@pytest.fixture(autouse=True)
def _speed(engine: sa.Engine) -> None:
    """Nothing: a placeholder so hypothesis sees the engine fixture as used."""
