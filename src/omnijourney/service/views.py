"""Service routes: the conversation queue and detail for the staff console, and staff changes.

Agents (and admins) write; store staff read the conversations of a customer they serve;
marketers see the queue and measures but never a transcript or a note.
Every write is one transaction that also appends its event to the log (see `outbox`);
a repeated Idempotency-Key or external id answers 200 with what the first request made.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from fastapi import APIRouter, Depends, Header, Query, Request, Response
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from omnijourney.access.deps import require_role
from omnijourney.access.service import Principal
from omnijourney.errors import ApiError
from omnijourney.responses import json_response
from omnijourney.service import service
from omnijourney.service.config import ServiceConfig, load_service_config
from omnijourney.service.schemas import (
    AssignIn,
    CallIn,
    ConversationIn,
    MessageIn,
    NoteIn,
    OrderLinkIn,
    ResolveIn,
    StatusIn,
)
from omnijourney.service.service import Actor, ServiceError
from omnijourney.store import db
from omnijourney.store.base import utcnow

router = APIRouter(prefix="/api/service", tags=["service"])
profile_router = APIRouter(prefix="/api/profiles", tags=["service"])

writers = require_role("agent")
readers = require_role("agent", "marketer", "store_staff")
transcript_readers = require_role("agent", "store_staff")

T = TypeVar("T")
Key = Header(None, alias="Idempotency-Key", min_length=1, max_length=128)


def _config(request: Request) -> ServiceConfig:
    cfg = getattr(request.app.state, "service_config", None)
    if cfg is None:
        cfg = request.app.state.service_config = load_service_config()
    return cfg


def _actor(p: Principal) -> Actor:
    return Actor(name=p.name, token_id=p.token_id)


def _write(request: Request, fn: Callable[[Connection], T]) -> T:
    """Run `fn` in one write transaction. A UNIQUE constraint hit by a concurrent identical request
    is retried once (the retry finds what the other request made); a second hit is a 409."""
    engine = request.app.state.engine
    for attempt in (1, 2):
        try:
            with db.write(engine) as conn:
                result = fn(conn)
            break
        except ServiceError as exc:
            raise ApiError(exc.status, exc.code, exc.message) from exc
        except IntegrityError as exc:
            if attempt == 2:
                raise ApiError(409, "conflict", "the change conflicts with a concurrent one; retry") from exc
    runtime = getattr(request.app.state, "runtime", None)
    if runtime is not None and runtime.worker is not None:
        runtime.worker.wake()
    return result


def _view(conn: Connection, conversation_id: int) -> dict[str, Any]:
    view = service.conversation_view(conn=conn, conversation_id=conversation_id)
    if view is None:
        raise ServiceError(404, "not_found", f"no conversation {conversation_id}")
    return view


# ------------------------------------------------------------------ writes


@router.post("/conversations", status_code=201)
def create_conversation(
    body: ConversationIn,
    request: Request,
    response: Response,
    idempotency_key: str | None = Key,
    principal: Principal = Depends(writers),
) -> dict[str, Any]:
    """Open a conversation (an e-mail thread, a social message, a store visit). 201 new, 200 repeated key."""

    def run(conn: Connection) -> tuple[dict[str, Any], bool]:
        cid, created = service.create_conversation(
            conn=conn,
            channel=body.channel,
            profile_id=body.profile_id,
            identifier=body.identifier.model_dump() if body.identifier else None,
            external_id=body.external_id,
            idempotency_key=idempotency_key,
            topic=body.topic,
            subject=body.subject,
            order_ids=body.order_ids,
            status=body.status,
            assignee=body.assignee,
            message=body.message.model_dump() if body.message else None,
            rules=request.app.state.identity_rules,
            config=_config(request),
            actor=_actor(principal),
            now=utcnow(),
        )
        return _view(conn, cid), created

    view, created = _write(request, run)
    response.status_code = 201 if created else 200
    return view


@router.post("/conversations/{conversation_id:int}/messages", status_code=201)
def add_message(
    conversation_id: int,
    body: MessageIn,
    request: Request,
    response: Response,
    idempotency_key: str | None = Key,
    principal: Principal = Depends(writers),
) -> dict[str, Any]:
    """Reply (or relay a customer's message). (channel, external_id) is unique: a redelivery answers 200."""

    def run(conn: Connection) -> tuple[dict[str, Any], bool]:
        mid, created = service.add_message(
            conn=conn,
            conversation_id=conversation_id,
            author=body.author,
            text=body.text,
            external_id=body.external_id,
            author_id=body.author_id,
            idempotency_key=idempotency_key,
            rules=request.app.state.identity_rules,
            config=_config(request),
            actor=_actor(principal),
            now=utcnow(),
        )
        return {"message_id": mid, "conversation": _view(conn, conversation_id)}, created

    out, created = _write(request, run)
    response.status_code = 201 if created else 200
    return out


@router.post("/conversations/{conversation_id:int}/notes", status_code=201)
def add_note(
    conversation_id: int,
    body: NoteIn,
    request: Request,
    response: Response,
    idempotency_key: str | None = Key,
    principal: Principal = Depends(writers),
) -> dict[str, Any]:
    """An internal note (never shown to the customer)."""

    def run(conn: Connection) -> tuple[dict[str, Any], bool]:
        nid, created = service.add_note(
            conn=conn,
            conversation_id=conversation_id,
            text=body.text,
            idempotency_key=idempotency_key,
            rules=request.app.state.identity_rules,
            config=_config(request),
            actor=_actor(principal),
            now=utcnow(),
        )
        return {"note_id": nid, "conversation": _view(conn, conversation_id)}, created

    out, created = _write(request, run)
    response.status_code = 201 if created else 200
    return out


@router.post("/conversations/{conversation_id:int}/assign")
def assign(
    conversation_id: int,
    body: AssignIn,
    request: Request,
    idempotency_key: str | None = Key,
    principal: Principal = Depends(writers),
) -> dict[str, Any]:
    def run(conn: Connection) -> dict[str, Any]:
        service.assign(
            conn=conn,
            conversation_id=conversation_id,
            assignee=body.assignee,
            idempotency_key=idempotency_key,
            rules=request.app.state.identity_rules,
            config=_config(request),
            actor=_actor(principal),
            now=utcnow(),
        )
        return _view(conn, conversation_id)

    return _write(request, run)


def _status(
    request: Request, principal: Principal, conversation_id: int, status: str, resolution: str | None, key: str | None
) -> dict[str, Any]:
    def run(conn: Connection) -> dict[str, Any]:
        service.set_status(
            conn=conn,
            conversation_id=conversation_id,
            status=status,
            resolution=resolution,
            idempotency_key=key,
            rules=request.app.state.identity_rules,
            config=_config(request),
            actor=_actor(principal),
            now=utcnow(),
        )
        return _view(conn, conversation_id)

    return _write(request, run)


@router.post("/conversations/{conversation_id:int}/resolve")
def resolve(
    conversation_id: int,
    request: Request,
    body: ResolveIn | None = None,
    idempotency_key: str | None = Key,
    principal: Principal = Depends(writers),
) -> dict[str, Any]:
    """Resolve; resolving a resolved conversation changes nothing."""
    body = body or ResolveIn()
    return _status(request, principal, conversation_id, "resolved", body.resolution, idempotency_key)


@router.post("/conversations/{conversation_id:int}/status")
def set_status(
    conversation_id: int,
    body: StatusIn,
    request: Request,
    idempotency_key: str | None = Key,
    principal: Principal = Depends(writers),
) -> dict[str, Any]:
    """open (reopen), pending (waiting for the customer) or resolved."""
    return _status(request, principal, conversation_id, body.status, body.resolution, idempotency_key)


@router.post("/conversations/{conversation_id:int}/orders")
def link_order(
    conversation_id: int, body: OrderLinkIn, request: Request, principal: Principal = Depends(writers)
) -> dict[str, Any]:
    def run(conn: Connection) -> dict[str, Any]:
        service.link_order(
            conn=conn,
            conversation_id=conversation_id,
            order_ref=body.order_id,
            rules=request.app.state.identity_rules,
            config=_config(request),
            actor=_actor(principal),
            now=utcnow(),
        )
        return _view(conn, conversation_id)

    return _write(request, run)


@router.post("/calls", status_code=201)
def log_call(
    body: CallIn,
    request: Request,
    response: Response,
    idempotency_key: str | None = Key,
    principal: Principal = Depends(writers),
) -> dict[str, Any]:
    """Log a phone call from the console: a phone conversation with its notes (like Call Completed)."""

    def run(conn: Connection) -> tuple[dict[str, Any], bool]:
        cid, created = service.log_call(
            conn=conn,
            profile_id=body.profile_id,
            identifier=body.identifier.model_dump() if body.identifier else None,
            call_id=body.call_id,
            idempotency_key=idempotency_key,
            direction=body.direction,
            duration_seconds=body.duration_seconds,
            wait_seconds=body.wait_seconds,
            topic=body.topic,
            order_ids=body.order_ids,
            notes=body.notes,
            resolved=body.resolved,
            ended_at=body.ended_at,
            rules=request.app.state.identity_rules,
            config=_config(request),
            actor=_actor(principal),
            now=utcnow(),
        )
        return _view(conn, cid), created

    view, created = _write(request, run)
    response.status_code = 201 if created else 200
    return view


# ------------------------------------------------------------------ reads


@router.get("/conversations")
def queue(
    request: Request,
    status: list[str] | None = Query(None, description="open, pending, resolved (repeatable)"),
    channel: list[str] | None = Query(None, description="chat, email, phone, social, sms, store (repeatable)"),
    assignee: str | None = Query(None, max_length=100),
    unassigned: bool = False,
    profile_id: int | None = Query(None, ge=1),
    topic: str | None = Query(None, max_length=100),
    before: int | None = Query(None, ge=1, description="cursor: next_before of the previous page"),
    limit: int = Query(50, ge=1, le=500),
    principal: Principal = Depends(readers),
) -> Response:
    """The conversation queue, newest first. Store staff must name the customer (profile_id)."""
    bad = [s for s in status or [] if s not in ("open", "pending", "resolved")]
    bad += [c for c in channel or [] if c not in ("chat", "email", "phone", "social", "sms", "store")]
    if bad:
        raise ApiError(422, "invalid_request", f"unknown status or channel: {', '.join(bad)}")
    if principal.role == "store_staff" and profile_id is None:
        raise ApiError(403, "forbidden", "store staff see the conversations of one customer: give profile_id")
    with db.read(request.app.state.engine) as conn:
        members = None
        if profile_id is not None:
            members = service.cluster_members(conn=conn, profile_id=profile_id)
            if members is None:
                raise ApiError(404, "not_found", f"no profile {profile_id}")
        items, next_before = service.list_conversations(
            conn=conn,
            statuses=status,
            channels=channel,
            assignee=assignee,
            unassigned=unassigned,
            member_ids=members,
            topic=topic,
            before=before,
            limit=limit,
        )
    return json_response({"conversations": items, "next_before": next_before})


@router.get("/conversations/{conversation_id:int}")
def get_conversation(conversation_id: int, request: Request, _: Principal = Depends(transcript_readers)) -> Response:
    """One conversation: transcript, internal notes, linked orders, measures, previous and follow-up contacts."""
    with db.read(request.app.state.engine) as conn:
        view = service.conversation_view(conn=conn, conversation_id=conversation_id)
    if view is None:
        raise ApiError(404, "not_found", f"no conversation {conversation_id}")
    return json_response(view)


@profile_router.get("/{profile_id:int}/conversations")
def profile_conversations(
    profile_id: int,
    request: Request,
    limit: int = Query(100, ge=1, le=500),
    _: Principal = Depends(readers),
) -> Response:
    """Every conversation of every merged identity of the customer, newest first (no transcripts)."""
    with db.read(request.app.state.engine) as conn:
        out = service.profile_conversations(conn=conn, profile_id=profile_id, limit=limit)
    if out is None:
        raise ApiError(404, "not_found", f"no profile {profile_id}")
    return json_response(out)
