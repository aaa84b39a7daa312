"""The demo retailer: a deterministic world that follows the brief, loaded through the real HTTP API."""

from __future__ import annotations

import copy
import io
import json
import re
import stat
from collections import defaultdict
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import sqlalchemy as sa
from rich.console import Console

from omnijourney.access import service as access
from omnijourney.commerce import events as commerce_events
from omnijourney.config import IngestLimits, Settings
from omnijourney.demo import runner
from omnijourney.demo.world import JUNK_BIRTHDAY, JUNK_EMAIL, JUNK_PHONE, DemoWorld, build_world
from omnijourney.engage import service as engage_service
from omnijourney.identity.normalise import normalise_phone
from omnijourney.ingest.schemas import ValidMessage, validate_message
from omnijourney.ingest.spec import CHANNELS
from omnijourney.pipeline import service as pipeline_service
from omnijourney.service import service as service_service
from omnijourney.store import db
from tests.conftest import count, free_port

ANCHOR = datetime(2025, 6, 1, tzinfo=UTC)


@pytest.fixture(scope="module")
def world() -> DemoWorld:
    return build_world(customers=400, seed=7, anchor=ANCHOR)


def shop_events(engine: sa.Engine) -> int:
    """Events of the demo's sources (not those the commerce API, segment changes or journeys appended)."""
    from omnijourney.engage import schedule as journeys

    with db.read(engine) as conn:
        internal = commerce_events.internal_source_id(conn, create=False) or -1
        engage = engage_service.engage_source_id(conn) or -1
        sent = journeys.journey_source_id(conn) or -1
        return int(
            conn.execute(
                sa.text("SELECT count(*) FROM events WHERE source_id NOT IN (:s, :e, :j)"),
                {"s": internal, "e": engage, "j": sent},
            ).scalar_one()
        )


def commerce_steps(engine: sa.Engine) -> list[tuple[str, int | None]]:
    """(event, profile) of every event the commerce API appended, in log order."""
    with db.read(engine) as conn:
        internal = commerce_events.internal_source_id(conn, create=False) or -1
        return [
            (r[0], r[1])
            for r in conn.execute(
                sa.text(
                    "SELECT e.event, pe.profile_id FROM events e LEFT JOIN profile_events pe ON pe.event_id = e.id "
                    "WHERE e.source_id = :s ORDER BY e.id"
                ),
                {"s": internal},
            )
        ]


def ts(msg: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(msg["timestamp"].replace("Z", "+00:00"))


def tracks(world: DemoWorld, source: str, event: str) -> list[dict[str, Any]]:
    return [m for m in world.messages[source] if m["type"] == "track" and m["event"] == event]


# --------------------------------------------------------------------------- determinism


def test_same_seed_same_world_and_a_smaller_world_is_a_subset() -> None:
    a = build_world(customers=80, seed=3, anchor=ANCHOR)
    b = build_world(customers=80, seed=3, anchor=ANCHOR)
    assert a.messages == b.messages
    assert a.customers == b.customers

    other = build_world(customers=80, seed=4, anchor=ANCHOR)
    assert other.messages != a.messages
    assert {c.user_id for c in other.customers}.isdisjoint({c.user_id for c in a.customers})

    # customer i's journeys do not depend on the size of the world
    small = build_world(customers=40, seed=3, anchor=ANCHOR)
    big = {m["messageId"]: m for m in a.iter_messages()}
    assert all(big.get(m["messageId"]) == m for m in small.iter_messages())


def test_a_later_anchor_shifts_times_but_keeps_the_same_messages() -> None:
    a = build_world(customers=30, seed=5, anchor=ANCHOR)
    b = build_world(customers=30, seed=5, anchor=ANCHOR + timedelta(days=1))
    ids_a = {m["messageId"]: ts(m) for m in a.iter_messages()}
    ids_b = {m["messageId"]: ts(m) for m in b.iter_messages()}
    assert ids_a.keys() == ids_b.keys()
    assert all(ids_b[k] - ids_a[k] == timedelta(days=1) for k in ids_a)


# --------------------------------------------------------------------------- validity


def test_every_message_passes_validation_and_lies_in_the_window(world: DemoWorld) -> None:
    limits = IngestLimits()
    seen: set[str] = set()
    for spec in world.sources:
        assert spec.channel in CHANNELS
        msgs = world.messages[spec.name]
        assert msgs, f"source {spec.name} has no messages"
        assert [m["timestamp"] for m in msgs] == sorted(m["timestamp"] for m in msgs)
        for m in msgs:
            assert m["messageId"] not in seen
            seen.add(m["messageId"])
            result = validate_message(
                copy.deepcopy(m),
                default_type=None,
                source_channel=spec.channel,
                received_at=datetime.now(UTC),
                batch_sent_at=None,
                client_ip=None,
                limits=limits,
            )
            assert isinstance(result, ValidMessage), (spec.name, m, result)
            assert world.anchor - timedelta(days=90) <= result.timestamp < world.anchor
            assert result.channel == spec.channel
    assert len(seen) == world.message_count


def test_sources_catalog_locations_and_customers(world: DemoWorld) -> None:
    assert {s.name: (s.channel, s.trusted) for s in world.sources} == {
        "web": ("web", False),
        "app": ("app", False),
        "pos": ("store", True),
        "chat": ("chat", True),
        "call_center": ("call_center", True),
        "email": ("email", True),
        "ads": ("ads", False),
    }
    catalog = {p.product_id: p for p in world.catalog}
    assert 55 <= len(catalog) <= 70
    assert len({p.sku for p in world.catalog}) == len(catalog)
    assert all(acc in catalog for p in world.catalog for acc in p.accessories)
    categories = {p.category for p in world.catalog}
    assert {"Running Shoes", "Socks", "Insoles", "Phones", "Phone Cases", "Chargers", "Bottles"} <= categories
    shoe = next(p for p in world.catalog if p.category == "Running Shoes")
    assert {"Socks", "Insoles"} <= {catalog[a].category for a in shoe.accessories}
    phone = next(p for p in world.catalog if p.category == "Phones")
    assert {"Phone Cases", "Chargers"} <= {catalog[a].category for a in phone.accessories}

    kinds = {loc.kind for loc in world.locations}
    assert kinds == {"store", "warehouse"}
    assert {loc.city for loc in world.locations if loc.kind == "store"} == {
        "Praha",
        "Brno",
        "Ostrava",
        "Warszawa",
        "Kraków",
    }
    assert "store-praha-1" in {loc.location_id for loc in world.locations}

    people = world.customers
    assert len(people) == 400
    for field in ("user_id", "email", "phone"):
        assert len({getattr(c, field) for c in people}) == len(people), field
    cards = [c.loyalty_card for c in people if c.loyalty_card]
    assert len(set(cards)) == len(cards) and len(cards) > 100
    assert all(re.fullmatch(r"LC\d{10}", card) for card in cards)
    assert all(re.fullmatch(r"\+(420\d{9}|48\d{9})", c.phone) for c in people)
    # every demo phone is a valid number (ingestion links only those), hero included
    assert all(normalise_phone(c.phone, c.country) == c.phone for c in people)
    assert all(c.phone.startswith("+420" if c.country == "CZ" else "+48") for c in people)
    assert {c.country for c in people} == {"CZ", "PL"}
    assert all(c.preferred_store.startswith("store-") for c in people)
    assert len({c.persona for c in people}) == 5


# --------------------------------------------------------------------------- the brief's scenarios


def test_ad_click_anonymous_mobile_cart_then_desktop_login_and_order(world: DemoWorld) -> None:
    """Scenario 1: the same cart_id, first anonymous on the phone, then ordered by a signed-in customer."""
    ad_clicks = {m["anonymousId"]: m for m in tracks(world, "ads", "Ad Clicked")}
    anonymous_adds = {
        m["properties"]["cart_id"]: m
        for m in tracks(world, "web", "Product Added")
        if "userId" not in m and m["context"]["device"]["type"] == "mobile"
    }
    stories = []
    for order in tracks(world, "web", "Order Completed"):
        add = anonymous_adds.get(order["properties"].get("cart_id"))
        if add is None or "userId" not in order or ts(order) <= ts(add):
            continue
        if order["anonymousId"] == add["anonymousId"]:
            continue  # signed in on the phone itself to check out
        assert order["context"]["device"]["type"] == "desktop"
        stories.append((add, order))
    assert len(stories) >= 5
    from_ads = [(add, order) for add, order in stories if add["anonymousId"] in ad_clicks]
    assert from_ads
    add, order = from_ads[0]
    click = ad_clicks[add["anonymousId"]]
    assert click["context"]["campaign"]["source"] in {"instagram", "facebook", "google"}
    logins = [
        m
        for m in world.messages["web"]
        if m["type"] == "identify" and m.get("userId") == order["userId"] and m["anonymousId"] == order["anonymousId"]
    ]
    assert logins and logins[0]["traits"]["email"] and logins[0]["traits"]["phone"].startswith("+")
    cart_views = [
        m for m in tracks(world, "web", "Cart Viewed") if m["properties"]["cart_id"] == order["properties"]["cart_id"]
    ]
    assert any(m.get("userId") == order["userId"] for m in cart_views)
    props = order["properties"]
    assert props["order_id"] and props["products"] and props["currency"] in {"CZK", "EUR"}
    assert props["revenue"] > 0 and props["fulfilment"] in {"click_and_collect", "ship"}


def test_click_and_collect_is_made_ready_and_picked_up_at_the_store(world: DemoWorld) -> None:
    """Scenario 2."""
    online = {
        m["properties"]["order_id"]: m
        for source in ("web", "app")
        for m in tracks(world, source, "Order Completed")
        if m["properties"]["fulfilment"] == "click_and_collect"
    }
    assert online and all(m["properties"]["store_id"].startswith("store-") for m in online.values())
    ready = {m["properties"]["order_id"]: m for m in tracks(world, "pos", "Order Ready for Pickup")}
    picked = {m["properties"]["order_id"]: m for m in tracks(world, "pos", "Order Picked Up")}
    collected = [oid for oid in online if oid in ready and oid in picked]
    assert len(collected) >= 10
    for oid in collected:
        order, r, p = online[oid], ready[oid], picked[oid]
        assert ts(order) < ts(r) < ts(p)
        assert order["properties"]["store_id"] == r["properties"]["store_id"] == p["properties"]["store_id"]
        assert p["userId"] == order["userId"]
    # staff offer matching accessories at pickup
    assert any(p["properties"]["accessories_offered"] for p in picked.values())
    assert set(ready) <= set(online) and set(picked) <= set(ready)
    assert len(picked) < len(ready) or len(online) > len(ready)  # not everything is (yet) collected


def test_support_chat_with_csat_and_a_call_the_next_day_about_the_same_order(world: DemoWorld) -> None:
    """Scenario 3, including the "lost context" case."""
    started = tracks(world, "chat", "Conversation Started")
    assert started
    conversations = {m["properties"]["conversation_id"] for m in started}
    authors = {m["properties"]["author"] for m in tracks(world, "chat", "Message Sent")}
    assert authors == {"customer", "bot", "agent"}
    assert {m["properties"]["conversation_id"] for m in tracks(world, "chat", "Conversation Resolved")} == conversations
    csat = [m for m in tracks(world, "chat", "Survey Responded") if m["properties"]["survey_type"] == "csat"]
    assert csat and {m["properties"]["score"] for m in csat} <= set(range(1, 6))

    calls = tracks(world, "call_center", "Call Completed")
    lost_context = [
        (chat, call)
        for chat in started
        for call in calls
        if call["properties"].get("order_id") == chat["properties"]["order_id"]
        and call.get("userId") == chat.get("userId")
        and timedelta(0) < ts(call) - ts(chat) <= timedelta(hours=48)
    ]
    assert len(lost_context) >= 2
    assert all(call["properties"]["notes"] for _chat, call in lost_context)
    nps = [m for m in tracks(world, "call_center", "Survey Responded") if m["properties"]["survey_type"] == "nps"]
    assert nps and {m["properties"]["score"] for m in nps} <= set(range(11))


def test_store_visits_with_loyalty_card_orders_and_points(world: DemoWorld) -> None:
    """Scenario 4: known customers by userId + card; store-only members by their card alone."""
    identifies = [m for m in world.messages["pos"] if m["type"] == "identify" and "loyalty_card" in m["traits"]]
    assert any("userId" in m for m in identifies) and any("userId" not in m for m in identifies)
    visits = tracks(world, "pos", "Store Visited")
    assert visits and all(m["properties"]["store_id"].startswith("store-") for m in visits)
    pos_orders = [m for m in tracks(world, "pos", "Order Completed")]
    assert pos_orders and all(m["properties"]["order_id"].startswith("POS-") for m in pos_orders)
    assert all(m["properties"]["fulfilment"] == "in_store" for m in pos_orders)
    points = tracks(world, "pos", "Loyalty Points Earned")
    order_ids = {m["properties"]["order_id"] for m in pos_orders}
    assert points and all(m["properties"]["order_id"] in order_ids and m["properties"]["points"] >= 0 for m in points)


def test_some_customers_restock_consumable_sports_nutrition(world: DemoWorld) -> None:
    """Engage's "buy again" has something to learn: the same consumable in several orders of one customer."""
    from omnijourney.demo.commerce import CONSUMABLE_CATEGORIES

    assert "Sports Nutrition" in CONSUMABLE_CATEGORIES
    orders: dict[tuple[str, str], set[str]] = {}
    for source in ("web", "app"):
        for m in tracks(world, source, "Order Completed"):
            for line in m["properties"]["products"]:
                if line["category"] == "Sports Nutrition":
                    orders.setdefault((m["userId"], line["sku"]), set()).add(m["properties"]["order_id"])
    assert sum(len(ids) >= 2 for ids in orders.values()) >= 3


def test_returns_requested_online_received_at_a_store_and_refunded(world: DemoWorld) -> None:
    """Scenario 5: return anywhere."""
    requested = {
        m["properties"]["order_id"]: m for source in ("web", "app") for m in tracks(world, source, "Return Requested")
    }
    received = {m["properties"]["order_id"]: m for m in tracks(world, "pos", "Return Received")}
    refunded = {m["properties"]["order_id"]: m for m in tracks(world, "pos", "Order Refunded")}
    complete = [oid for oid in requested if oid in received and oid in refunded]
    assert len(complete) >= 3
    for oid in complete:
        assert ts(requested[oid]) < ts(received[oid]) <= ts(refunded[oid])
        assert received[oid]["properties"]["store_id"]
    assert any(received[oid]["properties"]["store_id"].startswith("store-") for oid in complete)
    assert set(refunded) == set(received)


def test_email_campaigns_personalised_emails_and_app_sessions(world: DemoWorld) -> None:
    """Scenario 6."""
    delivered = tracks(world, "email", "Email Delivered")
    opened = tracks(world, "email", "Email Opened")
    clicked = tracks(world, "email", "Email Link Clicked")
    assert len(delivered) > len(opened) > len(clicked) > 0
    assert all(m["context"]["traits"]["email"] for m in delivered)
    personalised = [m for m in delivered if m["properties"].get("recommended_products")]
    assert personalised
    # clicks lead to the shop with the e-mail's UTM
    assert any(m["context"].get("campaign", {}).get("medium") == "email" for m in world.messages["web"])

    screens = [m for m in world.messages["app"] if m["type"] == "screen"]
    assert screens
    views = tracks(world, "app", "Product Viewed")
    assert views and all(m["context"]["device"]["type"] in {"ios", "android"} for m in views)
    assert all(m["context"]["app"]["version"] and m["context"]["os"]["name"] for m in views)


def test_identity_edge_cases_shared_tablet_and_junk_identifiers(world: DemoWorld) -> None:
    users_by_anonymous: dict[str, set[str]] = defaultdict(set)
    for m in world.messages["web"]:
        if m["type"] == "identify" and "userId" in m:
            users_by_anonymous[m["anonymousId"]].add(m["userId"])
    shared = [anon for anon, users in users_by_anonymous.items() if len(users) > 1]
    assert len(shared) >= 2  # family tablets

    junk_emails = {
        m["anonymousId"]
        for m in world.messages["web"]
        if m["type"] == "identify" and m["traits"].get("email") == JUNK_EMAIL
    }
    assert len(junk_emails) >= 2  # different people, one placeholder address
    assert any(m["type"] == "identify" and m["traits"].get("phone") == JUNK_PHONE for m in world.messages["pos"])
    assert any(m["type"] == "identify" and m["traits"].get("birthday") == JUNK_BIRTHDAY for m in world.messages["pos"])


def test_drop_offs_and_single_versus_multichannel_customers(world: DemoWorld) -> None:
    web = world.counts_by_event()
    assert web["Product Viewed"] > web["Product Added"] > web["Checkout Started"]
    online_orders = len(tracks(world, "web", "Order Completed")) + len(tracks(world, "app", "Order Completed"))
    assert 0 < online_orders < web["Checkout Started"]
    channels: dict[str, set[str]] = defaultdict(set)
    by_name = {s.name: s.channel for s in world.sources}
    for spec in world.sources:
        for m in world.messages[spec.name]:
            if "userId" in m:
                channels[m["userId"]].add(by_name[spec.name])
    sizes = [len(v) for v in channels.values()]
    assert sizes.count(1) >= 20
    assert sum(1 for n in sizes if n >= 4) >= 20


def test_golden_path_customer(world: DemoWorld) -> None:
    hero = world.hero
    assert hero is not None and hero.name == "Jana Nováková"
    mine = sorted(
        (m for m in world.iter_messages() if m.get("userId") == hero.user_id),
        key=lambda m: m["timestamp"],
    )
    events = [m.get("event") for m in mine if m["type"] == "track"]
    for expected in (
        "Order Completed",
        "Order Ready for Pickup",
        "Order Picked Up",
        "Conversation Started",
        "Survey Responded",
        "Email Link Clicked",
        "Store Visited",
        "Loyalty Points Earned",
    ):
        assert expected in events, expected
    # the Instagram ad was clicked on the phone she later signed in on
    anonymous_ids = {m["anonymousId"] for m in mine if "anonymousId" in m}
    clicks = [m for m in tracks(world, "ads", "Ad Clicked") if m["anonymousId"] in anonymous_ids]
    assert clicks and clicks[0]["context"]["campaign"]["source"] == "instagram"
    # yesterday's chat (the transcript the agent reads on the 360 page): started and resolved the day before
    yesterday = (world.anchor - timedelta(days=1)).date()
    chats = [m for m in mine if m.get("event") == "Conversation Started" and ts(m).date() == yesterday]
    assert len(chats) == 1 and chats[0]["properties"]["topic"] == "product_setup"
    conv = chats[0]["properties"]["conversation_id"]
    said = [m["properties"] for m in mine if m.get("event") == "Message Sent"]
    said = [p for p in said if p["conversation_id"] == conv]
    assert [p["author"] for p in said] == ["customer", "bot", "agent", "customer", "agent"]
    assert "Forerunner 265" in said[0]["text"]


# --------------------------------------------------------------------------- the runner


def test_post_batch_honours_retry_after_and_counts_rejections() -> None:
    calls: list[int] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(1)
        if len(calls) == 1:
            return httpx.Response(429, headers={"Retry-After": "0.1"}, json={"error": "overloaded"})
        if len(calls) == 2:
            return httpx.Response(503, headers={"Retry-After": "0.1"}, json={"error": "processing_lag"})
        body = orjson.loads(request.content)
        n = len(body["batch"])
        assert request.headers["authorization"].startswith("Basic ")
        return httpx.Response(
            200, json={"success": True, "accepted": n - 1, "rejected": 1, "errors": [{"field": "f", "message": "m"}]}
        )

    with httpx.Client(base_url="http://demo.invalid", transport=httpx.MockTransport(handler)) as client:
        body = orjson.dumps({"batch": [{"type": "track"}] * 3})
        assert runner.post_batch(client, "key", body, 3) == (2, 1, "f: m")
    assert len(calls) == 3

    refused = httpx.MockTransport(lambda request: httpx.Response(400, json={"error": "invalid_message"}))
    with httpx.Client(base_url="http://demo.invalid", transport=refused) as client:
        accepted, rejected, error = runner.post_batch(client, "key", b'{"batch": []}', 5)
    assert (accepted, rejected) == (0, 5) and error and error.startswith("HTTP 400")


def test_tokens_are_created_once_and_recreated_when_the_database_was_reset(engine: sa.Engine, tmp_path) -> None:
    first = runner.ensure_credentials(engine, tmp_path)
    assert first.created and set(first.tokens) == set(access.ROLES)
    runner._write_credentials(first, {}, "http://127.0.0.1:1")
    again = runner.ensure_credentials(engine, tmp_path)
    assert not again.created and again.tokens == first.tokens

    stale = {"tokens": {role: "oj_not-a-token" for role in access.ROLES}}
    (tmp_path / runner.CREDENTIALS_FILE).write_text(json.dumps(stale))
    fresh = runner.ensure_credentials(engine, tmp_path)
    assert fresh.created and fresh.tokens != first.tokens


@pytest.mark.server
def check_service(engine: sa.Engine, output: str) -> None:
    """The demo leaves conversations behind: chats with their transcripts and CSAT, calls the next day
    flagged as lost context, all on the customers' profiles."""
    with db.read(engine) as conn:
        o = service_service.overview(conn=conn)
        chats = conn.execute(
            sa.text("SELECT count(*) FROM service_conversations WHERE channel = 'chat' AND message_count = 5")
        ).scalar_one()
        orphans = conn.execute(
            sa.text("SELECT count(*) FROM service_conversations WHERE profile_id IS NULL")
        ).scalar_one()
        lost = conn.execute(
            sa.text(
                "SELECT c.channel, p.channel FROM service_conversations c "
                "JOIN service_conversations p ON p.id = c.previous_conversation_id WHERE c.lost_context"
            )
        ).all()
        rated = conn.execute(sa.text("SELECT count(*) FROM service_conversations WHERE csat IS NOT NULL")).scalar()
        example = service_service.conversation_view(conn=conn, conversation_id=o["lost_context_example"])
    assert o["conversations"] > 0 and chats > 0 and rated > 0
    assert set(o["by_channel"]) <= {"chat", "phone"} and o["by_channel"]["phone"] > 0
    assert orphans == 0  # every chat and call found its customer
    # the demo's customer 1 calls the day after a chat that did not settle it
    assert o["lost_context"] >= 1 and all(a != b for a, b in lost)
    assert example is not None and example["previous_conversation"] is not None
    assert f"service: {o['conversations']} conversations" in output


def test_run_demo_through_the_api_twice_stores_every_message_exactly_once(
    settings: Settings, engine: sa.Engine
) -> None:
    world = build_world(customers=60, seed=11, anchor=ANCHOR)
    out = io.StringIO()
    console = Console(file=out, width=140)
    first = runner.run_demo(
        settings=replace(settings, port=free_port()),
        customers=60,
        seed=11,
        serve_after=False,
        console=console,
        anchor=ANCHOR,
    )
    assert first.sent == first.accepted == world.message_count
    assert first.rejected == 0
    assert first.new_events == first.stored_events == world.message_count
    assert shop_events(engine) == world.message_count
    assert count(engine, "dead_letters") == 0
    with db.read(engine) as conn:
        assert pipeline_service.lag(conn=conn) == 0
        internal = {commerce_events.SOURCE_NAME, engage_service.SOURCE_NAME, "omnijourney:journeys"}
        sources = {s.name: s for s in access.list_sources(conn=conn) if s.name not in internal}
    assert {name: s.channel for name, s in sources.items()} == {s.name: s.channel for s in world.sources}
    assert sources["pos"].trusted and not sources["web"].trusted

    path = settings.data_dir / runner.CREDENTIALS_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    saved = json.loads(path.read_text())
    assert set(saved["tokens"]) == set(access.ROLES)
    assert {name: v["write_key"] for name, v in saved["sources"].items()} == {
        name: s.write_key for name, s in sources.items()
    }
    with db.read(engine) as conn:
        admin = access.principal_for_token(conn=conn, token=saved["tokens"]["admin"])
    assert admin is not None and admin.role == "admin"
    first_output = out.getvalue()
    assert saved["tokens"]["admin"] in first_output
    # the demo exports the event lake exactly once and shows the stage funnel from it
    from omnijourney.analytics.engine import read_events

    logged = count(engine, "events")  # the shops' events and those of the commerce, engage and service APIs
    assert f"event lake: {logged} events exported" in first_output
    assert "journey stages" in first_output and "awareness" in first_output
    assert "attribution of purchases" in first_output and "gap report" in first_output and "  1. " in first_output
    assert read_events(settings.data_dir).num_rows == logged
    # the lake's segment and conversation snapshots, and returns carrying their order
    import pyarrow.parquet as pq

    dims = settings.data_dir / "lake" / "dimensions"
    assert pq.read_table(dims / "segment_members.parquet").num_rows > 0
    assert pq.read_table(dims / "conversations.parquet").num_rows > 0
    lake_rows = read_events(settings.data_dir).select(["event", "order_id"]).to_pylist()
    returns = [r for r in lake_rows if r["event"] in ("Return Requested", "Return Received")]
    assert returns and all(r["order_id"] for r in returns)
    # the journey analyses have something to show on the demo world (demo summary and dashboard panels)
    assert "golden paths" in first_output and "top path to purchase" in first_output
    journeys = journey_results(settings.data_dir)
    assert journeys["retention"]["cohorts"] and journeys["lifecycle"]["periods"]
    assert journeys["paths"]["sankey"]["links"] and journeys["paths"]["top_paths_to_purchase"]
    golden = journeys["golden-paths"]["paths"]
    assert all(p["entered"] > 0 for p in golden) and any(p["followers"] > 0 for p in golden)
    assert all(saved["tokens"][role] not in first_output for role in ("marketer", "agent", "store_staff"))
    tokens = count(engine, "api_tokens")
    # orders placed through the commerce API, each step on the customer's timeline
    ours = commerce_steps(engine)
    waiting = re.search(r"(\d+) click & collect orders wait at the stores today", first_output)
    pickups_today = int(waiting.group(1)) if waiting else 0
    assert pickups_today > 0  # the store staff's queue in the console is not empty
    assert [e for e, _ in ours].count("Order Completed") == 3 + pickups_today
    for step in ("Order Ready for Pickup", "Order Picked Up", "Order Shipped", "Order Cancelled", "Order Refunded"):
        assert step in {e for e, _ in ours}, step
    assert all(pid is not None for _, pid in ours)  # every one resolved to a profile
    with db.read(engine) as conn:  # the cashier's placeholder birthday is refused by its type, and kept for review
        refused = conn.execute(sa.text("SELECT key FROM profile_traits WHERE key LIKE '%birthday'")).scalars().all()
    assert refused and set(refused) == {"$rejected:birthday"}
    with db.read(engine) as conn:
        origins = dict(conn.execute(sa.text("SELECT origin, count(*) FROM commerce_orders GROUP BY origin")).all())
        carts = conn.execute(sa.text("SELECT count(*) FROM commerce_carts")).scalar_one()
        # the parcel-locker order: partly paid with points, returned by mail at the warehouse
        by_mail = conn.execute(
            sa.text("SELECT count(*) FROM commerce_returns WHERE channel = 'other' AND location = 'warehouse-1'")
        ).scalar_one()
        discounted = conn.execute(
            sa.text("SELECT count(*) FROM commerce_orders WHERE origin = 'omnijourney' AND points_redeemed > 0")
        ).scalar_one()
    assert origins["omnijourney"] == 3 + pickups_today and origins["event"] > 0 and carts > 0
    assert by_mail == 1 and discounted == 1
    # engage: the model is trained, the demo segments exist and have members, entries are on timelines
    with db.read(engine) as conn:
        segments = {s["key"]: s["count"] for s in engage_service.list_segments(conn=conn)}
        trained = conn.execute(sa.text("SELECT count(*) FROM engage_reco_models")).scalar_one()
        entered = conn.execute(
            sa.text("SELECT count(*) FROM profile_events WHERE event = 'Segment Entered'")
        ).scalar_one()
    assert {"repeat_buyers", "cart_abandoners", "lapsing_buyers"} <= set(segments)
    assert trained == 1 and sum(segments.values()) > 0 and entered >= sum(segments.values())
    check_service(engine, first_output)
    check_store_tasks(settings, engine, saved, first_output)

    out.seek(0)
    out.truncate()
    second = runner.run_demo(
        settings=replace(settings, port=free_port()),
        customers=60,
        seed=11,
        serve_after=False,
        console=console,
        anchor=ANCHOR,
    )
    assert second.sent == second.accepted == world.message_count
    assert second.new_events == 0 and second.stored_events == world.message_count
    assert shop_events(engine) == world.message_count
    assert commerce_steps(engine) == ours  # the demo orders are placed once
    assert count(engine, "api_tokens") == tokens
    assert count(engine, "sources") == len(world.sources) + 3  # + the internal commerce, engage and journeys sources
    assert json.loads(path.read_text())["tokens"] == saved["tokens"]
    assert saved["tokens"]["admin"] not in out.getvalue()
    assert "event lake: 0 events exported" in out.getvalue()
    assert "the lake is unchanged since the last run" in out.getvalue()  # and its analyses are not rerun
    assert "journey stages" not in out.getvalue()
    assert read_events(settings.data_dir).num_rows == logged == count(engine, "events")


def check_store_tasks(settings: Settings, engine: sa.Engine, saved: dict[str, Any], output: str) -> None:
    """Today's click & collect orders gave their stores a task (the demo's own journey): Praha's staff
    see theirs on the store page."""
    from fastapi.testclient import TestClient

    from omnijourney.app import create_app
    from tests.web.helpers import login

    assert "store tasks from journeys, open on the console's store page" in output
    app = create_app(settings, engine=engine, migrate_db=False)
    with TestClient(app) as c:
        password = saved["console_users"]["store.praha"]["password"]
        assert login(c, "store.praha", password).status_code == 303  # type: ignore[arg-type]
        html = c.get("/console/store").text
    tasks = html.split('data-testid="store-tasks"', 1)[1].split("</table>", 1)[0]
    assert "pick matching accessories to offer at pickup" in tasks and "data-task=" in tasks


def journey_results(data_dir: Path) -> dict[str, Any]:
    """Retention, lifecycle, channel paths and golden paths over a lake, with their default options."""
    from omnijourney.analytics import filters as flt
    from omnijourney.analytics import service as analytics

    now = flt.to_ms(datetime.now(UTC))
    return {
        name: analytics.run(data_dir=data_dir, analysis=name, filters=flt.Filters(), as_of_ms=now)
        for name in ("retention", "lifecycle", "paths", "golden-paths")
    }
