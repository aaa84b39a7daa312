"""Journeys over HTTP against a live server: the unsubscribe link, open / click tracking, the API and
the console page. Messages go to a real SMTP server (aiosmtpd) on loopback."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import replace
from datetime import timedelta

import httpx
import pytest
import sqlalchemy as sa

from omnijourney.engage import schedule
from omnijourney.engage.schedule import Executor
from omnijourney.identity import service as identity
from omnijourney.pipeline import service as pipeline
from omnijourney.profiles import service as profiles
from omnijourney.store import db
from omnijourney.store.base import utcnow
from omnijourney.web import service as web_service
from tests.conftest import LiveServer, World, wait_for
from tests.engage.journey_helpers import SmtpServer, customer, journey, pid, start_smtp, steps, timeline_events
from tests.web.helpers import PASSWORD, login

pytestmark = pytest.mark.server

TWICE = {
    "key": "twice",
    "trigger": {"event": {"name": "Anything"}},
    "steps": [
        {"key": "hello", "send": {"template": "welcome", "subject": "Hello", "channels": ["email"]}},
        {"key": "pause", "wait": {"days": 1}},
        {"key": "again", "send": {"template": "welcome_picks", "subject": "Again", "channels": ["email"]}},
    ],
}


@pytest.fixture(scope="module")
def smtp() -> Iterator[SmtpServer]:
    server = start_smtp()
    yield server
    server.controller.stop()


def _processed(engine: sa.Engine) -> bool:
    with db.read(engine) as conn:
        return pipeline.lag(conn=conn) == 0


def test_unsubscribe_tracking_api_and_console(
    live_server: LiveServer, client: httpx.Client, world: World, engine: sa.Engine, smtp: SmtpServer
) -> None:
    smtp.clear()
    customer(engine, "uma")
    assert wait_for(lambda: _processed(engine), timeout=20)
    uma = pid(engine, "uma")
    # in the future, so the server's own runner (real clock) never finds these steps due
    at = utcnow() + timedelta(hours=2)
    j = journey(**TWICE)
    with db.write(engine) as conn:
        version = schedule.sync_journeys(conn=conn, journeys=[j], now=at)["twice"]
        schedule.enter(conn, journey=j, version=version, profile_id=uma, dedupe_key="t", context={}, now=at)
    config = replace(
        live_server.app.state.delivery_config,  # type: ignore[attr-defined]
        smtp_host="127.0.0.1",
        smtp_port=smtp.port,
        public_url=live_server.url,
        frequency_caps={},
    )
    ex = Executor(engine, config)
    ex.run_due(now=at, scan=False)
    ex.run_due(now=at, scan=False)  # the wait step
    (msg,) = smtp.messages
    html = msg.get_body(("html",)).get_content()
    unsubscribe = msg["List-Unsubscribe"].strip().strip("<>")  # the header may be folded
    pixel = re.search(r'src="([^"]+/e/o/[^"]+)"', html).group(1)  # type: ignore[union-attr]
    link = re.search(r'href="([^"]+/e/c/[^"]+)"', html).group(1)  # type: ignore[union-attr]

    # opens and clicks are recorded and the click redirects to the signed target only
    r = client.get(pixel)
    assert (r.status_code, r.headers["content-type"]) == (200, "image/gif")
    r = client.get(link, follow_redirects=False)
    assert r.status_code == 302 and r.headers["location"].startswith("https://shop.example")
    assert client.get(link[:-3] + "xyz", follow_redirects=False).status_code == 404

    # the link shows a confirmation page (no change on GET: mail scanners follow links); the POST withdraws
    page = client.get(unsubscribe)
    assert page.status_code == 200 and "<form method='post'" in page.text
    assert "default-src 'none'" in page.headers["content-security-policy"]
    assert client.get(unsubscribe[:-4] + "AAAA").status_code == 404
    done = client.post(unsubscribe)
    assert done.status_code == 200 and "Unsubscribed" in done.text

    def withdrawn() -> bool:
        with db.read(engine) as conn:
            current = profiles.consents(conn=conn, member_ids=identity.members(conn=conn, root=uma))
        return any((c["purpose"], c["channel"], c["status"]) == ("marketing", "email", "withdrawn") for c in current)

    assert wait_for(withdrawn, timeout=20)
    ex.run_due(now=at + timedelta(days=1, minutes=1), scan=False)
    assert len(smtp.messages) == 1  # the next scheduled send is suppressed
    again = next(s for s in steps(engine) if s.step_key == "again")
    assert (again.status, again.outcome) == ("skipped", "suppressed: no consent")
    for name in (schedule.OPENED, schedule.CLICKED):
        assert len(timeline_events(engine, name)) == 1, name
    client.post(unsubscribe)  # a second click appends nothing new
    _grant, withdrawal = timeline_events(engine, "Consent Updated")
    payload = withdrawal.payload if isinstance(withdrawal.payload, dict) else json.loads(withdrawal.payload)
    assert payload["properties"]["status"] == "withdrawn"
    assert payload["properties"]["evidence"]["via"] == "unsubscribe_link"
    ex.close()

    # the API: definitions with steps and statistics (marketer), refused to an agent
    marketer = {"Authorization": f"Bearer {world.marketer_token}"}
    body = client.get("/api/engage/journeys", headers=marketer).json()
    by_key = {x["key"]: x for x in body["journeys"]}
    assert {"abandoned_cart", "pickup_ready", "post_purchase_accessories", "csat_survey", "win_back", "welcome"} <= set(
        by_key
    )
    assert [s["kind"] for s in by_key["twice"]["steps"]] == ["send", "wait", "send"]
    st = client.get("/api/engage/journeys/twice/stats", headers=marketer).json()
    assert (st["entered"], st["sent"], st["opened"], st["clicked"]) == (1, 1, 1, 1)
    agent = {"Authorization": f"Bearer {world.agent_token}"}
    assert client.get("/api/engage/journeys", headers=agent).status_code == 403
    assert client.get("/api/engage/journeys/nope/stats", headers=marketer).status_code == 404

    # the console page (marketer; an agent is refused)
    with db.write(engine) as conn:
        for name, role in (("mark", "marketer"), ("agnes", "agent")):
            web_service.create_user(
                conn=conn, username=name, role=role, password=PASSWORD, home_location=None, now=utcnow()
            )
    with httpx.Client(base_url=live_server.url) as browser:
        assert login(browser, "mark").status_code == 303
        r = browser.get("/console/journeys")
        assert r.status_code == 200 and 'data-journey="abandoned_cart"' in r.text and "Welcome" in r.text
        assert "script-src 'self'" in r.headers["content-security-policy"]
    with httpx.Client(base_url=live_server.url) as browser:
        assert login(browser, "agnes").status_code == 303
        assert browser.get("/console/journeys").status_code == 403
