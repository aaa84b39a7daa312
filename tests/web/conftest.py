"""The demo world and headless Chromium for the browser tests: one demo and one browser per test session,
so the console and dashboard suites (and tests of other modules xdist interleaves with them) never rebuild them.
Chromium is Debian's (/usr/bin/chromium), driven by Playwright; screenshots go to test-artifacts/console/."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import datetime
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from omnijourney.app import create_app
from omnijourney.config import IngestLimits, Settings
from omnijourney.demo import runner
from omnijourney.demo.world import build_world
from omnijourney.store import db
from tests.conftest import LiveServer, free_port, start_server

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ARTIFACTS = Path(os.environ.get("OMNIJOURNEY_TEST_ARTIFACTS", Path(__file__).parents[2] / "test-artifacts")) / "console"
CUSTOMERS = 60
SEED = 11


@dataclass
class Demo:
    server: LiveServer
    credentials: dict[str, Any]
    hero: Any
    #: the demo world's anchor (today 00:00 UTC): its stories happen before it
    anchor: datetime

    @property
    def url(self) -> str:
        return self.server.url

    def password(self, username: str) -> str:
        return self.credentials["console_users"][username]["password"]


@pytest.fixture(scope="session")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Demo]:
    data_dir = tmp_path_factory.mktemp("console-demo")
    settings = Settings(
        data_dir=data_dir,
        database_url=f"sqlite:///{data_dir / 'omnijourney.db'}",
        limits=IngestLimits(),
        sqlite_synchronous="NORMAL",
    )
    anchor = runner.default_anchor()
    out = StringIO()
    runner.run_demo(
        settings=replace(settings, port=free_port()),
        customers=CUSTOMERS,
        seed=SEED,
        serve_after=False,
        console=Console(file=out, width=160),
        anchor=anchor,
    )
    credentials = json.loads((data_dir / runner.CREDENTIALS_FILE).read_text())
    hero = build_world(customers=CUSTOMERS, seed=SEED, anchor=anchor).hero
    assert hero is not None
    engine = db.create_engine(settings.database_url, sqlite_synchronous="NORMAL")
    server = start_server(create_app(settings, engine=engine, migrate_db=False), engine)
    try:
        yield Demo(server, credentials, hero, anchor)
    finally:
        server.stop()
        engine.dispose()


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def page(browser: Any, demo: Demo) -> Iterator[Any]:
    context = browser.new_context(base_url=demo.url, viewport={"width": 1280, "height": 900})
    pg = context.new_page()
    pg.set_default_timeout(20_000)
    yield pg
    context.close()


def shot(page: Any, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def log_in(page: Any, demo: Demo, username: str) -> None:
    page.goto("/console/login")
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(demo.password(username))
    page.get_by_role("button", name="Log in").click()
    page.wait_for_selector("[data-testid=whoami]")
