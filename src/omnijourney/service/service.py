"""Conversations: applying service events, the measures, the lost-context signal, API changes, reads.

Plain keyword-only functions taking `conn`; they never commit (the caller owns the transaction).

One function, `apply_event`, turns a service event into conversation state. The processing
stage calls it for events from chat tools, call centres and shops; an API change appends its
event to the log first (`outbox`) and then calls the same function, so a rebuild from the log
recreates exactly what the API made. Measures that depend on the order of messages are
recomputed from the stored transcript (`refresh`), so events applied out of time order give
the same result.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from types import SimpleNamespace
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from omnijourney.commerce import service as commerce
from omnijourney.identity import service as identity
from omnijourney.identity.rules import IdentityRules
from omnijourney.service import outbox
from omnijourney.service.config import ServiceConfig
from omnijourney.service.models import (
    Conversation,
    ConversationOrder,
    Message,
    Note,
    OutboxEntry,
)
from omnijourney.store import dialect
from omnijourney.store.base import utcnow

CONV = Conversation.__table__
MSG = Message.__table__
NOTES = Note.__table__
ORDERS = ConversationOrder.__table__
OUTBOX = OutboxEntry.__table__

#: custom events of this package (besides the service events of ingest.spec)
NOTE_ADDED = "Conversation Note Added"
STATUS_CHANGED = "Conversation Status Changed"
ORDER_LINKED = "Conversation Order Linked"
HANDLED_EVENTS = frozenset(
    {
        "Conversation Started",
        "Message Sent",
        "Conversation Assigned",
        "Conversation Resolved",
        "Call Completed",
        "Survey Responded",
        NOTE_ADDED,
        STATUS_CHANGED,
        ORDER_LINKED,
    }
)

#: names a source may give a conversation's channel -> our channel
_CHANNEL_ALIASES = {
    "chat": "chat",
    "web": "chat",
    "app": "chat",
    "livechat": "chat",
    "email": "email",
    "e-mail": "email",
    "mail": "email",
    "phone": "phone",
    "call": "phone",
    "call_center": "phone",
    "voice": "phone",
    "social": "social",
    "whatsapp": "social",
    "messenger": "social",
    "instagram": "social",
    "facebook": "social",
    "sms": "sms",
    "store": "store",
    "kiosk": "store",
    "pos": "store",
}
#: our channel -> the event log's channel for events this package appends
EVENT_CHANNEL = {
    "chat": "chat",
    "email": "email",
    "phone": "call_center",
    "social": "social",
    "sms": "sms",
    "store": "store",
}
MAX_TEXT = 20_000


class ServiceError(ValueError):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def conversation_channel(value: Any, fallback: str) -> str:
    if isinstance(value, str) and value.strip().lower() in _CHANNEL_ALIASES:
        return _CHANNEL_ALIASES[value.strip().lower()]
    return _CHANNEL_ALIASES.get(fallback, "chat")


def _str(value: Any, limit: int) -> str | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float | str):
        text = str(value).strip()
        return text[:limit] if text else None
    return None


def _int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def _seconds(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if 0 <= value < 10**7 else None


def _order_refs(props: dict[str, Any]) -> list[str]:
    refs = []
    if (ref := _str(props.get("order_id"), 128)) is not None:
        refs.append(ref)
    extra = props.get("order_ids")
    if isinstance(extra, list):
        refs.extend(r for v in extra[:20] if (r := _str(v, 128)) is not None)
    return list(dict.fromkeys(refs))


@dataclass(slots=True)
class ServiceEvent:
    """A service event as `apply_event` needs it (from the log, or just appended by the API)."""

    event_id: int
    source_id: int
    name: str
    channel: str
    timestamp: datetime
    props: dict[str, Any]
    member_id: int | None
    #: envelope message id (identifies a message that carries no message_id of its own)
    message_id: str | None = None
    #: set for this package's own events: the conversation they are about (our id)
    conversation_id: int | None = None


# --------------------------------------------------------------------------- prepared statements
#
# A service event costs a dozen small statements. They are built once per dialect with bind
# parameters, so SQLAlchemy compiles each once and reuses it (building a statement with 35
# literal values per execution cost more than running it).

_STATEMENTS: dict[str, SimpleNamespace] = {}
_CONV_COLUMNS = [c for c in CONV.columns if c.name != "id"]


def _q(conn: Connection) -> SimpleNamespace:
    q = _STATEMENTS.get(conn.dialect.name)
    if q is None:
        q = _STATEMENTS[conn.dialect.name] = _prepare(conn)
    return q


def _prepare(conn: Connection) -> SimpleNamespace:
    select_conv = sa.select(CONV).where(CONV.c.id == sa.bindparam("cid"))
    return SimpleNamespace(
        lock=dialect.for_update(select_conv, conn),
        insert=sa.insert(CONV),
        update=sa.update(CONV)
        .where(CONV.c.id == sa.bindparam("p_id"))
        .values({c.name: sa.bindparam(f"p_{c.name}", type_=c.type) for c in _CONV_COLUMNS}),
        by_ext=sa.select(CONV.c.id).where(
            CONV.c.source_id == sa.bindparam("src"), CONV.c.external_id == sa.bindparam("ext")
        ),
        lock_by_ext=dialect.for_update(
            sa.select(CONV).where(CONV.c.source_id == sa.bindparam("src"), CONV.c.external_id == sa.bindparam("ext")),
            conn,
        ),
        by_ext_any=sa.select(CONV.c.id)
        .where(CONV.c.external_id == sa.bindparam("ext"))
        .order_by(CONV.c.id.desc())
        .limit(1),
        insert_message=dialect.insert_ignoring_conflicts(conn, MSG, ["channel", "external_id"]).returning(MSG.c.id),
        insert_note=dialect.insert_ignoring_conflicts(conn, NOTES, ["conversation_id", "external_id"]),
        link_orders=dialect.insert_ignoring_conflicts(conn, ORDERS, ["conversation_id", "order_ref"]),
        messages=sa.select(MSG.c.author, MSG.c.sent_at)
        .where(MSG.c.conversation_id == sa.bindparam("cid"))
        .order_by(MSG.c.sent_at, MSG.c.id),
        followups=sa.update(CONV)
        .where(CONV.c.id == sa.bindparam("p_id"))
        .values(followup_count=CONV.c.followup_count + sa.bindparam("p_delta"), updated_at=sa.bindparam("p_now")),
        relink=sa.update(CONV)
        .where(CONV.c.id == sa.bindparam("p_id"))
        .values(
            previous_conversation_id=sa.bindparam("p_prev"),
            lost_context=sa.bindparam("p_lost"),
            contact_number=sa.bindparam("p_number"),
            updated_at=sa.bindparam("p_now"),
        ),
        started=sa.select(CONV.c.started_at, CONV.c.id).where(CONV.c.id == sa.bindparam("cid")),
        detect={},
    )


def _detect_statements(q: SimpleNamespace, config: ServiceConfig) -> tuple[Any, Any]:
    """(earlier, later) candidate queries: same customer (the cluster of the conversation's profile
    member, as a subquery) and same matter (a shared order or the same topic, as configured)."""
    key = tuple(sorted(config.same_matter))
    if key not in q.detect:
        p = identity.PROFILES
        cid = sa.bindparam("cid")
        matter = []
        if "order" in config.same_matter:
            mine = sa.select(ORDERS.c.order_ref).where(ORDERS.c.conversation_id == cid)
            matter.append(CONV.c.id.in_(sa.select(ORDERS.c.conversation_id).where(ORDERS.c.order_ref.in_(mine))))
        if "topic" in config.same_matter:
            matter.append(CONV.c.topic == sa.bindparam("topic"))
        root = sa.select(p.c.canonical_id).where(p.c.id == sa.bindparam("pid")).scalar_subquery()
        customer = CONV.c.profile_id.in_(sa.select(p.c.id).where(p.c.canonical_id == root))
        start = sa.bindparam("start", type_=CONV.c.started_at.type)
        before = sa.or_(CONV.c.started_at < start, sa.and_(CONV.c.started_at == start, CONV.c.id < cid))
        after = sa.or_(CONV.c.started_at > start, sa.and_(CONV.c.started_at == start, CONV.c.id > cid))
        earlier = (
            sa.select(CONV.c.id, CONV.c.channel, CONV.c.contact_number)
            .where(
                customer,
                before,
                CONV.c.last_activity_at >= sa.bindparam("since", type_=CONV.c.started_at.type),
                sa.or_(*matter),
            )
            .order_by(CONV.c.started_at.desc(), CONV.c.id.desc())
            .limit(1)
        )
        later = (
            sa.select(CONV.c.id, CONV.c.channel, CONV.c.previous_conversation_id)
            .where(
                customer,
                after,
                CONV.c.started_at <= sa.bindparam("until", type_=CONV.c.started_at.type),
                sa.or_(CONV.c.previous_conversation_id.is_(None), CONV.c.previous_conversation_id != cid),
                sa.or_(*matter),
            )
            .order_by(CONV.c.started_at, CONV.c.id)
        )
        q.detect[key] = (earlier, later)
    return q.detect[key]


# --------------------------------------------------------------------------- applying events


def _lock_conversation(conn: Connection, conversation_id: int) -> dict[str, Any] | None:
    row = conn.execute(_q(conn).lock, {"cid": conversation_id}).first()
    return dict(row._mapping) if row else None


def _find_by_external(conn: Connection, source_id: int, external_id: str, *, any_source: bool) -> int | None:
    q = _q(conn)
    found = conn.execute(q.by_ext, {"src": source_id, "ext": external_id}).scalar_one_or_none()
    if found is None and any_source:
        found = conn.execute(q.by_ext_any, {"ext": external_id}).scalar_one_or_none()
    return found


def _new_conversation(ev: ServiceEvent, external_id: str, channel: str) -> dict[str, Any]:
    return {
        "id": ev.event_id,
        "source_id": ev.source_id,
        "external_id": external_id,
        "channel": channel,
        "profile_id": ev.member_id,
        "status": "open",
        "assignee": None,
        "topic": None,
        "subject": None,
        "resolution": None,
        "attributes": {},
        "started_at": ev.timestamp,
        "last_activity_at": ev.timestamp,
        "message_count": 0,
        "first_customer_message_at": None,
        "first_response_at": None,
        "first_reply_at": None,
        "bot_involved": False,
        "handoff_at": None,
        "first_assigned_at": None,
        "resolved_at": None,
        "reopen_count": 0,
        "contact_number": 1,
        "followup_count": 0,
        "previous_conversation_id": None,
        "lost_context": False,
        "csat": None,
        "csat_at": None,
        "nps": None,
        "nps_at": None,
        "updated_at": utcnow(),
        "_new": True,
    }


def _conversation_for(conn: Connection, ev: ServiceEvent, external_id: str | None) -> dict[str, Any] | None:
    """The conversation an event is about, created if this is the first event that names it."""
    if ev.conversation_id is not None:
        return _lock_conversation(conn, ev.conversation_id)
    ext = external_id or f"event-{ev.event_id}"
    row = conn.execute(_q(conn).lock_by_ext, {"src": ev.source_id, "ext": ext}).first()
    if row is not None:
        return dict(row._mapping)
    channel = conversation_channel(ev.props.get("channel"), ev.channel)
    return _new_conversation(ev, ext, channel)


def _ensure_row(conn: Connection, conv: dict[str, Any]) -> None:
    """Insert a new conversation now (messages, notes and order links refer to it)."""
    if conv.pop("_new", False):
        conn.execute(_q(conn).insert, {k: v for k, v in conv.items() if not k.startswith("_")})


def _save(conn: Connection, conv: dict[str, Any]) -> None:
    conv["updated_at"] = utcnow()
    if conv.get("_new"):
        _ensure_row(conn, conv)
        return
    params = {f"p_{c.name}": conv[c.name] for c in _CONV_COLUMNS}
    params["p_id"] = conv["id"]
    conn.execute(_q(conn).update, params)


def _touch(conv: dict[str, Any], ev: ServiceEvent) -> None:
    if conv["profile_id"] is None and ev.member_id is not None:
        conv["profile_id"] = ev.member_id
    conv["started_at"] = min(conv["started_at"], ev.timestamp)
    conv["last_activity_at"] = max(conv["last_activity_at"], ev.timestamp)


def _link_orders(conn: Connection, conv: dict[str, Any], refs: list[str], at: datetime) -> None:
    if refs:
        _ensure_row(conn, conv)
        conn.execute(
            _q(conn).link_orders, [{"conversation_id": conv["id"], "order_ref": r, "linked_at": at} for r in refs]
        )


def _resolve(conv: dict[str, Any], at: datetime, resolution: str | None) -> None:
    if conv["status"] != "resolved":
        conv["status"] = "resolved"
        conv["resolved_at"] = at
    elif conv["resolved_at"] is None or at < conv["resolved_at"]:
        conv["resolved_at"] = at
    if resolution:
        conv["resolution"] = resolution


def _reopen(conv: dict[str, Any], *, by_customer: bool) -> None:
    if conv["status"] == "resolved" and by_customer:
        conv["reopen_count"] += 1
    conv["status"] = "open"
    conv["resolved_at"] = None
    conv["resolution"] = None


def _apply_common(conv: dict[str, Any], props: dict[str, Any]) -> None:
    if (topic := _str(props.get("topic") or props.get("reason"), 100)) is not None:
        conv["topic"] = topic
    if (subject := _str(props.get("subject"), 300)) is not None:
        conv["subject"] = subject


def _insert_message(conn: Connection, conv: dict[str, Any], ev: ServiceEvent) -> bool:
    props = ev.props
    ext = _str(props.get("message_id"), 160) or (
        f"envelope-{ev.source_id}-{ev.message_id}" if ev.message_id else f"event-{ev.event_id}"
    )
    author = props.get("author") if props.get("author") in ("customer", "agent", "bot") else "customer"
    text = props.get("text") if isinstance(props.get("text"), str) else ""
    _ensure_row(conn, conv)
    row = {
        "id": ev.event_id,
        "conversation_id": conv["id"],
        "channel": conv["channel"],
        "external_id": ext,
        "author": author,
        "author_id": _str(props.get("agent_id") or props.get("author_id"), 100),
        "text": text[:MAX_TEXT],
        "sent_at": ev.timestamp,
    }
    return conn.execute(_q(conn).insert_message, row).scalar_one_or_none() is not None


def _insert_note(conn: Connection, conv: dict[str, Any], ev: ServiceEvent, text: str, external_id: str | None) -> None:
    _ensure_row(conn, conv)
    row = {
        "id": ev.event_id,
        "conversation_id": conv["id"],
        "external_id": external_id or f"event-{ev.event_id}",
        "author_id": _str(ev.props.get("agent_id") or ev.props.get("author_id"), 100),
        "text": text[:MAX_TEXT],
        "created_at": ev.timestamp,
    }
    conn.execute(_q(conn).insert_note, row)


def _survey(conn: Connection, ev: ServiceEvent) -> dict[str, Any] | None:
    props = ev.props
    kind, score = props.get("survey_type"), _int(props.get("score"))
    low, high = (1, 5) if kind == "csat" else (0, 10)
    if kind not in ("csat", "nps") or score is None or not low <= score <= high:
        return None
    conv_id = ev.conversation_id
    if conv_id is None:
        for key in ("conversation_id", "call_id"):
            if (ext := _str(props.get(key), 128)) is not None:
                conv_id = _find_by_external(conn, ev.source_id, ext, any_source=True)
                if conv_id is not None:
                    break
    conv = _lock_conversation(conn, conv_id) if conv_id is not None else None
    if conv is not None and (conv[f"{kind}_at"] is None or ev.timestamp >= conv[f"{kind}_at"]):
        conv[kind], conv[f"{kind}_at"] = score, ev.timestamp
    return conv


def _call(conn: Connection, ev: ServiceEvent) -> dict[str, Any] | None:
    """Call Completed: a phone conversation (one per call id), resolved unless `resolved` is false."""
    props = ev.props
    ext = _str(props.get("call_id"), 128) or _str(props.get("conversation_id"), 128)
    conv = _conversation_for(conn, ev, ext)
    if conv is None:
        return None
    if conv.get("_new") and ev.conversation_id is None:
        conv["channel"] = "phone"
    duration = _seconds(props.get("duration_seconds")) or 0.0
    wait = _seconds(props.get("wait_seconds")) or 0.0
    end = ev.timestamp
    start = end - timedelta(seconds=duration + wait)
    conv["started_at"] = min(conv["started_at"], start)
    conv["last_activity_at"] = max(conv["last_activity_at"], end)
    if conv["profile_id"] is None and ev.member_id is not None:
        conv["profile_id"] = ev.member_id
    answered = conv["started_at"] + timedelta(seconds=wait)
    if conv["first_response_at"] is None or answered < conv["first_response_at"]:
        conv["first_response_at"] = answered
        conv["first_reply_at"] = answered
    attrs = dict(conv["attributes"] or {})
    for key in ("direction", "duration_seconds", "wait_seconds", "call_id"):
        if props.get(key) is not None and not isinstance(props.get(key), dict | list):
            attrs[key] = props[key]
    conv["attributes"] = attrs
    _apply_common(conv, props)
    if (agent := _str(props.get("agent_id") or props.get("assignee"), 100)) is not None:
        conv["assignee"] = agent
        conv["first_assigned_at"] = conv["first_assigned_at"] or answered
    if props.get("resolved") is False:
        if conv["status"] == "resolved":
            _reopen(conv, by_customer=False)
    else:
        _resolve(conv, end, _str(props.get("resolution"), 100) or "call_completed")
    if isinstance(props.get("notes"), str) and props["notes"].strip():
        _insert_note(conn, conv, ev, props["notes"], _str(props.get("note_id"), 160))
    _link_orders(conn, conv, _order_refs(props), end)
    return conv


def apply_event(conn: Connection, ev: ServiceEvent) -> dict[str, Any] | None:
    """Apply one service event; returns the conversation it changed, to be `refresh`ed (None if none)."""
    name = ev.name
    if name == "Survey Responded":
        conv = _survey(conn, ev)
    elif name == "Call Completed":
        conv = _call(conn, ev)
    else:
        conv = _apply_conversation_event(conn, ev)
    if conv is not None and name not in ("Message Sent", "Conversation Assigned"):
        conv["_same_transcript"] = True  # the transcript measures cannot have changed
    return conv


def _apply_conversation_event(conn: Connection, ev: ServiceEvent) -> dict[str, Any] | None:
    name, props = ev.name, ev.props
    conv = _conversation_for(conn, ev, _str(props.get("conversation_id"), 128))
    if conv is None:
        return None
    _touch(conv, ev)
    _apply_common(conv, props)
    if name == "Conversation Started":
        if props.get("status") in ("open", "pending"):
            conv["status"] = props["status"]
        attrs = dict(conv["attributes"] or {})
        for key in ("entry_point", "language"):
            if isinstance(props.get(key), str):
                attrs[key] = props[key][:64]
        conv["attributes"] = attrs
    elif name == "Message Sent":
        author = props.get("author") if props.get("author") in ("customer", "agent", "bot") else "customer"
        inserted = _insert_message(conn, conv, ev)
        waiting = conv["status"] == "pending" or conv["resolved_at"] is None or ev.timestamp > conv["resolved_at"]
        if inserted and author == "customer" and conv["status"] != "open" and waiting:
            _reopen(conv, by_customer=True)
    elif name == "Conversation Assigned":
        if (assignee := _str(props.get("assignee"), 100)) is not None:
            conv["assignee"] = assignee
            if conv["first_assigned_at"] is None or ev.timestamp < conv["first_assigned_at"]:
                conv["first_assigned_at"] = ev.timestamp
    elif name == "Conversation Resolved":
        _resolve(conv, ev.timestamp, _str(props.get("resolution"), 100))
    elif name == STATUS_CHANGED:
        status = props.get("status")
        if status == "resolved":
            _resolve(conv, ev.timestamp, _str(props.get("resolution"), 100))
        elif status == "open":
            _reopen(conv, by_customer=False)
        elif status == "pending":
            if conv["status"] == "resolved":
                _reopen(conv, by_customer=False)
            conv["status"] = "pending"
    elif name == NOTE_ADDED and isinstance(props.get("text"), str) and props["text"].strip():
        _insert_note(conn, conv, ev, props["text"], _str(props.get("note_id"), 160))
    _link_orders(conn, conv, _order_refs(props), ev.timestamp)
    return conv


# --------------------------------------------------------------------------- measures and lost context


def refresh(conn: Connection, *, conversation: dict[str, Any], config: ServiceConfig) -> None:
    """Recompute the transcript measures, link repeat contacts, and store the conversation."""
    conv = conversation
    same_transcript = conv.pop("_same_transcript", False)
    # a conversation not stored yet has no messages (they refer to it), and linking repeat
    # contacts does not need its row: `_save` inserts it once, in its final state
    msgs = [] if same_transcript or conv.get("_new") else conn.execute(_q(conn).messages, {"cid": conv["id"]}).all()
    if msgs:
        conv["message_count"] = len(msgs)
        conv["bot_involved"] = any(m.author == "bot" for m in msgs)
        first_customer = next((m.sent_at for m in msgs if m.author == "customer"), None)
        conv["first_customer_message_at"] = first_customer
        if first_customer is not None:
            conv["first_response_at"] = next(
                (m.sent_at for m in msgs if m.author == "agent" and m.sent_at >= first_customer), None
            )
            conv["first_reply_at"] = next(
                (m.sent_at for m in msgs if m.author in ("agent", "bot") and m.sent_at >= first_customer), None
            )
        first_bot = next((m.sent_at for m in msgs if m.author == "bot"), None)
        handoff = None
        if first_bot is not None:
            human = [m.sent_at for m in msgs if m.author == "agent" and m.sent_at >= first_bot]
            if conv["first_assigned_at"] is not None and conv["first_assigned_at"] >= first_bot:
                human.append(conv["first_assigned_at"])
            handoff = min(human) if human else None
        conv["handoff_at"] = handoff
        conv["started_at"] = min(conv["started_at"], msgs[0].sent_at)
        conv["last_activity_at"] = max(conv["last_activity_at"], msgs[-1].sent_at)
    _detect_repeat(conn, conv, config)
    _save(conn, conv)


def _detect_repeat(conn: Connection, conv: dict[str, Any], config: ServiceConfig) -> None:
    """Link `conv` with the customer's other conversations about the same matter within the window.

    Backwards: `conv` becomes the repeat contact of the latest conversation that started before it
    and whose last activity is at most the window before `conv` started. Forwards (events from
    different sources arrive in any order): each conversation that started after `conv`, within
    the window of its last activity, becomes a repeat contact of `conv` unless it already follows
    a conversation that started later than `conv`. Through another channel, a repeat contact is
    lost context. The customer is the profile's cluster at processing time; the matter a shared
    order or the same topic (`same_matter`).
    """
    if conv["profile_id"] is None:
        return
    q = _q(conn)
    earlier_q, later_q = _detect_statements(q, config)
    window = timedelta(hours=config.lost_context_window_hours)
    start, cid = conv["started_at"], conv["id"]
    params: dict[str, Any] = {"pid": conv["profile_id"], "start": start, "cid": cid}
    if "topic" in config.same_matter:
        params["topic"] = conv["topic"]  # NULL matches nothing
    now = utcnow()
    if conv["previous_conversation_id"] is None:
        prev = conn.execute(earlier_q, {**params, "since": start - window}).first()
        if prev is not None:
            conv["previous_conversation_id"] = prev.id
            conv["lost_context"] = prev.channel != conv["channel"]
            conv["contact_number"] = prev.contact_number + 1
            conn.execute(q.followups, {"p_id": prev.id, "p_delta": 1, "p_now": now})
    for row in conn.execute(later_q, {**params, "until": conv["last_activity_at"] + window}).all():
        if row.previous_conversation_id is not None:
            current = conn.execute(q.started, {"cid": row.previous_conversation_id}).first()
            if current is not None and (current.started_at, current.id) > (start, cid):
                continue  # it already follows a more recent contact
            conn.execute(q.followups, {"p_id": row.previous_conversation_id, "p_delta": -1, "p_now": now})
        conn.execute(
            q.relink,
            {
                "p_id": row.id,
                "p_prev": cid,
                "p_lost": row.channel != conv["channel"],
                "p_number": conv["contact_number"] + 1,
                "p_now": now,
            },
        )
        conv["followup_count"] += 1


def relink_after_unmerge(conn: Connection, *, profile_ids: list[int], config: ServiceConfig) -> int:
    """Re-derive repeat-contact links after an unmerge split a cluster; returns the links removed.

    A link (and so the lost-context signal) was made with the cluster of its time. Once the
    customer is two customers again, a conversation that follows one of the *other* cluster's
    conversations was not a repeat contact at all: the link is dropped (the earlier one's follow-up
    count with it) and the conversation is linked again within its own cluster, as if it had
    arrived now; then the contact numbers of both clusters are recomputed along the chains.
    `profile_ids`: any member of each side (the survivor and the restored profile)."""
    roots = {r for p in profile_ids if (r := identity.canonical_id(conn=conn, profile_id=p)) is not None}
    members = sorted({m for r in roots for m in (identity.members(conn=conn, root=r) or [r])})
    if not members:
        return 0
    by_start = (CONV.c.started_at, CONV.c.id)
    convs = conn.execute(sa.select(CONV).where(CONV.c.profile_id.in_(members)).order_by(*by_start)).all()
    prev_ids = {c.previous_conversation_id for c in convs if c.previous_conversation_id is not None}
    prev_member = dict(conn.execute(sa.select(CONV.c.id, CONV.c.profile_id).where(CONV.c.id.in_(prev_ids))).all())
    root_of = _roots(conn, {c.profile_id for c in convs} | {p for p in prev_member.values() if p is not None})
    q = _q(conn)
    now = utcnow()
    stale = []
    for c in convs:
        if c.previous_conversation_id is None:
            continue
        prev_profile = prev_member.get(c.previous_conversation_id)
        if prev_profile is not None and root_of.get(prev_profile) == root_of.get(c.profile_id):
            continue
        if prev_profile is not None:
            conn.execute(q.followups, {"p_id": c.previous_conversation_id, "p_delta": -1, "p_now": now})
        conn.execute(q.relink, {"p_id": c.id, "p_prev": None, "p_lost": False, "p_number": 1, "p_now": now})
        stale.append(c.id)
    for cid in stale:  # in start order: linked again within its own cluster
        conv = _lock_conversation(conn, cid)
        if conv is not None:
            _detect_repeat(conn, conv, config)
            _save(conn, conv)
    if stale:
        number: dict[int, int] = {}
        rows = conn.execute(
            sa.select(CONV.c.id, CONV.c.previous_conversation_id, CONV.c.contact_number)
            .where(CONV.c.profile_id.in_(members))
            .order_by(*by_start)
        ).all()
        for r in rows:
            want = number.get(r.previous_conversation_id, 0) + 1 if r.previous_conversation_id is not None else 1
            number[r.id] = want
            if want != r.contact_number:
                conn.execute(sa.update(CONV).where(CONV.c.id == r.id).values(contact_number=want, updated_at=now))
    return len(stale)


# --------------------------------------------------------------------------- API changes (through the outbox)


@dataclass(frozen=True, slots=True)
class Actor:
    name: str
    token_id: int


def _member_for(
    conn: Connection, *, profile_id: int | None, identifier: dict[str, str] | None, rules: IdentityRules
) -> int | None:
    if profile_id is not None:
        if identity.canonical_id(conn=conn, profile_id=profile_id) is None:
            raise ServiceError(404, "not_found", f"no profile {profile_id}")
        return profile_id
    if identifier is not None:
        try:
            found = identity.lookup(conn=conn, rules=rules, id_type=identifier["type"], value=identifier["value"])
        except identity.IdentityError as exc:
            raise ServiceError(422, "invalid_identifier", str(exc)) from exc
        if found is None:
            raise ServiceError(404, "not_found", f"no profile with {identifier['type']} {identifier['value']!r}")
        return found
    return None


def _existing_conversation(conn: Connection, conversation_id: int) -> dict[str, Any]:
    """The conversation, row-locked (PostgreSQL) before the event log's append lock is taken, so a
    change waiting for a busy conversation never holds up ingestion."""
    conv = _lock_conversation(conn, conversation_id)
    if conv is None:
        raise ServiceError(404, "not_found", f"no conversation {conversation_id}")
    return conv


@dataclass(frozen=True, slots=True)
class Emitted:
    event_id: int
    created: bool
    conversation_id: int


def _emit(
    conn: Connection,
    *,
    kind: str,
    event: str,
    key: str | None,
    scope: object,
    channel: str,
    member_id: int | None,
    conversation_id: int | None,
    props: dict[str, Any],
    rules: IdentityRules,
    config: ServiceConfig,
    actor: Actor,
    now: datetime,
) -> Emitted:
    """Append the API change's event and apply it. A repeated key answers with the event (and
    conversation) it made the first time."""
    source_id = outbox.internal_source_id(conn)
    dialect.lock_event_log(conn)  # serialises API changes: check-then-append is race-free
    msg_id = outbox.message_id(kind, scope, key if key is not None else secrets.token_hex(16))
    existing = outbox.find_event(conn, source_id=source_id, msg_id=msg_id)
    if existing is not None:
        made = conn.execute(
            sa.select(OUTBOX.c.conversation_id).where(OUTBOX.c.event_id == existing.id)
        ).scalar_one_or_none()
        return Emitted(int(existing.id), False, made or conversation_id or int(existing.id))
    marker = {
        "outbox": "service",
        "kind": kind,
        "conversation_id": conversation_id,
        "profile_id": member_id,
        "actor": actor.name,
    }
    event_id = outbox.append(
        conn,
        source_id=source_id,
        msg_id=msg_id,
        event=event,
        channel=EVENT_CHANNEL[channel],
        timestamp=now,
        properties=props,
        identity=outbox.identity_fields(conn, member_id=member_id, rules=rules),
        marker=marker,
    )
    if event_id is None:  # cannot happen under the lock; the log's UNIQUE constraint is the backstop
        raise ServiceError(409, "conflict", "the change was made concurrently; retry")
    ev = ServiceEvent(
        event_id=event_id,
        source_id=source_id,
        name=event,
        channel=EVENT_CHANNEL[channel],
        timestamp=now,
        props=props,
        member_id=member_id,
        message_id=msg_id,
        conversation_id=conversation_id,
    )
    conv = apply_event(conn, ev)
    if conv is not None:
        refresh(conn, conversation=conv, config=config)
        conn.execute(
            sa.insert(OUTBOX).values(event_id=event_id, conversation_id=conv["id"], kind=kind, created_at=utcnow())
        )
    return Emitted(event_id, True, conv["id"] if conv is not None else (conversation_id or event_id))


def create_conversation(
    *,
    conn: Connection,
    channel: str,
    profile_id: int | None,
    identifier: dict[str, str] | None,
    external_id: str | None,
    idempotency_key: str | None,
    topic: str | None,
    subject: str | None,
    order_ids: list[str],
    status: str,
    assignee: str | None,
    message: dict[str, Any] | None,
    rules: IdentityRules,
    config: ServiceConfig,
    actor: Actor,
    now: datetime,
) -> tuple[int, bool]:
    """A conversation made by staff (an e-mail thread, a store visit, a social message). Returns (id, created)."""
    member = _member_for(conn, profile_id=profile_id, identifier=identifier, rules=rules)
    key = f"external:{external_id}" if external_id else (f"key:{idempotency_key}" if idempotency_key else None)
    ext = external_id or (f"api-{idempotency_key}" if idempotency_key else None)
    props: dict[str, Any] = {"channel": channel, "status": status}
    for k, v in (("topic", topic), ("subject", subject)):
        if v is not None:
            props[k] = v
    if order_ids:
        props["order_ids"] = order_ids
    # our id of the new conversation is the position of its event, so its external id is known only
    # after the append; a conversation without one gets the event's message id instead
    msg_key = key if key is not None else secrets.token_hex(16)
    props["conversation_id"] = ext or outbox.message_id("conversation", "-", msg_key)
    made = _emit(
        conn,
        kind="conversation",
        event="Conversation Started",
        key=msg_key,
        scope="-",
        channel=channel,
        member_id=member,
        conversation_id=None,
        props=props,
        rules=rules,
        config=config,
        actor=actor,
        now=now,
    )
    conv_id, created = made.conversation_id, made.created
    if created and assignee:
        assign(
            conn=conn,
            conversation_id=conv_id,
            assignee=assignee,
            idempotency_key=f"{msg_key}:assign",
            rules=rules,
            config=config,
            actor=actor,
            now=now,
        )
    if created and message:
        add_message(
            conn=conn,
            conversation_id=conv_id,
            author=message.get("author", "customer"),
            text=message["text"],
            external_id=message.get("external_id"),
            author_id=message.get("author_id"),
            idempotency_key=f"{msg_key}:first-message",
            rules=rules,
            config=config,
            actor=actor,
            now=now,
        )
    return conv_id, created


def add_message(
    *,
    conn: Connection,
    conversation_id: int,
    author: str,
    text: str,
    external_id: str | None,
    author_id: str | None,
    idempotency_key: str | None,
    rules: IdentityRules,
    config: ServiceConfig,
    actor: Actor,
    now: datetime,
) -> tuple[int, bool]:
    """A message written in (or relayed through) the console. Returns (message id, created)."""
    conv = _existing_conversation(conn, conversation_id)
    if external_id is not None:
        found = conn.execute(
            sa.select(MSG.c.id).where(MSG.c.channel == conv["channel"], MSG.c.external_id == external_id)
        ).scalar_one_or_none()
        if found is not None:
            return int(found), False
    key = f"external:{external_id}" if external_id else (f"key:{idempotency_key}" if idempotency_key else None)
    msg_key = key if key is not None else secrets.token_hex(16)
    props: dict[str, Any] = {
        "conversation_id": conv["external_id"],
        "message_id": external_id or outbox.message_id("message", conversation_id, msg_key),
        "author": author,
        "text": text,
    }
    if author == "agent":
        props["agent_id"] = author_id or actor.name
    elif author_id:
        props["author_id"] = author_id
    made = _emit(
        conn,
        kind="message",
        event="Message Sent",
        key=msg_key,
        scope=conversation_id,
        channel=conv["channel"],
        member_id=conv["profile_id"],
        conversation_id=conversation_id,
        props=props,
        rules=rules,
        config=config,
        actor=actor,
        now=now,
    )
    event_id, created = made.event_id, made.created
    # the stored message (a chat event may have delivered the same external id a moment earlier)
    found = conn.execute(
        sa.select(MSG.c.id).where(MSG.c.channel == conv["channel"], MSG.c.external_id == props["message_id"])
    ).scalar_one_or_none()
    stored = int(found) if found is not None else event_id
    return stored, created and stored == event_id


def add_note(
    *,
    conn: Connection,
    conversation_id: int,
    text: str,
    idempotency_key: str | None,
    rules: IdentityRules,
    config: ServiceConfig,
    actor: Actor,
    now: datetime,
) -> tuple[int, bool]:
    conv = _existing_conversation(conn, conversation_id)
    msg_key = idempotency_key if idempotency_key is not None else secrets.token_hex(16)
    props = {
        "conversation_id": conv["external_id"],
        "note_id": outbox.message_id("note", conversation_id, msg_key),
        "text": text,
        "author_id": actor.name,
    }
    made = _emit(
        conn,
        kind="note",
        event=NOTE_ADDED,
        key=msg_key,
        scope=conversation_id,
        channel=conv["channel"],
        member_id=conv["profile_id"],
        conversation_id=conversation_id,
        props=props,
        rules=rules,
        config=config,
        actor=actor,
        now=now,
    )
    return made.event_id, made.created


def assign(
    *,
    conn: Connection,
    conversation_id: int,
    assignee: str,
    idempotency_key: str | None,
    rules: IdentityRules,
    config: ServiceConfig,
    actor: Actor,
    now: datetime,
) -> bool:
    """Assign; assigning to the current assignee changes nothing. Returns whether an event was made."""
    conv = _existing_conversation(conn, conversation_id)
    if conv["assignee"] == assignee and idempotency_key is None:
        return False
    made = _emit(
        conn,
        kind="assign",
        event="Conversation Assigned",
        key=idempotency_key if idempotency_key is not None else f"{assignee}:{conv['updated_at'].isoformat()}",
        scope=conversation_id,
        channel=conv["channel"],
        member_id=conv["profile_id"],
        conversation_id=conversation_id,
        props={"conversation_id": conv["external_id"], "assignee": assignee, "assigned_by": actor.name},
        rules=rules,
        config=config,
        actor=actor,
        now=now,
    )
    return made.created


def set_status(
    *,
    conn: Connection,
    conversation_id: int,
    status: str,
    resolution: str | None,
    idempotency_key: str | None,
    rules: IdentityRules,
    config: ServiceConfig,
    actor: Actor,
    now: datetime,
) -> bool:
    """Resolve, set pending or reopen; a conversation already in that status is left as it is."""
    conv = _existing_conversation(conn, conversation_id)
    if conv["status"] == status and idempotency_key is None:
        return False
    props: dict[str, Any] = {"conversation_id": conv["external_id"], "status": status, "changed_by": actor.name}
    if resolution:
        props["resolution"] = resolution
    event = "Conversation Resolved" if status == "resolved" else STATUS_CHANGED
    made = _emit(
        conn,
        kind=f"status-{status}",
        event=event,
        key=idempotency_key if idempotency_key is not None else f"{status}:{conv['updated_at'].isoformat()}",
        scope=conversation_id,
        channel=conv["channel"],
        member_id=conv["profile_id"],
        conversation_id=conversation_id,
        props=props,
        rules=rules,
        config=config,
        actor=actor,
        now=now,
    )
    return made.created


def link_order(
    *,
    conn: Connection,
    conversation_id: int,
    order_ref: str,
    rules: IdentityRules,
    config: ServiceConfig,
    actor: Actor,
    now: datetime,
) -> bool:
    conv = _existing_conversation(conn, conversation_id)
    linked = conn.execute(
        sa.select(ORDERS.c.order_ref).where(
            ORDERS.c.conversation_id == conversation_id, ORDERS.c.order_ref == order_ref
        )
    ).first()
    if linked is not None:
        return False
    made = _emit(
        conn,
        kind="order",
        event=ORDER_LINKED,
        key=order_ref,
        scope=conversation_id,
        channel=conv["channel"],
        member_id=conv["profile_id"],
        conversation_id=conversation_id,
        props={"conversation_id": conv["external_id"], "order_id": order_ref},
        rules=rules,
        config=config,
        actor=actor,
        now=now,
    )
    return made.created


def log_call(
    *,
    conn: Connection,
    profile_id: int | None,
    identifier: dict[str, str] | None,
    call_id: str | None,
    idempotency_key: str | None,
    direction: str,
    duration_seconds: float,
    wait_seconds: float | None,
    topic: str | None,
    order_ids: list[str],
    notes: str | None,
    resolved: bool,
    ended_at: datetime | None,
    rules: IdentityRules,
    config: ServiceConfig,
    actor: Actor,
    now: datetime,
) -> tuple[int, bool]:
    """A phone call logged by the agent: a phone conversation with its notes, like Call Completed."""
    member = _member_for(conn, profile_id=profile_id, identifier=identifier, rules=rules)
    key = f"call:{call_id}" if call_id else (f"key:{idempotency_key}" if idempotency_key else None)
    msg_key = key if key is not None else secrets.token_hex(16)
    props: dict[str, Any] = {
        "call_id": call_id or outbox.message_id("call", "-", msg_key),
        "direction": direction,
        "duration_seconds": duration_seconds,
        "resolved": resolved,
        "agent_id": actor.name,
    }
    for k, v in (("wait_seconds", wait_seconds), ("topic", topic), ("notes", notes)):
        if v is not None:
            props[k] = v
    if order_ids:
        props["order_id"] = order_ids[0]
        props["order_ids"] = order_ids
    made = _emit(
        conn,
        kind="call",
        event="Call Completed",
        key=msg_key,
        scope="-",
        channel="phone",
        member_id=member,
        conversation_id=None,
        props=props,
        rules=rules,
        config=config,
        actor=actor,
        now=ended_at or now,
    )
    return made.conversation_id, made.created


# --------------------------------------------------------------------------- reads


def _seconds_between(a: datetime | None, b: datetime | None) -> float | None:
    return round((b - a).total_seconds(), 3) if a is not None and b is not None else None


def measures(row: Any) -> dict[str, Any]:
    m = row._mapping if hasattr(row, "_mapping") else row
    base = m["first_customer_message_at"] or m["started_at"]
    resolved = m["status"] == "resolved"
    return {
        "first_response_seconds": _seconds_between(base, m["first_response_at"]),
        "first_reply_seconds": _seconds_between(base, m["first_reply_at"]),
        "resolution_seconds": _seconds_between(m["started_at"], m["resolved_at"]) if resolved else None,
        "message_count": m["message_count"],
        "contacts": 1 + m["reopen_count"] + m["followup_count"],
        "contact_number": m["contact_number"],
        "reopen_count": m["reopen_count"],
        "followup_count": m["followup_count"],
        "resolved_first_contact": (
            m["contact_number"] == 1 and m["reopen_count"] == 0 and m["followup_count"] == 0 if resolved else None
        ),
        "bot_involved": bool(m["bot_involved"]),
        "handed_off": m["handoff_at"] is not None,
        "handoff_seconds": _seconds_between(base, m["handoff_at"]),
        "csat": m["csat"],
        "nps": m["nps"],
        "lost_context": bool(m["lost_context"]),
        "previous_conversation_id": m["previous_conversation_id"],
    }


# built once: the customer 360 lists conversations on every page view
_ROOTS = sa.select(identity.PROFILES.c.id, identity.PROFILES.c.canonical_id).where(
    identity.PROFILES.c.id.in_(sa.bindparam("ids", expanding=True))
)
_ORDERS_OF = (
    sa.select(ORDERS.c.conversation_id, ORDERS.c.order_ref)
    .where(ORDERS.c.conversation_id.in_(sa.bindparam("ids", expanding=True)))
    .order_by(ORDERS.c.linked_at, ORDERS.c.order_ref)
)
_CONVERSATIONS_OF_MEMBERS = (
    sa.select(CONV)
    .where(CONV.c.profile_id.in_(sa.bindparam("members", expanding=True)))
    .order_by(CONV.c.id.desc())
    .limit(sa.bindparam("n"))
)


def _roots(conn: Connection, member_ids: set[int]) -> dict[int, int]:
    if not member_ids:
        return {}
    return dict(conn.execute(_ROOTS, {"ids": sorted(member_ids)}).all())


def _summary(row: Any, roots: dict[int, int], orders: dict[int, list[str]]) -> dict[str, Any]:
    return {
        "id": row.id,
        "channel": row.channel,
        "status": row.status,
        "assignee": row.assignee,
        "topic": row.topic,
        "subject": row.subject,
        "resolution": row.resolution,
        "profile_id": roots.get(row.profile_id, row.profile_id) if row.profile_id is not None else None,
        "member_id": row.profile_id,
        "source_id": row.source_id,
        "external_id": row.external_id,
        "started_at": row.started_at,
        "last_activity_at": row.last_activity_at,
        "resolved_at": row.resolved_at,
        "order_ids": orders.get(row.id, []),
        "attributes": row.attributes or {},
        "measures": measures(row),
    }


def _orders_of(conn: Connection, ids: list[int]) -> dict[int, list[str]]:
    out: dict[int, list[str]] = {}
    if ids:
        for cid, ref in conn.execute(_ORDERS_OF, {"ids": ids}):
            out.setdefault(cid, []).append(ref)
    return out


def list_conversations(
    *,
    conn: Connection,
    statuses: list[str] | None = None,
    channels: list[str] | None = None,
    assignee: str | None = None,
    unassigned: bool = False,
    member_ids: list[int] | None = None,
    topic: str | None = None,
    before: int | None = None,
    limit: int = 50,
) -> tuple[list[dict[str, Any]], int | None]:
    """Conversations newest first (by id, i.e. by when they were first seen), keyset-paginated on id."""
    only_members = member_ids is not None and not (statuses or channels or assignee is not None or unassigned)
    if only_members and topic is None and before is None:  # the customer 360's list: a statement built once
        rows = conn.execute(_CONVERSATIONS_OF_MEMBERS, {"members": member_ids, "n": limit + 1}).all()
        return _page(conn, rows, limit)
    stmt = sa.select(CONV).order_by(CONV.c.id.desc()).limit(limit + 1)
    if statuses:
        stmt = stmt.where(CONV.c.status.in_(statuses))
    if channels:
        stmt = stmt.where(CONV.c.channel.in_(channels))
    if assignee is not None:
        stmt = stmt.where(CONV.c.assignee == assignee)
    if unassigned:
        stmt = stmt.where(CONV.c.assignee.is_(None))
    if member_ids is not None:
        stmt = stmt.where(CONV.c.profile_id.in_(member_ids))
    if topic is not None:
        stmt = stmt.where(CONV.c.topic == topic)
    if before is not None:
        stmt = stmt.where(CONV.c.id < before)
    return _page(conn, conn.execute(stmt).all(), limit)


def _page(conn: Connection, rows: list[Any], limit: int) -> tuple[list[dict[str, Any]], int | None]:
    """Conversation summaries of one page (`rows` holds one more than `limit` when there is a next page)."""
    more = len(rows) > limit
    rows = rows[:limit]
    roots = _roots(conn, {r.profile_id for r in rows if r.profile_id is not None})
    orders = _orders_of(conn, [r.id for r in rows])
    return [_summary(r, roots, orders) for r in rows], (rows[-1].id if more and rows else None)


def waiting_queue(
    *,
    conn: Connection,
    channels: list[str] | None = None,
    assignee: str | None = None,
    unassigned: bool = False,
    limit: int = 100,
) -> tuple[list[dict[str, Any]], int]:
    """Open and pending conversations, the longest waiting first (oldest last activity), and how many
    match in all. The agent workspace's queue."""
    where = [CONV.c.status.in_(("open", "pending"))]
    if channels:
        where.append(CONV.c.channel.in_(channels))
    if assignee is not None:
        where.append(CONV.c.assignee == assignee)
    if unassigned:
        where.append(CONV.c.assignee.is_(None))
    rows = conn.execute(sa.select(CONV).where(*where).order_by(CONV.c.last_activity_at, CONV.c.id).limit(limit)).all()
    total = conn.execute(sa.select(sa.func.count()).select_from(CONV).where(*where)).scalar_one()
    roots = _roots(conn, {r.profile_id for r in rows if r.profile_id is not None})
    orders = _orders_of(conn, [r.id for r in rows])
    return [_summary(r, roots, orders) for r in rows], int(total)


def cluster_members(*, conn: Connection, profile_id: int) -> list[int] | None:
    """Every member of the profile's cluster (None if there is no such profile)."""
    root = identity.canonical_id(conn=conn, profile_id=profile_id)
    return None if root is None else identity.members(conn=conn, root=root)


def profile_conversations(*, conn: Connection, profile_id: int, limit: int = 100) -> dict[str, Any] | None:
    """The conversations of every member of the profile's cluster, newest first."""
    root = identity.canonical_id(conn=conn, profile_id=profile_id)
    if root is None:
        return None
    members = identity.members(conn=conn, root=root)
    items, _ = list_conversations(conn=conn, member_ids=members, limit=limit)
    return {"profile_id": root, "conversations": items}


_CONV_IDS = sa.bindparam("ids", expanding=True)
_MESSAGES_OF = (
    sa.select(MSG).where(MSG.c.conversation_id.in_(_CONV_IDS)).order_by(MSG.c.conversation_id, MSG.c.sent_at, MSG.c.id)
)
_NOTES_OF = (
    sa.select(NOTES)
    .where(NOTES.c.conversation_id.in_(_CONV_IDS))
    .order_by(NOTES.c.conversation_id, NOTES.c.created_at, NOTES.c.id)
)


def transcripts(*, conn: Connection, conversation_ids: list[int]) -> dict[int, dict[str, list[dict[str, Any]]]]:
    """The messages and internal notes of several conversations in two statements (the customer 360
    shows many), shaped as in `conversation_view`; every requested id has an entry."""
    out: dict[int, dict[str, list[dict[str, Any]]]] = {i: {"messages": [], "notes": []} for i in conversation_ids}
    if not conversation_ids:
        return out
    params = {"ids": list(out)}
    for m in conn.execute(_MESSAGES_OF, params):
        out[m.conversation_id]["messages"].append(
            {
                "id": m.id,
                "external_id": m.external_id,
                "author": m.author,
                "author_id": m.author_id,
                "text": m.text,
                "sent_at": m.sent_at,
            }
        )
    for n in conn.execute(_NOTES_OF, params):
        out[n.conversation_id]["notes"].append(
            {"id": n.id, "author_id": n.author_id, "text": n.text, "created_at": n.created_at}
        )
    return out


def _order_summary(conn: Connection, ref: str) -> dict[str, Any] | None:
    oid = commerce.find_order(conn=conn, ref=ref)
    if oid is None:
        return None
    o = commerce.order_view(conn=conn, order_id=oid)
    keys = ("id", "order_ref", "status", "fulfilment", "pickup_location", "channel", "currency", "total", "placed_at")
    return {k: o.get(k) for k in keys}


def conversation_view(*, conn: Connection, conversation_id: int) -> dict[str, Any] | None:
    """One conversation with its transcript, internal notes, linked orders, measures and related contacts."""
    row = conn.execute(sa.select(CONV).where(CONV.c.id == conversation_id)).first()
    if row is None:
        return None
    roots = _roots(conn, {row.profile_id} if row.profile_id is not None else set())
    orders = _orders_of(conn, [row.id])
    view = _summary(row, roots, orders)
    view["messages"] = [
        {
            "id": m.id,
            "external_id": m.external_id,
            "author": m.author,
            "author_id": m.author_id,
            "text": m.text,
            "sent_at": m.sent_at,
        }
        for m in conn.execute(sa.select(MSG).where(MSG.c.conversation_id == row.id).order_by(MSG.c.sent_at, MSG.c.id))
    ]
    view["transcript"] = "\n".join(
        f"[{m['sent_at'].isoformat()}] {m['author']}{'/' + m['author_id'] if m['author_id'] else ''}: {m['text']}"
        for m in view["messages"]
    )
    view["notes"] = [
        {"id": n.id, "author_id": n.author_id, "text": n.text, "created_at": n.created_at}
        for n in conn.execute(
            sa.select(NOTES).where(NOTES.c.conversation_id == row.id).order_by(NOTES.c.created_at, NOTES.c.id)
        )
    ]
    view["orders"] = [{"order_id": ref, "order": _order_summary(conn, ref)} for ref in orders.get(row.id, [])]
    related = conn.execute(
        sa.select(CONV.c.id, CONV.c.channel, CONV.c.topic, CONV.c.started_at, CONV.c.lost_context).where(
            sa.or_(CONV.c.id == row.previous_conversation_id, CONV.c.previous_conversation_id == row.id)
        )
    ).all()
    view["previous_conversation"] = next(
        (
            {"id": r.id, "channel": r.channel, "topic": r.topic, "started_at": r.started_at}
            for r in related
            if r.id == row.previous_conversation_id
        ),
        None,
    )
    view["followups"] = [
        {"id": r.id, "channel": r.channel, "topic": r.topic, "started_at": r.started_at, "lost_context": r.lost_context}
        for r in related
        if r.id != row.previous_conversation_id
    ]
    return view


def reset(conn: Connection) -> None:
    for table in (OUTBOX, ORDERS, NOTES, MSG, CONV):
        conn.execute(sa.delete(table))


def overview(*, conn: Connection) -> dict[str, Any]:
    """Counts for a summary line: conversations by status and channel, repeat and lost-context contacts."""
    by_status = dict(conn.execute(sa.select(CONV.c.status, sa.func.count()).group_by(CONV.c.status)).all())
    by_channel = dict(conn.execute(sa.select(CONV.c.channel, sa.func.count()).group_by(CONV.c.channel)).all())
    repeats = conn.execute(sa.select(sa.func.count()).where(CONV.c.previous_conversation_id.is_not(None))).scalar_one()
    lost = conn.execute(sa.select(sa.func.count()).where(CONV.c.lost_context.is_(True))).scalar_one()
    example = conn.execute(
        sa.select(CONV.c.id).where(CONV.c.lost_context.is_(True)).order_by(CONV.c.id).limit(1)
    ).scalar_one_or_none()
    return {
        "conversations": sum(by_status.values()),
        "by_status": by_status,
        "by_channel": by_channel,
        "repeat_contacts": int(repeats),
        "lost_context": int(lost),
        "lost_context_example": example,
    }
