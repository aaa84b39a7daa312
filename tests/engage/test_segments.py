"""Segments: membership follows the events as they arrive, entries and exits are on the timeline,
'did not do X within a period' changes with the clock (refresh), clusters count once."""

from __future__ import annotations

import sqlalchemy as sa

from omnijourney.engage import service
from omnijourney.store import db
from tests.engage.helpers import ago, create, refresh, segment_timeline, segments_of
from tests.identity.helpers import append, process, profile_of, source


def order(user: str, ref: str, revenue: float, days_ago: float) -> dict:
    return {
        "type": "track",
        "event": "Order Completed",
        "userId": user,
        "timestamp": ago(days_ago),
        "properties": {"order_id": ref, "revenue": revenue, "currency": "CZK", "products": []},
    }


def test_entry_and_exit_follow_events_and_appear_on_the_timeline(engine) -> None:
    web = source(engine, "web", "web", False)
    create(
        engine,
        "big_spenders",
        {"event": {"name": "Order Completed", "sum": {"property": "revenue", "op": "gte", "value": 1000}}},
    )
    create(
        engine,
        "no_consent",
        {"not": {"consent": {"purpose": "marketing", "channel": "email", "status": "granted"}}},
    )
    append(engine, web, "web", [{"type": "identify", "userId": "u-1", "traits": {"email": "a@example.com"}}])
    process(engine)
    pid = profile_of(engine, "user_id", "u-1")
    assert pid is not None
    assert "big_spenders" not in segments_of(engine, pid)
    assert "no_consent" in segments_of(engine, pid)

    append(engine, web, "web", [order("u-1", "o-1", 600, 1)])
    process(engine)
    assert "big_spenders" not in segments_of(engine, pid)
    append(
        engine,
        web,
        "web",
        [
            order("u-1", "o-2", 500, 0.5),
            {
                "type": "track",
                "event": "Consent Updated",
                "userId": "u-1",
                "properties": {"purpose": "marketing", "channel": "email", "status": "granted"},
            },
        ],
    )
    process(engine)
    assert "big_spenders" in segments_of(engine, pid)
    assert "no_consent" not in segments_of(engine, pid)
    assert segment_timeline(engine, pid, "big_spenders") == [("Segment Entered", 1)]
    assert segment_timeline(engine, pid, "no_consent") == [("Segment Entered", 1), ("Segment Exited", 1)]
    # processing again (our own events) changes nothing and appends nothing
    with db.read(engine) as conn:
        before = conn.execute(sa.text("SELECT count(*) FROM events")).scalar_one()
    process(engine)
    with db.read(engine) as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM events")).scalar_one() == before
        assert service.count(conn=conn, key="big_spenders") == 1
        hist = conn.execute(
            sa.text("SELECT action, seq FROM engage_segment_history WHERE segment_key = 'no_consent' ORDER BY id")
        ).all()
    assert [tuple(h) for h in hist] == [("entered", 1), ("left", 1)]


def test_did_not_do_within_period_changes_with_refresh(engine) -> None:
    web = source(engine, "web", "web", False)
    create(
        engine,
        "lapsing",
        {
            "all": [
                {"event": {"name": "Order Completed"}},
                {"event": {"name": "Order Completed", "did": False, "within_days": 30}},
            ]
        },
    )
    append(engine, web, "web", [order("u-old", "o-old", 100, 100), order("u-new", "o-new", 100, 29.99)])
    process(engine)
    old, new = profile_of(engine, "user_id", "u-old"), profile_of(engine, "user_id", "u-new")
    assert old is not None and new is not None
    assert "lapsing" in segments_of(engine, old)
    assert "lapsing" not in segments_of(engine, new)
    # time passes: u-new's order falls out of the 30-day window without any new event
    with db.write(engine) as conn:
        conn.execute(
            sa.text("UPDATE profile_events SET timestamp = :t WHERE profile_id = :p AND event = 'Order Completed'"),
            {"t": __import__("datetime").datetime.fromisoformat(ago(31)), "p": new},
        )
    assert refresh(engine) == {"entered": 1, "left": 0}
    assert "lapsing" in segments_of(engine, new)
    assert segment_timeline(engine, new, "lapsing") == []  # appended, not yet processed
    process(engine)
    assert segment_timeline(engine, new, "lapsing") == [("Segment Entered", 1)]
    assert refresh(engine) == {"entered": 0, "left": 0}  # idempotent
    # buying again: leaves as the event arrives
    append(engine, web, "web", [order("u-new", "o-new-2", 100, 0)])
    process(engine)
    assert "lapsing" not in segments_of(engine, new)
    assert segment_timeline(engine, new, "lapsing") == [("Segment Entered", 1), ("Segment Exited", 1)]


def test_membership_is_per_surviving_profile(engine) -> None:
    web = source(engine, "web", "web", False)
    pos = source(engine, "pos", "store", True)
    create(engine, "two_orders", {"computed": {"field": "order_count", "op": "gte", "value": 2}})
    append(engine, web, "web", [order("u-m", "w-1", 10, 2)])
    append(
        engine,
        pos,
        "store",
        [
            {
                "type": "track",
                "event": "Order Completed",
                "anonymousId": "card-device",
                "context": {"traits": {"email": "m@example.com"}},
                "timestamp": ago(1),
                "properties": {"order_id": "p-1", "revenue": 10, "currency": "CZK"},
            }
        ],
    )
    process(engine)
    with db.read(engine) as conn:
        assert service.count(conn=conn, key="two_orders") == 0
    # the cashier links the account and the e-mail: the two profiles merge, the cluster has 2 orders
    append(engine, pos, "store", [{"type": "identify", "userId": "u-m", "traits": {"email": "m@example.com"}}])
    process(engine)
    pid = profile_of(engine, "user_id", "u-m")
    assert pid is not None
    with db.read(engine) as conn:
        rows = conn.execute(
            sa.text("SELECT profile_id FROM engage_segment_members WHERE segment_key='two_orders'")
        ).all()
        root = conn.execute(sa.text("SELECT canonical_id FROM profiles WHERE id = :p"), {"p": pid}).scalar_one()
    assert [r[0] for r in rows] == [root]
    assert "two_orders" in segments_of(engine, pid)

    # an admin splits them again: once the unmerge's own events are processed, neither part has two orders
    from omnijourney.pipeline import service as pipeline

    with db.write(engine) as conn:
        split = pipeline.unmerge(conn=conn, profile_id=pid, merged_id=None, actor="test")
    process(engine)
    with db.read(engine) as conn:
        assert service.count(conn=conn, key="two_orders") == 0
        unmerged = conn.execute(
            sa.text("SELECT profile_id FROM profile_events WHERE event = 'Profile Unmerged' ORDER BY profile_id")
        ).all()
    assert [r[0] for r in unmerged] == sorted([split["survivor_id"], split["restored_id"]])
    assert segment_timeline(engine, split["survivor_id"], "two_orders") == [
        ("Segment Entered", 1),
        ("Segment Exited", 1),
    ]


def test_rebuild_recreates_memberships_without_duplicate_events(engine) -> None:
    from omnijourney.pipeline import service as pipeline
    from tests.identity.helpers import _HANDLERS

    web = source(engine, "web", "web", False)
    create(engine, "buyers", {"event": {"name": "Order Completed"}})
    append(engine, web, "web", [order("u-r", "r-1", 10, 1)])
    process(engine)
    with db.read(engine) as conn:
        n_events = conn.execute(sa.text("SELECT count(*) FROM events")).scalar_one()
    with db.write(engine) as conn:
        pipeline.reset(conn=conn, handlers=_HANDLERS)
    process(engine)
    pid = profile_of(engine, "user_id", "u-r")
    assert pid is not None and "buyers" in segments_of(engine, pid)
    with db.read(engine) as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM events")).scalar_one() == n_events
    assert segment_timeline(engine, pid, "buyers") == [("Segment Entered", 1)]
