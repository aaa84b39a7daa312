"""Tasks journeys create for store staff, on the store page (in-process HTTP with TestClient): listed
for the user's store only, marked done with CSRF by store staff or an admin, never across stores."""

from __future__ import annotations

import sqlalchemy as sa
from argon2 import PasswordHasher
from fastapi.testclient import TestClient

from omnijourney.app import create_app
from omnijourney.engage import schedule
from omnijourney.engage import tasks as staff_tasks
from omnijourney.engage.schedule import Executor
from omnijourney.store import db
from omnijourney.store.base import utcnow
from omnijourney.web import service
from omnijourney.web import views as web_views
from tests.engage.journey_helpers import customer, delivery_config, handlers, journey, pid, process
from tests.web.helpers import PASSWORD, STORE, csrf_of

BRNO = "store-brno-1"


def _task_journey(key: str, title: str, location: str) -> dict:  # type: ignore[type-arg]
    return {
        "key": key,
        "trigger": {"event": {"name": "Anything"}},
        "steps": [{"key": "call", "task": {"title": title, "location": location}}],
    }


def _tasks(engine: sa.Engine) -> dict[str, tuple[int, str, str | None]]:
    with db.read(engine) as conn:
        rows = conn.execute(sa.select(schedule.TASKS)).all()
    return {r.location: (r.id, r.status, r.done_by) for r in rows}


def test_store_staff_see_and_complete_their_store_tasks_only(settings, engine: sa.Engine, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    # passwords play no part here (sessions are started directly below): a cheap hash keeps the test fast
    monkeypatch.setattr(service, "_hasher", PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1))
    staff = {"stan": ("store_staff", STORE), "agnes": ("agent", None), "ada": ("admin", None)}
    with db.write(engine) as conn:
        for name, (role, home) in staff.items():
            service.create_user(conn=conn, username=name, role=role, password=PASSWORD, home_location=home,
                                now=utcnow())  # fmt: skip
    customer(engine, "jana")
    process(engine, handlers([]))
    p = pid(engine, "jana")
    defs = [
        journey(**_task_journey("praha_call", "Call Jana about her fitting", STORE)),
        journey(**_task_journey("brno_call", "Brno: invite Jana to the opening", BRNO)),
    ]
    now = utcnow()
    with db.write(engine) as conn:
        versions = schedule.sync_journeys(conn=conn, journeys=defs, now=now)
        for j in defs:
            schedule.enter(conn, journey=j, version=versions[j.key], profile_id=p, dedupe_key="t", context={}, now=now)
    ex = Executor(engine, delivery_config(None))
    assert ex.run_due(now=now, scan=False).done == 2  # the task steps ran: one task per store
    ex.close()
    praha, brno = _tasks(engine)[STORE][0], _tasks(engine)[BRNO][0]

    app = create_app(settings, engine=engine, migrate_db=False)
    with TestClient(app) as c:

        def log_in(name: str) -> None:
            """One client, one user at a time (the app's lifespan runs once). A session as the login
            form starts it, without the deliberately slow password check (login is tested elsewhere)."""
            with db.write(engine) as conn:
                user = service.user_by_name(conn=conn, username=name)
                assert user is not None
                token = service.start_session(conn=conn, user=user, now=utcnow())
            c.cookies.clear()
            c.cookies.set(web_views.COOKIE, token)

        # an agent (logged in, with its own valid token) may not complete store tasks
        log_in("agnes")
        agent_token = csrf_of(c.get("/console/search").text)
        r = c.post(f"/console/store/tasks/{praha}/done", data={"csrf_token": agent_token}, follow_redirects=False)
        assert r.status_code == 403

        log_in("stan")
        page = c.get("/console/store").text
        assert "Call Jana about her fitting" in page and f'data-task="{praha}"' in page
        assert "Brno: invite" not in page  # another store's task is not shown
        token = csrf_of(page)
        # another store's task cannot be completed, whatever the form says
        r = c.post(f"/console/store/tasks/{brno}/done", data={"csrf_token": token, "location": BRNO},
                   follow_redirects=False)  # fmt: skip
        assert r.status_code == 404
        # no CSRF token: refused
        assert c.post(f"/console/store/tasks/{praha}/done", follow_redirects=False).status_code == 403
        assert _tasks(engine)[STORE][1] == "open" and _tasks(engine)[BRNO][1] == "open"

        r = c.post(f"/console/store/tasks/{praha}/done", data={"csrf_token": token})
        assert r.status_code == 200 and "task done: Call Jana about her fitting" in r.text
        assert f'data-task="{praha}"' not in r.text and "No open tasks for this store" in r.text
        _, status, by = _tasks(engine)[STORE]
        assert status == "done" and by is not None and by.endswith(":stan")
        # a retried click changes nothing and appends no second timeline event
        assert c.post(f"/console/store/tasks/{praha}/done", data={"csrf_token": token}).status_code == 200
        with db.read(engine) as conn:
            events = conn.execute(
                sa.text("SELECT count(*) FROM events WHERE event = :e"), {"e": staff_tasks.COMPLETED}
            ).scalar_one()
        assert events == 1

        # an admin looks at (and works for) any store
        log_in("ada")
        page = c.get("/console/store", params={"location": BRNO}).text
        assert f'data-task="{brno}"' in page
        r = c.post(f"/console/store/tasks/{brno}/done", data={"csrf_token": csrf_of(page), "location": BRNO})
        assert r.status_code == 200 and "task done" in r.text
        assert _tasks(engine)[BRNO][1] == "done"
