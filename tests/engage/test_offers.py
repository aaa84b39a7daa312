"""Offers: one evaluation for every channel, redemptions limited by the database under concurrency."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import httpx
import sqlalchemy as sa

from omnijourney.engage import offers
from omnijourney.engage.schemas import OfferIn, RedeemIn
from omnijourney.engage.service import SegmentError
from omnijourney.store import db
from omnijourney.store.base import utcnow
from tests.conftest import World, count
from tests.engage.helpers import create
from tests.identity.helpers import append, process, profile_of, source


def people(engine: sa.Engine, n: int) -> list[int]:
    web = source(engine, "web", "web", False)
    append(engine, web, "web", [{"type": "identify", "userId": f"o-{i}"} for i in range(n)])
    process(engine)
    ids = [profile_of(engine, "user_id", f"o-{i}") for i in range(n)]
    assert all(ids)
    return ids  # type: ignore[return-value]


def put(engine: sa.Engine, **kw) -> None:  # type: ignore[no-untyped-def]
    with db.write(engine) as conn:
        offers.put_offer(conn=conn, offer=OfferIn.model_validate(kw), actor="test", now=utcnow())


def hammer(engine: sa.Engine, key: str, calls: list[tuple[int, str]]) -> list[str]:
    results: list[str] = []
    lock = threading.Lock()
    start = threading.Barrier(len(calls))

    def one(pid: int, idem: str) -> None:
        start.wait()
        try:
            with db.write(engine) as conn:
                offers.redeem(
                    conn=conn,
                    key=key,
                    body=RedeemIn(profile_id=pid, channel="store", idempotency_key=idem),
                    actor="t",
                    now=utcnow(),
                )
            out = "ok"
        except SegmentError as exc:
            out = exc.code
        except sa.exc.IntegrityError:
            out = "integrity"
        except sa.exc.OperationalError:
            out = "busy"
        with lock:
            results.append(out)

    threads = [threading.Thread(target=one, args=c) for c in calls]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def test_concurrent_redemptions_never_exceed_the_limits(engine: sa.Engine) -> None:
    pids = people(engine, 12)
    put(engine, key="first_five", name="First five", max_redemptions=5)
    results = hammer(engine, "first_five", [(p, f"k-{p}") for p in pids])
    assert results.count("ok") == 5
    assert set(results) <= {"ok", "exhausted", "not_eligible", "used_up", "integrity"}
    assert count(engine, "engage_offer_redemptions") == 5
    with db.read(engine) as conn:
        assert offers.get_offer(conn=conn, key="first_five")["redeemed"] == 5
    # one profile, many tills at once: once per profile
    put(engine, key="once_each", name="Once each")
    results = hammer(engine, "once_each", [(pids[0], f"till-{i}") for i in range(6)])
    assert results.count("ok") == 1
    with db.read(engine) as conn:
        n = conn.execute(
            sa.text("SELECT count(*) FROM engage_offer_redemptions WHERE offer_key = 'once_each'")
        ).scalar_one()
    assert n == 1
    # the database itself refuses going over the limit
    with db.write(engine) as conn:
        try:
            with conn.begin_nested():
                conn.execute(sa.text("UPDATE engage_offers SET redeemed = 6 WHERE key = 'first_five'"))
            raise AssertionError("the CHECK constraint did not refuse")
        except sa.exc.IntegrityError:
            pass


def test_retry_is_idempotent_and_limits_per_profile(engine: sa.Engine) -> None:
    (pid,) = people(engine, 1)
    put(engine, key="twice", name="Twice", per_profile_limit=2, max_redemptions=100)

    def redeem(idem: str) -> dict:  # type: ignore[type-arg]
        with db.write(engine) as conn:
            return offers.redeem(
                conn=conn,
                key="twice",
                body=RedeemIn(profile_id=pid, channel="web", idempotency_key=idem),
                actor="t",
                now=utcnow(),
            )

    first = redeem("a")
    again = redeem("a")
    assert again["duplicate"] and again["id"] == first["id"]
    assert redeem("b")["seq"] == 2
    try:
        redeem("c")
        raise AssertionError("a third redemption was accepted")
    except SegmentError as exc:
        assert exc.code == "not_eligible"
    with db.read(engine) as conn:
        assert offers.get_offer(conn=conn, key="twice")["redeemed"] == 2


def test_same_offer_in_every_channel_and_bad_offers(client: httpx.Client, world: World, engine: sa.Engine) -> None:
    (pid,) = people(engine, 1)
    create(engine, "everyone_identified", {"trait": {"key": "nothing", "op": "not_exists"}})
    with db.write(engine) as conn:
        from omnijourney.engage import service
        from tests.engage.helpers import PROFILE_CONFIG

        service.refresh_chunk(conn=conn, after=0, limit=100, now=utcnow(), profile_config=PROFILE_CONFIG)
    marketer, agent = (
        {"Authorization": f"Bearer {world.marketer_token}"},
        {"Authorization": f"Bearer {world.agent_token}"},
    )
    now = datetime.now(UTC)
    bodies = {
        "members_10": {
            "name": "10 % for members",
            "segment": "everyone_identified",
            "priority": 5,
            "benefit": {"discount_percent": 10},
        },
        "email_only": {"name": "E-mail 15 %", "channels": ["email"], "priority": 10},
        "expired": {
            "name": "Old",
            "priority": 99,
            "starts_at": (now - timedelta(days=9)).isoformat(),
            "ends_at": (now - timedelta(days=1)).isoformat(),
        },
        "shoes_only": {"name": "Shoes", "priority": 50, "skus": ["SHOE-42"]},
    }
    for key, body in bodies.items():
        r = client.put(f"/api/offers/{key}", json=body, headers=marketer)
        assert r.status_code == 200, r.text
    before = count(engine, "engage_offers")
    for bad, needle in (
        ({"name": "x", "channels": ["fax"]}, "fax"),
        ({"name": "x", "starts_at": now.isoformat(), "ends_at": (now - timedelta(days=1)).isoformat()}, "ends_at"),
        ({"name": "x", "max_redemptions": 0}, "max_redemptions"),
        ({"name": "x", "segment": "no_such_segment"}, "no_such_segment"),
    ):
        r = client.put("/api/offers/bad_one", json=bad, headers=marketer)
        assert r.status_code == 400, r.text
        assert needle in r.json()["message"]
    assert client.put("/api/offers/bad_one", json={"name": "x"}, headers=agent).status_code == 403
    assert count(engine, "engage_offers") == before

    best = {}
    for channel in ("web", "store", "call_center", "app"):
        r = client.get(f"/api/profiles/{pid}/offers", params={"channel": channel}, headers=agent)
        assert r.status_code == 200, r.text
        best[channel] = r.json()["best"]["key"]
    assert set(best.values()) == {"shoes_only"}  # SKU-less call: a product offer still applies somewhere
    r = client.get(f"/api/profiles/{pid}/offers", params={"channel": "store", "sku": "SOCK-1"}, headers=agent)
    assert [o["key"] for o in r.json()["offers"]] == ["members_10"]
    r = client.get(f"/api/profiles/{pid}/offers", params={"channel": "email", "sku": "SOCK-1"}, headers=agent)
    assert r.json()["best"]["key"] == "email_only"
    r = client.post(
        "/api/offers/members_10/redeem",
        json={"profile_id": pid, "channel": "store", "idempotency_key": "pos-1"},
        headers=agent,
    )
    assert r.status_code == 200, r.text
    # used once: no longer offered, in any channel
    for channel in ("web", "store"):
        r = client.get(f"/api/profiles/{pid}/offers", params={"channel": channel, "sku": "SOCK-1"}, headers=agent)
        assert r.json()["offers"] == []
