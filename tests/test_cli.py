"""The command line: sources, tokens, migrations."""

from __future__ import annotations

import sqlalchemy as sa
from typer.testing import CliRunner

from omnijourney.access import service as access
from omnijourney.cli import app
from omnijourney.store import db, migrate

runner = CliRunner()


def test_db_upgrade_sources_and_tokens(tmp_path) -> None:
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    args = ["--database-url", url, "--data-dir", str(tmp_path)]
    r = runner.invoke(app, ["db", "upgrade", *args])
    assert r.exit_code == 0 and "revision" in r.output
    engine = db.create_engine(url)
    assert migrate.current_revision(engine) is not None

    r = runner.invoke(app, ["sources", "create", "pos-praha", "--channel", "store", "--trusted", *args])
    assert r.exit_code == 0, r.output
    key = r.output.strip()
    with db.read(engine) as conn:
        info = access.source_by_write_key(conn=conn, write_key=key)
    assert info is not None and info.trusted and info.channel == "store"

    r = runner.invoke(app, ["sources", "create", "x", "--channel", "fax", *args])
    assert r.exit_code == 2 and "unknown channel" in r.output

    r = runner.invoke(app, ["tokens", "create", "--role", "agent", *args])
    assert r.exit_code == 0
    token = r.output.strip()
    with db.read(engine) as conn:
        principal = access.principal_for_token(conn=conn, token=token)
        assert principal is not None and principal.role == "agent"
        stored = conn.execute(sa.text("SELECT token_hash FROM api_tokens")).scalar_one()
    assert token not in stored

    r = runner.invoke(app, ["tokens", "create", "--role", "root", *args])
    assert r.exit_code == 2


def test_data_dir_default_database(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("OMNIJOURNEY_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("OMNIJOURNEY_DATABASE_URL", raising=False)
    r = runner.invoke(app, ["db", "upgrade"])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "data" / "omnijourney.db").exists()


def test_identity_rebuild_command(tmp_path) -> None:
    from tests.identity.helpers import append, process, snapshot, source

    url = f"sqlite:///{tmp_path / 'rb.db'}"
    engine = db.create_engine(url)
    migrate.upgrade(engine)
    pos = source(engine, "pos", "store", trusted=True)
    append(
        engine,
        pos,
        "store",
        [{"type": "identify", "userId": f"u{i}", "traits": {"email": f"u{i}@example.org"}} for i in range(30)],
    )
    process(engine)
    before = snapshot(engine)
    r = runner.invoke(app, ["identity", "rebuild", "--database-url", url, "--data-dir", str(tmp_path), "--batch", "7"])
    assert r.exit_code == 0, r.output
    assert "rebuilt from 30 events: 30 profiles" in r.output
    assert snapshot(engine) == before


def test_data_dir_flag_moves_the_default_database(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("OMNIJOURNEY_DATABASE_URL", raising=False)
    monkeypatch.setenv("OMNIJOURNEY_DATA_DIR", str(tmp_path / "from-env"))
    r = runner.invoke(app, ["db", "upgrade", "--data-dir", str(tmp_path / "from-flag")])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "from-flag" / "omnijourney.db").exists()
    assert not (tmp_path / "from-env").exists()
