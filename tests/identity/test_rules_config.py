"""Identity rules as configuration: windows, merge trust, start-up validation, junk values, and
what an unmerge leaves on each side. One database per module (tests/moddb.py); each test uses its
own identifiers and processes the log with the rules it is about."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import yaml
from pydantic import ValidationError

from omnijourney.app import create_app
from omnijourney.config import IngestLimits, Settings
from omnijourney.identity import service as identity
from omnijourney.identity.rules import DEFAULT_RULES, IdentityRules
from omnijourney.ingest.schemas import validate_message
from omnijourney.pipeline import service as pipeline
from omnijourney.pipeline.worker import run_until_idle
from omnijourney.profiles import service as profiles
from omnijourney.profiles.config import load_profile_config
from omnijourney.store import db
from tests.identity.helpers import append, process, profile_of, source

RULES = yaml.safe_load(DEFAULT_RULES.read_text())


def at(month: int, day: int, minute: int = 0) -> str:
    return (datetime(2026, month, day, 12, tzinfo=UTC) + timedelta(minutes=minute)).isoformat()


def conflicts_of(engine: sa.Engine, value_like: str) -> list[tuple[str, str, str]]:
    with db.read(engine) as conn:
        rows = conn.execute(
            sa.text("SELECT kind, id_type, value FROM identity_conflicts WHERE value LIKE :v ORDER BY id"),
            {"v": value_like},
        )
        return [tuple(r) for r in rows]


def test_anonymous_ids_are_limited_per_window(mod_engine: sa.Engine) -> None:
    """anonymous_id: 50 per 30 days. The 51st within the window is refused and recorded; once the
    window has passed, a new one links again."""
    engine = mod_engine
    web = source(engine, "web", "web", trusted=False)
    first = [
        {"type": "identify", "userId": "win-u", "anonymousId": f"win-a{i}", "timestamp": at(10, 1, i)}
        for i in range(50)
    ]
    append(engine, web, "web", first)
    append(
        engine,
        web,
        "web",
        [{"type": "track", "userId": "win-u", "anonymousId": "win-a50", "event": "Seen", "timestamp": at(10, 20)}],
    )
    process(engine)
    user = profile_of(engine, "user_id", "win-u")
    assert user is not None
    assert all(profile_of(engine, "anonymous_id", f"win-a{i}") == user for i in range(50))
    assert profile_of(engine, "anonymous_id", "win-a50") is None  # not linked, not truncated elsewhere
    assert conflicts_of(engine, "win-%") == [("limit", "anonymous_id", "win-a50")]
    with db.read(engine) as conn:  # the refused event still belongs to the user (highest-priority identifier)
        owner = conn.execute(
            sa.text(
                "SELECT p.canonical_id FROM profile_events pe JOIN events e ON e.id = pe.event_id "
                "JOIN profiles p ON p.id = pe.profile_id WHERE e.event = 'Seen' AND e.user_id = 'win-u'"
            )
        ).scalar_one()
    assert owner == user

    # 35 days after the first fifty: they are outside the window, so a new anonymous id links
    later = {"type": "identify", "userId": "win-u", "anonymousId": "win-a51", "timestamp": at(11, 5)}
    append(engine, web, "web", [later])
    process(engine)
    assert profile_of(engine, "anonymous_id", "win-a51") == user
    assert conflicts_of(engine, "win-%") == [("limit", "anonymous_id", "win-a50")]


def test_merge_trust_any_lets_a_client_side_source_merge_identified_profiles(mod_engine: sa.Engine) -> None:
    engine = mod_engine
    web = source(engine, "web", "web", trusted=False)

    def pair(tag: str) -> list[dict[str, Any]]:
        email, phone = f"{tag}@example.org", "+420 601 555 " + {"mt-strict": "111", "mt-any": "222"}[tag]
        return [
            {"type": "identify", "anonymousId": f"{tag}-1", "traits": {"email": email}, "timestamp": at(11, 1)},
            {"type": "identify", "anonymousId": f"{tag}-2", "traits": {"phone": phone}, "timestamp": at(11, 2)},
            {
                "type": "identify",
                "anonymousId": f"{tag}-3",
                "traits": {"email": email, "phone": phone},
                "timestamp": at(11, 3),
            },
        ]

    append(engine, web, "web", pair("mt-strict"))
    process(engine)  # the default: trusted_only
    assert profile_of(engine, "email", "mt-strict@example.org") != profile_of(engine, "phone", "+420601555111")
    assert ("untrusted", "phone", "+420601555111") in conflicts_of(engine, "+420601555111")

    rules = IdentityRules.model_validate({**RULES, "merge_trust": "any"})
    append(engine, web, "web", pair("mt-any"))
    run_until_idle(engine, pipeline.default_handlers(rules=rules), batch=500)
    email_owner = profile_of(engine, "email", "mt-any@example.org")
    assert email_owner is not None and email_owner == profile_of(engine, "phone", "+420601555222")
    assert conflicts_of(engine, "+420601555222") == []


def _broken(**change: Any) -> dict[str, Any]:
    rules = yaml.safe_load(DEFAULT_RULES.read_text())
    types = rules["identifier_types"]
    if "duplicate_priority" in change:
        types["phone"]["priority"] = types["email"]["priority"]
    if "type_name" in change:
        types["Shoe Size"] = {"priority": 5, "fields": ["traits.shoe"]}
    if "bad_pattern" in change:
        types["loyalty_card"]["pattern"] = "^[A-Z]{0,4}(0-9+$"
    if "bad_block" in change:
        rules["blocked_patterns"].append("(unclosed")
    if "unknown_key" in change:
        types["email"]["limt"] = 3
    if "bad_trust" in change:
        rules["merge_trust"] = "sometimes"
    return rules


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("duplicate_priority", "priorities must be distinct (they order resolution): email, phone all have 80"),
        ("type_name", "identifier type name 'Shoe Size' must be lower_snake_case"),
        ("bad_pattern", "pattern '^[A-Z]{0,4}(0-9+$' is not a valid regular expression"),
        ("bad_block", "blocked_patterns entry '(unclosed' is not a valid regular expression"),
        ("unknown_key", "identifier_types.email.limt\n  Extra inputs are not permitted"),
        ("bad_trust", "merge_trust\n  Input should be 'trusted_only' or 'any'"),
    ],
)
def test_a_broken_rules_file_stops_start_up_with_a_clear_message(
    change: str, message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump(_broken(**{change: True})))
    monkeypatch.setenv("OMNIJOURNEY_IDENTITY_RULES", str(path))
    settings = Settings(data_dir=tmp_path, database_url=f"sqlite:///{tmp_path / 'x.db'}", limits=IngestLimits())
    with pytest.raises(ValidationError, match=re.escape(message)):
        create_app(settings, migrate_db=False)


JUNK_ANONYMOUS = ["undefined", "anonymous", "unknown", "-1", "Unknown"]


def test_a_shared_junk_value_never_links_or_merges_two_people(mod_engine: sa.Engine) -> None:
    """Two different people (no user ids, so no veto can help) whose only shared identifier is junk."""
    engine = mod_engine
    pos = source(engine, "pos", "store", trusted=True)  # trusted: merging would be allowed if anything linked
    messages = []
    for i, junk in enumerate(JUNK_ANONYMOUS):
        for who in "ab":
            messages.append({"type": "identify", "anonymousId": junk, "traits": {"email": f"junk{i}{who}@example.org"}})
        messages.append({"type": "track", "anonymousId": junk, "event": "Junk Only", "properties": {"n": i}})
    # an empty value cannot be an anonymousId (ingestion refuses the message) but can be a device id
    for who in "ab":
        messages.append(
            {
                "type": "identify",
                "anonymousId": f"junk-dev-{who}",
                "context": {"device": {"id": ""}},
                "traits": {"email": f"junkdev{who}@example.org"},
            }
        )
    append(engine, pos, "store", messages)
    refused = validate_message(
        {"type": "identify", "anonymousId": "", "traits": {"email": "x@example.org"}},
        default_type=None,
        source_channel="store",
        received_at=datetime(2026, 11, 20, tzinfo=UTC),
        batch_sent_at=None,
        client_ip=None,
        limits=IngestLimits(),
    )
    assert isinstance(refused, list) and "anonymousId" in refused[0].message
    process(engine)

    people = [(f"junk{i}a@example.org", f"junk{i}b@example.org") for i in range(len(JUNK_ANONYMOUS))]
    people.append(("junkdeva@example.org", "junkdevb@example.org"))
    owners = set()
    for a, b in people:
        pa, pb = profile_of(engine, "email", a), profile_of(engine, "email", b)
        assert pa is not None and pb is not None and pa != pb, (a, b)
        owners |= {pa, pb}
    assert len(owners) == 2 * len(people)
    with db.read(engine) as conn:
        links = conn.execute(sa.text("SELECT id_type, value FROM identity_links")).all()
        junk_links = [(t, v) for t, v in links if t == "device_id" or v.lower() in {j.lower() for j in JUNK_ANONYMOUS}]
        merged = conn.execute(
            sa.text("SELECT count(*) FROM identity_merges WHERE value LIKE 'junk%' OR value = ''")
        ).scalar_one()
        unowned = conn.execute(
            sa.text(
                "SELECT count(*) FROM events e LEFT JOIN profile_events pe ON pe.event_id = e.id "
                "WHERE e.event = 'Junk Only' AND pe.event_id IS NULL"
            )
        ).scalar_one()
    assert junk_links == [] and merged == 0
    assert unowned == len(JUNK_ANONYMOUS)  # an event whose identifiers are all junk belongs to no profile


def test_after_an_unmerge_each_side_keeps_the_traits_of_its_own_events(mod_engine: sa.Engine) -> None:
    """Traits are stored per member and never copied on merge; the bridging event belongs to the member
    owning its highest-priority identifier, so its traits stay on that side after an unmerge."""
    engine = mod_engine
    pos = source(engine, "pos", "store", trusted=True)
    config = load_profile_config()
    append(
        engine,
        pos,
        "store",
        [
            {"type": "identify", "anonymousId": "um-w", "traits": {"email": "um@example.org", "size": "M"}},
            {"type": "identify", "userId": "um-card", "traits": {"loyalty_card": "LC5500660077", "size": "L"}},
        ],
    )
    process(engine)
    older, newer = profile_of(engine, "email", "um@example.org"), profile_of(engine, "user_id", "um-card")
    append(
        engine,
        pos,
        "store",
        [{"type": "identify", "userId": "um-card", "traits": {"email": "um@example.org", "size": "XL", "vip": True}}],
    )
    process(engine)

    def traits(pid: int) -> dict[str, Any]:
        with db.read(engine) as conn:
            found = identity.cluster(conn=conn, profile_id=pid)
            assert found is not None
            return profiles.traits(conn=conn, member_ids=found.members, config=config)

    assert profile_of(engine, "user_id", "um-card") == older
    merged = traits(older)
    assert (merged["size"], merged["vip"]) == ("XL", True)
    with db.write(engine) as conn:
        pipeline.unmerge(conn=conn, profile_id=older, merged_id=None, actor="test")
    assert traits(older) == {"email": "um@example.org", "size": "M"}
    assert traits(newer) == {"loyalty_card": "LC5500660077", "email": "um@example.org", "size": "XL", "vip": True}
