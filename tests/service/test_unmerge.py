"""The lost-context signal after an unmerge: a call linked to a chat only because a (wrong) merge made
the caller the chatting customer is no repeat contact once the profiles are split again."""

from __future__ import annotations

import sqlalchemy as sa

from omnijourney.pipeline import service as pipeline
from omnijourney.pipeline.worker import run_until_idle
from omnijourney.service import service
from omnijourney.store import db
from tests.identity.helpers import append, process, profile_of, source
from tests.service import helpers as h


def _links(engine: sa.Engine) -> dict[str, tuple[int | None, bool, int, int]]:
    """channel -> (previous conversation, lost context, contact number, follow-ups)."""
    with db.read(engine) as conn:
        rows = conn.execute(sa.select(service.CONV)).all()
    return {
        r.channel: (r.previous_conversation_id, bool(r.lost_context), r.contact_number, r.followup_count) for r in rows
    }


def _lost_rate(engine: sa.Engine) -> float:
    with db.read(engine) as conn:
        o = service.overview(conn=conn)
    return o["lost_context"] / o["conversations"]


def test_an_unmerge_removes_the_lost_context_link_between_the_split_customers(engine: sa.Engine) -> None:
    shop = source(engine, "shop", "web", True)
    chat = source(engine, "chat-tool", "chat", True)
    hotline = source(engine, "hotline", "call_center", True)
    jana = [m for m in h.shop_messages() if m["type"] != "identify"]
    signup = {"type": "identify", "userId": "user-jana", "traits": {"email": "jana@example.com"},
              "timestamp": h.iso(h.T0), "messageId": "shop-1"}  # fmt: skip
    jana.insert(0, signup)  # the shop's customer, without her phone yet
    append(engine, shop, "web", jana)
    append(engine, chat, "chat", h.chat_messages())
    caller, call, survey = h.call_messages()
    append(engine, hotline, "call_center", [caller])  # the hotline's caller: a profile of its own (the phone)
    # the shop then records the phone on Jana's account: the caller's profile is merged into hers ...
    phone_merge = {"type": "identify", "userId": "user-jana", "traits": {"phone": "+420 601 123 456"},
                   "timestamp": h.iso(h.T0), "messageId": "shop-3"}  # fmt: skip
    append(engine, shop, "web", [phone_merge])
    append(engine, hotline, "call_center", [call, survey])  # ... before the call about the same order arrives
    process(engine)
    root = profile_of(engine, "user_id", "user-jana")
    caller_member = profile_of(engine, "anonymous_id", h.CALL)
    assert root is not None and caller_member == root  # merged: one customer
    with db.read(engine) as conn:
        chat_id, call_id = sorted(conn.execute(sa.select(service.CONV.c.id)).scalars())
        merged = conn.execute(sa.text("SELECT merged_id FROM identity_merges WHERE unmerged_at IS NULL")).scalar_one()
    assert _links(engine) == {"chat": (None, False, 1, 1), "phone": (chat_id, True, 2, 0)}
    assert _lost_rate(engine) == 0.5

    with db.write(engine) as conn:  # what POST /api/profiles/{id}/unmerge does
        pipeline.unmerge(conn=conn, profile_id=root, merged_id=merged, actor="test")
    process(engine)  # the `Profile Unmerged` events
    assert profile_of(engine, "anonymous_id", h.CALL) != profile_of(engine, "user_id", "user-jana")
    assert _links(engine) == {"chat": (None, False, 1, 0), "phone": (None, False, 1, 0)}
    assert _lost_rate(engine) == 0.0
    with db.read(engine) as conn:
        call_view = service.conversation_view(conn=conn, conversation_id=call_id)
    assert call_view is not None and call_view["measures"]["resolved_first_contact"] is True

    # a rebuild replays the merge, the call's link and the unmerge in log order: the same result
    after = h.conversations_snapshot(engine)
    handlers = pipeline.default_handlers()
    with db.write(engine) as conn:
        pipeline.reset(conn=conn, handlers=handlers)
    run_until_idle(engine, handlers)
    assert h.conversations_snapshot(engine) == after
