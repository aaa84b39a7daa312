"""Recommendations: one ranking for every channel (docs/ENGAGE.md).

Signals, all per surviving profile (every member of the cluster, every channel):

- catalog relations: accessories / bundle parts of what the profile bought (strong) or viewed;
- co-purchase and co-view item-to-item similarity: cosine similarity of items over the profiles
  that bought (viewed) them, from binary item x profile matrices (scipy.sparse), the top
  neighbours of each item kept (`omnijourney recommend train`, tables `engage_item_*`);
- buy again: a bought consumable, scored by the recency-weighted share of the profile's own
  orders that contained it (`repeat_shares`);
- popularity (buyers) as a weak fallback, so a new profile still gets something.

Exclusions: what the cluster already bought (any variant of the product) unless the product is
consumable (catalog attribute, `recommendations.consumable_attribute`), inactive products, and
for `context=store` what is not available at that store (on hand - reserved - allocated <= 0).
Ties break on the SKU, so the answer is deterministic given the data. Every item carries its
strongest reason ("because you bought X").
"""

from __future__ import annotations

import math
import threading
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, NamedTuple

import numpy as np
import sqlalchemy as sa
from scipy import sparse
from sqlalchemy.engine import Connection

from omnijourney.commerce.models import Location, Order, OrderLine, Product, RelatedProduct, Stock
from omnijourney.engage.models import ItemPopularity, ItemSimilarity, RecoModel
from omnijourney.engage.schemas import RecoConfig
from omnijourney.identity import service as identity
from omnijourney.identity.models import Profile, ProfileEvent
from omnijourney.ingest.models import Event
from omnijourney.profiles.models import ProfileCounter

PRODUCTS = Product.__table__
RELATED = RelatedProduct.__table__
STOCK = Stock.__table__
LOCATIONS = Location.__table__
ORDERS = Order.__table__
ORDER_LINES = OrderLine.__table__
MODELS = RecoModel.__table__
SIMILARITY = ItemSimilarity.__table__
POPULARITY = ItemPopularity.__table__
PROFILES = Profile.__table__
PROFILE_EVENTS = ProfileEvent.__table__
EVENTS = Event.__table__
COUNTERS = ProfileCounter.__table__

CONTEXTS = ("email", "web", "store", "agent")
VIEW_EVENTS = ("Product Viewed", "Product Added")
RELATION_KINDS = ("accessory", "bundle_part")
CHUNK = 500


def _in(name: str) -> sa.BindParameter[Any]:
    return sa.bindparam(name, expanding=True)


# The serving path's statements, built once: constructing a Core statement per request (operator
# coercion, cache-key generation) cost more CPU than SQLite spent answering it. Expanding bind
# parameters carry the per-request id / SKU lists; the compiled form comes from SQLAlchemy's cache.
_PURCHASES_OF = (
    sa.select(ORDERS.c.id, ORDERS.c.placed_at, ORDER_LINES.c.sku)
    .join(ORDER_LINES, ORDER_LINES.c.order_id == ORDERS.c.id)
    .where(ORDERS.c.profile_id.in_(_in("ids")), ORDERS.c.status != "cancelled")
    .order_by(ORDERS.c.placed_at, ORDERS.c.id, ORDER_LINES.c.line_no)
)
_VIEWS_OF = (
    sa.select(PROFILE_EVENTS.c.timestamp, EVENTS.c.payload)
    .join(EVENTS, EVENTS.c.id == PROFILE_EVENTS.c.event_id)
    .where(PROFILE_EVENTS.c.profile_id.in_(_in("ids")), PROFILE_EVENTS.c.event.in_(VIEW_EVENTS))
    .order_by(PROFILE_EVENTS.c.timestamp.desc(), PROFILE_EVENTS.c.event_id.desc())
    .limit(sa.bindparam("n", type_=sa.Integer))
)
_MODEL_HEAD = sa.select(MODELS.c.id, MODELS.c.trained_at).order_by(MODELS.c.id.desc()).limit(1)
_RELATIONS_OF = (
    sa.select(RELATED.c.sku, RELATED.c.related_sku)
    .where(RELATED.c.kind.in_(RELATION_KINDS), RELATED.c.sku.in_(_in("skus")))
    .order_by(RELATED.c.sku, RELATED.c.related_sku)
)
_ALL_PRODUCTS = sa.select(
    PRODUCTS.c.sku,
    PRODUCTS.c.product_id,
    PRODUCTS.c.name,
    PRODUCTS.c.category,
    PRODUCTS.c.active,
    PRODUCTS.c.attributes,
)
_PRODUCTS_OF = _ALL_PRODUCTS.where(PRODUCTS.c.sku.in_(_in("skus")))
_AVAILABLE_AT = sa.select(STOCK.c.sku).where(
    STOCK.c.location == sa.bindparam("store"),
    STOCK.c.sku.in_(_in("skus")),
    STOCK.c.on_hand - STOCK.c.reserved - STOCK.c.allocated > 0,
)
_STORE_VISITS = sa.select(COUNTERS.c.key, COUNTERS.c.count).where(
    COUNTERS.c.profile_id.in_(_in("ids")), COUNTERS.c.kind == "store"
)
_LOCATION = sa.select(LOCATIONS.c.code).where(LOCATIONS.c.code == sa.bindparam("code"))


class RecoError(ValueError):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


# ============================================================================ data


# NamedTuples, not frozen dataclasses: the serving path builds a few hundred of these per request
# and a frozen dataclass's __init__ (object.__setattr__ per field) is several times slower


class Purchase(NamedTuple):
    profile: int
    sku: str
    order: int
    at: datetime


class View(NamedTuple):
    profile: int
    sku: str
    at: datetime


def _sku_of(payload: Any) -> str | None:
    props = payload.get("properties") if isinstance(payload, dict) else None
    if not isinstance(props, dict):
        return None
    for key in ("sku", "product_id"):
        value = props.get(key)
        if isinstance(value, str | int) and not isinstance(value, bool) and str(value).strip():
            return str(value).strip()[:64]
    return None


def _roots(conn: Connection) -> dict[int, int]:
    return dict(conn.execute(sa.select(PROFILES.c.id, PROFILES.c.canonical_id)).all())


def load_purchases(conn: Connection, member_ids: Sequence[int] | None = None) -> list[Purchase]:
    """Order lines of orders that were not cancelled, by the surviving profile of their owner
    (`member_ids[0]`, the cluster's survivor, when the ids of one cluster are given)."""
    if member_ids is not None:
        if not member_ids:
            return []
        root = int(member_ids[0])
        return [Purchase(root, sku, int(oid), at) for oid, at, sku in conn.execute(_PURCHASES_OF, {"ids": member_ids})]
    stmt = (
        sa.select(ORDERS.c.profile_id, ORDERS.c.id, ORDERS.c.placed_at, ORDER_LINES.c.sku)
        .join(ORDER_LINES, ORDER_LINES.c.order_id == ORDERS.c.id)
        .where(ORDERS.c.profile_id.is_not(None), ORDERS.c.status != "cancelled")
        .order_by(ORDERS.c.placed_at, ORDERS.c.id, ORDER_LINES.c.line_no)
    )
    rows = conn.execute(stmt).all()
    roots = _roots(conn)
    return [Purchase(int(roots.get(pid, pid)), sku, int(oid), at) for pid, oid, at, sku in rows]


def load_views(conn: Connection, member_ids: Sequence[int] | None = None, limit: int | None = None) -> list[View]:
    """Product views and cart additions (any channel), newest first when limited."""
    if member_ids is not None and limit is not None:  # the serving path: one cluster's latest
        if not member_ids:
            return []
        root = int(member_ids[0])
        rows = conn.execute(_VIEWS_OF, {"ids": member_ids, "n": limit})
        return [View(root, sku, at) for at, payload in rows if (sku := _sku_of(payload)) is not None]
    pe = PROFILE_EVENTS
    stmt = (
        sa.select(pe.c.profile_id, pe.c.timestamp, EVENTS.c.payload)
        .join(EVENTS, EVENTS.c.id == pe.c.event_id)
        .where(pe.c.event.in_(VIEW_EVENTS))
        .order_by(pe.c.timestamp.desc(), pe.c.event_id.desc())
    )
    if member_ids is not None:
        stmt = stmt.where(pe.c.profile_id.in_(list(member_ids)))
    if limit is not None:
        stmt = stmt.limit(limit)
    roots = _roots(conn) if member_ids is None else None
    root = member_ids[0] if member_ids else None
    out = []
    for pid, at, payload in conn.execute(stmt):
        sku = _sku_of(payload)
        if sku is None:
            continue
        owner = roots.get(pid, pid) if roots is not None else root
        out.append(View(int(owner), sku, at))  # type: ignore[arg-type]
    return out


class ProductInfo(NamedTuple):
    sku: str
    product_id: str
    name: str
    category: str | None
    active: bool
    consumable: bool


def load_products(conn: Connection, config: RecoConfig, skus: Iterable[str] | None = None) -> dict[str, ProductInfo]:
    if skus is None:
        rows = conn.execute(_ALL_PRODUCTS)
    else:
        wanted = sorted(set(skus))
        if not wanted:
            return {}
        rows = conn.execute(_PRODUCTS_OF, {"skus": wanted})
    out = {}
    for r in rows:
        attrs = r.attributes if isinstance(r.attributes, dict) else {}
        out[r.sku] = ProductInfo(
            r.sku, r.product_id, r.name, r.category, bool(r.active), attrs.get(config.consumable_attribute) is True
        )
    return out


def load_relations(conn: Connection, skus: Iterable[str] | None = None) -> dict[str, list[str]]:
    if skus is None:
        stmt = sa.select(RELATED.c.sku, RELATED.c.related_sku).where(RELATED.c.kind.in_(RELATION_KINDS))
        rows = conn.execute(stmt.order_by(RELATED.c.sku, RELATED.c.related_sku))
    else:
        wanted = sorted(set(skus))
        rows = conn.execute(_RELATIONS_OF, {"skus": wanted}) if wanted else iter(())
    out: dict[str, list[str]] = defaultdict(list)
    for sku, other in rows:
        out[sku].append(other)
    return out


# ============================================================================ the model


@dataclass
class Model:
    """Neighbours per kind and item, and popularity. Built in memory, stored in tables."""

    neighbours: dict[str, dict[str, list[tuple[str, float]]]] = field(default_factory=dict)
    buyers: dict[str, int] = field(default_factory=dict)
    viewers: dict[str, int] = field(default_factory=dict)
    id: int | None = None
    trained_at: datetime | None = None
    _by_buyers: list[tuple[str, int]] | None = field(default=None, repr=False, compare=False)

    def similar(self, kind: str, sku: str) -> list[tuple[str, float]]:
        return self.neighbours.get(kind, {}).get(sku, [])

    def popular(self, n: int) -> list[tuple[str, int]]:
        # sorted once per model: the offline evaluation asks for every customer
        if self._by_buyers is None or len(self._by_buyers) != len(self.buyers):
            self._by_buyers = sorted(self.buyers.items(), key=lambda x: (-x[1], x[0]))
        return self._by_buyers[:n]


def cosine_neighbours(pairs: Iterable[tuple[int, str]], k: int) -> dict[str, list[tuple[str, float]]]:
    """Item-to-item cosine similarity over profiles from (profile, sku) pairs (binary), top k each."""
    unique = sorted(set(pairs), key=lambda p: (p[1], p[0]))
    if not unique:
        return {}
    items = sorted({s for _, s in unique})
    users = sorted({u for u, _ in unique})
    iidx = {s: i for i, s in enumerate(items)}
    uidx = {u: i for i, u in enumerate(users)}
    rows = np.fromiter((iidx[s] for _, s in unique), dtype=np.int64, count=len(unique))
    cols = np.fromiter((uidx[u] for u, _ in unique), dtype=np.int64, count=len(unique))
    m = sparse.csr_matrix((np.ones(len(unique)), (rows, cols)), shape=(len(items), len(users)))
    norms = np.sqrt(np.asarray(m.sum(axis=1)).ravel())
    inv = sparse.diags(1.0 / np.where(norms > 0, norms, 1.0))
    sim = (inv @ (m @ m.T) @ inv).tocsr()
    sim.setdiag(0)
    sim.eliminate_zeros()
    out: dict[str, list[tuple[str, float]]] = {}
    for i in range(sim.shape[0]):
        start, end = sim.indptr[i], sim.indptr[i + 1]
        if start == end:
            continue
        cand = [
            (items[j], round(float(v), 6)) for j, v in zip(sim.indices[start:end], sim.data[start:end], strict=True)
        ]
        cand.sort(key=lambda x: (-x[1], x[0]))
        out[items[i]] = cand[:k]
    return out


def build_model(purchases: Sequence[Purchase], views: Sequence[View], config: RecoConfig) -> Model:
    buyers: dict[str, set[int]] = defaultdict(set)
    viewers: dict[str, set[int]] = defaultdict(set)
    for p in purchases:
        buyers[p.sku].add(p.profile)
    for v in views:
        viewers[v.sku].add(v.profile)
    return Model(
        neighbours={
            "purchase": cosine_neighbours(((p.profile, p.sku) for p in purchases), config.neighbours),
            "view": cosine_neighbours(((v.profile, v.sku) for v in views), config.neighbours),
        },
        buyers={s: len(u) for s, u in buyers.items()},
        viewers={s: len(u) for s, u in viewers.items()},
    )


def train(*, conn: Connection, config: RecoConfig, now: datetime) -> dict[str, Any]:
    """Rebuild the model from every stored purchase and view; the new model replaces the old one."""
    purchases, views = load_purchases(conn), load_views(conn)
    model = build_model(purchases, views, config)
    stats = {
        "purchases": len(purchases),
        "views": len(views),
        "profiles": len({p.profile for p in purchases} | {v.profile for v in views}),
        "items": len(set(model.buyers) | set(model.viewers)),
        "pairs": sum(len(n) for kind in model.neighbours.values() for n in kind.values()),
    }
    model_id = conn.execute(sa.insert(MODELS).values(trained_at=now, stats=stats).returning(MODELS.c.id)).scalar_one()
    rows = [
        {"model_id": model_id, "kind": kind, "sku": sku, "other_sku": other, "score": score}
        for kind, by_sku in model.neighbours.items()
        for sku, ns in by_sku.items()
        for other, score in ns
    ]
    for i in range(0, len(rows), 5000):
        conn.execute(sa.insert(SIMILARITY), rows[i : i + 5000])
    pop = [
        {"model_id": model_id, "sku": s, "buyers": model.buyers.get(s, 0), "viewers": model.viewers.get(s, 0)}
        for s in sorted(set(model.buyers) | set(model.viewers))
    ]
    for i in range(0, len(pop), 5000):
        conn.execute(sa.insert(POPULARITY), pop[i : i + 5000])
    for table in (SIMILARITY, POPULARITY):
        conn.execute(sa.delete(table).where(table.c.model_id != model_id))
    conn.execute(sa.delete(MODELS).where(MODELS.c.id != model_id))
    return {"model_id": model_id, "trained_at": now, **stats}


class NeighbourLists(Mapping[str, list[tuple[str, float]]]):
    """One kind's neighbour lists for every SKU of a model, in NumPy arrays (CSR layout: ~12 bytes
    a pair instead of a Python tuple each); a SKU's list is built when it is asked for."""

    def __init__(self, rows: list[tuple[str, str, float]]) -> None:
        rows.sort(key=lambda r: (r[0], -r[2], r[1]))  # per SKU: best first, ties on the neighbour
        names = sorted({r[1] for r in rows} | {r[0] for r in rows})
        at = {n: i for i, n in enumerate(names)}
        self._names = names
        self._index: dict[str, int] = {}
        starts: list[int] = []
        for k, r in enumerate(rows):
            if r[0] not in self._index:
                self._index[r[0]] = len(starts)
                starts.append(k)
        self._indptr = np.array([*starts, len(rows)], dtype=np.int64)
        self._cols = np.fromiter((at[r[1]] for r in rows), dtype=np.int32, count=len(rows))
        self._scores = np.fromiter((r[2] for r in rows), dtype=np.float64, count=len(rows))

    def __getitem__(self, sku: str) -> list[tuple[str, float]]:
        i = self._index[sku]
        a, b = int(self._indptr[i]), int(self._indptr[i + 1])
        names = self._names
        return [(names[c], s) for c, s in zip(self._cols[a:b].tolist(), self._scores[a:b].tolist(), strict=True)]

    def __iter__(self) -> Iterator[str]:
        return iter(self._index)

    def __len__(self) -> int:
        return len(self._index)


#: trained models in memory, keyed by (database, model id): a stored model never changes
_MODELS: dict[tuple[str, int], Model] = {}
_MODELS_LOCK = threading.Lock()
POPULAR_POOL = 50


def cached_model(conn: Connection) -> Model | None:
    """The latest trained model, from memory.

    One small query finds the latest model id; the first request under a new id loads the whole
    model (every neighbour list, the popular top 50) into compact arrays, which every later
    request of this process reuses. Training stores a new id, so the next request picks the new
    model up, never a mix; the previous one is dropped from memory."""
    head = conn.execute(_MODEL_HEAD).first()
    if head is None:
        return None
    key = (conn.engine.url.render_as_string(hide_password=True), int(head.id))
    with _MODELS_LOCK:
        model = _MODELS.get(key)
    if model is not None:
        return model
    by_kind: dict[str, list[tuple[str, str, float]]] = {"purchase": [], "view": []}
    for kind, sku, other, score_ in conn.execute(
        sa.select(SIMILARITY.c.kind, SIMILARITY.c.sku, SIMILARITY.c.other_sku, SIMILARITY.c.score).where(
            SIMILARITY.c.model_id == head.id
        )
    ):
        by_kind.setdefault(kind, []).append((sku, other, score_))
    model = Model(
        id=head.id,
        trained_at=head.trained_at,
        neighbours={kind: NeighbourLists(rows) for kind, rows in by_kind.items()},  # type: ignore[misc]
        buyers={
            r.sku: r.buyers
            for r in conn.execute(
                sa.select(POPULARITY.c.sku, POPULARITY.c.buyers)
                .where(POPULARITY.c.model_id == head.id, POPULARITY.c.buyers > 0)
                .order_by(POPULARITY.c.buyers.desc(), POPULARITY.c.sku)
                .limit(POPULAR_POOL)
            )
        },
    )
    with _MODELS_LOCK:
        for old in [k for k in _MODELS if k[0] == key[0] or len(_MODELS) > 8]:
            del _MODELS[old]
        return _MODELS.setdefault(key, model)


# ============================================================================ buy again


def repeat_shares(history: Sequence[Purchase], half_life_days: float) -> dict[str, float]:
    """Per bought SKU, the recency-weighted share of the profile's orders that contained it.

    Each order weighs 0.5 ** (age / half-life), its age counted from the profile's latest order
    (not from now), so the shares are the same whenever they are asked for and the offline
    evaluation cannot peek at the held-out order's date. An SKU in every order scores 1.0; one
    bought once, long ago, among many later orders scores near 0. Vectorised over the order lines.
    Consumability is not decided here: the exclusions drop non-consumables that were bought."""
    if not history:
        return {}
    first = history[0].order
    if all(p.order == first for p in history):  # one order (most profiles): every SKU in all of them
        return dict.fromkeys(sorted({p.sku for p in history}), 1.0)
    skus, sku_idx = np.unique(np.array([p.sku for p in history], dtype=object), return_inverse=True)
    order_ids, order_idx = np.unique(
        np.fromiter((p.order for p in history), np.int64, len(history)), return_inverse=True
    )
    at = np.fromiter((p.at.timestamp() for p in history), np.float64, len(history))
    order_at = np.full(len(order_ids), -np.inf)
    np.maximum.at(order_at, order_idx, at)
    weights = np.exp2((order_at - order_at.max()) / (half_life_days * 86400.0))
    # an SKU on two lines of one order counts once
    pairs = np.unique(sku_idx.astype(np.int64) * len(order_ids) + order_idx)
    shares = np.bincount(pairs // len(order_ids), weights=weights[pairs % len(order_ids)], minlength=len(skus))
    shares /= weights.sum()
    return {str(s): float(v) for s, v in zip(skus.tolist(), shares.tolist(), strict=True) if v > 0}


# ============================================================================ ranking


@dataclass
class Candidate:
    sku: str
    score: float = 0.0
    reason: tuple[float, str, str | None] = (0.0, "popular", None)

    def add(self, score: float, kind: str, because: str | None) -> None:
        self.score += score
        if score > self.reason[0] or (score == self.reason[0] and (because or "") < (self.reason[2] or "")):
            self.reason = (score, kind, because)


def score(
    *,
    bought: Sequence[str],
    viewed: Sequence[str],
    model: Model | None,
    relations: dict[str, list[str]],
    config: RecoConfig,
    popular_pool: int = 50,
    history: Sequence[Purchase] = (),
) -> list[Candidate]:
    """Every candidate with its summed score and strongest reason, best first (ties on the SKU);
    no exclusions yet. `history` (the profile's purchases with their orders and times) feeds "buy
    again". Pure and deterministic."""
    totals, reasons = _tally(
        bought=bought,
        viewed=viewed,
        model=model,
        relations=relations,
        config=config,
        popular_pool=popular_pool,
        history=history,
    )
    return [Candidate(sku, totals[sku], reasons[sku]) for sku in _best_first(totals)]


def _best_first(totals: dict[str, float]) -> list[str]:
    return [sku for _, sku in sorted([(-round(v, 9), sku) for sku, v in totals.items()])]


def _tally(
    *,
    bought: Sequence[str],
    viewed: Sequence[str],
    model: Model | None,
    relations: dict[str, list[str]],
    config: RecoConfig,
    popular_pool: int,
    history: Sequence[Purchase],
) -> tuple[dict[str, float], dict[str, tuple[float, str, str | None]]]:
    """Summed score and strongest reason per candidate SKU. The hot loop of every request (a few
    hundred contributions): two plain dicts rather than an object per candidate. The arithmetic
    of each signal and the order of the additions are fixed, so the sums are reproducible."""
    totals: dict[str, float] = {}
    reasons: dict[str, tuple[float, str, str | None]] = {}

    def add(sku: str, score: float, kind: str, because: str | None) -> None:
        if score <= 0:
            return
        prev = totals.get(sku)
        if prev is None:
            totals[sku] = score
            reasons[sku] = (score, kind, because)
            return
        totals[sku] = prev + score
        best = reasons[sku]
        if score > best[0] or (score == best[0] and (because or "") < (best[2] or "")):
            reasons[sku] = (score, kind, because)

    if config.buy_again > 0:
        for sku, share in repeat_shares(history, config.buy_again_half_life_days).items():
            add(sku, config.buy_again * share, "buy_again", sku)
    bought_set = sorted(set(bought))
    for b in bought_set:
        for other in relations.get(b, []):
            add(other, config.accessory_of_bought, "accessory_of_bought", b)
    recent = list(dict.fromkeys(viewed))[: config.recent_views]
    for rank_, v in enumerate(recent):
        decay = 1.0 / (1.0 + 0.1 * rank_)
        for other in relations.get(v, []):
            add(other, config.accessory_of_viewed * decay, "accessory_of_viewed", v)
        if model is not None:
            for other, s in model.similar("view", v):
                add(other, config.co_view * s * decay, "co_view", v)
    if model is not None:
        # the mean similarity to what was bought, not the sum: a grocery history of 200 items would
        # otherwise outweigh every other signal (buy again included) by its length alone
        per_seed = config.co_purchase / max(1, len(bought_set))
        for b in bought_set:
            for other, s in model.similar("purchase", b):
                add(other, per_seed * s, "co_purchase", b)
        top = model.popular(popular_pool)
        if top:
            best = top[0][1]
            for sku, n in top:
                add(sku, config.popularity * n / best, "popular", None)
    return totals, reasons


def _keep(sku: str, p: ProductInfo | None, bought: set[str], owned_products: set[str]) -> bool:
    if p is None or not p.active:
        return False
    return not ((sku in bought or p.product_id in owned_products) and not p.consumable)


def rank(
    *,
    bought: Sequence[str],
    viewed: Sequence[str],
    model: Model | None,
    relations: dict[str, list[str]],
    products: dict[str, ProductInfo],
    config: RecoConfig,
    allowed: set[str] | None = None,
    limit: int = 10,
    popular_pool: int = 50,
    history: Sequence[Purchase] = (),
) -> list[Candidate]:
    """Score candidates from what was bought (set, with its `history` for buy again) and viewed
    (newest first); pure and deterministic."""
    ranked = score(
        bought=bought,
        viewed=viewed,
        model=model,
        relations=relations,
        config=config,
        popular_pool=popular_pool,
        history=history,
    )
    bought_set = set(bought)
    owned_products = {products[b].product_id for b in bought_set if b in products}
    out = [
        c
        for c in ranked
        if _keep(c.sku, products.get(c.sku), bought_set, owned_products) and (allowed is None or c.sku in allowed)
    ]
    return out[:limit]


REASON_TEXT = {
    "accessory_of_bought": "goes with {name} you bought",
    "accessory_of_viewed": "goes with {name} you looked at",
    "co_purchase": "because you bought {name}",
    "co_view": "because you viewed {name}",
    "popular": "popular right now",
    "buy_again": "buy {name} again",
}


def _preferred_store(conn: Connection, member_ids: list[int]) -> str | None:
    acc: dict[str, int] = defaultdict(int)
    for key, n in conn.execute(_STORE_VISITS, {"ids": list(member_ids)}):
        acc[key] += int(n)
    return min(acc, key=lambda k: (-acc[k], k)) if acc else None


def available_at(conn: Connection, store: str, skus: Iterable[str]) -> set[str]:
    wanted = sorted(set(skus))
    if not wanted:
        return set()
    return {r[0] for r in conn.execute(_AVAILABLE_AT, {"store": store, "skus": wanted})}


def recommend(
    *, conn: Connection, profile_id: int, context: str, store: str | None, limit: int, config: RecoConfig
) -> dict[str, Any]:
    if context not in CONTEXTS:
        raise RecoError(400, "invalid_context", f"context must be one of {', '.join(CONTEXTS)}")
    if not 1 <= limit <= 100:
        raise RecoError(400, "invalid_limit", "limit must be between 1 and 100")
    cluster = identity.cluster(conn=conn, profile_id=profile_id)  # one query: the survivor and its members
    if cluster is None:
        raise RecoError(404, "not_found", f"no profile {profile_id}")
    root, member_ids = cluster
    if context == "store":
        store = store or _preferred_store(conn, member_ids)
        if store is None:
            raise RecoError(
                400, "store_required", "context=store needs store=<location code> (no preferred store known)"
            )
        if conn.execute(_LOCATION, {"code": store}).first() is None:
            raise RecoError(404, "unknown_store", f"no location {store!r}")
    elif store is not None:
        raise RecoError(400, "invalid_store", "store= is only used with context=store")
    history = load_purchases(conn, member_ids)
    bought = [p.sku for p in history]
    viewed = [v.sku for v in load_views(conn, member_ids, limit=config.recent_views * 5)]
    seeds_bought, seeds_viewed = set(bought), set(list(dict.fromkeys(viewed))[: config.recent_views])
    model = cached_model(conn)
    relations = load_relations(conn, seeds_bought | seeds_viewed)
    totals, reasons = _tally(
        bought=bought,
        viewed=viewed,
        model=model,
        relations=relations,
        config=config,
        popular_pool=POPULAR_POOL,
        history=history,
    )
    ranked = _best_first(totals)  # what `score` answers, without an object per candidate
    # exclusions are per candidate: walk the ranking best first and load products (and stock) only
    # for as many candidates as it takes to fill `limit`, not for the whole pool
    pos, batch = 0, max(3 * limit, 30)
    # the seeds (owned products, the reasons' names) and the first batch in one query
    products = load_products(conn, config, seeds_bought | seeds_viewed | set(ranked[:batch]))
    owned_products = {products[b].product_id for b in seeds_bought if b in products}
    items: list[Candidate] = []
    while len(items) < limit and pos < len(ranked):
        part = ranked[pos : pos + batch]
        pos, batch = pos + batch, batch * 2
        products.update(load_products(conn, config, [sku for sku in part if sku not in products]))
        allowed = available_at(conn, store, part) if context == "store" and store else None
        items += [
            Candidate(sku, totals[sku], reasons[sku])
            for sku in part
            if _keep(sku, products.get(sku), seeds_bought, owned_products) and (allowed is None or sku in allowed)
        ]
    items = items[:limit]
    names = products  # the reasons name seeds (bought or recently viewed), loaded above
    out = []
    for c in items:
        p = products[c.sku]
        _, kind, because = c.reason
        because_name = names[because].name if because and because in names else because
        out.append(
            {
                "sku": c.sku,
                "product_id": p.product_id,
                "name": p.name,
                "category": p.category,
                "score": round(c.score, 6),
                "reason": {
                    "kind": kind,
                    "because_sku": because,
                    "text": REASON_TEXT[kind].format(name=because_name),
                },
            }
        )
    return {
        "profile_id": root,
        "context": context,
        "store": store if context == "store" else None,
        "model": {"id": model.id, "trained_at": model.trained_at} if model is not None else None,
        "items": out,
    }


# ============================================================================ offline evaluation


def _ndcg(ranked: Sequence[str], relevant: set[str], k: int) -> float:
    dcg = sum(1.0 / math.log2(i + 2) for i, s in enumerate(ranked[:k]) if s in relevant)
    ideal = sum(1.0 / math.log2(i + 2) for i in range(min(len(relevant), k)))
    return dcg / ideal if ideal else 0.0


def _only(config: RecoConfig, **weights: float) -> RecoConfig:
    """`config` with every signal's weight 0 except the given ones (a baseline)."""
    signals = ("accessory_of_bought", "accessory_of_viewed", "co_purchase", "co_view", "popularity", "buy_again")
    return config.model_copy(update={name: weights.get(name, 0.0) for name in signals})


#: the rankings `evaluate_offline` compares: the configured model and two one-signal baselines
BASELINES = ("model", "most_popular", "buy_again")


def evaluate_offline(*, conn: Connection, config: RecoConfig, k: int = 10) -> dict[str, Any]:
    """Leave-last-purchase-out: each customer's last order is held out, the model is trained on
    everything else (and only on that customer's views before the held-out order), and the top k
    (bought items excluded as in serving) is compared with two baselines: most popular, and buy
    again alone (the customer's own consumables by recency-weighted order share)."""
    purchases, views = load_purchases(conn), load_views(conn)
    last_order: dict[int, tuple[datetime, int]] = {}
    for p in purchases:
        key = (p.at, p.order)
        if p.profile not in last_order or key > last_order[p.profile]:
            last_order[p.profile] = key
    held = {(p.profile, p.order) for p in purchases if last_order[p.profile][1] == p.order}
    train_p = [p for p in purchases if (p.profile, p.order) not in held]
    cutoff = {pid: at for pid, (at, _) in last_order.items()}
    train_v = [v for v in views if v.profile not in cutoff or v.at < cutoff[v.profile]]
    model = build_model(train_p, train_v, config)
    relations = load_relations(conn)
    products = load_products(conn, config)
    history: dict[int, list[Purchase]] = defaultdict(list)
    for p in train_p:
        history[p.profile].append(p)
    viewed: dict[int, list[str]] = defaultdict(list)
    for v in sorted(train_v, key=lambda v: v.at, reverse=True):
        viewed[v.profile].append(v.sku)
    target: dict[int, set[str]] = defaultdict(set)
    for p in purchases:
        if (p.profile, p.order) in held:
            target[p.profile].add(p.sku)
    configs = {
        "model": config,
        "most_popular": _only(config, popularity=1.0),
        "buy_again": _only(config, buy_again=1.0),
    }
    # customers with some history before the held-out order (a cold start is not what is measured)
    customers = sorted(pid for pid in target if history.get(pid) or viewed.get(pid))
    results = {name: [0.0, 0.0] for name in configs}
    n = 0
    for pid in customers:
        bought = [p.sku for p in history.get(pid, [])]
        before = set(bought)
        # the held-out items must be recommendable at all: a repurchase of a non-consumable is excluded by design
        relevant = {s for s in target[pid] if s in products and (products[s].consumable or s not in before)}
        if not relevant:
            continue
        n += 1
        for name, cfg in configs.items():
            ranked = [
                c.sku
                for c in rank(
                    bought=bought,
                    viewed=viewed.get(pid, []),
                    model=model,
                    relations=relations if name == "model" else {},
                    products=products,
                    config=cfg,
                    limit=k,
                    popular_pool=max(200, k * 5),
                    history=history.get(pid, ()),
                )
            ]
            results[name][0] += 1.0 if relevant & set(ranked) else 0.0
            results[name][1] += _ndcg(ranked, relevant, k)
    return {
        "k": k,
        "customers": n,
        "train_purchases": len(train_p),
        "train_views": len(train_v),
        **{
            name: {
                "hit_rate": round(hit / n, 4) if n else 0.0,
                "ndcg": round(gain / n, 4) if n else 0.0,
            }
            for name, (hit, gain) in results.items()
        },
    }
