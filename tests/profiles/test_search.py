"""Customer search on both databases: index-friendly prefix matching and set-based result cards.

Rows are written straight into the graph tables (no pipeline): these tests are about the reads.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
import sqlalchemy as sa

from omnijourney.identity.models import IdentityLink, Profile
from omnijourney.profiles import service as profiles
from omnijourney.profiles.config import load_profile_config
from omnijourney.profiles.models import ProfileSearchTerm, ProfileStats, ProfileTrait
from omnijourney.store import db, dialect

T = datetime(2026, 11, 20, 9, 0, tzinfo=UTC)

#: member -> survivor; 2 is merged into 1
PROFILES = {1: 1, 2: 1, 3: 3, 4: 4, 5: 5}
LINKS = [
    (1, "email", "jana.novakova@example.com"),
    (2, "phone", "+420601123456"),
    (2, "loyalty_card", "LC0012345678"),
    (1, "user_id", "user-jana"),
    (3, "email", "jan.novak@example.com"),
    (3, "phone", "+421601123456"),  # a Slovak number: national digits like Jana's, another country
    (4, "email", "zofie@example.com"),
    (5, "email", "ondrej.cerny@example.com"),
]
TERMS = [(1, "jana"), (2, "novakova"), (3, "jan"), (3, "novak"), (4, "zofie"), (4, "novakova"), (5, "ondrej")]


@pytest.fixture
def graph(engine: sa.Engine) -> sa.Engine:
    with db.write(engine) as conn:
        conn.execute(
            sa.insert(Profile.__table__),
            [
                {"id": p, "created_at": T, "merged_into": None if p == r else r, "canonical_id": r}
                for p, r in PROFILES.items()
            ],
        )
        conn.execute(
            sa.insert(IdentityLink.__table__),
            [
                {"id_type": t, "value": v, "profile_id": p, "linked_at": T, "event_id": i, "source_id": 1}
                for i, (p, t, v) in enumerate(LINKS, 1)
            ],
        )
        conn.execute(sa.insert(ProfileSearchTerm.__table__), [{"term": t, "profile_id": p} for p, t in TERMS])
        conn.execute(
            sa.insert(ProfileTrait.__table__),
            [
                {"profile_id": 1, "key": "first_name", "value": "Jana", "observed_at": T, "first_observed_at": T},
                {"profile_id": 2, "key": "last_name", "value": "Nováková", "observed_at": T, "first_observed_at": T},
            ],
        )
        conn.execute(
            sa.insert(ProfileStats.__table__),
            [
                {"profile_id": p, "first_seen": T, "last_seen": T, "event_count": 1, "order_count": n, "revenue": 0.0}
                for p, n in ((1, 1), (2, 1), (3, 0))
            ],
        )
    return engine


def search(engine: sa.Engine, query: str, limit: int = 20) -> list[int]:
    with db.read(engine) as conn:
        return profiles.search(conn=conn, query=query, limit=limit, phone_country_code=420)


#: query -> the surviving profiles it finds (one database for all cases: creating one is the slow part)
CASES = [
    ("jana.novakova@", [1]),  # e-mail prefix, lower-cased
    ("JAN", [1, 3]),  # e-mail prefix "jan" (both), then names
    ("user-ja", [1]),  # user id prefix
    ("lc 0012", [1]),  # loyalty card prefix, normalised like the card
    ("601 123", [1]),  # a national number (+420 601 123...); as an international one (+601 123...): nobody
    ("+421 601", [3]),  # with the country code: only that country
    ("421601", [3]),  # international without '+'
    ("Nováková", [1, 4]),  # a name token, accents folded: the survivor of member 2, and Zofie
    ("jana novakova", [1]),  # every token must match a name token of the cluster (here: of two members)
    ("novak ondrej", []),
    ("zz", []),
]


def test_prefix_search_on_normalised_columns(graph: sa.Engine) -> None:
    for query, expected in CASES:
        assert sorted(search(graph, query)) == expected, query
    assert sorted(search(graph, "novakova")) == [1, 4]  # survivors once (member 2 answers as 1)
    assert len(search(graph, "novak", limit=1)) == 1
    with pytest.raises(profiles.ProfileError):
        search(graph, "j")


def test_prefix_bounds_cover_exactly_the_prefix(engine: sa.Engine) -> None:
    values = ["ab", "abc", "ab\U0001f600", "abd", "aa", "ac", "AB", "abé"]
    with db.write(engine) as conn:
        conn.execute(
            sa.insert(IdentityLink.__table__),
            [
                {"id_type": "x", "value": v, "profile_id": i, "linked_at": T, "event_id": i, "source_id": 1}
                for i, v in enumerate(values, 1)
            ],
        )
    links = IdentityLink.__table__
    stmt = sa.select(links.c.value).where(
        links.c.id_type == "x", dialect.prefix_match(links.c.value, sa.bindparam("lo"), sa.bindparam("hi"))
    )
    with db.read(engine) as conn:
        for prefix, expected in (("ab", {"ab", "abc", "ab\U0001f600", "abd", "abé"}), ("abc", {"abc"}), ("b", set())):
            lo, hi = dialect.prefix_bounds(prefix)
            assert {r[0] for r in conn.execute(stmt, {"lo": lo, "hi": hi})} == expected, prefix


def test_summaries_combine_each_cluster_in_a_few_statements(graph: sa.Engine) -> None:
    statements: list[str] = []
    sa.event.listen(graph, "before_cursor_execute", lambda *a: statements.append(a[2]))
    with db.read(graph) as conn:
        cards = profiles.summaries(conn=conn, root_ids=[3, 1, 5], config=load_profile_config())
    assert [c["id"] for c in cards] == [3, 1, 5]
    jana = cards[1]
    assert jana["name"] == "Jana Nováková"  # traits of both members
    assert (jana["email"], jana["phone"], jana["loyalty_card"], jana["user_id"]) == (
        "jana.novakova@example.com",
        "+420601123456",
        "LC0012345678",
        "user-jana",
    )
    assert jana["last_seen"] == T and cards[2]["last_seen"] is None
    assert len([s for s in statements if s.lstrip().upper().startswith("SELECT")]) == 4


def test_identifier_prefixes_are_one_statement_and_known_clusters_skip_a_read(graph: sa.Engine) -> None:
    statements: list[str] = []

    def count(*a: object) -> None:
        if str(a[2]).lstrip().upper().startswith("SELECT"):
            statements.append(str(a[2]))

    sa.event.listen(graph, "before_cursor_execute", count)
    assert search(graph, "601 123") == [1]  # e-mail, user id, card and two phone prefixes: one statement
    assert len(statements) == 1
    statements.clear()
    config = load_profile_config()
    with db.read(graph) as conn:
        cards = profiles.summaries(conn=conn, root_ids=[3, 1], config=config, clusters={1: [1, 2], 3: [3]})
        assert len(statements) == 3  # the members are known: traits, identifiers, stats
        assert cards == profiles.summaries(conn=conn, root_ids=[3, 1], config=config)
    assert cards[1]["name"] == "Jana Nováková" and cards[1]["phone"] == "+420601123456"
