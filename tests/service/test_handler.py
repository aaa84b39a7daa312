"""Service events -> conversations, measures and the lost-context signal; API changes through the outbox;
a rebuild from the log gives the same conversations. Real databases, no server."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import pydantic
import pytest
import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from omnijourney.identity.rules import load_rules
from omnijourney.pipeline import service as pipeline
from omnijourney.pipeline.worker import run_until_idle
from omnijourney.service import service
from omnijourney.service.config import ServiceConfig, load_service_config
from omnijourney.service.handler import ServiceHandler
from omnijourney.store import db
from omnijourney.store.base import utcnow
from tests.identity.helpers import append, process, profile_of, source
from tests.service import helpers as h

RULES = load_rules()
CONFIG = load_service_config()
ACTOR = service.Actor(name="agent-jan", token_id=1)


def load_seed(engine: sa.Engine) -> dict[str, int]:
    shop = source(engine, "shop", "web", True)
    chat = source(engine, "chat-tool", "chat", True)
    hotline = source(engine, "hotline", "call_center", True)
    append(engine, shop, "web", h.shop_messages())
    append(engine, chat, "chat", h.chat_messages())
    append(engine, hotline, "call_center", h.call_messages())
    process(engine)
    return {"shop": shop, "chat": chat, "hotline": hotline}


def conversations(engine: sa.Engine, profile_id: int) -> list[dict]:
    with db.read(engine) as conn:
        out = service.profile_conversations(conn=conn, profile_id=profile_id)
    assert out is not None
    return out["conversations"]


def view(engine: sa.Engine, conversation_id: int) -> dict:
    with db.read(engine) as conn:
        v = service.conversation_view(conn=conn, conversation_id=conversation_id)
    assert v is not None
    return v


def test_seed_example_gives_two_conversations_on_one_profile_with_lost_context_and_measures(engine) -> None:
    load_seed(engine)
    pid = profile_of(engine, "phone", "+420601123456")
    assert pid is not None and pid == profile_of(engine, "user_id", "user-jana")
    call, chat = conversations(engine, pid)  # newest first
    assert (chat["channel"], call["channel"]) == ("chat", "phone")
    assert chat["profile_id"] == call["profile_id"] == pid

    cm = chat["measures"]
    assert chat["status"] == "resolved" and chat["assignee"] == "agent-07" and chat["order_ids"] == [h.ORDER]
    assert cm["first_response_seconds"] == h.AGENT_1 - h.CUSTOMER_1  # the first human reply
    assert cm["first_reply_seconds"] == h.BOT - h.CUSTOMER_1  # the first reply of anyone (the bot)
    assert cm["bot_involved"] and cm["handed_off"]
    assert cm["handoff_seconds"] == h.ASSIGNED - h.CUSTOMER_1
    assert cm["resolution_seconds"] == h.RESOLVED
    assert cm["message_count"] == 5 and cm["csat"] == 2 and cm["nps"] is None
    # the customer had to call again about the same order: two contacts, not resolved at first contact
    assert cm["contacts"] == 2 and cm["followup_count"] == 1 and cm["resolved_first_contact"] is False
    assert cm["lost_context"] is False and cm["previous_conversation_id"] is None

    km = call["measures"]
    assert call["status"] == "resolved" and call["topic"] == "where_is_my_order" and call["order_ids"] == [h.ORDER]
    assert km["lost_context"] is True and km["previous_conversation_id"] == chat["id"]
    assert km["contact_number"] == 2 and km["resolved_first_contact"] is False
    assert km["first_response_seconds"] == h.CALL_WAIT
    assert km["resolution_seconds"] == h.CALL_WAIT + h.CALL_DURATION
    assert km["nps"] == 3 and km["bot_involved"] is False and km["handed_off"] is False

    detail = view(engine, chat["id"])
    assert [m["author"] for m in detail["messages"]] == ["customer", "bot", "agent", "customer", "agent"]
    assert detail["messages"][0]["text"] == f"Where is {h.ORDER}?"
    assert "agent/agent-07: With DPD." in detail["transcript"]
    assert detail["followups"][0]["id"] == call["id"] and detail["followups"][0]["lost_context"] is True
    assert detail["orders"][0]["order"]["order_ref"] == h.ORDER  # the order commerce recorded from the shop
    call_detail = view(engine, call["id"])
    assert call_detail["previous_conversation"]["id"] == chat["id"]
    assert "explains the delivery problem again" in call_detail["notes"][0]["text"]


def test_window_is_configurable_and_validated(engine, tmp_path: Path) -> None:
    shop = source(engine, "shop", "web", True)
    chat = source(engine, "chat-tool", "chat", True)
    hotline = source(engine, "hotline", "call_center", True)
    append(engine, shop, "web", h.shop_messages())
    append(engine, chat, "chat", h.chat_messages())
    late = h.call_messages()
    for m in late:  # four days after the chat instead of one
        m["timestamp"] = h.iso(datetime.fromisoformat(m["timestamp"].replace("Z", "+00:00")) + timedelta(days=3))
    append(engine, hotline, "call_center", late)
    narrow = [*pipeline.default_handlers()[:-1], ServiceHandler(ServiceConfig(lost_context_window_hours=72))]
    run_until_idle(engine, narrow)
    pid = profile_of(engine, "user_id", "user-jana")
    call, chat = conversations(engine, pid)
    assert call["measures"]["lost_context"] is False and call["measures"]["previous_conversation_id"] is None
    assert chat["measures"]["resolved_first_contact"] is True

    wide = [*pipeline.default_handlers()[:-1], ServiceHandler(ServiceConfig(lost_context_window_hours=24 * 5))]
    with db.write(engine) as conn:
        pipeline.reset(conn=conn, handlers=wide)
    run_until_idle(engine, wide)
    call, chat = conversations(engine, pid)
    assert call["measures"]["lost_context"] is True and call["measures"]["previous_conversation_id"] == chat["id"]

    bad = tmp_path / "service.yaml"
    bad.write_text("lost_context_window_hours: -5\n")
    with pytest.raises(pydantic.ValidationError):
        load_service_config(bad)
    bad.write_text("lost_context_window_hours: 72\nsame_matter: [colour]\n")
    with pytest.raises(pydantic.ValidationError):
        load_service_config(bad)


def test_a_redelivered_message_is_stored_once_by_constraint(engine) -> None:
    chat = source(engine, "chat-tool", "chat", True)
    msgs = h.chat_messages()[:3]
    again = dict(msgs[1], messageId="c-1-redelivered")  # the chat tool's webhook fired twice
    append(engine, chat, "chat", [*msgs, again])
    process(engine)
    with db.read(engine) as conn:
        rows = conn.execute(sa.text("SELECT external_id FROM service_messages ORDER BY id")).all()
        conv = conn.execute(sa.text("SELECT id, channel, message_count FROM service_conversations")).one()
    assert [r[0] for r in rows] == ["m1", "m2"]
    assert conv.message_count == 2
    # the database refuses a second (channel, external id) whatever the code does
    with pytest.raises(IntegrityError), db.write(engine) as conn:
        conn.execute(
            sa.insert(service.MSG).values(
                id=10**9,
                conversation_id=conv.id,
                channel=conv.channel,
                external_id="m1",
                author="customer",
                text="dup",
                sent_at=utcnow(),
            )
        )


def test_api_changes_go_through_the_log_once_and_a_rebuild_recreates_them(engine) -> None:
    load_seed(engine)
    pid = profile_of(engine, "user_id", "user-jana")
    call, chat = conversations(engine, pid)
    now = utcnow()
    with db.write(engine) as conn:
        mid, created = service.add_message(
            conn=conn,
            conversation_id=call["id"],
            author="agent",
            text="Sorry, I see yesterday's chat; the parcel is re-routed.",
            external_id=None,
            author_id=None,
            idempotency_key="reply-1",
            rules=RULES,
            config=CONFIG,
            actor=ACTOR,
            now=now,
        )
        assert created
        service.add_note(
            conn=conn,
            conversation_id=call["id"],
            text="Customer annoyed at repeating herself.",
            idempotency_key=None,
            rules=RULES,
            config=CONFIG,
            actor=ACTOR,
            now=now,
        )
        service.assign(
            conn=conn,
            conversation_id=chat["id"],
            assignee="agent-jan",
            idempotency_key=None,
            rules=RULES,
            config=CONFIG,
            actor=ACTOR,
            now=now,
        )
        email_id, _ = service.create_conversation(
            conn=conn,
            channel="email",
            profile_id=pid,
            identifier=None,
            external_id="thread-77",
            idempotency_key=None,
            topic="invoice",
            subject="Invoice for ORD-1001",
            order_ids=[h.ORDER],
            status="pending",
            assignee="agent-jan",
            message={"author": "agent", "text": "Your invoice is attached."},
            rules=RULES,
            config=CONFIG,
            actor=ACTOR,
            now=now,
        )
        # the same key again: the same message, nothing new
        again, created_again = service.add_message(
            conn=conn,
            conversation_id=call["id"],
            author="agent",
            text="Sorry, I see yesterday's chat; the parcel is re-routed.",
            external_id=None,
            author_id=None,
            idempotency_key="reply-1",
            rules=RULES,
            config=CONFIG,
            actor=ACTOR,
            now=now,
        )
        assert (again, created_again) == (mid, False)
    before = h.conversations_snapshot(engine)
    assert process(engine) > 0  # the outbox events are processed ... but not applied twice
    after = h.conversations_snapshot(engine)
    assert after == before
    email = view(engine, email_id)
    assert email["status"] == "pending" and email["assignee"] == "agent-jan" and email["channel"] == "email"
    assert [m["text"] for m in email["messages"]] == ["Your invoice is attached."]
    assert email["messages"][0]["author_id"] == "agent-jan"
    # a new matter (another topic, yet the same order): a repeat contact of the call, through another channel
    assert email["measures"]["previous_conversation_id"] == call["id"] and email["measures"]["lost_context"]
    # the changes are on the customer's timeline
    with db.read(engine) as conn:
        timeline = conn.execute(
            sa.text(
                "SELECT e.event FROM profile_events pe JOIN events e ON e.id = pe.event_id "
                "JOIN profiles p ON p.id = pe.profile_id WHERE p.canonical_id = :p AND e.source_id = "
                "(SELECT id FROM sources WHERE name = 'omnijourney-service') ORDER BY e.id"
            ),
            {"p": pid},
        ).all()
    assert [r[0] for r in timeline] == [
        "Message Sent",
        "Conversation Note Added",
        "Conversation Assigned",
        "Conversation Started",
        "Conversation Assigned",
        "Message Sent",
    ]

    handlers = pipeline.default_handlers()
    with db.write(engine) as conn:
        pipeline.reset(conn=conn, handlers=handlers)
        assert conn.execute(sa.text("SELECT count(*) FROM service_conversations")).scalar_one() == 0
    run_until_idle(engine, handlers)
    assert h.conversations_snapshot(engine) == after


def test_a_call_logged_before_the_chat_arrives_is_still_linked_to_it(engine) -> None:
    """Sources deliver in any order (a call centre uploading before the chat tool): the result is the same."""
    shop = source(engine, "shop", "web", True)
    chat = source(engine, "chat-tool", "chat", True)
    hotline = source(engine, "hotline", "call_center", True)
    append(engine, hotline, "call_center", h.call_messages())
    append(engine, shop, "web", h.shop_messages())
    process(engine)
    append(engine, chat, "chat", h.chat_messages())
    process(engine)
    pid = profile_of(engine, "user_id", "user-jana")
    assert pid == profile_of(engine, "phone", "+420601123456")
    chat_c, call_c = sorted(conversations(engine, pid), key=lambda c: c["started_at"])
    assert call_c["id"] < chat_c["id"]  # the call was seen first ...
    assert call_c["measures"]["previous_conversation_id"] == chat_c["id"]  # ... and still follows the chat
    assert call_c["measures"]["lost_context"] is True and call_c["measures"]["contact_number"] == 2
    assert chat_c["measures"]["contacts"] == 2 and chat_c["measures"]["resolved_first_contact"] is False


def test_a_broken_service_config_stops_the_server_at_start_up(settings, engine, tmp_path: Path, monkeypatch) -> None:
    from omnijourney.app import create_app

    bad = tmp_path / "service.yaml"
    bad.write_text("lost_context_window_hours: 0\n")
    monkeypatch.setenv("OMNIJOURNEY_SERVICE_CONFIG", str(bad))
    with pytest.raises(pydantic.ValidationError, match="lost_context_window_hours"):
        create_app(settings, engine=engine, migrate_db=False)
    monkeypatch.setenv("OMNIJOURNEY_SERVICE_CONFIG", str(tmp_path / "missing.yaml"))
    with pytest.raises(FileNotFoundError):
        create_app(settings, engine=engine, migrate_db=False)


def test_odd_events_are_applied_sensibly_and_never_stop_the_stage(engine) -> None:
    chat = source(engine, "chat-tool", "chat", True)
    social = source(engine, "social-inbox", "social", True)

    def ev(event: str, mid: str, **props) -> dict:
        n = int(mid.split("-")[1])
        return {
            "type": "track",
            "userId": "user-odd",
            "event": event,
            "properties": props,
            "messageId": mid,
            "timestamp": h.at(60 * n),
        }

    append(
        engine,
        chat,
        "chat",
        [
            ev("Message Sent", "o-1", text="no conversation id, no message id"),  # its own conversation
            ev("Conversation Started", "o-2", conversation_id=42, topic=123, order_ids="not-a-list", channel="fax"),
            ev("Conversation Status Changed", "o-3", conversation_id=42, status="snoozed"),
            ev("Survey Responded", "o-4", survey_type="csat", score=5, conversation_id="nobody-knows"),
            ev("Conversation Resolved", "o-5", conversation_id=42),
            ev("Message Sent", "o-6", conversation_id=42, message_id="x", author="customer", text="back again"),
        ],
    )
    append(
        engine,
        social,
        "social",
        [
            ev(
                "Message Sent",
                "s-1",
                conversation_id="ig-1",
                message_id="x",
                author="customer",
                text="same id, other channel",
            )
        ],
    )
    assert process(engine) == 7
    with db.read(engine) as conn:
        rows = {r.external_id: r for r in conn.execute(sa.text("SELECT * FROM service_conversations ORDER BY id"))}
        messages = conn.execute(sa.text("SELECT channel, external_id FROM service_messages ORDER BY id")).all()
    assert set(rows) == {"event-" + str(min(r.id for r in rows.values())), "42", "ig-1"}
    c42 = rows["42"]
    assert (c42.channel, c42.topic) == ("chat", "123")  # an unknown channel falls back to the source's
    assert c42.status == "open" and c42.reopen_count == 1  # resolved, then the customer wrote again
    assert c42.csat is None
    assert rows["ig-1"].channel == "social"
    # the same external message id on two channels is two messages; the constraint is per channel
    assert sorted(messages)[-2:] == [("chat", "x"), ("social", "x")]


def test_create_answers_with_the_conversation_its_event_landed_in(engine) -> None:
    """An external id that equals another request's derived one lands in that conversation; the answer names it."""

    def create(**kw) -> tuple[int, bool]:
        args = {
            "channel": "email",
            "profile_id": None,
            "identifier": None,
            "external_id": None,
            "idempotency_key": None,
            "topic": None,
            "subject": None,
            "order_ids": [],
            "status": "open",
            "assignee": None,
            "message": None,
        }
        with db.write(engine) as conn:
            return service.create_conversation(
                conn=conn, **{**args, **kw}, rules=RULES, config=CONFIG, actor=ACTOR, now=utcnow()
            )

    first, created = create(idempotency_key="K")
    assert created
    assert create(idempotency_key="K") == (first, False)
    second, created = create(external_id="api-K")  # another request, the same external id as the first
    assert second == first and created
    with db.read(engine) as conn:
        assert service.conversation_view(conn=conn, conversation_id=second) is not None
        assert conn.execute(sa.text("SELECT count(*) FROM service_conversations")).scalar_one() == 1
