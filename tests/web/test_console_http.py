"""The staff console over HTTP: login, sessions, CSRF, throttling, roles on every route, and the pages."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from fastapi import APIRouter, FastAPI
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient

from omnijourney.app import create_app
from omnijourney.engage import service as engage
from omnijourney.engage.schemas import SegmentIn
from omnijourney.store import db
from omnijourney.store.base import utcnow
from omnijourney.web import service
from omnijourney.web import views as web_views
from tests.commerce.helpers import PRODUCTS, bearer
from tests.conftest import LiveServer, World, wait_for
from tests.web.helpers import (
    CARD,
    EMAIL,
    PASSWORD,
    PHONE,
    STORE,
    USERS,
    Shop,
    build_shop,
    create_users,
    csrf_of,
    login,
    processed,
)

pytestmark = pytest.mark.server


@pytest.fixture
def shop(live_server: LiveServer, client: httpx.Client, world: World, engine: sa.Engine) -> Shop:
    return build_shop(client, world, engine)


@pytest.fixture
def browser_for(live_server: LiveServer) -> Iterator:
    """Logged-in clients (one cookie jar each) by role."""
    opened: list[httpx.Client] = []

    def make(role: str | None) -> httpx.Client:
        c = httpx.Client(base_url=live_server.url, timeout=30, follow_redirects=True)
        opened.append(c)
        if role is not None:
            r = login(c, USERS[role])
            assert r.status_code == 303, r.text
        return c

    yield make
    for c in opened:
        c.close()


def order_status(client: httpx.Client, world: World, ref: str) -> str:
    return client.get(f"/api/commerce/orders/{ref}", headers=bearer(world.admin_token)).json()["status"]


# ------------------------------------------------------------------ login, sessions, logout


def test_login_sets_a_safe_session_cookie_and_lands_on_the_role_home(shop: Shop, browser_for, engine) -> None:
    c = browser_for(None)
    r = login(c, "STAN")  # usernames are case-insensitive
    assert r.status_code == 303 and r.headers["location"] == "/console/store"
    cookie = next(h for h in r.headers.get_list("set-cookie") if h.startswith(f"{web_views.COOKIE}="))
    low = cookie.lower()
    assert "httponly" in low and "samesite=lax" in low and "path=/console" in low and "secure" not in low
    token = cookie.split(";")[0].split("=", 1)[1]
    with db.read(engine) as conn:
        stored = conn.execute(sa.text("SELECT token_hash FROM console_sessions")).scalars().all()
        hashes = conn.execute(sa.text("SELECT password_hash FROM console_users")).scalars().all()
    assert token not in stored and service.hash_token(token) in stored  # only the hash is kept
    assert all(h.startswith("$argon2id$") for h in hashes) and not any(PASSWORD in h for h in hashes)
    page = c.get("/console/store")
    assert page.status_code == 200 and "stan · store staff" in page.text
    agent = browser_for(None)
    assert login(agent, "agnes").headers["location"] == "/console/search"


def test_secure_cookie_over_https(settings, engine) -> None:
    create_users(engine)
    app = create_app(settings, engine=engine, migrate_db=False)
    with TestClient(app, base_url="https://console.example") as tc:
        r = login(tc, "ada")  # type: ignore[arg-type]
        assert r.status_code == 303
        cookie = next(h for h in r.headers.get_list("set-cookie") if h.startswith(f"{web_views.COOKIE}="))
        assert "secure" in cookie.lower() and "httponly" in cookie.lower()


def test_wrong_password_unknown_user_and_inactive_user_are_refused(shop: Shop, browser_for, engine) -> None:
    c = browser_for(None)
    assert login(c, "ada", "not the password").status_code == 401
    assert login(c, "nobody", PASSWORD).status_code == 401
    with db.write(engine) as conn:
        uid = service.user_by_name(conn=conn, username="mark").id
        service.update_user(conn=conn, user_id=uid, active=False, now=service_now())
    assert login(c, "mark").status_code == 401
    assert web_views.COOKIE not in c.cookies
    assert c.get("/console/search", follow_redirects=False).status_code == 303


def service_now():  # type: ignore[no-untyped-def]
    from omnijourney.store.base import utcnow

    return utcnow()


def test_login_without_its_csrf_token_is_refused(shop: Shop, browser_for) -> None:
    c = browser_for(None)
    c.get("/console/login")
    r = c.post("/console/login", data={"username": "ada", "password": PASSWORD, "csrf_token": "forged"})
    assert r.status_code == 403 and web_views.COOKIE not in c.cookies
    fresh = httpx.Client(base_url=c.base_url)  # no login-form cookie at all
    r = fresh.post("/console/login", data={"username": "ada", "password": PASSWORD, "csrf_token": "x"})
    fresh.close()
    assert r.status_code == 403


def test_logout_invalidates_the_session(shop: Shop, browser_for) -> None:
    c = browser_for("agent")
    token = c.cookies[web_views.COOKIE]
    page = c.get("/console/search")
    # logout is a state change: without the CSRF token it is refused and the session stays
    assert c.post("/console/logout", follow_redirects=False).status_code == 403
    assert c.get("/console/search").status_code == 200
    r = c.post("/console/logout", data={"csrf_token": csrf_of(page.text)}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/console/login"
    # the old cookie, replayed, no longer opens anything
    replay = httpx.Client(base_url=c.base_url, cookies={web_views.COOKIE: token})
    try:
        r = replay.get("/console/search", follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"].startswith("/console/login")
        assert replay.get(f"/console/customers/{shop.profile_id}/stream").status_code == 401
    finally:
        replay.close()


def test_login_is_throttled_after_repeated_failures(shop: Shop, browser_for) -> None:
    c = browser_for(None)
    for _ in range(service.MAX_FAILURES_PER_USER):
        assert login(c, "ada", "guess-guess-guess").status_code == 401
    r = login(c, "ada")  # the right password does not help now
    assert r.status_code == 429 and "Retry-After" in r.headers
    assert web_views.COOKIE not in c.cookies
    assert login(c, "mark").status_code == 303  # other users are not locked out


# ------------------------------------------------------------------ CSRF


def test_state_changes_without_a_valid_csrf_token_change_nothing(shop: Shop, browser_for, client, world) -> None:
    c = browser_for("store_staff")
    page = c.get("/console/store")
    token = csrf_of(page.text)
    url = f"/console/store/orders/{shop.order_ref}/status"
    assert c.post(url, data={"status": "ready_for_pickup"}).status_code == 403
    assert c.post(url, data={"status": "ready_for_pickup", "csrf_token": "nope"}).status_code == 403
    # a valid token sent from another site's page is refused too
    r = c.post(
        url, data={"status": "ready_for_pickup", "csrf_token": token}, headers={"Origin": "https://evil.example"}
    )
    assert r.status_code == 403
    # another session's token is not this session's token
    other = browser_for("store_staff")
    other_token = csrf_of(other.get("/console/store").text)
    assert other_token != token
    assert c.post(url, data={"status": "ready_for_pickup", "csrf_token": other_token}).status_code == 403
    assert order_status(client, world, shop.order_ref) == "placed"
    admin = browser_for("admin")
    assert (
        admin.post("/console/admin/users", data={"username": "eve", "role": "admin", "password": "x" * 12}).status_code
        == 403
    )
    assert "eve" not in admin.get("/console/admin").text
    r = c.post(url, data={"status": "ready_for_pickup", "csrf_token": token}, follow_redirects=False)
    assert r.status_code == 303
    assert order_status(client, world, shop.order_ref) == "ready_for_pickup"


# ------------------------------------------------------------------ roles on every route

#: the dashboard's JSON / CSV data routes (/console/dashboard/data/{name}); the role test asks them for a format
#: that does not exist, so an allowed role passes the role check and gets a 422 without running the analysis
DASHBOARD_DATA = (
    "lake",
    "funnel",
    "stages",
    "cross-channel",
    "click-and-collect",
    "multi-channel",
    "revenue",
    "service",
    "attribution",
    "gaps",
    "stage-kpis",
    "retention",
    "lifecycle",
    "paths",
    "golden-paths",
)
GET_ROUTES = {
    "/console": ("admin", "marketer", "agent", "store_staff"),
    "/console/": ("admin", "marketer", "agent", "store_staff"),
    "/console/search": ("admin", "marketer", "agent", "store_staff"),
    "/console/customers/{profile_id}": ("admin", "marketer", "agent", "store_staff"),
    "/console/customers/{profile_id}/timeline": ("admin", "marketer", "agent", "store_staff"),
    "/console/store": ("admin", "store_staff"),
    "/console/admin": ("admin",),
    "/console/workspace": ("admin", "agent"),
    "/console/workspace/": ("admin", "agent"),
    "/console/workspace/{conversation_id}": ("admin", "agent"),
    "/console/segments": ("admin", "marketer"),
    "/console/segments/{key}/export.csv": ("admin", "marketer"),
    "/console/journeys": ("admin", "marketer"),
    "/console/dashboard": ("admin", "marketer"),
    "/console/dashboard/": ("admin", "marketer"),
    **{f"/console/dashboard/data/{name}": ("admin", "marketer") for name in DASHBOARD_DATA},
}
POST_ROUTES = {
    "/console/logout": ("admin", "marketer", "agent", "store_staff"),
    "/console/store/orders/{ref}/status": ("admin", "store_staff"),
    "/console/store/tasks/{task_id}/done": ("admin", "store_staff"),
    "/console/admin/users": ("admin",),
    "/console/admin/users/{user_id}": ("admin",),
    "/console/admin/sources": ("admin",),
    "/console/admin/sources/{source_id}/enabled": ("admin",),
    "/console/admin/tokens": ("admin",),
    "/console/workspace/{conversation_id}/reply": ("admin", "agent"),
    "/console/workspace/{conversation_id}/note": ("admin", "agent"),
    "/console/workspace/{conversation_id}/assign": ("admin", "agent"),
    "/console/workspace/{conversation_id}/resolve": ("admin", "agent"),
    "/console/workspace/calls": ("admin", "agent"),
    "/console/segments": ("admin", "marketer"),
    "/console/dashboard/refresh": ("admin", "marketer"),
}
#: open to anyone: the login form, the console's and the dashboard's stylesheets and scripts
PUBLIC = {
    ("/console/login", "GET"),
    ("/console/login", "POST"),
    ("/console/static/{name}", "GET"),
    ("/console/dashboard/assets/{name}", "GET"),
}
STREAM = "/console/customers/{profile_id}/stream"


def test_the_role_table_covers_every_console_route() -> None:
    """Every route the console installs in the app (whatever router it comes from) is in the role table,
    and the table names no route that does not exist."""
    included: list[APIRouter] = []

    class Recording(FastAPI):
        def include_router(self, router: APIRouter, **kwargs: Any) -> None:  # type: ignore[override]
            included.append(router)
            super().include_router(router, **kwargs)

    web_views.install(Recording())
    declared = {
        (r.path.replace(":int", ""), m)
        for router in included
        for r in router.routes
        if isinstance(r, APIRoute)
        for m in r.methods
    }
    covered = {(p, "GET") for p in GET_ROUTES} | {(p, "POST") for p in POST_ROUTES} | {(STREAM, "GET")} | PUBLIC
    assert declared - covered == set(), "console routes missing from the role table"
    assert covered - declared == set(), "role-table routes the console does not have"
    assert {"/console/dashboard/data/golden-paths", "/console/journeys"} <= {p for p, _ in declared}


@pytest.mark.parametrize("role", [None, "admin", "marketer", "agent", "store_staff"])
def test_roles_are_enforced_on_every_route(role: str | None, shop: Shop, browser_for, engine, client, world) -> None:
    c = browser_for(role)
    made = client.post(
        "/api/service/conversations",
        json={"channel": "chat", "profile_id": shop.profile_id, "message": {"author": "customer", "text": "hi"}},
        headers=bearer(world.agent_token),
    )
    assert made.status_code == 201, made.text
    with db.write(engine) as conn:
        everyone = SegmentIn(key="everyone", name="Everyone", rule={"trait": {"key": "email", "op": "exists"}})
        engage.create_segment(conn=conn, segment=everyone, actor="test", now=utcnow())
    with db.read(engine) as conn:
        uid = service.user_by_name(conn=conn, username="mark").id
        sid = conn.execute(sa.text("SELECT min(id) FROM sources")).scalar_one()
    fill = {
        "{profile_id}": str(shop.profile_id),
        "{ref}": shop.order_ref,
        "{user_id}": str(uid),
        "{source_id}": str(sid),
        "{conversation_id}": str(made.json()["id"]),
        "{task_id}": "999999",  # none: allowed roles get a 404 after the role and CSRF checks
        "{key}": "everyone",
    }

    def url(path: str) -> str:
        for k, v in fill.items():
            path = path.replace(k, v)
        return path

    csrf = csrf_of(c.get("/console/search").text) if role else "none"
    for path, allowed in GET_ROUTES.items():
        analysis = path.startswith("/console/dashboard/data/") and not path.endswith("/lake")
        r = c.get(url(path), params={"format": "nope"} if analysis else None, follow_redirects=False)
        if role is None:
            assert r.status_code == 303 and r.headers["location"].startswith("/console/login"), path
        elif role in allowed and analysis:
            assert r.status_code == 422, (path, role, r.status_code)  # past the role check, refused the format
        elif role in allowed:
            assert r.status_code in (200, 303), (path, r.status_code)
            if r.status_code == 303:
                assert not r.headers["location"].startswith("/console/login"), path
        else:
            assert r.status_code == 403, (path, role, r.status_code)
    # the live stream: allowed roles get an event stream, anonymous visitors a 401
    if role is None:
        assert c.get(url(STREAM)).status_code == 401
    else:
        with c.stream("GET", url(STREAM)) as r:
            assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    for path, allowed in POST_ROUTES.items():
        if path == "/console/logout":
            continue  # checked last: it ends the session
        # a harmless body: every form refuses it after the role check, or changes nothing that matters here
        r = c.post(url(path), data={"csrf_token": csrf, "status": "paid"}, follow_redirects=False)
        if role is None:
            assert r.status_code == 401, path
        elif role in allowed:
            assert r.status_code not in (401, 403), (path, role, r.status_code)
        else:
            assert r.status_code == 403, (path, role, r.status_code)
    r = c.post("/console/logout", data={"csrf_token": csrf}, follow_redirects=False)
    assert r.status_code == (401 if role is None else 303)


def test_a_marketer_cannot_use_the_admin_forms_even_with_a_valid_csrf_token(shop: Shop, browser_for, engine) -> None:
    c = browser_for("marketer")
    token = csrf_of(c.get("/console/search").text)
    r = c.post(
        "/console/admin/users", data={"username": "mallory", "role": "admin", "password": "p" * 12, "csrf_token": token}
    )
    assert r.status_code == 403
    assert c.post("/console/admin/tokens", data={"role": "admin", "csrf_token": token}).status_code == 403
    with db.read(engine) as conn:
        assert service.user_by_name(conn=conn, username="mallory") is None
        assert conn.execute(sa.text("SELECT count(*) FROM api_tokens WHERE name LIKE 'console%'")).scalar_one() == 0


# ------------------------------------------------------------------ search and the 360


SEARCHES = [CARD, "lc 0012 345678", PHONE, "601 123 456", EMAIL, "Jana Nováková", "novakova"]


def test_search_finds_the_customer_by_any_identifier(shop: Shop, browser_for) -> None:
    """Card, phone and e-mail as typed by a person, full name with or without diacritics (one shop for all:
    search changes nothing). Speed is measured by benchmarks/console.py, not asserted here."""
    c = browser_for("agent")
    for query in SEARCHES:
        r = c.get("/console/search", params={"q": query})
        assert r.status_code == 200
        assert f'href="/console/customers/{shop.profile_id}"' in r.text, query


def test_search_by_order_number(shop: Shop, browser_for) -> None:
    c = browser_for("agent")
    r = c.get("/console/search", params={"q": shop.order_ref})
    assert f'href="/console/customers/{shop.profile_id}"' in r.text and f"order {shop.order_ref}" in r.text
    assert "No customer matches" in c.get("/console/search", params={"q": "zz-nobody"}).text


def section(html: str, testid: str) -> str:
    """The inner HTML of the element marked `data-testid=testid` (up to its tag's first closing tag)."""
    at = html.find(f'data-testid="{testid}"')
    assert at >= 0, testid
    tag = re.match(r"<(\w+)", html[html.rindex("<", 0, at) :])
    assert tag is not None
    return html[html.index(">", at) + 1 : html.index(f"</{tag.group(1)}>", at)]


def test_customer_360_shows_who_orders_cart_suggestions_and_timeline(
    shop: Shop, browser_for, client: httpx.Client, world: World
) -> None:
    # what the 360 must also show: a consent, points, an open cart, an accessory of the browsed shoe
    admin, agent = bearer(world.admin_token), bearer(world.agent_token)
    laces = {"sku": "LACES-1", "name": "Spare laces", "category": "care", "prices": {"CZK": "79.00"}}
    browsed = {**next(p for p in PRODUCTS if p["sku"] == "SHOE-43")}
    browsed["related"] = [*browsed["related"], {"sku": "LACES-1", "kind": "accessory"}]
    for products in ([laces], [browsed]):
        r = client.post("/api/commerce/products", json={"products": products}, headers=admin)
        assert r.status_code == 200, r.text
    cart = client.post("/api/commerce/carts", json={"profile_id": shop.profile_id}, headers=agent).json()
    r = client.post(f"/api/commerce/carts/{cart['id']}/items", json={"sku": "SOCK-1", "quantity": 2}, headers=agent)
    assert r.status_code == 200, r.text
    consent = {"purpose": "marketing", "channel": "email", "status": "granted"}
    r = client.post(
        "/v1/track",
        auth=(world.web_key, ""),
        json={"userId": "user-jana", "event": "Consent Updated", "properties": consent},
    )
    assert r.status_code == 200, r.text
    assert wait_for(lambda: processed(client, world), timeout=20)

    c = browser_for("agent")
    r = c.get(f"/console/customers/{shop.profile_id}")
    assert r.status_code == 200
    html = r.text
    assert "Jana Nováková" in html
    assert section(html, "lifecycle-stage") == "purchase"  # one order: bought, not yet retained
    assert section(html, "pref-preferred-channel") == "web"
    loyalty = section(html, "loyalty")
    assert loyalty.startswith("249 points · basic")  # 1 point per 10 CZK of the 2490 CZK shoe
    consents = section(html, "consents")
    assert "granted" in consents and "marketing · email" in consents
    cart_html = section(html, "cart")
    assert "2\N{MULTIPLICATION SIGN} Merino socks" in cart_html and "SOCK-1" in cart_html and "SHOE-42" not in cart_html
    for value in (CARD, PHONE, EMAIL, "user-jana"):
        assert value in html
    assert "by pos" in html  # provenance: which source linked the identifier
    assert "Shoe size" in html and "38" in html
    refused = html.split('data-testid="trait-rejections"')[1].split("</ul>")[0]
    assert "birthday: <code>31.02.1990</code>" in refused and "is not a datetime" in refused
    assert shop.order_ref in html and "click and collect at store-praha-1" in html and "placed" in html
    # accessories of the bought shoe; the bought shoe itself is never suggested
    suggestions = section(html, "suggestions")
    assert "Merino socks" in suggestions and "Waterproofing spray" in suggestions
    # and of what she only browsed (SHOE-43), after those of what she bought
    assert "Spare laces" in suggestions and "accessory for SHOE-43 (browsed)" in suggestions
    assert suggestions.index("Spare laces") > suggestions.index("Waterproofing spray")
    assert "SHOE-42" not in suggestions.replace("for SHOE-42", "")
    assert "Product Viewed" in html and "Identify" in html.replace("identify", "Identify")
    assert 'aria-label="web"' in html and 'aria-label="store"' in html  # channel icons, labelled
    assert c.get("/console/customers/999999").status_code == 404
    # CSP: no inline scripts are needed, so none are allowed
    assert "script-src 'self'" in r.headers["content-security-policy"]


def test_timeline_pages_with_a_cursor(shop: Shop, browser_for, client, world) -> None:
    for i in range(35):
        client.post(
            "/v1/track",
            auth=(world.web_key, ""),
            json={
                "userId": "user-jana",
                "event": "Page Viewed",
                "messageId": f"pv-{i}",
                "properties": {"path": f"/p/{i}"},
            },
        )
    assert wait_for(
        lambda: client.get("/api/pipeline/status", headers=bearer(world.admin_token)).json()["lag"] == 0, 20
    )
    c = browser_for("marketer")
    first = c.get(f"/console/customers/{shop.profile_id}").text
    ids_first = set(re_ids(first))
    assert len(ids_first) == 30 and "Older events" in first
    cursor_url = first.split('data-fragment="')[1].split('"')[0].replace("&amp;", "&")
    more = c.get(cursor_url)
    assert more.status_code == 200
    ids_more = set(re_ids(more.text))
    assert ids_more and not ids_more & ids_first
    assert c.get(f"/console/customers/{shop.profile_id}/timeline", params={"cursor": "garbage"}).status_code == 400


def re_ids(html: str) -> list[str]:
    import re

    return re.findall(r'data-event-id="(\d+)"', html)


def test_live_stream_delivers_new_events_to_a_logged_in_session(shop: Shop, browser_for, client, world) -> None:
    c = browser_for("agent")
    with c.stream("GET", f"/console/customers/{shop.profile_id}/stream", timeout=30) as r:
        assert r.status_code == 200
        lines = r.iter_lines()
        assert next(lines).startswith("retry:")
        sent = client.post(
            "/v1/track",
            auth=(world.pos_key, ""),
            json={"userId": "user-jana", "event": "Store Visited", "properties": {"store_id": STORE}},
        )
        assert sent.status_code == 200
        deadline = time.monotonic() + 20
        seen = []
        for line in lines:
            seen.append(line)
            if "Store Visited" in line or time.monotonic() > deadline:
                break
    text = "\n".join(seen)
    assert "event: timeline" in text and "Store Visited" in text and 'aria-label="store"' in text


# ------------------------------------------------------------------ store staff


def test_store_staff_mark_a_pickup_ready_then_picked_up(shop: Shop, browser_for, client, world) -> None:
    c = browser_for("store_staff")
    page = c.get("/console/store").text
    assert shop.order_ref in page and "Mark ready" in page and "Jana Nováková" in page
    token = csrf_of(page)
    url = f"/console/store/orders/{shop.order_ref}/status"
    r = c.post(url, data={"status": "ready_for_pickup", "csrf_token": token})
    assert r.status_code == 200 and f"order {shop.order_ref} is ready for pickup" in r.text and "Picked up" in r.text
    assert order_status(client, world, shop.order_ref) == "ready_for_pickup"
    # a retry of the same click is harmless
    assert c.post(url, data={"status": "ready_for_pickup", "csrf_token": token}).status_code == 200
    r = c.post(url, data={"status": "picked_up", "csrf_token": token})
    assert f"order {shop.order_ref} is picked up" in r.text
    assert order_status(client, world, shop.order_ref) == "picked_up"
    assert f'data-order="{shop.order_ref}"' not in r.text  # no longer waiting
    history = client.get(f"/api/commerce/orders/{shop.order_ref}", headers=bearer(world.admin_token)).json()["history"]
    assert [h["status"] for h in history] == ["placed", "ready_for_pickup", "picked_up"]
    assert history[-1]["actor"].endswith(":stan") and history[-1]["location"] == STORE
    # only these two steps are offered here
    r = c.post(url, data={"status": "cancelled", "csrf_token": token})
    assert "only" in r.text and order_status(client, world, shop.order_ref) == "picked_up"


def test_store_staff_find_the_customer_and_see_preferences_and_suggestions(shop: Shop, browser_for) -> None:
    c = browser_for("store_staff")
    for q in ("lc0012345678", "601 123 456"):
        html = c.get("/console/store", params={"find": q}).text
        card = html.split('data-testid="store-customer"')[1]
        assert "Jana Nováková" in card and "Shoe size" in card and "Merino socks" in card
        assert shop.order_ref in card  # waiting here


def test_store_staff_of_another_store_cannot_hand_over_the_order(
    shop: Shop, browser_for, engine, client, world
) -> None:
    with db.write(engine) as conn:
        service.create_user(
            conn=conn,
            username="bruno",
            role="store_staff",
            password=PASSWORD,
            home_location="store-brno-1",
            now=service_now(),
        )
    c = browser_for(None)
    assert login(c, "bruno").status_code == 303
    page = c.get("/console/store").text
    assert shop.order_ref not in page
    # the store is the user's home store, whatever the form says
    r = c.post(
        f"/console/store/orders/{shop.order_ref}/status",
        data={"status": "ready_for_pickup", "location": STORE, "csrf_token": csrf_of(page)},
    )
    assert "is collected at store-praha-1" in r.text
    assert order_status(client, world, shop.order_ref) == "placed"


# ------------------------------------------------------------------ admin


def test_admin_manages_users_sources_and_tokens(shop: Shop, browser_for, client, engine) -> None:
    c = browser_for("admin")
    token = csrf_of(c.get("/console/admin").text)
    r = c.post(
        "/console/admin/users",
        data={"username": "Petra", "role": "agent", "password": "a-long-password", "csrf_token": token},
    )
    assert r.status_code == 200 and "user petra (agent) created" in r.text
    weak = c.post(
        "/console/admin/users", data={"username": "x1", "role": "agent", "password": "short", "csrf_token": token}
    )
    assert weak.status_code == 422 and "at least" in weak.text
    dup = c.post(
        "/console/admin/users",
        data={"username": "petra", "role": "agent", "password": "a-long-password", "csrf_token": token},
    )
    assert dup.status_code == 409
    petra = browser_for(None)
    assert login(petra, "petra", "a-long-password").status_code == 303
    assert petra.get("/console/search").status_code == 200
    # deactivating ends her session at once
    with db.read(engine) as conn:
        pid = service.user_by_name(conn=conn, username="petra").id
        ada = service.user_by_name(conn=conn, username="ada").id
    c.post(f"/console/admin/users/{pid}", data={"active": "false", "csrf_token": token})
    assert petra.get("/console/search", follow_redirects=False).status_code == 303
    # the last admin cannot lock everyone out
    r = c.post(f"/console/admin/users/{ada}", data={"role": "agent", "csrf_token": token})
    assert r.status_code == 409 and "last active admin" in r.text
    # sources: created through the access service, write key shown, usable at once
    r = c.post("/console/admin/sources", data={"name": "chat-widget", "channel": "chat", "csrf_token": token})
    assert "source chat-widget created" in r.text
    row = r.text.split("chat-widget</td>")[1]
    key = row.split("<code>")[1].split("</code>")[0]
    assert client.post("/v1/track", auth=(key, ""), json={"userId": "u1", "event": "Chat Started"}).status_code == 200
    with db.read(engine) as conn:
        sid = conn.execute(sa.text("SELECT id FROM sources WHERE name = 'chat-widget'")).scalar_one()
    c.post(f"/console/admin/sources/{sid}/enabled", data={"enabled": "false", "csrf_token": token})
    assert client.post("/v1/track", auth=(key, ""), json={"userId": "u1", "event": "Chat Started"}).status_code in (
        401,
        403,
    )
    # API tokens: shown once, working
    r = c.post("/console/admin/tokens", data={"role": "marketer", "name": "bi", "csrf_token": token})
    new = r.text.split('data-testid="new-token">')[1].split("<")[0]
    assert client.get("/api/me", headers=bearer(new)).json()["role"] == "marketer"
    assert new not in c.get("/console/admin").text


# ------------------------------------------------------------------ CLI


def test_cli_creates_a_user_with_the_password_from_stdin(database_url: str, tmp_path, engine) -> None:
    cmd = [str(Path(sys.executable).parent / "omnijourney"), "users", "create", "Kim", "--role", "store_staff"]
    cmd += ["--home-store", STORE, "--password-stdin", "--database-url", database_url, "--data-dir", str(tmp_path)]
    r = subprocess.run(cmd, input="a-secret-password\n", capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "created console user kim (store_staff)" in r.stdout
    assert "a-secret-password" not in r.stdout + r.stderr
    with db.write(engine) as conn:
        user = service.authenticate(conn=conn, username="kim", password="a-secret-password")
    assert user is not None and user.home_location == STORE
    bad = subprocess.run(cmd, input="short\n", capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "at least" in bad.stderr
