"""A minimal transactional outbox: append an event for an API change in the change's transaction.

The event goes straight into the event log (under the log's append lock, so positions
commit in order) from an internal source, with a deterministic message id: a retried
request finds its event by `(source, message_id)`, which the log keeps unique. The
event carries the profile member it is about as one of that member's own identifiers,
so identity puts it on the customer's timeline without linking anything new.

The internal source is disabled for ingestion (its write key is refused), so only
server-side code can append events with its id; handlers may trust its markers.
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Row

from omnijourney.access.models import Source
from omnijourney.identity.models import IdentityLink
from omnijourney.identity.rules import IdentityRules
from omnijourney.ingest.models import Event
from omnijourney.store import dialect
from omnijourney.store.base import utcnow

SOURCES = Source.__table__
EVENTS = Event.__table__
LINKS = IdentityLink.__table__

#: the internal source whose events are API changes (one per domain that uses the outbox)
SERVICE_SOURCE = "omnijourney-service"


def internal_source_id(conn: Connection, name: str = SERVICE_SOURCE) -> int:
    """The id of the internal source `name`, created (disabled for ingestion) on first use."""
    found = conn.execute(sa.select(SOURCES.c.id).where(SOURCES.c.name == name)).scalar_one_or_none()
    if found is not None:
        return int(found)
    stmt = dialect.insert_ignoring_conflicts(conn, SOURCES, ["name"]).values(
        name=name,
        channel="other",
        trusted=False,
        write_key="internal-" + secrets.token_urlsafe(24),
        allowed_origins=[],
        enabled=False,
        created_at=utcnow(),
    )
    conn.execute(stmt)
    return int(conn.execute(sa.select(SOURCES.c.id).where(SOURCES.c.name == name)).scalar_one())


def message_id(*parts: object) -> str:
    """A deterministic message id for an API change (same request parts -> same id)."""
    digest = hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).hexdigest()
    return f"outbox-{digest[:48]}"


def find_event(conn: Connection, *, source_id: int, msg_id: str) -> Row[Any] | None:
    return conn.execute(
        sa.select(EVENTS.c.id, EVENTS.c.payload).where(EVENTS.c.source_id == source_id, EVENTS.c.message_id == msg_id)
    ).first()


def identity_fields(conn: Connection, *, member_id: int | None, rules: IdentityRules) -> dict[str, Any]:
    """Message fields naming `member_id` by one identifier it owns (highest priority first).

    Only fields that are not traits are used (userId, anonymousId, properties.*, context.chat/device),
    so the event changes no profile trait.
    """
    if member_id is None:
        return {}
    owned = {
        (t, v)
        for t, v in conn.execute(sa.select(LINKS.c.id_type, LINKS.c.value).where(LINKS.c.profile_id == member_id))
    }
    for name, _spec, paths in rules.extraction_plan:
        values = sorted(v for t, v in owned if t == name)
        if not values:
            continue
        for path in paths:
            if len(path) == 1 and path[0] in ("userId", "anonymousId"):
                return {path[0]: values[0]}
            if path[0] == "properties" or (path[0] == "context" and path[1] in ("chat", "device")):
                out: dict[str, Any] = {}
                node = out
                for part in path[:-1]:
                    node = node.setdefault(part, {})
                node[path[-1]] = values[0]
                return out
    return {}


def append(
    conn: Connection,
    *,
    source_id: int,
    msg_id: str,
    event: str,
    channel: str,
    timestamp: datetime,
    properties: dict[str, Any],
    identity: dict[str, Any],
    marker: dict[str, Any],
) -> int | None:
    """Append a track event; returns its log position, or None if `msg_id` is already in the log."""
    dialect.lock_event_log(conn)
    props = {**identity.get("properties", {}), **properties}
    context = {**identity.get("context", {}), "channel": channel, "omnijourney": marker}
    user_id = identity.get("userId")
    anonymous_id = identity.get("anonymousId")
    iso = timestamp.isoformat().replace("+00:00", "Z")
    payload: dict[str, Any] = {
        "type": "track",
        "event": event,
        "messageId": msg_id,
        "timestamp": iso,
        "properties": props,
        "context": context,
    }
    if user_id is not None:
        payload["userId"] = user_id
    if anonymous_id is not None:
        payload["anonymousId"] = anonymous_id
    now = utcnow()
    stmt = (
        dialect.insert_ignoring_conflicts(conn, EVENTS, ["source_id", "message_id"])
        .values(
            source_id=source_id,
            message_id=msg_id,
            type="track",
            event=event,
            user_id=user_id,
            anonymous_id=anonymous_id,
            channel=channel,
            timestamp=timestamp,
            received_at=now,
            sent_at=None,
            original_timestamp=timestamp,
            order_id=str(props["order_id"])[:128] if props.get("order_id") else None,
            cart_id=None,
            revenue=None,
            currency=None,
            context=context,
            payload=payload,
        )
        .returning(EVENTS.c.id)
    )
    return conn.execute(stmt).scalar_one_or_none()
