"""`omnijourney segments refresh`, `recommend train` and `recommend evaluate`."""

from __future__ import annotations

from typer.testing import CliRunner

from omnijourney.cli import app
from omnijourney.store import db
from tests.engage.helpers import create, segments_of
from tests.engage.test_recommend import buy, seed
from tests.identity.helpers import append, process, profile_of, source

runner = CliRunner()


def test_refresh_train_and_evaluate_commands(tmp_path) -> None:
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    args = ["--database-url", url, "--data-dir", str(tmp_path)]
    assert runner.invoke(app, ["db", "upgrade", *args]).exit_code == 0
    engine = db.create_engine(url)
    seed(engine)
    web = source(engine, "web", "web", False)
    append(
        engine,
        web,
        "web",
        [
            buy("c-1", "c-1-a", ["BAG-1", "CAP-1"], 20),
            buy("c-1", "c-1-b", ["SHOE-42"], 1),
            buy("c-2", "c-2-a", ["BAG-1"], 40),
        ],
    )
    process(engine)
    create(engine, "quiet_30", {"event": {"name": "Order Completed", "did": False, "within_days": 30}})
    r = runner.invoke(app, ["segments", "refresh", *args])
    assert r.exit_code == 0, r.output
    assert "segments refreshed" in r.output
    c2 = profile_of(engine, "user_id", "c-2")
    assert c2 is not None and "quiet_30" in segments_of(engine, c2)
    r = runner.invoke(app, ["recommend", "train", *args])
    assert r.exit_code == 0, r.output
    assert "3 items" in r.output and "2 profiles" in r.output and "4 purchase lines" in r.output
    r = runner.invoke(app, ["recommend", "evaluate", *args])
    assert r.exit_code == 0, r.output
    assert "hit rate@10" in r.output and "most_popular" in r.output
    engine.dispose()
