"""The demo's journeys: the built-in templates switched on, e-mail delivered to a local SMTP sink.

A real deployment points `OMNIJOURNEY_SMTP_HOST` at its relay; the demo has none, so unless that is
set it starts an SMTP server of its own on loopback (aiosmtpd) that stores every message in an mbox
file in the data directory (`demo-mailbox`), and points the server at it — so the journeys really
send (rendered, tracked, with unsubscribe links) and the mails can be read. Without any SMTP an
e-mail step is recorded as a failure (`delivery failed: no SMTP configured`), never dropped.

Steps: `prepare` (before the server starts: the environment the server's journey runner reads,
including the demo's own journey directory `demo/journey_defs` — a click & collect order asks its
pickup store for a task), then after the world is loaded `run`: the e-mail platform's marketing
consents of the customers who opted in are sent as `Consent Updated` events (the world itself has no
consent events), and the due steps are run once (the server's runner keeps running them afterwards);
`run` again after today's click & collect orders creates the stores' tasks (`store_tasks`).
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from omnijourney.config import ENV_PREFIX
from omnijourney.demo.world import DemoWorld
from omnijourney.engage import journeys, schedule
from omnijourney.engage.delivery import DeliveryConfig
from omnijourney.engage.schedule import Executor, RunStats
from omnijourney.store import db
from omnijourney.store.base import utcnow

_ENV = ("JOURNEYS_ENABLED", "JOURNEYS_DIR", "PUBLIC_URL", "SMTP_HOST", "SMTP_PORT")
#: the demo's own journeys (as a deployment adds its own through OMNIJOURNEY_JOURNEYS_DIR)
DEMO_JOURNEYS_DIR = Path(__file__).parent / "journey_defs"


@dataclass
class DemoMail:
    controller: Any | None
    mailbox: Path | None
    #: the environment before `prepare`, restored by `stop` (the demo may run inside another program)
    saved: dict[str, str | None] = field(default_factory=dict)

    def stop(self) -> None:
        if self.controller is not None:
            self.controller.stop()
        for name, value in self.saved.items():
            if value is None:
                os.environ.pop(ENV_PREFIX + name, None)
            else:
                os.environ[ENV_PREFIX + name] = value
        journeys.default_journeys.cache_clear()


def prepare(data_dir: Path, public_url: str) -> DemoMail:
    """Switch the built-in journeys on and give them an SMTP server (unless configured already)."""
    saved = {name: os.environ.get(ENV_PREFIX + name) for name in _ENV}
    os.environ.setdefault(ENV_PREFIX + "JOURNEYS_ENABLED", "all")
    os.environ.setdefault(ENV_PREFIX + "JOURNEYS_DIR", str(DEMO_JOURNEYS_DIR))
    os.environ.setdefault(ENV_PREFIX + "PUBLIC_URL", public_url)
    journeys.default_journeys.cache_clear()
    if os.environ.get(ENV_PREFIX + "SMTP_HOST"):
        return DemoMail(None, None, saved)
    from aiosmtpd.controller import Controller
    from aiosmtpd.handlers import Mailbox

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    mailbox = data_dir / "demo-mailbox"
    controller = Controller(Mailbox(str(mailbox)), hostname="127.0.0.1", port=port)
    controller.start()
    os.environ[ENV_PREFIX + "SMTP_HOST"] = "127.0.0.1"
    os.environ[ENV_PREFIX + "SMTP_PORT"] = str(port)
    return DemoMail(controller, mailbox, saved)


def import_consents(engine: sa.Engine, world: DemoWorld) -> int:
    """The e-mail platform's consent export: marketing e-mail `granted` for every opted-in customer
    known by user id, recorded in the consent ledger (as `POST /api/profiles/{id}/consents` does —
    no events, so the demo's event counts stay the world's)."""
    from omnijourney.identity.models import IdentityLink
    from omnijourney.profiles import service as profiles

    links = IdentityLink.__table__
    wanted = {c.user_id for c in world.customers if c.email_opt_in}
    now = utcnow()
    n = 0
    with db.write(engine) as conn:
        found = conn.execute(sa.select(links.c.value, links.c.profile_id).where(links.c.id_type == "user_id")).all()
        for value, profile_id in found:
            if value in wanted:
                profiles.record_consent(conn=conn, profile_id=profile_id, purpose="marketing", channel="email",
                                        status="granted", recorded_at=now, actor="demo:email-platform",
                                        evidence={"form": "signup"})  # fmt: skip
                n += 1
    return n


@dataclass
class JourneySummary:
    run: RunStats = field(default_factory=RunStats)
    journeys: list[dict[str, Any]] = field(default_factory=list)
    mailbox: Path | None = None


def run(engine: sa.Engine, data_dir: Path, mail: DemoMail) -> JourneySummary:
    """Run what is due now (time-triggered entries too) and read the statistics."""
    executor = Executor(engine, DeliveryConfig.from_env(data_dir), journeys=journeys.default_journeys())
    out = JourneySummary(mailbox=mail.mailbox)
    try:
        scan = True
        while True:
            s = executor.run_due(now=utcnow(), limit=500, scan=scan)
            scan = False
            out.run.add(s)
            if s.claimed == 0:
                break
    finally:
        executor.close()
    with db.read(engine) as conn:
        out.journeys = schedule.overview(conn)
    return out


def store_tasks(engine: sa.Engine) -> dict[str, list[dict[str, Any]]]:
    """Open store-staff tasks by store (what `/console/store` shows each store's staff)."""
    from omnijourney.engage import tasks

    with db.read(engine) as conn:
        stores = conn.execute(
            sa.select(schedule.TASKS.c.location)
            .where(schedule.TASKS.c.status == "open", schedule.TASKS.c.location.is_not(None))
            .distinct()
        ).scalars()
        return {code: tasks.open_tasks(conn=conn, location=code) for code in sorted(stores)}


def describe(s: JourneySummary) -> str:
    parts = [
        f"{j['key']} ({j['stats']['entered']} entered, {j['stats']['control']} control, {j['stats']['sent']} sent)"
        for j in s.journeys
        if j["active"]
    ]
    lines = [
        f"journeys: {s.run.entered} entered by time triggers, {s.run.claimed} steps run now: {s.run.sent} sent, "
        f"{s.run.skipped} suppressed (consent / caps), {s.run.failed} failed, {s.run.deferred} deferred",
        "  " + "; ".join(parts),
    ]
    if s.mailbox is not None:
        lines.append(f"  e-mails delivered to the demo SMTP sink, stored in {s.mailbox} (mbox)")
    return "\n".join(lines)
