"""Journey automations against a real SMTP server (aiosmtpd) and a real webhook receiver on loopback.

Time is injected (`now=`): the executor runs "an hour later" without anybody waiting an hour."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from zoneinfo import ZoneInfo

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


def _direct(engine: sa.Engine, definition: dict, users: list[str], at, consent: str | None = "granted") -> list[int]:  # type: ignore[no-untyped-def]
    """Customers in the log (processed), the journey stored, each customer entered at `at`."""
    for u in users:
        customer(engine, u, consent=consent)
    process(engine, handlers([]))
    j = journey(**definition)
    ids = [pid(engine, u) for u in users]
    with db.write(engine) as conn:
        version = schedule.sync_journeys(conn=conn, journeys=[j], now=at)[j.key]
        for p in ids:
            schedule.enter(conn, journey=j, version=version, profile_id=p, dedupe_key=f"t:{p}", context={}, now=at)
    return ids


SEND_NOW = {
    "key": "send_now",
    "trigger": {"event": {"name": "Anything"}},
    "steps": [{"key": "hello", "send": {"template": "welcome", "subject": "Hi", "channels": ["email"]}}],
}


def test_a_withdrawn_email_consent_stops_a_scheduled_send(engine: sa.Engine, mail: SmtpServer) -> None:
    hs = handlers([journey(**WAITING)])
    customer(engine, "eve")
    track(engine, "eve", "Product Added", {"cart_id": "c-eve", "sku": "X-1", "quantity": 1})
    process(engine, hs)
    now = utcnow()
    ex = Executor(engine, delivery_config(mail))
    ex.run_due(now=now)  # entered with consent granted; the send is scheduled an hour later
    track(engine, "eve", "Consent Updated", {"purpose": "marketing", "channel": "email", "status": "withdrawn"})
    process(engine, hs)
    ex.run_due(now=now + timedelta(minutes=61))
    assert mail.messages == []
    remind = next(s for s in steps(engine) if s.step_key == "remind")
    assert (remind.status, remind.outcome) == ("skipped", "suppressed: no consent")
    assert timeline_events(engine, schedule.SENT) == []
    ex.close()


def test_two_workers_never_send_a_step_twice(engine: sa.Engine, mail: SmtpServer) -> None:
    """Two executors (threads, own connections) race over the same due steps; on PostgreSQL the claim is
    FOR UPDATE SKIP LOCKED, on SQLite the single writer serialises the claims."""
    import threading

    users = [f"w{i}" for i in range(24)]
    at = utcnow()
    _direct(engine, SEND_NOW, users, at)
    workers = [Executor(engine, delivery_config(mail)) for _ in range(2)]
    start = threading.Barrier(2)
    sent: list[int] = []

    def work(ex: Executor) -> None:
        start.wait()
        while True:
            s = ex.run_due(now=at, limit=3, scan=False)
            sent.append(s.sent)
            if s.claimed == 0:
                return

    threads = [threading.Thread(target=work, args=(w,)) for w in workers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    to = sorted(m["To"] for m in mail.messages)
    assert to == sorted(f"{u}@example.com" for u in users)  # every step once: no loss, no duplicate
    assert sum(sent) == len(users)
    assert len(timeline_events(engine, schedule.SENT)) == len(users)
    assert {s.status for s in steps(engine)} == {"done"}
    for w in workers:
        w.close()


def test_a_crash_between_claim_and_send_resumes_without_loss_or_duplicate(engine: sa.Engine, mail: SmtpServer) -> None:
    at = utcnow()
    _direct(engine, SEND_NOW, ["kim"], at)
    config = delivery_config(mail, lease_seconds=120)
    crashed = Executor(engine, config)
    assert len(crashed.claim(now=at, limit=10)) == 1  # claimed and committed ... then the process dies
    survivor = Executor(engine, config)
    assert survivor.run_due(now=at + timedelta(seconds=60), scan=False).claimed == 0  # lease still held
    assert mail.messages == []
    s = survivor.run_due(now=at + timedelta(seconds=121), scan=False)  # the lease expired: resumed
    assert (s.claimed, s.sent) == (1, 1)
    survivor.run_due(now=at + timedelta(seconds=400), scan=False)
    assert [m["To"] for m in mail.messages] == ["kim@example.com"]
    # the crashed worker's late claim token cannot finish the step a second time
    assert crashed.run_step(steps(engine)[0].id, "stale-token", now=at + timedelta(seconds=401)).lost_claims == 1
    assert len(timeline_events(engine, schedule.SENT)) == 1
    crashed.close()
    survivor.close()


def test_a_crash_after_smtp_acceptance_resends_with_the_same_message_id(engine: sa.Engine, mail: SmtpServer) -> None:
    """The documented at-least-once window: accepted by SMTP, crash before the outcome commits."""
    at = utcnow()
    _direct(engine, SEND_NOW, ["lou"], at)
    config = delivery_config(mail, lease_seconds=60)

    def die(step_id: int) -> None:
        raise SystemExit("killed after SMTP acceptance")

    with pytest.raises(SystemExit):
        Executor(engine, config, after_delivery=die).run_due(now=at, scan=False)
    resumed = Executor(engine, config)
    assert resumed.run_due(now=at + timedelta(seconds=61), scan=False).sent == 1
    assert resumed.run_due(now=at + timedelta(seconds=200), scan=False).claimed == 0
    first, second = mail.messages
    assert first["Message-ID"] == second["Message-ID"]  # a receiver deduplicating on Message-ID shows one
    assert len(timeline_events(engine, schedule.SENT)) == 1
    resumed.close()


def test_a_crash_inside_a_wave_resends_only_what_was_not_recorded(engine: sa.Engine, mail: SmtpServer) -> None:
    """A wave's outcomes commit together: a crash after its second acceptance resends that one
    message (same Message-ID) and sends the third; what a failing wave already sent is recorded."""
    at = utcnow()
    _direct(engine, SEND_NOW, ["ana", "bob", "cyd"], at)
    config = delivery_config(mail, lease_seconds=60, wave_size=3)
    accepted: list[int] = []

    def die_on_second(step_id: int) -> None:
        accepted.append(step_id)
        if len(accepted) == 2:
            raise SystemExit("killed after the second SMTP acceptance")

    with pytest.raises(SystemExit):
        Executor(engine, config, after_delivery=die_on_second).run_due(now=at, scan=False)
    assert len(mail.messages) == 2
    assert len(timeline_events(engine, schedule.SENT)) == 1  # the first outcome was recorded
    resumed = Executor(engine, config)
    s = resumed.run_due(now=at + timedelta(seconds=61), scan=False)
    assert (s.claimed, s.sent) == (2, 2)
    assert resumed.run_due(now=at + timedelta(seconds=200), scan=False).claimed == 0
    ids = [m["Message-ID"] for m in mail.messages]
    assert len(ids) == 4 and len(set(ids)) == 3  # one message twice, with the same Message-ID
    assert len({m["To"] for m in mail.messages[:2]}) == 2
    assert {m["To"] for m in mail.messages} == {"ana@example.com", "bob@example.com", "cyd@example.com"}
    assert len(timeline_events(engine, schedule.SENT)) == 3
    assert {s.status for s in steps(engine)} == {"done"}
    resumed.close()


def test_quiet_hours_defer_a_send(engine: sa.Engine, mail: SmtpServer) -> None:
    late = utcnow().replace(hour=23, minute=30, second=0, microsecond=0)
    _direct(engine, SEND_NOW, ["max"], late)
    quiet = QuietHours.parse("22:00-07:00", "Europe/Prague")  # 23:30 UTC is 00:30 in Prague: quiet
    ex = Executor(engine, delivery_config(mail, quiet_hours=quiet))
    assert ex.run_due(now=late, scan=False).deferred == 1
    assert mail.messages == []
    (step,) = steps(engine)
    assert step.status == "scheduled"
    assert ex.run_due(now=step.due_at - timedelta(minutes=1), scan=False).claimed == 0
    assert ex.run_due(now=step.due_at, scan=False).sent == 1
    assert [m["To"] for m in mail.messages] == ["max@example.com"]
    local = step.due_at.astimezone(ZoneInfo("Europe/Prague"))
    assert (local.hour, local.minute) == (7, 0)
    ex.close()


def test_a_frequency_cap_blocks_a_send(engine: sa.Engine, mail: SmtpServer) -> None:
    two = {
        "key": "two_mails",
        "trigger": {"event": {"name": "Anything"}},
        "steps": [
            {"key": "first", "send": {"template": "welcome", "subject": "One", "channels": ["email"]}},
            {"key": "second", "send": {"template": "welcome", "subject": "Two", "channels": ["email"]}},
        ],
    }
    at = utcnow()
    _direct(engine, two, ["ned"], at)
    ex = Executor(engine, delivery_config(mail, frequency_caps={"email": (1, 7.0)}))
    ex.run_due(now=at, scan=False)
    ex.run_due(now=at + timedelta(minutes=1), scan=False)
    assert [m["Subject"] for m in mail.messages] == ["One"]
    second = next(s for s in steps(engine) if s.step_key == "second")
    assert (second.status, second.outcome) == ("skipped", "suppressed: frequency cap")
    ex.close()


def test_holdout_members_get_no_send_but_are_counted(engine: sa.Engine, mail: SmtpServer) -> None:
    definition = {**SEND_NOW, "key": "held", "holdout_percent": 50, "conversion": {"event": "Order Completed"}}
    users = [f"h{i}" for i in range(10)]
    at = utcnow()
    ids = _direct(engine, definition, users, at)
    control = {p for p in ids if schedule.holdout("held", p, 50)}
    assert 0 < len(control) < len(ids)  # deterministic by hash: some in, some out
    ex = Executor(engine, delivery_config(mail))
    ex.run_due(now=at, scan=False)
    got = {m["To"] for m in mail.messages}
    assert got == {f"{u}@example.com" for u, p in zip(users, ids, strict=True) if p not in control}
    assert {e.profile_id for e in entries(engine) if e.status == "control"} == control
    assert {s.profile_id for s in steps(engine)}.isdisjoint(control)
    # one buyer in each group converts
    buyer_c = next(u for u, p in zip(users, ids, strict=True) if p in control)
    buyer_t = next(u for u, p in zip(users, ids, strict=True) if p not in control)
    for u in (buyer_c, buyer_t):
        track(engine, u, "Order Completed", {"order_id": f"o-{u}", "total": 5, "products": []})
    process(engine, handlers([journey(**definition)]))
    with db.read(engine) as conn:
        st = schedule.stats(conn, journey_key="held")["held"]
    assert (st["entered"], st["control"], st["sent"]) == (
        len(ids) - len(control),
        len(control),
        len(ids) - len(control),
    )
    assert (st["converted"], st["control_converted"]) == (1, 1)
    assert st["uplift"] == round(1 / (len(ids) - len(control)) - 1 / len(control), 4)
    ex.close()


def test_a_webhook_is_signed_and_a_failing_receiver_is_retried_with_backoff(engine: sa.Engine) -> None:
    receiver = start_receiver()
    receiver.fail = 2
    hook = {
        "key": "hooked",
        "trigger": {"event": {"name": "Anything"}},
        "steps": [{"key": "notify", "webhook": {"url": receiver.url, "event": "cart.reminder"}}],
    }
    at = utcnow()
    _direct(engine, hook, ["ola"], at)
    ex = Executor(engine, delivery_config(None, backoff_seconds=30))
    due = []
    now = at
    for _ in range(3):
        ex.run_due(now=now, scan=False)
        (step,) = steps(engine)
        due.append(step.due_at)
        if step.status == "done":
            break
        assert ex.run_due(now=step.due_at - timedelta(seconds=1), scan=False).claimed == 0  # not before its time
        now = step.due_at
    assert [(d - a).total_seconds() for a, d in zip([at, *due], due[:2], strict=False)] == [30.0, 60.0]
    assert (step.status, len(receiver.requests)) == ("done", 3), step.outcome
    keys = {h["idempotency-key"] for h, _ in receiver.requests}
    assert len(keys) == 1  # every retry carries the same key
    for headers, body in receiver.requests:
        assert verify_webhook(b"hook-secret", headers["x-omnijourney-signature"], body)
        assert not verify_webhook(b"wrong-secret", headers["x-omnijourney-signature"], body)
        assert b'"cart.reminder"' in body
    assert len(timeline_events(engine, schedule.FAILED)) == 2
    assert len(timeline_events(engine, schedule.SENT)) == 1
    ex.close()  # its keep-alive connection first, so the receiver's handler thread ends
    receiver.stop()


def test_a_changed_definition_is_a_new_version_and_running_entries_keep_theirs(
    engine: sa.Engine, mail: SmtpServer
) -> None:
    at = utcnow()
    _direct(engine, WAITING, ["old"], at)
    changed = {**WAITING, "steps": [WAITING["steps"][0], {**WAITING["steps"][1], "send": {
        "template": "abandoned_cart", "subject": "Changed", "channels": ["email"]}}]}  # fmt: skip
    customer(engine, "new")
    process(engine, handlers([]))
    j2 = journey(**changed)
    with db.write(engine) as conn:
        assert schedule.sync_journeys(conn=conn, journeys=[j2], now=at) == {"cart_wait": 2}
        assert schedule.sync_journeys(conn=conn, journeys=[j2], now=at) == {"cart_wait": 2}  # same hash: same version
        schedule.enter(conn, journey=j2, version=2, profile_id=pid(engine, "new"), dedupe_key="n", context={}, now=at)
    ex = Executor(engine, delivery_config(mail))
    ex.run_due(now=at, scan=False)
    ex.run_due(now=at + timedelta(minutes=61), scan=False)
    assert sorted((m["To"], m["Subject"]) for m in mail.messages) == [
        ("new@example.com", "Changed"),
        ("old@example.com", "Still thinking?"),
    ]
    ex.close()


def test_builtin_templates_load_and_bad_definitions_are_refused(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from omnijourney.engage.journeys import JourneyConfigError, load_journeys

    builtins = {j.key: j for j in load_journeys(directory="", enabled="")}
    assert set(builtins) == {
        "abandoned_cart", "pickup_ready", "post_purchase_accessories", "csat_survey", "win_back", "welcome",
    }  # fmt: skip
    assert not any(j.enabled for j in builtins.values())  # shipped off: enabled by configuration
    assert {j.trigger.kind for j in builtins.values()} == {"inactivity", "event", "date"}
    assert all(j.enabled for j in load_journeys(directory="", enabled="all"))
    (tmp_path / "loop.yaml").write_text(
        "key: loop\nname: Loop\ntrigger: {event: {name: X}}\n"
        "steps:\n  - {key: a, wait: {minutes: 1}}\n  - {key: b, wait: {minutes: 1}, next: a}\n"
    )
    with pytest.raises(JourneyConfigError, match=r"(?s)loop\.yaml.*must come later"):
        load_journeys(directory=tmp_path, enabled="")
    (tmp_path / "loop.yaml").write_text("key: bad\nname: B\ntrigger: {event: {name: X}, date: {trait: b}}\nsteps: []\n")
    with pytest.raises(JourneyConfigError, match=r"loop\.yaml"):
        load_journeys(directory=tmp_path, enabled="")
    with pytest.raises(JourneyConfigError, match="unknown journeys"):
        load_journeys(directory="", enabled="nope")
