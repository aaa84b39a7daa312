"""The fast serving path (model cached in memory, products and stock loaded lazily for the best
candidates only) answers exactly what ranking the whole pool with the whole catalog answers."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa

from omnijourney.access.service import create_source
from omnijourney.commerce.models import Location, Order, OrderLine, Product, RelatedProduct, Stock
from omnijourney.engage import recommend
from omnijourney.engage.config import default_config
from omnijourney.identity import service as identity
from omnijourney.identity.models import Profile, ProfileEvent
from omnijourney.ingest.models import Event
from omnijourney.store import db

CONFIG = default_config().recommendations
NOW = datetime(2026, 6, 1, tzinfo=UTC)
SKUS = [f"S{i:03d}" for i in range(60)]


def _world(engine: sa.Engine) -> None:
    rng = random.Random(11)
    with db.write(engine) as conn:
        src = create_source(conn=conn, name="t-web", channel="web", trusted=False)
        conn.execute(
            sa.insert(Product.__table__),
            [
                {
                    "sku": s,
                    "product_id": f"P{i // 2}" if i < 20 else s,  # variants share a product
                    "name": f"Item {i}",
                    "category": f"c{i % 6}",
                    "attributes": {"consumable": True} if i % 9 == 0 else {},
                    "active": i % 13 != 5,
                    "updated_at": NOW,
                }
                for i, s in enumerate(SKUS)
            ],
        )
        conn.execute(
            sa.insert(RelatedProduct.__table__),
            [
                {"sku": s, "related_sku": o, "kind": "accessory", "quantity": 1}
                for s in SKUS[::3]
                for o in {rng.choice(SKUS) for _ in range(3)} - {s}
            ],
        )
        conn.execute(
            sa.insert(Location.__table__),
            [
                {
                    "code": "S1",
                    "name": "S1",
                    "kind": "store",
                    "address": {},
                    "opening_hours": {},
                    "channels": [],
                    "updated_at": NOW,
                }
            ],
        )
        conn.execute(
            sa.insert(Stock.__table__),
            [{"sku": s, "location": "S1", "on_hand": int(rng.random() < 0.3), "updated_at": NOW} for s in SKUS],
        )
        conn.execute(
            sa.insert(Profile.__table__),
            [
                {"id": p, "created_at": NOW, "canonical_id": p - 1 if p % 7 == 0 else p}  # some merged pairs
                for p in range(1, 41)
            ],
        )
        orders, lines, events, timeline = [], [], [], []
        for p in range(1, 41):
            for _ in range(rng.randrange(0, 4)):
                oid = len(orders) + 1
                at = NOW - timedelta(days=rng.uniform(1, 90))
                orders.append(
                    {
                        "id": oid,
                        "order_ref": f"o{oid}",
                        "profile_id": p,
                        "origin": "event",
                        "channel": "web",
                        "fulfilment": "external",
                        "status": "paid",
                        "currency": "CZK",
                        "total_minor": 100,
                        "placed_at": at,
                        "updated_at": at,
                    }
                )
                for n, s in enumerate({rng.choice(SKUS[: 10 + p]) for _ in range(2)}, start=1):
                    lines.append({"order_id": oid, "line_no": n, "sku": s, "quantity": 1, "unit_price_minor": 100})
            for _ in range(rng.randrange(0, 8)):
                eid = len(events) + 1
                at = NOW - timedelta(hours=rng.uniform(1, 900))
                events.append(
                    {
                        "id": eid,
                        "source_id": src.id,
                        "message_id": f"v{eid}",
                        "type": "track",
                        "event": "Product Viewed",
                        "anonymous_id": f"a{p}",
                        "channel": "web",
                        "timestamp": at,
                        "received_at": at,
                        "context": {},
                        "payload": {"properties": {"sku": rng.choice(SKUS)}},
                    }
                )
                timeline.append(
                    {"event_id": eid, "profile_id": p, "timestamp": at, "channel": "web", "event": "Product Viewed"}
                )
        conn.execute(sa.insert(Order.__table__), orders)
        conn.execute(sa.insert(OrderLine.__table__), lines)
        conn.execute(sa.insert(Event.__table__), events)
        conn.execute(sa.insert(ProfileEvent.__table__), timeline)
        recommend.train(conn=conn, config=CONFIG, now=NOW)


def _reference(conn: sa.Connection, pid: int, store: str | None, limit: int, model: recommend.Model) -> list[tuple]:
    cluster = identity.cluster(conn=conn, profile_id=pid)
    assert cluster is not None
    history = recommend.load_purchases(conn, cluster.members)
    items = recommend.rank(
        bought=[p.sku for p in history],
        history=history,
        viewed=[v.sku for v in recommend.load_views(conn, cluster.members, limit=CONFIG.recent_views * 5)],
        model=model,
        relations=recommend.load_relations(conn),
        products=recommend.load_products(conn, CONFIG),
        config=CONFIG,
        allowed=recommend.available_at(conn, store, SKUS) if store else None,
        limit=limit,
    )
    return [(c.sku, round(c.score, 6), c.reason[1], c.reason[2]) for c in items]


def test_fast_path_equals_ranking_the_whole_catalog(engine: sa.Engine) -> None:
    _world(engine)
    with db.read(engine) as conn:
        model = recommend.build_model(recommend.load_purchases(conn), recommend.load_views(conn), CONFIG)
        compared = 0
        for pid in range(1, 41):
            for context, store, limit in (("web", None, 10), ("store", "S1", 10), ("email", None, 3)):
                got = recommend.recommend(
                    conn=conn, profile_id=pid, context=context, store=store, limit=limit, config=CONFIG
                )
                mine = [(i["sku"], i["score"], i["reason"]["kind"], i["reason"]["because_sku"]) for i in got["items"]]
                assert mine == _reference(conn, pid, store, limit, model), (pid, context)
                compared += len(mine)
        assert compared > 600
        # the model is served from memory: a second answer asks the similarity table nothing new
        key = (conn.engine.url.render_as_string(hide_password=True), got["model"]["id"])
        assert key in recommend._MODELS
