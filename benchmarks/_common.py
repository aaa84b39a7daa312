"""Shared parts of the identity, profile-read and freshness benchmarks.

* `World`: a deterministic (seeded) population of people and the event stream they produce,
  with the identifier mix of a real omnichannel retailer: mostly anonymous web and app
  traffic (several devices per person), identify calls linking a device to a user id,
  e-mail and phone, POS purchases with loyalty cards (a trusted source), call-centre calls
  with the caller's phone (trusted), some junk values and a few shared devices.
* `load_events`: bulk-loads the stream into the event log with the server's own
  `append_events`, 10,000 rows per transaction (rows built directly in the shape
  `validate_message(...).row(source_id)` returns; a sample is checked against it).
* `prepare_processed`: a fresh database with the benchmark's sources, loaded and processed.
* Helpers for figures (percentiles) and the server / PostgreSQL handling of `ingest.py`.

* Plumbing of the read benchmarks (`profile_read.py`, `console.py`): e-mail samples, reader
  processes on a start barrier, server CPU per request (`tree_cpu_seconds`), and prepared
  SQLite worlds kept for reuse (`prepared_sqlite`).

Not a benchmark itself; imported by `identity.py`, `profile_read.py`, `console.py` and `freshness.py`.
"""

from __future__ import annotations

import gzip
import http.client
import math
import multiprocessing as mp
import os
import queue
import random
import shutil
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import orjson

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # for tests.pgcluster and benchmarks.ingest

from benchmarks.ingest import PgServer, Server, free_port  # noqa: E402

__all__ = [
    "SOURCES",
    "GraphStats",
    "HttpClient",
    "Pauses",
    "PgServer",
    "Server",
    "World",
    "add_think_argument",
    "add_world_arguments",
    "drive_readers",
    "free_port",
    "graph_stats",
    "graph_stats_of",
    "known_emails",
    "load_events",
    "make_console",
    "percentile",
    "prepare_database",
    "prepare_processed",
    "prepared_sqlite",
    "read_world",
    "tree_cpu_seconds",
]

MASK = (1 << 64) - 1
#: key -> (source name, channel, trusted): POS and call centre are server-side, trusted sources
SOURCES: dict[str, tuple[str, str, bool]] = {
    "web": ("bench-web", "web", False),
    "app": ("bench-app", "app", False),
    "pos": ("bench-pos", "store", True),
    "call": ("bench-callcentre", "call_center", True),
}
BASE_TIME = datetime(2025, 1, 1, tzinfo=UTC)
#: the stream spans this many days, events evenly spaced in log order
SPAN_DAYS = 180
CHUNK = 10_000

FIRST = ["Jana", "Petr", "Eva", "Tomas", "Lucie", "Martin", "Anna", "Jakub", "Tereza", "Ondrej", "Klara", "David"]
LAST = ["Novak", "Svoboda", "Dvorak", "Cerny", "Prochazka", "Kucera", "Vesela", "Horak", "Nemec", "Pokorny"]
DOMAINS = ["gmail.com", "seznam.cz", "email.cz", "outlook.com", "example.com", "centrum.cz"]
JUNK_EMAILS = ["test@test.com", "null", "n/a", "a@a.com", "noreply@example.com", "not-an-email", "undefined"]
JUNK_PHONES = ["0000000000", "123456789", "1111111", "unknown", "n/a", "+420 000 000 000"]
JUNK_USER_IDS = ["null", "undefined", "guest", "0", "-1"]
PAGES = [("Home", "/"), ("Category", "/c/outdoor"), ("Product", "/p/"), ("Search", "/search"), ("Stores", "/stores")]
SCREENS = ["Home", "Catalogue", "Product", "Basket", "Loyalty Card"]
PRODUCTS = [(f"prod-{i:04d}", round(199 + (i * 37) % 3800, 2)) for i in range(400)]


def _mix(*parts: int) -> int:
    """A 64-bit hash of integers (splitmix64 steps): per-person attributes without storing them."""
    x = 0x9E3779B97F4A7C15
    for p in parts:
        x = ((x ^ (p & MASK)) * 0xBF58476D1CE4E5B9) & MASK
        x ^= x >> 31
        x = (x * 0x94D049BB133111EB) & MASK
        x ^= x >> 29
    return x


def _iso(dt: datetime) -> str:
    return dt.isoformat(timespec="milliseconds")


class World:
    """`profiles` people and the events they cause; the same seed always gives the same stream.

    Event `i` of the stream is a pure function of (seed, i's chunk), so a stream can be loaded
    in chunks without holding it in memory, and `stream` > 0 gives further, disjoint streams
    (new message ids and times after the main stream) over the same people.
    """

    def __init__(self, seed: int, profiles: int, events: int) -> None:
        self.seed = seed
        self.profiles = max(1, profiles)
        self.events = max(1, events)
        self.active = max(1, self.profiles // 20)  # 5% of people cause 20% of the traffic
        self.step_ms = SPAN_DAYS * 86_400_000 / self.events

    # ---- people --------------------------------------------------------------------------
    def _h(self, p: int, salt: int) -> int:
        return _mix(self.seed, p, salt)

    def has_account(self, p: int) -> bool:
        return self._h(p, 1) % 100 < 65

    def has_phone(self, p: int) -> bool:
        return self._h(p, 2) % 100 < 55

    def has_card(self, p: int) -> bool:
        return self._h(p, 3) % 100 < 35

    def app_user(self, p: int) -> bool:
        return self._h(p, 4) % 100 < 40

    def devices(self, p: int) -> int:
        return 1 + self._h(p, 5) % 3

    def _device_owner(self, p: int, d: int) -> int:
        # 0.5% of people share their first device (a family tablet) with the previous person
        while d == 0 and p > 0 and self._h(p, 6) % 1000 < 5:
            p -= 1
        return p

    def anonymous_id(self, p: int, d: int) -> str:
        owner = self._device_owner(p, d)
        return str(uuid.UUID(int=(self._h(owner, 100 + d) << 64) | self._h(owner, 200 + d), version=4))

    def app_anonymous_id(self, p: int) -> str:
        return str(uuid.UUID(int=(self._h(p, 300) << 64) | self._h(p, 301), version=4))

    def install_id(self, p: int) -> str:
        return f"ios-{self._h(p, 7):016x}"

    def user_id(self, p: int) -> str:
        return f"cust-{p:08d}"

    def names(self, p: int) -> tuple[str, str]:
        h = self._h(p, 8)
        return FIRST[h % len(FIRST)], LAST[(h >> 8) % len(LAST)]

    def email(self, p: int) -> str:
        first, last = self.names(p)
        return f"{first}.{last}.{p}@{DOMAINS[self._h(p, 9) % len(DOMAINS)]}".lower()

    def phone(self, p: int) -> str:
        """A valid Czech mobile number in E.164 (what normalisation stores)."""
        prefix = ("77", "73", "79", "72")[(p // 10_000_000) % 4]
        return f"+420{prefix}{p % 10_000_000:07d}"

    def card(self, p: int) -> str:
        return f"LC{p:010d}"

    # ---- the values as clients send them (formats vary; normalisation must unify them) --------
    @staticmethod
    def _email_as_sent(email: str, r: float) -> str:
        if r < 0.1:
            return f" {email[0].upper()}{email[1:]} "
        return email

    @staticmethod
    def _phone_as_sent(phone: str, r: float) -> str:
        national = phone[4:]
        if r < 0.4:
            return f"{national[:3]} {national[3:6]} {national[6:]}"
        if r < 0.7:
            return f"+420 {national[:3]} {national[3:6]} {national[6:]}"
        return phone

    @staticmethod
    def _card_as_sent(card: str, r: float) -> str:
        return f"{card[:2].lower()}-{card[2:]}" if r < 0.2 else card

    # ---- the stream ----------------------------------------------------------------------
    def person(self, rng: random.Random) -> int:
        return rng.randrange(self.active) if rng.random() < 0.2 else rng.randrange(self.profiles)

    def chunk(self, c: int, size: int = CHUNK, *, stream: int = 0) -> list[tuple[str, datetime, dict[str, Any]]]:
        """Events c*size .. c*size+size-1 of a stream as (source key, time, Segment message)."""
        rng = random.Random(_mix(self.seed, stream, c))
        out = []
        first = c * size
        offset_ms = stream * SPAN_DAYS * 86_400_000
        for i in range(first, min(first + size, self.events) if stream == 0 else first + size):
            when = BASE_TIME + timedelta(milliseconds=offset_ms + int(i * self.step_ms))
            key, msg = self._event(rng, i, when, stream)
            out.append((key, when, msg))
        return out

    def stream_chunks(self, size: int = CHUNK) -> Iterator[list[tuple[str, datetime, dict[str, Any]]]]:
        for c in range((self.events + size - 1) // size):
            yield self.chunk(c, size)

    def _event(self, rng: random.Random, i: int, when: datetime, stream: int) -> tuple[str, dict[str, Any]]:
        p = self.person(rng)
        msg: dict[str, Any] = {
            "messageId": str(uuid.UUID(int=(_mix(self.seed, stream, i) << 64) | i, version=4)),
            "timestamp": _iso(when),
        }
        r = rng.random() * 100
        if r < 76:  # anonymous browsing: web, or the app for app users
            if r >= 62 and self.app_user(p):
                return "app", self._app_browse(rng, p, msg)
            return "web", self._web_browse(rng, p, msg, logged_in=False)
        if r < 81:
            return "web", self._web_browse(rng, p, msg, logged_in=self.has_account(p))
        if r < 91:
            return self._identify(rng, p, msg)
        if r < 97:
            return "pos", self._pos(rng, p, i, msg)
        return "call", self._call(rng, p, i, msg)

    def _web_browse(self, rng: random.Random, p: int, msg: dict[str, Any], *, logged_in: bool) -> dict[str, Any]:
        anon = self.anonymous_id(p, rng.randrange(self.devices(p)))
        msg["anonymousId"] = "undefined" if rng.random() < 0.002 else anon  # a broken tag: junk
        if logged_in:
            msg["userId"] = self.user_id(p)
        msg["context"] = {"userAgent": "Mozilla/5.0 (X11; Linux x86_64) Firefox/127.0", "locale": "cs-CZ"}
        k = rng.random()
        product, price = PRODUCTS[rng.randrange(len(PRODUCTS))]
        if k < 0.55:
            name, path = PAGES[rng.randrange(len(PAGES))]
            msg.update(type="page", name=name, properties={"path": path, "url": f"https://shop.example.cz{path}"})
        elif k < 0.85:
            msg.update(
                type="track",
                event="Product Viewed",
                properties={"product_id": product, "price": price, "currency": "CZK"},
            )
        elif k < 0.95:
            msg.update(
                type="track",
                event="Product Added",
                properties={"cart_id": f"cart-{p}", "product_id": product, "price": price, "quantity": 1},
            )
        else:
            msg.update(type="track", event="Products Searched", properties={"query": "rain jacket"})
        return msg

    def _app_browse(self, rng: random.Random, p: int, msg: dict[str, Any]) -> dict[str, Any]:
        msg["anonymousId"] = self.app_anonymous_id(p)
        msg["context"] = {"device": {"id": self.install_id(p), "type": "ios", "model": "iPhone15,2"}}
        if rng.random() < 0.7:
            msg.update(type="screen", name=SCREENS[rng.randrange(len(SCREENS))], properties={})
        else:
            product, price = PRODUCTS[rng.randrange(len(PRODUCTS))]
            msg.update(type="track", event="Product Viewed", properties={"product_id": product, "price": price})
        return msg

    def _identify(self, rng: random.Random, p: int, msg: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        first, last = self.names(p)
        traits: dict[str, Any] = {"first_name": first, "last_name": last}
        j = rng.random()
        traits["email"] = (
            JUNK_EMAILS[rng.randrange(len(JUNK_EMAILS))]
            if j < 0.02
            else self._email_as_sent(self.email(p), rng.random())
        )
        if self.has_phone(p) and rng.random() < 0.5:
            traits["phone"] = (
                JUNK_PHONES[rng.randrange(len(JUNK_PHONES))]
                if rng.random() < 0.02
                else self._phone_as_sent(self.phone(p), rng.random())
            )
        msg.update(type="identify", traits=traits)
        if self.has_account(p):
            msg["userId"] = JUNK_USER_IDS[rng.randrange(len(JUNK_USER_IDS))] if j > 0.995 else self.user_id(p)
        if self.app_user(p) and rng.random() < 0.3:
            msg["anonymousId"] = self.app_anonymous_id(p)
            msg["context"] = {"device": {"id": self.install_id(p), "type": "ios"}}
            return "app", msg
        msg["anonymousId"] = self.anonymous_id(p, rng.randrange(self.devices(p)))
        return "web", msg

    def _pos(self, rng: random.Random, p: int, i: int, msg: dict[str, Any]) -> dict[str, Any]:
        # server-side: a fresh anonymousId per receipt; the loyalty card (if any) identifies the buyer
        msg["anonymousId"] = f"pos-rcpt-{self.seed}-{i}"
        store = f"store-{self._h(p, 10) % 40:02d}"
        msg["context"] = {"channel": "store"}
        if self.has_card(p) and rng.random() < 0.2:
            traits: dict[str, Any] = {"loyalty_card": self._card_as_sent(self.card(p), rng.random())}
            if rng.random() < 0.7:
                traits["email"] = self.email(p)
            msg.update(type="identify", traits=traits)
            return msg
        product, price = PRODUCTS[rng.randrange(len(PRODUCTS))]
        qty = 1 + rng.randrange(3)
        props: dict[str, Any] = {
            "order_id": f"pos-{self.seed}-{i}",
            "revenue": round(price * qty, 2),
            "currency": "CZK",
            "store_id": store,
            "products": [{"product_id": product, "price": price, "quantity": qty}],
        }
        if self.has_card(p):
            props["loyalty_card"] = self._card_as_sent(self.card(p), rng.random())
        msg.update(type="track", event="Order Completed", properties=props)
        return msg

    def _call(self, rng: random.Random, p: int, i: int, msg: dict[str, Any]) -> dict[str, Any]:
        msg["anonymousId"] = f"call-{self.seed}-{i}"
        props: dict[str, Any] = {"call_id": f"c{i}", "duration_seconds": 30 + rng.randrange(600)}
        if self.has_phone(p):
            props["phone"] = self._phone_as_sent(self.phone(p), rng.random())
        else:
            props["phone"] = "unknown" if rng.random() < 0.5 else "anonymous"  # withheld caller id: junk
        if rng.random() < 0.2:
            props["email"] = self.email(p)
        msg.update(type="track", event="Call Completed", properties=props)
        return msg


# --------------------------------------------------------------------------- rows and loading


def _row(key: str, when: datetime, msg: dict[str, Any], source_id: int, channel: str) -> dict[str, Any]:
    """The `events` row `validate_message(msg, ...).row(source_id)` gives for the World's messages.

    Built directly because validating millions of messages would take longer than the
    benchmark itself; `check_rows` compares a sample with the server's validator.
    """
    from omnijourney.ingest.spec import CHANNELS, ECOMMERCE_EVENTS
    from omnijourney.store.base import Encoded

    encoded = orjson.dumps(msg)
    typ = msg["type"]
    event = msg.get("event") if typ == "track" else (msg.get("name") if typ in ("page", "screen") else None)
    props = msg.get("properties") or {}
    order_id = cart_id = currency = None
    revenue = None
    if typ == "track" and event in ECOMMERCE_EVENTS:
        order_id = props.get("order_id")
        cart_id = props.get("cart_id")
        currency = props.get("currency")
        revenue = props.get("revenue", props.get("total"))
        if revenue is not None:
            revenue = float(revenue)
    elif typ == "track":
        order_id = props.get("order_id")
    context = dict(msg.get("context") or {})
    ch = context.get("channel")
    return {
        "source_id": source_id,
        "message_id": msg["messageId"],
        "type": typ,
        "event": event,
        "user_id": msg.get("userId"),
        "anonymous_id": msg.get("anonymousId"),
        "channel": ch if isinstance(ch, str) and ch in CHANNELS else channel,
        "timestamp": when,
        "received_at": when + timedelta(seconds=2),
        "sent_at": None,
        "original_timestamp": when,
        "order_id": order_id,
        "cart_id": cart_id,
        "revenue": revenue,
        "currency": currency,
        "context": context,
        "payload": Encoded(encoded.decode()),
    }


def check_rows(sample: list[tuple[str, datetime, dict[str, Any]]], source_ids: dict[str, int]) -> None:
    """Raise if a directly built row differs from what the server's validator would store."""
    from omnijourney.config import IngestLimits
    from omnijourney.ingest.schemas import ValidMessage, validate_message

    limits = IngestLimits()
    for key, when, msg in sample:
        channel = SOURCES[key][1]
        mine = _row(key, when, msg, source_ids[key], channel)
        v = validate_message(
            orjson.loads(orjson.dumps(msg)),
            default_type=None,
            source_channel=channel,
            received_at=when + timedelta(seconds=2),
            batch_sent_at=None,
            client_ip=None,
            limits=limits,
        )
        if not isinstance(v, ValidMessage):
            raise RuntimeError(f"the benchmark generated an invalid message: {v}: {msg}")
        theirs = v.row(source_ids[key])
        for col, value in theirs.items():
            if mine[col] != value:
                raise RuntimeError(f"row builder differs from validate_message on {col}: {mine[col]!r} != {value!r}")


def load_events(
    engine: Any,
    world: World,
    source_ids: dict[str, int],
    *,
    chunk: int = CHUNK,
    progress: Callable[[int], None] | None = None,
) -> int:
    """Append the world's whole stream to the event log, `chunk` rows per transaction."""
    from omnijourney.ingest.service import append_events
    from omnijourney.store import db

    total = 0
    for c, part in enumerate(world.stream_chunks(chunk)):
        if c == 0:
            check_rows(part[:2000], source_ids)
        rows = [_row(k, when, msg, source_ids[k], SOURCES[k][1]) for k, when, msg in part]
        with db.write(engine) as conn:
            append_events(conn=conn, rows=rows)
        total += len(rows)
        if progress is not None:
            progress(total)
    return total


def prepare_database(url: str) -> dict[str, Any]:
    """Migrate a fresh database and create the benchmark's sources; returns key -> SourceInfo."""
    from omnijourney.access.service import create_source
    from omnijourney.store import db, migrate

    engine = db.create_engine(url)
    try:
        migrate.upgrade(engine)
        with db.write(engine) as conn:
            return {
                key: create_source(conn=conn, name=name, channel=channel, trusted=trusted)
                for key, (name, channel, trusted) in SOURCES.items()
            }
    finally:
        engine.dispose()


@dataclass
class GraphStats:
    events: int = 0
    attached: int = 0
    profiles: int = 0
    clusters: int = 0
    merges: int = 0
    links: int = 0
    conflicts: dict[str, int] | None = None

    @property
    def conflict_total(self) -> int:
        return sum((self.conflicts or {}).values())

    def conflicts_text(self) -> str:
        return ", ".join(f"{k} {n}" for k, n in sorted((self.conflicts or {}).items())) or "none"

    def same_graph(self, other: GraphStats) -> bool:
        return (self.attached, self.profiles, self.clusters, self.merges, self.links, self.conflicts) == (
            other.attached,
            other.profiles,
            other.clusters,
            other.merges,
            other.links,
            other.conflicts,
        )


def graph_stats_of(url: str) -> GraphStats:
    """`graph_stats` of the database at `url` (an already prepared world)."""
    from omnijourney.store import db

    engine = db.create_engine(url)
    try:
        return graph_stats(engine)
    finally:
        engine.dispose()


def graph_stats(engine: Any) -> GraphStats:
    import sqlalchemy as sa

    from omnijourney.store import db

    def one(conn: Any, sql: str) -> int:
        return int(conn.execute(sa.text(sql)).scalar_one())

    with db.read(engine) as conn:
        return GraphStats(
            events=one(conn, "SELECT count(*) FROM events"),
            attached=one(conn, "SELECT count(*) FROM profile_events"),
            profiles=one(conn, "SELECT count(*) FROM profiles"),
            clusters=one(conn, "SELECT count(DISTINCT canonical_id) FROM profiles"),
            merges=one(conn, "SELECT count(*) FROM identity_merges"),
            links=one(conn, "SELECT count(*) FROM identity_links"),
            conflicts={
                k: int(n)
                for k, n in conn.execute(sa.text("SELECT kind, count(*) FROM identity_conflicts GROUP BY kind")).all()
            },
        )


def prepare_processed(
    url: str, *, profiles: int, events: int, seed: int, batch: int, say: Callable[[str], None]
) -> tuple[dict[str, Any], GraphStats, float]:
    """A fresh database with the World's stream loaded and fully processed (untimed setup).

    Returns the sources, the graph's figures and the processing rate (events/s) for the record.
    """
    from omnijourney.pipeline.service import default_handlers
    from omnijourney.pipeline.worker import run_until_idle
    from omnijourney.store import db

    sources = prepare_database(url)
    source_ids = {k: s.id for k, s in sources.items()}
    engine = db.create_engine(url)
    try:
        world = World(seed, profiles, events)
        t0 = time.perf_counter()
        n = load_events(engine, world, source_ids)
        say(f"loaded {n:,} events in {time.perf_counter() - t0:.1f}s; processing (batch {batch})")
        t0 = time.perf_counter()
        done = run_until_idle(engine, default_handlers(), batch=batch)
        elapsed = time.perf_counter() - t0
        stats = graph_stats(engine)
        say(
            f"processed {done:,} events in {elapsed:.1f}s ({done / elapsed:,.0f} ev/s): "
            f"{stats.clusters:,} customers, {stats.merges:,} merges, {stats.conflict_total:,} conflicts"
        )
        return sources, stats, done / elapsed if elapsed else 0.0
    finally:
        engine.dispose()


# --------------------------------------------------------------------------- the readers' HTTP client


@dataclass
class Reply:
    status_code: int
    content: bytes

    @property
    def text(self) -> str:
        return self.content.decode()

    def json(self) -> Any:
        return orjson.loads(self.content)


class HttpClient:
    """One keep-alive HTTP/1.1 connection on the standard library, with a cookie jar.

    The read benchmarks run their load generator on the same cores as the server. httpx costs
    ~0.9 ms of client CPU per request here, http.client ~0.2 ms (`http_floor.py`), so with
    httpx a closed loop measured the client nearly as much as the server. It sends the
    headers httpx sent (so the server does the same work) and retries a request once when
    the server closed an idle connection."""

    HEADERS = {
        "Accept": "*/*",
        "Accept-Encoding": "gzip",
        "User-Agent": "omnijourney-bench",
        "Connection": "keep-alive",
    }

    def __init__(self, port: int, headers: dict[str, str] | None = None, timeout: float = 60.0) -> None:
        self._port, self._timeout = port, timeout
        self._conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        self.headers = {**self.HEADERS, **(headers or {})}
        self.cookies: dict[str, str] = {}

    def get(self, path: str, params: dict[str, Any] | None = None) -> Reply:
        return self.request("GET", f"{path}?{urlencode(params)}" if params else path)

    def post(self, path: str, data: dict[str, str]) -> Reply:
        body = urlencode(data).encode()
        return self.request("POST", path, body, {"Content-Type": "application/x-www-form-urlencoded"})

    def request(self, method: str, path: str, body: bytes | None = None, extra: dict[str, str] | None = None) -> Reply:
        headers = {**self.headers, **(extra or {})}
        if self.cookies:
            headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        for attempt in (1, 2):
            try:
                self._conn.request(method, path, body=body, headers=headers)
                response = self._conn.getresponse()
                content = response.read()
                break
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                self._conn.close()
                if attempt == 2:
                    raise
        for cookie in response.headers.get_all("Set-Cookie") or ():
            for name, morsel in SimpleCookie(cookie).items():
                self.cookies[name] = morsel.value
        if response.headers.get("Content-Encoding") == "gzip":
            content = gzip.decompress(content)
        return Reply(response.status, content)

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> HttpClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --------------------------------------------------------------------------- figures and output


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..1) of `values`; NaN when empty."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1))]


def make_console() -> Any:
    from rich.console import Console

    console = Console()
    if not console.is_terminal:  # piped or redirected: do not squeeze tables into 80 columns
        console = Console(width=150)
    return console


# --------------------------------------------------------------------------- read benchmarks


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds of a process and its live children (the API workers of `serve --workers`)."""
    total = process_cpu_seconds(pid)
    children = Path(f"/proc/{pid}/task/{pid}/children")
    if children.exists():
        for child in children.read_text().split():
            total += tree_cpu_seconds(int(child))
    return total


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (Linux /proc): a cost that load does not inflate."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def known_emails(url: str, sample: int, seed: int) -> list[str]:
    """A seeded sample of the e-mail addresses the processed graph knows (every lookup finds someone)."""
    import sqlalchemy as sa

    from omnijourney.store import db

    engine = db.create_engine(url)
    try:
        with db.read(engine) as conn:
            emails = [
                r[0]
                for r in conn.execute(
                    sa.text("SELECT value FROM identity_links WHERE id_type = 'email' ORDER BY id LIMIT 500000")
                )
            ]
    finally:
        engine.dispose()
    if not emails:
        raise RuntimeError("the processed graph holds no e-mail address")
    return random.Random(seed).sample(emails, min(sample, len(emails)))


class Pauses:
    """A session's think time before each request: exponential with mean `mean_ms`.

    0 (the default of the read benchmarks) is a closed loop, every session sending its next
    request the moment the last one is answered: that measures the server's saturation, not
    people. Staff at a console read a page before they click; a think time models them, and
    with it `--readers` is the number of people working at once."""

    def __init__(self, mean_ms: float, seed: int) -> None:
        self._rate = 1000.0 / mean_ms if mean_ms > 0 else 0.0
        self._rng = random.Random(seed)

    def __call__(self) -> None:
        if self._rate:
            time.sleep(self._rng.expovariate(self._rate))


def add_world_arguments(parser: Any) -> None:
    """`--keep-dir` and `--database-url`: where a read benchmark's processed world comes from (`read_world`)."""
    parser.add_argument(
        "--keep-dir",
        default=None,
        help="keep the prepared SQLite world in this directory and reuse it in later runs\n"
        "of the same --profiles, --events and --seed (console.py and profile_read.py share them;\n"
        "preparing 1 M people takes hours)",
    )
    parser.add_argument(
        "--database-url",
        default=None,
        help="measure this already prepared and processed database instead (SQLite or PostgreSQL;\n"
        "nothing is dropped; --profiles/--events are then only labels; use with --backend)",
    )


def add_think_argument(parser: Any) -> None:
    parser.add_argument(
        "--think-ms",
        type=float,
        default=0.0,
        help="mean think time (exponential) before each request of a session, in ms;\n"
        "0 (default): a closed loop without pauses, i.e. the server saturated",
    )


def drive_readers(target: Callable[..., None], port: int, token: str, emails: list[str], args: Any) -> dict[str, Any]:
    """Run `target` in `args.client_procs` spawned processes sharing `args.readers` threads and
    `args.requests` sequences; all start together on a barrier. Returns the merged figures:
    wall time, latencies per call, failures and the first errors.

    `target(index, port, token, emails, sequences, threads, timeline_limit, warmup, seed, think_ms,
    barrier, results)` puts one dict with start, end, lat, failed and errors on `results`."""
    procs_n = max(1, min(args.client_procs, args.readers))
    threads = [args.readers // procs_n + (1 if i < args.readers % procs_n else 0) for i in range(procs_n)]
    shares = [args.requests * t // args.readers for t in threads]
    shares[0] += args.requests - sum(shares)
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(procs_n + 1)
    results = ctx.Queue()
    procs = [
        ctx.Process(
            target=target,
            args=(i, port, token, emails, shares[i], threads[i], args.timeline_limit, args.warmup, args.seed)
            + (getattr(args, "think_ms", 0.0), barrier, results),
            name=f"bench-reader-{i}",
            daemon=True,
        )
        for i in range(procs_n)
    ]
    for p in procs:
        p.start()
    out: list[dict[str, Any]] = []
    try:
        barrier.wait(timeout=900)
        deadline = time.monotonic() + 3600
        while len(out) < procs_n:
            try:
                out.append(results.get(timeout=1.0))
            except queue.Empty:
                if time.monotonic() > deadline:
                    raise RuntimeError("readers did not finish within an hour") from None
                if all(not p.is_alive() for p in procs) and results.empty():
                    raise RuntimeError("a reader process died; see its traceback above") from None
        for p in procs:
            p.join(timeout=30)
    finally:
        for p in procs:
            if p.is_alive():
                p.terminate()
                p.join(timeout=5)
    merged: dict[str, Any] = {"wall": 0.0, "lat": {}, "failed": 0, "errors": []}
    merged["wall"] = max(r["end"] for r in out) - min(r["start"] for r in out)
    for r in out:
        for k, v in r["lat"].items():
            merged["lat"].setdefault(k, []).extend(v)
        merged["failed"] += r["failed"]
        merged["errors"].extend(r["errors"])
    return merged


def read_world(
    backend: str, args: Any, workdir: Path, name: str, say: Callable[[str], None]
) -> tuple[str, GraphStats, PgServer | None]:
    """The processed database a read benchmark measures: `--database-url` as it is, a kept SQLite
    world (`--keep-dir`), or a fresh one (SQLite in `workdir`, or a PostgreSQL database `name`).
    Returns its URL, its graph figures and the PostgreSQL server started for it (close it after)."""
    if args.database_url:
        say("measuring the processed database at --database-url (kept; migrated to the current head)")
        return args.database_url, graph_stats_of(args.database_url), None
    size = {"profiles": args.profiles, "events": args.events, "seed": args.seed, "batch": args.batch}
    if backend == "sqlite" and args.keep_dir:
        url, stats = prepared_sqlite(Path(args.keep_dir), **size, say=say)
        return url, stats, None
    pg = None
    if backend == "sqlite":
        url = f"sqlite:///{workdir / (name + '.db')}"
    else:
        say("starting PostgreSQL" if not args.pg_url else "using the PostgreSQL server at --pg-url")
        pg = PgServer(args.pg_url)
        url = pg.fresh_database(name)
    say(f"preparing {args.events:,} events for {args.profiles:,} people (load and process; not timed)")
    _, stats, _ = prepare_processed(url, **size, say=say)
    return url, stats, pg


def prepared_sqlite(
    keep_dir: Path, *, profiles: int, events: int, seed: int, batch: int, say: Callable[[str], None]
) -> tuple[str, GraphStats]:
    """A processed SQLite world kept in `keep_dir` and reused by later runs of the same size and seed.

    Preparing a large world (load + process) takes far longer than measuring it; the file is
    only reused once it was completely prepared (a marker with its figures is written last).
    Migrations newer than the file are applied when the server starts."""
    keep_dir.mkdir(parents=True, exist_ok=True)
    path = keep_dir / f"world-p{profiles}-e{events}-s{seed}.db"
    marker = path.with_suffix(".json")
    url = f"sqlite:///{path}"
    if path.exists() and marker.exists():
        stats = GraphStats(**orjson.loads(marker.read_bytes()))
        say(f"reusing the prepared world {path} ({stats.clusters:,} customers, {stats.events:,} events)")
        return url, stats
    for stale in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        stale.unlink(missing_ok=True)
    say(f"preparing {events:,} events for {profiles:,} people into {path} (kept for later runs; not timed)")
    building = keep_dir / f".building-{path.name}"
    building.unlink(missing_ok=True)
    _, stats, _ = prepare_processed(
        f"sqlite:///{building}", profiles=profiles, events=events, seed=seed, batch=batch, say=say
    )
    shutil.move(building, path)
    marker.write_bytes(orjson.dumps(stats.__dict__))
    return url, stats
