"""Storage details that must hold on both backends."""

from __future__ import annotations

import sqlalchemy as sa

from omnijourney.profiles.models import ProfileTrait
from omnijourney.store import db
from omnijourney.store.base import utcnow


def test_json_scalars_round_trip(engine: sa.Engine) -> None:
    table = ProfileTrait.__table__
    values = [41, 2.5, "41", True, None, [1, "a"], {"k": 1}]
    now = utcnow()
    with db.write(engine) as conn:
        conn.execute(
            sa.insert(table),
            [
                {"profile_id": 1, "key": f"k{i}", "value": v, "observed_at": now, "first_observed_at": now}
                for i, v in enumerate(values)
            ],
        )
    with db.read(engine) as conn:
        got = [r.value for r in conn.execute(sa.select(table).order_by(table.c.key))]
    assert got == values


def test_read_statements_leave_pooled_connections_transactional(database_url: str) -> None:
    """Console pages read in autocommit on PostgreSQL (no BEGIN/COMMIT round trips); the pooled
    connection must come back to write scopes as a transactional one, so a failed write changes nothing."""
    engine = db.create_engine(database_url, sqlite_synchronous="NORMAL", pool_size=1)
    table = ProfileTrait.__table__
    now = utcnow()
    try:
        with db.read_statements(engine) as conn:
            assert conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one() == 0  # a fresh database
            raw = conn.connection.dbapi_connection
            if engine.dialect.name == "postgresql":
                assert raw.autocommit is True  # no transaction block
            else:
                assert raw.in_transaction  # SQLite keeps one snapshot for the page
        try:
            with db.write(engine) as conn:
                if engine.dialect.name == "postgresql":
                    assert conn.connection.dbapi_connection.autocommit is False
                conn.execute(
                    sa.insert(table).values(profile_id=7, key="k", value=1, observed_at=now, first_observed_at=now)
                )
                raise RuntimeError("abort the write")
        except RuntimeError:
            pass
        with db.read(engine) as conn:
            assert conn.execute(sa.select(table).where(table.c.profile_id == 7)).first() is None
    finally:
        engine.dispose()
