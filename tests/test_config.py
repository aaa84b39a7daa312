"""Configuration from the environment, and the schema migrated when the app starts."""

from __future__ import annotations

import base64

import httpx
import pytest
import sqlalchemy as sa
from alembic.script import ScriptDirectory

from omnijourney.access import service as access
from omnijourney.app import create_app
from omnijourney.config import Settings
from omnijourney.store import db, migrate
from tests.conftest import World, count, start_server


def test_settings_from_the_environment_and_flags_over_it(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("OMNIJOURNEY_DATABASE_URL", raising=False)
    monkeypatch.setenv("OMNIJOURNEY_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("OMNIJOURNEY_MAX_MESSAGE_BYTES", "2000")
    monkeypatch.setenv("OMNIJOURNEY_MAX_BATCH_BYTES", "9000")
    monkeypatch.setenv("OMNIJOURNEY_HOST", "0.0.0.0")
    monkeypatch.setenv("OMNIJOURNEY_PORT", "9123")
    settings = Settings.from_env()
    assert (settings.limits.max_message_bytes, settings.limits.max_batch_bytes) == (2000, 9000)
    assert (settings.host, settings.port) == ("0.0.0.0", 9123)
    assert settings.database_url == f"sqlite:///{(tmp_path / 'omnijourney.db').resolve()}"
    # a command-line flag wins over the environment
    assert Settings.from_env(port=9000, host="127.0.0.2").port == 9000
    # a wrong value stops the start, naming the variable
    monkeypatch.setenv("OMNIJOURNEY_PORT", "eighty")
    with pytest.raises(ValueError, match="OMNIJOURNEY_PORT must be an integer"):
        Settings.from_env()


def test_lowered_limits_from_the_environment_apply_over_http(
    database_url: str, engine: sa.Engine, world: World, tmp_path, monkeypatch
) -> None:
    monkeypatch.setenv("OMNIJOURNEY_DATABASE_URL", database_url)
    monkeypatch.setenv("OMNIJOURNEY_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("OMNIJOURNEY_MAX_MESSAGE_BYTES", "1000")
    monkeypatch.setenv("OMNIJOURNEY_MAX_BATCH_BYTES", "4000")
    monkeypatch.setenv("OMNIJOURNEY_RUN_PIPELINE", "false")
    app = create_app(Settings.from_env(), engine=engine, migrate_db=False)
    srv = start_server(app, engine)
    auth = {"Authorization": "Basic " + base64.b64encode(f"{world.web_key}:".encode()).decode()}
    try:
        with httpx.Client(base_url=srv.url, timeout=30) as client:
            # well under the 32 KB / 500 KB defaults, over the configured limits
            r = client.post(
                "/v1/track", json={"userId": "u", "event": "E", "properties": {"x": "a" * 1500}}, headers=auth
            )
            assert r.status_code == 400, r.text
            assert r.json()["errors"][0]["message"].endswith("the limit is 1000")
            batch = {"batch": [{"type": "track", "userId": "u", "event": "E", "properties": {"x": "a" * 500}}] * 8}
            r = client.post("/v1/batch", json=batch, headers=auth)
            assert r.status_code == 413, r.text
            assert r.json() == {
                "success": False,
                "code": "payload_too_large",
                "message": "request body is over the 4000-byte batch limit",
            }
            assert client.post("/v1/track", json={"userId": "u", "event": "E"}, headers=auth).status_code == 200
    finally:
        srv.stop()
    assert count(engine, "events") == 1 and count(engine, "dead_letters") == 0


def test_the_app_migrates_a_fresh_database_to_head_on_start_up(tmp_path) -> None:
    url = f"sqlite:///{tmp_path / 'fresh.db'}"
    app = create_app(Settings(data_dir=tmp_path, database_url=url, run_pipeline=False, sqlite_synchronous="NORMAL"))
    engine: sa.Engine = app.state.engine
    assert migrate.current_revision(engine) is None  # an empty file: no schema yet
    srv = start_server(app, engine)
    try:
        head = ScriptDirectory.from_config(migrate.alembic_config(engine)).get_current_head()
        assert head is not None and migrate.current_revision(engine) == head
        with db.write(engine) as conn:
            key = access.create_source(conn=conn, name="web", channel="web").write_key
        r = httpx.post(f"{srv.url}/v1/t", json={"writeKey": key, "userId": "u", "event": "E"}, timeout=30)
        assert r.status_code == 200, r.text
    finally:
        srv.stop()
        engine.dispose()
