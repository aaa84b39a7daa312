"""Per-channel frequency caps hold across concurrent workers (a real aiosmtpd sink, SQLite and PostgreSQL).

The race: two workers each run a due send step for the same customer and channel. Both read "nothing
sent yet" before either has sent; a check-then-send at read time lets both through. A barrier in the
executor's `before_send` hook forces exactly that interleaving on every run, so the test does not
depend on luck."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import timedelta

import pytest
import sqlalchemy as sa

from omnijourney.engage import schedule
from omnijourney.engage.schedule import Executor, RunStats
from omnijourney.store import db
from omnijourney.store.base import utcnow
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
    assert sorted((s.status, s.outcome) for s in steps(engine)) == [
        ("done", "sent"),
        ("skipped", "suppressed: frequency cap"),
    ]
    assert (sum(r.sent for r in results), sum(r.skipped for r in results)) == (1, 1)
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
