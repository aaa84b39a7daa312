"""A migrated database (and optionally an API server on it) shared by one test module, on each backend.

`database_url` in conftest gives every test a fresh database; tests that can share one (each works on
its own identifiers) use these module-scoped fixtures instead, to keep the suite fast. Import the
fixtures into a test module: `from tests.moddb import mod_client, mod_engine, mod_server, mod_world`.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
import sqlalchemy as sa

from omnijourney.app import create_app
from omnijourney.config import IngestLimits, Settings
from omnijourney.store import db
from tests.conftest import LiveServer, World, fresh_database, make_world, start_server


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def mod_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with fresh_database(request, tmp_path_factory.mktemp("moddb"), "oj_mod") as url:
        yield url


@pytest.fixture(scope="module")
def mod_engine(mod_url: str) -> Iterator[sa.Engine]:
    eng = db.create_engine(mod_url, sqlite_synchronous="NORMAL")
    yield eng
    eng.dispose()


@pytest.fixture(scope="module")
def mod_server(mod_url: str, mod_engine: sa.Engine, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """The API without its embedded processing stage: tests process the log themselves, when they choose."""
    settings = Settings(
        data_dir=tmp_path_factory.mktemp("moddata"),
        database_url=mod_url,
        limits=IngestLimits(),
        sqlite_synchronous="NORMAL",
        run_pipeline=False,
    )
    srv = start_server(create_app(settings, engine=mod_engine, migrate_db=False), mod_engine)
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def mod_client(mod_server: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=mod_server.url, timeout=30) as c:
        yield c


@pytest.fixture(scope="module")
def mod_world(mod_engine: sa.Engine) -> World:
    return make_world(mod_engine)
