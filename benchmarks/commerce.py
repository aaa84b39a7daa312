"""Commerce benchmark: availability latency over SKUs x locations, checkout throughput under concurrency.

    .venv/bin/python benchmarks/commerce.py                       # issue sizes: 100k SKUs x 50 locations, 32 clients
    .venv/bin/python benchmarks/commerce.py --skus 500 --locations 5 --queries 300 --checkouts 200   # smoke

Per backend (SQLite file, PostgreSQL: a throwaway cluster or --pg-url):
* availability: `service.availability(sku)` for random SKUs, one read transaction each, p50/p99 ms
  (the API adds HTTP and auth on top);
* checkouts: `--clients` threads, each repeatedly: anonymous cart -> add 1-2 SKUs -> start checkout (ship)
  -> complete; checkouts/s for the completed ones, and the **oversold units** (units allocated beyond what
  was on hand; must be 0). Two scenarios (`--scenario`):
  - `spread` (throughput): SKUs drawn from the whole catalog, each with plenty of stock at the shipping
    locations, as a shop's orders spread over its catalog;
  - `hot` (the last units, correctness under contention): SKUs from `--hot` SKUs with only `--hot-units`
    units at each shipping location, so every client queues on the same stock rows and they run out.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import random
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import sqlalchemy as sa  # noqa: E402

from benchmarks._common import PgServer, percentile  # noqa: E402
from omnijourney.commerce import events, service  # noqa: E402
from omnijourney.commerce.config import load_commerce_config  # noqa: E402
from omnijourney.commerce.service import CommerceError  # noqa: E402
from omnijourney.store import db, migrate  # noqa: E402
from omnijourney.store.base import utcnow  # noqa: E402

CHUNK = 5000


def load(engine: sa.Engine, skus: int, locations: int, seed: int) -> None:
    rnd = random.Random(seed)
    now = utcnow()
    with db.write(engine) as conn:
        service.upsert_locations(
            conn=conn,
            items=[
                {
                    "code": f"loc-{i:03d}",
                    "name": f"Location {i}",
                    "kind": "warehouse" if i == 0 else "store",
                    "latitude": 49 + rnd.random() * 2,
                    "longitude": 13 + rnd.random() * 5,
                    "ships": i < 3,
                    "pickup": i > 0,
                }
                for i in range(locations)
            ],
            now=now,
        )
    for start in range(0, skus, CHUNK):
        part = range(start, min(skus, start + CHUNK))
        with db.write(engine) as conn:
            conn.execute(
                sa.insert(service.PRODUCTS),
                [
                    {
                        "sku": f"SKU-{i:07d}",
                        "product_id": f"P-{i // 4}",
                        "name": f"Product {i}",
                        "category": "c",
                        "brand": "b",
                        "attributes": {},
                        "active": True,
                        "updated_at": now,
                    }
                    for i in part
                ],
            )
            conn.execute(
                sa.insert(service.PRICES),
                [{"sku": f"SKU-{i:07d}", "currency": "CZK", "amount_minor": 10000 + i} for i in part],
            )
            conn.execute(
                sa.insert(service.STOCK),
                [
                    {
                        "sku": f"SKU-{i:07d}",
                        "location": f"loc-{j:03d}",
                        "on_hand": rnd.randint(0, 20),
                        "reserved": 0,
                        "allocated": 0,
                        "damaged": 0,
                        "updated_at": now,
                    }
                    for i in part
                    for j in range(locations)
                ],
            )


def bench_availability(engine: sa.Engine, skus: int, queries: int, seed: int) -> dict[str, float]:
    rnd = random.Random(seed)
    times = []
    for _ in range(queries):
        sku = f"SKU-{rnd.randrange(skus):07d}"
        t = time.perf_counter()
        with db.read(engine) as conn:
            service.availability(conn=conn, sku=sku)
        times.append((time.perf_counter() - t) * 1000)
    return {"p50_ms": percentile(times, 0.5), "p99_ms": percentile(times, 0.99)}


def _flow(engine: sa.Engine, config: Any, rnd: random.Random, skus: list[str], tag: str, step: Any = None) -> None:
    """One customer: anonymous cart with 1-2 of `skus` -> checkout (ship, reserve) -> complete (order).
    `step(name)`, if given, is told which step's statements follow (the profile mode counts them)."""
    now = utcnow()
    if step:
        step("cart")
    with db.write(engine) as conn, events.batch(conn):  # the items' events: one append, at the end
        cart = service.resolve_cart(conn=conn, rules=None, anonymous_id=f"bench-{tag}", currency="CZK", now=now)
        assert cart is not None
        for sku in rnd.sample(skus, rnd.randint(1, 2)):
            service.add_to_cart(
                conn=conn, cart_id=cart, sku=sku, quantity=1, channel="web", device=None, actor=None, now=now
            )
    if step:
        step("checkout")
    with db.write(engine) as conn:
        co = service.start_checkout(
            conn=conn,
            cart_id=cart,
            fulfilment="ship",
            pickup_location=None,
            ship_address={"city": "x"},
            channel="web",
            now=now,
            ttl_seconds=900,
        )
    if step:
        step("order")
    with db.write(engine) as conn:
        service.complete_checkout(
            conn=conn,
            checkout_id=co["id"],
            idempotency_key=f"b-{tag}",
            redeem_points=0,
            rules=None,
            config=config,
            channel="web",
            actor=None,
            now=utcnow(),
        )


def _client_process(
    url: str, proc: int, threads: int, counter: Any, checkouts: int, skus: int, seed: int, start: Any, out: Any
) -> None:
    """A process of `threads` clients (the API runs as several processes too; one interpreter lock
    would otherwise serialise all 32 clients' Python work)."""
    engine = db.create_engine(url, pool_size=threads + 2)
    config = load_commerce_config()
    hot_skus = [f"SKU-{i:07d}" for i in range(skus)]
    lock = threading.Lock()
    done = {"orders": 0, "refused": 0, "errors": 0}
    latencies: list[float] = []
    errors: list[str] = []

    def client(n: int) -> None:
        rnd = random.Random(seed * 1000 + proc * 100 + n)
        while True:
            with counter.get_lock():
                i = counter.value
                if i >= checkouts:
                    return
                counter.value = i + 1
            t = time.perf_counter()
            try:
                _flow(engine, config, rnd, hot_skus, f"{skus}-{proc}-{n}-{i}")
                with lock:
                    done["orders"] += 1
                    latencies.append((time.perf_counter() - t) * 1000)
            except CommerceError:
                with lock:
                    done["refused"] += 1
            except sa.exc.OperationalError as exc:  # SQLite: a writer waited past busy_timeout
                with lock:
                    done["errors"] += 1
                    errors.append(str(exc.orig)[:100])

    with db.read(engine) as conn:  # warm the pool and the statement cache before the clock starts
        service.availability(conn=conn, sku=hot_skus[0])
    start.wait()
    began = time.time()
    ts = [threading.Thread(target=client, args=(n,)) for n in range(threads)]
    for th in ts:
        th.start()
    for th in ts:
        th.join()
    out.put({**done, "began": began, "ended": time.time(), "latencies": latencies, "error_samples": errors[:3]})
    engine.dispose()


def bench_checkouts(
    engine: sa.Engine, url: str, clients: int, processes: int, checkouts: int, hot: int, hot_units: int, seed: int
) -> dict[str, Any]:
    """Checkouts over the first `hot` SKUs with `hot_units` units of each at each shipping location:
    a few hot SKUs with few units = the last-units scenario; the whole catalog with many = throughput."""
    chosen = service.STOCK.c.sku < f"SKU-{hot:07d}"  # SKU-0000000 .. (names sort as numbers)
    with db.write(engine) as conn:  # the SKUs checked out: `hot_units` at each shipping location, none held
        conn.execute(
            sa.update(service.STOCK)
            .where(chosen, service.STOCK.c.location.in_(["loc-000", "loc-001", "loc-002"]))
            .values(on_hand=hot_units, reserved=0, allocated=0)
        )
    with db.read(engine) as conn:
        before = {(r.sku, r.location): r.on_hand for r in conn.execute(sa.select(service.STOCK).where(chosen))}
        first_order = conn.execute(sa.select(sa.func.coalesce(sa.func.max(service.ORDERS.c.id), 0))).scalar_one()
    ctx = multiprocessing.get_context("spawn")
    counter = ctx.Value("i", 0)
    start = ctx.Event()
    out = ctx.Queue()
    per = [clients // processes + (1 if p < clients % processes else 0) for p in range(processes)]
    procs = [
        ctx.Process(target=_client_process, args=(url, p, n, counter, checkouts, hot, seed, start, out))
        for p, n in enumerate(per)
        if n
    ]
    for pr in procs:
        pr.start()
    time.sleep(3.0)  # let every process import and connect
    start.set()
    results = [out.get() for _ in procs]
    for pr in procs:
        pr.join()
    elapsed = max(r["ended"] for r in results) - min(r["began"] for r in results)
    latencies = [x for r in results for x in r["latencies"]]
    orders = sum(r["orders"] for r in results)
    with db.read(engine) as conn:
        after = conn.execute(sa.select(service.STOCK).where(chosen)).all()
        lines = service.ORDER_LINES
        allocated = conn.execute(  # the units this run's orders took
            sa.select(lines.c.sku, lines.c.location, sa.func.sum(lines.c.quantity))
            .where(lines.c.order_id > first_order)
            .group_by(lines.c.sku, lines.c.location)
        ).all()
        stored_orders = conn.execute(sa.select(sa.func.count()).select_from(service.ORDERS)).scalar_one()
    oversold = sum(max(0, int(q) - before.get((sku, loc), 0)) for sku, loc, q in allocated)
    negative = sum(1 for r in after if r.on_hand - r.reserved - r.allocated < 0)
    return {
        "orders": orders,
        "stored_orders": int(stored_orders),
        "refused": sum(r["refused"] for r in results),
        "errors": sum(r["errors"] for r in results),
        "error_samples": [e for r in results for e in r["error_samples"]][:3],
        "seconds": round(elapsed, 2),
        "checkouts_per_s": round(orders / elapsed, 1) if elapsed else 0.0,
        "flow_p50_ms": percentile(latencies, 0.5) if latencies else 0.0,
        "flow_p99_ms": percentile(latencies, 0.99) if latencies else 0.0,
        "oversold_units": oversold + negative,
    }


def profile_flows(engine: sa.Engine, flows: int, skus: int, seed: int, cprofile: str | None) -> dict[str, Any]:
    """One client, `flows` flows one after another: client CPU per flow (time.process_time: the Python
    side — SQLAlchemy, the driver, validation — which is what limits throughput on a busy machine) and
    the SQL statements each step sends (a `before_cursor_execute` listener; BEGIN/COMMIT not counted)."""
    import cProfile
    import pstats

    config = load_commerce_config()
    names = [f"SKU-{i:07d}" for i in range(skus)]
    rnd = random.Random(seed)
    counts: dict[str, int] = {}
    current = ["setup"]

    def on_execute(*_: Any) -> None:
        counts[current[0]] = counts.get(current[0], 0) + 1

    def step(name: str) -> None:
        current[0] = name

    for i in range(20):  # warm caches (statement cache, sources, rules) before measuring
        _flow(engine, config, rnd, names, f"warm-{seed}-{i}")
    sa.event.listen(engine, "before_cursor_execute", on_execute)
    prof = cProfile.Profile() if cprofile else None
    try:
        cpu, wall = time.process_time(), time.perf_counter()
        if prof:
            prof.enable()
        for i in range(flows):
            _flow(engine, config, rnd, names, f"prof-{seed}-{i}", step)
        if prof:
            prof.disable()
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    finally:
        sa.event.remove(engine, "before_cursor_execute", on_execute)
    if prof and cprofile:
        prof.dump_stats(cprofile)
        pstats.Stats(prof).sort_stats("cumulative").print_stats(25)
    return {
        "cpu_ms_per_flow": round(cpu * 1000 / flows, 2),
        "wall_ms_per_flow": round(wall * 1000 / flows, 2),
        "statements_per_flow": {k: round(v / flows, 1) for k, v in counts.items()},
    }


def run(url: str, args: argparse.Namespace) -> dict[str, Any]:
    engine = db.create_engine(url, pool_size=args.clients + 4)
    try:
        migrate.upgrade(engine)
        t = time.perf_counter()
        load(engine, args.skus, args.locations, args.seed)
        loaded = time.perf_counter() - t
        out = {"load_s": round(loaded, 1), **bench_availability(engine, args.skus, args.queries, args.seed)}
        if args.profile:
            chosen = service.STOCK.c.location.in_(["loc-000", "loc-001", "loc-002"])
            with db.write(engine) as conn:  # stock that does not run out
                conn.execute(sa.update(service.STOCK).where(chosen).values(on_hand=100_000))
            out["profile"] = profile_flows(engine, args.profile, args.skus, args.seed, args.cprofile)
            return out
        scenarios = {
            # throughput: the whole catalog, stock that does not run out (1-2 units per checkout)
            "spread": (args.skus, max(1000, 4 * args.checkouts // max(1, args.skus) + 10)),
            "hot": (args.hot, args.hot_units),  # the last units: everyone queues on the same rows
        }
        for name in ["spread", "hot"] if args.scenario == "both" else [args.scenario]:
            skus, units = scenarios[name]
            loadavg = " ".join(f"{x:.1f}" for x in os.getloadavg())
            r = bench_checkouts(engine, url, args.clients, args.processes, args.checkouts, skus, units, args.seed)
            out[name] = {**r, "loadavg": loadavg}
        return out
    finally:
        engine.dispose()


def report(backend: str, out: dict[str, Any], args: argparse.Namespace) -> None:
    print(
        f"{backend:9s} {args.skus} SKUs x {args.locations} locations (load {out['load_s']} s): availability "
        f"p50 {out['p50_ms']:.2f} ms p99 {out['p99_ms']:.2f} ms",
        flush=True,
    )
    if "profile" in out:
        prof = out["profile"]
        steps = prof["statements_per_flow"]
        print(
            f"  profile (1 client, {args.profile} flows): client CPU {prof['cpu_ms_per_flow']} ms per flow "
            f"(wall {prof['wall_ms_per_flow']} ms), SQL statements per flow {sum(steps.values()):.1f} "
            f"({', '.join(f'{k} {v}' for k, v in steps.items())}) | load average "
            + " ".join(f"{x:.1f}" for x in os.getloadavg()),
            flush=True,
        )
    for name in ("spread", "hot"):
        r = out.get(name)
        if r is None:
            continue
        what = f"{args.hot} hot SKUs x {args.hot_units} units" if name == "hot" else "SKUs from the whole catalog"
        print(
            f"  {name:6s} ({what}) {args.clients} clients in {args.processes} processes: {r['orders']} orders "
            f"({r['stored_orders']} stored in total), {r['refused']} refused (out of stock), {r['errors']} errors, "
            f"{r['checkouts_per_s']} checkouts/s (cart + checkout + order, p50 {r['flow_p50_ms']:.0f} ms p99 "
            f"{r['flow_p99_ms']:.0f} ms), oversold units {r['oversold_units']} | load average {r['loadavg']}",
            flush=True,
        )
        for sample in r["error_samples"]:
            print(f"    error: {sample}", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--skus", type=int, default=100_000)
    p.add_argument("--locations", type=int, default=50)
    p.add_argument("--queries", type=int, default=2000)
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--processes", type=int, default=4, help="client processes the clients are spread over")
    p.add_argument("--checkouts", type=int, default=5000)
    p.add_argument("--scenario", choices=["spread", "hot", "both"], default="both")
    p.add_argument("--hot", type=int, default=20, help="SKUs the last-units checkouts compete for")
    p.add_argument("--hot-units", type=int, default=5, help="units of each hot SKU at each shipping location")
    p.add_argument("--backend", choices=["sqlite", "postgres", "both"], default="both")
    p.add_argument("--pg-url", default=None)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--profile", type=int, default=0, help="instead of the scenarios: N flows by one client, CPU/flow")
    p.add_argument("--cprofile", default=None, help="with --profile: dump cProfile stats to this file")
    args = p.parse_args()
    results: dict[str, Any] = {}
    if args.backend in ("sqlite", "both"):
        with tempfile.TemporaryDirectory() as tmp:
            results["sqlite"] = run(f"sqlite:///{tmp}/bench.db", args)
            report("sqlite", results["sqlite"], args)
    if args.backend in ("postgres", "both"):
        pg = PgServer(args.pg_url)
        try:
            results["postgres"] = run(pg.fresh_database("oj_bench_commerce"), args)
            report("postgres", results["postgres"], args)
        finally:
            pg.close()
    if any(out[n]["oversold_units"] for out in results.values() for n in ("spread", "hot") if n in out):
        raise SystemExit("OVERSOLD")


if __name__ == "__main__":
    main()
