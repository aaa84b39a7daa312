"""The segments page of the console (in-process HTTP with TestClient): a marketer lists segments,
defines one with the form (CSRF), sees its members counted and downloads them; a bad rule changes
nothing; an agent may not open the page."""

from __future__ import annotations

import csv
import io

import sqlalchemy as sa
from argon2 import PasswordHasher
from fastapi.testclient import TestClient

from omnijourney.app import create_app
from omnijourney.engage import service as segments
from omnijourney.store import db
from omnijourney.store.base import utcnow
from omnijourney.web import service
from omnijourney.web import views as web_views
from tests.engage.journey_helpers import customer, handlers, process
from tests.web.helpers import PASSWORD, csrf_of

RULE = "trait: {key: city, op: eq, value: Brno}\n"


def _segment_keys(engine: sa.Engine) -> list[str]:
    with db.read(engine) as conn:
        return [s["key"] for s in segments.list_segments(conn=conn)]


def test_marketers_define_count_and_export_segments_in_the_console(settings, engine: sa.Engine, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(service, "_hasher", PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1))
    with db.write(engine) as conn:
        for name, role in {"mia": "marketer", "agnes": "agent"}.items():
            service.create_user(conn=conn, username=name, role=role, password=PASSWORD, home_location=None,
                                now=utcnow())  # fmt: skip
    customer(engine, "jana", traits={"city": "Brno"})
    customer(engine, "petr", traits={"city": "Praha"})
    customer(engine, "eva", traits={"city": "Brno"})
    process(engine, handlers([]))

    app = create_app(settings, engine=engine, migrate_db=False)
    with TestClient(app) as c:

        def log_in(name: str) -> None:
            with db.write(engine) as conn:
                user = service.user_by_name(conn=conn, username=name)
                assert user is not None
                token = service.start_session(conn=conn, user=user, now=utcnow())
            c.cookies.clear()
            c.cookies.set(web_views.COOKIE, token)

        log_in("agnes")
        assert c.get("/console/segments").status_code == 403
        assert c.get("/console/segments/brno/export.csv").status_code == 403

        log_in("mia")
        page = c.get("/console/segments")
        assert page.status_code == 200 and "No segments defined." in page.text
        token = csrf_of(page.text)
        form = {"key": "brno", "name": "Customers in Brno", "description": "", "rule": RULE}

        # no CSRF token: refused, nothing defined
        assert c.post("/console/segments", data=form, follow_redirects=False).status_code == 403
        # a rule the grammar refuses: the page again with the reason, nothing defined
        bad = c.post("/console/segments", data={**form, "csrf_token": token, "rule": "trait: {key: city, op: near}"})
        assert bad.status_code == 400 and 'data-testid="segment-error"' in bad.text
        assert 'value="Customers in Brno"' in bad.text  # the form keeps what was typed
        not_yaml = c.post("/console/segments", data={**form, "csrf_token": token, "rule": "all: [unclosed"})
        assert not_yaml.status_code == 400 and "not valid YAML" in not_yaml.text
        assert _segment_keys(engine) == []

        created = c.post("/console/segments", data={**form, "csrf_token": token}, follow_redirects=False)
        assert created.status_code == 303 and created.headers["location"].endswith("#s-brno")
        assert _segment_keys(engine) == ["brno"]
        listing = c.get("/console/segments").text
        assert 'data-segment="brno"' in listing and "Customers in Brno" in listing
        assert '<td data-stat="count">2</td>' in listing  # evaluated for everyone right away

        # the same key again: refused with the reason
        again = c.post("/console/segments", data={**form, "csrf_token": token})
        assert again.status_code == 400 and "exists" in again.text

        export = c.get("/console/segments/brno/export.csv")
        assert export.status_code == 200 and export.headers["content-type"].startswith("text/csv")
        rows = list(csv.DictReader(io.StringIO(export.text)))
        assert len(rows) == 2
        assert c.get("/console/segments/nowhere/export.csv").status_code == 404
