"""Real delivery endpoints on loopback for journey tests: an aiosmtpd SMTP server and an HTTP webhook
receiver, plus helpers to put customers, consents and carts into the log."""

from __future__ import annotations

import email
import email.policy
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import sqlalchemy as sa
from aiosmtpd.controller import Controller

from omnijourney.engage import schedule
from omnijourney.engage.delivery import DeliveryConfig
from omnijourney.engage.journeys import JourneyDef
from omnijourney.pipeline import service as pipeline
from omnijourney.pipeline.worker import run_until_idle
from omnijourney.store import db
from omnijourney.store.base import utcnow
from tests.conftest import free_port
from tests.identity.helpers import append, profile_of, source


class _Sink:
    def __init__(self) -> None:
        self.messages: list[email.message.EmailMessage] = []
        self.lock = threading.Lock()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        msg = email.message_from_bytes(envelope.content, policy=email.policy.default)
        with self.lock:
            self.messages.append(msg)  # type: ignore[arg-type]
        return "250 OK"


@dataclass
class SmtpServer:
    controller: Controller
    sink: _Sink

    @property
    def port(self) -> int:
        return int(self.controller.port)

    @property
    def messages(self) -> list[email.message.EmailMessage]:
        with self.sink.lock:
            return list(self.sink.messages)

    def clear(self) -> None:
        with self.sink.lock:
            self.sink.messages.clear()


def start_smtp() -> SmtpServer:
    sink = _Sink()
    controller = Controller(sink, hostname="127.0.0.1", port=free_port())
    controller.start()
    return SmtpServer(controller, sink)


@dataclass
class Receiver:
    """A local webhook receiver: answers the next `fail` requests with 500, then 200; keeps every request."""

    server: ThreadingHTTPServer
    requests: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    fail: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_port}/hook"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def start_receiver() -> Receiver:
    holder: list[Receiver] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            rec = holder[0]
            rec.requests.append(({k.lower(): v for k, v in self.headers.items()}, body))
            status = 500 if rec.fail > 0 else 200
            rec.fail -= 1
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    holder.append(Receiver(server))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return holder[0]


def delivery_config(smtp: SmtpServer | None, **kw: Any) -> DeliveryConfig:
    base: dict[str, Any] = {
        "secret": b"test-secret",
        "public_url": "http://127.0.0.1:9",
        "smtp_host": "127.0.0.1" if smtp else None,
        "smtp_port": smtp.port if smtp else 25,
        "webhook_secret": b"hook-secret",
        "backoff_seconds": 30.0,
        "frequency_caps": {},
    }
    base.update(kw)
    return DeliveryConfig(**base)


def journey(**kw: Any) -> JourneyDef:
    return JourneyDef.model_validate({"enabled": True, "name": kw.get("key", "test"), **kw})


def handlers(journeys: list[JourneyDef]) -> list[Any]:
    from omnijourney.engage.journey_handler import JourneyHandler

    hs = pipeline.default_handlers()
    return [h for h in hs if h.name != "journeys"] + [JourneyHandler(journeys)]


def process(engine: sa.Engine, hs: list[Any]) -> None:
    run_until_idle(engine, hs)


def customer(
    engine: sa.Engine, user: str, *, consent: str | None = "granted", traits: dict[str, Any] | None = None
) -> int:
    """A customer with an e-mail address and (optionally) a marketing e-mail consent event."""
    web = source(engine, "web", "web", False)
    msgs: list[dict[str, Any]] = [
        {
            "type": "identify",
            "userId": user,
            "traits": {"email": f"{user}@example.com", "firstName": user.title(), **(traits or {})},
        }
    ]
    if consent:
        msgs.append(
            {
                "type": "track",
                "userId": user,
                "event": "Consent Updated",
                "properties": {"purpose": "marketing", "channel": "email", "status": consent},
            }
        )
    append(engine, web, "web", msgs)
    return 0


def add_to_cart(engine: sa.Engine, user: str, cart: str, at: datetime) -> None:
    web = source(engine, "web", "web", False)
    append(
        engine,
        web,
        "web",
        [
            {
                "type": "track",
                "userId": user,
                "event": "Product Added",
                "timestamp": at.isoformat(),
                "properties": {"cart_id": cart, "sku": "SHOE-42", "quantity": 1, "price": 2490},
            }
        ],
    )


def track(engine: sa.Engine, user: str, event: str, properties: dict[str, Any] | None = None) -> None:
    web = source(engine, "web", "web", False)
    msg = {
        "type": "track",
        "userId": user,
        "event": event,
        "properties": properties or {},
        "timestamp": utcnow().isoformat(),
    }
    append(engine, web, "web", [msg])


def pid(engine: sa.Engine, user: str) -> int:
    p = profile_of(engine, "user_id", user)
    assert p is not None
    return p


def steps(engine: sa.Engine) -> list[Any]:
    with db.read(engine) as conn:
        return list(conn.execute(sa.select(schedule.STEPS).order_by(schedule.STEPS.c.id)))


def entries(engine: sa.Engine) -> list[Any]:
    with db.read(engine) as conn:
        return list(conn.execute(sa.select(schedule.ENTRIES).order_by(schedule.ENTRIES.c.id)))


def timeline_events(engine: sa.Engine, name: str) -> list[Any]:
    with db.read(engine) as conn:
        return list(
            conn.execute(sa.text("SELECT id, event, payload FROM events WHERE event = :n ORDER BY id"), {"n": name})
        )


def later(minutes: float) -> datetime:
    return utcnow() + timedelta(minutes=minutes)


def iter_ids(rows: list[Any]) -> Iterator[int]:
    return (r.id for r in rows)
