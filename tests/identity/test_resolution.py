"""Identity resolution rules, on SQLite and PostgreSQL, through the processing stage."""

from __future__ import annotations

import sqlalchemy as sa

from omnijourney.pipeline import service as pipeline
from omnijourney.store import db
from tests.identity.helpers import append, conflicts, process, profile_of, snapshot, source


def ts(day: int, hour: int = 12) -> str:
    return f"2026-11-{day:02d}T{hour:02d}:00:00Z"


def test_anonymous_device_links_to_login_and_identifiers_resolve(engine: sa.Engine) -> None:
    web = source(engine, "web", "web", trusted=False)
    append(
        engine,
        web,
        "web",
        [
            {"type": "page", "anonymousId": "anon-m", "name": "Home", "timestamp": ts(1)},
            {"type": "track", "anonymousId": "anon-m", "event": "Product Viewed", "timestamp": ts(1, 13)},
            {
                "type": "identify",
                "anonymousId": "anon-m",
                "userId": "U1",
                "traits": {"email": " Jana.Novakova@Example.com ", "phone": "601 123 456", "name": "Jana Nováková"},
                "timestamp": ts(2),
            },
            {"type": "identify", "anonymousId": "anon-d", "userId": "U1", "timestamp": ts(3)},
        ],
    )
    process(engine)
    p = profile_of(engine, "user_id", "U1")
    assert p is not None
    assert profile_of(engine, "anonymous_id", "anon-m") == p
    assert profile_of(engine, "anonymous_id", "anon-d") == p
    assert profile_of(engine, "email", "jana.novakova@example.com") == p
    assert profile_of(engine, "phone", "+420601123456") == p
    assert conflicts(engine) == []


def test_shared_tablet_two_users_never_merge_and_the_device_follows_the_latest(engine: sa.Engine) -> None:
    web = source(engine, "web", "web", trusted=False)
    append(
        engine,
        web,
        "web",
        [
            {"type": "identify", "anonymousId": "tablet", "userId": "mom", "timestamp": ts(1)},
            {
                "type": "track",
                "anonymousId": "tablet",
                "event": "Product Viewed",
                "messageId": "a",
                "timestamp": ts(1, 13),
            },
            {"type": "identify", "anonymousId": "tablet", "userId": "son", "timestamp": ts(2)},
            {
                "type": "track",
                "anonymousId": "tablet",
                "event": "Product Viewed",
                "messageId": "b",
                "timestamp": ts(2, 13),
            },
        ],
    )
    process(engine)
    mom, son = profile_of(engine, "user_id", "mom"), profile_of(engine, "user_id", "son")
    assert mom is not None and son is not None and mom != son
    assert profile_of(engine, "anonymous_id", "tablet") == son  # later events follow the logged-in user
    kinds = {k for k, _, _ in conflicts(engine)}
    assert {"veto", "moved"} <= kinds
    with db.read(engine) as conn:
        owner = dict(
            conn.execute(
                sa.text(
                    "SELECT e.message_id, p.canonical_id FROM profile_events pe JOIN events e ON e.id = pe.event_id "
                    "JOIN profiles p ON p.id = pe.profile_id WHERE e.message_id IN ('a', 'b')"
                )
            ).all()
        )
    assert owner == {"a": mom, "b": son}


def test_junk_identifiers_never_merge_strangers(engine: sa.Engine) -> None:
    pos = source(engine, "pos", "store", trusted=True)
    junk = ["test@test.com", "null", "undefined", "0000000000", "N/A", "1111111"]
    append(
        engine,
        pos,
        "store",
        [
            {"type": "identify", "userId": f"stranger-{i}", "traits": {"email": j, "phone": j, "loyalty_card": j}}
            for i, j in enumerate(junk * 2)
        ],
    )
    process(engine)
    with db.read(engine) as conn:
        clusters = conn.execute(sa.text("SELECT count(DISTINCT canonical_id) FROM profiles")).scalar_one()
        links = conn.execute(sa.text("SELECT count(*) FROM identity_links WHERE id_type != 'user_id'")).scalar_one()
    assert clusters == 12
    assert links == 0


def test_limit_breach_is_recorded_not_truncated(engine: sa.Engine) -> None:
    pos = source(engine, "pos", "store", trusted=True)
    emails = [f"person{i}@example.org" for i in range(5)]
    append(engine, pos, "store", [{"type": "identify", "userId": "U", "traits": {"email": e}} for e in emails])
    process(engine)
    p = profile_of(engine, "user_id", "U")
    assert [profile_of(engine, "email", e) for e in emails] == [p, p, p, None, None]
    assert conflicts(engine) == [("limit", "email", emails[3]), ("limit", "email", emails[4])]
    with db.read(engine) as conn:
        attached = conn.execute(sa.text("SELECT count(*) FROM profile_events")).scalar_one()
    assert attached == 5  # every event is still on the profile's timeline


def test_client_side_source_cannot_merge_two_identified_profiles(engine: sa.Engine) -> None:
    pos = source(engine, "pos", "store", trusted=True)
    web = source(engine, "web", "web", trusted=False)
    card, email = "LC0000123456", "b@example.org"
    append(engine, pos, "store", [{"type": "identify", "anonymousId": "till-1", "traits": {"loyalty_card": card}}])
    append(engine, pos, "store", [{"type": "identify", "anonymousId": "till-2", "traits": {"email": email}}])
    # a web form claims the card and the e-mail belong together: a client-side source may not merge them
    append(
        engine, web, "web", [{"type": "identify", "anonymousId": "x", "traits": {"loyalty_card": card, "email": email}}]
    )
    process(engine)
    assert profile_of(engine, "loyalty_card", card) != profile_of(engine, "email", email)
    assert ("untrusted", "email", email) in conflicts(engine)
    # the same claim from the trusted POS merges them
    append(
        engine,
        pos,
        "store",
        [{"type": "identify", "anonymousId": "y", "traits": {"loyalty_card": card, "email": email}}],
    )
    process(engine)
    assert profile_of(engine, "loyalty_card", card) == profile_of(engine, "email", email)


def test_two_user_ids_never_merge_even_from_a_trusted_source(engine: sa.Engine) -> None:
    pos = source(engine, "pos", "store", trusted=True)
    append(engine, pos, "store", [{"type": "identify", "userId": "A", "traits": {"loyalty_card": "LC0000123456"}}])
    append(engine, pos, "store", [{"type": "identify", "userId": "B", "traits": {"email": "b@example.org"}}])
    append(
        engine,
        pos,
        "store",
        [
            {
                "type": "identify",
                "anonymousId": "y",
                "traits": {"loyalty_card": "LC0000123456", "email": "b@example.org"},
            }
        ],
    )
    process(engine)
    assert profile_of(engine, "user_id", "A") != profile_of(engine, "user_id", "B")
    assert ("veto", "email", "b@example.org") in conflicts(engine)


def test_trusted_merge_oldest_survives_provenance_and_unmerge_restores(engine: sa.Engine) -> None:
    pos = source(engine, "pos", "store", trusted=True)
    web = source(engine, "web", "web", trusted=False)
    append(
        engine,
        web,
        "web",
        [
            {
                "type": "identify",
                "anonymousId": "w1",
                "traits": {"email": "eva@example.org", "size": "M"},
                "timestamp": ts(1),
            }
        ],
    )
    append(
        engine,
        pos,
        "store",
        [
            {
                "type": "identify",
                "userId": "card-holder",
                "traits": {"loyalty_card": "LC1234567890", "size": "L"},
                "timestamp": ts(2),
            }
        ],
    )
    process(engine)
    before = snapshot(engine)
    older = profile_of(engine, "email", "eva@example.org")
    newer = profile_of(engine, "user_id", "card-holder")
    assert older != newer
    append(
        engine,
        pos,
        "store",
        [
            {
                "type": "identify",
                "userId": "card-holder",
                "traits": {"email": "eva@example.org"},
                "messageId": "bridge",
                "timestamp": ts(3),
            }
        ],
    )
    process(engine)
    assert profile_of(engine, "user_id", "card-holder") == older == profile_of(engine, "email", "eva@example.org")
    with db.read(engine) as conn:
        merge = conn.execute(
            sa.text("SELECT survivor_id, merged_id, id_type, value, source_id FROM identity_merges")
        ).one()
    assert tuple(merge) == (older, newer, "email", "eva@example.org", pos)

    with db.write(engine) as conn:
        result = pipeline.unmerge(conn=conn, profile_id=older, merged_id=None, actor="test")
    assert result["restored_id"] == newer
    after = snapshot(engine)
    # the bridging event stays where it was attached; everything else is as before the merge
    assert {k: v for k, v in after["members"].items()} == before["members"] | {}
    assert profile_of(engine, "user_id", "card-holder") == newer
    assert profile_of(engine, "email", "eva@example.org") == older
    # and the pair is blocked: the same evidence does not merge them again
    append(
        engine,
        pos,
        "store",
        [{"type": "identify", "userId": "card-holder", "traits": {"email": "eva@example.org"}, "messageId": "again"}],
    )
    process(engine)
    assert profile_of(engine, "user_id", "card-holder") == newer
    assert ("unmerged", "email", "eva@example.org") in conflicts(engine)


def test_rebuild_recomputes_the_same_graph_including_unmerges(engine: sa.Engine) -> None:
    pos = source(engine, "pos", "store", trusted=True)
    append(engine, pos, "store", [{"type": "identify", "userId": "A", "traits": {"email": "a@example.org"}}])
    append(engine, pos, "store", [{"type": "identify", "anonymousId": "k", "traits": {"phone": "+48 601 234 567"}}])
    process(engine)
    append(engine, pos, "store", [{"type": "identify", "userId": "A", "traits": {"phone": "+48601234567"}}])
    process(engine)
    a = profile_of(engine, "user_id", "A")
    with db.write(engine) as conn:
        pipeline.unmerge(conn=conn, profile_id=a, merged_id=None, actor="test")
    append(engine, pos, "store", [{"type": "track", "anonymousId": "k", "event": "Store Visited"}])
    process(engine)
    incremental = snapshot(engine)
    with db.write(engine) as conn:
        pipeline.reset(conn=conn, handlers=pipeline.default_handlers())
    process(engine, batch=1)
    assert snapshot(engine) == incremental
