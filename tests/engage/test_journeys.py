"""Journey automations against a real SMTP server (aiosmtpd) and a real webhook receiver on loopback.

Time is injected (`now=`): the executor runs "an hour later" without anybody waiting an hour."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import pytest
import sqlalchemy as sa

from omnijourney.engage import schedule
from omnijourney.engage.delivery import QuietHours, verify_webhook
from omnijourney.engage.schedule import Executor
from omnijourney.store import db
from omnijourney.store.base import utcnow
from tests.commerce.helpers import seed_service
from tests.engage.journey_helpers import (
    SmtpServer,
    add_to_cart,
    customer,
    delivery_config,
    entries,
    handlers,
    journey,
    pid,
    process,
    start_receiver,
    start_smtp,
    steps,
    timeline_events,
    track,
)

CART = {
    "key": "cart_reminder",
    "trigger": {"inactivity": {"cart_idle_minutes": 60}},
    "exit_on": ["Order Completed"],
    "conversion": {"event": "Order Completed", "within_days": 7},
    "steps": [
        {"key": "still_idle", "condition": {"cart": {"idle_minutes_gte": 60}}},
        {"key": "remind", "send": {"template": "abandoned_cart", "subject": "Your cart", "channels": ["email"]}},
    ],
}

#: event-triggered: enter on add-to-cart, wait an hour, send; a purchase exits
WAITING = {
    "key": "cart_wait",
    "trigger": {"event": {"name": "Product Added"}},
    "exit_on": ["Order Completed"],
    "steps": [
        {"key": "wait_hour", "wait": {"minutes": 60}},
        {"key": "remind", "send": {"template": "abandoned_cart", "subject": "Still thinking?", "channels": ["email"]}},
    ],
}


@pytest.fixture(scope="module")
def smtp() -> Iterator[SmtpServer]:
    server = start_smtp()
    yield server
    server.controller.stop()


@pytest.fixture
def mail(smtp: SmtpServer) -> SmtpServer:
    smtp.clear()
    return smtp


def test_abandoned_cart_sends_exactly_one_email_after_the_wait(engine: sa.Engine, mail: SmtpServer) -> None:
    seed_service(engine)
    hs = handlers([journey(**CART)])
    customer(engine, "ann")
    customer(engine, "bob")
    now = utcnow()
    add_to_cart(engine, "ann", "cart-ann", now - timedelta(minutes=5))
    add_to_cart(engine, "bob", "cart-bob", now - timedelta(minutes=5))
    process(engine, hs)
    ex = Executor(engine, delivery_config(mail))
    assert ex.run_due(now=now).entered == 0  # idle for 5 minutes only
    track(engine, "bob", "Order Completed", {"order_id": "o-bob", "total": 2490, "revenue": 2490, "products": []})
    process(engine, hs)
    for minutes in (61, 62, 180):  # the worker ticks on: still exactly one e-mail
        ex.run_due(now=now + timedelta(minutes=minutes))
    assert [m["To"] for m in mail.messages] == ["ann@example.com"]
    msg = mail.messages[0]
    assert msg["Subject"] == "Your cart"
    assert "/e/u/" in msg["List-Unsubscribe"]
    html = msg.get_body(("html",)).get_content()
    assert "/e/o/" in html and "/e/c/" in html
    assert [e.status for e in entries(engine)] == ["completed"]
    assert len(timeline_events(engine, schedule.SENT)) == 1
    ex.close()


def test_a_purchase_during_the_wait_exits_and_nothing_is_sent(engine: sa.Engine, mail: SmtpServer) -> None:
    hs = handlers([journey(**WAITING)])
    customer(engine, "cid")
    customer(engine, "dan")
    for user in ("cid", "dan"):
        track(engine, user, "Product Added", {"cart_id": f"c-{user}", "sku": "X-1", "quantity": 1})
    process(engine, hs)
    now = utcnow()
    ex = Executor(engine, delivery_config(mail))
    ex.run_due(now=now)  # the wait step runs: the send is now due in an hour
    track(engine, "dan", "Order Completed", {"order_id": "o-dan", "total": 10, "products": []})
    process(engine, hs)
    ex.run_due(now=now + timedelta(minutes=30))
    assert mail.messages == []
    ex.run_due(now=now + timedelta(minutes=61))
    assert [m["To"] for m in mail.messages] == ["cid@example.com"]
    by_status = {e.profile_id: (e.status, e.end_reason) for e in entries(engine)}
    assert by_status[pid(engine, "dan")] == ("exited", "exit: Order Completed")
    assert {s.status for s in steps(engine) if s.profile_id == pid(engine, "dan")} == {"done", "cancelled"}
    ex.close()
