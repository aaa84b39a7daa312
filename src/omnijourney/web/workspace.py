"""The agent workspace: the open conversations queue, a conversation beside the customer 360, and the
agent's actions (reply, note, assign to me, resolve, log a phone call).

Reads and writes go only through the service package's functions (`omnijourney.service.service`);
each write is one transaction in which the service appends its event to the log (the outbox), so
a change is on the customer's timeline and a rebuild recreates it. Every form carries a hidden
idempotency key made when the page was rendered: a double submit of the same form (a double click,
a browser retry) finds the first request's event and changes nothing more.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from datetime import datetime
from typing import Any, TypeVar
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Form, Query, Request
from fastapi.responses import RedirectResponse, Response
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from omnijourney.service import service as conversations
from omnijourney.service.config import ServiceConfig, load_service_config
from omnijourney.service.service import Actor, ServiceError
from omnijourney.store import db
from omnijourney.store.base import utcnow
from omnijourney.web import service
from omnijourney.web.service import Session
from omnijourney.web.views import _back, _cfg, _render, action, page, templates

router = APIRouter(prefix="/console/workspace", include_in_schema=False)

AGENTS = ("admin", "agent")
#: who may read transcripts and notes on the 360 page (marketers see the list and measures only)
TRANSCRIPT_READERS = ("admin", "agent", "store_staff")
CONVERSATION_CHANNELS = ("chat", "email", "phone", "social", "sms", "store")
SHOW = ("all", "mine", "unassigned")
QUEUE_LIMIT = 100
#: conversations on the 360 page, and how many of them (the newest) come with their transcript
CUSTOMER_CONVERSATIONS = 20
CUSTOMER_TRANSCRIPTS = 10
MAX_TEXT = conversations.MAX_TEXT
KEY_LENGTH = 64

T = TypeVar("T")

#: conversation channel -> the console's channel badge
_BADGE = {"phone": "call_center"}


def _ago(then: datetime | None, now: datetime | None = None) -> str:
    if then is None:
        return ""
    seconds = max(0, int(((now or utcnow()) - then).total_seconds()))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min"
    if seconds < 86400:
        return f"{seconds // 3600} h {seconds % 3600 // 60} min"
    return f"{seconds // 86400} d {seconds % 86400 // 3600} h"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    s = round(seconds)
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60} s"
    if s < 86400:
        return f"{s // 3600} h {s % 3600 // 60} min"
    return f"{s // 86400} d {s % 86400 // 3600} h"


templates.env.filters["ago"] = _ago
templates.env.filters["duration"] = _duration
templates.env.globals["conversation_badge"] = lambda ch: _BADGE.get(ch, ch)


def _config(request: Request) -> ServiceConfig:
    cfg = getattr(request.app.state, "service_config", None)
    if cfg is None:
        cfg = request.app.state.service_config = load_service_config()
    return cfg


def _actor(session: Session) -> Actor:
    return Actor(name=session.user.username, token_id=0)


def _key(session: Session, sent: str) -> str | None:
    """The form's idempotency key, scoped to the user (so one user cannot replay another's)."""
    sent = sent.strip()
    return f"console:{session.user.id}:{sent}" if sent else None


def new_key() -> str:
    return secrets.token_urlsafe(18)


def _write(request: Request, fn: Callable[[Connection], T]) -> T:
    """`fn` in one write transaction; a UNIQUE hit by a concurrent identical submit is retried once
    (the retry finds what the other request made). Wakes the processing worker afterwards."""
    engine = request.app.state.engine
    for attempt in (1, 2):
        try:
            with db.write(engine) as conn:
                result = fn(conn)
            break
        except IntegrityError as exc:
            if attempt == 2:
                raise ServiceError(409, "conflict", "the change conflicted with a concurrent one; try again") from exc
    runtime = getattr(request.app.state, "runtime", None)
    if runtime is not None and getattr(runtime, "worker", None) is not None:
        runtime.worker.wake()
    return result


def _text(value: str, what: str) -> str:
    text = value.strip()
    if not text:
        raise ServiceError(422, "invalid_request", f"the {what} is empty")
    return text


# ------------------------------------------------------------------ the queue


@router.get("")
@router.get("/")
def queue(
    request: Request,
    channel: str = Query("", max_length=16),
    show: str = Query("all", max_length=16),
    notice: str | None = Query(None, max_length=300),
    error: str | None = Query(None, max_length=300),
    session: Session = Depends(page(*AGENTS)),
) -> Response:
    channel = channel if channel in CONVERSATION_CHANNELS else ""
    show = show if show in SHOW else "all"
    with db.read(request.app.state.engine) as conn:
        items, total = conversations.waiting_queue(
            conn=conn,
            channels=[channel] if channel else None,
            assignee=session.user.username if show == "mine" else None,
            unassigned=show == "unassigned",
            limit=QUEUE_LIMIT,
        )
        ids = sorted({i["profile_id"] for i in items if i["profile_id"] is not None})
        names = {
            s["id"]: s
            for s in service.profiles.summaries(conn=conn, root_ids=ids, config=request.app.state.profile_config)
        }
    now = utcnow()
    for item in items:
        item["customer"] = names.get(item["profile_id"]) if item["profile_id"] is not None else None
        item["waiting"] = _ago(item["last_activity_at"], now)
    context = {
        "items": items,
        "total": total,
        "channel": channel,
        "show": show,
        "conversation_channels": CONVERSATION_CHANNELS,
        "notice": notice,
        "error": error,
        "call_key": new_key(),
    }
    return _render(request, "workspace.html", session, context)


# ------------------------------------------------------------------ one conversation beside the 360


def _transcript(view: dict[str, Any]) -> list[dict[str, Any]]:
    """Messages and internal notes in one chronological list."""
    entries = [
        {"kind": "message", "author": m["author"], "who": m["author_id"], "text": m["text"], "at": m["sent_at"]}
        for m in view["messages"]
    ]
    entries += [
        {"kind": "note", "author": "note", "who": n["author_id"], "text": n["text"], "at": n["created_at"]}
        for n in view["notes"]
    ]
    return sorted(entries, key=lambda e: e["at"])


@router.get("/{conversation_id:int}")
def conversation(
    conversation_id: int,
    request: Request,
    notice: str | None = Query(None, max_length=300),
    error: str | None = Query(None, max_length=300),
    session: Session = Depends(page(*AGENTS)),
) -> Response:
    with db.read(request.app.state.engine) as conn:
        view = conversations.conversation_view(conn=conn, conversation_id=conversation_id)
        customer = None
        if view is not None and view["profile_id"] is not None:
            customer = service.customer_view(
                conn=conn,
                profile_id=view["profile_id"],
                profile_config=request.app.state.profile_config,
                commerce_config=_cfg(),
                timeline_limit=15,
            )
    if view is None:
        return _render(request, "not_found.html", session, {"what": f"conversation {conversation_id}"}, status=404)
    context = {
        "conv": view,
        "entries": _transcript(view),
        "c": customer,
        "notice": notice,
        "error": error,
        "reply_key": new_key(),
        "note_key": new_key(),
        "call_key": new_key(),
        "waiting": _ago(view["last_activity_at"]),
    }
    return _render(request, "workspace_conversation.html", session, context)


def _here(conversation_id: int) -> str:
    return f"/console/workspace/{conversation_id}"


@router.post("/{conversation_id:int}/reply")
def reply(
    conversation_id: int,
    request: Request,
    text: str = Form("", max_length=MAX_TEXT),
    idempotency_key: str = Form("", max_length=KEY_LENGTH),
    session: Session = Depends(action(*AGENTS)),
) -> Response:
    def run(conn: Connection) -> tuple[int, bool]:
        return conversations.add_message(
            conn=conn,
            conversation_id=conversation_id,
            author="agent",
            text=_text(text, "reply"),
            external_id=None,
            author_id=session.user.username,
            idempotency_key=_key(session, idempotency_key),
            rules=request.app.state.identity_rules,
            config=_config(request),
            actor=_actor(session),
            now=utcnow(),
        )

    return _act(request, conversation_id, run, done="reply sent", again="this reply was already sent")


@router.post("/{conversation_id:int}/note")
def note(
    conversation_id: int,
    request: Request,
    text: str = Form("", max_length=MAX_TEXT),
    idempotency_key: str = Form("", max_length=KEY_LENGTH),
    session: Session = Depends(action(*AGENTS)),
) -> Response:
    def run(conn: Connection) -> tuple[int, bool]:
        return conversations.add_note(
            conn=conn,
            conversation_id=conversation_id,
            text=_text(text, "note"),
            idempotency_key=_key(session, idempotency_key),
            rules=request.app.state.identity_rules,
            config=_config(request),
            actor=_actor(session),
            now=utcnow(),
        )

    return _act(request, conversation_id, run, done="note added", again="this note was already added")


@router.post("/{conversation_id:int}/assign")
def assign_to_me(conversation_id: int, request: Request, session: Session = Depends(action(*AGENTS))) -> Response:
    """Assign to the logged-in agent; assigning again changes nothing (idempotent by state)."""

    def run(conn: Connection) -> tuple[int, bool]:
        made = conversations.assign(
            conn=conn,
            conversation_id=conversation_id,
            assignee=session.user.username,
            idempotency_key=None,
            rules=request.app.state.identity_rules,
            config=_config(request),
            actor=_actor(session),
            now=utcnow(),
        )
        return conversation_id, made

    return _act(request, conversation_id, run, done="assigned to you", again="already assigned to you")


@router.post("/{conversation_id:int}/resolve")
def resolve(
    conversation_id: int,
    request: Request,
    resolution: str = Form("", max_length=200),
    session: Session = Depends(action(*AGENTS)),
) -> Response:
    """Resolve; resolving a resolved conversation changes nothing (idempotent by state)."""

    def run(conn: Connection) -> tuple[int, bool]:
        made = conversations.set_status(
            conn=conn,
            conversation_id=conversation_id,
            status="resolved",
            resolution=resolution.strip() or None,
            idempotency_key=None,
            rules=request.app.state.identity_rules,
            config=_config(request),
            actor=_actor(session),
            now=utcnow(),
        )
        return conversation_id, made

    return _act(request, conversation_id, run, done="resolved", again="already resolved")


def _act(
    request: Request, conversation_id: int, run: Callable[[Connection], tuple[int, bool]], *, done: str, again: str
) -> Response:
    try:
        _, created = _write(request, run)
    except ServiceError as exc:
        if exc.status == 404:
            return RedirectResponse("/console/workspace?" + _q(error=exc.message), status_code=303)
        return _back(_here(conversation_id), error=exc.message)
    return _back(_here(conversation_id), notice=done if created else again)


def _q(**params: str) -> str:
    return urlencode({k: v for k, v in params.items() if v})


# ------------------------------------------------------------------ log a phone call


@router.post("/calls")
def log_call(
    request: Request,
    profile_id: int | None = Form(None, ge=1),
    customer: str = Form("", max_length=200),
    notes: str = Form("", max_length=MAX_TEXT),
    topic: str = Form("", max_length=100),
    direction: str = Form("inbound", max_length=16),
    minutes: str = Form("", max_length=16),
    order_id: str = Form("", max_length=128),
    resolved: str = Form("", max_length=8),
    back: str = Form("workspace", max_length=16),
    idempotency_key: str = Form("", max_length=KEY_LENGTH),
    session: Session = Depends(action(*AGENTS)),
) -> Response:
    """A phone call the agent just had: a phone conversation with its notes, resolved or left open.
    The customer is the profile (from a 360 or conversation page) or found by phone / e-mail / card."""
    back_to_customer = back == "customer" and profile_id is not None

    def fail(message: str) -> Response:
        if back_to_customer:
            return _back(f"/console/customers/{profile_id}", call_error=message)
        return _back("/console/workspace", error=message)

    if direction not in ("inbound", "outbound"):
        return fail("the direction is inbound or outbound")
    try:
        duration = float(minutes.replace(",", ".")) * 60 if minutes.strip() else 0.0
    except ValueError:
        return fail("the duration is a number of minutes")
    if not 0 <= duration <= 86_400:
        return fail("the duration is between 0 and 1440 minutes")

    def run(conn: Connection) -> tuple[int, bool]:
        pid = profile_id
        if pid is None:
            query = customer.strip()
            if not query:
                raise ServiceError(422, "invalid_request", "give the caller's phone, e-mail or loyalty card")
            hits = service.find_customers(
                conn=conn,
                query=query,
                rules=request.app.state.identity_rules,
                config=request.app.state.profile_config,
                limit=2,
            )
            if not hits:
                raise ServiceError(404, "not_found", f"no customer matches {query!r}")
            if len(hits) > 1:
                raise ServiceError(
                    409, "ambiguous", f"several customers match {query!r}: log the call from the customer's page"
                )
            pid = hits[0]["id"]
        return conversations.log_call(
            conn=conn,
            profile_id=pid,
            identifier=None,
            call_id=None,
            idempotency_key=_key(session, idempotency_key),
            direction=direction,
            duration_seconds=duration,
            wait_seconds=None,
            topic=topic.strip() or None,
            order_ids=[order_id.strip()] if order_id.strip() else [],
            notes=notes.strip() or None,
            resolved=resolved == "true",
            ended_at=None,
            rules=request.app.state.identity_rules,
            config=_config(request),
            actor=_actor(session),
            now=utcnow(),
        )

    try:
        conversation_id, created = _write(request, run)
    except ServiceError as exc:
        return fail(exc.message)
    message = "call logged" if created else "this call was already logged"
    if back_to_customer:
        return _back(f"/console/customers/{profile_id}", call_notice=message, call=str(conversation_id))
    return _back(_here(conversation_id), notice=message)


# ------------------------------------------------------------------ conversations on the customer 360


def customer_context(
    request: Request, session: Session, profile_id: int, *, conn: Connection, members: list[int]
) -> dict[str, Any]:
    """What the 360 page's conversations section needs: the customer's conversations (newest first),
    the newest with their transcript for roles that may read one, and the log-a-call form.

    Read in the caller's transaction with the cluster it resolved (`members`), and the transcripts
    of the newest conversations in two statements, not one conversation view each."""
    readers = session.user.role in TRANSCRIPT_READERS
    items, _ = conversations.list_conversations(conn=conn, member_ids=members, limit=CUSTOMER_CONVERSATIONS)
    if readers:
        shown = [item["id"] for item in items[:CUSTOMER_TRANSCRIPTS]]
        found = conversations.transcripts(conn=conn, conversation_ids=shown)
        for item in items[:CUSTOMER_TRANSCRIPTS]:
            item["entries"] = _transcript(found[item["id"]])
    params = request.query_params
    return {
        "ws": {
            "conversations": items,
            "transcripts": readers,
            "can_act": session.user.role in AGENTS,
            "call_key": new_key(),
            "notice": (params.get("call_notice") or "")[:300] or None,
            "error": (params.get("call_error") or "")[:300] or None,
            "opened": params.get("call"),
        }
    }
