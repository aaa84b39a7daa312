"""The tracking routes when things fail for real: CORS headers on every answer, 503 + Retry-After when the
database cannot be reached (a browser reads a response without CORS headers as a network failure; an SDK keeps
events it is answered 503 for and retries them)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from fastapi import Request

from omnijourney.app import create_app
from omnijourney.config import Settings
from tests.conftest import LiveServer, World, start_server

ORIGIN = "https://shop.example"


@pytest.fixture
def server(settings: Settings, engine: sa.Engine, world: World) -> Iterator[LiveServer]:
    app = create_app(replace(settings, run_pipeline=False), engine=engine, migrate_db=False)

    async def broken(request: Request) -> None:
        raise RuntimeError("a bug in a tracking route")

    app.add_api_route("/v1/broken", broken, methods=["POST"])  # a real route of the real app, failing
    srv = start_server(app, engine)
    yield srv
    srv.stop()


def break_database(request: pytest.FixtureRequest, database_url: str, engine: sa.Engine) -> None:
    """Make the database unreachable: the SQLite file replaced by a directory, the PostgreSQL database dropped."""
    url = sa.engine.make_url(database_url)
    if url.get_backend_name() == "sqlite":
        engine.dispose()
        path = Path(url.database or "")
        for suffix in ("", "-wal", "-shm"):
            part = Path(f"{path}{suffix}")
            if part.exists():
                part.rename(f"{part}.gone")
        path.mkdir()
        return
    admin = sa.create_engine(request.getfixturevalue("pg_admin_url"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f"DROP DATABASE {url.database} WITH (FORCE)")
    admin.dispose()


def assert_unavailable(r: httpx.Response) -> None:
    assert r.status_code == 503, r.text
    assert int(r.headers["retry-after"]) > 0
    assert r.headers["access-control-allow-origin"] == ORIGIN
    assert r.json()["code"] == "storage_unavailable"


def test_cors_on_a_500_and_503_with_retry_after_when_the_database_is_down(
    request: pytest.FixtureRequest, server: LiveServer, world: World, database_url: str, engine: sa.Engine
) -> None:
    with httpx.Client(base_url=server.url, timeout=30) as client:
        # a bug: 500, with CORS headers (added inside Starlette's ServerErrorMiddleware, they were missing)
        r = client.post("/v1/broken", json={}, headers={"Origin": ORIGIN})
        assert r.status_code == 500
        assert r.headers["access-control-allow-origin"] == ORIGIN
        assert r.json()["code"] == "internal_error"
        # warm: the web source's key and the allowed origins are cached
        r = client.post(
            "/v1/t", json={"writeKey": world.web_key, "userId": "u", "event": "E"}, headers={"Origin": ORIGIN}
        )
        assert r.status_code == 200, r.text
        break_database(request, database_url, engine)

        # a write key not cached: the lookup cannot reach the database
        assert_unavailable(
            client.post(
                "/v1/t", json={"writeKey": world.pos_key, "userId": "u", "event": "E"}, headers={"Origin": ORIGIN}
            )
        )
        assert_unavailable(client.get(f"/v1/projects/{world.pos_key}/settings", headers={"Origin": ORIGIN}))
        # a cached key: the write itself fails
        assert_unavailable(
            client.post(
                "/v1/t", json={"writeKey": world.web_key, "userId": "u", "event": "E"}, headers={"Origin": ORIGIN}
            )
        )
        # the allowed origins expire from the cache: a preflight cannot be answered yet, a request is still answered
        server.app.state.sources.invalidate()  # type: ignore[attr-defined]
        preflight = client.options("/v1/t", headers={"Origin": ORIGIN, "Access-Control-Request-Method": "POST"})
        assert_unavailable(preflight)
        assert_unavailable(
            client.post(
                "/v1/t", json={"writeKey": world.web_key, "userId": "u", "event": "E"}, headers={"Origin": ORIGIN}
            )
        )
        assert client.get("/health").status_code == 200
