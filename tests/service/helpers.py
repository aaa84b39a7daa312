"""The seed example as messages: an order, a chat with a bot about the shipment, a hand-off, a resolution,
and a call to the hotline the next day about the same order."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa

from omnijourney.store import db

T0 = datetime(2026, 11, 18, 9, 0, tzinfo=UTC)
ORDER = "ORD-1001"
CONV = "conv-ext-1"
CALL = "call-ext-1"
CHAT_CTX = {"chat": {"contact_id": "ct_jana"}}

#: seconds after T0 of each chat step (the measures below follow from them)
CUSTOMER_1, BOT, ASSIGNED, AGENT_1, CUSTOMER_2, AGENT_2, RESOLVED = 5, 8, 120, 200, 260, 300, 400
CALL_END = timedelta(days=1, hours=2)
CALL_WAIT, CALL_DURATION = 30.0, 300.0


def iso(t: datetime) -> str:
    return t.isoformat().replace("+00:00", "Z")


def at(seconds: float) -> str:
    return iso(T0 + timedelta(seconds=seconds))


def shop_messages() -> list[dict[str, Any]]:
    return [
        {
            "type": "identify",
            "userId": "user-jana",
            "traits": {"email": "jana@example.com", "phone": "+420 601 123 456", "first_name": "Jana"},
            "timestamp": iso(T0 - timedelta(hours=2)),
            "messageId": "shop-1",
        },
        {
            "type": "track",
            "userId": "user-jana",
            "event": "Order Completed",
            "properties": {"order_id": ORDER, "revenue": 2490, "currency": "CZK", "products": [{"sku": "SHOE-42"}]},
            "timestamp": iso(T0 - timedelta(hours=1)),
            "messageId": "shop-2",
        },
    ]


def _chat(event: str, seconds: float, mid: str, **props: Any) -> dict[str, Any]:
    return {
        "type": "track",
        "userId": "user-jana",
        "event": event,
        "properties": {"conversation_id": CONV, **props},
        "context": CHAT_CTX,
        "timestamp": at(seconds),
        "messageId": mid,
    }


def chat_messages() -> list[dict[str, Any]]:
    return [
        _chat("Conversation Started", 0, "c-0", channel="chat", topic="where_is_my_order", order_id=ORDER),
        _chat("Message Sent", CUSTOMER_1, "c-1", message_id="m1", author="customer", text=f"Where is {ORDER}?"),
        _chat("Message Sent", BOT, "c-2", message_id="m2", author="bot", text="I am the assistant, connecting you."),
        _chat("Conversation Assigned", ASSIGNED, "c-3", assignee="agent-07"),
        _chat("Message Sent", AGENT_1, "c-4", message_id="m3", author="agent", agent_id="agent-07", text="With DPD."),
        _chat("Message Sent", CUSTOMER_2, "c-5", message_id="m4", author="customer", text="Can it go elsewhere?"),
        _chat("Message Sent", AGENT_2, "c-6", message_id="m5", author="agent", agent_id="agent-07", text="Done."),
        _chat("Conversation Resolved", RESOLVED, "c-7", resolution="answered", order_id=ORDER),
        _chat("Survey Responded", RESOLVED + 60, "c-8", survey_type="csat", score=2),
    ]


def call_messages() -> list[dict[str, Any]]:
    end = T0 + CALL_END
    return [
        {
            "type": "identify",
            "anonymousId": CALL,
            "traits": {"phone": "601123456"},
            "timestamp": iso(end - timedelta(seconds=CALL_WAIT + CALL_DURATION)),
            "messageId": "cc-1",
        },
        {
            "type": "track",
            "anonymousId": CALL,
            "event": "Call Completed",
            "properties": {
                "call_id": CALL,
                "order_id": ORDER,
                "topic": "where_is_my_order",
                "agent_id": "cc-agent-02",
                "wait_seconds": CALL_WAIT,
                "duration_seconds": CALL_DURATION,
                "notes": "Customer explains the delivery problem again; discussed in chat yesterday.",
            },
            "timestamp": iso(end),
            "messageId": "cc-2",
        },
        {
            "type": "track",
            "anonymousId": CALL,
            "event": "Survey Responded",
            "properties": {"survey_type": "nps", "score": 3, "call_id": CALL},
            "timestamp": iso(end + timedelta(minutes=2)),
            "messageId": "cc-3",
        },
    ]


def conversations_snapshot(engine: sa.Engine) -> dict[str, Any]:
    """Everything this package derived, minus bookkeeping times, in comparable form."""
    with db.read(engine) as conn:
        convs = [
            {k: v for k, v in r._mapping.items() if k != "updated_at"}
            for r in conn.execute(sa.text("SELECT * FROM service_conversations ORDER BY id"))
        ]
        msgs = [tuple(r) for r in conn.execute(sa.text("SELECT * FROM service_messages ORDER BY id"))]
        notes = [tuple(r) for r in conn.execute(sa.text("SELECT * FROM service_notes ORDER BY id"))]
        orders = [
            tuple(r)
            for r in conn.execute(
                sa.text("SELECT conversation_id, order_ref FROM service_conversation_orders ORDER BY 1, 2")
            )
        ]
        outbox = [
            tuple(r) for r in conn.execute(sa.text("SELECT event_id, conversation_id FROM service_outbox ORDER BY 1"))
        ]
    return {"conversations": convs, "messages": msgs, "notes": notes, "orders": orders, "outbox": outbox}
