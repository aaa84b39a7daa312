"""Shared fixtures: every storage test runs on SQLite and on a real PostgreSQL server."""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
import uvicorn

from omnijourney.access import service as access
from omnijourney.app import create_app
from omnijourney.config import IngestLimits, Settings
from omnijourney.store import db, migrate
from tests.pgcluster import PgCluster

_counter = itertools.count()

# Spark's tests run many tiny queries: the JVM's quick compiler and a serial GC halve its start-up and per-query
# time on this small machine (docs/ANALYTICS.md, "Spark"); a developer's own setting wins.
os.environ.setdefault("OMNIJOURNEY_SPARK_JAVA_OPTIONS", "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC")


# Suites that hold one heavy process per test session (a JVM for Spark, Chromium for the browser tests) run on
# one xdist worker per group, so a worker starts at most one of them. Spark's tests are two groups (two JVMs):
# the funnel-rule cases are about half of its time, and one group alone was the run's critical path.
_GROUPS = ("spark", "browser")
_SPLIT = {"spark": ("test_funnel_rules.py",)}


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook, which reads the marks into the node ids it schedules by
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        for group in _GROUPS:
            if item.get_closest_marker(group):
                split = item.path.name in _SPLIT.get(group, ())
                item.add_marker(pytest.mark.xdist_group(f"{group}-2" if split else group))
                break


@pytest.fixture(scope="session")
def pg_admin_url() -> Iterator[str]:
    url = os.environ.get("OMNIJOURNEY_TEST_PG_URL")
    if url:
        yield url
        return
    cluster = PgCluster()
    try:
        yield cluster.start()
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("template") / "template.db"
    engine = db.create_engine(f"sqlite:///{path}")
    migrate.upgrade(engine)
    with engine.connect() as conn:
        conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    engine.dispose()
    return path


@pytest.fixture(scope="session")
def pg_template(pg_admin_url: str) -> str:
    admin = sa.create_engine(pg_admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql("DROP DATABASE IF EXISTS oj_template")
        conn.exec_driver_sql("CREATE DATABASE oj_template")
    admin.dispose()
    engine = db.create_engine(pg_admin_url.rsplit("/", 1)[0] + "/oj_template")
    migrate.upgrade(engine)
    engine.dispose()
    return "oj_template"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, migrated database per test, on each backend."""
    with fresh_database(request, tmp_path, "oj_test") as url:
        yield url


@contextlib.contextmanager
def fresh_database(request: pytest.FixtureRequest, directory: Path, prefix: str) -> Iterator[str]:
    """A migrated database copied from the backend's template (`request.param`): a SQLite file in
    `directory`, or a PostgreSQL database named `prefix_...`, dropped afterwards."""
    if request.param == "sqlite":
        template = request.getfixturevalue("sqlite_template")
        path = directory / "omnijourney.db"
        shutil.copy(template, path)
        yield f"sqlite:///{path}"
        return
    admin_url = request.getfixturevalue("pg_admin_url")
    template = request.getfixturevalue("pg_template")
    name = f"{prefix}_{os.getpid()}_{next(_counter)}"
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f"CREATE DATABASE {name} TEMPLATE {template}")
    try:
        yield admin_url.rsplit("/", 1)[0] + "/" + name
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        admin.dispose()


@pytest.fixture
def engine(database_url: str) -> Iterator[sa.Engine]:
    eng = db.create_engine(database_url, sqlite_synchronous="NORMAL")
    yield eng
    eng.dispose()


@pytest.fixture
def settings(database_url: str, tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path, database_url=database_url, limits=IngestLimits(), sqlite_synchronous="NORMAL")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class LiveServer:
    """A real uvicorn server on loopback, in a thread of the test process."""

    url: str
    app: object
    server: uvicorn.Server
    thread: threading.Thread
    engine: sa.Engine

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


def start_server(app: object, engine: sa.Engine, wrap: object = None) -> LiveServer:
    port = free_port()
    config = uvicorn.Config(wrap or app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("test server did not start")
        time.sleep(0.02)
    return LiveServer(f"http://127.0.0.1:{port}", app, server, thread, engine)


@pytest.fixture
def live_server(settings: Settings, engine: sa.Engine) -> Iterator[LiveServer]:
    app = create_app(settings, engine=engine, migrate_db=False)
    srv = start_server(app, engine)
    yield srv
    srv.stop()


@dataclass
class World:
    """Sources and tokens most API tests need."""

    web_key: str
    pos_key: str
    admin_token: str
    marketer_token: str
    agent_token: str
    web_source_id: int
    pos_source_id: int


@pytest.fixture
def world(engine: sa.Engine) -> World:
    return make_world(engine)


def make_world(engine: sa.Engine) -> World:
    """Two sources (web, untrusted with an allowed origin; pos, trusted) and a token per role."""
    with db.write(engine) as conn:
        web = access.create_source(conn=conn, name="web", channel="web", allowed_origins=["https://shop.example"])
        pos = access.create_source(conn=conn, name="pos", channel="store", trusted=True)
        tokens = {role: access.create_token(conn=conn, role=role) for role in ("admin", "marketer", "agent")}
    return World(
        web_key=web.write_key,
        pos_key=pos.write_key,
        admin_token=tokens["admin"],
        marketer_token=tokens["marketer"],
        agent_token=tokens["agent"],
        web_source_id=web.id,
        pos_source_id=pos.id,
    )


@pytest.fixture
def client(live_server: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=live_server.url, timeout=30) as c:
        yield c


def count(engine: sa.Engine, table: str) -> int:
    with db.read(engine) as conn:
        return int(conn.execute(sa.text(f"SELECT count(*) FROM {table}")).scalar_one())


def wait_for(predicate, timeout: float = 10.0, interval: float = 0.02) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()
