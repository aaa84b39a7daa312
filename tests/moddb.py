"""A migrated database (and optionally an API server on it) shared by one test module, on each backend.

`database_url` in conftest gives every test a fresh database; tests that can share one (each works on
its own identifiers) use these module-scoped fixtures instead, to keep the suite fast. Import the
fixtures into a test module: `from tests.moddb import mod_client, mod_engine, mod_server, mod_world`.
"""

from __future__ import annotations

import itertools
import os
import shutil
from collections.abc import Iterator

import httpx
import pytest
import sqlalchemy as sa

from omnijourney.app import create_app
from omnijourney.config import IngestLimits, Settings
from omnijourney.store import db
from tests.conftest import LiveServer, World, make_world, start_server

_counter = itertools.count()


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def mod_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if request.param == "sqlite":
        path = tmp_path_factory.mktemp("moddb") / "omnijourney.db"
        shutil.copy(request.getfixturevalue("sqlite_template"), path)
        yield f"sqlite:///{path}"
        return
    admin_url = request.getfixturevalue("pg_admin_url")
    template = request.getfixturevalue("pg_template")
    name = f"oj_mod_{os.getpid()}_{next(_counter)}"
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f"CREATE DATABASE {name} TEMPLATE {template}")
    yield admin_url.rsplit("/", 1)[0] + "/" + name
    with admin.connect() as conn:
        conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    admin.dispose()


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
