"""Per-channel frequency caps hold across concurrent workers (a real aiosmtpd sink, SQLite and PostgreSQL).

The race: two workers each run a due send step for the same customer and channel. Both read "nothing
sent yet" before either has sent; a check-then-send at read time lets both through. A barrier in the
executor's `before_send` hook forces exactly that interleaving on every run, so the test does not
depend on luck."""

from __future__ import annotations

import email
import email.policy
import threading
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from aiosmtpd.controller import Controller

from omnijourney.engage import schedule
from omnijourney.engage.schedule import Executor, RunStats
from omnijourney.store import db
from omnijourney.store.base import utcnow
from tests.conftest import free_port
from tests.engage.journey_helpers import (
    SmtpServer,
    customer,
    delivery_config,
    handlers,
    journey,
    pid,
    process,
    start_smtp,
    steps,
)


def _one_mail(key: str, subject: str) -> dict:  # type: ignore[type-arg]
    return {
        "key": key,
        "trigger": {"event": {"name": "Anything"}},
        "steps": [{"key": "hello", "send": {"template": "welcome", "subject": subject, "channels": ["email"]}}],
    }


@pytest.fixture(scope="module")
def mail() -> Iterator[SmtpServer]:
    server = start_smtp()
    yield server
    server.controller.stop()


def test_two_workers_sending_to_one_customer_never_exceed_the_cap(engine: sa.Engine, mail: SmtpServer) -> None:
    mail.clear()
    at = utcnow()
    customer(engine, "pat")
    process(engine, handlers([]))
    p = pid(engine, "pat")
    defs = [journey(**_one_mail("first_news", "First")), journey(**_one_mail("second_news", "Second"))]
    with db.write(engine) as conn:
        versions = schedule.sync_journeys(conn=conn, journeys=defs, now=at)
        for j in defs:
            schedule.enter(conn, journey=j, version=versions[j.key], profile_id=p, dedupe_key=f"t:{p}", context={},
                           now=at)  # fmt: skip
    both_decided = threading.Barrier(2, timeout=20)
    config = delivery_config(mail, frequency_caps={"email": (1, 7.0)})
    workers = [Executor(engine, config, before_send=lambda _step: both_decided.wait()) for _ in range(2)]
    results: list[RunStats] = []
    errors: list[BaseException] = []

    def work(ex: Executor) -> None:
        try:
            results.append(ex.run_due(now=at, limit=1, scan=False))  # one step each: both run at once
        except BaseException as exc:  # reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(w,)) for w in workers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for w in workers:
        w.close()
    assert errors == []
    assert [m["To"] for m in mail.messages] == ["pat@example.com"]  # the cap is 1: exactly one e-mail
    assert sum(r.sent for r in results) == 1
    # The loser decided again after the winner's hold: skipped if the winner's message was recorded
    # by then, else deferred (the winner's send was still in flight and might have failed) and
    # skipped when it looks again.
    loser = next(s for s in steps(engine) if s.outcome != "sent")
    assert (loser.status, loser.outcome) in {
        ("skipped", "suppressed: frequency cap"),
        ("scheduled", "deferred: " + schedule.CAP_SLOT_HELD),
    }
    recheck = Executor(engine, config)
    recheck.run_due(now=at + timedelta(seconds=config.cap_recheck_seconds + 1), scan=False)
    recheck.close()
    assert sorted((s.status, s.outcome) for s in steps(engine)) == [
        ("done", "sent"),
        ("skipped", "suppressed: frequency cap"),
    ]
    with db.read(engine) as conn:
        sent = conn.execute(sa.select(sa.func.count()).select_from(schedule.MESSAGES)).scalar_one()
        held = conn.execute(sa.select(sa.func.count()).select_from(schedule.HOLDS)).scalar_one()
    assert (sent, held) == (1, 0)  # the winner's hold became its message; the loser holds nothing
    # the cap counts the sent message from now on, for a third step too
    later = at + timedelta(minutes=5)
    third = journey(**_one_mail("third_news", "Third"))
    with db.write(engine) as conn:
        v = schedule.sync_journeys(conn=conn, journeys=[*defs, third], now=later)[third.key]
        schedule.enter(conn, journey=third, version=v, profile_id=p, dedupe_key=f"t:{p}", context={}, now=later)
    solo = Executor(engine, config)
    assert solo.run_due(now=later, scan=False).skipped == 1
    solo.close()
    assert len(mail.messages) == 1


class _BouncingSink:
    """An SMTP sink that rejects (554, permanent) messages with the subject "Bounce", running
    `while_in_flight` before it answers: the other step is decided while the bounced one holds
    the cap slot and its outcome is not known yet."""

    def __init__(self) -> None:
        self.accepted: list[email.message.EmailMessage] = []
        self.while_in_flight: Callable[[], None] | None = None

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        msg = email.message_from_bytes(envelope.content, policy=email.policy.default)
        if msg["Subject"] == "Bounce":
            if self.while_in_flight is not None:
                worker = threading.Thread(target=self.while_in_flight)
                worker.start()
                worker.join(30)
            return "554 5.7.1 rejected"
        self.accepted.append(msg)  # type: ignore[arg-type]
        return "250 OK"


def test_a_send_waiting_for_a_held_slot_goes_out_when_the_holder_fails(engine: sa.Engine) -> None:
    """The last slot is held by a send in flight; that send then bounces for good. The other step
    must not be skipped for a cap that was never reached: it waits and goes out on its next look."""
    sink = _BouncingSink()
    controller = Controller(sink, hostname="127.0.0.1", port=free_port())
    controller.start()
    try:
        at = utcnow()
        customer(engine, "quinn")
        process(engine, handlers([]))
        p = pid(engine, "quinn")
        defs = [journey(**_one_mail("bounced_news", "Bounce")), journey(**_one_mail("later_news", "Second"))]
        with db.write(engine) as conn:
            versions = schedule.sync_journeys(conn=conn, journeys=defs, now=at)
            for j in defs:  # entered in this order: the bounced step is claimed first
                schedule.enter(conn, journey=j, version=versions[j.key], profile_id=p, dedupe_key=f"t:{p}",
                               context={}, now=at)  # fmt: skip
        config = delivery_config(None, smtp_host="127.0.0.1", smtp_port=int(controller.port),
                                 frequency_caps={"email": (1, 7.0)})  # fmt: skip
        other = Executor(engine, config)
        decided: list[RunStats] = []
        sink.while_in_flight = lambda: decided.append(other.run_due(now=at, limit=1, scan=False))
        first = Executor(engine, config)
        assert first.run_due(now=at, limit=1, scan=False).failed == 1
        assert [(r.claimed, r.deferred, r.skipped) for r in decided] == [(1, 1, 0)]
        by_key = {s.journey_key: s for s in steps(engine)}
        assert (by_key["bounced_news"].status, by_key["later_news"].status) == ("failed", "scheduled")
        assert by_key["later_news"].outcome == "deferred: " + schedule.CAP_SLOT_HELD
        later = other.run_due(now=at + timedelta(seconds=config.cap_recheck_seconds + 1), scan=False)
        assert later.sent == 1
        assert [m["Subject"] for m in sink.accepted] == ["Second"]  # one e-mail reached the customer
        first.close()
        other.close()
    finally:
        controller.stop()
