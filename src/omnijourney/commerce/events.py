"""The commerce outbox: changes made through the commerce API become events in the event log.

Each change appends one event in the transaction that makes the change (so the event exists
exactly when the change committed), through the ingest service's append path: the same
validation and row shape as a shop's event, the same `(source_id, message_id)` deduplication.
The pipeline then puts it on the customer's timeline, counts it in the profile, exports it to
analytics, and automations see it, as for any other event.

- Source: one internal source, `omnijourney:commerce` (created on first use, **disabled** so no
  write key can ever send in its name; enabled/disabled only gates public ingestion). Each event's
  `channel` is the channel that acted (`context.channel`), and `context.omnijourney.origin` is
  `"commerce"`.
- Message ids are derived from what changed (`oj:order:<id>:<status>`, `oj:cart-change:<id>`,
  `oj:return:<id>`, …), so a retry or a replay never appends an event twice.
- Identity: the event carries the profile's highest-priority identifier (or the cart's anonymous
  id), so identity resolution puts it on the same profile; it never adds an identifier, so it can
  never merge anything.
- The commerce handler skips events of this source: it consumes `Order Completed` / `Product
  Added` / `Product Removed` from shops and POS, and must not apply our own changes a second time.

The append comes last in a service call, so on PostgreSQL the event-log lock (held to commit, to
keep log ids in commit order) is held as briefly as possible. A caller that makes several changes
in one transaction wraps them in `batch(conn)`: their events are appended together at the end of
the block, so the lock is taken once, after the last change, instead of at the first change and
then held across all the others.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from datetime import datetime
from functools import lru_cache
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from omnijourney.access.models import Source
from omnijourney.config import IngestLimits
from omnijourney.identity import service as identity
from omnijourney.identity.rules import IdentityRules, load_rules
from omnijourney.ingest import service as ingest
from omnijourney.ingest.schemas import FieldError, validate_message
from omnijourney.ingest.spec import CHANNELS
from omnijourney.store import dialect
from omnijourney.store.base import utcnow

log = logging.getLogger(__name__)

SOURCE_NAME = "omnijourney:commerce"
ORIGIN = "commerce"
SOURCES = Source.__table__
_LIMITS = IngestLimits()
#: key in the connection's info of the rows a `batch` block has collected
_BATCH = "omnijourney.outbox_batch"

#: order status -> the event that announces it
STATUS_EVENTS = {
    "placed": "Order Completed",
    "paid": "Order Paid",
    "ready_for_pickup": "Order Ready for Pickup",
    "picked_up": "Order Picked Up",
    "shipped": "Order Shipped",
    "delivered": "Order Delivered",
    "cancelled": "Order Cancelled",
}


@lru_cache(maxsize=1)
def _default_rules() -> IdentityRules:
    return load_rules()


def internal_source_id(conn: Connection, *, create: bool = True, name: str = SOURCE_NAME) -> int | None:
    """The id of an internal source (commerce by default; created, disabled, on first use).

    Other domains that append events of their own (engage: segment entries) pass their own `name`.
    Remembered per database connection once found (a source is never deleted), so the hot paths
    (checkout, the handler's every step) do not ask again.
    """
    cache_key, created_key = f"omnijourney.source_id:{name}", f"omnijourney.source_created:{name}"
    info = conn.connection.info
    cached = info.get(cache_key)
    if cached is not None:
        return int(cached)
    stmt = sa.select(SOURCES.c.id).where(SOURCES.c.name == name)
    found = conn.execute(stmt).scalar_one_or_none()
    # a source this connection created in the *current* transaction may not be committed yet (its
    # transaction may roll back); found again in a later transaction, it was committed
    created = info.get(created_key)
    if found is not None and not (created and created[0] == found and created[1] is conn.get_transaction()):
        info[cache_key] = found
        info.pop(created_key, None)
    if found is not None or not create:
        return found
    conn.execute(
        dialect.insert_ignoring_conflicts(conn, SOURCES, ["name"]),
        [
            {
                "name": name,
                "channel": "other",
                "trusted": False,
                "write_key": "internal-" + secrets.token_urlsafe(24),
                "allowed_origins": [],
                "enabled": False,
                "created_at": utcnow(),
            }
        ],
    )
    new = int(conn.execute(stmt).scalar_one())
    info[created_key] = (new, conn.get_transaction())
    return new


def _set_path(message: dict[str, Any], path: str, value: str) -> None:
    parts = path.split(".")
    node = message
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value


def _owner_message(rows: Any, rules: IdentityRules) -> dict[str, Any] | None:
    """The message fields of the highest-priority identifier among `rows` (id_type, value), given
    oldest first (the first wins a tie)."""
    best = None
    for r in rows:
        spec = rules.identifier_types.get(r.id_type)
        if spec is None:
            continue
        if best is None or spec.priority > best[0].priority:
            best = (spec, r.value)
    if best is None:
        return None
    message: dict[str, Any] = {}
    fields = best[0].fields
    path = next((f for f in fields if f in ("userId", "anonymousId")), None)
    path = path or next((f for f in fields if f.startswith(("context.", "properties."))), fields[0])
    _set_path(message, path, best[1])
    return message


def owner_fields(
    conn: Connection, *, profile_id: int | None, anonymous_id: str | None, rules: IdentityRules | None = None
) -> dict[str, Any] | None:
    """Message fields that make identity resolution find this profile (or device) again.

    The cluster's highest-priority identifier (oldest first on ties), written into the first
    field its rule reads; else the anonymous id. None when neither exists.
    """
    rules = rules or _default_rules()
    if profile_id is not None:
        root = identity.canonical_id(conn=conn, profile_id=profile_id)
        if root is not None:
            members = identity.members(conn=conn, root=root) or [root]
            links = identity.LINKS
            rows = conn.execute(
                sa.select(links.c.id_type, links.c.value)
                .where(links.c.profile_id.in_(members))
                .order_by(links.c.linked_at, links.c.id)
            ).all()
            message = _owner_message(rows, rules)
            if message is not None:
                return message
    if anonymous_id:
        return {"anonymousId": anonymous_id}
    return None


def owners_of(
    conn: Connection, *, profile_ids: list[int], rules: IdentityRules | None = None, chunk: int = 500
) -> dict[int, dict[str, Any] | None]:
    """`owner_fields` (without an anonymous id) for many profiles in a few queries per `chunk`:
    the same answer, for callers that append many events at once (segment entries)."""
    from collections import defaultdict

    rules = rules or _default_rules()
    profiles, links = identity.PROFILES, identity.LINKS
    ids = sorted(set(profile_ids))
    root_of: dict[int, int] = {}
    for i in range(0, len(ids), chunk):
        root_of.update(
            conn.execute(
                sa.select(profiles.c.id, profiles.c.canonical_id).where(profiles.c.id.in_(ids[i : i + chunk]))
            ).all()
        )
    roots = sorted(set(root_of.values()))
    member_root: dict[int, int] = {}
    for i in range(0, len(roots), chunk):
        member_root.update(
            conn.execute(
                sa.select(profiles.c.id, profiles.c.canonical_id).where(
                    profiles.c.canonical_id.in_(roots[i : i + chunk])
                )
            ).all()
        )
    for root in roots:
        member_root.setdefault(root, root)  # identity.members(...) or [root]
    by_root: dict[int, list[Any]] = defaultdict(list)
    members = sorted(member_root)
    for i in range(0, len(members), chunk):
        for r in conn.execute(
            sa.select(links.c.profile_id, links.c.id_type, links.c.value, links.c.linked_at, links.c.id).where(
                links.c.profile_id.in_(members[i : i + chunk])
            )
        ):
            by_root[member_root[r.profile_id]].append(r)
    messages = {
        root: _owner_message(sorted(by_root.get(root, []), key=lambda r: (r.linked_at, r.id)), rules) for root in roots
    }
    return {pid: (messages[root_of[pid]] if pid in root_of else None) for pid in ids}


def prepare(
    conn: Connection,
    *,
    message_id: str,
    event: str,
    channel: str | None,
    profile_id: int | None,
    anonymous_id: str | None,
    properties: dict[str, Any],
    now: datetime,
    rules: IdentityRules | None = None,
    source_name: str = SOURCE_NAME,
    origin: str = ORIGIN,
    fallback_anonymous_id: str | None = None,
    owner: dict[str, Any] | None = None,
    source_id: int | None = None,
) -> dict[str, Any] | None:
    """The event row of a change, validated as ingestion validates a shop's message; None if there
    is nobody to attribute it to (logged). Built before the change takes its hottest locks, so
    that `append` is all that is left to do while they are held.

    `source_name` / `origin` let another domain append through the same path under its own
    internal source (engage appends `Segment Entered` / `Segment Exited` this way). A track message
    needs a userId or anonymousId: when the profile's best identifier is neither (a POS customer
    known only by e-mail or card), `fallback_anonymous_id` (default `oj-profile-<profile id>`) is
    added beside it (it then links to the same profile). `owner`: fields from `owners_of`, looked
    up for many events at once (a copy is used); `source_id`: the internal source's id, if known."""
    if owner is not None:
        owner = {k: (dict(v) if isinstance(v, dict) else v) for k, v in owner.items()}
    else:
        owner = owner_fields(conn, profile_id=profile_id, anonymous_id=anonymous_id, rules=rules)
    if owner is None:
        log.info("%s: %s %s has no owner to put on a timeline", origin, event, message_id)
        return None
    if not (owner.get("userId") or owner.get("anonymousId")):
        # the profile's best identifier is neither (a customer known only by e-mail or card): a
        # profile-scoped anonymous id beside it, which can only ever link to this same profile
        owner["anonymousId"] = fallback_anonymous_id or f"oj-profile-{profile_id}"
    context = owner.pop("context", {})
    context["channel"] = channel if channel in CHANNELS else "other"
    context["omnijourney"] = {"origin": origin}
    props = {**owner.pop("properties", {}), **properties}
    raw = {
        "type": "track",
        "event": event,
        "messageId": message_id,
        "timestamp": now.isoformat(),
        "properties": props,
        "context": context,
        **owner,
    }
    valid = validate_message(
        raw,
        default_type=None,
        source_channel="other",
        received_at=now,
        batch_sent_at=None,
        client_ip=None,
        limits=_LIMITS,
    )
    if isinstance(valid, list):  # a bug in what we build, never the customer's input
        raise ValueError(f"{origin} event {event} does not validate: {[FieldError.as_dict(e) for e in valid]}")
    if source_id is None:
        source_id = internal_source_id(conn, name=source_name)
    assert source_id is not None
    return valid.row(source_id)


def append(conn: Connection, rows: list[dict[str, Any] | None]) -> None:
    """Append prepared rows to the log in the caller's transaction; a message id appended before is
    skipped, not duplicated. On PostgreSQL this takes the event-log lock until commit: call it last.
    Inside a `batch` block the rows are collected and appended at the block's end instead."""
    ready = [r for r in rows if r is not None]
    collected = conn.info.get(_BATCH)
    if collected is not None:
        collected.extend(ready)
    elif ready:
        with _one_round_trip(conn, len(ready)):
            ingest.append_events(conn=conn, rows=ready)


def _one_round_trip(conn: Connection, rows: int) -> AbstractContextManager[Any]:
    """On PostgreSQL, send the event-log lock request and the INSERT together (psycopg pipeline mode).

    The lock (`dialect.lock_event_log`) is held from the moment the server grants it until COMMIT,
    and every client round trip inside that span is time in which the client thread must win its
    interpreter lock and a CPU before the next statement can go: on a busy machine, milliseconds
    each. Pipelined, the INSERT is already waiting on the server when the lock is granted, so the
    hold spans one round trip (INSERT answer -> COMMIT) instead of two. Same statements, same lock,
    same transaction: ordering and exactly-once are unchanged. Not for COPY-sized appends (COPY
    cannot run in pipeline mode), nor SQLite (one writer; nothing to shorten)."""
    if dialect.is_sqlite(conn) or rows >= dialect.PG_COPY_MIN_ROWS:
        return nullcontext()
    pipeline = getattr(conn.connection.driver_connection, "pipeline", None)
    return pipeline() if pipeline is not None else nullcontext()


@contextmanager
def batch(conn: Connection) -> Iterator[None]:
    """Append the events of every change made inside the block in one append at its end.

    For a transaction that makes several changes (a cart filled with several items at once): the
    event-log lock is then taken once, as the last statement before the caller commits, and not held
    across the changes that follow the first one. If the block raises, its events are dropped with
    it (the caller rolls back). Nested blocks append at the end of the outermost one. Only for a
    block whose changes all commit or all roll back (no savepoint rolled back and caught inside)."""
    if conn.info.get(_BATCH) is not None:
        yield
        return
    rows: list[dict[str, Any]] = []
    conn.info[_BATCH] = rows
    try:
        yield
    finally:
        conn.info.pop(_BATCH, None)
    append(conn, list(rows))


def emit(conn: Connection, **kwargs: Any) -> bool:
    """`prepare` + `append` for one change; False if there is nobody to attribute it to."""
    row = prepare(conn, **kwargs)
    append(conn, [row])
    return row is not None
