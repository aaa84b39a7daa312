"""The profile and identity APIs beyond the seed journey: consent across merges, the changes feed,
conflict review, timeline filters, roles. One database and server per module; each test uses its
own identifiers, and the log is processed by the test (the server runs no processing stage)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from omnijourney.access import service as access
from omnijourney.store import db
from tests.conftest import World
from tests.identity.helpers import append, process, profile_of, source

pytestmark = pytest.mark.server


def ts(day: int, hour: int = 12, minute: int = 0) -> str:
    return f"2026-11-{day:02d}T{hour:02d}:{minute:02d}:00Z"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def consent(anon: str, purpose: str, channel: str, status: str, at: str) -> dict[str, Any]:
    props = {"purpose": purpose, "channel": channel, "status": status}
    return {"type": "track", "anonymousId": anon, "event": "Consent Updated", "properties": props, "timestamp": at}


def current(client: httpx.Client, token: str, pid: int) -> dict[tuple[str, str], str]:
    view = client.get(f"/api/profiles/{pid}", headers=bearer(token))
    assert view.status_code == 200, view.text
    return {(c["purpose"], c["channel"]): c["status"] for c in view.json()["consents"]}


def test_consent_after_a_merge_follows_later_records_and_unmerge_splits_the_ledgers(
    mod_engine: sa.Engine,
    mod_client: httpx.Client,
    mod_world: World,
) -> None:
    engine, client, agent = mod_engine, mod_client, mod_world.agent_token
    pos = source(engine, "pos", "store", trusted=True)
    append(
        engine,
        pos,
        "store",
        [
            {"type": "identify", "anonymousId": "cm-a", "traits": {"email": "petr.cm@example.com"}, "timestamp": ts(1)},
            consent("cm-a", "marketing", "email", "denied", ts(1, 13)),
            consent("cm-a", "analytics", "all", "granted", ts(1, 13)),
            {"type": "identify", "anonymousId": "cm-b", "traits": {"loyalty_card": "LC0099880011"}, "timestamp": ts(2)},
            consent("cm-b", "marketing", "email", "granted", ts(2, 13)),
            consent("cm-b", "analytics", "all", "withdrawn", ts(2, 13)),
        ],
    )
    process(engine)
    a, b = profile_of(engine, "email", "petr.cm@example.com"), profile_of(engine, "loyalty_card", "LC0099880011")
    assert a is not None and b is not None and a != b
    assert current(client, agent, b) == {("marketing", "email"): "granted", ("analytics", "all"): "withdrawn"}

    # the merge: most restrictive per purpose x channel, whichever side it came from
    bridge = {"email": "petr.cm@example.com", "loyalty_card": "LC0099880011"}
    append(engine, pos, "store", [{"type": "identify", "anonymousId": "cm-c", "traits": bridge, "timestamp": ts(3)}])
    process(engine)
    assert profile_of(engine, "loyalty_card", "LC0099880011") == a
    assert current(client, agent, a) == {("marketing", "email"): "denied", ("analytics", "all"): "withdrawn"}

    # a record dated before the merge (arriving late) is folded in before it: still denied
    append(engine, pos, "store", [consent("cm-b", "marketing", "email", "granted", ts(2, 20))])
    process(engine)
    assert current(client, agent, a)[("marketing", "email")] == "denied"

    # a later grant on either member is the customer's latest word: it becomes current (event path)
    append(engine, pos, "store", [consent("cm-b", "marketing", "email", "granted", ts(4))])
    process(engine)
    assert current(client, agent, b) == {("marketing", "email"): "granted", ("analytics", "all"): "withdrawn"}

    # ... and through the API (recorded on the survivor), which the changes feed reports
    since = client.get("/api/profiles/changes", params={"since": 0}, headers=bearer(agent)).json()["next_since"]
    r = client.post(
        f"/api/profiles/{b}/consents",
        json={"purpose": "analytics", "channel": "all", "status": "granted", "evidence": {"form": "kiosk"}},
        headers=bearer(agent),
    )
    assert r.status_code == 201, r.text
    assert {(c["purpose"], c["channel"]): c["status"] for c in r.json()["consents"]} == {
        ("marketing", "email"): "granted",
        ("analytics", "all"): "granted",
    }
    assert current(client, agent, a)[("analytics", "all")] == "granted"
    feed = client.get("/api/profiles/changes", params={"since": since}, headers=bearer(agent)).json()
    assert feed["profile_ids"] == [a] and feed["next_since"] > since
    # continuing from the new cursor: only what changed after it (another customer's event)
    append(
        engine, pos, "store", [{"type": "identify", "anonymousId": "cm-other", "userId": "cm-x", "timestamp": ts(5)}]
    )
    process(engine)
    other = profile_of(engine, "user_id", "cm-x")
    later = client.get("/api/profiles/changes", params={"since": feed["next_since"]}, headers=bearer(agent)).json()
    assert later["profile_ids"] == [other] and later["next_since"] > feed["next_since"]
    idle = client.get("/api/profiles/changes", params={"since": later["next_since"]}, headers=bearer(agent)).json()
    assert idle == {"profile_ids": [], "next_since": later["next_since"]}

    # unmerge: each side as its own ledger says (the API grant was recorded on the survivor)
    r = client.post(f"/api/profiles/{a}/unmerge", headers=bearer(mod_world.admin_token))
    assert r.status_code == 200 and r.json()["restored_id"] == b
    assert current(client, agent, a) == {("marketing", "email"): "denied", ("analytics", "all"): "granted"}
    assert current(client, agent, b) == {("marketing", "email"): "granted", ("analytics", "all"): "withdrawn"}
    with db.read(engine) as conn:  # the ledger only grew: every record is still there
        n = conn.execute(sa.text(f"SELECT count(*) FROM consent_records WHERE profile_id IN ({a}, {b})")).scalar_one()
    assert n == 7


def test_conflicts_are_listed_filtered_and_paged(
    mod_engine: sa.Engine,
    mod_client: httpx.Client,
    mod_world: World,
) -> None:
    engine, client, admin = mod_engine, mod_client, mod_world.admin_token
    web = source(engine, "web", "web", trusted=False)
    append(
        engine,
        web,
        "web",
        [
            {"type": "identify", "anonymousId": "cf-tablet", "userId": "cf-mom", "timestamp": ts(1)},
            {"type": "identify", "anonymousId": "cf-tablet", "userId": "cf-son", "timestamp": ts(2)},
        ],
    )
    process(engine)
    mom, son = profile_of(engine, "user_id", "cf-mom"), profile_of(engine, "user_id", "cf-son")
    assert mom is not None and son is not None and mom != son

    def listed(**params: Any) -> dict[str, Any]:
        r = client.get("/api/identity/conflicts", params=params, headers=bearer(admin))
        assert r.status_code == 200, r.text
        return r.json()

    mine = listed(profile_id=son)["conflicts"]
    got = {(c["kind"], c["id_type"], c["value"], c["profile_id"], c["other_profile_id"]) for c in mine}
    # the tablet may not bring the second login into the first person's profile (two user ids): a
    # veto, and the tablet moves to the person now logged in
    assert got == {("veto", "anonymous_id", "cf-tablet", son, mom), ("moved", "anonymous_id", "cf-tablet", son, mom)}
    assert all(c["event_id"] and c["source_id"] == web and c["detail"] for c in mine)
    assert [c["id"] for c in mine] == sorted((c["id"] for c in mine), reverse=True)  # newest first

    vetoes = listed(kind="veto", profile_id=son)["conflicts"]
    assert vetoes and {c["kind"] for c in vetoes} == {"veto"}
    assert listed(profile_id=999_999_999)["conflicts"] == []

    page1 = listed(profile_id=son, limit=1)
    assert [c["id"] for c in page1["conflicts"]] == [mine[0]["id"]] and page1["next_before"] == mine[0]["id"]
    page2 = listed(profile_id=son, limit=1, before=page1["next_before"])
    assert [c["id"] for c in page2["conflicts"]] == [mine[1]["id"]]
    everything = listed(profile_id=son, limit=len(mine) + 1)
    assert everything["next_before"] is None and len(everything["conflicts"]) == len(mine)

    assert client.get("/api/identity/conflicts", headers=bearer(mod_world.agent_token)).status_code == 403
    assert client.get("/api/identity/conflicts", params={"kind": "nope"}, headers=bearer(admin)).status_code == 422


def test_timeline_filters_by_period_and_event_name(
    mod_engine: sa.Engine,
    mod_client: httpx.Client,
    mod_world: World,
) -> None:
    engine, client, agent = mod_engine, mod_client, mod_world.agent_token
    web = source(engine, "web", "web", trusted=False)
    pos = source(engine, "pos", "store", trusted=True)
    append(
        engine,
        web,
        "web",
        [
            {"type": "identify", "anonymousId": "tl-a", "userId": "tl-u", "timestamp": ts(1)},
            {"type": "track", "anonymousId": "tl-a", "event": "Product Viewed", "timestamp": ts(2)},
            {"type": "track", "anonymousId": "tl-a", "event": "Product Added", "timestamp": ts(3)},
            {"type": "track", "anonymousId": "tl-a", "event": "Product Viewed", "timestamp": ts(4)},
        ],
    )
    append(engine, pos, "store", [{"type": "track", "userId": "tl-u", "event": "Product Viewed", "timestamp": ts(5)}])
    process(engine)
    pid = profile_of(engine, "user_id", "tl-u")

    def names(**params: Any) -> list[tuple[str, str]]:
        r = client.get(f"/api/profiles/{pid}/timeline", params=params, headers=bearer(agent))
        assert r.status_code == 200, r.text
        return [(e["event"] or e["type"], e["timestamp"][:10]) for e in r.json()["events"]]

    assert len(names()) == 5
    assert names(event="Product Viewed") == [
        ("Product Viewed", "2026-11-05"),
        ("Product Viewed", "2026-11-04"),
        ("Product Viewed", "2026-11-02"),
    ]
    assert names(event=["Product Added", "Order Completed"]) == [("Product Added", "2026-11-03")]
    # since is inclusive, until exclusive; a naive time is UTC
    assert names(since=ts(3), until=ts(5)) == [("Product Viewed", "2026-11-04"), ("Product Added", "2026-11-03")]
    assert names(since="2026-11-04T12:00:00") == [("Product Viewed", "2026-11-05"), ("Product Viewed", "2026-11-04")]
    assert names(until="2026-11-02T13:00:00+01:00") == [("identify", "2026-11-01")]  # 12:00 UTC is not before
    assert names(event="Product Viewed", since=ts(3), channel="web") == [("Product Viewed", "2026-11-04")]
    assert names(event="Order Completed") == []
    bad = client.get(f"/api/profiles/{pid}/timeline", params={"since": "yesterday"}, headers=bearer(agent))
    assert bad.status_code == 422


def test_store_staff_reads_profiles_but_cannot_unmerge(
    mod_engine: sa.Engine,
    mod_client: httpx.Client,
    mod_world: World,
) -> None:
    engine, client = mod_engine, mod_client
    pos = source(engine, "pos", "store", trusted=True)
    append(
        engine,
        pos,
        "store",
        [
            {
                "type": "identify",
                "anonymousId": "ss-1",
                "traits": {"email": "staff.case@example.com"},
                "timestamp": ts(1),
            },
            {"type": "identify", "anonymousId": "ss-2", "traits": {"loyalty_card": "LC0011223344"}, "timestamp": ts(2)},
            {
                "type": "identify",
                "anonymousId": "ss-3",
                "traits": {"email": "staff.case@example.com", "loyalty_card": "LC0011223344"},
                "timestamp": ts(3),
            },
        ],
    )
    process(engine)
    pid = profile_of(engine, "email", "staff.case@example.com")
    with db.write(engine) as conn:
        staff = bearer(access.create_token(conn=conn, role="store_staff"))
    for path, params in (
        (f"/api/profiles/{pid}", {}),
        (f"/api/profiles/{pid}/timeline", {}),
        (f"/api/profiles/{pid}/consents", {}),
        ("/api/profiles/lookup", {"type": "loyalty_card", "value": "lc 0011 2233 44"}),
        ("/api/profiles/search", {"q": "staff.case@"}),
        ("/api/profiles/changes", {}),
    ):
        r = client.get(path, params=params, headers=staff)
        assert r.status_code == 200, (path, r.text)
    assert client.get(f"/api/profiles/{pid}", headers=staff).json()["merged_ids"]
    r = client.post(f"/api/profiles/{pid}/unmerge", headers=staff)
    assert r.status_code == 403
    assert client.get(f"/api/profiles/{pid}", headers=staff).json()["merged_ids"]  # refused means unchanged
