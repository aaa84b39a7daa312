"""The staff console: server-rendered pages under /console with cookie sessions, CSRF and roles.

Every page declares the roles that may open it through `page(...)` (reads) or `action(...)`
(state-changing POSTs, which additionally check the session's CSRF token and the Origin header).
Roles are enforced here, on the server; the templates only hide links.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

import jinja2
from fastapi import APIRouter, Depends, FastAPI, Form, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response, StreamingResponse
from fastapi.templating import Jinja2Templates
from sqlalchemy.engine import Connection

from omnijourney.access import service as access
from omnijourney.access.service import ROLES, AccessError
from omnijourney.commerce import service as commerce
from omnijourney.commerce.config import CommerceConfig, load_commerce_config
from omnijourney.commerce.pickups import pickup_board
from omnijourney.commerce.service import CommerceError
from omnijourney.engage import tasks as staff_tasks
from omnijourney.ingest.spec import CHANNELS
from omnijourney.profiles.service import ProfileError
from omnijourney.store import db
from omnijourney.store.base import utcnow
from omnijourney.web import service
from omnijourney.web.rendering import ConsoleEnvironment
from omnijourney.web.service import ConsoleError, Session

HERE = Path(__file__).parent
COOKIE = "oj_session"
LOGIN_CSRF_COOKIE = "oj_login_csrf"
STATIC_FILES = {"console.css": "text/css", "console.js": "text/javascript"}
STREAM_POLL_SECONDS = 0.5
#: the live stream re-checks its session this often, so logout also ends open streams
STREAM_SESSION_CHECK_SECONDS = 5.0

router = APIRouter(prefix="/console", include_in_schema=False)
# templates ship with the package and do not change while the server runs: without auto_reload
# off, every {% include %} stats its file to see whether it changed
templates = Jinja2Templates(
    env=ConsoleEnvironment(
        loader=jinja2.FileSystemLoader(HERE / "templates"), autoescape=jinja2.select_autoescape(), auto_reload=False
    )
)

ALL = ROLES
READERS = ("admin", "marketer", "agent", "store_staff")
STORE = ("admin", "store_staff")
ADMIN = ("admin",)

#: channel badges: short labels in a colour per channel (no icon font or emoji font needed)
CHANNEL_ICONS = {
    "web": "WEB",
    "app": "APP",
    "email": "MAIL",
    "sms": "SMS",
    "push": "PUSH",
    "chat": "CHAT",
    "call_center": "CALL",
    "store": "STORE",
    "social": "SOC",
    "ads": "ADS",
    "kiosk": "KIOSK",
    "marketplace": "MKT",
    "erp": "ERP",
    "other": "OTHER",
}
templates.env.globals["channel_icon"] = lambda ch: CHANNEL_ICONS.get(ch or "other", "OTHER")
templates.env.globals["channels"] = sorted(CHANNELS)
templates.env.globals["roles"] = ROLES
STATUS_LABELS = {
    "placed": "placed",
    "paid": "paid",
    "ready_for_pickup": "ready for pickup",
    "picked_up": "picked up",
    "shipped": "shipped",
    "delivered": "delivered",
    "cancelled": "cancelled",
    "completed": "completed",
    "partially_returned": "partially returned",
    "returned": "returned",
}
templates.env.filters["status"] = lambda s: STATUS_LABELS.get(s, s)
templates.env.filters["when"] = lambda d: d.strftime("%Y-%m-%d %H:%M") if d else ""

_commerce_config: list[CommerceConfig] = []


def _cfg() -> CommerceConfig:
    if not _commerce_config:
        _commerce_config.append(load_commerce_config())
    return _commerce_config[0]


# ------------------------------------------------------------------ sessions, roles, CSRF


class NotLoggedIn(Exception):
    def __init__(self, next_url: str) -> None:
        self.next_url = next_url


class Forbidden(Exception):
    def __init__(self, message: str, session: Session | None = None) -> None:
        self.message = message
        self.session = session


def _secure(request: Request) -> bool:
    return request.url.scheme == "https"


def _client(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def _session_in(request: Request, conn: Connection) -> Session | None:
    token = request.cookies.get(COOKIE)
    if not token or len(token) > 128:
        return None
    return service.session_for_token(conn=conn, token=token, now=utcnow())


def _load_session(request: Request) -> Session | None:
    if not request.cookies.get(COOKIE):
        return None
    with db.read(request.app.state.engine) as conn:
        return _session_in(request, conn)


def _require(request: Request, session: Session | None, allowed: set[str]) -> Session:
    """The role check of every page: anonymous visitors to the login page, other roles a 403."""
    if session is None:
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        raise NotLoggedIn(target)
    if session.user.role not in allowed:
        raise Forbidden(f"the role {session.user.role!r} may not open this page", session)
    return session


class PageAccess:
    """The session and role check of a page that makes it in its own read transaction (`page_read`).

    The busiest pages (search, the customer 360, its timeline) read the session in the same
    transaction as the page, in the same worker thread: one pooled connection, one BEGIN/COMMIT
    (on PostgreSQL also one pre-ping) and one thread hand-off per request instead of two each."""

    __slots__ = ("allowed", "request")

    def __init__(self, request: Request, allowed: set[str]) -> None:
        self.request = request
        self.allowed = allowed


@contextmanager
def page_read(access: PageAccess) -> Iterator[tuple[Connection, Session]]:
    """A read transaction that first checks the page's session and role (raising like `page`)."""
    request = access.request
    with db.read_statements(request.app.state.engine) as conn:  # the pages only read
        yield conn, _require(request, _session_in(request, conn), access.allowed)


def page(*roles: str, in_page_read: bool = False) -> Callable[..., Any]:
    """A page (GET) these roles may open; anyone else gets 403, anonymous visitors the login page.

    With `in_page_read` the dependency answers a `PageAccess` and the page itself must open
    `page_read(access)` before doing anything else: the check is the same, made in the page's
    transaction."""
    allowed = set(roles)

    async def check(request: Request) -> Session:
        return _require(request, await run_in_threadpool(_load_session, request), allowed)

    async def deferred(request: Request) -> PageAccess:
        return PageAccess(request, allowed)

    dependency = deferred if in_page_read else check
    dependency.roles = allowed  # type: ignore[attr-defined]
    return dependency


def _same_origin(request: Request) -> bool:
    origin = request.headers.get("origin") or request.headers.get("referer")
    if not origin or origin == "null":
        return origin is None  # no header (old clients, curl): the CSRF token decides; "null" is refused
    parts = urlsplit(origin)
    return f"{parts.scheme}://{parts.netloc}" == f"{request.url.scheme}://{request.url.netloc}"


def action(*roles: str) -> Callable[..., Any]:
    """A state-changing request: the role check of `page` plus CSRF (token and same origin)."""
    check_page = page(*roles)

    async def check(request: Request, session: Session = Depends(check_page)) -> Session:
        sent = request.headers.get("x-csrf-token")
        if sent is None:
            form = await request.form()
            value = form.get("csrf_token")
            sent = value if isinstance(value, str) else None
        if not sent or not secrets.compare_digest(sent, session.csrf_token) or not _same_origin(request):
            raise Forbidden("the form expired or did not come from this console (CSRF check failed); reload the page")
        return session

    check.roles = check_page.roles  # type: ignore[attr-defined]
    return check


def install(app: FastAPI) -> None:
    """Wire the console into the app: its routes and the handlers that turn refusals into pages."""

    @app.exception_handler(NotLoggedIn)
    async def _login(request: Request, exc: NotLoggedIn) -> Response:
        if request.method != "GET" or request.url.path.endswith("/stream"):
            return HTMLResponse("<p>Your session ended. <a href='/console/login'>Log in</a></p>", status_code=401)
        return RedirectResponse(f"/console/login?next={quote(exc.next_url, safe='')}", status_code=303)

    @app.exception_handler(Forbidden)
    async def _forbidden(request: Request, exc: Forbidden) -> Response:
        return _render(request, "forbidden.html", exc.session, {"message": exc.message}, status=403)

    app.include_router(router)
    from omnijourney.web import workspace  # the agent workspace: its own router (it imports this module)

    app.include_router(workspace.router)
    from omnijourney.web import dashboard  # the journey dashboard (its own module and router)

    app.include_router(dashboard.router)
    from omnijourney.web import journeys  # the journeys page (its own module and router)

    app.include_router(journeys.router)
    from omnijourney.web import segments  # the segments page (its own module and router)

    app.include_router(segments.router)


def _render(
    request: Request, name: str, session: Session | None, context: dict[str, Any] | None = None, status: int = 200
) -> HTMLResponse:
    ctx = {"user": session.user if session else None, "csrf": session.csrf_token if session else "", **(context or {})}
    response = templates.TemplateResponse(request, name, ctx, status_code=status)
    response.headers["Cache-Control"] = "no-store"
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["Referrer-Policy"] = "same-origin"
    response.headers["Content-Security-Policy"] = (
        "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; frame-ancestors 'none'"
    )
    return response


def _back(path: str, **params: str) -> RedirectResponse:
    query = urlencode({k: v for k, v in params.items() if v})
    return RedirectResponse(path + (f"?{query}" if query else ""), status_code=303)


def _home(role: str) -> str:
    return "/console/store" if role == "store_staff" else "/console/search"


# ------------------------------------------------------------------ static files


@router.get("/static/{name}")
def static(name: str) -> Response:
    if name not in STATIC_FILES:
        return Response(status_code=404)
    return FileResponse(HERE / "static" / name, media_type=STATIC_FILES[name], headers={"Cache-Control": "no-cache"})


# ------------------------------------------------------------------ login, logout


def _safe_next(target: str | None) -> str | None:
    if not target or not target.startswith("/console/") or target.startswith("//") or "\\" in target:
        return None
    return target


@router.get("/login")
def login_form(request: Request, next: str | None = None, error: str | None = None) -> Response:
    session = _load_session(request)
    if session is not None:
        return RedirectResponse(_safe_next(next) or _home(session.user.role), status_code=303)
    token = secrets.token_urlsafe(32)
    response = _render(request, "login.html", None, {"login_csrf": token, "next": _safe_next(next), "error": error})
    response.set_cookie(
        LOGIN_CSRF_COOKIE, token, httponly=True, samesite="lax", secure=_secure(request), path="/console/login"
    )
    return response


@router.post("/login")
def login(
    request: Request,
    username: str = Form("", max_length=200),
    password: str = Form("", max_length=1024),
    csrf_token: str = Form("", max_length=200),
    next: str | None = Form(None, max_length=2000),
) -> Response:
    cookie = request.cookies.get(LOGIN_CSRF_COOKIE, "")
    if not cookie or not csrf_token or not secrets.compare_digest(cookie, csrf_token) or not _same_origin(request):
        return _render(
            request,
            "login.html",
            None,
            {"login_csrf": cookie, "next": _safe_next(next), "error": "The form expired; please try again."},
            status=403,
        )
    engine = request.app.state.engine
    now = utcnow()
    client = _client(request)
    with db.read(engine) as conn:
        blocked = service.throttled(conn=conn, username=username, client=client, now=now)
        candidate, stored = service.login_candidate(conn=conn, username=username)
    if blocked:
        response = _render(
            request,
            "login.html",
            None,
            {
                "login_csrf": cookie,
                "next": _safe_next(next),
                "error": "Too many failed attempts. Wait 15 minutes or ask an administrator.",
            },
            status=429,
        )
        response.headers["Retry-After"] = str(int(service.THROTTLE_WINDOW.total_seconds()))
        return response
    # argon2 is slow on purpose: verify outside any transaction (never while holding SQLite's write lock)
    ok = service.verify_password(stored, password) and candidate is not None and candidate.active
    user = candidate if ok else None
    with db.write(engine) as conn:
        service.record_attempt(conn=conn, username=username, client=client, succeeded=user is not None, now=now)
        token = None
        if user is not None:
            service.rehash_if_needed(conn=conn, user=user, stored_hash=stored, password=password)
            token = service.start_session(conn=conn, user=user, now=now)
    if user is None or token is None:
        return _render(
            request,
            "login.html",
            None,
            {"login_csrf": cookie, "next": _safe_next(next), "error": "Unknown user or wrong password."},
            status=401,
        )
    response = RedirectResponse(_safe_next(next) or _home(user.role), status_code=303)
    response.set_cookie(
        COOKIE,
        token,
        max_age=int(service.SESSION_TTL.total_seconds()),
        httponly=True,
        samesite="lax",
        secure=_secure(request),
        path="/console",
    )
    response.delete_cookie(LOGIN_CSRF_COOKIE, path="/console/login")
    return response


@router.post("/logout")
def logout(request: Request, session: Session = Depends(action(*ALL))) -> Response:
    token = request.cookies.get(COOKIE, "")
    with db.write(request.app.state.engine) as conn:
        service.end_session(conn=conn, token=token, now=utcnow())
    response = RedirectResponse("/console/login", status_code=303)
    response.delete_cookie(COOKIE, path="/console", httponly=True, samesite="lax", secure=_secure(request))
    return response


@router.get("")
@router.get("/")
def home(session: Session = Depends(page(*ALL))) -> Response:
    return RedirectResponse(_home(session.user.role), status_code=303)


# ------------------------------------------------------------------ search and the customer 360


@router.get("/search")
def search(
    request: Request,
    q: str = Query("", max_length=200),
    access: PageAccess = Depends(page(*READERS, in_page_read=True)),
) -> Response:
    results: list[dict[str, Any]] = []
    error = None
    with page_read(access) as (conn, session):
        if q.strip():
            try:
                results = service.find_customers(
                    conn=conn, query=q, rules=request.app.state.identity_rules, config=request.app.state.profile_config
                )
            except ProfileError as exc:  # raised before any statement: the transaction is intact
                error = str(exc)
    return _render(request, "search.html", session, {"q": q, "results": results, "error": error})


def _customer_page(request: Request, access: PageAccess, profile_id: int, cursor: str | None) -> Response:
    """The 360 page: the session and everything shown read in one transaction, then rendered."""
    from omnijourney.web import workspace

    with page_read(access) as (conn, session):
        view = service.customer_view(
            conn=conn,
            profile_id=profile_id,
            profile_config=request.app.state.profile_config,
            commerce_config=_cfg(),
            cursor=cursor,
        )
        if view is None:
            return _render(request, "not_found.html", session, {"what": f"customer {profile_id}"}, status=404)
        if view["id"] != profile_id:  # a merged-away member: show the survivor
            return RedirectResponse(f"/console/customers/{view['id']}", status_code=303)
        ws = workspace.customer_context(request, session, view["id"], conn=conn, members=view["members"])
    return _render(request, "customer.html", session, {"c": view, **ws})


@router.get("/customers/{profile_id:int}")
def customer(
    profile_id: int,
    request: Request,
    cursor: str | None = Query(None, max_length=200),
    access: PageAccess = Depends(page(*READERS, in_page_read=True)),
) -> Response:
    try:
        return _customer_page(request, access, profile_id, cursor)
    except ProfileError:  # a broken cursor: the first page
        return _customer_page(request, access, profile_id, None)


@router.get("/customers/{profile_id:int}/timeline")
def timeline(
    profile_id: int,
    request: Request,
    cursor: str | None = Query(None, max_length=200),
    access: PageAccess = Depends(page(*READERS, in_page_read=True)),
) -> Response:
    """The next page of the timeline, as list items (the page's script appends them)."""
    try:
        with page_read(access) as (conn, session):
            found = service.timeline_page(conn=conn, profile_id=profile_id, cursor=cursor)
    except ProfileError:
        return HTMLResponse("<li class='error'>invalid cursor</li>", status_code=400)
    if found is None:
        return HTMLResponse("", status_code=404)
    root, items, next_cursor = found
    return _render(
        request, "_timeline_items.html", session, {"items": items, "next_cursor": next_cursor, "profile_id": root}
    )


@router.get("/customers/{profile_id:int}/stream")
async def stream(profile_id: int, request: Request, session: Session = Depends(page(*READERS))) -> Response:
    """Server-sent events: each new timeline entry, rendered as a list item, while the session is valid."""
    engine = request.app.state.engine
    token = request.cookies.get(COOKIE, "")
    item_template = templates.env.get_template("_timeline_item.html")

    def latest() -> int | None:
        with db.read(engine) as conn:
            found = service.timeline_page(conn=conn, profile_id=profile_id, cursor=None, limit=1)
        if found is None:
            return None
        return found[1][0]["event_id"] if found[1] else 0

    last = await run_in_threadpool(latest)
    if last is None:
        return HTMLResponse("", status_code=404)

    def poll(after: int) -> list[dict[str, Any]]:
        with db.read(engine) as conn:
            found = service.timeline_page(
                conn=conn, profile_id=profile_id, cursor=None, limit=100, after_event_id=after
            )
        return sorted(found[1], key=lambda i: i["event_id"]) if found else []

    def still_valid() -> bool:
        with db.read(engine) as conn:
            return service.session_for_token(conn=conn, token=token, now=utcnow()) is not None

    async def events() -> AsyncIterator[bytes]:
        nonlocal last
        yield b"retry: 2000\n: connected\n\n"
        idle = checked = 0.0
        while not await request.is_disconnected():
            if checked >= STREAM_SESSION_CHECK_SECONDS:
                checked = 0.0
                if not await run_in_threadpool(still_valid):
                    yield b"event: logout\ndata: session ended\n\n"
                    return
            items = await run_in_threadpool(poll, last)
            for item in items:
                last = max(last, item["event_id"])
                html = item_template.render(item=item, channel_icon=templates.env.globals["channel_icon"])
                data = "".join(f"data: {line}\n" for line in html.strip().splitlines())
                yield f"id: {item['event_id']}\nevent: timeline\n{data}\n".encode()
            idle = 0.0 if items else idle + STREAM_POLL_SECONDS
            if idle >= 15:
                idle = 0.0
                yield b": keep-alive\n\n"
            checked += STREAM_POLL_SECONDS
            await asyncio.sleep(STREAM_POLL_SECONDS)

    return StreamingResponse(
        events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    )


# ------------------------------------------------------------------ store staff


def _store_location(session: Session, requested: str | None) -> str | None:
    """Store staff work at their home store; admins may look at any store."""
    if session.user.role == "store_staff":
        return session.user.home_location
    return requested or session.user.home_location


@router.get("/store")
def store(
    request: Request,
    location: str | None = Query(None, max_length=64),
    find: str = Query("", max_length=200),
    notice: str | None = Query(None, max_length=300),
    error: str | None = Query(None, max_length=300),
    session: Session = Depends(page(*STORE)),
) -> Response:
    code = _store_location(session, location)
    rules = request.app.state.identity_rules
    with db.read(request.app.state.engine) as conn:
        locations = commerce.list_locations(conn=conn)
        loc = commerce.get_location(conn=conn, code=code) if code else None
        pickups = commerce.pickups_at(conn=conn, location=code) if code else []
        tasks = staff_tasks.open_tasks(conn=conn, location=code) if code else []
        ids = sorted(
            {o["profile_id"] for o in pickups if o["profile_id"] is not None} | {t["profile_id"] for t in tasks}
        )
        names = {
            s["id"]: s
            for s in service.profiles.summaries(conn=conn, root_ids=ids, config=request.app.state.profile_config)
        }
        found: dict[str, Any] | None = None
        if find.strip():
            hits = service.find_customers(
                conn=conn, query=find, rules=rules, config=request.app.state.profile_config, limit=1
            )
            if hits:
                found = service.customer_view(
                    conn=conn,
                    profile_id=hits[0]["id"],
                    profile_config=request.app.state.profile_config,
                    commerce_config=_cfg(),
                    timeline_limit=10,
                )
    for order in pickups:
        order["customer"] = names.get(order["profile_id"]) if order["profile_id"] else None
    for task in tasks:
        task["customer"] = names.get(task["profile_id"])
    context = {
        "location": loc,
        "code": code,
        "locations": locations,
        "pickups": pickups,
        "board": pickup_board(pickups, now=utcnow(), rules=_cfg().pickup),
        "tasks": tasks,
        "find": find,
        "found": found,
        "notice": notice,
        "error": error,
    }
    return _render(request, "store.html", session, context)


@router.post("/store/orders/{ref}/status")
def set_pickup_status(
    ref: str,
    request: Request,
    status: str = Form(..., max_length=32),
    location: str | None = Form(None, max_length=64),
    find: str = Form("", max_length=200),
    session: Session = Depends(action(*STORE)),
) -> Response:
    code = _store_location(session, location)
    back = {"location": code if session.user.role == "admin" else "", "find": find}
    if status not in ("ready_for_pickup", "picked_up"):
        return _back("/console/store", error="only 'ready for pickup' and 'picked up' are set here", **back)
    if not code:
        return _back("/console/store", error="no store chosen", **back)
    try:
        with db.write(request.app.state.engine) as conn:
            order_id = commerce.find_order(conn=conn, ref=ref)
            if order_id is None:
                raise CommerceError(404, "not_found", f"no order {ref}")
            order = commerce.transition_order(
                conn=conn,
                order_id=order_id,
                status=status,
                actor=f"console:{session.user.id}:{session.user.username}",
                location=code,
                now=utcnow(),
                config=_cfg(),
            )
    except CommerceError as exc:
        return _back("/console/store", error=exc.message, **back)
    label = STATUS_LABELS[order["status"]]
    return _back("/console/store", notice=f"order {order['order_ref']} is {label}", **back)


@router.post("/store/tasks/{task_id:int}/done")
def complete_store_task(
    task_id: int,
    request: Request,
    location: str | None = Form(None, max_length=64),
    find: str = Form("", max_length=200),
    session: Session = Depends(action(*STORE)),
) -> Response:
    """Mark a journey's task done, at the user's store only (staff: their home store, whatever the
    form says; admins: the store they were looking at). Another store's task is a 404."""
    code = _store_location(session, location)
    if not code:
        return _back("/console/store", error="no store chosen")
    try:
        with db.write(request.app.state.engine) as conn:
            task = staff_tasks.complete_task(
                conn=conn,
                task_id=task_id,
                location=code,
                actor=f"console:{session.user.id}:{session.user.username}",
                now=utcnow(),
            )
    except staff_tasks.TaskError as exc:
        return _render(request, "not_found.html", session, {"what": f"task {task_id} at {code}"}, status=exc.status)
    back = {"location": code if session.user.role == "admin" else "", "find": find}
    return _back("/console/store", notice=f"task done: {task['title']}", **back)


# ------------------------------------------------------------------ admin: users, sources, tokens


def _admin_page(request: Request, session: Session, **extra: Any) -> HTMLResponse:
    with db.read(request.app.state.engine) as conn:
        users = service.list_users(conn=conn)
        sources = access.list_sources(conn=conn)
        locations = commerce.list_locations(conn=conn)
    status = extra.pop("status", 200)
    return _render(
        request,
        "admin.html",
        session,
        {"users": users, "sources": sources, "locations": locations, "notice": None, "error": None, **extra},
        status=status,
    )


@router.get("/admin")
def admin(
    request: Request,
    notice: str | None = Query(None, max_length=300),
    error: str | None = Query(None, max_length=300),
    session: Session = Depends(page(*ADMIN)),
) -> Response:
    return _admin_page(request, session, notice=notice, error=error)


@router.post("/admin/users")
def admin_create_user(
    request: Request,
    username: str = Form(..., max_length=200),
    role: str = Form(..., max_length=32),
    password: str = Form(..., max_length=1024),
    home_location: str = Form("", max_length=64),
    session: Session = Depends(action(*ADMIN)),
) -> Response:
    try:
        with db.write(request.app.state.engine) as conn:
            user = service.create_user(
                conn=conn,
                username=username,
                role=role,
                password=password,
                home_location=home_location or None,
                now=utcnow(),
            )
    except ConsoleError as exc:
        return _admin_page(request, session, error=exc.message, status=exc.status)
    return _back("/console/admin", notice=f"user {user.username} ({user.role}) created")


@router.post("/admin/users/{user_id:int}")
def admin_update_user(
    user_id: int,
    request: Request,
    role: str | None = Form(None, max_length=32),
    home_location: str | None = Form(None, max_length=64),
    active: str | None = Form(None, max_length=8),
    password: str | None = Form(None, max_length=1024),
    session: Session = Depends(action(*ADMIN)),
) -> Response:
    try:
        with db.write(request.app.state.engine) as conn:
            target = service.get_user(conn=conn, user_id=user_id)
            if target is None:
                raise ConsoleError(404, "not_found", f"no user {user_id}")
            activity = None if active is None else active == "true"
            demoted = target.role == "admin" and ((role and role != "admin") or activity is False)
            if demoted and target.active and service.count_admins(conn=conn) <= 1:
                raise ConsoleError(409, "last_admin", "the last active admin cannot be demoted or deactivated")
            user = service.update_user(
                conn=conn,
                user_id=user_id,
                role=role or None,
                home_location=home_location if role else None,
                active=activity,
                password=password or None,
                now=utcnow(),
            )
    except ConsoleError as exc:
        return _admin_page(request, session, error=exc.message, status=exc.status)
    return _back("/console/admin", notice=f"user {user.username} updated")


@router.post("/admin/sources")
def admin_create_source(
    request: Request,
    name: str = Form(..., max_length=100),
    channel: str = Form(..., max_length=32),
    trusted: str | None = Form(None, max_length=8),
    origins: str = Form("", max_length=2000),
    session: Session = Depends(action(*ADMIN)),
) -> Response:
    allowed = [o.strip() for o in origins.replace(",", " ").split() if o.strip()] or None
    try:
        with db.write(request.app.state.engine) as conn:
            info = access.create_source(
                conn=conn, name=name.strip(), channel=channel, trusted=trusted == "true", allowed_origins=allowed
            )
    except AccessError as exc:
        return _admin_page(request, session, error=str(exc), status=422)
    request.app.state.sources.invalidate()
    return _back("/console/admin", notice=f"source {info.name} created; its write key is in the table")


@router.post("/admin/sources/{source_id:int}/enabled")
def admin_source_enabled(
    source_id: int,
    request: Request,
    enabled: str = Form(..., max_length=8),
    session: Session = Depends(action(*ADMIN)),
) -> Response:
    with db.write(request.app.state.engine) as conn:
        access.set_source_enabled(conn=conn, source_id=source_id, enabled=enabled == "true")
    request.app.state.sources.invalidate()
    return _back("/console/admin", notice=f"source {source_id} {'enabled' if enabled == 'true' else 'disabled'}")


@router.post("/admin/tokens")
def admin_create_token(
    request: Request,
    role: str = Form(..., max_length=32),
    name: str = Form("", max_length=100),
    session: Session = Depends(action(*ADMIN)),
) -> Response:
    try:
        with db.write(request.app.state.engine) as conn:
            token = access.create_token(conn=conn, role=role, name=name.strip() or f"console {role}")
    except AccessError as exc:
        return _admin_page(request, session, error=str(exc), status=422)
    # shown once, in this response only (never in a redirect URL, never logged)
    return _admin_page(request, session, new_token={"role": role, "name": name, "token": token})
