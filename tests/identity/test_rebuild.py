"""The rebuild's in-memory graph is dropped whenever it could be stale (a rolled-back step)."""

from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy as sa

from omnijourney.pipeline import service as pipeline
from omnijourney.pipeline.worker import run_until_idle
from omnijourney.store import db
from tests.identity.helpers import append, graph_rows, source


class Boom:
    """A handler after identity that fails once, on its `fail_at`-th step (the step rolls back)."""

    name = "boom"

    def __init__(self, fail_at: int) -> None:
        self.steps = 0
        self.fail_at = fail_at

    def apply(self, conn: Any, events: Any, ctx: dict[str, Any]) -> None:
        self.steps += 1
        if self.steps == self.fail_at:
            raise RuntimeError("boom")

    def reset(self, conn: Any) -> None:
        return None


def test_a_rolled_back_rebuild_step_drops_the_kept_graph(engine: sa.Engine) -> None:
    pos = source(engine, "pos", "store", trusted=True)
    web = source(engine, "web", "web", trusted=False)
    append(engine, web, "web", [{"type": "page", "anonymousId": "d1"}, {"type": "page", "anonymousId": "d2"}])
    append(engine, pos, "store", [{"type": "identify", "anonymousId": "d1", "traits": {"email": "x@example.org"}}])
    append(engine, pos, "store", [{"type": "identify", "anonymousId": "d2", "traits": {"email": "x@example.org"}}])
    handlers = pipeline.default_handlers()
    run_until_idle(engine, handlers, batch=2)
    expected = graph_rows(engine)

    with db.write(engine) as conn:
        pipeline.reset(conn=conn, handlers=handlers)
    boom = Boom(fail_at=2)
    with pytest.raises(RuntimeError):
        run_until_idle(engine, [*handlers, boom], batch=2, rebuild=True)
    # the identity handler resolved the failed step's events in memory, but they were rolled back
    identity = next(h for h in handlers if h.name == "identity")
    assert identity._kept is not None and ("email", "x@example.org") in identity._kept.links
    run_until_idle(engine, [*handlers, boom], batch=2, rebuild=True)
    assert graph_rows(engine) == expected


def test_a_rebuild_beyond_the_memory_bound_reads_the_graph_back_and_ends_the_same(engine: sa.Engine) -> None:
    from omnijourney.identity.handler import IdentityHandler

    pos = source(engine, "pos", "store", trusted=True)
    append(
        engine,
        pos,
        "store",
        [{"type": "identify", "anonymousId": f"d{i}", "traits": {"email": f"p{i % 3}@example.org"}} for i in range(9)],
    )
    handlers = pipeline.default_handlers()
    run_until_idle(engine, handlers, batch=2)
    expected = graph_rows(engine)
    at = next(i for i, h in enumerate(handlers) if h.name == "identity")
    small = IdentityHandler(handlers[at].rules, keep_max_links=3)
    handlers[at] = small
    with db.write(engine) as conn:
        pipeline.reset(conn=conn, handlers=handlers)
    run_until_idle(engine, handlers, batch=2, rebuild=True)
    assert small._kept is None  # 12 links: over the bound, dropped
    assert graph_rows(engine) == expected
