"""Ingestion throughput: the real HTTP server against a raw bulk insert into the same schema.

For each backend this script

1. prepares a fresh, migrated database with one source;
2. starts `omnijourney serve` as a subprocess on a free loopback port;
3. drives POST /v1/batch from several client processes with SDK-shaped batches
   (what segment-analytics-python sends: {"batch": [...], "sentAt": ...}, Basic auth with
   the write key), bodies pre-built before the clock starts, keep-alive connections;
4. prints events/s, requests/s and request latency, and checks the `events` row count;
5. measures a ceiling: the same rows (validated with the server's own `validate_message`,
   outside timing) bulk-inserted into a fresh database of the same backend and schema
   (SQLite: sqlite3 executemany in transactions with the server's pragmas; PostgreSQL:
   psycopg COPY), and prints the HTTP figure as a percentage of it.

It is a script, not a test: run `.venv/bin/python benchmarks/ingest.py --help`.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import http.client
import math
import multiprocessing as mp
import os
import queue
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # for tests.pgcluster

#: the columns of `events` a row carries (everything but the log position `id`)
EVENT_COLUMNS = (
    "source_id",
    "message_id",
    "type",
    "event",
    "user_id",
    "anonymous_id",
    "channel",
    "timestamp",
    "received_at",
    "sent_at",
    "original_timestamp",
    "order_id",
    "cart_id",
    "revenue",
    "currency",
    "context",
    "payload",
)
_DATETIME_COLUMNS = frozenset({"timestamp", "received_at", "sent_at", "original_timestamp"})
_JSON_COLUMNS = frozenset({"context", "payload"})

#: attempts per request when the server sheds load (429/503) or the connection drops
MAX_ATTEMPTS = 20


# --------------------------------------------------------------------------- workload


def _catalogue() -> list[dict[str, Any]]:
    rng = random.Random(0)
    categories = ["Shoes", "Jackets", "Bags", "Accessories", "Knitwear", "Denim", "Outdoor", "Kids"]
    brands = ["Northwind", "Fjell", "Arcadia", "Lumen", "Okapi", "Tessera"]
    colours = ["black", "navy", "olive", "sand", "red", "grey"]
    products = []
    for i in range(600):
        category = rng.choice(categories)
        products.append(
            {
                "product_id": f"prod-{i:05d}",
                "sku": f"SKU-{rng.randrange(10**7):07d}",
                "name": f"{rng.choice(brands)} {category[:-1] if category.endswith('s') else category} {i}",
                "category": category,
                "brand": rng.choice(brands),
                "variant": rng.choice(colours),
                "price": round(rng.uniform(9, 320), 2),
            }
        )
    return products


PRODUCTS = _catalogue()
USER_AGENTS = [
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_5) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 Safari/605.1.15",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148",
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0.0.0 Mobile Safari/537.36",
    "Mozilla/5.0 (X11; Linux x86_64; rv:127.0) Gecko/20100101 Firefox/127.0",
]
CAMPAIGNS = [
    {"name": "summer_sale", "source": "newsletter", "medium": "email", "term": "", "content": "hero_banner"},
    {"name": "brand_search", "source": "google", "medium": "cpc", "term": "rain jacket", "content": "ad_3"},
    {"name": "retargeting", "source": "facebook", "medium": "paid_social", "term": "", "content": "carousel"},
    {"name": "loyalty_q3", "source": "sms", "medium": "sms", "term": "", "content": "points_reminder"},
]
PAGES = [
    ("Home", "/"),
    ("Category", "/c/outdoor"),
    ("Product", "/p/"),
    ("Cart", "/cart"),
    ("Checkout", "/checkout"),
    ("Search", "/search"),
]
#: (kind, weight): a browsing-heavy storefront mix
KINDS = [
    ("page", 30),
    ("Product Viewed", 22),
    ("Products Searched", 6),
    ("Product Added", 14),
    ("Cart Viewed", 7),
    ("identify", 8),
    ("Checkout Started", 5),
    ("Order Completed", 5),
    ("Newsletter Signed Up", 3),
]
_KIND_NAMES = [k for k, _ in KINDS]
_KIND_WEIGHTS = [w for _, w in KINDS]
USERS = 50_000
BASE_TIME = datetime(2024, 6, 1, 8, 0, tzinfo=UTC)


def _iso(dt: datetime) -> str:
    return dt.isoformat(timespec="milliseconds")


def _line_items(rng: random.Random, n: int) -> list[dict[str, Any]]:
    items = []
    for p in rng.sample(PRODUCTS, n):
        items.append(
            {
                "product_id": p["product_id"],
                "sku": p["sku"],
                "name": p["name"],
                "category": p["category"],
                "brand": p["brand"],
                "variant": p["variant"],
                "price": p["price"],
                "quantity": rng.randint(1, 3),
            }
        )
    return items


def _message(rng: random.Random, when: datetime) -> dict[str, Any]:
    user = rng.randrange(USERS)
    anonymous_id = str(uuid.UUID(int=(user * 0x9E3779B97F4A7C15F39CC0605CEDC835 + 0x1234567) % 2**128, version=4))
    known = rng.random() < 0.6
    kind = rng.choices(_KIND_NAMES, _KIND_WEIGHTS)[0]
    context: dict[str, Any] = {
        "library": {"name": "analytics-python", "version": "2.3.3"},
        "ip": f"{rng.randint(11, 223)}.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randint(1, 254)}",
        "userAgent": rng.choice(USER_AGENTS),
        "locale": rng.choice(["en-GB", "en-US", "de-DE", "fr-FR", "nl-NL"]),
    }
    if rng.random() < 0.5:
        context["campaign"] = rng.choice(CAMPAIGNS)
    msg: dict[str, Any] = {
        "type": "track",
        "messageId": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
        "timestamp": _iso(when),
        "anonymousId": anonymous_id,
        "context": context,
        "integrations": {},
    }
    if known:
        msg["userId"] = f"cust-{user:06d}"
    cart_id = f"cart-{user:06d}-{when:%j}"
    product = rng.choice(PRODUCTS)
    if kind == "page":
        name, path = rng.choice(PAGES)
        if name == "Product":
            path += product["product_id"]
        msg["type"] = "page"
        msg["name"] = name
        msg["properties"] = {
            "path": path,
            "url": f"https://shop.example.com{path}",
            "title": f"{name} | Northwind Outfitters",
            "referrer": rng.choice(["", "https://www.google.com/", "https://www.instagram.com/"]),
            "search": "",
        }
    elif kind == "identify":
        msg["type"] = "identify"
        msg["userId"] = f"cust-{user:06d}"
        msg["traits"] = {
            "email": f"customer{user}@example.com",
            "first_name": rng.choice(["Ana", "Ben", "Chloe", "Dev", "Emma", "Farid", "Grace"]),
            "last_name": rng.choice(["Ng", "Okafor", "Smith", "Jansen", "Dubois", "Rossi"]),
            "phone": f"+44 7700 9{rng.randrange(10**5):05d}",
            "loyalty_tier": rng.choice(["none", "silver", "gold"]),
            "created_at": _iso(BASE_TIME - timedelta(days=rng.randrange(1, 1500))),
        }
    elif kind == "Products Searched":
        msg["event"] = kind
        msg["properties"] = {"query": rng.choice(["rain jacket", "boots", "wool hat", "backpack", "denim"])}
    elif kind == "Product Viewed":
        msg["event"] = kind
        msg["properties"] = {
            **{k: product[k] for k in ("product_id", "sku", "name", "category", "brand", "variant", "price")},
            "currency": "GBP",
            "url": f"https://shop.example.com/p/{product['product_id']}",
            "image_url": f"https://cdn.example.com/img/{product['product_id']}.jpg",
        }
    elif kind == "Product Added":
        msg["event"] = kind
        msg["properties"] = {
            "cart_id": cart_id,
            **{k: product[k] for k in ("product_id", "sku", "name", "category", "brand", "variant", "price")},
            "quantity": rng.randint(1, 3),
            "currency": "GBP",
        }
    elif kind == "Cart Viewed":
        msg["event"] = kind
        msg["properties"] = {"cart_id": cart_id, "products": _line_items(rng, rng.randint(1, 4))}
    elif kind in ("Checkout Started", "Order Completed"):
        items = _line_items(rng, rng.randint(1, 5))
        subtotal = round(sum(i["price"] * i["quantity"] for i in items), 2)
        shipping = 0.0 if subtotal > 50 else 4.95
        tax = round(subtotal / 6, 2)
        msg["event"] = kind
        props: dict[str, Any] = {
            "order_id": f"ord-{rng.getrandbits(40):010x}",
            "cart_id": cart_id,
            "value": subtotal,
            "revenue": subtotal,
            "shipping": shipping,
            "tax": tax,
            "currency": "GBP",
            "products": items,
        }
        if kind == "Order Completed":
            props.update(
                checkout_id=f"chk-{rng.getrandbits(32):08x}",
                total=round(subtotal + shipping, 2),
                discount=0.0,
                coupon=rng.choice(["", "", "SUMMER10"]),
                affiliation="web store",
            )
        msg["properties"] = props
    else:  # a custom event
        msg["event"] = kind
        msg["properties"] = {"list_id": "weekly", "source": "footer_form"}
    return msg


def build_batch(seed: int, batch_no: int, size: int) -> dict[str, Any]:
    """The body of one POST /v1/batch; the same (seed, batch_no) always gives the same messages."""
    rng = random.Random(seed * 1_000_003 + batch_no)
    sent_at = BASE_TIME + timedelta(seconds=batch_no)
    messages = [_message(rng, sent_at - timedelta(milliseconds=rng.randrange(1, 60_000))) for _ in range(size)]
    return {"batch": messages, "sentAt": _iso(sent_at)}


def batch_plan(events: int, batch_size: int) -> list[int]:
    """The size of every batch: full batches, then the remainder."""
    full, rest = divmod(events, batch_size)
    return [batch_size] * full + ([rest] if rest else [])


# --------------------------------------------------------------------------- HTTP clients


def _client(
    index: int,
    clients: int,
    port: int,
    write_key: str,
    sizes: list[int],
    seed: int,
    barrier: Any,
    results: Any,
) -> None:
    """One SDK-like sender: pre-builds its bodies, waits for the others, then sends them in order."""
    mine = [(b, n) for b, n in enumerate(sizes) if b % clients == index]
    bodies = [(orjson.dumps(build_batch(seed, b, n)), n) for b, n in mine]
    auth = base64.b64encode(f"{write_key}:".encode()).decode()
    headers = {
        "Content-Type": "application/json",
        "Authorization": f"Basic {auth}",
        "User-Agent": "analytics-python/2.3.3",
        "Connection": "keep-alive",
    }
    latencies: list[float] = []
    accepted = rejected = retries = conn_errors = failed = 0
    error_samples: list[str] = []
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    barrier.wait(timeout=600)
    start = time.monotonic()
    for body, n in bodies:
        for _attempt in range(MAX_ATTEMPTS):
            t0 = time.perf_counter()
            try:
                conn.request("POST", "/v1/batch", body, headers)
                resp = conn.getresponse()
                data = resp.read()
            except (OSError, http.client.HTTPException) as exc:
                conn_errors += 1
                if len(error_samples) < 5:
                    error_samples.append(f"connection: {exc!r}")
                conn.close()
                time.sleep(0.2)
                continue
            latencies.append(time.perf_counter() - t0)
            if resp.status == 200:
                info = orjson.loads(data)
                accepted += int(info.get("accepted", n))
                rejected += int(info.get("rejected", 0))
                break
            if resp.status in (429, 503):
                retries += 1
                with contextlib.suppress(TypeError, ValueError):
                    time.sleep(min(float(resp.getheader("Retry-After") or 1), 5.0))
                continue
            failed += n
            if len(error_samples) < 5:
                error_samples.append(f"HTTP {resp.status}: {data[:300]!r}")
            break
        else:
            failed += n
    end = time.monotonic()
    conn.close()
    results.put(
        {
            "index": index,
            "start": start,
            "end": end,
            "requests": len(latencies),
            "latencies": latencies,
            "sent": sum(n for _, n in bodies),
            "accepted": accepted,
            "rejected": rejected,
            "retries": retries,
            "conn_errors": conn_errors,
            "failed": failed,
            "errors": error_samples,
        }
    )


@dataclass
class HttpResult:
    sent: int = 0
    accepted: int = 0
    rejected: int = 0
    failed: int = 0
    retries: int = 0
    conn_errors: int = 0
    requests: int = 0
    wall: float = 0.0
    latencies: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def events_per_s(self) -> float:
        return self.accepted / self.wall if self.wall else 0.0

    @property
    def requests_per_s(self) -> float:
        return self.requests / self.wall if self.wall else 0.0

    def percentile_ms(self, q: float) -> float:
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return 1000 * ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def drive(port: int, write_key: str, *, events: int, clients: int, batch_size: int, seed: int) -> HttpResult:
    sizes = batch_plan(events, batch_size)
    clients = max(1, min(clients, len(sizes)))
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(clients + 1)
    results = ctx.Queue()
    procs = [
        ctx.Process(
            target=_client,
            args=(i, clients, port, write_key, sizes, seed, barrier, results),
            name=f"bench-client-{i}",
            daemon=True,
        )
        for i in range(clients)
    ]
    for p in procs:
        p.start()
    out: list[dict[str, Any]] = []
    try:
        barrier.wait(timeout=600)  # every client has built its bodies and connected
        deadline = time.monotonic() + 3600
        while len(out) < clients:
            try:
                out.append(results.get(timeout=1))
            except queue.Empty:
                if time.monotonic() > deadline:
                    raise RuntimeError("clients did not finish within an hour") from None
                if all(not p.is_alive() for p in procs) and results.empty():
                    raise RuntimeError("a client process died; see its traceback above") from None
        for p in procs:
            p.join(timeout=30)
    finally:
        for p in procs:
            if p.is_alive():
                p.terminate()
                p.join(timeout=5)
    res = HttpResult()
    res.wall = max(r["end"] for r in out) - min(r["start"] for r in out)
    for r in out:
        res.sent += r["sent"]
        res.accepted += r["accepted"]
        res.rejected += r["rejected"]
        res.failed += r["failed"]
        res.retries += r["retries"]
        res.conn_errors += r["conn_errors"]
        res.requests += r["requests"]
        res.latencies.extend(r["latencies"])
        res.errors.extend(r["errors"])
    return res


# --------------------------------------------------------------------------- server and databases


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def omnijourney_command() -> list[str]:
    sibling = Path(sys.executable).parent / "omnijourney"
    if sibling.exists():
        return [str(sibling)]
    found = shutil.which("omnijourney")
    if found:
        return [found]
    return [sys.executable, "-m", "omnijourney.cli"]


def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process and all its descendants (Linux /proc), 0.0 elsewhere.

    On a shared machine events/s depends on what else runs; the server's CPU per event does not
    (much), so the script reports both.
    """
    proc = Path("/proc")
    if not proc.is_dir():
        return 0.0
    parents: dict[int, int] = {}
    times: dict[int, float] = {}
    tick = os.sysconf("SC_CLK_TCK")
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) "
        parents[int(entry.name)] = int(fields[1])
        times[int(entry.name)] = (int(fields[11]) + int(fields[12])) / tick
    tree, frontier = {pid}, [pid]
    while frontier:
        parent = frontier.pop()
        for child, ppid in parents.items():
            if ppid == parent and child not in tree:
                tree.add(child)
                frontier.append(child)
    return sum(times.get(p, 0.0) for p in tree)


def _get(port: int, path: str, timeout: float = 2.0) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


class Server:
    """`omnijourney serve` in a subprocess; always stopped by `stop()` (call it in `finally`)."""

    def __init__(self, database_url: str, workdir: Path, *, synchronous: str, pipeline: bool, workers: int = 1) -> None:
        self.port = free_port()
        self.data_dir = workdir / "server-data"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = workdir / "server.log"
        env = dict(os.environ)
        env["OMNIJOURNEY_DATA_DIR"] = str(self.data_dir)
        env["OMNIJOURNEY_SQLITE_SYNCHRONOUS"] = synchronous
        cmd = [*omnijourney_command(), "serve", "--port", str(self.port), "--database-url", database_url]
        if not pipeline:
            cmd.append("--no-pipeline")
        if workers > 1:
            cmd += ["--workers", str(workers)]
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(cmd, env=env, stdout=self._log, stderr=subprocess.STDOUT)

    def wait_healthy(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log_tail()}")
            with contextlib.suppress(OSError, http.client.HTTPException):
                if _get(self.port, "/health")[0] == 200:
                    return
            time.sleep(0.1)
        raise RuntimeError(f"server not healthy after {timeout:.0f}s:\n{self.log_tail()}")

    def ready(self) -> dict[str, Any]:
        try:
            return orjson.loads(_get(self.port, "/ready", timeout=10)[1])
        except (OSError, http.client.HTTPException, orjson.JSONDecodeError):
            return {}

    def log_tail(self, lines: int = 30) -> str:
        self._log.flush()
        text = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self._log.close()


def prepare_database(url: str, source_name: str) -> Any:
    """Migrate a fresh database and create the benchmark's source; returns its SourceInfo."""
    from omnijourney.access.service import create_source
    from omnijourney.store import db, migrate

    engine = db.create_engine(url)
    try:
        migrate.upgrade(engine)
        with db.write(engine) as conn:
            return create_source(conn=conn, name=source_name, channel="web", trusted=True)
    finally:
        engine.dispose()


def count_events(url: str) -> int:
    from omnijourney.ingest import service
    from omnijourney.store import db

    engine = db.create_engine(url)
    try:
        with db.read(engine) as conn:
            return service.count_events(conn=conn)
    finally:
        engine.dispose()


class PgServer:
    """Fresh databases on a PostgreSQL server: a throwaway PgCluster, or the one at --pg-url."""

    def __init__(self, pg_url: str | None) -> None:
        self._cluster: Any = None
        self._created: list[str] = []
        if pg_url:
            self.admin_url = pg_url
        else:
            from tests.pgcluster import PgCluster

            self._cluster = PgCluster()
            try:
                self.admin_url = self._cluster.start()
            except BaseException:
                self._cluster.stop()
                raise
        if self.admin_url.startswith(("postgresql://", "postgres://")):
            self.admin_url = "postgresql+psycopg://" + self.admin_url.split("://", 1)[1]

    def _admin(self, sql: str) -> None:
        import sqlalchemy as sa

        engine = sa.create_engine(self.admin_url, isolation_level="AUTOCOMMIT")
        try:
            with engine.connect() as conn:
                conn.exec_driver_sql(sql)
        finally:
            engine.dispose()

    def fresh_database(self, prefix: str) -> str:
        import sqlalchemy as sa

        name = f"{prefix}_{os.getpid()}_{len(self._created)}"
        self._admin(f"CREATE DATABASE {name}")
        self._created.append(name)
        return sa.engine.make_url(self.admin_url).set(database=name).render_as_string(hide_password=False)

    def close(self) -> None:
        try:
            if self._cluster is None:
                for name in self._created:
                    with contextlib.suppress(Exception):
                        self._admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        finally:
            if self._cluster is not None:
                self._cluster.stop()


# --------------------------------------------------------------------------- ceiling


def ceiling_rows(*, events: int, batch_size: int, seed: int, source_id: int) -> list[dict[str, Any]]:
    """The rows the server would store for the benchmark's messages, built by the server's own validator."""
    from omnijourney.config import IngestLimits
    from omnijourney.ingest.schemas import ValidMessage, parse_time, validate_message
    from omnijourney.store.base import utcnow

    limits = IngestLimits()
    rows = []
    for b, n in enumerate(batch_plan(events, batch_size)):
        body = orjson.loads(orjson.dumps(build_batch(seed, b, n)))  # exactly what the server parses
        received_at = utcnow()
        sent_at = parse_time(body.get("sentAt"))
        for raw in body["batch"]:
            msg = validate_message(
                raw,
                default_type=None,
                source_channel="web",
                received_at=received_at,
                batch_sent_at=sent_at,
                client_ip="127.0.0.1",
                limits=limits,
            )
            if not isinstance(msg, ValidMessage):
                raise RuntimeError(f"the benchmark generated an invalid message: {msg}")
            rows.append(msg.row(source_id))
    return rows


def _db_value(column: str, value: Any, *, sqlite: bool) -> Any:
    """A row value as the server's SQLAlchemy types bind it: naive UTC datetimes, JSON text."""
    from omnijourney.store.base import json_serializer

    if value is None:
        return None
    if column in _DATETIME_COLUMNS:
        naive = value.astimezone(UTC).replace(tzinfo=None)
        return naive.isoformat(sep=" ", timespec="microseconds") if sqlite else naive
    if column in _JSON_COLUMNS:
        return json_serializer(value)
    return value


def _chunks(rows: list[dict[str, Any]], size: int, *, sqlite: bool) -> list[list[tuple[Any, ...]]]:
    tuples = [tuple(_db_value(c, r[c], sqlite=sqlite) for c in EVENT_COLUMNS) for r in rows]
    return [tuples[i : i + size] for i in range(0, len(tuples), size)]


def ceiling_sqlite(path: Path, rows: list[dict[str, Any]], *, synchronous: str, chunk: int) -> float:
    import sqlite3

    chunks = _chunks(rows, chunk, sqlite=True)
    sql = f"INSERT INTO events ({', '.join(EVENT_COLUMNS)}) VALUES ({', '.join('?' * len(EVENT_COLUMNS))})"
    con = sqlite3.connect(path, isolation_level=None)
    try:
        for pragma in ("journal_mode=WAL", f"synchronous={synchronous}", "foreign_keys=ON", "busy_timeout=30000"):
            con.execute(f"PRAGMA {pragma}")
        t0 = time.perf_counter()
        for part in chunks:
            con.execute("BEGIN IMMEDIATE")
            con.executemany(sql, part)
            con.execute("COMMIT")
        elapsed = time.perf_counter() - t0
        stored = con.execute("SELECT count(*) FROM events").fetchone()[0]
    finally:
        con.close()
    if stored != len(rows):
        raise RuntimeError(f"ceiling stored {stored} rows, expected {len(rows)}")
    return len(rows) / elapsed


def ceiling_postgres(url: str, rows: list[dict[str, Any]], *, chunk: int) -> float:
    import psycopg
    import sqlalchemy as sa

    chunks = _chunks(rows, chunk, sqlite=False)
    dsn = sa.engine.make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    copy_sql = f"COPY events ({', '.join(EVENT_COLUMNS)}) FROM STDIN"
    with psycopg.connect(dsn) as conn:
        t0 = time.perf_counter()
        for part in chunks:
            with conn.cursor() as cur, cur.copy(copy_sql) as copy:
                for row in part:
                    copy.write_row(row)
            conn.commit()
        elapsed = time.perf_counter() - t0
        stored = conn.execute("SELECT count(*) FROM events").fetchone()[0]  # type: ignore[index]
    if stored != len(rows):
        raise RuntimeError(f"ceiling stored {stored} rows, expected {len(rows)}")
    return len(rows) / elapsed


# --------------------------------------------------------------------------- one backend


@dataclass
class BackendResult:
    backend: str
    http: HttpResult | None = None
    stored: int | None = None
    lag_after: int | None = None
    ceiling: float | None = None
    error: str | None = None
    #: CPU seconds the server's process tree (API, writer, pipeline child) used while the clients ran
    server_cpu: float | None = None
    #: 1-minute load average when the clients finished
    load: float | None = None

    @property
    def cpu_us_per_event(self) -> float | None:
        if not self.server_cpu or self.http is None or not self.http.accepted:
            return None
        return 1e6 * self.server_cpu / self.http.accepted

    @property
    def rows_ok(self) -> bool:
        return self.http is not None and self.stored == self.http.sent

    @property
    def ratio(self) -> float | None:
        if self.http is None or not self.ceiling:
            return None
        return self.http.events_per_s / self.ceiling

    def line(self) -> str:
        if self.error:
            return f"{self.backend} ERROR {self.error}"
        h = self.http
        assert h is not None
        ceiling = f"{self.ceiling:.0f} rows/s" if self.ceiling else "n/a"
        ratio = f"{self.ratio:.0%}" if self.ratio is not None else "n/a"
        return (
            f"{self.backend} http={h.events_per_s:.0f} ev/s p50={h.percentile_ms(0.5):.1f}ms "
            f"p99={h.percentile_ms(0.99):.1f}ms ceiling={ceiling} ratio={ratio} "
            f"req/s={h.requests_per_s:.1f} max={h.percentile_ms(1.0):.1f}ms "
            f"server_cpu={self.cpu_us_per_event or 0:.0f}us/ev load={self.load or 0:.1f} "
            f"rows={'OK' if self.rows_ok else 'MISMATCH'}"
        )


def run_backend(backend: str, args: argparse.Namespace, say: Any) -> BackendResult:
    result = BackendResult(backend)
    workdir = Path(tempfile.mkdtemp(prefix=f"oj-bench-{backend}-"))
    pg: PgServer | None = None
    server: Server | None = None
    try:
        if backend == "sqlite":
            url = f"sqlite:///{workdir / 'http.db'}"
        else:
            say("starting PostgreSQL" if not args.pg_url else "using the PostgreSQL server at --pg-url")
            pg = PgServer(args.pg_url)
            url = pg.fresh_database("oj_bench_http")
        source = prepare_database(url, "bench-http")

        server = Server(url, workdir, synchronous=args.sqlite_synchronous, pipeline=args.pipeline, workers=args.workers)
        server.wait_healthy()
        say(f"server up on 127.0.0.1:{server.port}; sending {args.events} events from {args.clients} clients")
        cpu_before = tree_cpu_seconds(server.proc.pid)
        result.http = drive(
            server.port,
            source.write_key,
            events=args.events,
            clients=args.clients,
            batch_size=args.batch_size,
            seed=args.seed,
        )
        result.server_cpu = tree_cpu_seconds(server.proc.pid) - cpu_before
        result.load = os.getloadavg()[0]
        result.lag_after = server.ready().get("processing_lag")
        result.stored = count_events(url)
        for e in result.http.errors[:5]:
            say(f"  client error: {e}")
        server.stop()
        server = None

        say("building ceiling rows (untimed)")
        if backend == "sqlite":
            ceiling_path = workdir / "ceiling.db"
            ceiling_url = f"sqlite:///{ceiling_path}"
        else:
            assert pg is not None
            ceiling_url = pg.fresh_database("oj_bench_ceiling")
        ceiling_source = prepare_database(ceiling_url, "bench-ceiling")
        rows = ceiling_rows(events=args.events, batch_size=args.batch_size, seed=args.seed, source_id=ceiling_source.id)
        say(f"bulk-inserting {len(rows)} rows")
        if backend == "sqlite":
            result.ceiling = ceiling_sqlite(
                ceiling_path, rows, synchronous=args.sqlite_synchronous, chunk=args.ceiling_chunk
            )
        else:
            result.ceiling = ceiling_postgres(ceiling_url, rows, chunk=args.ceiling_chunk)
    except Exception as exc:
        result.error = f"{type(exc).__name__}: {exc}"
        if server is not None:
            say(f"server log tail:\n{server.log_tail()}")
    finally:
        if server is not None:
            server.stop()
        if pg is not None:
            pg.close()
        shutil.rmtree(workdir, ignore_errors=True)
    return result


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--backend", choices=("sqlite", "postgres", "both"), default="both")
    p.add_argument("--events", type=int, default=200_000, help="total events sent (default 200000)")
    p.add_argument("--clients", type=int, default=4, help="client processes (default 4)")
    p.add_argument("--batch-size", type=int, default=100, help="messages per request (default 100, the SDK's)")
    p.add_argument("--seed", type=int, default=1, help="workload seed (same seed, same messages)")
    p.add_argument(
        "--pg-url",
        default=None,
        help="PostgreSQL server to use instead of a throwaway cluster;\n"
        "the role needs CREATEDB (fresh databases are created and dropped)",
    )
    p.add_argument(
        "--sqlite-synchronous",
        default=os.environ.get("OMNIJOURNEY_SQLITE_SYNCHRONOUS", "FULL").upper(),
        type=str.upper,
        choices=("OFF", "NORMAL", "FULL", "EXTRA"),
        help="SQLite synchronous pragma for the server (as OMNIJOURNEY_SQLITE_SYNCHRONOUS) and the ceiling;\n"
        "default FULL, the server's default",
    )
    p.add_argument(
        "--no-pipeline",
        dest="pipeline",
        action="store_false",
        help="serve with --no-pipeline (no processing stage competing with ingestion)",
    )
    p.add_argument("--workers", type=int, default=1, help="API server processes (serve --workers; default 1)")
    p.add_argument("--ceiling-chunk", type=int, default=10_000, help="rows per ceiling transaction (default 10000)")
    args = p.parse_args(argv)
    if args.events < 1 or args.clients < 1 or args.batch_size < 1 or args.ceiling_chunk < 1:
        p.error("--events, --clients, --batch-size and --ceiling-chunk must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    from rich.console import Console
    from rich.table import Table

    args = parse_args(argv)
    console = Console()
    if not console.is_terminal:  # piped or redirected: do not squeeze the table into 80 columns
        console = Console(width=150)
    backends = ["sqlite", "postgres"] if args.backend == "both" else [args.backend]
    console.print(
        f"[bold]ingest benchmark[/bold]: {args.events} events, batches of {args.batch_size}, "
        f"{args.clients} clients, sqlite synchronous={args.sqlite_synchronous}, "
        f"pipeline {'on' if args.pipeline else 'off'}, {os.cpu_count()} CPUs"
    )
    results = []
    for backend in backends:
        console.rule(backend)
        results.append(run_backend(backend, args, lambda m, b=backend: console.print(f"[dim]{b}:[/dim] {m}")))

    table = Table(title="ingestion: HTTP /v1/batch vs raw bulk insert")
    for col in ("backend", "events/s", "req/s", "p50 ms", "p99 ms", "max ms", "rows", "lag after", "ceiling rows/s"):
        table.add_column(col, justify="left" if col in ("backend", "rows") else "right")
    table.add_column("HTTP/ceiling", justify="right")
    table.add_column("server CPU µs/ev", justify="right")
    table.add_column("load", justify="right")
    for r in results:
        if r.error or r.http is None:
            table.add_row(r.backend, *["-"] * 5, "[red]ERROR[/red]", "-", "-", "-", "-", "-")
            continue
        h = r.http
        rows = (
            f"[green]OK[/green] {r.stored}"
            if r.rows_ok
            else f"[red]MISMATCH[/red] {r.stored}/{h.sent} (accepted {h.accepted}, failed {h.failed})"
        )
        table.add_row(
            r.backend,
            f"{h.events_per_s:,.0f}",
            f"{h.requests_per_s:,.1f}",
            f"{h.percentile_ms(0.5):.1f}",
            f"{h.percentile_ms(0.99):.1f}",
            f"{h.percentile_ms(1.0):.1f}",
            rows,
            "-" if r.lag_after is None else str(r.lag_after),
            f"{r.ceiling:,.0f}" if r.ceiling else "-",
            f"{r.ratio:.0%}" if r.ratio is not None else "-",
            f"{r.cpu_us_per_event:.0f}" if r.cpu_us_per_event else "-",
            f"{r.load:.1f}" if r.load is not None else "-",
        )
    console.print(table)
    for r in results:
        if r.http is not None and (r.http.retries or r.http.conn_errors):
            console.print(
                f"{r.backend}: {r.http.retries} retried 429/503 answers, {r.http.conn_errors} connection errors"
            )
    for r in results:
        print(r.line(), flush=True)
    return 0 if all(not r.error and r.rows_ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
