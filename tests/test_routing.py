"""The router prefix check (omnijourney/routing.py) changes no routing decision: every route of the
app answers exactly as it does without the check, and so do paths no route matches."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from omnijourney.app import create_app
from omnijourney.config import IngestLimits, Settings
from omnijourney.routing import literal_prefix

_PARAM = re.compile(r"\{[^}]*\}")


@pytest.mark.parametrize(
    ("path", "prefix"),
    [
        ("/api/profiles/{profile_id:int}/timeline", "/api/profiles"),
        ("/api/offers", "/api/offers"),
        ("/api/segments/{key}/export.csv", "/api/segments"),
        ("/v1/projects/{write_key}/settings", "/v1/projects"),
        ("/console", "/console"),
        ("/e/c/{token}", "/e/c"),
        ("/files/x{name}", "/files"),
        ("/{anything:path}", "/"),
        ("/", "/"),
    ],
)
def test_literal_prefix(path: str, prefix: str) -> None:
    assert literal_prefix(path) == prefix


def _routes(routes: list[Any]) -> Iterator[tuple[str, str]]:
    """(method, concrete path) for every route the app serves, included routers opened."""
    for route in routes:
        inner = getattr(route, "original_router", None)
        if inner is not None:
            yield from _routes(list(inner.routes))
            continue
        path = getattr(route, "path", None)
        if not isinstance(path, str):
            continue
        for method in sorted(getattr(route, "methods", None) or {"GET"}):
            if method != "HEAD":
                yield method, _PARAM.sub("1", path)


def _answers(client: TestClient, requests: list[tuple[str, str]]) -> list[tuple[str, str, int, str, bytes]]:
    """Status, redirect target and body (pages carry a fresh CSRF token each time: compared by status)."""
    out = []
    for method, path in requests:
        r = client.request(method, path, follow_redirects=False)
        html = r.headers.get("content-type", "").startswith("text/html")
        out.append((method, path, r.status_code, r.headers.get("location", ""), b"" if html else r.content))
    return out


def test_every_route_answers_the_same_with_and_without_the_prefix_check(tmp_path: Path) -> None:
    settings = Settings(
        data_dir=tmp_path,
        database_url=f"sqlite:///{tmp_path / 'r.db'}",
        limits=IngestLimits(),
        sqlite_synchronous="OFF",
    )
    app = create_app(settings)
    checked = {id(r): r.matches for r in app.router.routes if "matches" in vars(r)}
    assert len(checked) >= 10  # the domain routers got the check
    requests = sorted(set(_routes(list(app.router.routes))))
    assert len(requests) > 100
    # and paths no route has, with and without a trailing slash (FastAPI's redirect scan)
    requests += [("GET", "/api/nothing"), ("GET", "/console/nothing/1"), ("POST", "/v1/batch/"),
                 ("GET", "/api/profiles/1/"), ("GET", "/nowhere")]  # fmt: skip
    with TestClient(app, raise_server_exceptions=False) as client:
        with_check = _answers(client, requests)
        for route in app.router.routes:
            vars(route).pop("matches", None)  # FastAPI's own matching only
        without = _answers(client, requests)
    assert with_check == without
    assert {status for _, _, status, _, _ in with_check} - {404}, "the requests reached the routes"
    not_found = {(m, p) for m, p, status, _, _ in with_check if status == 404}
    assert ("GET", "/api/nothing") in not_found
