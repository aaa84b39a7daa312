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
