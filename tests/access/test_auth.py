"""Security by default: credentials everywhere but ingestion and health; roles enforced on the server."""

from __future__ import annotations

import re

import httpx
import pytest
import sqlalchemy as sa

from omnijourney.store import db
from tests.conftest import World

PROTECTED = [
    ("GET", "/api/sources"),
    ("POST", "/api/sources"),
    ("POST", "/api/tokens"),
    ("GET", "/api/events"),
    ("GET", "/api/dead-letters"),
    ("GET", "/api/pipeline/status"),
    ("GET", "/api/me"),
    ("POST", "/api/sources/1/disable"),
]


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_public_routes_need_no_credentials(client: httpx.Client) -> None:
    assert client.get("/health").status_code == 200
    ready = client.get("/ready")
    assert ready.status_code == 200 and ready.json()["database"] == "ok"


@pytest.mark.parametrize(("method", "path"), PROTECTED)
def test_every_api_route_requires_a_token(method: str, path: str, client: httpx.Client, world: World) -> None:
    r = client.request(method, path, json={})
    assert r.status_code == 401 and r.json()["code"] == "unauthorized"
    r = client.request(method, path, json={}, headers=bearer("oj_not-a-real-token"))
    assert r.status_code == 401
    r = client.request(method, path, json={}, headers={"Authorization": f"Basic {world.admin_token}"})
    assert r.status_code == 401


def test_every_route_in_the_app_is_public_or_protected(client: httpx.Client, live_server) -> None:
    """A new route cannot slip in unprotected: only the tracking API and health are open."""
    spec = client.get("/openapi.json").json()
    open_paths = []
    for path, ops in spec["paths"].items():
        for method in ops:
            if path.startswith("/v1/") or path in ("/health", "/ready"):
                continue
            r = client.request(method.upper(), re.sub(r"\{[^}]+\}", "1", path))
            if r.status_code != 401:
                open_paths.append((method, path, r.status_code))
    assert open_paths == []


def test_roles_are_enforced(client: httpx.Client, world: World) -> None:
    body = {"name": "app", "channel": "app"}
    assert client.post("/api/sources", json=body, headers=bearer(world.marketer_token)).status_code == 403
    assert client.post("/api/sources", json=body, headers=bearer(world.agent_token)).status_code == 403
    assert client.post("/api/tokens", json={"role": "admin"}, headers=bearer(world.agent_token)).status_code == 403
    assert client.get("/api/events", headers=bearer(world.agent_token)).status_code == 403
    assert client.get("/api/events", headers=bearer(world.marketer_token)).status_code == 200
    created = client.post("/api/sources", json=body, headers=bearer(world.admin_token))
    assert created.status_code == 201 and created.json()["write_key"]
    me = client.get("/api/me", headers=bearer(world.agent_token)).json()
    assert me["role"] == "agent"


def test_admin_creates_tokens_and_invalid_requests_are_400(client: httpx.Client, world: World) -> None:
    r = client.post("/api/tokens", json={"role": "store_staff"}, headers=bearer(world.admin_token))
    assert r.status_code == 201
    staff = r.json()["token"]
    assert client.get("/api/me", headers=bearer(staff)).json()["role"] == "store_staff"
    bad = client.post("/api/tokens", json={"role": "superuser"}, headers=bearer(world.admin_token))
    assert bad.status_code == 400 and "unknown role" in bad.json()["message"]
    dup = client.post("/api/sources", json={"name": "web", "channel": "web"}, headers=bearer(world.admin_token))
    assert dup.status_code == 400
    wrong = client.post("/api/sources", json={"name": "x", "channel": "fax"}, headers=bearer(world.admin_token))
    assert wrong.status_code == 400
    missing = client.post("/api/sources", json={"channel": "web"}, headers=bearer(world.admin_token))
    assert missing.status_code == 422 and missing.json()["code"] == "invalid_request"


def test_tokens_are_stored_only_as_hashes(engine: sa.Engine, world: World) -> None:
    with db.read(engine) as conn:
        hashes = [r[0] for r in conn.execute(sa.text("SELECT token_hash FROM api_tokens"))]
    assert hashes and all(world.admin_token not in h and len(h) == 64 for h in hashes)


def test_disabled_source_stops_ingesting(client: httpx.Client, world: World) -> None:
    import base64

    auth = {"Authorization": "Basic " + base64.b64encode(f"{world.web_key}:".encode()).decode()}
    assert client.post("/v1/track", json={"userId": "u", "event": "E"}, headers=auth).status_code == 200
    r = client.post(f"/api/sources/{world.web_source_id}/disable", headers=bearer(world.admin_token))
    assert r.status_code == 204
    assert client.post("/v1/track", json={"userId": "u", "event": "E"}, headers=auth).status_code == 401


def test_revoked_token_is_refused_at_once(client: httpx.Client, world: World, engine: sa.Engine) -> None:
    staff = client.post("/api/tokens", json={"role": "store_staff"}, headers=bearer(world.admin_token)).json()["token"]
    assert client.get("/api/me", headers=bearer(staff)).status_code == 200  # now cached
    with db.read(engine) as conn:
        token_id = conn.execute(sa.text("SELECT max(id) FROM api_tokens")).scalar_one()
    assert client.post(f"/api/tokens/{token_id}/revoke", headers=bearer(world.agent_token)).status_code == 403
    assert client.post(f"/api/tokens/{token_id}/revoke", headers=bearer(world.admin_token)).status_code == 204
    assert client.get("/api/me", headers=bearer(staff)).status_code == 401
    again = client.post(f"/api/tokens/{token_id}/revoke", headers=bearer(world.admin_token))
    assert again.status_code == 404 and again.json()["code"] == "not_found"


def test_token_cache_forgets_a_token_revoked_elsewhere_within_its_ttl(engine: sa.Engine, world: World) -> None:
    """Another API node revoked it: this node's cache stops accepting it once the entry expires."""
    from omnijourney.access import service as access
    from omnijourney.access.cache import TokenCache

    now = [1000.0]
    cache = TokenCache(engine, ttl=5.0, clock=lambda: now[0])
    principal = cache.get(world.marketer_token)
    assert principal is not None and principal.role == "marketer"
    assert cache.peek(world.marketer_token) == principal
    with db.write(engine) as conn:
        assert access.revoke_token(conn=conn, token_id=principal.token_id)
    now[0] += 4.9
    assert cache.get(world.marketer_token) == principal  # still within the TTL
    now[0] += 0.2
    assert cache.peek(world.marketer_token) is None
    assert cache.get(world.marketer_token) is None
    assert cache.get("oj_never-issued") is None and cache.peek("oj_never-issued") is None
