"""Engage at scale: segment re-evaluation over many profiles, recommendation latency over HTTP.

Parts (`--part`):

* `segments` — bulk-loads `--profiles` people (default 1,000,000; 5% of them merged into
  another profile) with computed stats, a consent ledger, timeline events (views, cart
  additions, orders spread over 120 days) and active carts (some held by a device linked to the
  profile), straight into the tables (set-based inserts / COPY; not timed). The six demo
  segments (`omnijourney.demo.engage.DEMO_SEGMENTS`: cart, computed, consent and event
  conditions) are defined, then for each:
    - first refresh: `service.refresh_all` from empty (every entry written: history rows and
      Segment Entered events appended to the log);
    - steady refresh: the same again (the cron sweep: nothing or little changes);
    - the Python reference path (`compile_rules=False`, the evaluation before rules were
      compiled to SQL) over the first `--baseline-profiles` surviving profiles, extrapolated
      linearly, and checked to find no difference with the SQL path's result.
  Then `--touched` profiles receive a new event (a view, every fifth an order) and the
  re-evaluation the processing stage runs for them (`service.evaluate` of all active segments
  over their clusters, one transaction) is timed with the SQL path and with the Python path.
* `recommendations` — a catalog of `--skus` SKUs (variants, accessories, a store with stock,
  consumables), `--reco-profiles` people with orders and Product Viewed events (skewed
  popularity, a favourite category each), trains the model (timed), starts `omnijourney serve
  --no-pipeline` and sends `--requests` GET /api/profiles/{id}/recommendations over the four
  contexts from `--readers` keep-alive clients: p50 / p99 / max against the target (p99 < 30 ms)
  and the server's CPU ms per request (load-independent).
* `automations` — HOOK (not measured here): automation throughput (scheduled steps executed
  per second with SMTP to a local sink) lives in benchmarks/engage_automations.py; the
  integrator wires it in `run_automations` below.

It is a script, not a test: `.venv/bin/python benchmarks/engage.py --help`.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import shutil
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._common import PgServer, Server, make_console, percentile
from benchmarks.profile_read import tree_cpu_seconds

TARGET_RECO_P99_MS = 30.0
CONTEXTS = ("email", "web", "agent", "store")
STORE = "store-01"
INSERT_CHUNK = 20_000


# --------------------------------------------------------------------------- bulk loading


def _copy_value(v: Any) -> Any:
    if isinstance(v, datetime):
        return v.astimezone(UTC).replace(tzinfo=None)
    if isinstance(v, dict | list):
        return orjson.dumps(v).decode()
    return v


def bulk_insert(conn: Any, table: Any, rows: Iterable[dict[str, Any]]) -> int:
    """Insert rows fast: COPY on PostgreSQL, executemany in chunks on SQLite. Returns the count."""
    import sqlalchemy as sa

    n = 0
    if conn.dialect.name == "postgresql":  # COPY does not apply the columns' Python-side defaults
        defaults = {c.name: c.default.arg for c in table.c if c.default is not None and c.default.is_scalar}
        rows = ({**defaults, **row} for row in rows)
        cols: list[str] | None = None
        cur = conn.connection.driver_connection.cursor()
        with contextlib.ExitStack() as stack:
            stack.callback(cur.close)
            copy: Any = None
            for row in rows:
                if cols is None:
                    cols = list(row)
                    copy = stack.enter_context(cur.copy(f"COPY {table.name} ({', '.join(cols)}) FROM STDIN"))
                copy.write_row([_copy_value(row[c]) for c in cols])
                n += 1
        return n
    batch: list[dict[str, Any]] = []
    for row in rows:
        batch.append(row)
        if len(batch) >= INSERT_CHUNK:
            conn.execute(sa.insert(table), batch)
            n += len(batch)
            batch = []
    if batch:
        conn.execute(sa.insert(table), batch)
        n += len(batch)
    return n


def _fix_sequences(conn: Any, tables: Iterable[Any]) -> None:
    """PostgreSQL: move identity sequences past ids inserted explicitly."""
    if conn.dialect.name != "postgresql":
        return
    import sqlalchemy as sa

    for t in tables:
        conn.execute(
            sa.text(
                f"SELECT setval(pg_get_serial_sequence('{t.name}', 'id'), (SELECT COALESCE(max(id), 1) FROM {t.name}))"
            )
        )


def fresh_database(url: str) -> None:
    from omnijourney.store import db, migrate

    engine = db.create_engine(url)
    try:
        migrate.upgrade(engine)
    finally:
        engine.dispose()


# --------------------------------------------------------------------------- segments world


@dataclass
class SegmentWorld:
    profiles: int
    roots: list[int] = field(default_factory=list)
    rows: dict[str, int] = field(default_factory=dict)


def load_segment_world(
    engine: Any, profiles: int, seed: int, now: datetime, say: Callable[[str], None]
) -> SegmentWorld:
    """People with stats, consents, timeline events and carts, inserted set-based (not timed)."""
    from omnijourney.commerce.models import Cart, CartLine, Product
    from omnijourney.identity.models import IdentityLink, Profile, ProfileEvent
    from omnijourney.profiles.models import ConsentRecord, ProfileStats
    from omnijourney.store import db

    rng = random.Random(seed)
    world = SegmentWorld(profiles)
    canonical: list[int] = [0] * (profiles + 1)
    for pid in range(1, profiles + 1):
        if pid > 10 and rng.random() < 0.05:
            canonical[pid] = world.roots[rng.randrange(len(world.roots))]
        else:
            canonical[pid] = pid
            world.roots.append(pid)
    orders = [0] * (profiles + 1)

    def profile_rows() -> Iterator[dict[str, Any]]:
        for pid in range(1, profiles + 1):
            yield {"id": pid, "created_at": now, "merged_into": None, "canonical_id": canonical[pid]}

    def stats_rows() -> Iterator[dict[str, Any]]:
        r = random.Random(seed + 1)
        for pid in range(1, profiles + 1):
            if r.random() >= 0.85:
                continue
            first = now - timedelta(days=r.uniform(1, 700))
            k = r.random()
            n = 0 if k < 0.5 else 1 if k < 0.75 else 2 + int(r.random() * 4)
            orders[pid] = n
            yield {
                "profile_id": pid,
                "first_seen": first,
                "last_seen": min(now, first + timedelta(days=r.uniform(0, 400))),
                "event_count": n * 3 + int(r.random() * 30),
                "order_count": n,
                "revenue": round(n * r.uniform(200, 6000), 2),
                "last_order_at": now - timedelta(days=r.uniform(0, 365)) if n else None,
                "stage_rank": 0,
            }

    def consent_rows() -> Iterator[dict[str, Any]]:
        r = random.Random(seed + 2)
        for pid in range(1, profiles + 1):
            if r.random() >= 0.6:
                continue
            at = now - timedelta(days=r.uniform(30, 600))
            base = {"profile_id": pid, "purpose": "marketing", "channel": "email", "evidence": {}}
            yield {**base, "status": "granted", "recorded_at": at}
            if r.random() < 0.1:
                yield {**base, "status": "withdrawn", "recorded_at": at + timedelta(days=r.uniform(1, 29))}

    def event_rows() -> Iterator[dict[str, Any]]:
        r = random.Random(seed + 3)
        eid = 0
        for pid in range(1, profiles + 1):
            views = int(r.expovariate(0.5))  # mean 2
            for _ in range(views):
                eid += 1
                yield {
                    "event_id": eid,
                    "profile_id": pid,
                    "timestamp": now - timedelta(days=r.uniform(0, 120)),
                    "channel": "web" if r.random() < 0.7 else "app",
                    "event": "Product Viewed",
                }
            if r.random() < 0.3:
                eid += 1
                yield {
                    "event_id": eid,
                    "profile_id": pid,
                    "timestamp": now - timedelta(days=r.uniform(0, 120)),
                    "channel": "web",
                    "event": "Product Added",
                }
            for _ in range(min(orders[pid], 3)):
                eid += 1
                yield {
                    "event_id": eid,
                    "profile_id": pid,
                    "timestamp": now - timedelta(days=r.uniform(0, 365)),
                    "channel": "store" if r.random() < 0.4 else "web",
                    "event": "Order Completed",
                }
        world.rows["last_event_id"] = eid

    carts: list[dict[str, Any]] = []
    links: list[dict[str, Any]] = []
    r = random.Random(seed + 4)
    for pid in range(1, profiles + 1):
        if r.random() >= 0.04:
            continue
        device = r.random() < 0.3
        if device:
            links.append(
                {
                    "id_type": "anonymous_id",
                    "value": f"dev-{pid}",
                    "profile_id": pid,
                    "linked_at": now,
                    "event_id": 0,
                    "source_id": 1,
                }
            )
        carts.append(
            {
                "id": len(carts) + 1,
                "profile_id": None if device else pid,
                "anonymous_id": f"dev-{pid}" if device else None,
                "status": "active",
                "currency": "CZK",
                "created_at": now - timedelta(days=3),
                "updated_at": now - timedelta(minutes=r.uniform(0, 3000)),
                "value_minor": int(r.uniform(0, 3000)) * 100,
            }
        )
    lines = [
        {
            "cart_id": c["id"],
            "sku": "BENCH-1",
            "quantity": 1,
            "channel": "web",
            "added_at": now,
            "updated_at": now,
        }
        for c in carts
    ]
    t0 = time.perf_counter()
    with db.write(engine) as conn:
        bulk_insert(
            conn,
            Product.__table__,
            [
                {
                    "sku": "BENCH-1",
                    "product_id": "BENCH-1",
                    "name": "Bench",
                    "attributes": {},
                    "active": True,
                    "updated_at": now,
                }
            ],
        )
        world.rows["profiles"] = bulk_insert(conn, Profile.__table__, profile_rows())
        world.rows["stats"] = bulk_insert(conn, ProfileStats.__table__, stats_rows())
        world.rows["consents"] = bulk_insert(conn, ConsentRecord.__table__, consent_rows())
        world.rows["events"] = bulk_insert(conn, ProfileEvent.__table__, event_rows())
        user_ids = (
            {
                "id_type": "user_id",
                "value": f"cust-{pid}",
                "profile_id": pid,
                "linked_at": now,
                "event_id": 0,
                "source_id": 1,
            }
            for pid in range(1, profiles + 1)
        )
        world.rows["links"] = bulk_insert(conn, IdentityLink.__table__, user_ids)
        world.rows["links"] += bulk_insert(conn, IdentityLink.__table__, links)
        world.rows["carts"] = bulk_insert(conn, Cart.__table__, carts)
        bulk_insert(conn, CartLine.__table__, lines)
        _fix_sequences(conn, [ConsentRecord.__table__, IdentityLink.__table__, Cart.__table__])
    if engine.dialect.name == "postgresql":
        with engine.connect() as conn:
            conn.exec_driver_sql("ANALYZE")
            conn.commit()
    say(
        f"loaded {world.rows['profiles']:,} profiles ({len(world.roots):,} clusters), {world.rows['stats']:,} stats, "
        f"{world.rows['consents']:,} consent records, {world.rows['events']:,} timeline events, "
        f"{world.rows['carts']:,} carts in {time.perf_counter() - t0:.1f}s (not timed)"
    )
    return world


@dataclass
class SegmentFigures:
    key: str
    members: int = 0
    first_s: float = 0.0
    first_entered: int = 0
    steady_s: float = 0.0
    steady_changes: int = 0
    python_s: float = 0.0
    python_roots: int = 0
    python_changes: int = 0

    def python_extrapolated(self, roots: int) -> float:
        return self.python_s * roots / self.python_roots if self.python_roots else float("nan")


def _python_refresh(engine: Any, key: str, roots: int, chunk: int) -> tuple[float, int, int]:
    """The Python reference path over the first `roots` surviving profiles: (seconds, roots, changes)."""
    from omnijourney.engage import service
    from omnijourney.profiles.config import load_profile_config
    from omnijourney.store import db
    from omnijourney.store.base import utcnow

    pcfg = load_profile_config()
    done = changes = 0
    after = 0
    t0 = time.perf_counter()
    while done < roots:
        with db.write(engine) as conn:
            nxt, counts = service.refresh_chunk(
                conn=conn,
                after=after,
                limit=min(chunk, roots - done),
                now=utcnow(),
                profile_config=pcfg,
                keys=[key],
                compile_rules=False,
            )
        done += min(chunk, roots - done)
        changes += counts["entered"] + counts["left"]
        if nxt is None:
            break
        after = nxt
    return time.perf_counter() - t0, done, changes


def run_segments(url: str, args: argparse.Namespace, say: Callable[[str], None]) -> dict[str, Any]:
    import sqlalchemy as sa

    from omnijourney.demo.engage import DEMO_SEGMENTS
    from omnijourney.engage import service
    from omnijourney.engage.schemas import EngageConfig, SegmentIn
    from omnijourney.identity.models import ProfileEvent
    from omnijourney.profiles.config import load_profile_config
    from omnijourney.profiles.models import ProfileStats
    from omnijourney.store import db
    from omnijourney.store.base import utcnow

    fresh_database(url)
    engine = db.create_engine(url)
    try:
        now = utcnow()
        world = load_segment_world(engine, args.profiles, args.seed, now, say)
        with db.write(engine) as conn:
            for s in DEMO_SEGMENTS:
                service.create_segment(conn=conn, segment=SegmentIn(**s), actor="bench", now=now)
        config = EngageConfig(refresh_chunk=args.chunk)
        figures: list[SegmentFigures] = []
        for s in DEMO_SEGMENTS:
            f = SegmentFigures(s["key"])
            t0 = time.perf_counter()
            counts = service.refresh_all(engine=engine, config=config, keys=[s["key"]])
            f.first_s, f.first_entered = time.perf_counter() - t0, counts["entered"]
            t0 = time.perf_counter()
            counts = service.refresh_all(engine=engine, config=config, keys=[s["key"]])
            f.steady_s, f.steady_changes = time.perf_counter() - t0, counts["entered"] + counts["left"]
            with db.read(engine) as conn:
                f.members = service.count(conn=conn, key=s["key"])
            if args.baseline_profiles:
                f.python_s, f.python_roots, f.python_changes = _python_refresh(
                    engine, s["key"], args.baseline_profiles, min(args.chunk, 500)
                )
            say(
                f"{f.key}: {f.members:,} members; first refresh {f.first_s:.1f}s ({f.first_entered:,} entries), "
                f"steady {f.steady_s:.1f}s ({f.steady_changes} changes); Python path {f.python_s:.1f}s for "
                f"{f.python_roots:,} clusters (~{f.python_extrapolated(len(world.roots)):.0f}s for all), "
                f"{f.python_changes} differences"
            )
            figures.append(f)
        # incremental: N new events, the processing stage's re-evaluation of their clusters
        rng = random.Random(args.seed + 9)
        touched = sorted({rng.randrange(1, args.profiles + 1) for _ in range(args.touched)})
        first_id = world.rows["last_event_id"] + 1
        incr: dict[str, float] = {}
        pcfg = load_profile_config()
        with db.write(engine) as conn:
            for k, pid in enumerate(touched):
                order = k % 5 == 0
                conn.execute(
                    sa.insert(ProfileEvent.__table__).values(
                        event_id=first_id + k,
                        profile_id=pid,
                        timestamp=now,
                        channel="web",
                        event="Order Completed" if order else "Product Viewed",
                    )
                )
                if order:
                    st = ProfileStats.__table__
                    conn.execute(
                        sa.update(st)
                        .where(st.c.profile_id == pid)
                        .values(order_count=st.c.order_count + 1, last_order_at=now)
                    )
        for label, compiled in (("python", False), ("sql", True)):
            with engine.connect() as conn:
                tx = conn.begin()
                t0 = time.perf_counter()
                segs = service.active_segments(conn=conn)
                roots = service.roots_of(conn=conn, member_ids=touched)
                counts = service.evaluate(
                    conn=conn, roots=roots, segments=segs, now=utcnow(), profile_config=pcfg, compile_rules=compiled
                )
                if compiled:
                    tx.commit()
                else:
                    tx.rollback()
                incr[label] = time.perf_counter() - t0
                incr[f"{label}_changes"] = counts["entered"] + counts["left"]
        say(
            f"incremental after {len(touched):,} events ({len(roots):,} clusters x {len(segs)} segments): "
            f"SQL {1000 * incr['sql']:.0f} ms ({incr['sql_changes']:.0f} changes), "
            f"Python {1000 * incr['python']:.0f} ms ({incr['python_changes']:.0f} changes)"
        )
        return {"world": world, "figures": figures, "incremental": incr, "touched": len(touched)}
    finally:
        engine.dispose()


# --------------------------------------------------------------------------- recommendations world


def load_reco_world(engine: Any, args: argparse.Namespace, now: datetime, say: Callable[[str], None]) -> list[int]:
    """A catalog with relations and stock, people with orders and views; returns the profile ids."""
    from omnijourney.access.service import create_source
    from omnijourney.commerce.models import Location, Order, OrderLine, Product, RelatedProduct, Stock
    from omnijourney.identity.models import Profile, ProfileEvent
    from omnijourney.ingest.models import Event
    from omnijourney.store import db

    rng = random.Random(args.seed)
    n_sku, n_people = args.skus, args.reco_profiles
    skus = [f"SKU-{i:06d}" for i in range(n_sku)]
    categories = 200

    def category(i: int) -> int:
        return i % categories

    by_cat: dict[int, list[int]] = {}
    for i in range(n_sku):
        by_cat.setdefault(category(i), []).append(i)

    def pick(home: int) -> int:
        if rng.random() < 0.7:
            pool = by_cat[home]
            return pool[int(len(pool) * rng.random() ** 2)]
        return int(n_sku * rng.random() ** 3)  # skewed popularity

    products = [
        {
            "sku": s,
            "product_id": f"P-{i // 2:06d}" if i < n_sku // 5 else f"P-{s}",  # some products have two variants
            "name": f"Product {i}",
            "category": f"cat-{category(i)}",
            "brand": None,
            "attributes": {"consumable": True} if i % 50 == 0 else {},
            "active": i % 97 != 0,
            "updated_at": now,
        }
        for i, s in enumerate(skus)
    ]
    relations = []
    for i in range(n_sku):
        if rng.random() < 0.4:
            pool = by_cat[(category(i) + 1) % categories]
            for j in {pool[rng.randrange(len(pool))] for _ in range(3)}:
                relations.append({"sku": skus[i], "related_sku": skus[j], "kind": "accessory", "quantity": 1})
    stock = [
        {"sku": s, "location": STORE, "on_hand": rng.randrange(0, 4), "reserved": 0, "allocated": 0, "damaged": 0}
        for s in skus
    ]
    profiles, orders, lines, events, timeline = [], [], [], [], []
    roots: list[int] = []
    eid = 0
    for pid in range(1, n_people + 1):
        if pid > 10 and rng.random() < 0.1:
            canonical = roots[rng.randrange(len(roots))]
        else:
            canonical = pid
            roots.append(pid)
        profiles.append({"id": pid, "created_at": now, "merged_into": None, "canonical_id": canonical})
        home = rng.randrange(categories)
        for _ in range(int(rng.expovariate(1 / 1.5))):
            oid = len(orders) + 1
            at = now - timedelta(days=rng.uniform(1, 365))
            items = [pick(home) for _ in range(1 + rng.randrange(3))]
            orders.append(
                {
                    "id": oid,
                    "order_ref": f"bench-{oid}",
                    "profile_id": pid,
                    "origin": "event",
                    "channel": "web",
                    "fulfilment": "external",
                    "status": "paid",
                    "currency": "CZK",
                    "total_minor": 100 * len(items),
                    "placed_at": at,
                    "updated_at": at,
                }
            )
            for n, i in enumerate(dict.fromkeys(items), start=1):
                lines.append({"order_id": oid, "line_no": n, "sku": skus[i], "quantity": 1, "unit_price_minor": 100})
        for _ in range(int(rng.expovariate(1 / 8))):
            eid += 1
            at = now - timedelta(days=rng.uniform(0, 90))
            sku = skus[pick(home)]
            events.append(
                {
                    "id": eid,
                    "source_id": 0,
                    "message_id": f"bench-view-{eid}",
                    "type": "track",
                    "event": "Product Viewed",
                    "user_id": None,
                    "anonymous_id": f"anon-{pid}",
                    "channel": "web",
                    "timestamp": at,
                    "received_at": at,
                    "context": {},
                    "payload": {"type": "track", "event": "Product Viewed", "properties": {"sku": sku}},
                }
            )
            timeline.append(
                {"event_id": eid, "profile_id": pid, "timestamp": at, "channel": "web", "event": "Product Viewed"}
            )
    t0 = time.perf_counter()
    with db.write(engine) as conn:
        source = create_source(conn=conn, name="bench-web", channel="web", trusted=False)
        for e in events:
            e["source_id"] = source.id
        bulk_insert(conn, Product.__table__, products)
        bulk_insert(conn, RelatedProduct.__table__, relations)
        bulk_insert(
            conn,
            Location.__table__,
            [
                {
                    "code": STORE,
                    "name": "Store 1",
                    "kind": "store",
                    "address": {},
                    "opening_hours": {},
                    "channels": ["store"],
                    "updated_at": now,
                }
            ],
        )
        bulk_insert(conn, Stock.__table__, [{**s, "updated_at": now} for s in stock])
        bulk_insert(conn, Profile.__table__, profiles)
        bulk_insert(conn, Order.__table__, orders)
        bulk_insert(conn, OrderLine.__table__, lines)
        bulk_insert(conn, Event.__table__, events)
        bulk_insert(conn, ProfileEvent.__table__, timeline)
        _fix_sequences(conn, [Order.__table__, Event.__table__])
    if engine.dialect.name == "postgresql":
        with engine.connect() as conn:
            conn.exec_driver_sql("ANALYZE")
            conn.commit()
    say(
        f"loaded {n_sku:,} SKUs ({len(relations):,} accessory relations), {n_people:,} profiles, "
        f"{len(orders):,} orders / {len(lines):,} lines, {len(events):,} product views in "
        f"{time.perf_counter() - t0:.1f}s (not timed)"
    )
    return list(range(1, n_people + 1))


@dataclass
class RecoFigures:
    train_s: float = 0.0
    model: dict[str, Any] = field(default_factory=dict)
    lat: dict[str, list[float]] = field(default_factory=lambda: {c: [] for c in CONTEXTS})
    wall: float = 0.0
    server_cpu: float = 0.0
    requests: int = 0
    failed: int = 0
    errors: list[str] = field(default_factory=list)
    #: the 1-minute load average when the timed requests ended: on a shared machine p99 follows it
    load: float = 0.0

    @property
    def all_lat(self) -> list[float]:
        return [x for v in self.lat.values() for x in v]

    def ms(self, q: float, context: str | None = None) -> float:
        return 1000 * percentile(self.lat[context] if context else self.all_lat, q)

    @property
    def cpu_ms(self) -> float:
        return 1000 * self.server_cpu / self.requests if self.requests else float("nan")


def _drive_reco(
    port: int, token: str, ids: list[int], args: argparse.Namespace, fig: RecoFigures, cpu: Callable[[], float]
) -> None:
    import httpx

    rng = random.Random(args.seed + 5)
    plan = [(rng.choice(ids), CONTEXTS[k % len(CONTEXTS)]) for k in range(args.requests + args.warmup)]
    warm, plan = plan[: args.warmup], plan[args.warmup :]
    lock = threading.Lock()
    cursor = [0]

    def one(client: httpx.Client, pid: int, context: str) -> None:
        params: dict[str, Any] = {"context": context}
        if context == "store":
            params["store"] = STORE
        r = client.get(f"/api/profiles/{pid}/recommendations", params=params)
        if r.status_code != 200 or not isinstance(r.json().get("items"), list):
            raise RuntimeError(f"{pid} {context}: HTTP {r.status_code} {r.text[:200]}")

    def reader() -> None:
        with httpx.Client(
            base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {token}"}, timeout=60
        ) as client:
            while True:
                with lock:
                    k = cursor[0]
                    cursor[0] += 1
                if k >= len(plan):
                    return
                pid, context = plan[k]
                t0 = time.perf_counter()
                try:
                    one(client, pid, context)
                except Exception as exc:
                    with lock:
                        fig.failed += 1
                        if len(fig.errors) < 5:
                            fig.errors.append(repr(exc))
                    continue
                with lock:
                    fig.lat[context].append(time.perf_counter() - t0)

    with httpx.Client(  # untimed: the first request loads the trained model into the server's memory
        base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {token}"}, timeout=120
    ) as client:
        for pid, context in warm:
            one(client, pid, context)
    cpu_before = cpu()
    threads = [threading.Thread(target=reader, daemon=True) for _ in range(args.readers)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=3600)
    fig.wall = time.perf_counter() - t0
    fig.requests = len(plan)
    fig.server_cpu = cpu() - cpu_before
    fig.load = os.getloadavg()[0]


def run_recommendations(url: str, workdir: Path, args: argparse.Namespace, say: Callable[[str], None]) -> RecoFigures:
    from omnijourney.access.service import create_token
    from omnijourney.engage import recommend
    from omnijourney.engage.config import default_config
    from omnijourney.store import db
    from omnijourney.store.base import utcnow

    fresh_database(url)
    engine = db.create_engine(url)
    fig = RecoFigures()
    server: Server | None = None
    try:
        now = utcnow()
        ids = load_reco_world(engine, args, now, say)
        t0 = time.perf_counter()
        with db.write(engine) as conn:
            fig.model = recommend.train(conn=conn, config=default_config().recommendations, now=now)
            token = create_token(conn=conn, role="agent", name="bench-engage")
        fig.train_s = time.perf_counter() - t0
        say(
            f"trained in {fig.train_s:.1f}s: {fig.model['items']:,} items, {fig.model['pairs']:,} neighbour pairs "
            f"from {fig.model['purchases']:,} purchase lines and {fig.model['views']:,} views"
        )
        server = Server(url, workdir, synchronous="NORMAL", pipeline=False)
        server.wait_healthy()
        say(f"server up; {args.requests:,} requests from {args.readers} clients (+{args.warmup} warm-up)")
        pid = server.proc.pid
        _drive_reco(server.port, token, ids, args, fig, lambda: tree_cpu_seconds(pid))
        for e in fig.errors:
            say(f"  client error: {e}")
        return fig
    except Exception:
        if server is not None:
            say(f"server log tail:\n{server.log_tail()}")
        raise
    finally:
        if server is not None:
            server.stop()
        engine.dispose()


# --------------------------------------------------------------------------- automations (hook)


def run_automations(url: str, workdir: Path, args: argparse.Namespace, say: Callable[[str], None]) -> None:
    """Automation throughput: scheduled steps executed per second with SMTP to a local aiosmtpd sink
    (benchmarks/engage_automations.py, which also runs on its own with more options)."""
    from benchmarks import engage_automations

    say(f"automations: {args.automation_steps} due steps, {args.automation_workers} worker(s)")
    engage_automations.run(url, args.automation_steps, args.automation_workers, True)


# --------------------------------------------------------------------------- main


def run_backend(backend: str, args: argparse.Namespace, console: Any) -> list[str]:
    def say(m: str) -> None:
        console.print(f"[dim]{backend}:[/dim] {m}", highlight=False, markup=False)

    lines: list[str] = []
    workdir = Path(tempfile.mkdtemp(prefix=f"oj-bench-engage-{backend}-"))
    pg: PgServer | None = None
    try:
        if backend == "postgres":
            pg = PgServer(args.pg_url)

        def url(name: str) -> str:
            return pg.fresh_database(name) if pg is not None else f"sqlite:///{workdir / (name + '.db')}"

        if args.part in ("segments", "all"):
            try:
                out = run_segments(url("oj_bench_segments"), args, say)
                roots = len(out["world"].roots)
                for f in out["figures"]:
                    lines.append(
                        f"{backend} segment={f.key} profiles={args.profiles} clusters={roots} members={f.members} "
                        f"first_refresh={f.first_s:.1f}s entries={f.first_entered} steady_refresh={f.steady_s:.1f}s "
                        f"steady_changes={f.steady_changes} python_path={f.python_s:.1f}s/{f.python_roots} "
                        f"python_path_all~{f.python_extrapolated(roots):.0f}s python_differences={f.python_changes}"
                    )
                inc = out["incremental"]
                lines.append(
                    f"{backend} incremental events={out['touched']} sql={1000 * inc['sql']:.0f}ms "
                    f"python={1000 * inc['python']:.0f}ms changes_sql={inc['sql_changes']:.0f} "
                    f"changes_python={inc['python_changes']:.0f}"
                )
            except Exception:
                say(f"segments failed:\n{traceback.format_exc()}")
                lines.append(f"{backend} segments ERROR")
        if args.part in ("recommendations", "all"):
            try:
                fig = run_recommendations(url("oj_bench_reco"), workdir, args, say)
                per = " ".join(f"{c}_p99={fig.ms(0.99, c):.1f}ms" for c in CONTEXTS)
                met = "MET" if fig.ms(0.99) < TARGET_RECO_P99_MS else "NOT-MET"
                lines.append(
                    f"{backend} recommendations skus={args.skus} profiles={args.reco_profiles} "
                    f"train={fig.train_s:.1f}s p50={fig.ms(0.5):.1f}ms p99={fig.ms(0.99):.1f}ms "
                    f"max={fig.ms(1.0):.1f}ms {per} req/s={len(fig.all_lat) / fig.wall:.0f} "
                    f"server_cpu_ms_per_request={fig.cpu_ms:.2f} failed={fig.failed} target_p99={met} "
                    f"load_avg={fig.load:.1f}"
                )
            except Exception:
                say(f"recommendations failed:\n{traceback.format_exc()}")
                lines.append(f"{backend} recommendations ERROR")
        if args.part in ("automations", "all"):
            run_automations(url("oj_bench_auto"), workdir, args, say)
    finally:
        if pg is not None:
            pg.close()
        shutil.rmtree(workdir, ignore_errors=True)
    return lines


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--backend", choices=("sqlite", "postgres", "both"), default="both")
    p.add_argument(
        "--part",
        choices=("segments", "recommendations", "automations", "all"),
        default="all",
        help="what to measure (automations: the hook for benchmarks/engage_automations.py)",
    )
    p.add_argument("--profiles", type=int, default=1_000_000, help="segments: people (default 1000000)")
    p.add_argument("--chunk", type=int, default=10_000, help="segments: profiles per refresh transaction")
    p.add_argument(
        "--baseline-profiles",
        type=int,
        default=20_000,
        help="segments: clusters the Python reference path evaluates (extrapolated; 0 = skip)",
    )
    p.add_argument("--touched", type=int, default=1000, help="segments: new events for the incremental pass")
    p.add_argument("--skus", type=int, default=20_000, help="recommendations: catalog size (default 20000)")
    p.add_argument("--reco-profiles", type=int, default=100_000, help="recommendations: people with histories")
    p.add_argument("--requests", type=int, default=2000, help="recommendations: timed requests")
    p.add_argument("--warmup", type=int, default=50, help="recommendations: untimed requests first")
    p.add_argument("--readers", type=int, default=1, help="recommendations: concurrent keep-alive clients")
    p.add_argument("--automation-steps", type=int, default=10_000, help="automations: due steps")
    p.add_argument("--automation-workers", type=int, default=1, help="automations: executor threads")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument(
        "--pg-url",
        "--database-url",
        dest="pg_url",
        default=None,
        help="PostgreSQL server to use instead of a throwaway cluster (CREATEDB needed)",
    )
    args = p.parse_args(argv)
    if min(args.profiles, args.chunk, args.skus, args.reco_profiles, args.requests, args.readers) < 1:
        p.error("sizes must be positive")
    if not 10 <= args.chunk <= 10_000:
        p.error("--chunk must be within 10..10000 (EngageConfig.refresh_chunk)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    console = make_console()
    backends = ["sqlite", "postgres"] if args.backend == "both" else [args.backend]
    console.print(
        f"[bold]engage benchmark[/bold] ({args.part}): {args.profiles:,} profiles for segments, {args.skus:,} SKUs x "
        f"{args.reco_profiles:,} profiles for recommendations, seed {args.seed}, {os.cpu_count()} CPUs"
    )
    lines: list[str] = []
    for backend in backends:
        console.rule(backend)
        lines += run_backend(backend, args, console)
    for line in lines:
        print(line, flush=True)
    return 1 if any("ERROR" in line for line in lines) else 0


if __name__ == "__main__":
    sys.exit(main())
