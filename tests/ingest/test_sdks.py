"""The official SDKs, unchanged, as real clients of a running server."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator

import pytest
import sqlalchemy as sa
from rudderstack.analytics.client import Client as RudderClient
from segment.analytics.client import Client as SegmentClient
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from omnijourney.app import create_app
from omnijourney.store import db
from tests.conftest import LiveServer, World, count, start_server

pytestmark = pytest.mark.server


class FailFirstBatchAfterStoring:
    """Lets the first batch request be fully processed (committed), then answers 503 instead.

    This is the nastiest retry case: the data is stored but the client believes it was not,
    so it sends the same batch again.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.failed = 0
        self.batch_requests = 0
        self._lock = threading.Lock()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != "/v1/batch":
            await self.app(scope, receive, send)
            return
        with self._lock:
            self.batch_requests += 1
            fail = self.failed == 0
            if fail:
                self.failed = 1
        if not fail:
            await self.app(scope, receive, send)
            return
        status: list[int] = []

        async def swallow(message: Message) -> None:
            if message["type"] == "http.response.start":
                status.append(message["status"])

        await self.app(scope, receive, swallow)
        assert status == [200]
        await send({"type": "http.response.start", "status": 503, "headers": [(b"content-type", b"application/json")]})
        await send(
            {"type": "http.response.body", "body": b'{"success":false,"code":"unavailable","message":"try again"}'}
        )


class StripAuthorization:
    """Removes the Authorization header, so only the body's writeKey can identify the source."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            scope = {**scope, "headers": [(k, v) for k, v in scope["headers"] if k != b"authorization"]}
        await self.app(scope, receive, send)


@pytest.fixture
def server_factory(settings, engine) -> Iterator[Callable[..., LiveServer]]:
    servers: list[LiveServer] = []

    def make(wrapper: Callable[[ASGIApp], ASGIApp] | None = None) -> LiveServer:
        app = create_app(settings, engine=engine, migrate_db=False)
        wrapped = wrapper(app) if wrapper else None
        srv = start_server(app, engine, wrap=wrapped)
        srv.wrapped = wrapped  # type: ignore[attr-defined]
        servers.append(srv)
        return srv

    yield make
    for s in servers:
        s.stop()


def send_journey(client, n: int) -> None:  # type: ignore[no-untyped-def]
    client.identify("user-1", {"email": "jana@example.com", "name": "Jana"}, anonymous_id="anon-1")
    for i in range(n):
        client.track("user-1", "Product Viewed", {"product_id": f"p{i}", "price": 10.5 + i})
    client.page("user-1", "shop", "Home", {"url": "https://shop.example/"})
    client.screen("user-1", "app", "Cart")
    client.group("user-1", "household-1", {"name": "Novák family"})
    client.alias("anon-1", "user-1")
    client.track(
        "user-1",
        "Order Completed",
        {"order_id": "o-1", "revenue": 99.0, "currency": "CZK", "products": [{"sku": "S1", "quantity": 1}]},
    )
    client.flush()


def stored_message_ids(engine: sa.Engine) -> list[str]:
    with db.read(engine) as conn:
        return [r[0] for r in conn.execute(sa.text("SELECT message_id FROM events ORDER BY id"))]


def test_segment_sdk_every_event_stored_exactly_once(server_factory, world: World, engine) -> None:
    srv = server_factory()
    errors: list[Exception] = []
    client = SegmentClient(world.web_key, host=srv.url, on_error=lambda e, b: errors.append(e), upload_size=7)
    send_journey(client, 40)
    client.shutdown()
    assert errors == []
    ids = stored_message_ids(engine)
    assert len(ids) == 46 == len(set(ids))
    with db.read(engine) as conn:
        row = conn.execute(
            sa.text("SELECT revenue, currency, order_id FROM events WHERE event='Order Completed'")
        ).one()
    assert tuple(row) == (99.0, "CZK", "o-1")


def test_segment_sdk_with_write_key_only_in_the_body(server_factory, world: World, engine) -> None:
    srv = server_factory(StripAuthorization)
    errors: list[Exception] = []
    client = SegmentClient(world.web_key, host=srv.url, on_error=lambda e, b: errors.append(e))
    send_journey(client, 3)
    client.shutdown()
    assert errors == []
    assert count(engine, "events") == 9


def test_rudderstack_sdk_gzip_basic_auth_every_event_stored_exactly_once(server_factory, world: World, engine) -> None:
    srv = server_factory()
    errors: list[Exception] = []
    client = RudderClient(
        world.pos_key, host=srv.url, gzip=True, on_error=lambda e, b: errors.append(e), upload_size=10
    )
    send_journey(client, 40)
    client.shutdown()
    assert errors == []
    ids = stored_message_ids(engine)
    assert len(ids) == 46 == len(set(ids))
    with db.read(engine) as conn:
        channels = {r[0] for r in conn.execute(sa.text("SELECT DISTINCT channel FROM events"))}
    assert channels == {"store"}


@pytest.mark.parametrize("sdk", ["segment", "rudderstack"])
def test_forced_retry_after_commit_stores_no_duplicate(sdk: str, server_factory, world: World, engine) -> None:
    srv = server_factory(FailFirstBatchAfterStoring)
    errors: list[Exception] = []
    cls = SegmentClient if sdk == "segment" else RudderClient
    client = cls(world.web_key, host=srv.url, on_error=lambda e, b: errors.append(e), upload_size=100)
    send_journey(client, 10)
    client.shutdown()
    wrapper = srv.wrapped  # type: ignore[attr-defined]
    assert wrapper.failed == 1 and wrapper.batch_requests >= 2, "the SDK did not retry"
    assert errors == []
    ids = stored_message_ids(engine)
    assert len(ids) == 16 == len(set(ids))
